package e2e

// The e2e side of the SA lifecycle tests: the leak watcher on both
// gateways' WAN link, failure reports with the daemons' log lines, and an
// SA monitor polling both daemons. The instruments are in
// internal/testutil/wire.

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil/wire"
)

// protected are the subnets whose packets must never be on the wire in
// the clear.
var protected = []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.2.0.0/24")}

// watchLeaks captures what each gateway sends on wan0 for the rest of the
// test.
func (tp *topo) watchLeaks() *wire.LeakWatcher {
	tp.t.Helper()
	return wire.WatchLeaks(tp.t, wire.LeakFilter(protected...),
		wire.Tap{Label: "gw1", NetNS: tp.ns("gw1"), Iface: "wan0"},
		wire.Tap{Label: "gw2", NetNS: tp.ns("gw2"), Iface: "wan0"})
}

// checkLeaks fails t if any packet leaked, listing the packets with the
// event each followed (from the timeline merged with both daemons' logs)
// and the sender's last log line.
//
// exempt, if set, names the packets the documented behaviour allows (the
// cleartext a gateway sends after its own administrator ran gosec down:
// "routed normally again", README): they are logged, not judged.
func checkLeaks(t *testing.T, w *wire.LeakWatcher, tl *wire.Timeline, daemons map[string]*daemon, exempt func(wire.Leak) string) {
	t.Helper()
	all, problems := w.Stop()
	var leaks []wire.Leak
	allowed := map[string]int{}
	for _, l := range all {
		if why := exempt(l); why != "" {
			allowed[why]++
			continue
		}
		leaks = append(leaks, l)
	}
	for why, n := range allowed {
		t.Logf("not judged: %d cleartext packets %s", n, why)
	}
	if len(leaks) == 0 && len(problems) == 0 {
		t.Logf("leak watcher: no cleartext packet of 10.1.0.0/24 or 10.2.0.0/24 on the wire")
		return
	}
	t.Error(wire.Report(leaks, problems, withLogs(tl, daemons), func(l wire.Leak) string {
		if d := daemons[l.Label]; d != nil {
			if ll := logLineBefore(d, l.At); ll != "" {
				return l.Label + " log: " + ll
			}
		}
		return ""
	}))
}

var logTime = regexp.MustCompile(`^time=(\S+)`)

// withLogs merges both daemons' log events into the timeline.
func withLogs(tl *wire.Timeline, daemons map[string]*daemon) *wire.Timeline {
	var ev []wire.Event
	for gw, d := range daemons {
		if d != nil {
			ev = append(ev, wire.LogEvents(gw, d.log())...)
		}
	}
	return tl.With(ev)
}

// logLineBefore returns the daemon's last log line (INFO or above) at or
// before at.
func logLineBefore(d *daemon, at time.Time) string {
	var last string
	for _, line := range strings.Split(d.log(), "\n") {
		m := logTime.FindStringSubmatch(line)
		if m == nil || strings.Contains(line, "level=DEBUG") {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			continue
		}
		if ts.After(at) {
			break
		}
		last = line
	}
	if len(last) > 300 {
		last = last[:300] + "..."
	}
	return last
}

// saView is the part of `gosec statusall --json` the SA monitor reads.
type saView struct {
	Conns []struct {
		Name string `json:"name"`
		SAs  []struct {
			SPI string `json:"spi"`
			Dir string `json:"dir"`
		} `json:"sas"`
	} `json:"conns"`
	ISAKMP []struct {
		ICookie string `json:"icookie"`
		RCookie string `json:"rcookie"`
		State   string `json:"state"`
	} `json:"isakmp"`
}

// gosecSAs is a wire.Monitor source: the conn's SAs ("in SA <spi>",
// "out SA <spi>") and the ISAKMP SAs ("ISAKMP SA <cookies> <state>") of
// a gosec daemon.
func gosecSAs(d *daemon, conn string) func() (map[string]bool, error) {
	return func() (map[string]bool, error) {
		out, err := d.ctl(5*time.Second, "statusall", "--json")
		if err != nil {
			return nil, err
		}
		var v saView
		if err := json.Unmarshal([]byte(out), &v); err != nil {
			return nil, err
		}
		now := map[string]bool{}
		for _, c := range v.Conns {
			if c.Name != conn {
				continue
			}
			for _, sa := range c.SAs {
				now[sa.Dir+" SA "+sa.SPI] = true
			}
		}
		for _, p := range v.ISAKMP {
			now["ISAKMP SA "+p.ICookie+"/"+p.RCookie+" "+p.State] = true
		}
		return now, nil
	}
}

// kill9 kills the daemon's process with SIGKILL, as a crash would.
func (d *daemon) kill9() error {
	if d.pid <= 0 {
		return fmt.Errorf("%s: pid of the daemon unknown", d.ns)
	}
	p, err := os.FindProcess(d.pid)
	if err != nil {
		return err
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 %d: %w", d.pid, err)
	}
	for i := 0; i < 50; i++ {
		if err := p.Signal(syscall.Signal(0)); err != nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}
