package ikeinterop

import (
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil/wire"
)

// TestStrongSwanLifecycleMore: DPD restart after strongSwan's charon is
// killed and started again, and on-demand negotiation (gosec auto=route)
// towards strongSwan, with traffic and the leak check.
func TestStrongSwanLifecycleMore(t *testing.T) {
	// gosec (dpdaction=restart) finds strongSwan dead and negotiates again
	// once it is back. The loss is bounded by dpddelay + dpdtimeout, the
	// ~2 s strongSwan needs to stop and start, and 3 s for Main Mode +
	// Quick Mode on a loaded machine.
	t.Run("dpd-restart-strongswan-killed", func(t *testing.T) {
		const delay, timeout = 2 * time.Second, 6 * time.Second
		e := newLifecycle(t, []string{"dpddelay=2s", "dpdtimeout=6s", "dpdaction=restart"}, []string{"dpddelay=2s", "dpdtimeout=30s", "dpdaction=clear"})
		e.up(false)
		ping, _ := e.traffic(false)
		time.Sleep(3 * time.Second)
		out, err := e.peer(10*time.Second, "pid")
		pid, perr := strconv.Atoi(strings.TrimSpace(out))
		if err != nil || perr != nil {
			t.Fatalf("charon's pid: %v %v %q", err, perr, out)
		}
		killed := time.Now()
		e.tl.Add("strongswan: kill -9 charon %d", pid)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Second)
		e.peer(20*time.Second, "stop")
		if out, err := e.peer(60*time.Second, "start"); err != nil {
			t.Fatalf("strongSwan start after kill -9: %v\n%s", err, out)
		}
		e.tl.Add("strongswan: started again")
		before := e.mon.Count("gosec", "in SA ")
		renewed := wire.WaitFor(30*time.Second, func() bool { return e.mon.Count("gosec", "in SA ") > before })
		e.tl.Add("test: gosec has a new inbound SA: %v", renewed)
		renewedAt := time.Now()
		time.Sleep(4 * time.Second)
		pr := ping.Stop()
		e.finish()
		e.noLoss(pr, time.Time{}, killed.Add(-time.Second), "before the kill")
		if !renewed {
			t.Fatalf("gosec did not negotiate a new SA pair within 30 s of strongSwan's restart (dpdaction=restart)\ntimeline:\n%s", e.timeline().String())
		}
		e.noLoss(pr, renewedAt.Add(time.Second), time.Time{}, "after the new SA pair")
		lost := pr.LostBetween(killed.Add(-time.Second), time.Time{})
		allowed := int((delay + timeout + 2*time.Second + 3*time.Second) / wire.PingInterval)
		t.Logf("lost across strongSwan's restart: %d pings (%.1f s), allowed %d", len(lost), float64(len(lost))*wire.PingInterval.Seconds(), allowed)
		if len(lost) > allowed {
			t.Errorf("%d pings lost across strongSwan's restart, more than dpddelay+dpdtimeout+5 s allow (%d):%s",
				len(lost), allowed, pr.DescribeLoss(lost, e.timeline()))
		}
	})

	// gosec auto=route: nothing is negotiated before the first packet,
	// which brings the tunnel to strongSwan up; nothing leaks meanwhile.
	t.Run("on-demand-gosec", func(t *testing.T) {
		e := newLifecycle(t, []string{"auto=route"}, nil)
		time.Sleep(2 * time.Second)
		if out := e.mon.Current("gosec", "out SA "); len(out) > 0 {
			t.Errorf("auto=route negotiated before any packet (outbound SAs %v)", out)
		}
		ping, _ := e.traffic(false)
		time.Sleep(7 * time.Second)
		pr := ping.Stop()
		e.finish()
		if pr.FirstRep == 0 {
			t.Fatalf("no ping answered within 7 s of the first packet (auto=route)\n%s", tail(pr.Output, 10))
		}
		delay := pr.Replied[pr.FirstRep].Sub(pr.Start)
		t.Logf("first answered icmp_seq %d, %.2f s after the first packet", pr.FirstRep, delay.Seconds())
		if delay > 5*time.Second {
			t.Errorf("the first answer came %.1f s after the first packet (want < 5 s: one Main Mode and one Quick Mode)", delay.Seconds())
		}
		e.noLoss(pr, pr.SentAt(pr.FirstRep), time.Time{}, "after the first answer")
	})
}
