package spd

import (
	"net/netip"
	"testing"
)

func TestTemplateValidation(t *testing.T) {
	base := func(tm ...Template) *Policy {
		p := pol("c", Out, "10.1.0.0/24", "10.2.0.0/24", Protect)
		p.Templates = tm
		return p
	}
	gw1, gw2, gw6 := addr("192.0.2.1"), addr("192.0.2.2"), addr("2001:db8::1")
	tests := []struct {
		name string
		p    *Policy
		ok   bool
	}{
		{"esp tunnel", base(Template{Proto: 50, Mode: TemplateTunnel, TunnelSrc: gw1, TunnelDst: gw2}), true},
		{"ah+esp transport bundle", base(Template{Proto: 50}, Template{Proto: 51}), true},
		{"transport may carry endpoints", base(Template{Proto: 51, TunnelSrc: gw1, TunnelDst: gw2}), true},
		{"no templates", base(), true},
		{"ipcomp not a template", base(Template{Proto: 108}), false},
		{"tunnel without endpoints", base(Template{Proto: 50, Mode: TemplateTunnel}), false},
		{"tunnel mixed families", base(Template{Proto: 50, Mode: TemplateTunnel, TunnelSrc: gw1, TunnelDst: gw6}), false},
		{"bad mode", base(Template{Proto: 50, Mode: 7}), false},
		{"trap on bypass", func() *Policy { p := pol("c", Out, "10.0.0.0/8", "10.0.0.0/8", Bypass); p.Trap = true; return p }(), false},
	}
	for _, tc := range tests {
		_, err := New().Add(tc.p)
		if (err == nil) != tc.ok {
			t.Errorf("%s: err %v, want ok=%v", tc.name, err, tc.ok)
		}
	}
}

func TestAddTwiceAndReplace(t *testing.T) {
	db := New()
	p := pol("a", Out, "10.1.0.0/24", "10.2.0.0/24", Protect)
	id, err := db.Add(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Add(p); err == nil {
		t.Error("the same policy was added twice")
	}
	if err := db.Replace(id+100, pol("x", Out, "10.0.0.0/8", "10.0.0.0/8", Bypass)); err == nil {
		t.Error("Replace of an unknown ID succeeded")
	}
	if err := db.Replace(id, &Policy{Dir: Out}); err == nil {
		t.Error("Replace with an invalid policy succeeded")
	}
	// Replace with a new policy: the old selector no longer matches.
	q := pol("b", Out, "10.1.0.0/24", "10.3.0.0/24", Protect)
	if err := db.Replace(id, q); err != nil {
		t.Fatal(err)
	}
	if q.ID != id {
		t.Errorf("replacement has ID %d, want %d", q.ID, id)
	}
	out2 := Tuple{Src: addr("10.1.0.1"), Dst: addr("10.2.0.1")}
	out3 := Tuple{Src: addr("10.1.0.1"), Dst: addr("10.3.0.1")}
	if db.Lookup(Out, out2) != nil || db.Lookup(Out, out3) != q {
		t.Error("Replace did not move the policy")
	}
	// Edit the stored policy in place and Replace it with itself.
	q.Sel.Remote = pfx("10.4.0.0/16")
	if err := db.Replace(id, q); err != nil {
		t.Fatal(err)
	}
	if db.Lookup(Out, out3) != nil || db.Lookup(Out, Tuple{Src: addr("10.1.0.1"), Dst: addr("10.4.9.1")}) != q {
		t.Error("in-place Replace left the index stale")
	}
	if len(db.All()) != 1 {
		t.Errorf("All has %d policies, want 1", len(db.All()))
	}
	if db.Delete(id) != true || db.Delete(id) != false {
		t.Error("Delete should succeed once")
	}
}

func TestInboundAndForward(t *testing.T) {
	db := New()
	mk := func(name string, dir Direction, local, remote string, act Action, reqid uint32) *Policy {
		p := pol(name, dir, local, remote, act)
		p.ReqID = reqid
		if _, err := db.Add(p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	inA := mk("a", In, "10.1.0.0/24", "10.2.0.0/24", Protect, 1)
	inB := mk("b", In, "10.1.0.0/24", "10.2.0.128/25", Protect, 2)
	fwdA := mk("a", Fwd, "10.1.0.0/24", "10.2.0.0/24", Protect, 1)
	byp := mk("mgmt", In, "10.1.0.1/32", "10.2.0.77/32", Bypass, 0)
	// An In ICMP policy: for inbound packets the remote side is the
	// source, so RemotePorts select the ICMP type (echo request, 8).
	ping := &Policy{Name: "ping", Dir: In, Action: Protect, ReqID: 3, Sel: Selector{Local: pfx("10.1.0.0/24"), Remote: pfx("10.2.0.0/24"),
		Proto: 1, LocalPorts: AnyPort, RemotePorts: PortRange{8, 8}}}
	if _, err := db.Add(ping); err != nil {
		t.Fatal(err)
	}
	in := func(src, dst string) Tuple {
		return Tuple{Src: addr(src), Dst: addr(dst), Proto: 17, SrcPort: 500, DstPort: 53}
	}
	echo := Tuple{Src: addr("10.2.0.9"), Dst: addr("10.1.0.1"), Proto: 1, SrcPort: 8, DstPort: 0}
	reply := Tuple{Src: addr("10.2.0.9"), Dst: addr("10.1.0.1"), Proto: 1, SrcPort: 0, DstPort: 0}

	checks := []struct {
		name  string
		reqid uint32
		t     Tuple
		ok    bool
	}{
		{"own selectors", 1, in("10.2.0.9", "10.1.0.1"), true},
		{"wrong SA", 2, in("10.2.0.9", "10.1.0.1"), false},
		{"inside a more specific conn", 1, in("10.2.0.200", "10.1.0.1"), false},
		{"the more specific conn's SA", 2, in("10.2.0.200", "10.1.0.1"), true},
		{"outside every selector", 1, in("10.9.0.9", "10.1.0.1"), false},
		{"swapped direction", 1, in("10.1.0.1", "10.2.0.9"), false},
		{"bypass host is not protected traffic", 1, in("10.2.0.77", "10.1.0.1"), false},
		{"icmp echo on the ping SA", 3, echo, true},
		{"icmp echo on the subnet SA", 1, echo, false},
		{"icmp echo reply on the subnet SA", 1, reply, true},
		{"ipv6 inner packet", 1, Tuple{Src: addr("2001:db8::1"), Dst: addr("2001:db8::2")}, false},
	}
	for _, c := range checks {
		if got := db.CheckInbound(c.reqid, c.t); got != c.ok {
			t.Errorf("CheckInbound %s: got %v, want %v", c.name, got, c.ok)
		}
	}

	clear := []struct {
		name string
		t    Tuple
		want *Policy
		drop bool
	}{
		{"protected subnet in the clear", in("10.2.0.9", "10.1.0.1"), inA, true},
		{"other conn's subnet", in("10.2.0.130", "10.1.0.1"), inB, true},
		{"bypass host", in("10.2.0.77", "10.1.0.1"), byp, false},
		{"unknown host", in("10.8.0.1", "10.1.0.1"), nil, false},
	}
	for _, c := range clear {
		p, drop := db.LookupIn(c.t)
		if p != c.want || drop != c.drop || db.Cleartext(c.t) != c.drop {
			t.Errorf("LookupIn %s: got %s %v, want %s %v", c.name, name(p), drop, name(c.want), c.drop)
		}
	}

	// Forwarded traffic uses its own policies, with the same orientation
	// as In (destination is local).
	if got := db.Lookup(Fwd, in("10.2.0.9", "10.1.0.1")); got != fwdA {
		t.Errorf("Fwd lookup: %s", name(got))
	}
	if got := db.Lookup(Fwd, in("10.2.0.77", "10.1.0.1")); got != fwdA {
		t.Errorf("Fwd lookup picked an In-only bypass: %s", name(got))
	}
	if got := db.Lookup(Direction(9), in("10.2.0.9", "10.1.0.1")); got != nil {
		t.Errorf("bad direction found %s", name(got))
	}

	// Matches looks at one policy's selectors only.
	if !inA.Matches(in("10.2.0.200", "10.1.0.1")) || inA.Matches(in("10.1.0.1", "10.2.0.9")) {
		t.Error("Policy.Matches")
	}
	if !ping.Matches(echo) || ping.Matches(reply) {
		t.Error("Policy.Matches on ICMP type")
	}
}

func TestPortsAndProtocols(t *testing.T) {
	db := New()
	add := func(name string, proto uint8, lp, rp PortRange, prio uint32) *Policy {
		p := &Policy{Name: name, Dir: Out, Action: Bypass, Priority: prio,
			Sel: Selector{Local: pfx("10.1.0.0/24"), Remote: pfx("10.2.0.0/24"), Proto: proto, LocalPorts: lp, RemotePorts: rp}}
		if _, err := db.Add(p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	anyP := add("any", 0, AnyPort, AnyPort, 5)
	udp := add("udp", 17, AnyPort, AnyPort, 5)
	dns := add("dns", 17, AnyPort, PortRange{53, 53}, 5)
	high := add("high", 6, PortRange{1024, 65535}, PortRange{8000, 8099}, 5)
	unreach := add("unreach", 1, PortRange{3, 3}, PortRange{4, 4}, 5) // type 3 code 4: frag needed
	// Ports without a protocol outrank a protocol without ports, as in
	// strongSwan's get_priority (ports weigh 2, a protocol 1).
	port7 := add("port7", 0, AnyPort, PortRange{7, 7}, 5)
	urgent := add("urgent", 0, AnyPort, AnyPort, 1)
	_ = urgent
	tu := func(proto uint8, sp, dp uint16) Tuple {
		return Tuple{Src: addr("10.1.0.5"), Dst: addr("10.2.0.5"), Proto: proto, SrcPort: sp, DstPort: dp}
	}
	db.Delete(urgent.ID) // a lower priority value would win everything
	tests := []struct {
		name string
		t    Tuple
		want *Policy
	}{
		{"specific proto beats any", tu(17, 9, 9), udp},
		{"port beats proto only", tu(17, 9, 53), dns},
		{"range low edge", tu(6, 1024, 8000), high},
		{"range high edge", tu(6, 65535, 8099), high},
		{"below range", tu(6, 1023, 8000), anyP},
		{"above range", tu(6, 2000, 8100), anyP},
		{"icmp frag needed", tu(1, 3, 4), unreach},
		{"icmp port unreachable", tu(1, 3, 3), anyP},
		{"no ports in gre", tu(47, 0, 0), anyP},
		{"ports outrank a protocol", tu(17, 9, 7), port7},
		{"port selector skips portless protocols", tu(47, 0, 7), anyP},
		{"esp inside: any protocol", tu(50, 0, 0), anyP},
	}
	for _, tc := range tests {
		if got := db.Lookup(Out, tc.t); got != tc.want {
			t.Errorf("%s: got %s, want %s", tc.name, name(got), name(tc.want))
		}
	}
}

func TestFragmentSelection(t *testing.T) {
	// A non-first fragment has ports 0 (OPAQUE): it misses a port-specific
	// policy and falls to one that selects any port.
	db := New()
	web := &Policy{Name: "web", Dir: Out, Action: Protect, ReqID: 1, Sel: Selector{Local: pfx("10.1.0.0/24"), Remote: pfx("10.2.0.0/24"),
		Proto: 6, LocalPorts: AnyPort, RemotePorts: PortRange{443, 443}}}
	all := pol("all", Out, "10.1.0.0/24", "10.2.0.0/24", Discard)
	for _, p := range []*Policy{web, all} {
		if _, err := db.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	frag := Tuple{Src: addr("10.1.0.1"), Dst: addr("10.2.0.1"), Proto: 6}
	if got := db.Lookup(Out, frag); got != all {
		t.Errorf("non-first fragment: %s", name(got))
	}
}

func TestAllOrder(t *testing.T) {
	db := New()
	ps := []*Policy{
		pol("in-wide", In, "10.0.0.0/8", "10.0.0.0/8", Protect),
		pol("out-wide", Out, "10.0.0.0/8", "10.0.0.0/8", Protect),
		pol("out-narrow", Out, "10.1.0.0/16", "10.2.0.0/16", Protect),
		pol("fwd", Fwd, "10.1.0.0/16", "10.2.0.0/16", Protect),
		pol("out-prio", Out, "0.0.0.0/0", "0.0.0.0/0", Bypass),
	}
	ps[4].Priority = 0
	for _, p := range ps[:4] {
		p.Priority = 100
	}
	for _, p := range ps {
		if _, err := db.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"out-prio", "out-narrow", "out-wide", "in-wide", "fwd"}
	for round := 0; round < 3; round++ {
		got := db.All()
		if len(got) != len(want) {
			t.Fatalf("All: %d policies", len(got))
		}
		for i := range want {
			if got[i].Name != want[i] {
				t.Fatalf("All[%d] = %s, want %s", i, got[i].Name, want[i])
			}
		}
	}
}

func TestIPv6(t *testing.T) {
	db := New()
	p := &Policy{Name: "v6", Dir: Out, Action: Protect, ReqID: 4, Sel: Selector{Local: pfx("2001:db8:1::/48"), Remote: pfx("2001:db8:2::/48"),
		LocalPorts: AnyPort, RemotePorts: AnyPort}}
	h := &Policy{Name: "v6host", Dir: Out, Action: Bypass, Sel: Selector{Local: pfx("2001:db8:1::/48"), Remote: pfx("2001:db8:2::7/128"),
		LocalPorts: AnyPort, RemotePorts: AnyPort}}
	v4 := pol("v4any", Out, "0.0.0.0/0", "0.0.0.0/0", Discard)
	for _, q := range []*Policy{p, h, v4} {
		if _, err := db.Add(q); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		src, dst string
		want     *Policy
	}{
		{"2001:db8:1::1", "2001:db8:2::9", p},
		{"2001:db8:1::1", "2001:db8:2::7", h},
		{"2001:db8:1::1", "2001:db8:3::7", nil},
		{"10.0.0.1", "2001:db8:2::7", nil},
		{"10.0.0.1", "10.0.0.2", v4},
	}
	for _, tc := range tests {
		if got := db.Lookup(Out, Tuple{Src: netip.MustParseAddr(tc.src), Dst: netip.MustParseAddr(tc.dst)}); got != tc.want {
			t.Errorf("%s -> %s: got %s, want %s", tc.src, tc.dst, name(got), name(tc.want))
		}
	}
}

// TestWatchAndOutDestinations: every kind of change wakes a watcher
// (several changes at least once), and OutDestinations lists the
// outbound protect policies' destinations only.
func TestWatchAndOutDestinations(t *testing.T) {
	db := New()
	w := db.Watch()
	woke := func() bool {
		select {
		case <-w:
			return true
		default:
			return false
		}
	}
	a := pol("a", Out, "10.1.0.0/24", "10.2.0.0/24", Protect)
	idA, err := db.Add(a)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Add(pol("a", In, "10.1.0.0/24", "10.2.0.0/24", Protect)); err != nil {
		t.Fatal(err)
	}
	if _, err := db.Add(pol("b", Out, "10.1.0.0/24", "10.9.0.0/16", Bypass)); err != nil {
		t.Fatal(err)
	}
	if !woke() || woke() {
		t.Fatal("three adds should leave exactly one wake-up pending")
	}
	if got := db.OutDestinations(); len(got) != 1 || got[0] != netip.MustParsePrefix("10.2.0.0/24") {
		t.Fatalf("OutDestinations = %v, want [10.2.0.0/24]", got)
	}
	for _, change := range []struct {
		name string
		do   func()
	}{
		{"replace", func() {
			if err := db.Replace(idA, pol("a", Out, "10.1.0.0/24", "10.3.0.0/24", Protect)); err != nil {
				t.Fatal(err)
			}
		}},
		{"delete", func() { db.Delete(idA) }},
		{"delete conn", func() { db.DeleteConn("b") }},
	} {
		change.do()
		if !woke() {
			t.Fatalf("%s did not wake the watcher", change.name)
		}
	}
	if got := db.OutDestinations(); len(got) != 0 {
		t.Fatalf("OutDestinations after the deletes = %v", got)
	}
}
