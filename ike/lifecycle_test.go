package ike

import (
	"context"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/ike/isakmp"
	"github.com/gosec-ipsec/gosec/internal/clock"
)

var (
	testIKE = []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}
	testESP = []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}
)

func pfx(s string) []netip.Prefix { return []netip.Prefix{netip.MustParsePrefix(s)} }

// pskTable gives each engine (by its address) a pre-shared key per pair
// of IDs, "*" standing for any remote ID.
func pskTable(keys map[netip.Addr]map[[2]string]string) func(*Config) {
	return func(c *Config) {
		local := c.Transport.(*fakeTransport).local
		tab := keys[local]
		c.PSK = func(l, r string) ([]byte, bool) {
			if k, ok := tab[[2]string{l, r}]; ok {
				return []byte(k), true
			}
			if k, ok := tab[[2]string{l, "*"}]; ok {
				return []byte(k), true
			}
			return nil, false
		}
	}
}

// TestQuickModeAuthorization: a road warrior authenticated as @alice
// cannot use bob's conn (and so bob's subnet) in Quick Mode, although
// both conns are right=%any and bob's selectors cover what it proposes.
func TestQuickModeAuthorization(t *testing.T) {
	gwAlice := &Conn{Name: "alice", Local: addrB, LocalID: "@gw", RemoteID: "@alice", IKE: testIKE, ESP: testESP, Mode: ModeTunnel,
		LocalSubnets: pfx("10.0.0.0/24"), RemoteSubnets: pfx("10.10.0.0/24"), Lifetime: time.Hour, IKELifetime: time.Hour, KeyingTries: 1}
	gwBob := *gwAlice
	gwBob.Name, gwBob.RemoteID, gwBob.RemoteSubnets = "bob", "@bob", pfx("10.20.0.0/24")
	mine := &Conn{Name: "alice", Local: addrA, Remote: addrB, LocalID: "@alice", RemoteID: "@gw", IKE: testIKE, ESP: testESP, Mode: ModeTunnel,
		LocalSubnets: pfx("10.10.0.0/24"), RemoteSubnets: pfx("10.0.0.0/24"), Lifetime: time.Hour, IKELifetime: time.Hour, KeyingTries: 1}
	steal := *mine
	steal.Name, steal.LocalSubnets = "steal", pfx("10.20.0.0/24")
	keys := pskTable(map[netip.Addr]map[[2]string]string{
		addrA: {{"@alice", "*"}: "alice-key"},
		addrB: {{"@gw", "@alice"}: "alice-key", {"@gw", "@bob"}: "bob-key"},
	})
	for _, sameSA := range []bool{false, true} {
		t.Run(map[bool]string{false: "new-isakmp-sa", true: "same-isakmp-sa"}[sameSA], func(t *testing.T) {
			r := newRig(t, "", "", []*Conn{mine, &steal}, []*Conn{gwAlice, &gwBob}, keys)
			if _, err := r.up(r.a, "alice"); err != nil {
				t.Fatalf("alice's own conn: %v\n%s", err, r.logText())
			}
			waitFor(t, func() bool { return len(r.ib.children()) == 1 })
			if sameSA {
				// Under alice's ISAKMP SA, as an attacker would.
				var err error
				done := make(chan error, 1)
				r.a.call(context.Background(), func() {
					for _, p := range r.a.sortedSAs() {
						if p.established() {
							r.a.quickInitiate(p, &steal, steal.LocalSubnets[0], steal.RemoteSubnets[0], func(err error) { done <- err }, nil)
							return
						}
					}
					done <- nil
				})
				select {
				case err = <-done:
				case <-time.After(10 * time.Second):
					t.Fatal("no answer to the Quick Mode")
				}
				if err == nil || !strings.Contains(err.Error(), "INVALID_ID_INFORMATION") {
					t.Fatalf("Quick Mode for bob's subnet under alice's ISAKMP SA: err = %v", err)
				}
			} else {
				_, err := r.up(r.a, "steal")
				if err == nil || !strings.Contains(err.Error(), "INVALID_ID_INFORMATION") {
					t.Fatalf("up steal: err = %v\n%s", err, r.logText())
				}
			}
			time.Sleep(50 * time.Millisecond)
			for _, c := range r.ib.children() {
				if c.Conn != "alice" || c.RemoteTS != netip.MustParsePrefix("10.10.0.0/24") {
					t.Fatalf("gateway installed %s %v === %v", c.Conn, c.LocalTS, c.RemoteTS)
				}
			}
			r.ib.mu.Lock()
			n := len(r.ib.inbound)
			r.ib.mu.Unlock()
			if n != 1 {
				t.Fatalf("gateway has %d inbound SAs, want alice's only", n)
			}
			if !strings.Contains(r.logText(), "authorizes") {
				t.Fatalf("no log line says why:\n%s", r.logText())
			}
		})
	}
}

// TestQuickModeProtoPorts: the responder accepts the protocol and ports
// of IDci/IDcr only within its leftprotoport/rightprotoport, and what it
// accepted is what both sides install.
func TestQuickModeProtoPorts(t *testing.T) {
	type pp struct {
		proto        uint8
		lport, rport uint16
	}
	cases := []struct {
		name   string
		a, b   pp // A initiates; B responds
		wantOK bool
	}{
		{name: "exact", a: pp{17, 0, 1701}, b: pp{17, 1701, 0}, wantOK: true},
		{name: "narrower", a: pp{6, 0, 80}, b: pp{0, 0, 0}, wantOK: true},
		{name: "narrower-port", a: pp{17, 5000, 1701}, b: pp{17, 1701, 0}, wantOK: true},
		{name: "wider-proto", a: pp{0, 0, 0}, b: pp{17, 1701, 0}},
		{name: "other-proto", a: pp{6, 0, 1701}, b: pp{17, 1701, 0}},
		{name: "other-port", a: pp{17, 0, 1702}, b: pp{17, 1701, 0}},
		{name: "wider-port", a: pp{17, 0, 0}, b: pp{17, 1701, 0}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ca, cb := pairConns("c", testIKE, testESP, ModeTunnel)
			ca.Proto, ca.LocalPort, ca.RemotePort = c.a.proto, c.a.lport, c.a.rport
			cb.Proto, cb.LocalPort, cb.RemotePort = c.b.proto, c.b.lport, c.b.rport
			r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
			_, err := r.up(r.a, "c")
			if !c.wantOK {
				if err == nil || !strings.Contains(err.Error(), "INVALID_ID_INFORMATION") {
					t.Fatalf("err = %v, want INVALID_ID_INFORMATION", err)
				}
				time.Sleep(30 * time.Millisecond)
				if n := len(r.ia.children()) + len(r.ib.children()); n != 0 {
					t.Fatalf("%d SAs installed", n)
				}
				return
			}
			if err != nil {
				t.Fatalf("up: %v\n%s", err, r.logText())
			}
			waitFor(t, func() bool { return len(r.ib.children()) == 1 })
			x, y := r.ia.children()[0], r.ib.children()[0]
			if x.Proto8 != c.a.proto || x.LocalPort != c.a.lport || x.RemotePort != c.a.rport {
				t.Fatalf("A installed proto %d ports %d/%d, want %+v", x.Proto8, x.LocalPort, x.RemotePort, c.a)
			}
			if y.Proto8 != c.a.proto || y.LocalPort != c.a.rport || y.RemotePort != c.a.lport {
				t.Fatalf("B installed proto %d ports %d/%d, want the negotiated %d %d/%d", y.Proto8, y.LocalPort, y.RemotePort, c.a.proto, c.a.rport, c.a.lport)
			}
		})
	}
}

// TestTwoConnsSameGateways: a second conn between the same two gateways
// (another pair of subnets) negotiates its own ISAKMP SA without
// INITIAL-CONTACT, and the first conn's SAs survive on both sides.
func TestTwoConnsSameGateways(t *testing.T) {
	a1, b1 := pairConns("one", testIKE, testESP, ModeTunnel)
	a2, b2 := pairConns("two", testIKE, testESP, ModeTunnel)
	a2.LocalSubnets, a2.RemoteSubnets = pfx("10.3.0.0/24"), pfx("10.4.0.0/24")
	b2.LocalSubnets, b2.RemoteSubnets = a2.RemoteSubnets, a2.LocalSubnets
	r := newRig(t, "secret", "secret", []*Conn{a1, a2}, []*Conn{b1, b2}, nil)
	lines, err := r.up(r.a, "one")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "N(INITIAL_CONTACT)") {
		t.Fatalf("the first contact does not send INITIAL-CONTACT:\n%s", strings.Join(lines, "\n"))
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	for _, init := range []*Engine{r.a, r.b} {
		lines, err := r.up(init, "two")
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.Join(lines, "\n"), "INITIAL_CONTACT") {
			t.Fatalf("INITIAL-CONTACT sent although an ISAKMP SA with the peer exists:\n%s", strings.Join(lines, "\n"))
		}
	}
	time.Sleep(50 * time.Millisecond)
	for side, inst := range map[string]*fakeInstaller{"A": r.ia, "B": r.ib} {
		conns := map[string]int{}
		for _, c := range inst.children() {
			conns[c.Conn]++
		}
		if conns["one"] != 1 || conns["two"] < 1 {
			t.Fatalf("%s: children per conn %v: conn one lost its SA", side, conns)
		}
	}
}

// natRig is a gateway (addrB) and two road warriors with their own IDs
// behind one NAT address: what the gateway sees as one peer IP.
type natRig struct {
	*rig
	c1, c2   *Engine
	i1, i2   *fakeInstaller
	natAddr  netip.Addr
	c1a, c2a netip.Addr
}

func newNATRig(t *testing.T) *natRig {
	t.Helper()
	n := &natRig{natAddr: netip.MustParseAddr("203.0.113.9"), c1a: netip.MustParseAddr("198.51.100.1"), c2a: netip.MustParseAddr("198.51.100.2"),
		i1: newInstaller(0x3000), i2: newInstaller(0x4000)}
	gw := func(name, id, sub string) *Conn {
		return &Conn{Name: name, Local: addrB, LocalID: "@gw", RemoteID: id, IKE: testIKE, ESP: testESP, Mode: ModeTunnel,
			LocalSubnets: pfx("10.0.0.0/24"), RemoteSubnets: pfx(sub), Lifetime: time.Hour, IKELifetime: time.Hour, KeyingTries: 1}
	}
	rw := func(local netip.Addr, id, sub string) *Conn {
		return &Conn{Name: "rw", Local: local, Remote: addrB, LocalID: id, RemoteID: "@gw", IKE: testIKE, ESP: testESP, Mode: ModeTunnel,
			LocalSubnets: pfx(sub), RemoteSubnets: pfx("10.0.0.0/24"), Lifetime: time.Hour, IKELifetime: time.Hour, KeyingTries: 1}
	}
	keys := pskTable(map[netip.Addr]map[[2]string]string{addrB: {{"@gw", "*"}: "shared"}, addrA: {}})
	n.rig = newRig(t, "", "", nil, []*Conn{gw("rw1", "@c1", "10.11.0.0/24"), gw("rw2", "@c2", "10.12.0.0/24")}, keys)
	mk := func(local netip.Addr, inst *fakeInstaller) *Engine {
		cfg := Config{Transport: &fakeTransport{net: n.net, local: local}, Installer: inst,
			PSK: func(l, r string) ([]byte, bool) { return []byte("shared"), true }, Log: n.a.cfg.Log,
			RetransmitTimeout: 200 * time.Millisecond, Retransmits: 3}
		return New(cfg)
	}
	n.c1, n.c2 = mk(n.c1a, n.i1), mk(n.c2a, n.i2)
	ports := map[netip.AddrPort]netip.AddrPort{
		netip.AddrPortFrom(n.c1a, 500): netip.AddrPortFrom(n.natAddr, 1500), netip.AddrPortFrom(n.c1a, 4500): netip.AddrPortFrom(n.natAddr, 14500),
		netip.AddrPortFrom(n.c2a, 500): netip.AddrPortFrom(n.natAddr, 2500), netip.AddrPortFrom(n.c2a, 4500): netip.AddrPortFrom(n.natAddr, 24500),
	}
	n.net.mu.Lock()
	n.net.rewrite = func(from netip.AddrPort) netip.AddrPort {
		if m, ok := ports[from]; ok {
			return m
		}
		return from
	}
	n.net.byPort = map[netip.AddrPort]*Engine{}
	for inside, outside := range ports {
		e := n.c1
		if inside.Addr() == n.c2a {
			e = n.c2
		}
		n.net.byPort[outside] = e
	}
	n.net.engines[n.c1a], n.net.engines[n.c2a] = n.c1, n.c2
	n.net.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() { n.c1.Run(ctx); done <- struct{}{} }()
	go func() { n.c2.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	n.c1.SetConns(ctx, []*Conn{rw(n.c1a, "@c1", "10.11.0.0/24")})
	n.c2.SetConns(ctx, []*Conn{rw(n.c2a, "@c2", "10.12.0.0/24")})
	return n
}

func gwConns(inst *fakeInstaller) map[string]int {
	out := map[string]int{}
	for _, c := range inst.children() {
		out[c.Conn]++
	}
	return out
}

// TestNATIdentityScope: two clients with their own IDs behind one NAT
// address. INITIAL-CONTACT from a restarted @c1 clears @c1's stale SAs
// only, and a Delete sent under @c2's ISAKMP SA with @c1's SPI removes
// nothing of @c1's.
func TestNATIdentityScope(t *testing.T) {
	n := newNATRig(t)
	for _, e := range []*Engine{n.c1, n.c2} {
		if _, err := n.up(e, "rw"); err != nil {
			t.Fatalf("up: %v\n%s", err, n.logText())
		}
	}
	waitFor(t, func() bool { g := gwConns(n.ib); return g["rw1"] == 1 && g["rw2"] == 1 })
	for _, c := range n.ib.children() {
		if c.Remote != n.natAddr {
			t.Fatalf("gateway child %s has peer %v, want the NAT address", c.Conn, c.Remote)
		}
	}
	// A forged Delete: @c2 names @c1's SPI (the gateway's outbound SPI
	// towards @c1, which is c1's inbound SPI).
	c1SPI := n.i1.children()[0].InSPI
	n.c2.call(context.Background(), func() {
		for _, p := range n.c2.sas {
			if p.established() {
				n.c2.sendDelete(p, ProtoESP, [][]byte{be32(c1SPI)})
			}
		}
	})
	time.Sleep(50 * time.Millisecond)
	if g := gwConns(n.ib); g["rw1"] != 1 {
		t.Fatalf("a Delete from @c2 removed @c1's SA: %v", g)
	}
	// @c1 restarts (no Delete sent) and comes back with INITIAL-CONTACT.
	n.c1.call(context.Background(), func() { n.c1.terminate("rw", false) })
	old1 := map[uint32]bool{}
	for _, c := range n.ib.children() {
		if c.Conn == "rw1" {
			old1[c.InSPI] = true
		}
	}
	lines, err := n.up(n.c1, "rw")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(lines, "\n"), "INITIAL_CONTACT") {
		t.Fatal("the restarted client did not send INITIAL-CONTACT")
	}
	waitFor(t, func() bool {
		g := gwConns(n.ib)
		for _, c := range n.ib.children() {
			if old1[c.InSPI] {
				return false
			}
		}
		return g["rw1"] == 1 && g["rw2"] == 1
	})
	time.Sleep(50 * time.Millisecond)
	if g := gwConns(n.ib); g["rw2"] != 1 || len(n.i2.children()) != 1 {
		t.Fatalf("INITIAL-CONTACT from @c1 touched @c2: gateway %v, c2 %d", g, len(n.i2.children()))
	}
	p1s, _, _ := n.b.Status(context.Background())
	ids := map[string]int{}
	for _, p := range p1s {
		ids[p.PeerID]++
	}
	if ids["c1"] != 1 || ids["c2"] != 1 {
		t.Fatalf("gateway ISAKMP SAs by peer ID: %v", ids)
	}
}

// TestRekeyTime: the initiator's rekey falls in [life - margin - margin x
// fuzz, life - margin], spread over it; the responder's at life -
// margin/2; a right=%any responder never rekeys.
func TestRekeyTime(t *testing.T) {
	e := New(Config{})
	life, margin := 100*time.Second, 10*time.Second
	mk := func(init bool, fuzz int, remote netip.Addr) *child {
		return &child{initiator: init, sa: &ChildSA{Lifetime: life},
			conn: &Conn{Rekey: true, RekeyMargin: margin, RekeyFuzz: fuzz, Remote: remote}}
	}
	if got := e.rekeyTime(mk(true, 0, addrB)); got != 90*time.Second {
		t.Fatalf("fuzz 0: %v, want 90s", got)
	}
	for _, fuzz := range []int{100, 250} {
		lo, hi := life, time.Duration(0)
		for i := 0; i < 300; i++ {
			got := e.rekeyTime(mk(true, fuzz, addrB))
			floor := life - margin - margin*time.Duration(fuzz)/100
			if got < floor || got > life-margin {
				t.Fatalf("fuzz %d%%: %v outside [%v, %v]", fuzz, got, floor, life-margin)
			}
			lo, hi = min(lo, got), max(hi, got)
		}
		mid := life - margin - margin*time.Duration(fuzz)/200
		if lo > mid || hi < mid {
			t.Fatalf("fuzz %d%%: 300 draws span only [%v, %v]", fuzz, lo, hi)
		}
	}
	if got := e.rekeyTime(mk(false, 100, addrA)); got != 95*time.Second {
		t.Fatalf("responder: %v, want 95s", got)
	}
	if got := e.rekeyTime(mk(false, 100, netip.Addr{})); got != 0 {
		t.Fatalf("right=%%any responder: %v, want never", got)
	}
	c := mk(true, 0, addrB)
	c.conn.Rekey = false
	if got := e.rekeyTime(c); got != 0 {
		t.Fatalf("rekey=no: %v", got)
	}
	c = mk(true, 500, addrB) // margin x (1 + fuzz) beyond the lifetime
	if got := e.rekeyTime(c); got < life/10 {
		t.Fatalf("huge fuzz: %v, below a tenth of the lifetime", got)
	}
}

// TestResponderRekeysLater: when only the responder rekeys, it does so
// with half the margin left, not at the initiator's time.
func TestResponderRekeysLater(t *testing.T) {
	ca, cb := pairConns("c", testIKE, testESP, ModeTunnel)
	for _, c := range []*Conn{ca, cb} {
		c.Lifetime, c.Rekey, c.RekeyMargin = 100*time.Second, true, 10*time.Second
	}
	ca.Rekey = false
	fc := clock.NewFake(time.Unix(1e9, 0))
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) { c.Clock = fc })
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	r.barrier()
	fc.Advance(92 * time.Second)
	time.Sleep(100 * time.Millisecond)
	if n := len(r.ib.children()); n != 1 {
		t.Fatalf("the responder rekeyed before half the margin was left (%d children)", n)
	}
	fc.Advance(4 * time.Second) // 96 s
	waitFor(t, func() bool { return len(r.ia.children()) == 2 && len(r.ib.children()) == 2 })
	checkPairSubset(t, r.ia, r.ib)
}

// TestSoftHardExpire: the data plane's soft event starts the rekey (once,
// however often it comes), its hard event removes the pair on both sides.
func TestSoftHardExpire(t *testing.T) {
	ca, cb := pairConns("c", testIKE, testESP, ModeTunnel)
	for _, c := range []*Conn{ca, cb} {
		c.Lifetime, c.Rekey, c.RekeyMargin = time.Hour, true, 10*time.Minute
	}
	fc := clock.NewFake(time.Unix(1e9, 0))
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) { c.Clock = fc })
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	first := r.ia.children()[0]
	var wg sync.WaitGroup
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); r.a.SoftExpire("c", first.OutSPI) }()
	}
	wg.Wait()
	waitFor(t, func() bool { return len(r.ia.children()) == 2 && len(r.ib.children()) == 2 })
	time.Sleep(100 * time.Millisecond)
	if n := r.ia.children(); len(n) != 2 {
		t.Fatalf("five soft events made %d children, want the old one and one successor", len(n))
	}
	r.a.SoftExpire("c", first.InSPI) // already replaced: nothing
	r.a.SoftExpire("nope", 1)
	time.Sleep(50 * time.Millisecond)
	if n := len(r.ia.children()); n != 2 {
		t.Fatalf("%d children", n)
	}
	var newest *ChildSA
	for _, c := range r.ia.children() {
		if c.InSPI != first.InSPI {
			newest = c
		}
	}
	r.b.HardExpire("c", newest.OutSPI) // B's view: its outbound SPI is A's inbound
	waitFor(t, func() bool {
		for _, inst := range []*fakeInstaller{r.ia, r.ib} {
			for _, c := range inst.children() {
				if c.InSPI == newest.InSPI || c.OutSPI == newest.InSPI {
					return false
				}
			}
		}
		return true
	})
}

// TestLifeBytesPackets: lifebytes is proposed in kilobytes and
// installed as the hard byte limit on both sides (exactly on ours), with
// the soft limits where each side rekeys; lifepackets stays local.
func TestLifeBytesPackets(t *testing.T) {
	ca, cb := pairConns("c", testIKE, testESP, ModeTunnel)
	for _, c := range []*Conn{ca, cb} {
		c.Rekey, c.RekeyMargin = true, time.Minute
	}
	ca.LifeBytes, ca.MarginBytes, ca.LifePackets = 5_000_000, 1_000_000, 1_000_000
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	x, y := r.ia.children()[0], r.ib.children()[0]
	if x.LifeBytes != 5_000_000 || x.SoftBytes != 4_000_000 || x.LifePackets != 1_000_000 || x.SoftPackets != 900_000 {
		t.Fatalf("initiator: life %d/%d packets, soft %d/%d", x.LifeBytes, x.LifePackets, x.SoftBytes, x.SoftPackets)
	}
	hard := uint64((5_000_000 + 1023) / 1024 * 1024)
	if y.LifeBytes != hard || y.SoftBytes != hard-hard/10/2 || y.LifePackets != 0 || y.SoftPackets != 0 {
		t.Fatalf("responder: life %d bytes (want %d), soft %d, packets %d/%d", y.LifeBytes, hard, y.SoftBytes, y.LifePackets, y.SoftPackets)
	}
	if x.RekeyAfter != 19*time.Minute || y.RekeyAfter != 20*time.Minute-30*time.Second {
		t.Fatalf("rekey after %v / %v", x.RekeyAfter, y.RekeyAfter)
	}
	// The proposal itself carries SA-Life-Type kilobytes.
	tr := p2Suites(ca)[0].transform(1, encapTunnel)
	o := parseP2Transform(isakmp.ProtoESP, tr)
	if o.suite.LifeKB != 4883 || o.suite.Life != ca.Lifetime {
		t.Fatalf("proposed %d KB / %v", o.suite.LifeKB, o.suite.Life)
	}
}

// TestPeerLifetimeBounds: what a peer proposes is bounded: too short is
// refused with the reason, overflowing values are clamped and noted, and
// our own small configured value is always acceptable back.
func TestPeerLifetimeBounds(t *testing.T) {
	ours := p2Suite{Proto: ProtoESP, Encr: EncrAESCBC, KeyBits: 128, Integ: IntegSHA1, Life: time.Hour}
	cases := []struct {
		name              string
		ourKB             uint64
		secs, kb          uint64
		wantErr, wantNote string
		wantLife          time.Duration
		wantKB            uint64
	}{
		{name: "normal", secs: 1800, kb: 100000, wantLife: 30 * time.Minute, wantKB: 100000},
		{name: "few-packets", secs: 3600, kb: 4, wantErr: "lifetime of 4 kilobytes is below the minimum of 1024 kilobytes"},
		{name: "few-seconds", secs: 3, wantErr: "lifetime of 3s is below the minimum of 10s"},
		{name: "overflow-kb", secs: 3600, kb: 1 << 60, wantLife: time.Hour, wantKB: 0, wantNote: "overflows"},
		{name: "huge-seconds", secs: 1 << 40, wantLife: time.Hour, wantNote: "clamped"},
		{name: "ours-small", ourKB: 100, secs: 3600, kb: 100, wantLife: time.Hour, wantKB: 100},
		{name: "ours-bigger", ourKB: 1 << 20, secs: 3600, kb: 2048, wantLife: time.Hour, wantKB: 2048},
		{name: "peer-none", ourKB: 5000, secs: 3600, wantLife: time.Hour, wantKB: 5000},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			o := ours
			o.LifeKB = c.ourKB
			tr := ours.transform(1, encapTunnel)
			tr.Attrs = tr.Attrs[:len(tr.Attrs)-2] // our own seconds
			tr.Attrs = append(tr.Attrs, isakmp.Basic(p2LifeType, lifeSeconds), isakmp.Uint(p2LifeDuration, c.secs))
			if c.kb > 0 {
				tr.Attrs = append(tr.Attrs, isakmp.Basic(p2LifeType, lifeKilobytes), isakmp.Uint(p2LifeDuration, c.kb))
			}
			sa := &isakmp.SA{DOI: 1, Situation: 1, Proposals: []isakmp.Proposal{{Num: 1, Protocol: isakmp.ProtoESP, SPI: be32(7), Transforms: []isakmp.Transform{tr}}}}
			_, got, _, _, err := selectP2([]p2Suite{o}, ModeTunnel, sa)
			back, _, _, err2 := acceptP2Reply([]p2Suite{o}, ModeTunnel, sa)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) || err2 == nil {
					t.Fatalf("err = %v / %v, want %q", err, err2, c.wantErr)
				}
				return
			}
			if err != nil || err2 != nil {
				t.Fatalf("refused: %v / %v", err, err2)
			}
			for _, s := range []p2Suite{got, back} {
				if s.Life != c.wantLife || s.LifeKB != c.wantKB || !strings.Contains(s.lifeNote, c.wantNote) {
					t.Fatalf("adopted %v / %d KB (note %q), want %v / %d KB (%q)", s.Life, s.LifeKB, s.lifeNote, c.wantLife, c.wantKB, c.wantNote)
				}
			}
		})
	}
}

// TestAbsurdLifeBytesRefused: a peer proposing a lifetime of a few
// packets gets NO_PROPOSAL_CHOSEN, and the log says why.
func TestAbsurdLifeBytesRefused(t *testing.T) {
	ca, cb := pairConns("c", testIKE, testESP, ModeTunnel)
	ca.LifeBytes = 3000
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	_, err := r.up(r.a, "c")
	if err == nil || !strings.Contains(err.Error(), "NO_PROPOSAL_CHOSEN") {
		t.Fatalf("err = %v", err)
	}
	time.Sleep(30 * time.Millisecond)
	if !strings.Contains(r.logText(), "lifetime of 3 kilobytes is below the minimum") {
		t.Fatalf("log does not give the reason:\n%s", r.logText())
	}
	if len(r.ib.children())+len(r.ia.children()) != 0 {
		t.Fatal("SAs installed")
	}
}

// gate holds the messages of the fake network while closed, so that
// two exchanges can be made to cross; open delivers them in order.
type gate struct {
	mu     sync.Mutex
	closed bool
	held   []gateMsg
}

type gateMsg struct {
	from, to netip.AddrPort
	msg      []byte
}

func (g *gate) install(r *rig) {
	r.net.mu.Lock()
	r.net.drop = func(from, to netip.AddrPort, msg []byte) bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		if g.closed {
			g.held = append(g.held, gateMsg{from, to, append([]byte(nil), msg...)})
		}
		return g.closed
	}
	r.net.mu.Unlock()
}

func (g *gate) set(closed bool) {
	g.mu.Lock()
	g.closed = closed
	g.mu.Unlock()
}

func (g *gate) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.held)
}

func (g *gate) open(r *rig) {
	g.mu.Lock()
	held := g.held
	g.held, g.closed = nil, false
	g.mu.Unlock()
	for _, m := range held {
		e := r.a
		if m.to.Addr() == addrB {
			e = r.b
		}
		e.HandleMessage(m.msg, m.from, m.to, m.to.Port() == 4500)
	}
}

// checkMirrored: both sides hold the same pairs (each of A's has its
// mirror on B and the reverse), at least one.
func checkMirrored(t *testing.T, r *rig) {
	t.Helper()
	ca, cb := r.ia.children(), r.ib.children()
	if len(ca) == 0 || len(ca) != len(cb) {
		t.Fatalf("A has %d pairs, B %d", len(ca), len(cb))
	}
	checkPairSubset(t, r.ia, r.ib)
	checkPairSubset(t, r.ib, r.ia)
}

// TestRekeyCollision: both peers rekey the same pair at once (their
// Quick Modes cross). Both sides end with the same new pairs (both, or
// one when a side saw one exchange finish before the other began) and
// without the old one; neither deletes a pair the other sends on.
func TestRekeyCollision(t *testing.T) {
	ca, cb := pairConns("c", testIKE, testESP, ModeTunnel)
	for _, c := range []*Conn{ca, cb} {
		c.Lifetime, c.Rekey, c.RekeyMargin = time.Hour, true, 10*time.Minute
	}
	fc := clock.NewFake(time.Unix(1e9, 0))
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) { c.Clock = fc })
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	old := r.ia.children()[0]
	g := &gate{}
	g.install(r)
	g.set(true)
	r.a.SoftExpire("c", old.InSPI)
	r.b.SoftExpire("c", old.OutSPI)
	waitFor(t, func() bool { return g.count() == 2 }) // both QM1s
	g.open(r)
	waitFor(t, func() bool { return len(r.ia.children()) == 3 && len(r.ib.children()) == 3 })
	r.barrier()
	fc.Advance(rekeyGrace + time.Second)
	// Each side keeps both new pairs, unless one exchange completed on a
	// side before the other began there: then that side replaces it,
	// deletes it, and its peer follows the Delete. Either way both sides
	// end with the same pairs, one at least.
	waitFor(t, func() bool {
		a, b := r.ia.children(), r.ib.children()
		return len(a) >= 1 && len(a) <= 2 && len(a) == len(b) && !hasSPI(a, old.InSPI) && !hasSPI(b, old.OutSPI)
	})
	r.barrier()
	fc.Advance(rekeyGrace + time.Second)
	time.Sleep(50 * time.Millisecond)
	r.barrier()
	checkMirrored(t, r)
	for _, c := range r.ia.children() {
		if c.InSPI == old.InSPI {
			t.Fatal("the old pair survived")
		}
	}
	r.ia.mu.Lock()
	defer r.ia.mu.Unlock()
	if r.ia.inCalls != 3 || r.ia.outCalls != 3 {
		t.Fatalf("A installed %d inbound and %d outbound SAs, want 3 each", r.ia.inCalls, r.ia.outCalls)
	}
}

// TestDuplicateQuickMode: replayed Quick Mode messages (a retransmission
// arriving late) never install anything twice.
func TestDuplicateQuickMode(t *testing.T) {
	ca, cb := pairConns("c", testIKE, testESP, ModeTunnel)
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	var mu sync.Mutex
	var toB []gateMsg
	r.net.drop = func(from, to netip.AddrPort, msg []byte) bool {
		if to.Addr() == addrB {
			mu.Lock()
			toB = append(toB, gateMsg{from, to, append([]byte(nil), msg...)})
			mu.Unlock()
		}
		return false
	}
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	mu.Lock()
	msgs := toB
	mu.Unlock()
	for i := 0; i < 3; i++ {
		for _, m := range msgs {
			r.b.HandleMessage(m.msg, m.from, m.to, false)
		}
	}
	time.Sleep(100 * time.Millisecond)
	r.ib.mu.Lock()
	in, out := r.ib.inCalls, r.ib.outCalls
	r.ib.mu.Unlock()
	if in != 1 || out != 1 || len(r.ib.children()) != 1 {
		t.Fatalf("after replays B installed %d inbound, %d outbound SAs (%d pairs), want 1", in, out, len(r.ib.children()))
	}
	checkMirrored(t, r)
}

// TestDoubleInitiation: both sides auto=start at the same moment (their
// Main Modes cross). Both end with working, mirrored SAs, and after the
// grace period nobody has deleted the pair the other sends on.
func TestDoubleInitiation(t *testing.T) {
	for run := 0; run < 5; run++ {
		ca, cb := pairConns("c", testIKE, testESP, ModeTunnel)
		for _, c := range []*Conn{ca, cb} {
			c.Rekey, c.RekeyMargin = true, 2*time.Minute
		}
		fc := clock.NewFake(time.Unix(1e9, 0))
		r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) { c.Clock = fc })
		g := &gate{}
		g.install(r)
		g.set(true)
		r.a.Start("c")
		r.b.Start("c")
		waitFor(t, func() bool { return g.count() == 2 }) // both MM1s
		g.open(r)
		waitFor(t, func() bool { return len(r.ia.children()) >= 1 && len(r.ib.children()) >= 1 })
		time.Sleep(100 * time.Millisecond)
		r.barrier()
		for i := 0; i < 3; i++ {
			fc.Advance(rekeyGrace)
			time.Sleep(30 * time.Millisecond)
		}
		checkMirrored(t, r)
		p1s, _, _ := r.a.Status(context.Background())
		if len(p1s) == 0 {
			t.Fatal("A has no ISAKMP SA left")
		}
		r.cancel()
	}
}

// TestReauthentication: the ISAKMP SA is replaced by a new Main Mode
// before ikelifetime ends; the IPsec SAs keep running through it, the old
// ISAKMP SA goes at its expiry, and a later rekey uses the new one.
func TestReauthentication(t *testing.T) {
	ca, cb := pairConns("c", testIKE, testESP, ModeTunnel)
	for _, c := range []*Conn{ca, cb} {
		c.IKELifetime, c.Lifetime, c.Rekey, c.RekeyMargin = 100*time.Second, time.Hour, true, 10*time.Second
	}
	fc := clock.NewFake(time.Unix(1e9, 0))
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) { c.Clock = fc })
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	r.barrier()
	child := r.ia.children()[0]
	isakmps := func(e *Engine) []ISAKMPStatus {
		p1s, _, _ := e.Status(context.Background())
		return p1s
	}
	old := isakmps(r.a)[0].ICookie
	fc.Advance(91 * time.Second)
	waitFor(t, func() bool {
		a, b := isakmps(r.a), isakmps(r.b)
		return len(a) == 2 && len(b) == 2 && strings.HasPrefix(a[1].State, "MAIN_I4") && b[1].State == "MAIN_R3"
	})
	fc.Advance(5 * time.Second) // B's own reauthentication time: it sees A's
	time.Sleep(50 * time.Millisecond)
	if n := len(isakmps(r.b)); n != 2 {
		t.Fatalf("B has %d ISAKMP SAs: it reauthenticated as well", n)
	}
	if len(r.ia.children()) != 1 || len(r.ib.children()) != 1 || r.ia.children()[0].InSPI != child.InSPI {
		t.Fatal("the IPsec SAs did not survive the reauthentication")
	}
	fc.Advance(5 * time.Second) // 101 s: the old ISAKMP SA expires
	waitFor(t, func() bool { a, b := isakmps(r.a), isakmps(r.b); return len(a) == 1 && len(b) == 1 })
	newCookie := isakmps(r.a)[0].ICookie
	if newCookie == old {
		t.Fatal("the old ISAKMP SA stayed and the new one went")
	}
	if len(r.ia.children()) != 1 || len(r.ib.children()) != 1 {
		t.Fatal("the IPsec SAs went with the old ISAKMP SA")
	}
	r.a.SoftExpire("c", child.InSPI)
	waitFor(t, func() bool { return len(r.ia.children()) == 2 && len(r.ib.children()) == 2 })
	_, cs, _ := r.a.Status(context.Background())
	for _, c := range cs {
		if !strings.HasPrefix(c.ISAKMP, newCookie) {
			t.Fatalf("child %s made under ISAKMP SA %q, want the new %s", c.InSPI, c.ISAKMP, newCookie)
		}
	}
	r.barrier()
	fc.Advance(rekeyGrace + time.Second) // the replaced pair is deleted through the new ISAKMP SA
	waitFor(t, func() bool { return len(r.ia.children()) == 1 && len(r.ib.children()) == 1 })
	checkMirrored(t, r)
}

// restartB makes B lose every state without telling A, as a crash and
// restart of its daemon does.
func restartB(r *rig) {
	r.b.call(context.Background(), func() {
		for name := range r.b.conns {
			r.b.terminate(name, false)
		}
	})
}

// TestDPDActions: after the peer restarts (its state gone, so R_U_THERE
// goes unanswered), restart negotiates the tunnel again, hold and clear
// remove the SAs, and hold's Start brings it back once (however often
// it is called).
func TestDPDActions(t *testing.T) {
	for _, action := range []string{"restart", "hold", "clear"} {
		t.Run(action, func(t *testing.T) {
			ca, cb := pairConns("c", testIKE, testESP, ModeTunnel)
			ca.DPDDelay, ca.DPDTimeout, ca.DPDAction = 10*time.Second, 30*time.Second, action
			fc := clock.NewFake(time.Unix(1e9, 0))
			r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) { c.Clock = fc })
			if _, err := r.up(r.a, "c"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { return len(r.ib.children()) == 1 })
			old := r.ia.children()[0].InSPI
			r.barrier()
			restartB(r)
			waitFor(t, func() bool { return len(r.ib.children()) == 0 })
			gone := func() bool {
				for _, c := range r.ia.children() {
					if c.InSPI == old {
						return false
					}
				}
				return true
			}
			for i := 0; i < 8 && !gone(); i++ {
				fc.Advance(10 * time.Second)
				time.Sleep(30 * time.Millisecond)
			}
			waitFor(t, gone)
			switch action {
			case "restart":
				waitFor(t, func() bool { return len(r.ia.children()) == 1 && len(r.ib.children()) == 1 })
				checkMirrored(t, r)
			case "hold", "clear":
				time.Sleep(50 * time.Millisecond)
				if n := len(r.ia.children()) + len(r.ib.children()); n != 0 {
					t.Fatalf("%d SAs after the dead peer", n)
				}
				if action == "hold" {
					for i := 0; i < 5; i++ {
						r.a.Start("c") // a trap firing on every packet
					}
					waitFor(t, func() bool { return len(r.ia.children()) == 1 && len(r.ib.children()) == 1 })
					time.Sleep(50 * time.Millisecond)
					checkMirrored(t, r)
					if p1s, _, _ := r.a.Status(context.Background()); len(p1s) != 1 {
						t.Fatalf("five Starts made %d ISAKMP SAs", len(p1s))
					}
					r.a.Start("c") // up: nothing more
					time.Sleep(50 * time.Millisecond)
					if len(r.ia.children()) != 1 {
						t.Fatalf("Start on an established conn made %d pairs", len(r.ia.children()))
					}
				}
			}
			if !strings.Contains(r.logText(), "dead peer detected") {
				t.Fatal("no dead-peer log line")
			}
		})
	}
}

// TestPeerRestartInitialContact: the restarted peer initiates again; its
// INITIAL-CONTACT makes us drop the stale SAs at once (no DPD needed).
func TestPeerRestartInitialContact(t *testing.T) {
	ca, cb := pairConns("c", testIKE, testESP, ModeTunnel)
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	old := r.ia.children()[0].InSPI
	restartB(r)
	r.b.Start("c")
	waitFor(t, func() bool {
		c := r.ia.children()
		return len(c) == 1 && c[0].InSPI != old && len(r.ib.children()) == 1
	})
	checkMirrored(t, r)
	if p1s, _, _ := r.a.Status(context.Background()); len(p1s) != 1 {
		t.Fatalf("A keeps %d ISAKMP SAs", len(p1s))
	}
}

// TestRekeyRetry: a rekey whose Quick Mode is lost is tried again before
// the pair expires.
func TestRekeyRetry(t *testing.T) {
	ca, cb := pairConns("c", testIKE, testESP, ModeTunnel)
	for _, c := range []*Conn{ca, cb} {
		c.Lifetime, c.Rekey, c.RekeyMargin = 100*time.Second, true, 20*time.Second
	}
	cb.Rekey = false
	fc := clock.NewFake(time.Unix(1e9, 0))
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) { c.Clock = fc })
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	var mu sync.Mutex
	lost := true
	r.net.mu.Lock()
	r.net.drop = func(_, _ netip.AddrPort, _ []byte) bool { mu.Lock(); defer mu.Unlock(); return lost }
	r.net.mu.Unlock()
	r.barrier()
	fc.Advance(80 * time.Second) // the rekey starts, and every message is lost
	for i := 0; i < 8; i++ {
		fc.Advance(time.Second)
		time.Sleep(20 * time.Millisecond)
	}
	if !strings.Contains(r.logText(), "rekey failed") {
		t.Fatalf("the first rekey did not fail:\n%s", r.logText())
	}
	mu.Lock()
	lost = false
	mu.Unlock()
	fc.Advance(3 * time.Second) // 91 s: the retry, 10 s after the first try
	waitFor(t, func() bool { return len(r.ia.children()) == 2 && len(r.ib.children()) == 2 })
	checkMirrored(t, r)
}

// barrier waits until both engines have handled everything queued so
// far (an SA is visible in the installer just before the engine arms its
// timers in the same event).
func (r *rig) barrier() {
	for _, e := range []*Engine{r.a, r.b} {
		e.call(context.Background(), func() {})
	}
}

func hasSPI(cs []*ChildSA, in uint32) bool {
	for _, c := range cs {
		if c.InSPI == in {
			return true
		}
	}
	return false
}

// orderInstaller records when its engine installed an outbound SA, on a
// sequence shared by both engines of a rig.
type orderInstaller struct {
	*fakeInstaller
	seq   *atomic.Int64
	outAt atomic.Int64
}

func (o *orderInstaller) InstallOutbound(c *ChildSA) error {
	o.outAt.Store(o.seq.Add(1))
	return o.fakeInstaller.InstallOutbound(c)
}

// TestInitiatorOutboundAfterQM3: with OutboundDelay, a Quick Mode
// initiator installs its inbound SA, sends QM3 and installs its outbound
// SA only after the delay, so the responder (which installs on QM3) has
// its inbound SA first; Initiate reports the child up only then.
func TestInitiatorOutboundAfterQM3(t *testing.T) {
	const delay = 300 * time.Millisecond
	ca, cb := pairConns("c", testIKE, testESP, ModeTunnel)
	var seq atomic.Int64
	var inst []*orderInstaller
	var obs []*quickLatencies
	r := newRig(t, "k", "k", []*Conn{ca}, []*Conn{cb}, func(c *Config) {
		o := &orderInstaller{fakeInstaller: c.Installer.(*fakeInstaller), seq: &seq}
		inst = append(inst, o)
		c.Installer = o
		c.OutboundDelay = delay
		ql := &quickLatencies{}
		obs = append(obs, ql)
		c.Observer = ql
	})
	a, b := inst[0], inst[1]
	start := time.Now()
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	checkPair(t, r.ia, r.ib, 1)
	if a.outAt.Load() == 0 || b.outAt.Load() == 0 || a.outAt.Load() < b.outAt.Load() {
		t.Fatalf("outbound installs: initiator #%d, responder #%d; the responder's (on QM3) must come first", a.outAt.Load(), b.outAt.Load())
	}
	if took < delay {
		t.Fatalf("Initiate returned after %v, before the outbound delay of %v", took, delay)
	}
	if r.ia.inCalls != 1 || r.ia.outCalls != 1 || r.ib.inCalls != 1 || r.ib.outCalls != 1 {
		t.Fatalf("install calls: A in %d out %d, B in %d out %d, want 1 each", r.ia.inCalls, r.ia.outCalls, r.ib.inCalls, r.ib.outCalls)
	}
	// The Quick Mode latency (metrics, statusall) is the exchange, from
	// QM1 to QM3, not the wait for the responder after it.
	lat := obs[0].get()
	if len(lat) != 1 {
		t.Fatalf("the initiator observed %d established Quick Modes, want 1", len(lat))
	}
	if lat[0] <= 0 || lat[0] >= delay {
		t.Errorf("the initiator's Quick Mode latency is %v; want the exchange alone, less than the outbound delay of %v after it", lat[0], delay)
	}
}

// quickLatencies records the latencies of established Quick Modes.
type quickLatencies struct {
	mu  sync.Mutex
	lat []time.Duration
}

func (o *quickLatencies) Exchange(ev ExchangeEvent) {
	if ev.Kind == "quick" && ev.Result == "established" {
		o.mu.Lock()
		o.lat = append(o.lat, ev.Latency)
		o.mu.Unlock()
	}
}

func (o *quickLatencies) get() []time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	return slices.Clone(o.lat)
}
