package ike

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/ike/isakmp"
	"github.com/gosec-ipsec/gosec/internal/clock"
)

// fakeNet connects engines by address: Send hands the message to the
// engine that owns the destination address, with the sender's address
// and port as source.
type fakeNet struct {
	mu      sync.Mutex
	engines map[netip.Addr]*Engine
	// drop, if set, decides per message whether it is lost.
	drop func(from, to netip.AddrPort, msg []byte) bool
	// rewrite, if set, may change the source as a NAT would.
	rewrite func(from netip.AddrPort) netip.AddrPort
	// byPort, if set, delivers to an address and port (a NAT's mapping)
	// before engines does by address.
	byPort map[netip.AddrPort]*Engine
	sent   int
}

type fakeTransport struct {
	net   *fakeNet
	local netip.Addr
}

func (t *fakeTransport) Send(msg []byte, to netip.AddrPort, natt bool) error {
	port := uint16(500)
	if natt {
		port = 4500
	}
	from := netip.AddrPortFrom(t.local, port)
	t.net.mu.Lock()
	t.net.sent++
	dst := t.net.engines[to.Addr()]
	if e := t.net.byPort[to]; e != nil {
		dst = e
	}
	drop := t.net.drop != nil && t.net.drop(from, to, msg)
	if t.net.rewrite != nil {
		from = t.net.rewrite(from)
	}
	t.net.mu.Unlock()
	if dst == nil || drop {
		return nil
	}
	dst.HandleMessage(msg, from, to, natt)
	return nil
}

// SendFrom sends from src, as a host with several addresses can.
func (t *fakeTransport) SendFrom(msg []byte, src netip.Addr, to netip.AddrPort, natt bool) error {
	return (&fakeTransport{net: t.net, local: src}).Send(msg, to, natt)
}

// fakeInstaller records what the engine installs.
type fakeInstaller struct {
	mu       sync.Mutex
	next     uint32
	inbound  map[uint32]*ChildSA
	outbound map[uint32]*ChildSA
	removed  []uint32
	released []uint32
	// reserved is the protocol each SPI was allocated for: as in
	// sad.DB, a release under another protocol frees nothing.
	reserved map[uint32]Proto
	// inCalls and outCalls count InstallInbound and InstallOutbound.
	inCalls, outCalls int
	// installs counts InstallInbound calls per SPI (an SA installed
	// twice is a bug).
	installs map[uint32]int
}

func newInstaller(base uint32) *fakeInstaller {
	return &fakeInstaller{next: base, inbound: map[uint32]*ChildSA{}, outbound: map[uint32]*ChildSA{}}
}

func (f *fakeInstaller) AllocSPI(proto Proto) (uint32, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if proto != ProtoESP && proto != ProtoAH {
		return 0, fmt.Errorf("SPI for protocol %v", proto)
	}
	f.next++
	if f.reserved == nil {
		f.reserved = map[uint32]Proto{}
	}
	f.reserved[f.next] = proto
	return f.next, nil
}
func (f *fakeInstaller) ReleaseSPI(proto Proto, spi uint32) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if p, ok := f.reserved[spi]; !ok || p != proto {
		return // as sad.DB.ReleaseSPI: nothing reserved under proto
	}
	delete(f.reserved, spi)
	f.released = append(f.released, spi)
}
func (f *fakeInstaller) InstallInbound(c *ChildSA) error {
	keepKeys(c)
	f.mu.Lock()
	f.inbound[c.InSPI] = c
	f.inCalls++
	if f.installs == nil {
		f.installs = map[uint32]int{}
	}
	f.installs[c.InSPI]++
	f.mu.Unlock()
	return nil
}
func (f *fakeInstaller) InstallOutbound(c *ChildSA) error {
	keepKeys(c)
	f.mu.Lock()
	f.outbound[c.InSPI] = c
	f.outCalls++
	f.mu.Unlock()
	return nil
}

// keepKeys gives c's configurations their own copies of the key bytes,
// as the data plane keys its own state (esp.NewSuite, ah.NewSuite): the
// engine zeroes its KEYMAT once InstallInbound and InstallOutbound
// return. The first call copies a direction's keys, later calls keep
// them.
func keepKeys(c *ChildSA) {
	keysMu.Lock()
	defer keysMu.Unlock()
	if keysKept[c] {
		return
	}
	keysKept[c] = true
	cp := func(b []byte) []byte { return append([]byte(nil), b...) }
	c.In.Enc, c.In.Integ, c.Out.Enc, c.Out.Integ = cp(c.In.Enc), cp(c.In.Integ), cp(c.Out.Enc), cp(c.Out.Integ)
}

var (
	keysMu   sync.Mutex
	keysKept = map[*ChildSA]bool{}
)

func (f *fakeInstaller) Remove(c *ChildSA) {
	f.mu.Lock()
	delete(f.inbound, c.InSPI)
	delete(f.outbound, c.InSPI)
	f.removed = append(f.removed, c.InSPI)
	f.mu.Unlock()
}

func (f *fakeInstaller) children() []*ChildSA {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*ChildSA
	for spi, c := range f.outbound {
		if f.inbound[spi] != nil {
			out = append(out, c)
		}
	}
	return out
}

var (
	addrA = netip.MustParseAddr("192.0.2.1")
	addrB = netip.MustParseAddr("192.0.2.2")
)

func suite(encr Encr, bits int, integ Integ, dh DHGroup) Suite {
	return Suite{Cipher: Cipher{Encr: encr, KeyBits: bits}, Integ: integ, DH: dh}
}

// pairConns returns the same conn as seen from A and from B.
func pairConns(name string, ike, esp []Suite, mode Mode) (*Conn, *Conn) {
	a := &Conn{Name: name, Local: addrA, Remote: addrB, IKE: ike, ESP: esp, Mode: mode,
		LocalSubnets: []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24")}, RemoteSubnets: []netip.Prefix{netip.MustParsePrefix("10.2.0.0/24")},
		IKELifetime: time.Hour, Lifetime: 20 * time.Minute, KeyingTries: 1, ReplayWindow: 64}
	b := *a
	b.Local, b.Remote = addrB, addrA
	b.LocalSubnets, b.RemoteSubnets = a.RemoteSubnets, a.LocalSubnets
	if mode == ModeTransport {
		a.LocalSubnets, a.RemoteSubnets, b.LocalSubnets, b.RemoteSubnets = nil, nil, nil, nil
	}
	return a, &b
}

type rig struct {
	t      *testing.T
	net    *fakeNet
	a, b   *Engine
	ia, ib *fakeInstaller
	logs   *bytes.Buffer
	lmu    sync.Mutex
	cancel context.CancelFunc
}

// logText returns the engines' logs so far.
func (r *rig) logText() string {
	r.lmu.Lock()
	defer r.lmu.Unlock()
	return r.logs.String()
}

type syncBuf struct {
	mu sync.Mutex
	bytes.Buffer
}

func newRig(t *testing.T, pskA, pskB string, ca, cb []*Conn, tweak func(*Config)) *rig {
	t.Helper()
	r := &rig{t: t, net: &fakeNet{engines: map[netip.Addr]*Engine{}}, ia: newInstaller(0x1000), ib: newInstaller(0x2000), logs: &bytes.Buffer{}}
	logw := writerFunc(func(p []byte) (int, error) {
		r.lmu.Lock()
		defer r.lmu.Unlock()
		if testing.Verbose() {
			os.Stderr.Write(p)
		}
		return r.logs.Write(p)
	})
	mk := func(local netip.Addr, psk string, inst *fakeInstaller, role string) *Engine {
		cfg := Config{Transport: &fakeTransport{net: r.net, local: local}, Installer: inst,
			PSK: func(l, rr string) ([]byte, bool) { return []byte(psk), psk != "" },
			Log: slog.New(slog.NewTextHandler(logw, nil)).With("side", role), RetransmitTimeout: 200 * time.Millisecond, Retransmits: 3}
		if tweak != nil {
			tweak(&cfg)
		}
		return New(cfg)
	}
	r.a, r.b = mk(addrA, pskA, r.ia, "A"), mk(addrB, pskB, r.ib, "B")
	r.net.engines[addrA], r.net.engines[addrB] = r.a, r.b
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	done := make(chan struct{}, 2)
	go func() { r.a.Run(ctx); done <- struct{}{} }()
	go func() { r.b.Run(ctx); done <- struct{}{} }()
	t.Cleanup(func() { cancel(); <-done; <-done })
	if err := r.a.SetConns(ctx, ca); err != nil {
		t.Fatal(err)
	}
	if err := r.b.SetConns(ctx, cb); err != nil {
		t.Fatal(err)
	}
	return r
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }

func (r *rig) up(e *Engine, name string) ([]string, error) {
	var lines []string
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := e.Initiate(ctx, name, func(s string) { lines = append(lines, s) })
	return lines, err
}

// checkPair verifies that the two installers hold mirror images of one
// SA pair: A's outbound SPI/keys are B's inbound ones and vice versa.
func checkPair(t *testing.T, ia, ib *fakeInstaller, n int) {
	t.Helper()
	ca, cb := ia.children(), ib.children()
	if len(ca) != n || len(cb) != n {
		t.Fatalf("children: A %d, B %d, want %d", len(ca), len(cb), n)
	}
	for _, x := range ca {
		var y *ChildSA
		for _, c := range cb {
			if c.InSPI == x.OutSPI {
				y = c
			}
		}
		if y == nil {
			t.Fatalf("B has no SA with A's outbound SPI %08x", x.OutSPI)
		}
		if y.OutSPI != x.InSPI {
			t.Fatalf("SPIs do not mirror: A in %08x out %08x, B in %08x out %08x", x.InSPI, x.OutSPI, y.InSPI, y.OutSPI)
		}
		if x.Proto == ProtoAH {
			if !bytes.Equal(x.Out.Integ, y.In.Integ) || !bytes.Equal(x.In.Integ, y.Out.Integ) || len(x.In.Integ) != x.Integ.KeyLen() {
				t.Fatalf("AH keys do not mirror")
			}
		} else {
			if !bytes.Equal(x.Out.Enc, y.In.Enc) || !bytes.Equal(x.Out.Integ, y.In.Integ) ||
				!bytes.Equal(x.In.Enc, y.Out.Enc) || !bytes.Equal(x.In.Integ, y.Out.Integ) {
				t.Fatalf("ESP keys do not mirror")
			}
			if bytes.Equal(x.In.Enc, x.Out.Enc) && len(x.In.Enc) > 0 {
				t.Fatalf("both directions share one key")
			}
		}
		if x.LocalTS != y.RemoteTS || x.RemoteTS != y.LocalTS || x.Mode != y.Mode || x.Suite != y.Suite {
			t.Fatalf("selectors or suite differ: A %v %v %v %s, B %v %v %v %s", x.LocalTS, x.RemoteTS, x.Mode, x.Suite, y.LocalTS, y.RemoteTS, y.Mode, y.Suite)
		}
	}
}

// TestQuickModeMatrix: gosec against gosec for phase-1 proposals and
// every Quick Mode combination, each side initiating.
func TestQuickModeMatrix(t *testing.T) {
	ikes := map[string]Suite{
		"aes128-sha1-modp2048":   suite(EncrAESCBC, 128, IntegSHA1, 14),
		"aes256-sha256-modp2048": suite(EncrAESCBC, 256, IntegSHA256, 14),
		"3des-sha1-modp1024":     suite(Encr3DES, 0, IntegSHA1, 2),
		"aes128-sha256-ecp256":   suite(EncrAESCBC, 128, IntegSHA256, 19),
		"aes192-sha512-ecp384":   suite(EncrAESCBC, 192, IntegSHA512, 20),
		"aes256-md5-modp1536":    suite(EncrAESCBC, 256, IntegMD5, 5),
	}
	esps := map[string][]Suite{
		"aes128-sha1":              {suite(EncrAESCBC, 128, IntegSHA1, 0)},
		"aes256-sha256":            {suite(EncrAESCBC, 256, IntegSHA256, 0)},
		"3des-md5":                 {suite(Encr3DES, 0, IntegMD5, 0)},
		"aes128gcm16":              {suite(EncrAESGCM16, 128, IntegNone, 0)},
		"aes256gcm16":              {suite(EncrAESGCM16, 256, IntegNone, 0)},
		"aes128ctr-sha384":         {suite(EncrAESCTR, 128, IntegSHA384, 0)},
		"chacha20poly1305":         {suite(EncrChaCha20Poly1305, 256, IntegNone, 0)},
		"null-sha512":              {suite(EncrNull, 0, IntegSHA512, 0)},
		"pfs-aes128-sha1-modp2048": {suite(EncrAESCBC, 128, IntegSHA1, 14)},
		"pfs-aes128gcm16-ecp256":   {suite(EncrAESGCM16, 128, IntegNone, 19)},
	}
	type tc struct {
		name      string
		ike       Suite
		esp       []Suite
		ah        bool
		mode      Mode
		bInitiate bool
	}
	var cases []tc
	for in, is := range ikes {
		cases = append(cases, tc{name: in + "/aes128-sha1/tunnel", ike: is, esp: esps["aes128-sha1"], mode: ModeTunnel})
	}
	for en, es := range esps {
		for _, mode := range []Mode{ModeTunnel, ModeTransport} {
			for _, bi := range []bool{false, true} {
				cases = append(cases, tc{name: fmt.Sprintf("%s/%s/binit=%v", en, mode, bi), ike: ikes["aes128-sha1-modp2048"], esp: es, mode: mode, bInitiate: bi})
			}
		}
	}
	for _, integ := range []Integ{IntegMD5, IntegSHA1, IntegSHA256, IntegSHA384, IntegSHA512} {
		for _, mode := range []Mode{ModeTunnel, ModeTransport} {
			cases = append(cases, tc{name: fmt.Sprintf("ah-%s/%s", integ.Name(), mode), ike: ikes["aes128-sha1-modp2048"],
				esp: []Suite{{Integ: integ}}, ah: true, mode: mode, bInitiate: mode == ModeTransport})
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ca, cb := pairConns("c", []Suite{c.ike}, c.esp, c.mode)
			if c.ah {
				ca.AH, ca.ESP, cb.AH, cb.ESP = ca.ESP, nil, cb.ESP, nil
			}
			r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
			init := r.a
			if c.bInitiate {
				init = r.b
			}
			lines, err := r.up(init, "c")
			if err != nil {
				t.Fatalf("up: %v\n%s\n%s", err, strings.Join(lines, "\n"), r.logText())
			}
			if !strings.Contains(strings.Join(lines, "\n"), "established successfully") {
				t.Fatalf("progress does not say established:\n%s", strings.Join(lines, "\n"))
			}
			// The responder installs its outbound SA when QM3 arrives.
			waitFor(t, func() bool { return len(r.ia.children()) == 1 && len(r.ib.children()) == 1 })
			checkPair(t, r.ia, r.ib, 1)
			p1s, cs, _ := r.a.Status(context.Background())
			if len(p1s) != 1 || len(cs) != 1 || !strings.HasPrefix(p1s[0].State, "MAIN_") {
				t.Fatalf("status: %+v %+v", p1s, cs)
			}
		})
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached in 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestFailures: mismatches fail with the right explanation and leave
// no SA on either side.
func TestFailures(t *testing.T) {
	aes := []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}
	esp := []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}
	cases := []struct {
		name         string
		pskB         string
		tweak        func(a, b *Conn)
		want, wantLg string
	}{
		{name: "psk", pskB: "other", want: "pre-shared keys", wantLg: "pre-shared keys most likely differ"},
		{name: "ike-proposal", pskB: "secret", tweak: func(a, b *Conn) { b.IKE = []Suite{suite(EncrAESCBC, 256, IntegSHA256, 19)} },
			want: "NO_PROPOSAL_CHOSEN", wantLg: "differs in cipher aes128 vs aes256, hash sha1 vs sha256, DH group"},
		{name: "esp-proposal", pskB: "secret", tweak: func(a, b *Conn) { b.ESP = []Suite{suite(EncrAESGCM16, 128, IntegNone, 0)} },
			want: "phase-2 proposals", wantLg: "no acceptable phase-2 proposal"},
		{name: "subnets", pskB: "secret", tweak: func(a, b *Conn) { b.RemoteSubnets = []netip.Prefix{netip.MustParsePrefix("10.9.0.0/24")} },
			want: "leftsubnet/rightsubnet", wantLg: "INVALID_ID_INFORMATION"},
		{name: "mode", pskB: "secret", tweak: func(a, b *Conn) { b.Mode = ModeTransport; b.LocalSubnets, b.RemoteSubnets = nil, nil },
			want: "INVALID_ID_INFORMATION", wantLg: "INVALID_ID_INFORMATION"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ca, cb := pairConns("c", aes, esp, ModeTunnel)
			if c.tweak != nil {
				c.tweak(ca, cb)
			}
			r := newRig(t, "secret", c.pskB, []*Conn{ca}, []*Conn{cb}, nil)
			lines, err := r.up(r.a, "c")
			if err == nil {
				t.Fatalf("up succeeded:\n%s", strings.Join(lines, "\n"))
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
			time.Sleep(50 * time.Millisecond)
			if !strings.Contains(r.logText(), c.wantLg) {
				t.Fatalf("logs do not say %q:\n%s", c.wantLg, r.logText())
			}
			if len(r.ia.inbound)+len(r.ia.outbound)+len(r.ib.inbound)+len(r.ib.outbound) != 0 {
				t.Fatalf("SAs left behind: A %v/%v B %v/%v", r.ia.inbound, r.ia.outbound, r.ib.inbound, r.ib.outbound)
			}
		})
	}
}

// TestRetransmit: lost messages are retransmitted, and a lost reply is
// answered again from the responder's memory.
func TestRetransmit(t *testing.T) {
	for _, lose := range []int{1, 2, 3, 4, 5, 6, 7, 8, 9} {
		t.Run(fmt.Sprintf("lose-%d", lose), func(t *testing.T) {
			ca, cb := pairConns("c", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
			recs := []*retransmitRecorder{{}, {}}
			made := 0
			r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) { c.Observer = recs[made]; made++ })
			n := 0
			r.net.drop = func(_, _ netip.AddrPort, _ []byte) bool { n++; return n == lose }
			if lines, err := r.up(r.a, "c"); err != nil {
				t.Fatalf("up: %v\n%s", err, strings.Join(lines, "\n"))
			}
			waitFor(t, func() bool { return len(r.ib.children()) == 1 })
			checkPair(t, r.ia, r.ib, 1)
			if lose <= 6 && r.a.Stats.Retransmits.Load()+r.b.Stats.Retransmits.Load() == 0 {
				t.Fatal("no retransmission counted")
			}
			// Every retransmission counted is reported to the observer,
			// with its conn and exchange.
			for i, e := range []*Engine{r.a, r.b} {
				// (a timer may still be firing: wait until both agree)
				waitFor(t, func() bool { return uint64(len(recs[i].events())) == e.Stats.Retransmits.Load() })
				evs := recs[i].events()
				for _, ev := range evs {
					if ev.Kind != "main" && ev.Kind != "quick" || ev.Conn != "c" && !(ev.Conn == "?" && ev.Kind == "main") || !ev.Peer.IsValid() {
						t.Errorf("engine %d: retransmission reported as %+v", i, ev)
					}
				}
			}
			if lose == 1 {
				// MM1 lost: A sends it again after the timeout.
				if evs := recs[0].events(); len(evs) == 0 || evs[0] != (RetransmitEvent{Peer: addrB, Conn: "c", Kind: "main"}) {
					t.Errorf("A reported %+v, want MM1's retransmission first", evs)
				}
			}
		})
	}
}

// retransmitRecorder is an Observer that records retransmissions.
type retransmitRecorder struct {
	mu  sync.Mutex
	evs []RetransmitEvent
}

func (r *retransmitRecorder) Exchange(ExchangeEvent) {}
func (r *retransmitRecorder) Retransmit(ev RetransmitEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.evs = append(r.evs, ev)
}
func (r *retransmitRecorder) events() []RetransmitEvent {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]RetransmitEvent(nil), r.evs...)
}

// TestNoResponse: a silent peer fails the negotiation with a clear
// message after the retransmissions.
func TestNoResponse(t *testing.T) {
	ca, cb := pairConns("c", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	r.net.drop = func(_, to netip.AddrPort, _ []byte) bool { return to.Addr() == addrB }
	_, err := r.up(r.a, "c")
	if err == nil || !strings.Contains(err.Error(), "no response") {
		t.Fatalf("err = %v", err)
	}
}

// TestDelete: gosec down on one side deletes the SAs on both.
func TestDelete(t *testing.T) {
	ca, cb := pairConns("c", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	had, err := r.a.Terminate(context.Background(), "c")
	if err != nil || !had {
		t.Fatalf("terminate: %v %v", had, err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 0 && len(r.ia.children()) == 0 })
	waitFor(t, func() bool {
		p1s, _, _ := r.b.Status(context.Background())
		return len(p1s) == 0
	})
	// And up again works (a fresh phase 1).
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
}

// TestNATTFloat: with forceencaps the exchange floats to 4500 and the
// SAs are UDP-encapsulated on both sides.
func TestNATTFloat(t *testing.T) {
	ca, cb := pairConns("c", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
	ca.ForceEncaps = true
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	var ports []uint16
	var mu sync.Mutex
	r.net.drop = func(from, _ netip.AddrPort, _ []byte) bool {
		mu.Lock()
		ports = append(ports, from.Port())
		mu.Unlock()
		return false
	}
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	mu.Lock()
	defer mu.Unlock()
	if ports[0] != 500 || ports[len(ports)-1] != 4500 {
		t.Fatalf("ports %v: want 500 first and 4500 after the float", ports)
	}
	for _, c := range append(r.ia.children(), r.ib.children()...) {
		if c.Encap == nil || c.Encap.SrcPort != 4500 || c.Encap.DstPort != 4500 {
			t.Fatalf("child %08x not UDP-encapsulated: %+v", c.InSPI, c.Encap)
		}
	}
}

// TestHalfOpenFlood: a flood of MM1s from many ports keeps the responder
// bounded, and a real peer still gets through.
func TestHalfOpenFlood(t *testing.T) {
	ca, cb := pairConns("c", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) { c.MaxHalfOpen = 64; c.MaxHalfOpenPerPeer = 16 })
	// MM1 as A would send it, from random cookies and ports.
	mm1 := func(i int) []byte {
		h := isakmp.Header{Version: 0x10, Exchange: isakmp.ExchMain}
		h.ICookie[0], h.ICookie[1], h.ICookie[7] = byte(i>>8), byte(i), 1
		return isakmp.Encode(h, []isakmp.Payload{p1SA(p1Suites(ca))})
	}
	for i := 0; i < 5000; i++ {
		from := netip.AddrPortFrom(addrA, uint16(1024+i))
		r.b.HandleMessage(mm1(i), from, netip.AddrPortFrom(addrB, 500), false)
		if i%500 == 0 {
			time.Sleep(10 * time.Millisecond) // let the engine drain its queue
		}
	}
	waitFor(t, func() bool {
		n := 0
		r.b.call(context.Background(), func() { n = len(r.b.halfOpen) })
		return n <= 16
	})
	if ev := r.b.Stats.HalfOpenEvicted.Load(); ev == 0 {
		t.Fatal("no half-open SA was evicted")
	}
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatalf("real peer during the flood: %v", err)
	}
}

// TestMalformed: garbage, truncations and wrong cookies are counted and
// dropped; the engine keeps serving.
func TestMalformed(t *testing.T) {
	ca, cb := pairConns("c", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	var captured [][]byte
	var mu sync.Mutex
	r.net.drop = func(_, to netip.AddrPort, msg []byte) bool {
		if to.Addr() == addrB {
			mu.Lock()
			captured = append(captured, append([]byte(nil), msg...))
			mu.Unlock()
		}
		return false
	}
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	from := netip.AddrPortFrom(addrA, 500)
	to := netip.AddrPortFrom(addrB, 500)
	mu.Lock()
	msgs := captured
	mu.Unlock()
	for _, m := range msgs {
		for _, cut := range []int{1, 5, 27, 28, 29, len(m) / 2, len(m) - 1} {
			if cut < len(m) {
				r.b.HandleMessage(m[:cut], from, to, false)
			}
		}
		bad := append([]byte(nil), m...)
		bad[len(bad)-1] ^= 0x55 // garbage after decryption or a bad payload
		r.b.HandleMessage(bad, from, to, false)
		wrong := append([]byte(nil), m...)
		wrong[8] ^= 0xff // unknown responder cookie
		r.b.HandleMessage(wrong, from, to, false)
	}
	r.b.HandleMessage(bytes.Repeat([]byte{0xff}, 200), from, to, false)
	time.Sleep(100 * time.Millisecond)
	st := r.b.Stats.Snapshot()
	if st["malformed"] == 0 || st["unknown-sa"] == 0 {
		t.Fatalf("counters: %v", st)
	}
	// Still serving: a second Quick Mode under the same ISAKMP SA.
	r.ia.mu.Lock()
	r.ia.inbound, r.ia.outbound = map[uint32]*ChildSA{}, map[uint32]*ChildSA{}
	r.ia.mu.Unlock()
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatalf("after the garbage: %v", err)
	}
}

// TestRekey: the initiator negotiates a successor before the lifetime
// ends, both sides install it and the old pair is deleted on both.
func TestRekey(t *testing.T) {
	ca, cb := pairConns("c", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
	for _, c := range []*Conn{ca, cb} {
		c.Lifetime, c.Rekey, c.RekeyMargin = 100*time.Second, true, 10*time.Second
	}
	fc := clock.NewFake(time.Unix(1e9, 0))
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) { c.Clock = fc })
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	first := r.ia.children()[0].InSPI
	fc.Advance(91 * time.Second) // past lifetime - margin
	waitFor(t, func() bool { return len(r.ia.children()) == 2 && len(r.ib.children()) == 2 })
	checkPairSubset(t, r.ia, r.ib)
	fc.Advance(6 * time.Second) // the grace period
	waitFor(t, func() bool { return len(r.ia.children()) == 1 && len(r.ib.children()) == 1 })
	if r.ia.children()[0].InSPI == first {
		t.Fatal("the old SA survived and the new one went")
	}
	checkPair(t, r.ia, r.ib, 1)
}

// checkPairSubset checks that every child of A has its mirror on B.
func checkPairSubset(t *testing.T, ia, ib *fakeInstaller) {
	t.Helper()
	for _, x := range ia.children() {
		found := false
		for _, y := range ib.children() {
			if y.InSPI == x.OutSPI && y.OutSPI == x.InSPI {
				found = true
			}
		}
		if !found {
			t.Fatalf("A's child %08x/%08x has no mirror on B", x.InSPI, x.OutSPI)
		}
	}
}

// TestExpiry: without rekey a child is deleted when its lifetime ends.
func TestExpiry(t *testing.T) {
	ca, cb := pairConns("c", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
	ca.Lifetime, cb.Lifetime = 100*time.Second, 200*time.Second
	fc := clock.NewFake(time.Unix(1e9, 0))
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) { c.Clock = fc })
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	fc.Advance(101 * time.Second)
	waitFor(t, func() bool { return len(r.ia.children()) == 0 && len(r.ib.children()) == 0 })
}

// TestInitialContact: a peer that lost its state (no Delete sent) comes
// back; its INITIAL-CONTACT makes us drop the stale SAs.
func TestInitialContact(t *testing.T) {
	ca, cb := pairConns("c", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	old := r.ib.children()[0].InSPI
	r.a.call(context.Background(), func() { r.a.terminate("c", false) }) // a crash: nothing sent
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 && r.ib.children()[0].InSPI != old })
	p1s, _, _ := r.b.Status(context.Background())
	if len(p1s) != 1 {
		t.Fatalf("B keeps %d ISAKMP SAs after INITIAL-CONTACT", len(p1s))
	}
}

// TestDPD: R_U_THERE is answered while the peer lives; when it goes
// silent, dpdaction=clear removes the SAs.
func TestDPD(t *testing.T) {
	ca, cb := pairConns("c", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
	ca.DPDDelay, ca.DPDTimeout, ca.DPDAction = 10*time.Second, 30*time.Second, "clear"
	fc := clock.NewFake(time.Unix(1e9, 0))
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) { c.Clock = fc })
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	for i := 0; i < 6; i++ { // a minute of answered probes
		fc.Advance(10 * time.Second)
		time.Sleep(20 * time.Millisecond)
	}
	if len(r.ia.children()) != 1 {
		t.Fatal("SAs removed although the peer answers")
	}
	r.net.mu.Lock()
	r.net.drop = func(_, to netip.AddrPort, _ []byte) bool { return to.Addr() == addrA } // B goes silent
	r.net.mu.Unlock()
	for i := 0; i < 5 && len(r.ia.children()) > 0; i++ {
		fc.Advance(10 * time.Second)
		time.Sleep(20 * time.Millisecond)
	}
	waitFor(t, func() bool { return len(r.ia.children()) == 0 })
	if !strings.Contains(r.logText(), "dead peer detected") {
		t.Fatal("no dead-peer log line")
	}
}

// TestLifetimeKilobytes: a peer's SA-Life-Type kilobytes (RFC 2407 4.5)
// is parsed, adopted by the responder's choice and handed to the data
// plane as a byte limit.
func TestLifetimeKilobytes(t *testing.T) {
	ours := []p2Suite{{Proto: ProtoESP, Encr: EncrAESCBC, KeyBits: 128, Integ: IntegSHA1, Life: time.Hour}}
	tr := ours[0].transform(1, encapTunnel)
	tr.Attrs = append(tr.Attrs, isakmp.Basic(p2LifeType, lifeKilobytes), isakmp.Uint(p2LifeDuration, 4608000))
	sa := &isakmp.SA{DOI: 1, Situation: 1, Proposals: []isakmp.Proposal{{Num: 1, Protocol: isakmp.ProtoESP, SPI: be32(0x1234), Transforms: []isakmp.Transform{tr}}}}
	_, got, _, _, err := selectP2(ours, ModeTunnel, sa)
	if err != nil {
		t.Fatal(err)
	}
	if got.LifeKB != 4608000 || got.Life != time.Hour {
		t.Fatalf("chosen suite lifetimes %v / %d KB, want 1h / 4608000 KB", got.Life, got.LifeKB)
	}
	back, _, _, err := acceptP2Reply(ours, ModeTunnel, sa)
	if err != nil || back.LifeKB != 4608000 {
		t.Fatalf("initiator side: %+v %v", back, err)
	}
	p := &p1{suite: p1Suite{Hash: 2}, km: keymat{d: make([]byte, 20)}, local: netip.AddrPortFrom(addrA, 500), peer: netip.AddrPortFrom(addrB, 500)}
	q := &qm{p: p, conn: &Conn{Name: "c", Mode: ModeTunnel}, suite: got, inSPI: 1, outSPI: 2, ni: make([]byte, 16), nr: make([]byte, 16)}
	ch, err := (&Engine{cfg: Config{NATTPort: 4500}}).childSA(q)
	if err != nil || ch.LifeBytes != 4608000*1024 {
		t.Fatalf("child byte lifetime %d (%v)", ch.LifeBytes, err)
	}
}
