package dataplane

import (
	"encoding/binary"
	"net/netip"

	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/internal/pktmem"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

// rxLead is the free space kept in front of every receive buffer, so that
// an opened packet always has room for the TUN's virtio header and, for
// transport mode over UDP, a rebuilt IPv4 header.
const rxLead = 64

// rxBufSize holds the largest IPv4 packet (a reassembled one included).
const rxBufSize = 65535

// inElem is one received ESP or AH packet on its way in: what the reader
// found for it and what the worker made of it.
type inElem struct {
	// Set by the reader; sa nil: dropped.
	sa    *sad.SA
	full  uint64
	peer  netip.Addr
	pkt   []byte // raw: the whole IPv4 packet; UDP: the ESP packet
	proto sad.Proto
	udp   bool
	slot  int // raw: the receive buffer the packet is in
	// Set by the worker.
	inner []byte
	err   error
}

// inboundRaw opens pkt, a whole IPv4 packet from a raw ESP or AH socket,
// in place and returns the inner IPv4 packet to write into the TUN, or nil
// (all in the calling goroutine; the pipeline splits the same work).
func (p *Plane) inboundRaw(pkt []byte) []byte {
	var e inElem
	if !p.rawPrepare(pkt, &e) {
		return nil
	}
	p.open(&e, nil)
	return p.finishOne(&e)
}

// inboundUDP opens b, an ESP packet that arrived in UDP from from, in
// place. Tunnel mode returns the inner packet inside b (preceded by at least
// netio.TUNHeadroom bytes that belong to this or the previous segment's ESP
// header or trailer). Transport mode returns a copy in scr with the IPv4
// header rebuilt in front, since b has no guaranteed room for it.
func (p *Plane) inboundUDP(b []byte, from netip.AddrPort, local netip.Addr, scr *scratch) []byte {
	var e inElem
	if !p.udpPrepare(b, from, local, &e) {
		return nil
	}
	p.open(&e, scr)
	return p.finishOne(&e)
}

// finishOne finishes one packet and counts it.
func (p *Plane) finishOne(e *inElem) []byte {
	inner := p.finishInbound(e.sa, e.inner, e.err, e.full, e.peer, nil)
	if inner != nil {
		e.sa.CountIn(len(inner))
		p.stats.InPackets.Add(1)
		p.stats.InBytes.Add(uint64(len(inner)))
	}
	return inner
}

// rawPrepare is the reader's part for a packet from a raw socket: header
// checks, SA lookup and the replay pre-check. False: dropped.
func (p *Plane) rawPrepare(pkt []byte, e *inElem) bool {
	e.sa, e.inner, e.err, e.udp = nil, nil, nil, false
	hl, total, err := iphdr.HeaderLen(pkt)
	if err != nil {
		p.dropPkt(nil, drop.Malformed, "raw", netip.Addr{})
		return false
	}
	pkt = pkt[:total]
	src := netip.AddrFrom4([4]byte(pkt[iphdr.OffSrc : iphdr.OffSrc+4]))
	dst := netip.AddrFrom4([4]byte(pkt[iphdr.OffDst : iphdr.OffDst+4]))
	if binary.BigEndian.Uint16(pkt[iphdr.OffFlagsFrag:])&0x3fff != 0 {
		// The kernel reassembles before raw delivery; a fragment here is junk.
		p.dropPkt(nil, drop.Malformed, "raw", src)
		return false
	}
	var (
		spi, seq uint32
		proto    sad.Proto
	)
	switch pkt[iphdr.OffProtocol] {
	case iphdr.ProtoESP:
		spi, seq, err = esp.ParseHeader(pkt[hl:])
		proto = sad.ESP
	case iphdr.ProtoAH:
		spi, seq, err = ah.ParseHeader(pkt)
		proto = sad.AH
	default:
		p.dropPkt(nil, drop.Malformed, "raw", src)
		return false
	}
	if err != nil {
		p.dropPkt(nil, drop.Malformed, "raw", src)
		return false
	}
	sa := p.cfg.SAD.Lookup(spi, proto, dst)
	if sa == nil {
		p.dropPkt(nil, drop.UnknownSPI, "raw", src)
		return false
	}
	if proto == sad.ESP && sa.ESP != nil {
		// Too short or not whole blocks: dropped here, before the
		// hand-off to the workers and any cryptography.
		if err := sa.ESP.CheckLength(total - hl); err != nil {
			p.dropPkt(sa, drop.ReasonOf(err), "raw", src)
			return false
		}
	}
	full, ok := p.checkReplay(sa, seq, src)
	if !ok {
		return false
	}
	e.sa, e.full, e.peer, e.pkt, e.proto = sa, full, src, pkt, proto
	return true
}

// udpPrepare is the reader's part for an ESP packet from the NAT-T
// socket. False: dropped.
func (p *Plane) udpPrepare(b []byte, from netip.AddrPort, local netip.Addr, e *inElem) bool {
	e.sa, e.inner, e.err, e.udp = nil, nil, nil, true
	spi, seq, err := esp.ParseHeader(b)
	if err != nil {
		p.dropPkt(nil, drop.Malformed, "udp", from.Addr())
		return false
	}
	sa := p.cfg.SAD.Lookup(spi, sad.ESP, local)
	if sa == nil {
		// Behind a NAT the SA's destination may not be the address the
		// socket is bound to; the SPI alone identifies our inbound SA.
		sa = p.cfg.SAD.LookupSPI(spi, sad.ESP)
	}
	if sa == nil {
		p.dropPkt(nil, drop.UnknownSPI, "udp", from.Addr())
		return false
	}
	if sa.ESP != nil {
		if err := sa.ESP.CheckLength(len(b)); err != nil {
			p.dropPkt(sa, drop.ReasonOf(err), "udp", from.Addr())
			return false
		}
	}
	full, ok := p.checkReplay(sa, seq, from.Addr())
	if !ok {
		return false
	}
	e.sa, e.full, e.peer, e.pkt, e.proto = sa, full, from.Addr(), b, sad.ESP
	return true
}

// open is the workers' part: it authenticates and decrypts e.pkt in place
// into e.inner, or sets e.err. UDP transport mode rebuilds the IPv4 header
// in a buffer from scr.
func (p *Plane) open(e *inElem, scr *scratch) {
	sa, pkt, full := e.sa, e.pkt, e.full
	if !e.udp {
		switch {
		case e.proto == sad.ESP && sa.Mode == sad.Tunnel:
			e.inner, e.err = sa.ESP.OpenTunnel(pkt, full)
		case e.proto == sad.ESP:
			e.inner, e.err = sa.ESP.OpenTransport(pkt, full)
		case sa.Mode == sad.Tunnel:
			e.inner, e.err = sa.AH.OpenTunnel(pkt, full)
		default:
			e.inner, e.err = sa.AH.OpenTransport(pkt, full)
		}
		return
	}
	payload, nh, err := sa.ESP.Open(pkt, full)
	switch {
	case err != nil:
		e.err = err
	case sa.Mode == sad.Tunnel && nh != iphdr.ProtoIPIP:
		e.err = errInnerProto
	case sa.Mode == sad.Tunnel:
		e.inner = payload
	default:
		ip := scr.get(netio.TUNHeadroom + iphdr.IPv4MinLen + len(payload))[netio.TUNHeadroom:]
		copy(ip[iphdr.IPv4MinLen:], payload)
		o := iphdr.Outer{Src: sa.Src.As4(), Dst: sa.Dst.As4(), TTL: 64, ID: uint16(full) | 1}
		iphdr.PutIPv4(ip, &o, nh, len(ip))
		e.inner = ip
	}
}

// scratch hands out reusable buffers for one loop iteration.
type scratch struct {
	bufs [][]byte
	used int
}

func (s *scratch) reset() { s.used = 0 }

func (s *scratch) get(n int) []byte {
	if s.used == len(s.bufs) {
		s.bufs = append(s.bufs, make([]byte, rxBufSize+rxLead))
	}
	b := s.bufs[s.used]
	s.used++
	return b[:n]
}

var (
	errInnerProto = drop.New(drop.Malformed, "dataplane: inner packet is not IPv4")
	errNoRoom     = drop.New(drop.NoBuffer, "dataplane: no room to rebuild the IPv4 header")
)

// checkReplay runs the replay check before any cryptography (RFC 4303 3.4.3).
func (p *Plane) checkReplay(sa *sad.SA, seq uint32, peer netip.Addr) (uint64, bool) {
	if sa.Replay == nil {
		return uint64(seq), true
	}
	full, err := sa.Replay.Check(seq)
	if err != nil {
		p.dropPkt(sa, drop.ReasonOf(err), "replay", peer)
		return 0, false
	}
	return full, true
}

// finishInbound updates the replay window after a good ICV and checks the
// inner packet against the SA's policy; the caller counts it. The pipeline
// runs it in its sequential stage, so that the window moves in the order
// the packets arrived. The policy check goes through pc when it is not nil
// (the stage's own cache: a batch is mostly runs of one flow).
func (p *Plane) finishInbound(sa *sad.SA, inner []byte, err error, full uint64, peer netip.Addr, pc *spd.Cache) []byte {
	if err != nil {
		r := drop.ReasonOf(err)
		if r == drop.Padding || r == drop.Dummy {
			// Authentic packets: their sequence numbers are used up.
			if sa.Replay != nil {
				sa.Replay.Update(full)
			}
		}
		p.dropPkt(sa, r, "open", peer)
		return nil
	}
	if sa.Replay != nil {
		if err := sa.Replay.Update(full); err != nil {
			p.dropPkt(sa, drop.ReasonOf(err), "replay", peer)
			return nil
		}
	}
	t, err := spd.ParseIPv4Tuple(inner)
	if err != nil {
		p.dropPkt(sa, drop.Malformed, "inner", peer)
		return nil
	}
	if !pc.CheckInbound(p.cfg.SPD, sa.ReqID, t) {
		p.dropPkt(sa, drop.PolicyMismatch, "inner", peer)
		return nil
	}
	return inner
}

// inBatch is a socket reader's container: one receive and what becomes
// of each packet in it.
type inBatch struct {
	batchSync
	p     *Plane
	ms    []netio.Msg
	store [][]byte
	pkts  []netio.Packet // UDP: the ESP packets of the receive
	els   []inElem
	n     int
	scr   scratch       // UDP transport mode's rebuilt packets
	mem   *pktmem.Block // store's memory, outside the Go heap
}

// newInBatch returns a receive container; its owner frees it (free) once
// no stage of the pipeline holds it.
func newInBatch(p *Plane, msgs, pkts int) *inBatch {
	b := &inBatch{p: p, ms: make([]netio.Msg, msgs), els: make([]inElem, pkts)}
	b.mem, b.store = pktmem.New(msgs, rxLead+rxBufSize)
	if pkts > msgs {
		b.pkts = make([]netio.Packet, pkts)
	}
	return b
}

// freeInBatches releases the containers' buffers.
func freeInBatches(batches []*inBatch) {
	for _, b := range batches {
		if err := b.mem.Free(); err != nil {
			b.p.log.Warn("data plane: freeing receive buffers", "err", err)
		}
	}
}

// arm offers the receive buffers again.
func (b *inBatch) arm() {
	for i := range b.ms {
		b.ms[i] = netio.Msg{Buf: b.store[i][rxLead:]}
	}
}

// crypt opens the batch's packets (a worker, or the reader inline).
func (b *inBatch) crypt() {
	b.scr.reset()
	for i := 0; i < b.n; i++ {
		if e := &b.els[i]; e.sa != nil {
			b.p.open(e, &b.scr)
		}
	}
}

// inSink is a sequential stage's way into the TUN, reused across batches.
type inSink struct {
	out [][]byte   // raw: packets in their receive buffers
	tw  *tunWriter // UDP: copies behind GRO super-buffers
	run saRun
	pc  spd.Cache // the inner packets' policy checks
}

// finish updates replay windows, checks policies, counts and writes the
// batch into the TUN, in the order it was received.
func (b *inBatch) finish(s *inSink) {
	p := b.p
	s.out = s.out[:0]
	for i := 0; i < b.n; i++ {
		e := &b.els[i]
		if e.sa == nil {
			continue
		}
		inner := p.finishInbound(e.sa, e.inner, e.err, e.full, e.peer, &s.pc)
		if inner == nil {
			continue
		}
		s.run.add(e.sa, len(inner))
		if s.tw != nil {
			s.tw.add(inner)
		} else {
			s.out = append(s.out, tunSlice(b.store[e.slot], inner, len(b.store[e.slot])))
		}
	}
	s.run.flush(p)
	if s.tw != nil {
		s.tw.flush()
	} else {
		p.writeTUN(s.out)
	}
}

// rawBatch is how many packets one raw socket receive takes.
const rawBatch = 64

// rawLoop receives ESP or AH batches from a raw socket and passes them
// down the pipeline (open on the workers, write to the TUN in order).
func (p *Plane) rawLoop(c PacketConn, jobs chan cryptoJob, workers int) error {
	batches := make([]*inBatch, lanes(workers))
	for i := range batches {
		batches[i] = newInBatch(p, rawBatch, rawBatch)
	}
	defer freeInBatches(batches) // after l.close: nothing holds them then
	sink := &inSink{out: make([][]byte, 0, rawBatch)}
	l := newLane(p, jobs, batches, func(b *inBatch) { b.finish(sink) })
	defer l.close()
	for {
		b := l.get()
		b.arm()
		n, err := c.Recv(b.ms)
		if err != nil {
			l.put(b)
			return err
		}
		work := 0
		for i := 0; i < n; i++ {
			e := &b.els[i]
			e.sa = nil
			if b.ms[i].Trunc {
				p.dropPkt(nil, drop.Malformed, "raw", b.ms[i].From.Addr())
				continue
			}
			if p.rawPrepare(b.ms[i].Buf[:b.ms[i].N], e) {
				e.slot = i
				work++
			}
		}
		b.n = n
		l.submit(b, work)
	}
}

// UDP receive batches: datagrams per receive, and ESP packets they may
// hold once GRO super-buffers are split.
const (
	udpBatch   = 32
	udpPackets = udpBatch * 64
)

// udpLoop receives ESP-in-UDP batches from c and passes them down the
// pipeline.
func (p *Plane) udpLoop(c UDPConn, jobs chan cryptoJob, workers int) error {
	batches := make([]*inBatch, lanes(workers))
	for i := range batches {
		batches[i] = newInBatch(p, udpBatch, udpPackets)
	}
	defer freeInBatches(batches) // after l.close: nothing holds them then
	local := c.LocalAddr().Addr()
	sink := &inSink{tw: newTUNWriter(p)}
	defer sink.tw.free()
	l := newLane(p, jobs, batches, func(b *inBatch) { b.finish(sink) })
	defer l.close()
	for {
		b := l.get()
		b.arm()
		n, err := c.ReadESP(b.ms, b.pkts)
		if err != nil {
			l.put(b)
			return err
		}
		work := 0
		for i := 0; i < n; i++ {
			if p.udpPrepare(b.pkts[i].B, b.pkts[i].From, local, &b.els[i]) {
				work++
			}
		}
		b.n = n
		l.submit(b, work)
	}
}

// tunWriteBatch is how many packets one TUN write takes.
const tunWriteBatch = 128

// tunWriter copies opened packets into buffers with room behind them, so
// that the TUN's TCP/UDP coalescing (GRO on write) can merge consecutive
// segments into one large packet: the segments of a UDP GRO receive
// buffer sit back to back and leave it no room. One copy of ~1.4 KB per
// packet buys the kernel one trip through its stack per merged packet
// instead of per segment. The buffers (tunWriteBatch x 64 KB) are the
// loop's own, outside the Go heap (pktmem): nothing is allocated per
// packet.
type tunWriter struct {
	p    *Plane
	bufs [][]byte
	out  [][]byte
	mem  *pktmem.Block
}

func newTUNWriter(p *Plane) *tunWriter {
	w := &tunWriter{p: p, out: make([][]byte, 0, tunWriteBatch)}
	w.mem, w.bufs = pktmem.New(tunWriteBatch, netio.TUNHeadroom+rxBufSize)
	return w
}

// free releases the buffers; the writer must not be used afterwards.
func (w *tunWriter) free() {
	if err := w.mem.Free(); err != nil {
		w.p.log.Warn("data plane: freeing TUN write buffers", "err", err)
	}
}

func (w *tunWriter) add(inner []byte) {
	if len(w.out) == tunWriteBatch {
		w.flush()
	}
	b := w.bufs[len(w.out)]
	n := copy(b[netio.TUNHeadroom:], inner)
	w.out = append(w.out, b[:netio.TUNHeadroom+n])
}

func (w *tunWriter) flush() {
	w.p.writeTUN(w.out)
	w.out = w.out[:0]
}

// tunSlice returns inner re-sliced from its backing buffer buf (of length
// size) so that netio.TUNHeadroom bytes precede it, keeping the capacity to
// the end of the buffer so that the TUN can coalesce into it.
func tunSlice(buf, inner []byte, size int) []byte {
	start := size - cap(inner)
	return buf[start-netio.TUNHeadroom : start+len(inner)]
}

// writeTUN writes packets that each have netio.TUNHeadroom bytes in front.
func (p *Plane) writeTUN(out [][]byte) {
	if len(out) == 0 {
		return
	}
	if _, err := p.cfg.TUN.Write(out, netio.TUNHeadroom); err != nil {
		p.stats.SendErrors.Add(uint64(len(out)))
		p.rl.Warn("tunwrite", "TUN write failed", "err", err)
	}
}
