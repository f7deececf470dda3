package e2e

import (
	"encoding/json"
	"os"
	"runtime"
	"testing"
	"time"

	gosecd "github.com/gosec-ipsec/gosec/internal/daemon"
)

// TestStartTuning: a daemon started without tuning options runs with
// the defaults README documents (Go procs by AutoProcs, one TUN queue per
// CPU up to 4, keep-warm every 1 ms for 2 s), and its keep-warm timer
// follows the traffic through the real daemon: it wakes while pings
// flow, stops counting once the tunnel has been idle for 2 s, and starts
// again at the next ping. With --keep-warm 0 it never wakes.
func TestStartTuning(t *testing.T) {
	tp := newTopo(t, "gtu-")
	conf := "conn t\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tauthby=secret\n\tkeyexchange=ikev1\n" +
		"\tike=aes128-sha256-modp2048!\n\tesp=aes128gcm16!\n\ttype=tunnel\n\tleftsubnet=10.1.0.0/24\n\trightsubnet=10.2.0.0/24\n" +
		"\tkeyingtries=1\n\tauto=add\n"
	secrets := "192.0.2.1 192.0.2.2 : PSK \"gosec-e2e-psk\"\n"
	gw1 := tp.startDaemon(tp.ns("gw1"), conf, secrets)
	gw2 := tp.startDaemon(tp.ns("gw2"), conf, secrets, "--keep-warm", "0")
	gw1.mustCtl("up", "t")
	if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 3); err != nil {
		t.Fatal(err)
	}

	type tuning struct {
		Procs     int    `json:"procs"`
		CPUs      int    `json:"cpus"`
		TUNQueues int    `json:"tun_queues"`
		KeepWarm  string `json:"keep_warm"`
		Plane     struct {
			KeepWarmTicks uint64 `json:"keep_warm_ticks"`
		} `json:"dataplane"`
	}
	get := func(d *daemon) tuning {
		t.Helper()
		var st tuning
		if err := json.Unmarshal([]byte(d.mustCtl("statusall", "--json")), &st); err != nil {
			t.Fatalf("statusall --json: %v", err)
		}
		return st
	}

	st := get(gw1)
	wantProcs := gosecd.AutoProcs(runtime.NumCPU())
	if wantProcs == 0 || os.Getenv("GOMAXPROCS") != "" {
		wantProcs = st.Procs // Go's own choice: not ours to check
	}
	if st.Procs != wantProcs || st.CPUs != runtime.NumCPU() || st.TUNQueues != min(runtime.NumCPU(), 4) || st.KeepWarm != "1ms for 2s" {
		t.Errorf("defaults: %+v; want procs %d, cpus %d, %d TUN queues, keep-warm 1ms for 2s", st, wantProcs, runtime.NumCPU(), min(runtime.NumCPU(), 4))
	}

	// Warm while pings flow (and for 2 s after the last).
	a := get(gw1).Plane.KeepWarmTicks
	if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 3); err != nil {
		t.Fatal(err)
	}
	b := get(gw1).Plane.KeepWarmTicks
	// Three pings 0.2 s apart: about 400 ticks at 1 ms; a loaded machine
	// delays timers, so ask for a quarter.
	if b-a < 100 {
		t.Errorf("keep-warm woke %d times during 0.4 s of pings, want about 400", b-a)
	}
	// Cold after 2 s without packets: the idle checks are not counted.
	time.Sleep(2500 * time.Millisecond)
	c := get(gw1).Plane.KeepWarmTicks
	time.Sleep(time.Second)
	d := get(gw1).Plane.KeepWarmTicks
	if d != c {
		t.Errorf("keep-warm woke %d times in a second after 2.5 s without traffic, want 0", d-c)
	}
	// The next packet warms it again (found within one idle check).
	if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 1); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)
	if e := get(gw1).Plane.KeepWarmTicks; e-d < 50 {
		t.Errorf("keep-warm woke %d times in the 0.5 s after a ping that followed a quiet spell, want about 400", e-d)
	}

	if st := get(gw2); st.KeepWarm != "off" || st.Plane.KeepWarmTicks != 0 {
		t.Errorf("gw2 with --keep-warm 0: keep-warm %q, %d wake-ups; want off, 0", st.KeepWarm, st.Plane.KeepWarmTicks)
	}
}
