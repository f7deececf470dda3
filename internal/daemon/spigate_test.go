package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/sad"
)

// fakeGate is the kernel's SPI set as the daemon maintains it. It checks
// the order on every call: an SPI is admitted before any SA with it is in
// the SAD (the peer may use it as soon as the SA exists) and revoked only
// when none is left.
type fakeGate struct {
	t        *testing.T
	db       *sad.DB
	refs     map[uint32]int
	peers    map[netip.Addr]int
	fail     error // Admit's error, when set
	counts   netio.SPIGateCounts
	admitted []uint32
}

func newFakeGate(t *testing.T, d *Daemon) *fakeGate {
	g := &fakeGate{t: t, db: d.sad, refs: map[uint32]int{}, peers: map[netip.Addr]int{}}
	d.gate = g
	return g
}

func (g *fakeGate) inSAD(spi uint32) bool {
	return g.db.LookupSPI(spi, sad.ESP) != nil || g.db.LookupSPI(spi, sad.AH) != nil
}

func (g *fakeGate) Admit(spi uint32, peer netip.Addr) error {
	if g.fail != nil && !errors.Is(g.fail, netio.ErrGateOpened) {
		return g.fail
	}
	if !peer.IsValid() {
		g.t.Errorf("SPI %08x admitted without its peer", spi)
	}
	g.peers[peer]++
	if g.refs[spi] == 0 && g.inSAD(spi) {
		g.t.Errorf("SPI %08x admitted after an SA with it was in the SAD", spi)
	}
	g.refs[spi]++
	g.admitted = append(g.admitted, spi)
	return g.fail
}

func (g *fakeGate) Revoke(spi uint32, peer netip.Addr) error {
	if g.peers[peer] == 0 {
		g.t.Errorf("peer %v revoked more often than admitted (SPI %08x)", peer, spi)
	} else if g.peers[peer]--; g.peers[peer] == 0 {
		delete(g.peers, peer)
	}
	if g.refs[spi] == 0 {
		g.t.Errorf("SPI %08x revoked more often than admitted", spi)
		return nil
	}
	g.refs[spi]--
	if g.refs[spi] == 0 {
		delete(g.refs, spi)
		if g.inSAD(spi) {
			g.t.Errorf("SPI %08x revoked while an SA with it is in the SAD", spi)
		}
	}
	return nil
}

func (g *fakeGate) Counts() (netio.SPIGateCounts, error) { return g.counts, nil }
func (g *fakeGate) Close() error                         { return nil }

// held returns the SPIs the set holds, sorted.
func (g *fakeGate) held() []uint32 { return slices.Sorted(maps.Keys(g.refs)) }

// checkHeld fails unless the set holds exactly the SPIs of the SAD's
// inbound SAs.
func checkHeld(t *testing.T, d *Daemon, g *fakeGate, what string) {
	t.Helper()
	var want []uint32
	for _, sa := range d.sad.All() {
		if sa.Dir == sad.Inbound && !slices.Contains(want, sa.SPI) {
			want = append(want, sa.SPI)
		}
	}
	slices.Sort(want)
	if got := g.held(); !slices.Equal(got, want) {
		t.Fatalf("%s: kernel set holds %x, the SAD's inbound SAs have %x", what, got, want)
	}
	peers := map[netip.Addr]int{}
	for _, sa := range d.sad.All() {
		if sa.Dir == sad.Inbound {
			peers[sa.Src]++
		}
	}
	if !maps.Equal(peers, g.peers) {
		t.Fatalf("%s: peer set holds %v, the SAD's inbound SAs come from %v", what, g.peers, peers)
	}
}

// TestSPIGateFollowsIKESAs: through install, ten make-before-break rekeys,
// removal and down, the kernel's set holds exactly the inbound SPIs, each
// admitted before its SA existed and revoked after it went.
func TestSPIGateFollowsIKESAs(t *testing.T) {
	d, _, _ := testDaemon(t, ikeSpec("site", "add", ts1, ts2), ikeSpec("other", "add", ts1, ts3))
	g := newFakeGate(t, d)
	old := child("site", ts1, ts2)
	install(t, d, old)
	checkHeld(t, d, g, "installed")
	other := child("other", ts1, ts3)
	install(t, d, other)
	for i := 0; i < 10; i++ {
		next := child("site", ts1, ts2)
		if err := (ikeInstaller{d}).InstallInbound(next); err != nil {
			t.Fatal(err)
		}
		// The new SA's packets pass before its outbound twin exists
		// (the peer may already send on it), and the old one's still do.
		if !slices.Contains(g.held(), next.InSPI) || !slices.Contains(g.held(), old.InSPI) {
			t.Fatalf("rekey %d: set holds %x, want old %08x and new %08x", i, g.held(), old.InSPI, next.InSPI)
		}
		if err := (ikeInstaller{d}).InstallOutbound(next); err != nil {
			t.Fatal(err)
		}
		ikeInstaller{d}.Remove(old)
		checkHeld(t, d, g, fmt.Sprintf("rekey %d", i))
		old = next
	}
	if err := d.down("site", func(string) {}); err != nil {
		t.Fatal(err)
	}
	checkHeld(t, d, g, "site down")
	if got := g.held(); !slices.Equal(got, []uint32{other.InSPI}) {
		t.Fatalf("after site down: set holds %x, want only other's %08x", got, other.InSPI)
	}
	ikeInstaller{d}.Remove(other)
	if len(g.refs) != 0 {
		t.Fatalf("no SA left, set holds %x", g.held())
	}
}

// TestSPIGateFailure: an SPI the kernel's set refused means no SA (its
// packets would be dropped); a set that failed and opened lets the SA in.
// An SA the SAD refuses gives its hold back.
func TestSPIGateFailure(t *testing.T) {
	tests := []struct {
		name      string
		fail      error
		installed bool
	}{
		{"refused", errors.New("netlink: ENOBUFS"), false},
		{"gate opened", fmt.Errorf("netlink: ENOBUFS; %w", netio.ErrGateOpened), true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, _, _ := testDaemon(t, ikeSpec("site", "add", ts1, ts2))
			g := newFakeGate(t, d)
			g.fail = tc.fail
			ch := child("site", ts1, ts2)
			err := ikeInstaller{d}.InstallInbound(ch)
			if (err == nil) != tc.installed || (d.sad.Lookup(ch.InSPI, sad.ESP, gw1) != nil) != tc.installed {
				t.Fatalf("InstallInbound: %v, SA in SAD %v; want installed %v", err, d.sad.Lookup(ch.InSPI, sad.ESP, gw1) != nil, tc.installed)
			}
			if !tc.installed && len(g.refs) != 0 {
				t.Fatalf("refused SPI still held: %x", g.held())
			}
		})
	}
	t.Run("SAD refuses", func(t *testing.T) {
		d, _, _ := testDaemon(t, ikeSpec("site", "add", ts1, ts2))
		g := newFakeGate(t, d)
		ch := child("site", ts1, ts2)
		install(t, d, ch)
		dup := &sad.SA{SPI: ch.InSPI, Proto: sad.ESP, Mode: sad.Tunnel, Src: gw2, Dst: gw1, Dir: sad.Inbound,
			ESP: mustSuite(t)}
		d.mu.Lock()
		err := d.addInboundLocked(dup)
		d.mu.Unlock()
		if !errors.Is(err, sad.ErrExists) {
			t.Fatalf("duplicate inbound SA: %v, want ErrExists", err)
		}
		if g.refs[ch.InSPI] != 1 {
			t.Fatalf("holds on %08x after the SAD refused a duplicate: %d, want 1", ch.InSPI, g.refs[ch.InSPI])
		}
	})
}

func mustSuite(t *testing.T) *esp.Suite {
	s, err := esp.NewSuite(esp.Config{Cipher: esp.CipherAESGCM16, EncKey: make([]byte, 20)})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TestSPIGateManualConn: a manually keyed conn's inbound SPI is let
// through while it is up, and a refused SPI fails `gosec up`.
func TestSPIGateManualConn(t *testing.T) {
	spec := &ConnSpec{Name: "man", Auto: "add", Mode: sad.Tunnel, Local: gw1, Remote: gw2,
		LocalSubnets: []netip.Prefix{ts1}, RemoteSubnets: []netip.Prefix{ts2},
		Manual: &Manual{Proto: sad.ESP, InSPI: 0x2001, OutSPI: 0x1001, ReplayWindow: 64,
			InESP:  esp.Config{Cipher: esp.CipherAESGCM16, EncKey: make([]byte, 20)},
			OutESP: esp.Config{Cipher: esp.CipherAESGCM16, EncKey: make([]byte, 20)}}}
	d, _, _ := testDaemon(t, spec)
	g := newFakeGate(t, d)
	if err := d.up(context.Background(), "man", func(string) {}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(g.held(), []uint32{0x2001}) {
		t.Fatalf("manual conn up: set holds %x, want 2001", g.held())
	}
	if err := d.down("man", func(string) {}); err != nil {
		t.Fatal(err)
	}
	if len(g.refs) != 0 {
		t.Fatalf("manual conn down: set holds %x", g.held())
	}
	g.fail = errors.New("netlink: EPERM")
	if err := d.up(context.Background(), "man", func(string) {}); err == nil || d.sad.Len() != 0 {
		t.Fatalf("up with a refused SPI: %v, %d SAs; want an error and no SA", err, d.sad.Len())
	}
}

// TestSPIGateStatus: the kernel's drops are in the status by reason
// (unknown-spi, beside the data plane's) and on their own line.
func TestSPIGateStatus(t *testing.T) {
	d, _, _ := testDaemon(t)
	g := newFakeGate(t, d)
	g.counts = netio.SPIGateCounts{ESP: 5, AH: 1, UDP: 2, Admitted: 3}
	st := d.status(true)
	if st.Drops["unknown-spi"] != 8 {
		t.Fatalf("drops %v, want unknown-spi 8", st.Drops)
	}
	k := st.KernelDrops
	if k == nil || k.UnknownSPI != 8 || k.ESP != 5 || k.AH != 1 || k.UDP != 2 || k.SPIs != 3 || k.Off {
		t.Fatalf("kernel drops %+v", k)
	}
	if got, want := k.text(), "3 SPIs let through, 8 unknown-SPI packets dropped (ESP 5, AH 1, ESP-in-UDP 2)"; got != want {
		t.Fatalf("status line %q, want %q", got, want)
	}
	g.counts = netio.SPIGateCounts{ESP: 5, AH: 1, UDP: 2, Admitted: 3, Bypassing: true, RingBypass: 40, Prerouting: 4}
	k = d.status(true).KernelDrops
	if k.Prerouting == nil || *k.Prerouting != 4 || k.RingBypass == nil || *k.RingBypass != 40 {
		t.Fatalf("kernel drops with the ring bypass %+v", k)
	}
	if got, want := k.text(), "3 SPIs let through, 8 unknown-SPI packets dropped (ESP 5, AH 1, ESP-in-UDP 2; 4 of them before routing); 40 received by the ring kept from the IP stack"; got != want {
		t.Fatalf("status line %q, want %q", got, want)
	}
	g.counts = netio.SPIGateCounts{ESP: 5, Open: true, Err: errors.New("ENOBUFS")}
	if got := d.status(true).KernelDrops.text(); got != "off after an error (ENOBUFS); 5 unknown-SPI packets dropped before" {
		t.Fatalf("status line of an open gate %q", got)
	}
}

// TestKernelDropsIngress: the ingress bypass's counts join the totals
// they are part of, and statusall names where they were dropped.
func TestKernelDropsIngress(t *testing.T) {
	n := func(v uint64) *uint64 { return &v }
	for _, tc := range []struct {
		name   string
		k      KernelDropsStatus
		c      netio.IngressCounts
		want   KernelDropsStatus
		status string
	}{{
		name: "with the prerouting chain",
		k:    KernelDropsStatus{UnknownSPI: 3, ESP: 2, UDP: 1, SPIs: 2, RingBypass: n(5), Prerouting: n(1)},
		c:    netio.IngressCounts{Bypassed: 100, ESP: 7, AH: 3, Interfaces: []string{"eth0", "wan0"}},
		want: KernelDropsStatus{UnknownSPI: 13, ESP: 9, AH: 3, UDP: 1, SPIs: 2, RingBypass: n(105), Prerouting: n(11),
			Ingress: &IngressDropsStatus{Interfaces: []string{"eth0", "wan0"}, RingBypass: 100, UnknownSPI: 10}},
		status: "2 SPIs let through, 13 unknown-SPI packets dropped (ESP 9, AH 3, ESP-in-UDP 1; 11 of them before routing); 105 received by the ring kept from the IP stack; at tc ingress on eth0, wan0: 100 kept, 10 unknown-SPI",
	}, {
		name: "without it",
		k:    KernelDropsStatus{SPIs: 1},
		c:    netio.IngressCounts{Bypassed: 4, AH: 1, Interfaces: []string{"wan0"}},
		want: KernelDropsStatus{UnknownSPI: 1, AH: 1, SPIs: 1,
			Ingress: &IngressDropsStatus{Interfaces: []string{"wan0"}, RingBypass: 4, UnknownSPI: 1}},
		status: "1 SPIs let through, 1 unknown-SPI packets dropped (ESP 0, AH 1, ESP-in-UDP 0); at tc ingress on wan0: 4 kept, 1 unknown-SPI",
	}, {
		name: "not attached to an interface",
		k:    KernelDropsStatus{SPIs: 1},
		c:    netio.IngressCounts{Bypassed: 4, Interfaces: []string{"wan0"}, NotAttached: []string{"wan1: operation not permitted"}},
		want: KernelDropsStatus{SPIs: 1,
			Ingress: &IngressDropsStatus{Interfaces: []string{"wan0"}, NotAttached: []string{"wan1: operation not permitted"}, RingBypass: 4}},
		status: "1 SPIs let through, 0 unknown-SPI packets dropped (ESP 0, AH 0, ESP-in-UDP 0); at tc ingress on wan0: 4 kept, 0 unknown-SPI; not attached to wan1: operation not permitted",
	}, {
		name: "detached after an error",
		k:    KernelDropsStatus{SPIs: 1},
		c:    netio.IngressCounts{Bypassed: 4, Err: errors.New("EPERM")},
		want: KernelDropsStatus{SPIs: 1,
			Ingress: &IngressDropsStatus{RingBypass: 4, Error: "EPERM"}},
		status: "1 SPIs let through, 0 unknown-SPI packets dropped (ESP 0, AH 0, ESP-in-UDP 0); at tc ingress: off after an error (EPERM): 4 kept, 0 unknown-SPI",
	}} {
		t.Run(tc.name, func(t *testing.T) {
			k := tc.k
			addIngress(&k, tc.c)
			if !reflect.DeepEqual(k, tc.want) {
				t.Fatalf("got %+v (ingress %+v), want %+v (ingress %+v)", k, k.Ingress, tc.want, tc.want.Ingress)
			}
			if got := k.text(); got != tc.status {
				t.Fatalf("status line\n%q, want\n%q", got, tc.status)
			}
		})
	}
}
