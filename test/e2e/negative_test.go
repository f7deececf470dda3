package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil"
)

const scapyPython = "/usr/bin/python3"

func needScapy(t testing.TB) {
	t.Helper()
	err := exec.Command(scapyPython, "-c", "import scapy.all").Run()
	testutil.Need(t, err == nil, "Debian's python3-scapy is not installed (scripts/deps.sh installs it)")
}

// TestWrongKey: gw2 has other keys for the SA towards it, so nothing gets
// through and gw2 counts ICV failures.
func TestWrongKey(t *testing.T) {
	for _, c := range []manualCase{
		{name: "wrong-esp", s: suite{esp: "aes128-sha1", encLen: 16, intLen: 20}, spiBase: 900},
		{name: "wrong-gcm", s: suite{esp: "aes128gcm16", encLen: 20}, spiBase: 901},
		{name: "wrong-ah", s: suite{ah: "sha256", intLen: 32}, transport: true, spiBase: 902},
	} {
		t.Run(c.name, func(t *testing.T) {
			tp := newTopo(t, "gsw-")
			gw1 := tp.startDaemon(tp.ns("gw1"), c.conf(2, false), "")
			gw2 := tp.startDaemon(tp.ns("gw2"), c.conf(2, true), "")
			gw1.mustCtl("up", c.name)
			gw2.mustCtl("up", c.name)
			src, dst := tp.ns("lan1"), "10.2.0.2"
			if c.transport {
				src, dst = tp.ns("gw1"), "192.0.2.2"
			}
			if err := tp.ping(src, dst, 3); err == nil {
				t.Fatal("ping got through with mismatched keys")
			}
			st := statusOf(t, gw2, c.name)
			if st.in.Drops["icv"] < 3 {
				t.Fatalf("gw2 counted %d ICV failures, want >= 3 (drops %v)", st.in.Drops["icv"], st.in.Drops)
			}
			if st.in.Packets != 0 {
				t.Fatalf("gw2 accepted %d packets with the wrong key", st.in.Packets)
			}
		})
	}
}

// TestReplayAndCleartext: ESP packets captured on the wire and sent again
// are counted as replays and dropped; cleartext injected from the peer's
// protected subnet is dropped by the filter; the tunnel keeps working.
func TestReplayAndCleartext(t *testing.T) {
	needScapy(t)
	tp := newTopo(t, "gsr-")
	c := manualCase{name: "replay", s: suite{esp: "aes128-sha1", encLen: 16, intLen: 20}, spiBase: 950}
	conf := c.conf(3, false)
	gw1 := tp.startDaemon(tp.ns("gw1"), conf, "")
	gw2 := tp.startDaemon(tp.ns("gw2"), conf, "")
	gw1.mustCtl("up", c.name)
	gw2.mustCtl("up", c.name)
	if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 2); err != nil {
		t.Fatal(err)
	}

	// Capture 3 ESP packets leaving gw1 while lan1 pings, then replay them
	// from gw1's side of the wire, below gw1's IP stack.
	replay := `
import sys, threading, time, subprocess
from scapy.all import sniff, sendp, conf
conf.verb = 0
pkts = []
def ping():
    time.sleep(0.5)
    subprocess.run(["ip", "netns", "exec", sys.argv[1], "ping", "-c", "3", "-i", "0.2", "10.2.0.2"], capture_output=True)
threading.Thread(target=ping).start()
pkts = sniff(iface="wan0", filter="ip proto 50 and src host 192.0.2.1", count=3, timeout=10)
if len(pkts) < 3:
    print("captured only", len(pkts)); sys.exit(1)
time.sleep(0.5)
sendp(pkts, iface="wan0")
print("replayed", len(pkts))
`
	out, err := tp.run(tp.ns("gw1"), 30*time.Second, scapyPython, "-c", replay, tp.ns("lan1"))
	if err != nil || !strings.Contains(out, "replayed 3") {
		t.Fatalf("replay script: %v\n%s", err, out)
	}
	time.Sleep(300 * time.Millisecond)
	st := statusOf(t, gw2, c.name)
	if st.in.Drops["replay"] < 3 {
		t.Fatalf("gw2 counted %d replays, want >= 3 (drops %v)", st.in.Drops["replay"], st.in.Drops)
	}

	// Cleartext from the protected subnet 10.2.0.0/24, sent by gw2's side
	// of the wire straight to gw1: gw1 must drop it.
	mac := strings.TrimSpace(tp.must(tp.ns("gw1"), "cat", "/sys/class/net/wan0/address"))
	inject := `
import sys
from scapy.all import Ether, IP, ICMP, sendp, conf, fragment
conf.verb = 0
sendp(Ether(dst=sys.argv[1])/IP(src="10.2.0.2", dst="10.1.0.2")/ICMP(id=4242), iface="wan0", count=5)
# and one datagram in 4 fragments (judged by the forward chain)
frags = fragment(IP(src="10.2.0.2", dst="10.1.0.2", id=777)/ICMP(id=4242)/(b"x"*3000), fragsize=1000)
sendp([Ether(dst=sys.argv[1])/f for f in frags], iface="wan0")
print("sent", len(frags))
`
	// Watch lan1 for the injected echo requests.
	ctx := exec.Command("ip", "netns", "exec", tp.ns("lan1"), "timeout", "4", "tcpdump", "-c", "1", "-n", "-i", "eth0", "icmp[4:2] == 4242")
	var dump strings.Builder
	ctx.Stdout = &dump
	ctx.Stderr = &dump
	if err := ctx.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if out, err := tp.run(tp.ns("gw2"), 30*time.Second, scapyPython, "-c", inject, mac); err != nil {
		t.Fatalf("inject: %v\n%s", err, out)
	}
	ctx.Wait()
	if strings.Contains(dump.String(), "1 packet captured") {
		t.Fatalf("cleartext from the protected subnet reached lan1:\n%s", dump.String())
	}
	st = statusOf(t, gw1, c.name)
	if st.Cleartext < 5+4 {
		t.Fatalf("gw1 counted %d cleartext drops, want >= 9 (5 packets and 4 fragments)", st.Cleartext)
	}
	// Still serving.
	if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 2); err != nil {
		t.Fatalf("tunnel broken after the attacks: %v", err)
	}
}
