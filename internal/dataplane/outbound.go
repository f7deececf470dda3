package dataplane

import (
	"encoding/binary"
	"math/rand/v2"
	"net/netip"
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

// outState is one TUN loop's private state.
type outState struct {
	ipid uint16
	// reasm joins transport-mode fragments; frags are the outer fragments
	// of the last outbound call, cut into arena (reset every batch).
	reasm     *reassembler
	frags     [][]byte
	arena     []byte
	arenaUsed int
}

// sort appends what outbound produced (the packet, or the outer
// fragments in st.frags) to the list of the socket it goes to.
func (st *outState) sort(out []byte, kind outKind, to netip.AddrPort, raw, rawAH, udp []netio.Msg, back [][]byte) ([]netio.Msg, []netio.Msg, []netio.Msg, [][]byte) {
	if len(st.frags) > 0 {
		for _, f := range st.frags {
			if kind == outRawAH {
				rawAH = append(rawAH, netio.Msg{Buf: f})
			} else {
				raw = append(raw, netio.Msg{Buf: f})
			}
		}
		st.frags = st.frags[:0]
		return raw, rawAH, udp, back
	}
	switch kind {
	case outRaw:
		raw = append(raw, netio.Msg{Buf: out})
	case outRawAH:
		rawAH = append(rawAH, netio.Msg{Buf: out})
	case outUDP:
		udp = append(udp, netio.Msg{Buf: out, To: to})
	case outTUN:
		back = append(back, out)
	}
	return raw, rawAH, udp, back
}

// outerArena bounds the outer fragments of one TUN batch.
const outerArena = 256 << 10

// outbound decides the fate of the plaintext packet b[off:off+n] read from
// the TUN, sealing it in place. For outTUN the reply is written into icmp
// (which has netio.TUNHeadroom free bytes in front) and returned.
func (p *Plane) outbound(st *outState, b []byte, off, n int, icmp []byte) ([]byte, outKind, netip.AddrPort) {
	pkt := b[off : off+n]
	if iphdr.Version(pkt) != 4 {
		p.dropPkt(nil, drop.Malformed, "tun", netip.Addr{})
		return nil, outDrop, netip.AddrPort{}
	}
	t, err := spd.ParseIPv4Tuple(pkt)
	if err != nil {
		p.dropPkt(nil, drop.Malformed, "tun", netip.Addr{})
		return nil, outDrop, netip.AddrPort{}
	}
	pol := p.cfg.SPD.Lookup(spd.Out, t)
	if pol == nil {
		// Only traffic that policies cover is routed into the TUN; anything
		// else fails closed.
		p.dropPkt(nil, drop.NoPolicy, "tun", t.Dst)
		return nil, outDrop, netip.AddrPort{}
	}
	switch pol.Action {
	case spd.Discard:
		p.dropPkt(nil, drop.Discard, "tun", t.Dst)
		return nil, outDrop, netip.AddrPort{}
	case spd.Bypass:
		p.stats.Bypassed.Add(1)
		return pkt, outRaw, netip.AddrPort{}
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
				return nil, outDrop, netip.AddrPort{}
			}
			p.dropPkt(nil, drop.NoBuffer, "hold", t.Dst)
			return nil, outDrop, netip.AddrPort{}
		}
		p.dropPkt(nil, drop.NoSA, "tun", t.Dst)
		return nil, outDrop, netip.AddrPort{}
	}

	reassembled := false
	if sa.Mode == sad.Transport && isFragment(pkt) {
		if st.reasm == nil {
			st.reasm = newReassembler(time.Now)
		}
		buf, o, m, ok, bad := st.reasm.add(pkt)
		if bad {
			p.dropPkt(sa, drop.Malformed, "reassembly", t.Dst)
			return nil, outDrop, netip.AddrPort{}
		}
		if !ok {
			return nil, outDrop, netip.AddrPort{} // held until the rest arrives
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
		if k, err := netio.FragNeeded(icmp[netio.TUNHeadroom:], pkt, inner, netip.Addr{}); err == nil {
			p.dropPkt(sa, drop.TooBig, "tun", t.Dst)
			return icmp[:netio.TUNHeadroom+k], outTUN, netip.AddrPort{}
		}
		p.dropPkt(sa, drop.TooBig, "tun", t.Dst)
		return nil, outDrop, netip.AddrPort{}
	}

	seq, err := sa.NextSeq()
	if err != nil {
		p.dropPkt(sa, drop.ReasonOf(err), "tun", t.Dst)
		return nil, outDrop, netip.AddrPort{}
	}
	var out []byte
	kind := outRaw
	switch {
	case sa.Proto == sad.ESP && sa.Encap != nil:
		out, err = p.sealUDP(sa, b, off, n, seq)
		kind = outUDP
	case sa.Proto == sad.ESP && sa.Mode == sad.Tunnel:
		st.ipid++
		o := outerFor(sa, pkt, st.ipid)
		out, err = sa.ESP.SealTunnel(b, off, n, sa.SPI, seq, &o)
	case sa.Proto == sad.ESP:
		out, err = sa.ESP.SealTransport(b, off, n, sa.SPI, seq)
	case sa.Mode == sad.Tunnel:
		st.ipid++
		o := outerFor(sa, pkt, st.ipid)
		out, err = sa.AH.SealTunnel(b, off, n, sa.SPI, seq, &o)
		kind = outRawAH
	default:
		out, err = sa.AH.SealTransport(b, off, n, sa.SPI, seq)
		kind = outRawAH
	}
	if err != nil {
		p.dropPkt(sa, drop.ReasonOf(err), "seal", t.Dst)
		return nil, outDrop, netip.AddrPort{}
	}
	sa.CountOut(n)
	p.stats.OutPackets.Add(1)
	p.stats.OutBytes.Add(uint64(n))
	if reassembled && kind != outUDP && len(out) > p.cfg.WireMTU {
		if st.arena == nil {
			st.arena = make([]byte, outerArena)
		}
		st.frags = fragmentOuter(out, p.cfg.WireMTU, st.arena[st.arenaUsed:], st.frags[:0])
		if st.frags == nil {
			p.dropPkt(sa, drop.NoBuffer, "fragment", t.Dst)
			return nil, outDrop, netip.AddrPort{}
		}
		for _, f := range st.frags {
			st.arenaUsed += len(f)
		}
		return nil, kind, netip.AddrPort{}
	}
	if kind == outUDP {
		return out, kind, netip.AddrPortFrom(sa.Dst, sa.Encap.DstPort)
	}
	return out, kind, netip.AddrPort{}
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

// tunLoop reads plaintext batches from the TUN, seals them and sends them.
func (p *Plane) tunLoop() error {
	tun := p.cfg.TUN
	batch := tun.BatchSize()
	if batch < 1 {
		batch = 1
	}
	mtu, err := tun.MTU()
	if err != nil {
		return err
	}
	bufs := make([][]byte, batch)
	sizes := make([]int, batch)
	icmp := make([][]byte, batch)
	for i := range bufs {
		bufs[i] = make([]byte, netio.Headroom+mtu+tailroom)
		icmp[i] = make([]byte, netio.TUNHeadroom+netio.FragNeededMax)
	}
	raw := make([]netio.Msg, 0, batch)
	rawAH := make([]netio.Msg, 0, batch)
	udp := make([]netio.Msg, 0, batch)
	back := make([][]byte, 0, batch)
	st := &outState{ipid: uint16(rand.Uint32())}
	for {
		n, err := tun.Read(bufs, sizes, netio.Headroom)
		if err != nil {
			return err
		}
		raw, rawAH, udp, back = raw[:0], rawAH[:0], udp[:0], back[:0]
		st.arenaUsed = 0
		if st.reasm != nil {
			st.reasm.release()
		}
		for i := 0; i < n; i++ {
			out, kind, to := p.outbound(st, bufs[i], netio.Headroom, sizes[i], icmp[i])
			raw, rawAH, udp, back = st.sort(out, kind, to, raw, rawAH, udp, back)
		}
		p.dispatch(raw, rawAH, udp)
		if len(back) > 0 {
			if _, err := tun.Write(back, netio.TUNHeadroom); err != nil {
				p.stats.SendErrors.Add(uint64(len(back)))
			}
		}
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
type coalescingSender struct{ c *netio.UDPConn }

func (s coalescingSender) Send(ms []netio.Msg) (int, error) { return s.c.SendCoalesced(ms) }

func (p *Plane) sendUDP(ms []netio.Msg) {
	p.send(coalescingSender{p.cfg.NATT.Conn}, ms)
}
