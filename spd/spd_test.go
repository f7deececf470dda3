package spd

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"sync"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"

	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

func pfx(s string) netip.Prefix { return netip.MustParsePrefix(s) }
func addr(s string) netip.Addr  { return netip.MustParseAddr(s) }

func pol(name string, dir Direction, local, remote string, act Action) *Policy {
	return &Policy{Name: name, Dir: dir, Sel: Selector{Local: pfx(local), Remote: pfx(remote), LocalPorts: AnyPort, RemotePorts: AnyPort},
		Action: act, ReqID: 1}
}

// linear is the reference: the best policy by a full scan.
func linear(all []*Policy, d Direction, t Tuple) *Policy {
	var best *Policy
	for _, p := range all {
		if p.Dir != d || !p.Sel.matches(d, &t) {
			continue
		}
		if best == nil || less(p, best) {
			best = p
		}
	}
	return best
}

func TestLookup(t *testing.T) {
	db := New()
	add := func(p *Policy) *Policy {
		if _, err := db.Add(p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	wide := add(pol("wide", Out, "10.1.0.0/16", "10.2.0.0/16", Protect))
	narrow := add(pol("narrow", Out, "10.1.0.0/24", "10.2.0.0/24", Protect))
	byp := add(pol("bypass", Out, "10.1.0.0/24", "10.2.0.5/32", Bypass))
	disc := add(pol("discard", Out, "0.0.0.0/0", "10.9.0.0/16", Discard))
	web := &Policy{Name: "web", Dir: Out, Action: Protect, ReqID: 7, Sel: Selector{Local: pfx("10.1.0.0/24"), Remote: pfx("10.2.0.0/24"),
		Proto: 6, LocalPorts: AnyPort, RemotePorts: PortRange{80, 80}}}
	add(web)
	prio := &Policy{Name: "prio", Dir: Out, Action: Discard, Priority: 0, Sel: Selector{Local: pfx("10.1.0.0/16"), Remote: pfx("10.3.0.0/16"), LocalPorts: AnyPort, RemotePorts: AnyPort}}
	add(prio)
	low := pol("low", Out, "10.1.0.0/24", "10.3.0.0/24", Protect)
	low.Priority = 10
	add(low)
	in := add(pol("in", In, "10.1.0.0/24", "10.2.0.0/24", Protect))
	icmpEcho := &Policy{Name: "echo", Dir: Out, Action: Bypass, Sel: Selector{Local: pfx("10.1.0.0/24"), Remote: pfx("10.2.0.0/24"),
		Proto: 1, LocalPorts: PortRange{8, 8}, RemotePorts: AnyPort}}
	add(icmpEcho)

	tests := []struct {
		name string
		dir  Direction
		t    Tuple
		want *Policy
	}{
		{"most specific wins", Out, Tuple{Src: addr("10.1.0.1"), Dst: addr("10.2.0.9"), Proto: 17, SrcPort: 1, DstPort: 53}, narrow},
		{"only the wide one", Out, Tuple{Src: addr("10.1.5.1"), Dst: addr("10.2.7.9"), Proto: 17}, wide},
		{"host bypass", Out, Tuple{Src: addr("10.1.0.1"), Dst: addr("10.2.0.5"), Proto: 17}, byp},
		{"port selector", Out, Tuple{Src: addr("10.1.0.1"), Dst: addr("10.2.0.9"), Proto: 6, SrcPort: 40000, DstPort: 80}, web},
		{"port selector misses other port", Out, Tuple{Src: addr("10.1.0.1"), Dst: addr("10.2.0.9"), Proto: 6, SrcPort: 40000, DstPort: 81}, narrow},
		{"discard", Out, Tuple{Src: addr("192.168.0.1"), Dst: addr("10.9.1.1"), Proto: 1}, disc},
		{"priority beats specificity", Out, Tuple{Src: addr("10.1.0.1"), Dst: addr("10.3.0.1"), Proto: 6}, prio},
		{"no policy", Out, Tuple{Src: addr("10.7.0.1"), Dst: addr("10.8.0.1")}, nil},
		{"direction is separate", In, Tuple{Src: addr("10.2.0.9"), Dst: addr("10.1.0.1"), Proto: 17}, in},
		{"in does not match out tuple", In, Tuple{Src: addr("10.1.0.1"), Dst: addr("10.2.0.9"), Proto: 17}, nil},
		{"icmp echo request by type", Out, Tuple{Src: addr("10.1.0.1"), Dst: addr("10.2.0.9"), Proto: 1, SrcPort: 8, DstPort: 0}, icmpEcho},
		{"icmp echo reply not", Out, Tuple{Src: addr("10.1.0.1"), Dst: addr("10.2.0.9"), Proto: 1, SrcPort: 0, DstPort: 0}, narrow},
		{"ipv6 tuple finds nothing", Out, Tuple{Src: addr("2001:db8::1"), Dst: addr("2001:db8::2")}, nil},
	}
	for _, tc := range tests {
		got := db.Lookup(tc.dir, tc.t)
		if got != tc.want {
			t.Errorf("%s: got %v, want %v", tc.name, name(got), name(tc.want))
		}
	}
	if !db.CheckInbound(1, Tuple{Src: addr("10.2.0.9"), Dst: addr("10.1.0.1"), Proto: 6}) {
		t.Error("inbound check rejected a packet of its own policy")
	}
	if db.CheckInbound(2, Tuple{Src: addr("10.2.0.9"), Dst: addr("10.1.0.1"), Proto: 6}) {
		t.Error("inbound check accepted a packet on another reqid's SA")
	}
	if db.CheckInbound(1, Tuple{Src: addr("10.5.0.9"), Dst: addr("10.1.0.1"), Proto: 6}) {
		t.Error("inbound check accepted a packet outside the selectors")
	}
	if !db.Cleartext(Tuple{Src: addr("10.2.0.9"), Dst: addr("10.1.0.1")}) {
		t.Error("cleartext from a protected subnet not flagged")
	}

	// Delete and DeleteConn.
	if !db.Delete(narrow.ID) {
		t.Fatal("Delete failed")
	}
	if got := db.Lookup(Out, Tuple{Src: addr("10.1.0.1"), Dst: addr("10.2.0.9"), Proto: 17}); got != wide {
		t.Errorf("after delete: %v", name(got))
	}
	if n := db.DeleteConn("wide"); n != 1 {
		t.Errorf("DeleteConn removed %d", n)
	}
	if got := db.Lookup(Out, Tuple{Src: addr("10.1.0.1"), Dst: addr("10.2.0.9"), Proto: 17}); got != nil {
		t.Errorf("after DeleteConn: %v", name(got))
	}
}

func name(p *Policy) string {
	if p == nil {
		return "<nil>"
	}
	return p.Name
}

func TestValidate(t *testing.T) {
	bad := []*Policy{
		nil,
		{Dir: Out, Action: Protect, ReqID: 0, Sel: Selector{Local: pfx("10.0.0.0/8"), Remote: pfx("10.0.0.0/8"), LocalPorts: AnyPort, RemotePorts: AnyPort}},
		{Dir: Out, Action: Bypass, Sel: Selector{Local: pfx("10.0.0.0/8"), Remote: pfx("2001:db8::/32"), LocalPorts: AnyPort, RemotePorts: AnyPort}},
		{Dir: Out, Action: Bypass, Sel: Selector{Local: pfx("10.0.0.0/8"), Remote: pfx("10.0.0.0/8"), LocalPorts: PortRange{5, 4}, RemotePorts: AnyPort}},
		{Dir: 9, Action: Bypass, Sel: Selector{Local: pfx("10.0.0.0/8"), Remote: pfx("10.0.0.0/8")}},
		{Dir: Out, Action: Bypass},
	}
	db := New()
	for i, p := range bad {
		if _, err := db.Add(p); err == nil {
			t.Errorf("case %d accepted", i)
		}
	}
}

func randPolicy(r *rand.Rand, i int) *Policy {
	rp := func() netip.Prefix {
		bits := []int{0, 8, 16, 24, 32}[r.IntN(5)]
		a := netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(4)), byte(r.IntN(4))})
		return netip.PrefixFrom(a, bits).Masked()
	}
	ports := func() PortRange {
		if r.IntN(3) > 0 {
			return AnyPort
		}
		lo := uint16(r.IntN(4))
		return PortRange{lo, lo + uint16(r.IntN(3))}
	}
	p := &Policy{Name: fmt.Sprint(i), Dir: Direction(r.IntN(3)), Sel: Selector{Local: rp(), Remote: rp(), LocalPorts: ports(), RemotePorts: ports()},
		Action: Action(r.IntN(3)), ReqID: uint32(1 + r.IntN(5)), Priority: uint32(r.IntN(3))}
	if r.IntN(2) == 0 {
		p.Sel.Proto = []uint8{1, 6, 17}[r.IntN(3)]
	}
	return p
}

func randTuple(r *rand.Rand) Tuple {
	a := func() netip.Addr {
		return netip.AddrFrom4([4]byte{10, byte(r.IntN(4)), byte(r.IntN(4)), byte(r.IntN(4))})
	}
	return Tuple{Src: a(), Dst: a(), Proto: []uint8{1, 6, 17, 47}[r.IntN(4)], SrcPort: uint16(r.IntN(6)), DstPort: uint16(r.IntN(6))}
}

// TestIndexMatchesLinear compares the trie with a full scan on random
// policies and tuples.
func TestIndexMatchesLinear(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for round := 0; round < 20; round++ {
		db := New()
		var all []*Policy
		for i := 0; i < 300; i++ {
			p := randPolicy(r, i)
			if _, err := db.Add(p); err != nil {
				t.Fatal(err)
			}
			all = append(all, p)
		}
		check := func(stage string) {
			for i := 0; i < 2000; i++ {
				tu := randTuple(r)
				d := Direction(r.IntN(3))
				if got, want := db.Lookup(d, tu), linear(all, d, tu); got != want {
					t.Fatalf("round %d %s: %v %+v: index %v, linear %v", round, stage, d, tu, name(got), name(want))
				}
			}
		}
		check("after adds")
		// Delete a third and replace a few; the index must follow.
		for i := 0; i < 100; i++ {
			k := r.IntN(len(all))
			db.Delete(all[k].ID)
			all = append(all[:k], all[k+1:]...)
		}
		for i := 0; i < 20; i++ {
			k := r.IntN(len(all))
			np := randPolicy(r, 1000+i)
			if err := db.Replace(all[k].ID, np); err != nil {
				t.Fatal(err)
			}
			all[k] = np
		}
		check("after deletes and replaces")
	}
}

func FuzzLookup(f *testing.F) {
	f.Add(uint64(1), uint64(2), 50)
	f.Fuzz(func(t *testing.T, s1, s2 uint64, n int) {
		r := rand.New(rand.NewPCG(s1, s2))
		n = n%200 + 1
		if n < 0 {
			n = -n
		}
		db := New()
		var all []*Policy
		for i := 0; i < n; i++ {
			p := randPolicy(r, i)
			db.Add(p)
			all = append(all, p)
		}
		for i := 0; i < 100; i++ {
			tu := randTuple(r)
			d := Direction(r.IntN(3))
			if got, want := db.Lookup(d, tu), linear(all, d, tu); got != want {
				t.Fatalf("%v %+v: index %v, linear %v", d, tu, name(got), name(want))
			}
		}
	})
}

func TestConcurrentLookup(t *testing.T) {
	db := New()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(g), 9))
			for {
				select {
				case <-stop:
					return
				default:
				}
				db.Lookup(Out, randTuple(r))
			}
		}()
	}
	r := rand.New(rand.NewPCG(5, 5))
	var ids []uint64
	for i := 0; i < 500; i++ {
		id, _ := db.Add(randPolicy(r, i))
		ids = append(ids, id)
		if i%3 == 0 {
			db.Delete(ids[r.IntN(len(ids))])
		}
	}
	close(stop)
	wg.Wait()
}

// packet builds an IPv4 packet with gopacket, the independent encoder.
func packet(t testing.TB, l ...gopacket.SerializableLayer) []byte {
	buf := gopacket.NewSerializeBuffer()
	if err := gopacket.SerializeLayers(buf, gopacket.SerializeOptions{FixLengths: true, ComputeChecksums: true}, l...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestParseIPv4Tuple(t *testing.T) {
	ip := func(p layers.IPProtocol) *layers.IPv4 {
		return &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: p, SrcIP: []byte{10, 1, 0, 2}, DstIP: []byte{10, 2, 0, 2}}
	}
	tcp := &layers.TCP{SrcPort: 40000, DstPort: 443, Window: 100}
	tcpIP := ip(layers.IPProtocolTCP)
	tcp.SetNetworkLayerForChecksum(tcpIP)
	udp := &layers.UDP{SrcPort: 5353, DstPort: 53}
	udpIP := ip(layers.IPProtocolUDP)
	udp.SetNetworkLayerForChecksum(udpIP)
	frag := ip(layers.IPProtocolUDP)
	frag.FragOffset = 100
	first := ip(layers.IPProtocolUDP)
	first.Flags = layers.IPv4MoreFragments
	udpFirst := &layers.UDP{SrcPort: 4500, DstPort: 4501}
	udpFirst.SetNetworkLayerForChecksum(first)
	firstShort := ip(layers.IPProtocolUDP)
	firstShort.Flags = layers.IPv4MoreFragments
	opts := ip(layers.IPProtocolTCP)
	opts.Options = []layers.IPv4Option{{OptionType: 148, OptionLength: 4, OptionData: []byte{0, 0}}}
	opts.IHL = 6
	tcp2 := &layers.TCP{SrcPort: 1, DstPort: 2, Window: 100}
	tcp2.SetNetworkLayerForChecksum(opts)
	tests := []struct {
		name string
		pkt  []byte
		want Tuple
		err  bool
	}{
		{"tcp", packet(t, tcpIP, tcp, gopacket.Payload("x")), Tuple{Src: addr("10.1.0.2"), Dst: addr("10.2.0.2"), Proto: 6, SrcPort: 40000, DstPort: 443}, false},
		{"udp", packet(t, udpIP, udp), Tuple{Src: addr("10.1.0.2"), Dst: addr("10.2.0.2"), Proto: 17, SrcPort: 5353, DstPort: 53}, false},
		{"icmp echo", packet(t, ip(layers.IPProtocolICMPv4), &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(8, 0)}), Tuple{Src: addr("10.1.0.2"), Dst: addr("10.2.0.2"), Proto: 1, SrcPort: 8}, false},
		{"icmp unreachable", packet(t, ip(layers.IPProtocolICMPv4), &layers.ICMPv4{TypeCode: layers.CreateICMPv4TypeCode(3, 4)}), Tuple{Src: addr("10.1.0.2"), Dst: addr("10.2.0.2"), Proto: 1, SrcPort: 3, DstPort: 4}, false},
		{"non-first fragment is opaque", packet(t, frag, gopacket.Payload("abcdefgh")), Tuple{Src: addr("10.1.0.2"), Dst: addr("10.2.0.2"), Proto: 17}, false},
		{"first fragment has ports", packet(t, first, udpFirst, gopacket.Payload("abcdefgh")), Tuple{Src: addr("10.1.0.2"), Dst: addr("10.2.0.2"), Proto: 17, SrcPort: 4500, DstPort: 4501}, false},
		{"first fragment too short for ports", packet(t, firstShort, gopacket.Payload("ab")), Tuple{}, true},
		{"truncated icmp", packet(t, ip(layers.IPProtocolICMPv4), gopacket.Payload("a")), Tuple{}, true},
		{"total length beyond buffer", func() []byte { b := packet(t, udpIP, udp); return b[:len(b)-1] }(), Tuple{}, true},
		{"options", packet(t, opts, tcp2), Tuple{Src: addr("10.1.0.2"), Dst: addr("10.2.0.2"), Proto: 6, SrcPort: 1, DstPort: 2}, false},
		{"gre no ports", packet(t, ip(layers.IPProtocolGRE), gopacket.Payload("abcd")), Tuple{Src: addr("10.1.0.2"), Dst: addr("10.2.0.2"), Proto: 47}, false},
		{"truncated tcp", packet(t, ip(layers.IPProtocolTCP), gopacket.Payload("ab")), Tuple{}, true},
		{"short header", []byte{0x45, 0, 0, 10}, Tuple{}, true},
		{"ipv6", []byte{0x60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, Tuple{}, true},
	}
	for _, tc := range tests {
		got, err := ParseIPv4Tuple(tc.pkt)
		if (err != nil) != tc.err || got != tc.want {
			t.Errorf("%s: got %+v, %v; want %+v, err %v", tc.name, got, err, tc.want, tc.err)
		}
	}
	if _, err := ParseIPv4Tuple([]byte{0x60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}); err != ErrNotIPv4 || drop.ReasonOf(err) != drop.Malformed {
		t.Errorf("IPv6 packet: %v", err)
	}
	if _, err := ParseIPv4Tuple([]byte{0x45}); err != ErrTuple || drop.ReasonOf(err) != drop.Malformed {
		t.Errorf("1-byte packet: %v", err)
	}
	if !testutil.RaceEnabled {
		p := packet(t, tcpIP, tcp)
		if a := testing.AllocsPerRun(100, func() { ParseIPv4Tuple(p) }); a != 0 {
			t.Errorf("ParseIPv4Tuple allocates %v", a)
		}
	}
}

func FuzzParseIPv4Tuple(f *testing.F) {
	f.Add([]byte{0x45, 0, 0, 20, 0, 0, 0, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2})
	f.Fuzz(func(t *testing.T, b []byte) {
		ParseIPv4Tuple(b)
	})
}

// sitePolicies makes n site-to-site policies: /24 <-> /24 pairs and a few
// host policies, as a large concentrator would have.
func sitePolicies(n int) []*Policy {
	var out []*Policy
	for i := 0; i < n; i++ {
		remote := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)
		local := netip.PrefixFrom(netip.AddrFrom4([4]byte{172, 16, byte(i % 16), 0}), 24)
		if i%10 == 0 {
			remote = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 1}), 32)
		}
		out = append(out, &Policy{Name: fmt.Sprint(i), Dir: Out, Action: Protect, ReqID: uint32(i + 1),
			Sel: Selector{Local: local, Remote: remote, LocalPorts: AnyPort, RemotePorts: AnyPort}})
	}
	return out
}

func BenchmarkLookup(b *testing.B) {
	for _, n := range []int{10, 1000, 10000} {
		all := sitePolicies(n)
		db := New()
		for _, p := range all {
			db.Add(p)
		}
		tu := Tuple{Src: netip.AddrFrom4([4]byte{172, 16, byte((n - 3) % 16), 9}), Dst: netip.AddrFrom4([4]byte{10, byte((n - 3) >> 8), byte(n - 3), 7}), Proto: 6, SrcPort: 1000, DstPort: 80}
		if db.Lookup(Out, tu) == nil && n > 16 {
			b.Fatal("benchmark tuple matches nothing")
		}
		b.Run(fmt.Sprintf("index/%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				db.Lookup(Out, tu)
			}
		})
		b.Run(fmt.Sprintf("linear/%d", n), func(b *testing.B) {
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				linear(all, Out, tu)
			}
		})
	}
}

func BenchmarkParseIPv4Tuple(b *testing.B) {
	ip := &layers.IPv4{Version: 4, IHL: 5, TTL: 64, Protocol: layers.IPProtocolUDP, SrcIP: []byte{10, 1, 0, 2}, DstIP: []byte{10, 2, 0, 2}}
	udp := &layers.UDP{SrcPort: 1, DstPort: 2}
	udp.SetNetworkLayerForChecksum(ip)
	p := packet(b, ip, udp)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		ParseIPv4Tuple(p)
	}
}

func TestLookupZeroAllocs(t *testing.T) {
	if testutil.RaceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	db := New()
	for _, p := range sitePolicies(1000) {
		db.Add(p)
	}
	tu := Tuple{Src: addr("172.16.5.9"), Dst: addr("10.3.200.7"), Proto: 6}
	if a := testing.AllocsPerRun(100, func() { db.Lookup(Out, tu) }); a != 0 {
		t.Fatalf("Lookup allocates %v", a)
	}
	in := Tuple{Src: tu.Dst, Dst: tu.Src, Proto: 6}
	if a := testing.AllocsPerRun(100, func() { db.CheckInbound(1, in); db.LookupIn(in); db.Cleartext(in) }); a != 0 {
		t.Fatalf("inbound checks allocate %v", a)
	}
}
