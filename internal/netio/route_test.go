package netio

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// routeDev returns the device `ip route get` picks in ns.
func routeDev(t *testing.T, ns string, args ...string) string {
	t.Helper()
	out := nettest.MustExec(t, ns, append([]string{"ip", "-o", "route", "get"}, args...)...)
	f := strings.Fields(out)
	for i := range f {
		if f[i] == "dev" && i+1 < len(f) {
			return f[i+1]
		}
	}
	t.Fatalf("no dev in %q", out)
	return ""
}

func TestRouterTransportAndTunnel(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gnio-ro", netip.MustParsePrefix("10.231.12.0/24"))
	var tn *TUN
	nettest.MustDo(t, p.A.NS, func() (err error) {
		tn, err = OpenTUN(TUNConfig{Name: "gnio-rotun", MTU: 1400})
		return err
	})
	defer tn.Close()
	cfg := RouteConfig{Table: 7400, Priority: 7400, Mark: testMark, TUNIndex: tn.Index()}
	// A foreign rule and route that Cleanup must leave alone.
	nettest.MustExec(t, p.A.NS, "ip", "rule", "add", "priority", "7400", "table", "7401")
	nettest.MustExec(t, p.A.NS, "ip", "route", "add", "10.231.98.0/24", "dev", "gnio-rotun", "table", "7400")

	var r *Router
	nettest.MustDo(t, p.A.NS, func() (err error) {
		r, err = NewRouter(cfg)
		return err
	})
	peer := p.BAddr.String()
	for _, rt := range []Route{
		{Dst: netip.PrefixFrom(p.BAddr, 32), Src: p.AAddr}, // transport mode to the veth peer
		{Dst: netip.MustParsePrefix("10.231.99.7/24")},     // tunnel mode subnet (host bits ignored)
	} {
		if err := r.AddRoute(rt); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{peer}, "gnio-rotun"},
		{[]string{peer, "mark", "0x5ec0"}, p.A.Name},
		{[]string{"10.231.99.1"}, "gnio-rotun"},
		{[]string{"10.231.12.3"}, p.A.Name}, // rest of the veth subnet: main
	} {
		if got := routeDev(t, p.A.NS, tc.args...); got != tc.want {
			t.Errorf("ip route get %v: dev %s, want %s", tc.args, got, tc.want)
		}
	}
	// Real packets: the marked raw socket reaches B over the veth, while an
	// unmarked ping to the same address comes out of the TUN.
	var rx, tx *RawConn
	nettest.MustDo(t, p.B.NS, func() (err error) { rx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP}); return err })
	defer rx.Close()
	nettest.MustDo(t, p.A.NS, func() (err error) {
		tx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP, Mark: testMark})
		return err
	})
	defer tx.Close()
	pkt := make([]byte, 40)
	iphdr.PutIPv4(pkt, &iphdr.Outer{Src: p.AAddr.As4(), Dst: p.BAddr.As4(), ID: 9}, iphdr.ProtoESP, 40)
	pkt[23] = 1
	if _, err := tx.Send([]Msg{{Buf: pkt}}); err != nil {
		t.Fatal(err)
	}
	if got := recvN(t, rx, 1, 3*time.Second); len(got[0]) != 40 {
		t.Fatalf("marked ESP: got %d bytes", len(got[0]))
	}
	go nettest.Exec(p.A.NS, "ping", "-c", "1", "-W", "1", peer)
	bufs, sizes := [][]byte{make([]byte, Headroom+65536)}, []int{0}
	if tn.BatchSize() > 1 {
		for len(bufs) < tn.BatchSize() {
			bufs = append(bufs, make([]byte, Headroom+65536))
			sizes = append(sizes, 0)
		}
	}
	timer := time.AfterFunc(3*time.Second, func() { tn.Close() })
	for found := false; !found; {
		n, err := tn.Read(bufs, sizes, Headroom)
		if err != nil {
			t.Fatalf("unmarked ping did not come out of the TUN: %v", err)
		}
		for i := 0; i < n; i++ {
			b := bufs[i][Headroom : Headroom+sizes[i]]
			if len(b) >= 20 && b[0]>>4 == 4 && netip.AddrFrom4([4]byte(b[16:20])) == p.BAddr {
				if src := netip.AddrFrom4([4]byte(b[12:16])); src != p.AAddr {
					t.Errorf("TUN packet source %v, want route's Src %v", src, p.AAddr)
				}
				found = true
			}
		}
	}
	timer.Stop()

	if err := r.DelRoute(netip.MustParsePrefix("10.231.99.0/24")); err != nil {
		t.Fatal(err)
	}
	if out, _ := nettest.Exec(p.A.NS, "ip", "-o", "route", "get", "10.231.99.1"); strings.Contains(out, "gnio-rotun") {
		t.Errorf("10.231.99.0/24 still routed into the TUN after DelRoute: %s", out)
	}
	// Simulate a crash: forget r, then clean up as a restarted daemon would.
	nettest.MustDo(t, p.A.NS, func() error { return CleanupRoutes(cfg) })
	rules := nettest.MustExec(t, p.A.NS, "ip", "rule", "show")
	if strings.Contains(rules, "not from all fwmark") || strings.Contains(rules, "lookup 7400") {
		t.Errorf("our rule survived cleanup:\n%s", rules)
	}
	if !strings.Contains(rules, "lookup 7401") {
		t.Errorf("cleanup removed a foreign rule:\n%s", rules)
	}
	table := nettest.MustExec(t, p.A.NS, "ip", "route", "show", "table", "7400")
	if strings.Contains(table, peer) || !strings.Contains(table, "10.231.98.0/24") {
		t.Errorf("table 7400 after cleanup (want only the foreign route):\n%s", table)
	}
	if got := routeDev(t, p.A.NS, peer); got != p.A.Name {
		t.Errorf("after cleanup the peer goes via %s", got)
	}
	// Close on a router whose state is gone reports no error.
	if err := r.Close(); err != nil {
		t.Errorf("Close after cleanup: %v", err)
	}
}

func TestRouterCloseAndSuppressMain(t *testing.T) {
	testutil.NeedRoot(t)
	ns := "gnio-rc"
	nettest.NewNS(t, ns)
	var tn *TUN
	var r *Router
	cfg := RouteConfig{Table: 7500, Priority: 7500, TUNIndex: 0, SuppressMain: true}
	nettest.MustDo(t, ns, func() (err error) {
		if tn, err = OpenTUN(TUNConfig{Name: "gnio-rctun", MTU: 1400, Addrs: []netip.Prefix{netip.MustParsePrefix("10.231.13.1/24")}}); err != nil {
			return err
		}
		cfg.TUNIndex = tn.Index()
		r, err = NewRouter(cfg)
		return err
	})
	defer tn.Close()
	if err := r.AddRoute(Route{Dst: netip.MustParsePrefix("0.0.0.0/0")}); err != nil {
		t.Fatal(err)
	}
	rules := nettest.MustExec(t, ns, "ip", "rule", "show")
	for _, want := range []string{"7499:\tfrom all lookup main suppress_prefixlength 0", "7500:\tnot from all fwmark 0x5ec0 lookup 7500"} {
		if !strings.Contains(rules, want) {
			t.Errorf("rules lack %q:\n%s", want, rules)
		}
	}
	if got := routeDev(t, ns, "192.0.2.1"); got != "gnio-rctun" {
		t.Errorf("default goes via %s, want the TUN", got)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if rules := nettest.MustExec(t, ns, "ip", "rule", "show"); strings.Contains(rules, "7500") || strings.Contains(rules, "7499") {
		t.Errorf("rules left after Close:\n%s", rules)
	}
	if table := nettest.MustExec(t, ns, "ip", "route", "show", "table", "7500"); strings.TrimSpace(table) != "" {
		t.Errorf("routes left after Close:\n%s", table)
	}
}

// TestStrictRPFilter: with rp_filter=1 the reverse path of a transport-mode
// peer points into the TUN, so the kernel drops the peer's ESP; marking
// inbound ESP (Filter InboundMark) plus src_valid_mark (Router) fixes it.
func TestStrictRPFilter(t *testing.T) {
	testutil.NeedRoot(t)
	for _, tc := range []struct {
		name string
		fix  bool
	}{{"unmarked", false}, {"marked", true}} {
		t.Run(tc.name, func(t *testing.T) {
			p := nettest.NewPair(t, "gnio-rp", netip.MustParsePrefix("10.231.26.0/24"))
			var tn *TUN
			var r *Router
			var f *Filter
			var rx, tx *RawConn
			nettest.MustExec(t, p.A.NS, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/conf/all/rp_filter; echo 1 > /proc/sys/net/ipv4/conf/"+p.A.Name+"/rp_filter")
			nettest.MustDo(t, p.A.NS, func() (err error) {
				if tn, err = OpenTUN(TUNConfig{Name: "gnio-rptun", MTU: 1400}); err != nil {
					return err
				}
				if r, err = NewRouter(RouteConfig{Table: 7700, Priority: 7700, Mark: testMark, TUNIndex: tn.Index(), SrcValidMark: tc.fix}); err != nil {
					return err
				}
				fc := FilterConfig{Table: "gnio-rp", TUN: "gnio-rptun"}
				if tc.fix {
					fc.InboundMark = testMark
				}
				if f, err = NewFilter(fc); err != nil {
					return err
				}
				rx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP})
				return err
			})
			defer tn.Close()
			defer f.Close()
			defer rx.Close()
			if err := r.AddRoute(Route{Dst: netip.PrefixFrom(p.BAddr, 32)}); err != nil {
				t.Fatal(err)
			}
			nettest.MustDo(t, p.B.NS, func() (err error) { tx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP}); return err })
			defer tx.Close()
			// Strict rp_filter also drops B's ARP requests for A (their
			// reverse path points into the TUN too), so A speaks first:
			// its marked ESP and ARP request teach both sides the MACs.
			var atx *RawConn
			nettest.MustDo(t, p.A.NS, func() (err error) {
				atx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP, Mark: testMark})
				return err
			})
			defer atx.Close()
			first := make([]byte, 40)
			iphdr.PutIPv4(first, &iphdr.Outer{Src: p.AAddr.As4(), Dst: p.BAddr.As4(), ID: 4}, iphdr.ProtoESP, 40)
			first[23] = 1
			if _, err := atx.Send([]Msg{{Buf: first}}); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			b := make([]byte, 40)
			iphdr.PutIPv4(b, &iphdr.Outer{Src: p.BAddr.As4(), Dst: p.AAddr.As4(), ID: 3}, iphdr.ProtoESP, 40)
			b[23] = 1
			if _, err := tx.Send([]Msg{{Buf: b}}); err != nil {
				t.Fatal(err)
			}
			timer := time.AfterFunc(time.Second, func() { rx.Close() })
			defer timer.Stop()
			n, _ := rx.Recv(recvMsgs(1, 100))
			if tc.fix != (n == 1) {
				t.Log(nettest.MustExec(t, p.A.NS, "nft", "list", "table", "inet", "gnio-rp"))
				t.Log(nettest.MustExec(t, p.A.NS, "ip", "route", "get", p.BAddr.String(), "mark", "0x5ec0"))
				t.Log(nettest.MustExec(t, p.A.NS, "ip", "rule"))
				t.Errorf("strict rp_filter, fix %v: received %d ESP packets", tc.fix, n)
			}
			svm := strings.TrimSpace(nettest.MustExec(t, p.A.NS, "cat", "/proc/sys/net/ipv4/conf/all/src_valid_mark"))
			if want := map[bool]string{false: "0", true: "1"}[tc.fix]; svm != want {
				t.Errorf("src_valid_mark = %s, want %s", svm, want)
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			if svm := strings.TrimSpace(nettest.MustExec(t, p.A.NS, "cat", "/proc/sys/net/ipv4/conf/all/src_valid_mark")); svm != "0" {
				t.Errorf("src_valid_mark = %s after Close, want 0 restored", svm)
			}
		})
	}
}
