package ikeinterop

// SA lifecycle against strongSwan (issue 10): rekeys by time and by bytes
// with either side initiating and a Delete from either side, with a ping stream, a TCP
// stream with a checksum and a capture of each gateway's WAN link that
// fails the test on a cleartext packet of the protected subnets sent by
// gosec. Both gateways get a default route out of their WAN link, so a
// packet gosec fails to protect reaches the wire.
//
// gosec's cleartext fails the test at any time, also after its own
// `gosec down` (the conn's guard stays). strongSwan's own cleartext
// packets are listed but not judged: charon
// with kernel-libipsec routes a subnet into its TUN only while a CHILD_SA
// is installed, so with a default route it sends in the clear whenever it
// has no SA (after a Delete, say), by design of that plug-in.

import (
	"encoding/json"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil/wire"
)

// lcEnv is one lifecycle case against strongSwan.
type lcEnv struct {
	*env
	tl    *wire.Timeline
	leaks *wire.LeakWatcher
	mon   *wire.Monitor
}

const lcName = "lc"

// newLifecycle builds the NAT-less topology with gosec's and strongSwan's
// conn (each with extra keywords), default routes out of both WAN links,
// the leak watcher and an SA monitor on both sides.
func newLifecycle(t *testing.T, gosecExtra, ssExtra []string) *lcEnv {
	t.Helper()
	cn := conn{name: lcName, ike: "aes128-sha256-modp2048", esp: "aes128-sha256", left: "192.0.2.1", right: "192.0.2.2",
		leftSub: "10.1.0.0/24", rightSub: "10.2.0.0/24"}
	// render appends the extra keywords to the conn; one the conn
	// already sets (auto=) replaces it, since a keyword twice in a conn
	// is an error.
	render := func(c conn, extra []string) string {
		s := c.text()
		for _, l := range extra {
			k, _, _ := strings.Cut(l, "=")
			re := regexp.MustCompile(`(?m)^\t` + regexp.QuoteMeta(k) + `=.*$`)
			if i := strings.Index(s, "conn "+c.name); i >= 0 && re.MatchString(s[i:]) {
				s = s[:i] + re.ReplaceAllLiteralString(s[i:], "\t"+l)
				continue
			}
			s += "\t" + l + "\n"
		}
		return s
	}
	e := &lcEnv{tl: &wire.Timeline{}}
	e.env = newEnv(t, "gsy-", false, render(cn, gosecExtra), secrets("192.0.2.1", "192.0.2.2"),
		render(cn.mirror(), ssExtra), secrets("192.0.2.2", "192.0.2.1"))
	e.tl.Add("gosec and strongSwan started")
	for ns, via := range map[string]string{"left": "192.0.2.2", "right": "192.0.2.1"} {
		if out, err := run(t, 10*time.Second, "ip", "-n", e.prefix+ns, "route", "add", "default", "via", via, "dev", "wan0"); err != nil {
			t.Fatalf("default route on %s: %v\n%s", ns, err, out)
		}
	}
	protected := []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.2.0.0/24")}
	e.leaks = wire.WatchLeaks(t, wire.LeakFilter(protected...),
		wire.Tap{Label: "gosec", NetNS: e.prefix + "left", Iface: "wan0"},
		wire.Tap{Label: "strongswan", NetNS: e.prefix + "right", Iface: "wan0"})
	e.tl.Add("leak watcher started")
	e.mon = wire.NewMonitor(e.tl, 500*time.Millisecond, map[string]func() (map[string]bool, error){
		"gosec": e.gosecSAs, "strongswan": e.ssSAs})
	t.Cleanup(e.mon.Stop)
	return e
}

// gosecSAs lists gosec's SAs of the conn ("in SA <spi>", "out SA <spi>").
func (e *lcEnv) gosecSAs() (map[string]bool, error) {
	out, err := e.gosec(5*time.Second, "statusall", "--json")
	if err != nil {
		return nil, err
	}
	var v struct {
		Conns []struct {
			Name string `json:"name"`
			SAs  []struct {
				SPI string `json:"spi"`
				Dir string `json:"dir"`
			} `json:"sas"`
		} `json:"conns"`
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		return nil, err
	}
	now := map[string]bool{}
	for _, c := range v.Conns {
		if c.Name == lcName {
			for _, sa := range c.SAs {
				now[sa.Dir+" SA "+strings.TrimPrefix(strings.ToLower(sa.SPI), "0x")] = true
			}
		}
	}
	return now, nil
}

// ssSPIs matches a CHILD_SA line of ipsec statusall:
//
//	lc{1}:  INSTALLED, TUNNEL, reqid 1, ESP in UDP SPIs: 4a12fd83_i 160496f6_o
var ssSPIs = regexp.MustCompile(`INSTALLED[^\n]*SPIs: ([0-9a-f]+)_i ([0-9a-f]+)_o`)

// ssSAs lists strongSwan's installed CHILD_SAs of the conn as "in SA
// <spi>" and "out SA <spi>".
func (e *lcEnv) ssSAs() (map[string]bool, error) {
	out, err := e.peer(10*time.Second, "ipsec", "statusall", lcName)
	if err != nil {
		return nil, err
	}
	now := map[string]bool{}
	for _, m := range ssSPIs.FindAllStringSubmatch(out, -1) {
		now["in SA "+m[1]] = true
		now["out SA "+m[2]] = true
	}
	return now, nil
}

// up brings the conn up from gosec's or strongSwan's side.
func (e *lcEnv) up(fromStrongSwan bool) {
	e.t.Helper()
	var out string
	var err error
	if fromStrongSwan {
		e.tl.Add("strongswan: ipsec up %s", lcName)
		out, err = e.peer(60*time.Second, "ipsec", "up", lcName)
	} else {
		e.tl.Add("gosec: gosec up %s", lcName)
		out, err = e.gosec(60*time.Second, "up", lcName)
	}
	if err != nil || !strings.Contains(out, "established successfully") {
		e.t.Fatalf("up: %v\n%s", err, out)
	}
	// The initiator's "up" returns once it sent Quick Mode's third
	// message; the responder installs its SAs when that arrives. Traffic
	// before then is dropped by design (no SA: fail closed), so the
	// tunnel is up when both sides have an SA each way.
	deadline := time.Now().Add(10 * time.Second)
	for {
		g, gerr := e.gosecSAs()
		ss, serr := e.ssSAs()
		if gerr == nil && serr == nil && hasBothDirs(g) && hasBothDirs(ss) {
			break
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("up: after 10 s gosec has SAs %v (%v), strongSwan %v (%v)", g, gerr, ss, serr)
		}
		time.Sleep(20 * time.Millisecond)
	}
	e.tl.Add("tunnel up")
}

// hasBothDirs reports whether an SA list ("in SA <spi>", "out SA <spi>")
// has an SA each way.
func hasBothDirs(sas map[string]bool) bool {
	var in, out bool
	for k := range sas {
		in = in || strings.HasPrefix(k, "in SA ")
		out = out || strings.HasPrefix(k, "out SA ")
	}
	return in && out
}

// traffic starts a ping stream leftlan -> rightlan and, with withTCP, a
// TCP stream at 1 MB/s.
func (e *lcEnv) traffic(withTCP bool) (*wire.Ping, *wire.TCPStream) {
	p := wire.StartPing(e.t, e.prefix+"leftlan", "10.2.0.2")
	e.tl.Add("ping leftlan -> 10.2.0.2 started (every 0.2 s)")
	var s *wire.TCPStream
	if withTCP {
		s = wire.StartTCP(e.t, e.prefix+"leftlan", e.prefix+"rightlan", "10.2.0.2", 1<<20)
		e.tl.Add("TCP stream leftlan -> rightlan started")
	}
	return p, s
}

// finish stops the monitor and judges the capture: gosec's leaks fail the
// test, strongSwan's are logged.
func (e *lcEnv) finish() {
	e.t.Helper()
	e.mon.Stop()
	leaks, problems := e.leaks.Stop()
	var ours, theirs []wire.Leak
	for _, l := range leaks {
		// gosec's packets are judged after its own gosec down too: the
		// conn's guard stays (README, "SA lifecycle").
		if l.Label == "gosec" {
			ours = append(ours, l)
		} else {
			theirs = append(theirs, l)
		}
	}
	if len(theirs) > 0 {
		e.t.Logf("strongSwan (kernel-libipsec, not judged) sent %d cleartext packets of the protected subnets; first: %s",
			len(theirs), theirs[0].Line)
	}
	if len(ours) > 0 || len(problems) > 0 {
		e.t.Error(wire.Report(ours, problems, e.timeline(), nil))
		return
	}
	e.t.Logf("leak watcher: gosec sent no cleartext packet of 10.1.0.0/24 or 10.2.0.0/24")
}

// timeline is the test's timeline merged with gosec's log.
func (e *lcEnv) timeline() *wire.Timeline {
	log, _ := os.ReadFile(e.gsLog)
	return e.tl.With(wire.LogEvents("gosec", string(log)))
}

func (e *lcEnv) noLoss(pr wire.PingResult, from, to time.Time, what string) {
	e.t.Helper()
	lost := pr.LostBetween(from, to)
	e.t.Logf("ping: %d sent, %d answered, %d lost in total; %s: %d lost", pr.Sent, len(pr.Replied), len(pr.Lost), what, len(lost))
	if len(lost) > 0 {
		tl := e.timeline()
		e.t.Errorf("%s: %d pings lost:%s\ntimeline:\n%s", what, len(lost), pr.DescribeLoss(lost, tl), tl.String())
	}
}

// TestStrongSwanLifecycle: rekeys by time with gosec and with strongSwan
// initiating, and a Delete from each side, with traffic and a leak check.
func TestStrongSwanLifecycle(t *testing.T) {
	byTime := []string{"lifetime=12s", "rekeymargin=6s", "rekeyfuzz=0%"}
	// 4 MB lifetime, rekey 2 MB before it: about every 2 s at the
	// stream's 1 MB/s. strongSwan's keywords are the same (ipsec.conf(5)).
	byBytes := []string{"lifebytes=4000000", "marginbytes=2000000", "rekeyfuzz=0%"}
	rekey := func(t *testing.T, ssInitiates bool, short []string) {
		// The initiator has the short lifetime and rekeys; the other side
		// keeps a long one so that every rekey comes from the initiator.
		long := []string{"lifetime=1h"}
		gs, ss := short, long
		if ssInitiates {
			gs, ss = long, short
		}
		e := newLifecycle(t, gs, ss)
		e.up(ssInitiates)
		ping, tcp := e.traffic(true)
		const want = 5 // the first inbound SA and 4 successors
		ok := wire.WaitFor(60*time.Second, func() bool { return e.mon.Count("gosec", "in SA ") >= want })
		pr := ping.Stop()
		n, terr := tcp.Stop()
		e.finish()
		if !ok {
			t.Errorf("gosec saw %d inbound SAs in 60 s, want %d (4 rekeys)\ntimeline:\n%s", e.mon.Count("gosec", "in SA "), want, e.tl.String())
		} else {
			t.Logf("gosec saw %d inbound SAs, strongSwan %d", e.mon.Count("gosec", "in SA "), e.mon.Count("strongswan", "in SA "))
		}
		// A rekey is make-before-break on both implementations: no loss.
		e.noLoss(pr, time.Time{}, time.Time{}, "during the rekeys")
		if terr != nil {
			t.Error(terr)
		} else {
			t.Logf("TCP stream: %d bytes arrived intact", n)
		}
	}
	t.Run("rekey-time-gosec-initiates", func(t *testing.T) { rekey(t, false, byTime) })
	t.Run("rekey-time-strongswan-initiates", func(t *testing.T) { rekey(t, true, byTime) })
	t.Run("rekey-bytes-gosec-initiates", func(t *testing.T) { rekey(t, false, byBytes) })
	t.Run("rekey-bytes-strongswan-initiates", func(t *testing.T) { rekey(t, true, byBytes) })

	del := func(t *testing.T, fromStrongSwan bool) {
		e := newLifecycle(t, nil, nil)
		e.up(false)
		ping, _ := e.traffic(false)
		time.Sleep(3 * time.Second)
		down := time.Now()
		other := "strongswan"
		if fromStrongSwan {
			other = "gosec"
			e.tl.Add("strongswan: ipsec down %s", lcName)
			if out, err := e.peer(30*time.Second, "ipsec", "down", lcName); err != nil {
				t.Fatalf("ipsec down: %v\n%s", err, out)
			}
		} else {
			e.tl.Add("gosec: gosec down %s", lcName)
			if out, err := e.gosec(30*time.Second, "down", lcName); err != nil {
				t.Fatalf("gosec down: %v\n%s", err, out)
			}
		}
		gone := wire.WaitFor(10*time.Second, func() bool {
			return len(e.mon.Current(other, "in SA ")) == 0 && len(e.mon.Current(other, "out SA ")) == 0
		})
		e.tl.Add("test: %s has no SA left: %v", other, gone)
		time.Sleep(4 * time.Second)
		pr := ping.Stop()
		e.finish()
		if !gone {
			t.Errorf("%s still has SAs 10 s after the Delete", other)
		}
		e.noLoss(pr, time.Time{}, down.Add(-time.Second), "before the Delete")
		if n := pr.RepliedBetween(down.Add(2*time.Second), time.Time{}); n > 0 {
			t.Logf("%d pings answered after the Delete (through which path: see the leak check)", n)
		}
	}
	t.Run("delete-from-gosec", func(t *testing.T) { del(t, false) })
	t.Run("delete-from-strongswan", func(t *testing.T) { del(t, true) })
}
