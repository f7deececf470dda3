package e2e

// SA lifecycle end to end (issue 10): two real gosec daemons, traffic
// flowing through every lifecycle event, and a capture on the wire that
// fails the test on a single cleartext packet of a protected subnet. Each
// gateway has a default route out of its WAN link (topo.sh wan-default), as
// a real gateway has, so a packet gosec fails to protect leaves on the wire
// and is forwarded, instead of dying for lack of a route.

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil/wire"
)

const (
	lcConn    = "lc"
	lcSecrets = "192.0.2.1 192.0.2.2 : PSK \"gosec-lifecycle-psk\"\n"
	// tcpRate is the TCP stream's rate: enough to keep every SA busy in
	// both directions (data one way, ACKs the other) without loading the
	// shared machine.
	tcpRate = 1 << 20
)

// lcConf renders the tunnel between the two sites with auto and extra
// keywords (lifetimes, DPD...).
func lcConf(auto string, extra ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "conn %s\n", lcConn)
	for _, l := range []string{"left=192.0.2.1", "right=192.0.2.2", "authby=secret", "keyexchange=ikev1",
		"ike=aes128-sha256-modp2048!", "esp=aes128-sha256!", "type=tunnel",
		"leftsubnet=10.1.0.0/24", "rightsubnet=10.2.0.0/24", "keyingtries=3", "auto=" + auto} {
		fmt.Fprintf(&b, "\t%s\n", l)
	}
	for _, l := range extra {
		fmt.Fprintf(&b, "\t%s\n", l)
	}
	return b.String()
}

// lcEnv is one lifecycle case: its own topology, leak watcher, timeline
// and SA monitor.
type lcEnv struct {
	t        *testing.T
	tp       *topo
	tl       *wire.Timeline
	leaks    *wire.LeakWatcher
	gw1, gw2 *daemon
	mon      *wire.Monitor
}

// newLC builds the topology and starts the leak watcher before any daemon
// runs.
func newLC(t *testing.T, prefix string) *lcEnv {
	e := &lcEnv{t: t, tp: newTopo(t, prefix, "wan-default"), tl: &wire.Timeline{}}
	e.leaks = e.tp.watchLeaks()
	e.tl.Add("leak watcher started")
	return e
}

// start launches both daemons (at the same moment when together is set,
// as two gateways booting with auto=start) and the SA monitor.
func (e *lcEnv) start(conf1, conf2 string, together bool) {
	e.t.Helper()
	e.gw1 = e.tp.newDaemon(e.tp.ns("gw1"), conf1, lcSecrets)
	e.gw2 = e.tp.newDaemon(e.tp.ns("gw2"), conf2, lcSecrets)
	if together {
		var wg sync.WaitGroup
		errs := make([]error, 2)
		for i, d := range []*daemon{e.gw1, e.gw2} {
			wg.Add(1)
			go func() { defer wg.Done(); errs[i] = d.launch() }()
		}
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				e.t.Fatal(err)
			}
		}
		e.tl.Add("gw1 and gw2: gosec start (together)")
	} else {
		for _, d := range []*daemon{e.gw1, e.gw2} {
			if err := d.launch(); err != nil {
				e.t.Fatal(err)
			}
			e.tl.Add("%s: gosec start", gwName(d))
		}
	}
	e.mon = wire.NewMonitor(e.tl, 300*time.Millisecond, map[string]func() (map[string]bool, error){
		"gw1": gosecSAs(e.gw1, lcConn), "gw2": gosecSAs(e.gw2, lcConn)})
	e.t.Cleanup(e.mon.Stop)
}

// startUp starts gw1 with auto=start and gw2 with auto=add and waits until
// gw1 has its outbound SA.
func (e *lcEnv) startUp() {
	e.t.Helper()
	e.start(lcConf("start"), lcConf("add"), false)
	if !wire.WaitFor(20*time.Second, func() bool { return len(e.mon.Current("gw1", "out SA ")) > 0 }) {
		e.t.Fatalf("auto=start did not bring the tunnel up in 20 s\ntimeline:\n%s", e.tl.String())
	}
}

func gwName(d *daemon) string { return d.ns[strings.LastIndex(d.ns, "-")+1:] }

func (e *lcEnv) daemons() map[string]*daemon { return map[string]*daemon{"gw1": e.gw1, "gw2": e.gw2} }

// ctl runs a gosec command on d and puts it on the timeline.
func (e *lcEnv) ctl(d *daemon, args ...string) string {
	e.t.Helper()
	e.tl.Add("%s: gosec %s", gwName(d), strings.Join(args, " "))
	out := d.mustCtl(args...)
	e.tl.Add("%s: gosec %s returned", gwName(d), strings.Join(args, " "))
	return out
}

// traffic starts the ping stream lan1 -> lan2 and, with withTCP, the TCP
// stream.
func (e *lcEnv) traffic(withTCP bool) (*wire.Ping, *wire.TCPStream) {
	p := wire.StartPing(e.t, e.tp.ns("lan1"), "10.2.0.2")
	e.tl.Add("ping lan1 -> 10.2.0.2 started (every 0.2 s)")
	var s *wire.TCPStream
	if withTCP {
		s = wire.StartTCP(e.t, e.tp.ns("lan1"), e.tp.ns("lan2"), "10.2.0.2", tcpRate)
		e.tl.Add("TCP stream lan1 -> lan2 started")
	}
	return p, s
}

// stopTCP ends the TCP stream and logs how much arrived intact.
func (e *lcEnv) stopTCP(s *wire.TCPStream) error {
	n, err := s.Stop()
	if err == nil {
		e.t.Logf("TCP stream: %d bytes arrived intact (SHA-256 of sent and received equal)", n)
	}
	return err
}

// finish stops the SA monitor and judges the capture.
func (e *lcEnv) finish() {
	e.t.Helper()
	e.mon.Stop()
	// Every packet is judged, also after gosec down: a conn taken down
	// keeps its guard (README, "SA lifecycle"); only gosec unroute lifts it.
	checkLeaks(e.t, e.leaks, e.tl, e.daemons(), func(wire.Leak) string { return "" })
}

// noLoss fails if any request of pr sent in [from, to) went unanswered.
func (e *lcEnv) noLoss(pr wire.PingResult, from, to time.Time, what string) {
	e.t.Helper()
	lost := pr.LostBetween(from, to)
	e.t.Logf("ping: %d sent, %d answered, %d lost in total; %s: %d lost", pr.Sent, len(pr.Replied), len(pr.Lost), what, len(lost))
	if len(lost) > 0 {
		tl := withLogs(e.tl, e.daemons())
		e.t.Errorf("%s: %d pings lost (a lifecycle event here must lose nothing):%s\ntimeline:\n%s",
			what, len(lost), pr.DescribeLoss(lost, tl), tl.String())
	}
}

// noSAs waits until d has no SA of the conn left.
func (e *lcEnv) noSAs(gw string, timeout time.Duration) bool {
	return wire.WaitFor(timeout, func() bool {
		return len(e.mon.Current(gw, "in SA ")) == 0 && len(e.mon.Current(gw, "out SA ")) == 0
	})
}

// spisConsistent checks that every outbound SA of each gateway is an
// inbound SA of the other (no orphan pair after a collision), retrying a
// few times since a rekey may run between the two status calls.
func (e *lcEnv) spisConsistent() {
	e.t.Helper()
	var last string
	for try := 0; try < 5; try++ {
		view := func(d *daemon) (in, out map[string]bool) {
			in, out = map[string]bool{}, map[string]bool{}
			st := statusOf(e.t, d, lcConn)
			for _, sa := range st.SAs {
				if sa.Dir == "in" {
					in[sa.SPI] = true
				} else {
					out[sa.SPI] = true
				}
			}
			return
		}
		in1, out1 := view(e.gw1)
		in2, out2 := view(e.gw2)
		var bad []string
		for spi := range out1 {
			if !in2[spi] {
				bad = append(bad, "gw1 sends on "+spi+", which gw2 does not have")
			}
		}
		for spi := range out2 {
			if !in1[spi] {
				bad = append(bad, "gw2 sends on "+spi+", which gw1 does not have")
			}
		}
		if len(out1) == 0 || len(out2) == 0 {
			bad = append(bad, fmt.Sprintf("outbound SAs: gw1 %d, gw2 %d", len(out1), len(out2)))
		}
		if len(bad) == 0 {
			e.t.Logf("SAs consistent: gw1 in %d out %d, gw2 in %d out %d", len(in1), len(out1), len(in2), len(out2))
			return
		}
		last = strings.Join(bad, "; ")
		time.Sleep(700 * time.Millisecond)
	}
	e.t.Errorf("SA pairs inconsistent after the collisions: %s", last)
}

// TestSALifecycle runs every lifecycle event with traffic flowing between
// two gosec gateways. Each case has its own topology (gslNN-) and fails on
// any cleartext packet of 10.1.0.0/24 or 10.2.0.0/24 on the wire, listing
// the packets and the event each followed.
func TestSALifecycle(t *testing.T) {
	// (1) >= 10 rekeys of the IPsec SA by time during one TCP transfer and
	// a ping stream: nothing leaks, nothing is lost. The allowance for
	// lost pings is 0: a rekey is make-before-break (the new SA pair is
	// installed before traffic moves to it, the old inbound SA stays for
	// in-flight packets), the links are veth pairs that do not drop, and
	// late answers still count as answered.
	t.Run("rekey-time", func(t *testing.T) {
		e := newLC(t, "gsl01-")
		conf := lcConf("add", "lifetime=8s", "rekeymargin=4s", "rekeyfuzz=0%")
		e.start(conf, conf, false)
		e.ctl(e.gw1, "up", lcConn)
		ping, tcp := e.traffic(true)
		const want = 11 // the first inbound SA and 10 successors
		ok := wire.WaitFor(80*time.Second, func() bool { return e.mon.Count("gw1", "in SA ") >= want })
		pr := ping.Stop()
		terr := e.stopTCP(tcp)
		e.finish()
		if n := e.mon.Count("gw1", "in SA "); !ok {
			t.Errorf("gw1 saw %d inbound SAs in 80 s, want %d (10 rekeys)\ntimeline:\n%s", n, want, e.tl.String())
		} else {
			t.Logf("gw1 saw %d inbound SAs (%d rekeys)", n, n-1)
		}
		e.noLoss(pr, time.Time{}, time.Time{}, "during the rekeys")
		if terr != nil {
			t.Error(terr)
		}
	})

	// (2) auto=start on both gateways, started together: both initiate,
	// one SA pair replaces the other; nothing leaks before, during or
	// after, and nothing is lost once the tunnel carries traffic.
	t.Run("auto-start-both", func(t *testing.T) {
		e := newLC(t, "gsl02-")
		conf := lcConf("start")
		e.start(conf, conf, true)
		ping, _ := e.traffic(false)
		time.Sleep(12 * time.Second) // beyond the 5 s grace of a replaced pair
		pr := ping.Stop()
		e.finish()
		if pr.FirstRep == 0 {
			t.Fatalf("no ping answered in 12 s after both gateways started with auto=start\n%s", tail(pr.Output, 10))
		}
		t.Logf("first answer to icmp_seq %d (%.1f s after start)", pr.FirstRep, pr.SentAt(pr.FirstRep).Sub(pr.Start).Seconds())
		e.noLoss(pr, pr.SentAt(pr.FirstRep), time.Time{}, "after the tunnel came up")
		e.spisConsistent()
	})

	// (3) hard expiry without rekey (rekey=no): the SAs go at lifetime,
	// and the traffic after it is dropped, never sent in the clear.
	t.Run("hard-expiry", func(t *testing.T) {
		e := newLC(t, "gsl03-")
		conf := lcConf("add", "lifetime=6s", "rekey=no")
		e.start(conf, conf, false)
		e.ctl(e.gw1, "up", lcConn)
		ping, _ := e.traffic(false)
		wire.WaitFor(5*time.Second, func() bool { return len(e.mon.Current("gw1", "out SA ")) > 0 })
		gone := e.noSAs("gw1", 20*time.Second) && e.noSAs("gw2", 5*time.Second)
		expired := time.Now()
		e.tl.Add("test: no SA left on either gateway")
		time.Sleep(4 * time.Second)
		pr := ping.Stop()
		e.finish()
		if !gone {
			t.Fatalf("the SAs did not expire within 20 s of lifetime=6s\ntimeline:\n%s", e.tl.String())
		}
		e.noLoss(pr, time.Time{}, expired.Add(-2*time.Second), "before the hard expiry")
		if n := pr.RepliedBetween(expired.Add(time.Second), time.Time{}); n > 0 {
			t.Errorf("%d pings answered after the SAs expired without rekey: the traffic must be dropped", n)
		}
	})

	// (4) Delete from the peer: gw2 runs gosec down; gw1 removes the pair
	// and its traffic stays off the wire (dropped, not cleartext: the
	// conn keeps its filter guard). gw2's own cleartext after its
	// administrator's gosec down is documented ("routed normally again")
	// and only logged.
	t.Run("delete-from-peer", func(t *testing.T) {
		e := newLC(t, "gsl04-")
		conf := lcConf("add")
		e.start(conf, conf, false)
		e.ctl(e.gw1, "up", lcConn)
		ping, _ := e.traffic(false)
		time.Sleep(3 * time.Second)
		down := time.Now()
		e.ctl(e.gw2, "down", lcConn)
		if !e.noSAs("gw1", 5*time.Second) {
			t.Errorf("gw1 still has SAs 5 s after gw2's Delete")
		}
		time.Sleep(4 * time.Second)
		pr := ping.Stop()
		e.finish()
		e.noLoss(pr, time.Time{}, down.Add(-time.Second), "before the Delete")
	})

	// (5) gosec down on the gateway the traffic enters first (gw1): the
	// README makes its cleartext afterwards the administrator's decision
	// (logged, not judged); the peer, told by a Delete, must not send any,
	// and nothing may leak before the down.
	t.Run("down-local", func(t *testing.T) {
		e := newLC(t, "gsl05-")
		conf := lcConf("add")
		e.start(conf, conf, false)
		e.ctl(e.gw1, "up", lcConn)
		ping, _ := e.traffic(false)
		time.Sleep(3 * time.Second)
		down := time.Now()
		e.ctl(e.gw1, "down", lcConn)
		if !e.noSAs("gw2", 5*time.Second) {
			t.Errorf("gw2 still has SAs 5 s after gw1's gosec down")
		}
		time.Sleep(4 * time.Second)
		pr := ping.Stop()
		e.finish()
		e.noLoss(pr, time.Time{}, down.Add(-time.Second), "before gosec down")
	})

	// (6) kill -9 of gw1's daemon: nothing leaves in the clear while it is
	// dead (fail closed across a crash); gosec start brings the tunnel
	// back (auto=start; INITIAL-CONTACT clears gw2's stale pair).
	t.Run("kill9-restart", func(t *testing.T) {
		e := newLC(t, "gsl06-")
		e.startUp()
		ping, _ := e.traffic(false)
		time.Sleep(3 * time.Second)
		killed := time.Now()
		e.tl.Add("gw1: kill -9 %d", e.gw1.pid)
		if err := e.gw1.kill9(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Second)
		// A fast probe (100 packets/s) across the restart: a window of a
		// few milliseconds without guard while the new daemon sets up
		// would slip between the 0.2 s pings.
		probe := exec.Command("ip", "netns", "exec", e.tp.ns("lan1"), "ping", "-q", "-n", "-i", "0.01", "-w", "4", "10.2.0.2")
		if err := probe.Start(); err != nil {
			t.Fatal(err)
		}
		defer probe.Wait()
		e.tl.Add("probe: ping every 10 ms from lan1 for 4 s")
		time.Sleep(time.Second)
		e.tl.Add("gw1: gosec start again")
		if err := e.gw1.launch(); err != nil {
			t.Errorf("gosec start after kill -9: %v", err)
		}
		restarted := time.Now()
		back := wire.WaitFor(30*time.Second, func() bool {
			out, err := e.tp.run(e.tp.ns("lan1"), 3*time.Second, "ping", "-c", "1", "-W", "1", "10.2.0.2")
			return err == nil && strings.Contains(out, "1 received")
		})
		e.tl.Add("test: tunnel back: %v", back)
		backAt := time.Now()
		time.Sleep(3 * time.Second)
		pr := ping.Stop()
		e.finish()
		e.noLoss(pr, time.Time{}, killed.Add(-time.Second), "before the kill")
		if !back {
			t.Errorf("no ping answered within 30 s of gosec start after kill -9")
		} else {
			t.Logf("tunnel back %.1f s after gosec start", backAt.Sub(restarted).Seconds())
			e.noLoss(pr, backAt, time.Time{}, "after the tunnel came back")
		}
	})

	// (7) DPD restart: gw2's daemon is killed and restarted; gw1
	// (dpdaction=restart) declares it dead and negotiates again. The loss
	// is bounded by what DPD allows: dpddelay (idle time before the first
	// R_U_THERE) + dpdtimeout, the 1 s gw2 stays down, and 3 s for Main
	// Mode + Quick Mode on a loaded machine.
	t.Run("dpd-restart", func(t *testing.T) {
		e := newLC(t, "gsl07-")
		const delay, timeout = 2 * time.Second, 6 * time.Second
		conf := lcConf("add", "dpddelay=2s", "dpdtimeout=6s", "dpdaction=restart")
		e.start(conf, conf, false)
		e.ctl(e.gw1, "up", lcConn)
		ping, _ := e.traffic(false)
		time.Sleep(3 * time.Second)
		killed := time.Now()
		e.tl.Add("gw2: kill -9 %d", e.gw2.pid)
		if err := e.gw2.kill9(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		e.tl.Add("gw2: gosec start again")
		if err := e.gw2.launch(); err != nil {
			t.Fatalf("gosec start after kill -9: %v", err)
		}
		before := e.mon.Count("gw1", "in SA ")
		renewed := wire.WaitFor(30*time.Second, func() bool { return e.mon.Count("gw1", "in SA ") > before })
		e.tl.Add("test: gw1 has a new inbound SA: %v", renewed)
		time.Sleep(4 * time.Second)
		pr := ping.Stop()
		e.finish()
		e.noLoss(pr, time.Time{}, killed.Add(-time.Second), "before the kill")
		if !renewed {
			t.Fatalf("gw1 did not negotiate a new SA pair within 30 s of gw2's restart (dpdaction=restart)\ntimeline:\n%s", e.tl.String())
		}
		lost := pr.LostBetween(killed.Add(-time.Second), time.Time{})
		allowed := int((delay + timeout + time.Second + 3*time.Second) / wire.PingInterval)
		t.Logf("lost across the peer restart: %d pings (%.1f s), allowed %d", len(lost), float64(len(lost))*wire.PingInterval.Seconds(), allowed)
		if len(lost) > allowed {
			t.Errorf("%d pings lost across the peer restart, more than dpddelay+dpdtimeout+4 s allow (%d):%s",
				len(lost), allowed, pr.DescribeLoss(lost, withLogs(e.tl, e.daemons())))
		}
	})

	// (8) auto=route: nothing is negotiated until the first packet; that
	// packet brings the tunnel up (it may be delayed, held or dropped, but
	// never leaked) and the stream is answered from then on.
	t.Run("auto-route", func(t *testing.T) {
		e := newLC(t, "gsl08-")
		e.start(lcConf("route"), lcConf("add"), false)
		time.Sleep(2 * time.Second)
		if out := e.mon.Current("gw1", "out SA "); len(out) > 0 {
			t.Errorf("auto=route negotiated before any packet (gw1 has outbound SAs %v): on-demand negotiation is not implemented", out)
		}
		ping, _ := e.traffic(false)
		time.Sleep(7 * time.Second)
		pr := ping.Stop()
		e.finish()
		if pr.FirstRep == 0 {
			t.Fatalf("no ping answered within 7 s of the first packet (auto=route)\n%s", tail(pr.Output, 10))
		}
		delay := pr.Replied[pr.FirstRep].Sub(pr.Start)
		t.Logf("first answered icmp_seq %d, %.2f s after the first packet (the first request was %s)",
			pr.FirstRep, delay.Seconds(), map[bool]string{true: "answered", false: "not answered (dropped while negotiating)"}[pr.FirstRep == 1])
		if delay > 5*time.Second {
			t.Errorf("the first answer came %.1f s after the first packet: on-demand negotiation should take a Main Mode and a Quick Mode (< 5 s)", delay.Seconds())
		}
		e.noLoss(pr, pr.SentAt(pr.FirstRep), time.Time{}, "after the first answer")
	})

	// (8b) the trap comes back: after the peer deletes the on-demand SA
	// pair, the next packets negotiate a new one (never leaked).
	t.Run("auto-route-retrap", func(t *testing.T) {
		e := newLC(t, "gsl12-")
		e.start(lcConf("route"), lcConf("add"), false)
		ping, _ := e.traffic(false)
		if !wire.WaitFor(7*time.Second, func() bool { return len(e.mon.Current("gw1", "out SA ")) > 0 }) {
			t.Fatalf("the first packet did not bring the tunnel up")
		}
		first := e.mon.Current("gw1", "out SA ")
		deleted := time.Now()
		e.ctl(e.gw2, "down", lcConn)
		back := wire.WaitFor(10*time.Second, func() bool {
			for _, sa := range e.mon.Current("gw1", "out SA ") {
				if !slices.Contains(first, sa) {
					return true
				}
			}
			return false
		})
		time.Sleep(2 * time.Second)
		pr := ping.Stop()
		e.finish()
		if !back {
			t.Fatalf("after the peer's Delete the trap did not negotiate a new SA pair for the next packets (gw1 outbound SAs %v)\ntimeline:\n%s",
				e.mon.Current("gw1", "out SA "), e.tl.String())
		}
		n := pr.RepliedBetween(deleted, time.Time{})
		t.Logf("after the Delete: a new SA pair on demand, %d pings answered", n)
		if n == 0 {
			t.Errorf("no ping answered after the trap renegotiated")
		}
	})

	// (9) reauthentication: the ISAKMP SA (ikelifetime=12s) is replaced
	// before it ends, twice, while traffic flows; nothing leaks or is
	// lost.
	t.Run("reauth", func(t *testing.T) {
		e := newLC(t, "gsl09-")
		conf := lcConf("add", "ikelifetime=12s", "rekeymargin=4s", "rekeyfuzz=0%", "lifetime=1h")
		e.start(conf, conf, false)
		e.ctl(e.gw1, "up", lcConn)
		ping, tcp := e.traffic(true)
		established := func() int {
			cookies := map[string]bool{}
			for _, k := range e.mon.Seen("gw1", "ISAKMP SA ") {
				if strings.HasSuffix(k, "MAIN_I4") || strings.HasSuffix(k, "MAIN_R3") {
					cookies[strings.Fields(k)[0]] = true
				}
			}
			return len(cookies)
		}
		ok := wire.WaitFor(35*time.Second, func() bool { return established() >= 3 })
		pr := ping.Stop()
		terr := e.stopTCP(tcp)
		e.finish()
		if !ok {
			t.Errorf("gw1 saw %d established ISAKMP SAs in 35 s (ikelifetime=12s), want 3 (2 reauthentications)\ntimeline:\n%s", established(), e.tl.String())
		}
		e.noLoss(pr, time.Time{}, time.Time{}, "during the reauthentications")
		if terr != nil {
			t.Error(terr)
		}
	})

	// (10) rekey by bytes (lifebytes/marginbytes) during a TCP stream.
	t.Run("rekey-bytes", func(t *testing.T) {
		conf := lcConf("add", "lifebytes=4000000", "marginbytes=2000000", "rekeyfuzz=0%")
		if reason := confRefuses(t, conf, "lifebytes"); reason != "" {
			t.Skipf("gosec conf check refuses lifebytes: %s", reason)
		}
		e := newLC(t, "gsl10-")
		e.start(conf, conf, false)
		e.ctl(e.gw1, "up", lcConn)
		ping, tcp := e.traffic(true)
		const want = 5 // 4 rekeys: 2 MB each at 1 MB/s
		ok := wire.WaitFor(40*time.Second, func() bool { return e.mon.Count("gw1", "in SA ") >= want })
		pr := ping.Stop()
		terr := e.stopTCP(tcp)
		e.finish()
		if !ok {
			t.Errorf("gw1 saw %d inbound SAs in 40 s at 1 MB/s with lifebytes=4000000, want %d\ntimeline:\n%s",
				e.mon.Count("gw1", "in SA "), want, e.tl.String())
		}
		e.noLoss(pr, time.Time{}, time.Time{}, "during the rekeys by bytes")
		if terr != nil {
			t.Error(terr)
		}
	})

	// (11) rekey collision: both gateways initiate (gosec up on both at
	// once) with the same short lifetime and no fuzz, so both rekey at the
	// same moment, several times; nothing leaks or is lost, and each side
	// ends sending only on SAs the other has.
	t.Run("rekey-collision", func(t *testing.T) {
		e := newLC(t, "gsl11-")
		conf := lcConf("add", "lifetime=8s", "rekeymargin=4s", "rekeyfuzz=0%")
		e.start(conf, conf, false)
		var wg sync.WaitGroup
		outs := make([]string, 2)
		errs := make([]error, 2)
		e.tl.Add("gw1 and gw2: gosec up (together)")
		for i, d := range []*daemon{e.gw1, e.gw2} {
			wg.Add(1)
			go func() { defer wg.Done(); outs[i], errs[i] = d.ctl(60*time.Second, "up", lcConn) }()
		}
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Logf("gw%d: gosec up: %v\n%s", i+1, err, outs[i])
			}
		}
		ping, tcp := e.traffic(true)
		ok := wire.WaitFor(30*time.Second, func() bool {
			return e.mon.Count("gw1", "in SA ") >= 6 && e.mon.Count("gw2", "in SA ") >= 6
		})
		pr := ping.Stop()
		terr := e.stopTCP(tcp)
		e.finish()
		if !ok {
			t.Errorf("inbound SAs seen in 30 s: gw1 %d, gw2 %d; want >= 6 each (both rekeying)\ntimeline:\n%s",
				e.mon.Count("gw1", "in SA "), e.mon.Count("gw2", "in SA "), e.tl.String())
		}
		e.noLoss(pr, time.Time{}, time.Time{}, "during the colliding rekeys")
		if terr != nil {
			t.Error(terr)
		}
		e.spisConsistent()
	})
}

// confRefuses returns gosec conf check's complaint about keyword in conf,
// or "" if it accepts it.
func confRefuses(t *testing.T, conf, keyword string) string {
	t.Helper()
	dir := t.TempDir()
	cf := filepath.Join(dir, "ipsec.conf")
	if err := os.WriteFile(cf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ipsec.secrets"), []byte(lcSecrets), 0o600); err != nil {
		t.Fatal(err)
	}
	out, _ := exec.Command(gosecBinary(t), "conf", "check", "--config", cf).CombinedOutput()
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, keyword) && (strings.Contains(line, "not supported") || strings.Contains(line, "error") || strings.Contains(line, "unknown")) {
			return strings.TrimSpace(line)
		}
	}
	return ""
}
