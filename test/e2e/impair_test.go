package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestImpairRealDaemon: fault injection against the real daemon (gosec
// start --impair, as Libreswan's impair=). For messages of Main Mode and
// Quick Mode in both roles, the first copy gosec sends is dropped,
// duplicated, delayed past a retransmission or replayed after the
// exchange completed; every time the exchange completes, traffic flows,
// each gateway holds exactly one SA pair for the conn (none installed
// twice, none left behind), and gosec down clears both sides.
//
// All conns have the same endpoints and selectors, so the responder
// serves every negotiation under its first conn: gw1's impairments (the
// initiator) are scoped to each case's conn, gw2's (the responder) apply
// to any conn, with gw2 restarted for each such case, and the responder
// is judged by all its SAs.
func TestImpairRealDaemon(t *testing.T) {
	tp := newTopo(t, "gik-")
	cases := []struct {
		name     string
		gw1, gw2 string // impairment on gw1 (initiator) or gw2 (responder)
		settle   time.Duration
	}{
		{name: "imp-mm1-drop", gw1: "drop:MM1"},
		{name: "imp-mm2-drop", gw2: "drop:MM2"},
		{name: "imp-mm3-dup", gw1: "duplicate:MM3"},
		{name: "imp-mm4-delay", gw2: "delay:MM4:3s", settle: 2 * time.Second},
		{name: "imp-mm5-drop", gw1: "drop:MM5"},
		{name: "imp-mm6-dup", gw2: "duplicate:MM6"},
		{name: "imp-mm6-replay", gw2: "replay:MM6:2s", settle: 3 * time.Second},
		{name: "imp-qm1-replay", gw1: "replay:QM1:2s", settle: 3 * time.Second},
		{name: "imp-qm2-drop", gw2: "drop:QM2"},
		{name: "imp-qm2-delay", gw2: "delay:QM2:3s", settle: 2 * time.Second},
		{name: "imp-qm3-drop", gw1: "drop:QM3", settle: 3 * time.Second},
		{name: "imp-qm3-replay", gw1: "replay:QM3:2s", settle: 3 * time.Second},
	}
	var conf strings.Builder
	var imp1 []string
	for _, c := range cases {
		conf.WriteString(ikeCase{name: c.name, ike: "aes128-sha256-modp2048", esp: "aes128-sha1-modp2048"}.conf())
		if c.gw1 != "" {
			imp1 = append(imp1, c.gw1+"@"+c.name)
		}
	}
	secrets := "192.0.2.1 192.0.2.2 : PSK \"gosec-e2e-psk\"\n"
	gw1 := tp.startDaemon(tp.ns("gw1"), conf.String(), secrets, "--impair", strings.Join(imp1, ","))
	gw2 := tp.startDaemon(tp.ns("gw2"), conf.String(), secrets)
	// children counts d's SA pairs: of conn, or of every conn ("").
	children := func(d *daemon, conn string) int {
		n := 0
		for _, c := range ikeStatusOf(t, d).Conns {
			if conn == "" || c.Name == conn {
				n += len(c.Children)
			}
		}
		return n
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.gw2 != "" {
				gw2.mustCtl("stop")
				gw2 = tp.startDaemon(tp.ns("gw2"), conf.String(), secrets, "--impair", c.gw2)
			}
			out, err := gw1.ctl(60*time.Second, "up", c.name)
			if err != nil || !strings.Contains(out, "established successfully") {
				t.Fatalf("gosec up: %v\n%s", err, out)
			}
			defer gw1.ctl(10*time.Second, "down", c.name)
			time.Sleep(c.settle) // delayed and replayed copies arrive
			if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 3); err != nil {
				t.Fatal(err)
			}
			if n := children(gw1, c.name); n != 1 {
				t.Fatalf("gw1 holds %d SA pairs for %s, want 1", n, c.name)
			}
			if st := statusOf(t, gw1, c.name); st.in.Packets == 0 || st.out.Packets == 0 || len(st.SAs) != 2 {
				t.Fatalf("gw1: %d SAs, counters in %+v out %+v", len(st.SAs), st.in, st.out)
			}
			if n := children(gw2, ""); n != 1 {
				t.Fatalf("gw2 holds %d SA pairs, want 1", n)
			}
			gw1.mustCtl("down", c.name)
			deadline := time.Now().Add(5 * time.Second)
			for children(gw2, "") != 0 {
				if time.Now().After(deadline) {
					t.Fatal(fmt.Sprintf("gw2 keeps SAs of %s after gosec down", c.name))
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}
