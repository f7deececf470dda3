package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestSecondDaemonRefused: while gw1's daemon carries traffic, the
// administrator starts another gosec in gw1's namespace with another
// control socket (so the socket's own check cannot stop it) and the same
// configuration. The second one must fail at once, naming the first, and
// touch nothing of it: before the daemon took a lock table first, it
// removed the first one's routes and rules as a crashed predecessor's and
// the tunnel stopped carrying anything.
//   - gosec start fails, and says another gosec runs here;
//   - gw1's policy rules and routes are as they were;
//   - the ping through the tunnel loses nothing, the SA stays, the
//     first daemon still holds its lock table and (when it could) owns
//     its table;
//   - no cleartext of a protected subnet on either WAN link.
//
// Both with the table owned (Linux 6.9 and later) and with it unowned,
// which is what a kernel before 6.9 gives and here a stale table of an
// older gosec; the lock is the owned table inet gosec-lock in both.
func TestSecondDaemonRefused(t *testing.T) {
	for _, tc := range []struct {
		name, prefix string
		staleTable   bool
	}{
		{"owned table", "gsl14-", false},
		{"unowned table", "gsl15-", true},
	} {
		t.Run(tc.name, func(t *testing.T) { secondDaemonRefused(t, tc.prefix, tc.staleTable) })
	}
}

func secondDaemonRefused(t *testing.T, prefix string, staleTable bool) {
	e := newLC(t, prefix)
	if staleTable {
		e.tp.must(e.tp.ns("gw1"), "nft", "add", "table", "inet", "gosec")
		e.tl.Add("gw1: nft add table inet gosec (a stale table without the owner and persist flags)")
	}
	e.startUp()
	gw1 := e.tp.ns("gw1")
	ping, _ := e.traffic(false)
	time.Sleep(2 * time.Second)
	routing := func() string {
		return e.tp.must(gw1, "ip", "rule") + "\n" + e.tp.must(gw1, "ip", "route", "show", "table", "all")
	}
	before := routing()
	outSAs := e.mon.Current("gw1", "out SA ")

	second := e.tp.newDaemon(gw1, lcConf("start"), lcSecrets)
	from := time.Now()
	e.tl.Add("gw1: a second gosec start in the same namespace, control socket %s", second.socket)
	err := second.launch()
	e.tl.Add("gw1: the second gosec start returned: %v", err != nil)
	if err == nil {
		t.Errorf("a second daemon started in the namespace of a running one")
	} else if !strings.Contains(err.Error(), "is another gosec running in this namespace?") {
		t.Errorf("the second gosec start failed without saying another gosec runs here:\n%v", err)
	}
	time.Sleep(3 * time.Second)
	to := time.Now()

	if after := routing(); after != before {
		t.Errorf("the second daemon changed gw1's policy rules or routes:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	if got := e.mon.Current("gw1", "out SA "); strings.Join(got, ",") != strings.Join(outSAs, ",") {
		t.Errorf("gw1's outbound SAs changed: %v, then %v", outSAs, got)
	}
	if out, err := e.tp.run(gw1, 10*time.Second, "nft", "list", "table", "inet", "gosec-lock"); err != nil || !strings.Contains(out, "flags owner") {
		t.Errorf("no owned lock table: %v\n%s", err, out)
	}
	want := "table inet gosec, owned by the daemon"
	if staleTable {
		want = "table inet gosec, NOT owned by the daemon"
	}
	out := e.ctl(e.gw1, "statusall")
	for _, w := range []string{want, "namespace lock: table inet gosec-lock"} {
		if !strings.Contains(out, w) {
			t.Errorf("gw1's statusall lacks %q:\n%s", w, out)
		}
	}
	pr := ping.Stop()
	e.finish()
	e.noLoss(pr, from, to, "across the second gosec start")
}
