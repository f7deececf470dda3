package dataplane

import (
	"encoding/binary"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

// tailroom is the space kept after each TUN packet for ESP padding,
// trailer and ICV (at most 255+2+32).
const tailroom = 320

// outKind says where an outbound packet goes.
type outKind uint8

const (
	outDrop  outKind = iota
	outRaw           // a whole IPv4 packet for a raw socket (ESP, or cleartext bypass)
	outRawAH         // a whole IPv4 packet for the AH raw socket
	outUDP           // an ESP packet for the NAT-T socket
	outTUN           // an ICMP error back into the TUN
)

// outState is one TUN reader's private state.
type outState struct {
	// ipid is the next outer IPv4 ID, ipidEnd the end of the block of
	// IDs this reader took from the plane.
	ipid, ipidEnd uint32
	// reasm joins transport-mode fragments (reader-owned; its completed
	// buffers stay in flight until the batches that hold them are sent).
	reasm *reassembler
	// fa holds the outer fragments of a single outbound call.
	fa fragArena
	// pc answers the policy lookups (a TUN read is mostly runs of one
	// flow's segments).
	pc spd.Cache
}

// fragArena holds the outer fragments of one batch, cut into one buffer
// (allocated on first use, reset every batch).
type fragArena struct {
	arena []byte
	used  int
	frags [][]byte
}

func (a *fragArena) reset() { a.used, a.frags = 0, a.frags[:0] }

// cut fragments pkt for mtu into the arena, returning the fragments'
// range in a.frags; ok is false when the arena is full.
func (a *fragArena) cut(pkt []byte, mtu int) (lo, hi int, ok bool) {
	if a.arena == nil {
		a.arena = make([]byte, outerArena)
	}
	lo = len(a.frags)
	fs := fragmentOuter(pkt, mtu, a.arena[a.used:], a.frags)
	if fs == nil {
		return 0, 0, false
	}
	a.frags = fs
	for _, f := range fs[lo:] {
		a.used += len(f)
	}
	return lo, len(fs), true
}

// outJob is one packet read from the TUN on its way out: what the reader
// decided for it and, for the packets it seals, what the worker made.
type outJob struct {
	kind outKind
	out  []byte         // the packet to send or write back (not for fragments)
	to   netip.AddrPort // outUDP: destination
	from netip.Addr     // outUDP: the SA's local address (send from it)
	// Set by the reader for a packet to seal (sa non-nil).
	sa          *sad.SA
	seq         uint64
	ipid        uint16
	buf         []byte // the packet is buf[off:off+n] (a TUN buffer or a reassembly buffer)
	off, n      int
	reassembled bool
	dst         netip.Addr
	// Set by the worker.
	sealed         bool // sealed: counted on the SA
	fragLo, fragHi int  // outer fragments in the batch's fragArena
}

// sort appends what one job produced (the packet, or its outer fragments
// in frags) to the list of the socket it goes to.
func sortOut(j *outJob, frags [][]byte, raw, rawAH, udp []netio.Msg, back [][]byte) ([]netio.Msg, []netio.Msg, []netio.Msg, [][]byte) {
	if j.fragHi > j.fragLo {
		for _, f := range frags[j.fragLo:j.fragHi] {
			if j.kind == outRawAH {
				rawAH = append(rawAH, netio.Msg{Buf: f})
			} else {
				raw = append(raw, netio.Msg{Buf: f})
			}
		}
		return raw, rawAH, udp, back
	}
	switch j.kind {
	case outRaw:
		raw = append(raw, netio.Msg{Buf: j.out})
	case outRawAH:
		rawAH = append(rawAH, netio.Msg{Buf: j.out})
	case outUDP:
		udp = append(udp, netio.Msg{Buf: j.out, To: j.to, From: netip.AddrPortFrom(j.from, 0)})
	case outTUN:
		back = append(back, j.out)
	}
	return raw, rawAH, udp, back
}

// outerArena bounds the outer fragments of one TUN batch.
const outerArena = 256 << 10

// outbound decides the fate of the plaintext packet b[off:off+n] read from
// the TUN and seals it in place, all in the calling goroutine (the pipeline
// splits the same work into outPrepare and outSeal). For outTUN the reply
// is written into icmp (which has netio.TUNHeadroom free bytes in front)
// and returned; outer fragments are left in st.fa.frags.
func (p *Plane) outbound(st *outState, b []byte, off, n int, icmp []byte) ([]byte, outKind, netip.AddrPort) {
	var j outJob
	p.outboundJob(st, &j, b, off, n, icmp)
	return j.out, j.kind, j.to
}

// outboundJob is outbound with its result left in j.
func (p *Plane) outboundJob(st *outState, j *outJob, b []byte, off, n int, icmp []byte) {
	st.fa.reset()
	p.outPrepare(st, j, b, off, n, icmp)
	if j.sa == nil {
		return
	}
	p.outSeal(j, &st.fa)
	if j.sealed {
		j.sa.CountOut(j.n)
		p.stats.OutPackets.Add(1)
		p.stats.OutBytes.Add(uint64(j.n))
	}
}

// outPrepare is the reader's part of outbound: policy and SA lookup, the
// hold queue and trap, transport-mode reassembly, the path MTU check and
// the sequence number (assigned here, in the order packets were read). It
// leaves j.sa set when the packet is to be sealed by outSeal; otherwise
// j.kind and j.out are final.
func (p *Plane) outPrepare(st *outState, j *outJob, b []byte, off, n int, icmp []byte) {
	*j = outJob{kind: outDrop}
	pkt := b[off : off+n]
	if iphdr.Version(pkt) != 4 {
		p.dropPkt(nil, drop.Malformed, "tun", netip.Addr{})
		return
	}
	t, err := spd.ParseIPv4Tuple(pkt)
	if err != nil {
		p.dropPkt(nil, drop.Malformed, "tun", netip.Addr{})
		return
	}
	pol := st.pc.Lookup(p.cfg.SPD, spd.Out, t)
	if pol == nil {
		// Only traffic that policies cover is routed into the TUN; anything
		// else fails closed.
		p.dropPkt(nil, drop.NoPolicy, "tun", t.Dst)
		return
	}
	switch pol.Action {
	case spd.Discard:
		p.dropPkt(nil, drop.Discard, "tun", t.Dst)
		return
	case spd.Bypass:
		p.stats.Bypassed.Add(1)
		j.out, j.kind = pkt, outRaw
		return
	}
	sa := p.cfg.SAD.Outbound(pol.ReqID)
	if sa == nil {
		// Fail closed: a protect policy without a usable SA never lets the
		// packet out. A trap policy holds it (bounded) and asks IKE.
		if pol.Trap {
			held := p.held.hold(pol.ReqID, pkt)
			p.trap(pol.ReqID)
			if held {
				p.stats.Held.Add(1)
				return
			}
			p.dropPkt(nil, drop.NoBuffer, "hold", t.Dst)
			return
		}
		p.dropPkt(nil, drop.NoSA, "tun", t.Dst)
		return
	}

	reassembled := false
	if sa.Mode == sad.Transport && isFragment(pkt) {
		if st.reasm == nil {
			st.reasm = newReassembler(time.Now)
		}
		buf, o, m, ok, bad := st.reasm.add(pkt)
		if bad {
			p.dropPkt(sa, drop.Malformed, "reassembly", t.Dst)
			return
		}
		if !ok {
			return // held until the rest arrives
		}
		b, off, n, pkt, reassembled = buf, o, m, buf[o:o+m], true
	}

	// Path MTU: the sealed packet must fit the wire. A reassembled
	// datagram (never DF) is sealed whole and its outer packet fragmented.
	overhead := p.overhead(sa, n)
	if n+overhead > p.cfg.WireMTU && !reassembled {
		// The largest inner size that fits: padding varies with the size,
		// so step down until it does (a few steps at most).
		inner := p.cfg.WireMTU - overhead
		for inner > 68 && inner+p.overhead(sa, inner) > p.cfg.WireMTU {
			inner--
		}
		p.dropPkt(sa, drop.TooBig, "tun", t.Dst)
		if k, err := netio.FragNeeded(icmp[netio.TUNHeadroom:], pkt, inner, netip.Addr{}); err == nil {
			j.out, j.kind = icmp[:netio.TUNHeadroom+k], outTUN
		}
		return
	}

	seq, err := sa.NextSeq()
	if err != nil {
		p.dropPkt(sa, drop.ReasonOf(err), "tun", t.Dst)
		return
	}
	j.sa, j.seq, j.buf, j.off, j.n, j.reassembled, j.dst = sa, seq, b, off, n, reassembled, t.Dst
	if sa.Mode == sad.Tunnel && sa.Encap == nil {
		j.ipid = p.nextIPID(st)
	}
}

// outSeal is the workers' part of outbound: it seals the job's packet in
// place and, for a reassembled datagram too large for the wire, cuts the
// outer packet into fragments in fa.
func (p *Plane) outSeal(j *outJob, fa *fragArena) {
	sa, b, off, n := j.sa, j.buf, j.off, j.n
	var (
		out []byte
		err error
	)
	kind := outRaw
	switch {
	case sa.Proto == sad.ESP && sa.Encap != nil:
		out, err = p.sealUDP(sa, b, off, n, j.seq)
		kind = outUDP
	case sa.Proto == sad.ESP && sa.Mode == sad.Tunnel:
		o := outerFor(sa, b[off:off+n], j.ipid)
		out, err = sa.ESP.SealTunnel(b, off, n, sa.SPI, j.seq, &o)
	case sa.Proto == sad.ESP:
		out, err = sa.ESP.SealTransport(b, off, n, sa.SPI, j.seq)
	case sa.Mode == sad.Tunnel:
		o := outerFor(sa, b[off:off+n], j.ipid)
		out, err = sa.AH.SealTunnel(b, off, n, sa.SPI, j.seq, &o)
		kind = outRawAH
	default:
		out, err = sa.AH.SealTransport(b, off, n, sa.SPI, j.seq)
		kind = outRawAH
	}
	if err != nil {
		p.dropPkt(sa, drop.ReasonOf(err), "seal", j.dst)
		j.kind = outDrop
		return
	}
	j.sealed = true
	if j.reassembled && kind != outUDP && len(out) > p.cfg.WireMTU {
		lo, hi, ok := fa.cut(out, p.cfg.WireMTU)
		if !ok {
			p.dropPkt(sa, drop.NoBuffer, "fragment", j.dst)
			j.kind = outDrop
			return
		}
		j.kind, j.fragLo, j.fragHi = kind, lo, hi
		return
	}
	j.out, j.kind = out, kind
	if kind == outUDP {
		j.to = netip.AddrPortFrom(sa.Dst, sa.Encap.DstPort)
		j.from = sa.Src
	}
}

// sealUDP seals for ESP-in-UDP (RFC 3948): the kernel adds the outer IPv4
// and UDP headers, so tunnel mode seals the whole inner packet and
// transport mode seals the inner packet's payload.
func (p *Plane) sealUDP(sa *sad.SA, b []byte, off, n int, seq uint64) ([]byte, error) {
	if sa.Mode == sad.Tunnel {
		return sa.ESP.Seal(b, off, n, sa.SPI, seq, iphdr.ProtoIPIP)
	}
	hl, total, err := iphdr.HeaderLen(b[off : off+n])
	if err != nil {
		return nil, err
	}
	proto := b[off+iphdr.OffProtocol]
	return sa.ESP.Seal(b, off+hl, total-hl, sa.SPI, seq, proto)
}

// overhead is what sealing an n-byte packet with sa adds on the wire.
func (p *Plane) overhead(sa *sad.SA, n int) int {
	if sa.Proto == sad.AH {
		o := sa.AH.HeaderLen()
		if sa.Mode == sad.Tunnel {
			o += iphdr.IPv4MinLen
		}
		return o
	}
	if sa.Encap != nil {
		if sa.Mode == sad.Tunnel {
			return iphdr.IPv4MinLen + 8 + sa.ESP.Overhead(n)
		}
		return 8 + sa.ESP.Overhead(n-iphdr.IPv4MinLen)
	}
	if sa.Mode == sad.Tunnel {
		return iphdr.IPv4MinLen + sa.ESP.Overhead(n)
	}
	return sa.ESP.Overhead(n - iphdr.IPv4MinLen)
}

// outerFor is the tunnel-mode outer header: the SA's endpoints, the inner
// packet's TOS and DF bit copied (RFC 4301 5.1.2.1 / 8.1), a fresh non-zero
// ID (AH covers the ID, and the kernel would fill a zero one after the ICV).
func outerFor(sa *sad.SA, inner []byte, id uint16) iphdr.Outer {
	if id == 0 {
		id = 1
	}
	o := iphdr.Outer{Src: sa.Src.As4(), Dst: sa.Dst.As4(), ID: id, TTL: 64}
	if iphdr.Version(inner) == 4 && len(inner) >= iphdr.IPv4MinLen {
		o.TOS = inner[iphdr.OffTOS]
		o.DF = binary.BigEndian.Uint16(inner[iphdr.OffFlagsFrag:])&0x4000 != 0
	}
	return o
}

// outBatch is a TUN reader's container: one TUN read and what becomes of
// each packet in it.
type outBatch struct {
	batchSync
	p     *Plane
	bufs  [][]byte
	sizes []int
	icmp  [][]byte
	jobs  []outJob
	n     int
	reasm bool // holds a reassembled datagram (its buffer is the reassembler's)
	fa    fragArena
	// The sequential stage's lists, reused.
	raw, rawAH, udp []netio.Msg
	back            [][]byte
	run             saRun
}

func newOutBatch(p *Plane, batch, mtu int) *outBatch {
	b := &outBatch{p: p, bufs: make([][]byte, batch), sizes: make([]int, batch), icmp: make([][]byte, batch),
		jobs: make([]outJob, batch), raw: make([]netio.Msg, 0, batch), rawAH: make([]netio.Msg, 0, batch),
		udp: make([]netio.Msg, 0, batch), back: make([][]byte, 0, batch), run: saRun{out: true}}
	for i := range b.bufs {
		b.bufs[i] = make([]byte, netio.Headroom+mtu+tailroom)
		b.icmp[i] = make([]byte, netio.TUNHeadroom+netio.FragNeededMax)
	}
	return b
}

// crypt seals the batch's packets (a worker, or the reader inline).
func (b *outBatch) crypt() {
	for i := 0; i < b.n; i++ {
		if j := &b.jobs[i]; j.sa != nil {
			b.p.outSeal(j, &b.fa)
		}
	}
}

// finish sends the batch in its order and counts it, once per batch (and
// once per run of packets on the same SA).
func (b *outBatch) finish() {
	p := b.p
	b.raw, b.rawAH, b.udp, b.back = b.raw[:0], b.rawAH[:0], b.udp[:0], b.back[:0]
	for i := 0; i < b.n; i++ {
		j := &b.jobs[i]
		if j.sealed {
			b.run.add(j.sa, j.n)
		}
		b.raw, b.rawAH, b.udp, b.back = sortOut(j, b.fa.frags, b.raw, b.rawAH, b.udp, b.back)
	}
	b.run.flush(p)
	p.dispatch(b.raw, b.rawAH, b.udp)
	if len(b.back) > 0 {
		if _, err := p.cfg.TUN.Write(b.back, netio.TUNHeadroom); err != nil {
			p.stats.SendErrors.Add(uint64(len(b.back)))
		}
	}
}

// saRun counts packets per SA over runs of a batch and on the plane per
// batch, so that a batch costs a few atomic adds and clock reads, not a
// few per packet.
type saRun struct {
	out               bool
	sa                *sad.SA
	pkts, bytes       int
	allPkts, allBytes int
}

func (r *saRun) add(sa *sad.SA, n int) {
	if sa != r.sa {
		r.flushSA()
		r.sa = sa
	}
	r.pkts++
	r.bytes += n
	r.allPkts++
	r.allBytes += n
}

func (r *saRun) flushSA() {
	if r.pkts > 0 {
		if r.out {
			r.sa.CountOutN(r.pkts, r.bytes)
		} else {
			r.sa.CountInN(r.pkts, r.bytes)
		}
	}
	r.pkts, r.bytes = 0, 0
}

func (r *saRun) flush(p *Plane) {
	r.flushSA()
	r.sa = nil
	if r.allPkts > 0 {
		if r.out {
			p.stats.OutPackets.Add(uint64(r.allPkts))
			p.stats.OutBytes.Add(uint64(r.allBytes))
		} else {
			p.stats.InPackets.Add(uint64(r.allPkts))
			p.stats.InBytes.Add(uint64(r.allBytes))
		}
	}
	r.allPkts, r.allBytes = 0, 0
}

// ipidBlock is how many outer IPv4 IDs a TUN reader takes at a time.
const ipidBlock = 256

// nextIPID returns the reader's next outer IPv4 ID: one atomic add per
// block, and no two readers hand out the same ID within 65,536.
func (p *Plane) nextIPID(st *outState) uint16 {
	if st.ipid == st.ipidEnd {
		st.ipidEnd = p.ipid.Add(ipidBlock)
		st.ipid = st.ipidEnd - ipidBlock
	}
	id := uint16(st.ipid)
	st.ipid++
	return id
}

// tunLoop reads plaintext batches from one of the TUN's queues and passes
// them down the pipeline (seal on the workers, send in order).
func (p *Plane) tunLoop(tun TUNDevice, read *atomic.Uint64, jobs chan cryptoJob, workers int) error {
	batch := tun.BatchSize()
	if batch < 1 {
		batch = 1
	}
	mtu, err := tun.MTU()
	if err != nil {
		return err
	}
	batches := make([]*outBatch, lanes(workers))
	for i := range batches {
		batches[i] = newOutBatch(p, batch, mtu)
	}
	// Reassembled datagrams live in the reassembler's buffers, which the
	// reader may reuse only once the batches holding them are sent.
	reasmSent := make(chan struct{}, len(batches))
	pendingReasm := 0
	l := newLane(p, jobs, batches, func(b *outBatch) {
		b.finish()
		if b.reasm {
			reasmSent <- struct{}{}
		}
	})
	defer l.close()
	st := &outState{}
	for {
		b := l.get()
		n, err := tun.Read(b.bufs, b.sizes, netio.Headroom)
		if err != nil {
			l.put(b)
			return err
		}
		read.Add(uint64(n))
		if st.reasm != nil {
			for ; pendingReasm > 0; pendingReasm-- {
				<-reasmSent
			}
			st.reasm.release()
		}
		b.n, b.reasm = n, false
		work := 0
		for i := 0; i < n; i++ {
			j := &b.jobs[i]
			p.outPrepare(st, j, b.bufs[i], netio.Headroom, b.sizes[i], b.icmp[i])
			if j.sa != nil {
				work++
				b.reasm = b.reasm || j.reassembled
			}
		}
		if b.reasm {
			pendingReasm++
		}
		b.fa.reset()
		l.submit(b, work)
	}
}

// dispatch sends sealed packets to their sockets.
func (p *Plane) dispatch(raw, rawAH, udp []netio.Msg) {
	if len(raw) > 0 {
		p.send(p.cfg.ESP, raw)
	}
	if len(rawAH) > 0 {
		if p.cfg.AH != nil {
			p.send(p.cfg.AH, rawAH)
		} else {
			p.send(p.cfg.ESP, rawAH)
		}
	}
	if len(udp) > 0 {
		if p.cfg.NATT == nil {
			p.stats.SendErrors.Add(uint64(len(udp)))
		} else {
			p.sendUDP(udp)
		}
	}
}

type sender interface {
	Send([]netio.Msg) (int, error)
}

func (p *Plane) send(s sender, ms []netio.Msg) {
	for len(ms) > 0 {
		k, err := s.Send(ms)
		if err != nil {
			// Skip the packet the kernel refused and go on with the rest.
			p.stats.SendErrors.Add(1)
			p.rl.Warn("send", "send failed", "err", err)
			k++
		}
		if k <= 0 {
			k = 1
		}
		if k > len(ms) {
			k = len(ms)
		}
		ms = ms[k:]
	}
}

// coalescingSender sends ESP-in-UDP runs as UDP_SEGMENT (GSO) messages:
// one trip through the kernel's stack per run instead of per datagram,
// and one receive on a peer that uses UDP_GRO (internal/netio/NOTES.md:
// 2x to 6x the datagrams per second of plain sendmmsg on veth).
type coalescingSender struct{ c UDPConn }

func (s coalescingSender) Send(ms []netio.Msg) (int, error) { return s.c.SendCoalesced(ms) }

func (p *Plane) sendUDP(ms []netio.Msg) {
	p.send(coalescingSender{p.cfg.NATT}, ms)
}
