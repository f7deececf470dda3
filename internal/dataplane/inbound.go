package dataplane

import (
	"encoding/binary"
	"net/netip"

	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

// rxLead is the free space kept in front of every receive buffer, so that
// an opened packet always has room for the TUN's virtio header and, for
// transport mode over UDP, a rebuilt IPv4 header.
const rxLead = 64

// rxBufSize holds the largest IPv4 packet (a reassembled one included).
const rxBufSize = 65535

// inboundRaw opens pkt, a whole IPv4 packet from a raw ESP or AH socket,
// in place and returns the inner IPv4 packet to write into the TUN, or nil.
func (p *Plane) inboundRaw(pkt []byte) []byte {
	hl, total, err := iphdr.HeaderLen(pkt)
	if err != nil {
		p.dropPkt(nil, drop.Malformed, "raw", netip.Addr{})
		return nil
	}
	pkt = pkt[:total]
	src := netip.AddrFrom4([4]byte(pkt[iphdr.OffSrc : iphdr.OffSrc+4]))
	dst := netip.AddrFrom4([4]byte(pkt[iphdr.OffDst : iphdr.OffDst+4]))
	if binary.BigEndian.Uint16(pkt[iphdr.OffFlagsFrag:])&0x3fff != 0 {
		// The kernel reassembles before raw delivery; a fragment here is junk.
		p.dropPkt(nil, drop.Malformed, "raw", src)
		return nil
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
		return nil
	}
	if err != nil {
		p.dropPkt(nil, drop.Malformed, "raw", src)
		return nil
	}
	sa := p.cfg.SAD.Lookup(spi, proto, dst)
	if sa == nil {
		p.dropPkt(nil, drop.UnknownSPI, "raw", src)
		return nil
	}
	full, ok := p.checkReplay(sa, seq, src)
	if !ok {
		return nil
	}
	var inner []byte
	switch {
	case proto == sad.ESP && sa.Mode == sad.Tunnel:
		inner, err = sa.ESP.OpenTunnel(pkt, full)
	case proto == sad.ESP:
		inner, err = sa.ESP.OpenTransport(pkt, full)
	case sa.Mode == sad.Tunnel:
		inner, err = sa.AH.OpenTunnel(pkt, full)
	default:
		inner, err = sa.AH.OpenTransport(pkt, full)
	}
	return p.finishInbound(sa, inner, err, full, src)
}

// inboundUDP opens b, an ESP packet that arrived in UDP from from, in
// place. Tunnel mode returns the inner packet inside b (preceded by at least
// netio.TUNHeadroom bytes that belong to this or the previous segment's ESP
// header or trailer). Transport mode returns a copy in scr with the IPv4
// header rebuilt in front, since b has no guaranteed room for it.
func (p *Plane) inboundUDP(b []byte, from netip.AddrPort, local netip.Addr, scr *scratch) []byte {
	spi, seq, err := esp.ParseHeader(b)
	if err != nil {
		p.dropPkt(nil, drop.Malformed, "udp", from.Addr())
		return nil
	}
	sa := p.cfg.SAD.Lookup(spi, sad.ESP, local)
	if sa == nil {
		// Behind a NAT the SA's destination may not be the address the
		// socket is bound to; the SPI alone identifies our inbound SA.
		sa = p.cfg.SAD.LookupSPI(spi, sad.ESP)
	}
	if sa == nil {
		p.dropPkt(nil, drop.UnknownSPI, "udp", from.Addr())
		return nil
	}
	full, ok := p.checkReplay(sa, seq, from.Addr())
	if !ok {
		return nil
	}
	payload, nh, err := sa.ESP.Open(b, full)
	if err != nil {
		return p.finishInbound(sa, nil, err, full, from.Addr())
	}
	if sa.Mode == sad.Tunnel {
		if nh != iphdr.ProtoIPIP {
			return p.finishInbound(sa, nil, errInnerProto, full, from.Addr())
		}
		return p.finishInbound(sa, payload, nil, full, from.Addr())
	}
	ip := scr.get(netio.TUNHeadroom + iphdr.IPv4MinLen + len(payload))[netio.TUNHeadroom:]
	copy(ip[iphdr.IPv4MinLen:], payload)
	o := iphdr.Outer{Src: sa.Src.As4(), Dst: sa.Dst.As4(), TTL: 64, ID: uint16(seq) | 1}
	iphdr.PutIPv4(ip, &o, nh, len(ip))
	return p.finishInbound(sa, ip, nil, full, from.Addr())
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

// finishInbound updates the replay window after a good ICV, checks the
// inner packet against the SA's policy and counts it.
func (p *Plane) finishInbound(sa *sad.SA, inner []byte, err error, full uint64, peer netip.Addr) []byte {
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
	if !p.cfg.SPD.CheckInbound(sa.ReqID, t) {
		p.dropPkt(sa, drop.PolicyMismatch, "inner", peer)
		return nil
	}
	sa.CountIn(len(inner))
	p.stats.InPackets.Add(1)
	p.stats.InBytes.Add(uint64(len(inner)))
	return inner
}

// rawLoop receives ESP or AH batches from a raw socket and writes what
// opens into the TUN.
func (p *Plane) rawLoop(c PacketConn) error {
	const batch = 64
	ms := make([]netio.Msg, batch)
	store := make([][]byte, batch)
	for i := range ms {
		store[i] = make([]byte, rxLead+rxBufSize)
	}
	out := make([][]byte, 0, batch)
	for {
		for i := range ms {
			ms[i] = netio.Msg{Buf: store[i][rxLead:]}
		}
		n, err := c.Recv(ms)
		if err != nil {
			return err
		}
		out = out[:0]
		for i := 0; i < n; i++ {
			if ms[i].Trunc {
				p.dropPkt(nil, drop.Malformed, "raw", ms[i].From.Addr())
				continue
			}
			inner := p.inboundRaw(ms[i].Buf[:ms[i].N])
			if inner == nil {
				continue
			}
			out = append(out, tunSlice(store[i], inner, len(store[i])))
		}
		p.writeTUN(out)
	}
}

// udpLoop receives ESP-in-UDP batches and writes what opens into the TUN.
func (p *Plane) udpLoop() error {
	const batch = 32
	ms := make([]netio.Msg, batch)
	store := make([][]byte, batch)
	for i := range ms {
		store[i] = make([]byte, rxLead+rxBufSize)
	}
	pkts := make([]netio.Packet, batch*64)
	local := p.cfg.NATT.Conn.LocalAddr().Addr()
	var scr scratch
	tw := newTUNWriter(p)
	for {
		for i := range ms {
			ms[i] = netio.Msg{Buf: store[i][rxLead:]}
		}
		n, err := p.cfg.NATT.ReadESP(ms, pkts)
		if err != nil {
			return err
		}
		scr.reset()
		for i := 0; i < n; i++ {
			inner := p.inboundUDP(pkts[i].B, pkts[i].From, local, &scr)
			if inner == nil {
				continue
			}
			tw.add(inner)
		}
		tw.flush()
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
// loop's own: nothing is allocated per packet.
type tunWriter struct {
	p    *Plane
	bufs [][]byte
	out  [][]byte
}

func newTUNWriter(p *Plane) *tunWriter {
	w := &tunWriter{p: p, bufs: make([][]byte, tunWriteBatch), out: make([][]byte, 0, tunWriteBatch)}
	for i := range w.bufs {
		w.bufs[i] = make([]byte, netio.TUNHeadroom+rxBufSize)
	}
	return w
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
