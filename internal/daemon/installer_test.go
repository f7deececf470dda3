package daemon

import (
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/internal/clock"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

// fakeRouter records the routes into the TUN, as the kernel table would
// hold them (one per prefix).
type fakeRouter struct{ routes map[netip.Prefix]netio.Route }

func (r *fakeRouter) AddRoute(rt netio.Route) error { r.routes[rt.Dst.Masked()] = rt; return nil }
func (r *fakeRouter) DelRoute(p netip.Prefix) error { delete(r.routes, p.Masked()); return nil }
func (r *fakeRouter) Close() error                  { return nil }

// fakeFilter records each conn's guarded prefixes, and how many calls
// wrote them (one conn, many).
type fakeFilter struct {
	conns         map[string][]netip.Prefix
	single, multi int
}

func (f *fakeFilter) AddConn(name string, remotes []netip.Prefix) error {
	f.single++
	f.conns[name] = slices.Clone(remotes)
	return nil
}
func (f *fakeFilter) AddConns(conns []netio.ConnPrefixes) map[string]error {
	f.multi++
	for _, cp := range conns {
		f.conns[cp.Name] = slices.Clone(cp.Remotes)
	}
	return nil
}
func (f *fakeFilter) RemoveConn(name string) error   { delete(f.conns, name); return nil }
func (f *fakeFilter) Dropped(string) (uint64, error) { return 0, nil }
func (f *fakeFilter) Guarded(string) (uint64, error) { return 0, nil }
func (f *fakeFilter) Counts() (map[string]netio.FilterCounts, error) {
	return map[string]netio.FilterCounts{}, nil
}
func (f *fakeFilter) Close() error                      { return nil }
func (f *fakeFilter) Owned() bool                       { return true }
func (f *fakeFilter) Gone() bool                        { return false }
func (f *fakeFilter) Restores() int                     { return 0 }
func (f *fakeFilter) guards(name string) []netip.Prefix { return f.conns[name] }
func (r *fakeRouter) has(p string) bool                 { _, ok := r.routes[netip.MustParsePrefix(p)]; return ok }

var (
	gw1 = netip.MustParseAddr("192.0.2.1")
	gw2 = netip.MustParseAddr("192.0.2.2")
	ts1 = netip.MustParsePrefix("10.1.0.0/24")
	ts2 = netip.MustParsePrefix("10.2.0.0/24")
	ts3 = netip.MustParsePrefix("10.3.0.0/24")
)

// testDaemon is a daemon with real SAD and SPD, a fake clock and fake
// routes and filter: the installer's bookkeeping without the kernel.
func testDaemon(t *testing.T, conns ...*ConnSpec) (*Daemon, *fakeRouter, *fakeFilter) {
	t.Helper()
	clk := clock.NewFake(time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC))
	d := newDaemon(Options{Clock: clk, Log: slog.New(slog.NewTextHandler(io.Discard, nil))})
	d.conns = &Config{Conns: map[string]*ConnSpec{}}
	for _, c := range conns {
		d.conns.Conns[c.Name] = c
		d.conns.Order = append(d.conns.Order, c.Name)
	}
	d.sad = sad.New(clk, nil)
	t.Cleanup(d.sad.Close)
	d.spd = spd.New()
	r := &fakeRouter{routes: map[netip.Prefix]netio.Route{}}
	f := &fakeFilter{conns: map[string][]netip.Prefix{}}
	d.router, d.filter = r, f
	return d, r, f
}

func ikeSpec(name, auto string, local, remote netip.Prefix) *ConnSpec {
	return &ConnSpec{Name: name, Auto: auto, Mode: sad.Tunnel, Local: gw1, Remote: gw2,
		LocalSubnets: []netip.Prefix{local}, RemoteSubnets: []netip.Prefix{remote},
		IKE: &ike.Conn{Name: name, Local: gw1, Remote: gw2}}
}

var spiSeq uint32 = 0x1000

// child returns a negotiated AES-GCM SA pair of conn between ts1 and remote.
func child(conn string, local, remote netip.Prefix) *ike.ChildSA {
	spiSeq += 2
	key := make([]byte, 20)
	return &ike.ChildSA{Conn: conn, Proto: ike.ProtoESP, Mode: ike.ModeTunnel, InSPI: spiSeq, OutSPI: spiSeq + 1,
		Cipher: ike.Cipher{Encr: ike.EncrAESGCM16, KeyBits: 128},
		In:     ike.ChildKeys{Enc: key}, Out: ike.ChildKeys{Enc: key},
		Local: gw1, Remote: gw2, LocalTS: local, RemoteTS: remote, Lifetime: time.Hour, ReplayWindow: 64}
}

func install(t *testing.T, d *Daemon, ch *ike.ChildSA) {
	t.Helper()
	in := ikeInstaller{d}
	if err := in.InstallInbound(ch); err != nil {
		t.Fatal(err)
	}
	if err := in.InstallOutbound(ch); err != nil {
		t.Fatal(err)
	}
}

// outSPI is the SPI the data plane would seal a packet from 10.1.0.2 to
// dst with: SPD lookup, then the newest usable outbound SA of its reqid.
func outSPI(t *testing.T, d *Daemon, dst string) (uint32, bool) {
	t.Helper()
	pol := d.spd.Lookup(spd.Out, spd.Tuple{Src: netip.MustParseAddr("10.1.0.2"), Dst: netip.MustParseAddr(dst), Proto: 1})
	if pol == nil {
		return 0, false // no policy: the packet would not be protected
	}
	if sa := d.sad.Outbound(pol.ReqID); sa != nil {
		return sa.SPI, true
	}
	return 0, true // policy, no SA: dropped (fail closed)
}

// inboundOK reports whether a packet from dst to 10.1.0.2 that arrived on
// inbound SA spi passes the inbound policy check.
func inboundOK(d *Daemon, spi uint32, src string) bool {
	sa := d.sad.Lookup(spi, sad.ESP, gw1)
	if sa == nil {
		return false
	}
	return d.spd.CheckInbound(sa.ReqID, spd.Tuple{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr("10.1.0.2"), Proto: 1})
}

// TestRekeyKeepsRoutesAndMovesTraffic is the bug of issue 10: removing the
// replaced SA took the route its successor needed.
func TestRekeyKeepsRoutesAndMovesTraffic(t *testing.T) {
	d, r, f := testDaemon(t, ikeSpec("site", "add", ts1, ts2))
	old := child("site", ts1, ts2)
	install(t, d, old)
	if spi, _ := outSPI(t, d, "10.2.0.2"); spi != old.OutSPI {
		t.Fatalf("before rekey: sealing with %08x, want %08x", spi, old.OutSPI)
	}
	reqid := d.active["site"].reqid
	for i := 0; i < 10; i++ {
		next := child("site", ts1, ts2)
		in := ikeInstaller{d}
		if err := in.InstallInbound(next); err != nil {
			t.Fatal(err)
		}
		// Between the new inbound and the new outbound SA: the old
		// outbound SA still carries traffic, both inbound SAs are open.
		if spi, _ := outSPI(t, d, "10.2.0.2"); spi != old.OutSPI {
			t.Fatalf("rekey %d: before the new outbound SA, sealing with %08x, want %08x", i, spi, old.OutSPI)
		}
		if err := in.InstallOutbound(next); err != nil {
			t.Fatal(err)
		}
		if spi, _ := outSPI(t, d, "10.2.0.2"); spi != next.OutSPI {
			t.Fatalf("rekey %d: traffic did not move to the new SA: sealing with %08x, want %08x", i, spi, next.OutSPI)
		}
		if !inboundOK(d, old.InSPI, "10.2.0.2") || !inboundOK(d, next.InSPI, "10.2.0.2") {
			t.Fatalf("rekey %d: in-flight packets on the old or new inbound SA fail the policy check", i)
		}
		in.Remove(old)
		if !r.has("10.2.0.0/24") {
			t.Fatalf("rekey %d: removing the replaced SA removed the route into the TUN", i)
		}
		if got := f.guards("site"); !slices.Contains(got, ts2) {
			t.Fatalf("rekey %d: removing the replaced SA removed the guard: %v", i, got)
		}
		if spi, _ := outSPI(t, d, "10.2.0.2"); spi != next.OutSPI {
			t.Fatalf("rekey %d: after removing the old SA, sealing with %08x, want %08x", i, spi, next.OutSPI)
		}
		if inboundOK(d, old.InSPI, "10.2.0.2") {
			t.Fatalf("rekey %d: the removed inbound SA still accepts", i)
		}
		if got := d.active["site"].reqid; got != reqid || d.sad.Outbound(reqid) == nil {
			t.Fatalf("rekey %d: reqid changed %d -> %d", i, reqid, got)
		}
		old = next
	}
	if n := len(d.spd.All()); n != 2 {
		t.Errorf("%d policies after 10 rekeys, want 2 (Out and In of one selector pair)", n)
	}
	if n := d.sad.Len(); n != 2 {
		t.Errorf("%d SAs after 10 rekeys, want 2", n)
	}
}

// TestLastSARemovedFailsClosed: Delete from the peer, hard expiry, DPD
// clear remove the last SA. A conn routed at start keeps its policies,
// route and guard (its traffic is dropped, or held for auto=route); any
// other conn gives its policies and route up (so another conn may carry
// the traffic) but keeps its guard, so nothing leaves in the clear, until
// it is up again or taken down.
func TestLastSARemovedFailsClosed(t *testing.T) {
	tests := []struct {
		auto, dpd string
		keep      bool
		state     string
	}{
		{"start", "", true, "routed"},
		{"route", "", true, "routed"},
		{"add", "hold", true, "routed"},
		{"add", "clear", false, "down"},
	}
	for _, tc := range tests {
		t.Run(tc.auto+"-"+tc.dpd, func(t *testing.T) {
			spec := ikeSpec("site", tc.auto, ts1, ts2)
			spec.IKE.DPDAction = tc.dpd
			d, r, f := testDaemon(t, spec)
			d.autoStart()
			ch := child("site", ts1, ts2)
			install(t, d, ch)
			ikeInstaller{d}.Remove(ch)
			spi, protected := outSPI(t, d, "10.2.0.2")
			if protected != tc.keep || spi != 0 || r.has("10.2.0.0/24") != tc.keep {
				t.Fatalf("after the last SA went: policy %v, SA %08x, routes %v; want policy and route %v, no SA", protected, spi, r.routes, tc.keep)
			}
			if !slices.Contains(f.guards("site"), ts2) {
				t.Fatalf("guard gone after the last SA went: %v", f.conns)
			}
			if st := d.status(true); st.Conns[0].State != tc.state || (tc.state == "down" && !st.Conns[0].GuardKept) {
				t.Errorf("status %q (guard kept %v), want %q", st.Conns[0].State, st.Conns[0].GuardKept, tc.state)
			}
			// Up again: under the same reqid.
			again := child("site", ts1, ts2)
			install(t, d, again)
			if spi, _ := outSPI(t, d, "10.2.0.2"); spi != again.OutSPI {
				t.Fatalf("up again: sealing with %08x", spi)
			}
			// gosec down removes SAs, policies and routes (an auto=route
			// conn keeps its trap); the guard stays.
			if err := d.down("site", func(string) {}); err != nil {
				t.Fatal(err)
			}
			_, protected = outSPI(t, d, "10.2.0.2")
			if trap := tc.auto == "route"; protected != trap || r.has("10.2.0.0/24") != trap || !slices.Contains(f.guards("site"), ts2) {
				t.Fatalf("after down: policy %v, routes %v, guards %v", protected, r.routes, f.conns)
			}
			if d.sad.Len() != 0 {
				t.Fatalf("after down: %d SAs", d.sad.Len())
			}
			// gosec unroute lifts everything.
			if err := d.unroute("site", func(string) {}); err != nil {
				t.Fatal(err)
			}
			if _, protected := outSPI(t, d, "10.2.0.2"); protected || r.has("10.2.0.0/24") || f.guards("site") != nil || len(d.spd.All()) != 0 {
				t.Fatalf("after unroute: policy %v, routes %v, guards %v", protected, r.routes, f.conns)
			}
		})
	}
}

// TestRoutedAtStart: auto=start and auto=route conns have policies, routes
// and guard before any negotiation; auto=route policies trap.
func TestRoutedAtStart(t *testing.T) {
	tests := []struct {
		auto   string
		routed bool
		trap   bool
	}{{"start", true, false}, {"route", true, true}, {"add", false, false}, {"ignore", false, false}}
	for _, tc := range tests {
		t.Run(tc.auto, func(t *testing.T) {
			d, r, f := testDaemon(t, ikeSpec("site", tc.auto, ts1, ts2))
			d.autoStart()
			pol := d.spd.Lookup(spd.Out, spd.Tuple{Src: netip.MustParseAddr("10.1.0.2"), Dst: netip.MustParseAddr("10.2.0.2"), Proto: 1})
			if (pol != nil) != tc.routed || r.has("10.2.0.0/24") != tc.routed || (f.guards("site") != nil) != tc.routed {
				t.Fatalf("policy %v, routes %v, guards %v; routed want %v", pol, r.routes, f.conns, tc.routed)
			}
			if pol != nil && pol.Trap != tc.trap {
				t.Errorf("trap %v, want %v", pol.Trap, tc.trap)
			}
			if tc.routed {
				// The first SA goes under the routed policies' reqid.
				ch := child("site", ts1, ts2)
				install(t, d, ch)
				if spi, _ := outSPI(t, d, "10.2.0.2"); spi != ch.OutSPI {
					t.Fatalf("sealing with %08x, want %08x", spi, ch.OutSPI)
				}
				if n := len(d.spd.All()); n != 2 {
					t.Errorf("%d policies, want 2", n)
				}
			}
		})
	}
}

// TestDuplicateInitiation: both gateways auto=start; two SA pairs for one
// selector pair; whichever the key manager deletes, traffic goes on.
func TestDuplicateInitiation(t *testing.T) {
	for _, removeFirst := range []bool{true, false} {
		t.Run(fmt.Sprintf("remove-first-%v", removeFirst), func(t *testing.T) {
			d, r, _ := testDaemon(t, ikeSpec("site", "start", ts1, ts2))
			d.autoStart()
			a, b := child("site", ts1, ts2), child("site", ts1, ts2)
			install(t, d, a)
			install(t, d, b)
			gone, stays := a, b
			if !removeFirst {
				gone, stays = b, a
			}
			ikeInstaller{d}.Remove(gone)
			if spi, _ := outSPI(t, d, "10.2.0.2"); spi != stays.OutSPI {
				t.Fatalf("sealing with %08x, want the remaining SA %08x", spi, stays.OutSPI)
			}
			if !r.has("10.2.0.0/24") || !inboundOK(d, stays.InSPI, "10.2.0.2") {
				t.Fatalf("route %v or inbound check lost", r.routes)
			}
		})
	}
}

// TestSharedRouteRefcounted: two conns to one remote subnet (different
// local subnets); taking one down keeps the other's route.
func TestSharedRouteRefcounted(t *testing.T) {
	d, r, _ := testDaemon(t, ikeSpec("a", "add", ts1, ts2), ikeSpec("b", "add", ts3, ts2))
	install(t, d, child("a", ts1, ts2))
	install(t, d, child("b", ts3, ts2))
	d.mu.Lock()
	d.downLocked("a")
	d.mu.Unlock()
	if !r.has("10.2.0.0/24") {
		t.Fatal("taking conn a down removed the route conn b needs")
	}
	d.mu.Lock()
	d.downLocked("b")
	d.mu.Unlock()
	if r.has("10.2.0.0/24") {
		t.Fatal("route left after both conns went down")
	}
}

// TestTwoSelectorPairs: a conn with two subnet pairs has one stable reqid
// per pair; rekeying one does not touch the other.
func TestTwoSelectorPairs(t *testing.T) {
	spec := ikeSpec("multi", "add", ts1, ts2)
	spec.RemoteSubnets = append(spec.RemoteSubnets, ts3)
	d, r, f := testDaemon(t, spec)
	x, y := child("multi", ts1, ts2), child("multi", ts1, ts3)
	install(t, d, x)
	install(t, d, y)
	if x2 := child("multi", ts1, ts2); true {
		install(t, d, x2)
		ikeInstaller{d}.Remove(x)
		if spi, _ := outSPI(t, d, "10.2.0.9"); spi != x2.OutSPI {
			t.Fatalf("pair 1 sealing with %08x, want %08x", spi, x2.OutSPI)
		}
	}
	if spi, _ := outSPI(t, d, "10.3.0.9"); spi != y.OutSPI {
		t.Fatalf("pair 2 sealing with %08x, want %08x", spi, y.OutSPI)
	}
	if !r.has("10.2.0.0/24") || !r.has("10.3.0.0/24") || len(f.guards("multi")) != 2 {
		t.Fatalf("routes %v guards %v", r.routes, f.conns)
	}
	reqids := map[uint32]bool{}
	for _, p := range d.spd.All() {
		reqids[p.ReqID] = true
	}
	if len(reqids) != 2 {
		t.Errorf("reqids %v, want one per selector pair", reqids)
	}
}

// TestReloadChangedConnNoGap: a routed conn whose definition changes is
// re-routed with its new selectors; no moment without a guard for a prefix
// that stays protected.
func TestReloadChangedConnNoGap(t *testing.T) {
	old := ikeSpec("site", "start", ts1, ts2)
	d, r, f := testDaemon(t, old)
	d.autoStart()
	nc := ikeSpec("site", "start", ts1, ts2)
	nc.RemoteSubnets = append(nc.RemoteSubnets, ts3)
	cfg := &Config{Conns: map[string]*ConnSpec{"site": nc}, Order: []string{"site"}}
	oldCfg := d.conns
	d.mu.Lock()
	d.conns = cfg
	d.rerouteLocked(oldCfg, cfg, func(string) {})
	d.mu.Unlock()
	if !r.has("10.2.0.0/24") || !r.has("10.3.0.0/24") {
		t.Fatalf("routes after reload: %v", r.routes)
	}
	if g := f.guards("site"); !slices.Contains(g, ts2) || !slices.Contains(g, ts3) {
		t.Fatalf("guards after reload: %v", g)
	}
	if n := len(d.spd.All()); n != 4 {
		t.Errorf("%d policies after reload, want 4", n)
	}
}

// TestReloadRemovedConnLiftsGuard: a conn taken down keeps its guard; once
// it is removed from the configuration, the guard goes with it.
func TestReloadRemovedConnLiftsGuard(t *testing.T) {
	d, r, f := testDaemon(t, ikeSpec("site", "start", ts1, ts2), ikeSpec("other", "start", ts1, ts3))
	d.autoStart()
	install(t, d, child("site", ts1, ts2))
	if err := d.down("site", func(string) {}); err != nil {
		t.Fatal(err)
	}
	if f.guards("site") == nil || !d.guardKept["site"] {
		t.Fatalf("guard lifted by down: %v", f.conns)
	}
	oldCfg := d.conns
	cfg := &Config{Conns: map[string]*ConnSpec{"other": oldCfg.Conns["other"]}, Order: []string{"other"}}
	d.mu.Lock()
	d.conns = cfg
	d.rerouteLocked(oldCfg, cfg, func(string) {})
	d.mu.Unlock()
	if f.guards("site") != nil || d.guardKept["site"] || r.has("10.2.0.0/24") {
		t.Fatalf("after the conn left the configuration: guards %v, routes %v", f.conns, r.routes)
	}
	if f.guards("other") == nil || !r.has("10.3.0.0/24") {
		t.Fatalf("the other conn lost its guard or route: %v %v", f.conns, r.routes)
	}
}

// TestRoutingManyConnsBatched: routing conns at start and at reload writes
// their guards in one Filter.AddConns (one nftables transaction per conn
// made reloading 10,000 conns quadratic), before d.mu is released; an SA
// installed later still writes a guard that changed at once.
func TestRoutingManyConnsBatched(t *testing.T) {
	var conns []*ConnSpec
	for i := range 5 {
		conns = append(conns, ikeSpec(fmt.Sprintf("c%d", i), "start", ts1,
			netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 128, byte(i), 0}), 30)))
	}
	d, _, f := testDaemon(t, conns[:3]...)
	d.autoStart()
	if f.single != 0 || f.multi != 1 || len(f.conns) != 3 {
		t.Fatalf("start: %d single and %d batched writes, guards %v; want 0, 1 and 3 conns", f.single, f.multi, f.conns)
	}
	oldCfg := d.conns
	cfg := &Config{Conns: map[string]*ConnSpec{}}
	for _, c := range conns {
		cfg.Conns[c.Name] = c
		cfg.Order = append(cfg.Order, c.Name)
	}
	d.mu.Lock()
	d.conns = cfg
	d.rerouteLocked(oldCfg, cfg, func(string) {})
	batching := d.guardBatch != nil
	d.mu.Unlock()
	if batching || f.single != 0 || f.multi != 2 || len(f.conns) != 5 {
		t.Fatalf("reload: batch left open %v, %d single and %d batched writes, guards %v; want 0, 2 and 5 conns", batching, f.single, f.multi, f.conns)
	}
	for _, c := range conns {
		if g := f.guards(c.Name); len(g) != 1 || g[0] != c.RemoteSubnets[0] {
			t.Errorf("conn %s guards %v, want %v", c.Name, g, c.RemoteSubnets)
		}
	}
	// A child with a selector the conn did not route: guarded at once.
	install(t, d, child("c0", ts1, ts3))
	if f.single != 1 || !slices.Contains(f.guards("c0"), ts3) {
		t.Fatalf("after a child with a new remote selector: %d single writes, guards %v", f.single, f.guards("c0"))
	}
}

// TestStatusAnyPeer: a right=%any conn shows as %any, not "invalid IP".
func TestStatusAnyPeer(t *testing.T) {
	spec := ikeSpec("rw", "add", ts1, ts2)
	spec.Remote = netip.Addr{}
	d, _, _ := testDaemon(t, spec)
	var b strings.Builder
	st := d.status(true)
	st.WriteText(&b, true)
	if st.Conns[0].Remote != "%any" || strings.Contains(b.String(), "invalid IP") {
		t.Fatalf("remote %q in\n%s", st.Conns[0].Remote, b.String())
	}
}
