package dataplane

import (
	"bytes"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/internal/clock"
	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/integ"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/internal/testutil"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

var (
	gw1  = netip.MustParseAddr("192.0.2.1")
	gw2  = netip.MustParseAddr("192.0.2.2")
	lan1 = netip.MustParsePrefix("10.1.0.0/24")
	lan2 = netip.MustParsePrefix("10.2.0.0/24")
)

// side is one gateway's databases and plane, without devices: the tests
// call the per-packet functions directly.
type side struct {
	p        *Plane
	sad      *sad.DB
	spd      *spd.DB
	in, out  *sad.SA
	local    netip.Addr
	lsub     netip.Prefix
	rsub     netip.Prefix
	outState outState
}

type suiteSpec struct {
	name  string
	proto sad.Proto
	esp   esp.Config
	ah    ah.Config
}

func newSide(t testing.TB, local, remote netip.Addr, lsub, rsub netip.Prefix, mode sad.Mode, spec suiteSpec, inSPI, outSPI uint32, encap bool) *side {
	t.Helper()
	s := &side{sad: sad.New(clock.NewFake(clockStart), nil), spd: spd.New(), local: local, lsub: lsub, rsub: rsub}
	t.Cleanup(s.sad.Close)
	mk := func(spi uint32, dir sad.Dir, src, dst netip.Addr) *sad.SA {
		sa := &sad.SA{SPI: spi, Proto: spec.proto, Mode: mode, Dir: dir, Src: src, Dst: dst, ReqID: 1}
		var err error
		if spec.proto == sad.ESP {
			sa.ESP, err = esp.NewSuite(spec.esp)
		} else {
			sa.AH, err = ah.NewSuite(spec.ah)
		}
		if err != nil {
			t.Fatal(err)
		}
		if encap {
			sa.Encap = &sad.Encap{SrcPort: 4500, DstPort: 4500}
		}
		if dir == sad.Inbound {
			sa.Replay, _ = sad.NewWindow(64, false)
		}
		if err := s.sad.Add(sa); err != nil {
			t.Fatal(err)
		}
		return sa
	}
	s.in = mk(inSPI, sad.Inbound, remote, local)
	s.out = mk(outSPI, sad.Outbound, local, remote)
	if mode == sad.Transport {
		lsub, rsub = netip.PrefixFrom(local, 32), netip.PrefixFrom(remote, 32)
	}
	for _, dir := range []spd.Direction{spd.Out, spd.In} {
		tsrc, tdst := local, remote
		if dir == spd.In {
			tsrc, tdst = remote, local
		}
		if _, err := s.spd.Add(&spd.Policy{Name: "c", Dir: dir, Action: spd.Protect, ReqID: 1,
			Sel:       spd.Selector{Local: lsub, Remote: rsub, LocalPorts: spd.AnyPort, RemotePorts: spd.AnyPort},
			Templates: []spd.Template{{Proto: uint8(spec.proto), Mode: uint8(mode), TunnelSrc: tsrc, TunnelDst: tdst}}}); err != nil {
			t.Fatal(err)
		}
	}
	s.p = &Plane{cfg: Config{SAD: s.sad, SPD: s.spd, WireMTU: 1500}, log: discardLog, trapSeen: map[uint32]struct{}{}}
	s.p.rl.Log = discardLog
	return s
}

// icmpPacket builds an ICMP echo request with gopacket (the independent
// encoder) at netio.Headroom in a buffer with room for the trailer.
func icmpPacket(t testing.TB, src, dst netip.Addr, payload int) ([]byte, int) {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Id: 7, Flags: layers.IPv4DontFragment, Protocol: layers.IPProtocolICMPv4,
		SrcIP: src.AsSlice(), DstIP: dst.AsSlice()}
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true},
		ip, &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0), Id: 1, Seq: 1}, gopacket.Payload(bytes.Repeat([]byte{0xab}, payload))); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, netio.Headroom+len(buf.Bytes())+tailroom)
	copy(b[netio.Headroom:], buf.Bytes())
	return b, len(buf.Bytes())
}

func specs() []suiteSpec {
	k := func(n int) []byte { return bytes.Repeat([]byte{0x5a}, n) }
	return []suiteSpec{
		{"esp-aes128-sha1", sad.ESP, esp.Config{Cipher: esp.CipherAESCBC, EncKey: k(16), Integ: integ.HMACSHA1_96, AuthKey: k(20)}, ah.Config{}},
		{"esp-aes128gcm16", sad.ESP, esp.Config{Cipher: esp.CipherAESGCM16, EncKey: k(20)}, ah.Config{}},
		{"esp-null-sha256", sad.ESP, esp.Config{Cipher: esp.CipherNull, Integ: integ.HMACSHA256_128, AuthKey: k(32)}, ah.Config{}},
		{"ah-sha256", sad.AH, esp.Config{}, ah.Config{Integ: integ.HMACSHA256_128, Key: k(32)}},
	}
}

// TestPath seals on one side and opens on the other, for every mode and
// protocol, raw and UDP-encapsulated, and checks the inner packet arrives
// unchanged, the counters move and a replay of the same packet is dropped.
func TestPath(t *testing.T) {
	for _, spec := range specs() {
		for _, mode := range []sad.Mode{sad.Tunnel, sad.Transport} {
			for _, encap := range []bool{false, true} {
				if encap && spec.proto == sad.AH {
					continue
				}
				name := spec.name + "/" + mode.String()
				if encap {
					name += "/udp"
				}
				t.Run(name, func(t *testing.T) {
					a := newSide(t, gw1, gw2, lan1, lan2, mode, spec, 0x1001, 0x2001, encap)
					b := newSide(t, gw2, gw1, lan2, lan1, mode, spec, 0x2001, 0x1001, encap)
					src, dst := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2")
					if mode == sad.Transport {
						src, dst = gw1, gw2
					}
					buf, n := icmpPacket(t, src, dst, 100)
					orig := append([]byte(nil), buf[netio.Headroom:netio.Headroom+n]...)
					icmp := make([]byte, netio.TUNHeadroom+netio.FragNeededMax)
					out, kind, to := a.p.outbound(&a.outState, buf, netio.Headroom, n, icmp)
					wantKind := outRaw
					if spec.proto == sad.AH {
						wantKind = outRawAH
					}
					if encap {
						wantKind = outUDP
					}
					if kind != wantKind {
						t.Fatalf("outbound kind %d, want %d; drops %v", kind, wantKind, a.p.Stats().Drops)
					}
					wire := append([]byte(nil), out...)
					var inner []byte
					if encap {
						if to != netip.AddrPortFrom(gw2, 4500) {
							t.Fatalf("UDP destination %v", to)
						}
						var scr scratch
						rx := make([]byte, rxLead+len(wire))
						copy(rx[rxLead:], wire)
						inner = b.p.inboundUDP(rx[rxLead:], netip.AddrPortFrom(gw1, 4500), gw2, &scr)
					} else {
						rx := append([]byte(nil), wire...)
						inner = b.p.inboundRaw(rx)
					}
					if inner == nil {
						t.Fatalf("inbound dropped: %v", b.p.Stats().Drops)
					}
					if mode == sad.Tunnel || !encap {
						if !bytes.Equal(stripMutable(inner), stripMutable(orig)) {
							t.Fatalf("inner packet differs:\n got %x\nwant %x", inner, orig)
						}
					} else if !bytes.Equal(inner[20:], orig[20:]) {
						t.Fatalf("transport payload differs:\n got %x\nwant %x", inner[20:], orig[20:])
					}
					if st := b.in.Stats(); st.PacketsIn != 1 {
						t.Fatalf("inbound SA counted %d packets", st.PacketsIn)
					}
					// The same wire packet again is a replay.
					var again []byte
					if encap {
						var scr scratch
						again = b.p.inboundUDP(append([]byte(nil), wire...), netip.AddrPortFrom(gw1, 4500), gw2, &scr)
					} else {
						again = b.p.inboundRaw(append([]byte(nil), wire...))
					}
					if again != nil || b.in.Stats().Drops[drop.Replay] != 1 {
						t.Fatalf("replay not dropped: drops %v", b.in.Stats().Drops)
					}
				})
			}
		}
	}
}

// stripMutable zeroes the header fields transport mode may rewrite (TTL,
// checksum) so that packets can be compared.
func stripMutable(p []byte) []byte {
	c := append([]byte(nil), p...)
	if len(c) >= 20 {
		c[8], c[10], c[11] = 0, 0, 0
	}
	return c
}

// TestInboundPolicyMismatch: an authentic packet whose inner addresses are
// outside the SA's selectors is dropped (RFC 4301 5.2).
func TestInboundPolicyMismatch(t *testing.T) {
	spec := specs()[0]
	a := newSide(t, gw1, gw2, netip.MustParsePrefix("10.9.0.0/24"), lan2, sad.Tunnel, spec, 0x1001, 0x2001, false)
	b := newSide(t, gw2, gw1, lan2, lan1, sad.Tunnel, spec, 0x2001, 0x1001, false)
	buf, n := icmpPacket(t, netip.MustParseAddr("10.9.0.2"), netip.MustParseAddr("10.2.0.2"), 10)
	icmp := make([]byte, netio.TUNHeadroom+netio.FragNeededMax)
	out, kind, _ := a.p.outbound(&a.outState, buf, netio.Headroom, n, icmp)
	if kind != outRaw {
		t.Fatal("outbound failed")
	}
	if b.p.inboundRaw(append([]byte(nil), out...)) != nil {
		t.Fatal("packet from 10.9.0.2 accepted on an SA for 10.1.0.0/24")
	}
	if got := b.in.Stats().Drops[drop.PolicyMismatch]; got != 1 {
		t.Fatalf("policy-mismatch drops %d", got)
	}
}

// TestOutboundDrops: no policy, a discard policy and a missing SA are each
// dropped and counted.
func TestOutboundDrops(t *testing.T) {
	a := newSide(t, gw1, gw2, lan1, lan2, sad.Tunnel, specs()[1], 0x1001, 0x2001, false)
	icmp := make([]byte, netio.TUNHeadroom+netio.FragNeededMax)
	buf, n := icmpPacket(t, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.7.0.2"), 10)
	if _, kind, _ := a.p.outbound(&a.outState, buf, netio.Headroom, n, icmp); kind != outDrop {
		t.Fatal("packet without policy not dropped")
	}
	a.spd.Add(&spd.Policy{Name: "d", Dir: spd.Out, Action: spd.Discard,
		Sel: spd.Selector{Local: lan1, Remote: netip.MustParsePrefix("10.7.0.0/24"), LocalPorts: spd.AnyPort, RemotePorts: spd.AnyPort}})
	buf, n = icmpPacket(t, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.7.0.2"), 10)
	a.p.outbound(&a.outState, buf, netio.Headroom, n, icmp)
	a.sad.Delete(a.out.SPI, a.out.Proto, a.out.Dst)
	buf, n = icmpPacket(t, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2"), 10)
	a.p.outbound(&a.outState, buf, netio.Headroom, n, icmp)
	st := a.p.Stats()
	for _, r := range []drop.Reason{drop.NoPolicy, drop.Discard, drop.NoSA} {
		if st.Drops[r.String()] != 1 {
			t.Errorf("%v drops = %d, want 1 (%v)", r, st.Drops[r.String()], st.Drops)
		}
	}
}

// TestFragNeeded: a DF packet that would not fit the wire after sealing is
// answered with ICMP fragmentation-needed back into the TUN.
func TestFragNeeded(t *testing.T) {
	a := newSide(t, gw1, gw2, lan1, lan2, sad.Tunnel, specs()[0], 0x1001, 0x2001, false)
	buf, n := icmpPacket(t, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2"), 1472)
	icmp := make([]byte, netio.TUNHeadroom+netio.FragNeededMax)
	out, kind, _ := a.p.outbound(&a.outState, buf, netio.Headroom, n, icmp)
	if kind != outTUN {
		t.Fatalf("kind %d, want outTUN", kind)
	}
	reply := gopacket.NewPacket(out[netio.TUNHeadroom:], layers.LayerTypeIPv4, gopacket.Default)
	ic, ok := reply.Layer(layers.LayerTypeICMPv4).(*layers.ICMPv4)
	if !ok || ic.TypeCode != layers.CreateICMPv4TypeCode(3, 4) {
		t.Fatalf("reply is not frag-needed: %v", reply)
	}
	mtu := int(ic.Seq) // the next-hop MTU sits in the low 16 bits of the rest-of-header
	if mtu+a.p.overhead(a.out, mtu) > 1500 || mtu < 1400 {
		t.Fatalf("advertised MTU %d does not fit 1500 after overhead", mtu)
	}
}

// TestPathAllocs: sealing and opening a packet allocate nothing.
func TestPathAllocs(t *testing.T) {
	if testutil.RaceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	spec := specs()[1]
	a := newSide(t, gw1, gw2, lan1, lan2, sad.Tunnel, spec, 0x1001, 0x2001, false)
	b := newSide(t, gw2, gw1, lan2, lan1, sad.Tunnel, spec, 0x2001, 0x1001, false)
	src, n := icmpPacket(t, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2"), 1000)
	buf := make([]byte, len(src))
	icmp := make([]byte, netio.TUNHeadroom+netio.FragNeededMax)
	run := func() {
		copy(buf, src)
		out, _, _ := a.p.outbound(&a.outState, buf, netio.Headroom, n, icmp)
		if b.p.inboundRaw(out) == nil {
			t.Fatal("dropped")
		}
	}
	run()
	if allocs := testing.AllocsPerRun(200, run); allocs != 0 {
		t.Fatalf("%v allocations per packet", allocs)
	}
}

func BenchmarkPath(b *testing.B) {
	for _, spec := range specs() {
		b.Run(spec.name, func(b *testing.B) {
			a := newSide(b, gw1, gw2, lan1, lan2, sad.Tunnel, spec, 0x1001, 0x2001, false)
			c := newSide(b, gw2, gw1, lan2, lan1, sad.Tunnel, spec, 0x2001, 0x1001, false)
			src, n := icmpPacket(b, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2"), 1372)
			buf := make([]byte, len(src))
			icmp := make([]byte, netio.TUNHeadroom+netio.FragNeededMax)
			b.SetBytes(int64(n))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				copy(buf, src)
				out, _, _ := a.p.outbound(&a.outState, buf, netio.Headroom, n, icmp)
				if c.p.inboundRaw(out) == nil {
					b.Fatal("dropped")
				}
			}
		})
	}
}

var clockStart = time.Unix(1_800_000_000, 0)

var discardLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// TestPolicyChangeMidFlow: the readers' policy caches (spd.Cache) answer
// a flow's next packet as the SPD stands now: a discard added, an In
// policy handed to another SA and both undone take effect on the very
// next packet of the same flow.
func TestPolicyChangeMidFlow(t *testing.T) {
	a := newSide(t, gw1, gw2, lan1, lan2, sad.Tunnel, specs()[1], 0x1001, 0x2001, false)
	src, dst := netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2")
	icmp := make([]byte, netio.TUNHeadroom+netio.FragNeededMax)
	send := func() outKind {
		buf, n := icmpPacket(t, src, dst, 10)
		_, kind, _ := a.p.outbound(&a.outState, buf, netio.Headroom, n, icmp)
		return kind
	}
	var pc spd.Cache
	seq := uint64(0)
	receive := func() bool {
		seq++
		buf, n := icmpPacket(t, dst, src, 10)
		return a.p.finishInbound(a.in, buf[netio.Headroom:netio.Headroom+n], nil, seq, gw2, &pc) != nil
	}
	var inPol *spd.Policy
	for _, p := range a.spd.All() {
		if p.Dir == spd.In {
			inPol = p
		}
	}
	discard := &spd.Policy{Name: "d", Dir: spd.Out, Action: spd.Discard,
		Sel: spd.Selector{Local: netip.PrefixFrom(src, 32), Remote: netip.PrefixFrom(dst, 32), LocalPorts: spd.AnyPort, RemotePorts: spd.AnyPort}}
	var discardID uint64
	steps := []struct {
		name   string
		change func()
		out    outKind
		in     bool
	}{
		{"as set up", func() {}, outRaw, true},
		{"discard added", func() {
			var err error
			if discardID, err = a.spd.Add(discard); err != nil {
				t.Fatal(err)
			}
		}, outDrop, true},
		{"In policy handed to another SA", func() {
			other := *inPol
			other.ReqID = 2
			if err := a.spd.Replace(inPol.ID, &other); err != nil {
				t.Fatal(err)
			}
		}, outDrop, false},
		{"both undone", func() {
			a.spd.Delete(discardID)
			back := *inPol
			if err := a.spd.Replace(inPol.ID, &back); err != nil {
				t.Fatal(err)
			}
		}, outRaw, true},
	}
	for _, s := range steps {
		s.change()
		for i := 0; i < 3; i++ {
			if got := send(); got != s.out {
				t.Fatalf("%s: packet %d: outbound kind %d, want %d", s.name, i, got, s.out)
			}
			if got := receive(); got != s.in {
				t.Fatalf("%s: packet %d: inbound accepted %v, want %v", s.name, i, got, s.in)
			}
		}
	}
	if a.outState.pc.Hits == 0 || pc.Hits == 0 {
		t.Errorf("the caches were never hit (out %d, in %d): the test does not exercise them", a.outState.pc.Hits, pc.Hits)
	}
	st := a.p.Stats()
	if st.Drops[drop.Discard.String()] != 6 || st.Drops[drop.PolicyMismatch.String()] != 3 {
		t.Errorf("drops %v: want 6 discard, 3 policy-mismatch", st.Drops)
	}
}
