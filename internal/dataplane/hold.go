package dataplane

import (
	"net/netip"
	"sync"

	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/netio"
)

// Bounds of the on-demand hold queue: packets that hit a trap policy wait
// here while IKE negotiates their SA (as the kernel's larval SA queue does).
const (
	MaxHeldPerReqID = 32
	MaxHeldTotal    = 512
)

// holdQueue keeps the packets of trap policies until their SA exists. It
// is only touched on the trap path (no SA yet), never for packets that have
// an SA, so its lock is not on the hot path.
type holdQueue struct {
	mu      sync.Mutex
	byReqID map[uint32][][]byte // each: netio.Headroom + packet + tailroom
	total   int
}

// hold keeps a copy of pkt for reqid; false when the queue is full.
func (q *holdQueue) hold(reqid uint32, pkt []byte) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.total >= MaxHeldTotal || len(q.byReqID[reqid]) >= MaxHeldPerReqID {
		return false
	}
	if q.byReqID == nil {
		q.byReqID = map[uint32][][]byte{}
	}
	b := make([]byte, netio.Headroom+len(pkt)+tailroom)
	copy(b[netio.Headroom:], pkt)
	q.byReqID[reqid] = append(q.byReqID[reqid], b[:netio.Headroom+len(pkt)])
	q.total++
	return true
}

// take removes and returns reqid's packets.
func (q *holdQueue) take(reqid uint32) [][]byte {
	q.mu.Lock()
	defer q.mu.Unlock()
	l := q.byReqID[reqid]
	delete(q.byReqID, reqid)
	q.total -= len(l)
	return l
}

// Held returns how many packets wait for an SA.
func (p *Plane) Held() int {
	p.held.mu.Lock()
	defer p.held.mu.Unlock()
	return p.held.total
}

// ReleaseHeld seals and sends the packets held for reqid, now that its
// outbound SA exists (packets that still find no SA are held again or
// dropped). Safe to call from any goroutine.
func (p *Plane) ReleaseHeld(reqid uint32) int {
	pkts := p.held.take(reqid)
	if len(pkts) == 0 {
		return 0
	}
	st := &outState{}
	icmp := make([]byte, netio.TUNHeadroom+netio.FragNeededMax)
	var j outJob
	for _, b := range pkts {
		p.outboundJob(st, &j, b[:cap(b)], netio.Headroom, len(b)-netio.Headroom, icmp)
		raw, rawAH, udp, back := sortOut(&j, st.fa.frags, nil, nil, nil, nil)
		if len(back) > 0 {
			if _, err := p.cfg.TUN.Write(back, netio.TUNHeadroom); err != nil {
				p.stats.SendErrors.Add(1)
			}
		}
		if p.sendHeld != nil {
			p.sendHeld(raw, rawAH, udp)
		} else {
			p.dispatch(raw, rawAH, udp)
		}
	}
	return len(pkts)
}

// DropHeld drops the packets held for reqid (negotiation failed), counted
// as no-sa, and lets the next packet trigger a new negotiation.
func (p *Plane) DropHeld(reqid uint32) int {
	pkts := p.held.take(reqid)
	for range pkts {
		p.dropPkt(nil, drop.NoSA, "hold", netip.Addr{})
	}
	p.ClearTrap(reqid)
	return len(pkts)
}
