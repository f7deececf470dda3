package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHostilePeer: a scapy peer sends gw2 replayed, tampered, truncated,
// unknown-SPI and forged ESP packets; gw2 drops and counts each class and
// keeps serving (the forged high sequence number must not move its replay
// window, so the tunnel still carries traffic afterwards).
func TestHostilePeer(t *testing.T) {
	needScapy(t)
	tp := newTopo(t, "gsh-")
	c := manualCase{name: "hostile", s: suite{esp: "aes128-sha1", encLen: 16, intLen: 20}, spiBase: 970}
	conf := c.conf(4, false)
	gw1 := tp.startDaemon(tp.ns("gw1"), conf, "")
	gw2 := tp.startDaemon(tp.ns("gw2"), conf, "")
	gw1.mustCtl("up", c.name)
	gw2.mustCtl("up", c.name)
	if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 2); err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(tp.root, "test", "e2e", "testdata", "hostile.py")
	out, err := tp.run(tp.ns("gw1"), 60*time.Second, scapyPython, script, tp.ns("lan1"), "10.2.0.2", "wan0")
	if err != nil {
		t.Fatalf("hostile peer: %v\n%s", err, out)
	}
	for _, want := range []string{"replay 5", "tampered 5", "truncated 5", "unknown-spi 5", "forged 1"} {
		if !strings.Contains(out, want) {
			t.Fatalf("hostile peer did not send %q:\n%s", want, out)
		}
	}
	time.Sleep(300 * time.Millisecond)
	all := statusAllOf(t, gw2)
	st := statusOf(t, gw2, c.name)
	t.Logf("gw2 SA drops %v, global drops %v", st.in.Drops, all.Drops)
	checks := []struct {
		what string
		got  uint64
		min  uint64
	}{
		{"replay", st.in.Drops["replay"], 5},
		{"icv (tampered, forged)", st.in.Drops["icv"], 6},
		{"unknown-spi", all.Drops["unknown-spi"], 5},
		{"malformed + icv (truncated, tampered, forged)", all.Drops["malformed"] + all.Drops["icv"], 11},
	}
	for _, c := range checks {
		if c.got < c.min {
			t.Errorf("%s: %d drops, want >= %d", c.what, c.got, c.min)
		}
	}
	// Still serving, and the forged sequence number did not move the window.
	if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 3); err != nil {
		t.Fatalf("tunnel broken after the hostile peer: %v", err)
	}
	if st2 := statusOf(t, gw2, c.name); st2.in.Drops["too-old"] != 0 {
		t.Fatalf("genuine packets dropped as too old after the forged one: %v", st2.in.Drops)
	}
}
