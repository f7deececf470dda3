package ike

import (
	"net/netip"
	"time"

	"github.com/gosec-ipsec/gosec/ike/isakmp"
)

// Liveness of an established ISAKMP SA: dead peer detection (RFC 3706)
// and NAT-T keepalives (RFC 3948).

// startDPD sends R_U_THERE every DPDDelay (RFC 3706) when the conn asks
// for it and the peer announced DPD.
func (e *Engine) startDPD(p *p1) {
	c := p.conn
	if c == nil || c.DPDDelay <= 0 || c.DPDAction == "" || c.DPDAction == "none" || !p.peerDPD {
		return
	}
	timeout := c.DPDTimeout
	if timeout <= 0 {
		timeout = 5 * c.DPDDelay
	}
	var tick func()
	tick = func() {
		e.post(func() {
			if e.sas[p.key()] != p {
				return
			}
			now := e.cfg.Clock.Now()
			if p.dpdWaiting && now.Sub(p.dpdSince) >= timeout {
				e.deadPeer(p, timeout)
				return
			}
			if !p.dpdWaiting {
				p.dpdWaiting, p.dpdSince = true, now
			}
			p.dpdSeq++
			spi := append(append([]byte(nil), p.icky[:]...), p.rcky[:]...)
			e.sendInfo(p, []isakmp.Payload{&isakmp.Notify{DOI: doiIPsec, Protocol: isakmp.ProtoISAKMP, Kind: notifyRUThere, SPI: spi, Data: be32(p.dpdSeq)}})
			p.dpd = e.cfg.Clock.AfterFunc(c.DPDDelay, tick)
		})
	}
	p.dpdSeq = be32u(e.random(4)) & 0x7fffffff
	p.dpd = e.cfg.Clock.AfterFunc(c.DPDDelay, tick)
}

// deadPeer applies dpdaction once the peer of p stopped answering: every
// ISAKMP SA and IPsec SA of that identity pair is gone on the peer's side
// (or unreachable), so all of them are removed without a Delete. Then
// each affected conn follows its own dpdaction (p's conn when it has
// none): clear leaves it down; hold leaves it down too, while the daemon
// keeps its policies trapping (fail closed) and asks for it again with
// Start; restart negotiates it again at once (a new Main Mode, then Quick
// Mode for its selectors), when its peer's address is known.
func (e *Engine) deadPeer(p *p1, timeout time.Duration) {
	c := p.conn
	e.log.Warn("dead peer detected", "conn", c.Name, "peer", p.peer, "peer_id", p.peerID, "no_answer_for", timeout, "dpdaction", c.DPDAction)
	e.observe(ExchangeEvent{Peer: p.peer.Addr(), Conn: c.Name, Kind: "dpd", Result: "dead"})
	id := p.identity()
	for _, q := range e.sortedSAs() {
		if q == p || (q.established() && q.identity() == id) {
			e.forget(q)
			e.orphan(q)
		}
	}
	affected := []*Conn{c}
	seen := map[string]bool{c.Name: true}
	for _, ch := range e.allChildren() {
		if ch.identity != id {
			continue
		}
		e.deleteChild(ch, "dead peer")
		if cc := e.conns[ch.sa.Conn]; cc != nil && !seen[cc.Name] {
			seen[cc.Name] = true
			affected = append(affected, cc)
		}
	}
	for _, cc := range affected {
		action := cc.DPDAction
		if action == "" || action == "none" {
			action = c.DPDAction
		}
		if action == "restart" && cc.Remote.IsValid() {
			e.log.Info("dpdaction=restart: negotiating again", "conn", cc.Name, "peer", cc.Remote)
			e.startPhase1(cc, nil, 1)
		}
	}
}

// startKeepalive sends NAT-T keepalives (one octet 0xFF, RFC 3948 2.3)
// every 20 s while we are behind a NAT.
func (e *Engine) startKeepalive(p *p1) {
	ka, ok := e.cfg.Transport.(interface{ SendKeepalive(netip.AddrPort) error })
	if !ok {
		return
	}
	var tick func()
	tick = func() {
		e.post(func() {
			if e.sas[p.key()] != p {
				return
			}
			ka.SendKeepalive(p.peer)
			p.keepalive = e.cfg.Clock.AfterFunc(20*time.Second, tick)
		})
	}
	p.keepalive = e.cfg.Clock.AfterFunc(20*time.Second, tick)
}
