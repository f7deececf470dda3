package e2e

import (
	"encoding/json"
	"os"
	"slices"
	"testing"
)

// TestBridgedWAN: gw2's WAN address on a bridge with its WAN link as the
// bridge's port, as on a host whose virtual machines share its uplink,
// and br_netfilter running the IPv4 hooks for bridged frames where the
// kernel has it. Raw ESP and AH both ways carry pings and a transfer; on
// gw2 the receive ring takes them on the bridge, once, and the ingress
// bypass is attached to the bridge. Before the ring-bypass chain left
// bridged packets alone, br_netfilter ran that chain while the frame was
// still on the port, and every whole packet to gw2 was dropped there.
func TestBridgedWAN(t *testing.T) {
	tp := newTopo(t, "gbw-", "wan-default")
	gw2 := tp.ns("gw2")
	for _, argv := range [][]string{
		{"ip", "link", "add", "br0", "type", "bridge"},
		{"ip", "link", "set", "wan0", "master", "br0"},
		{"ip", "addr", "del", "192.0.2.2/24", "dev", "wan0"},
		{"ip", "addr", "add", "192.0.2.2/24", "dev", "br0"},
		{"ip", "link", "set", "br0", "up"},
		{"ip", "route", "replace", "default", "via", "192.0.2.1", "dev", "br0"},
	} {
		tp.must(gw2, argv...)
	}
	// br_netfilter's switch is per namespace where the kernel has it.
	const brnf = "/proc/sys/net/bridge/bridge-nf-call-iptables"
	hasBRNF := false
	if _, err := os.Stat(brnf); err == nil {
		tp.must(gw2, "sysctl", "-qw", "net.bridge.bridge-nf-call-iptables=1")
		hasBRNF = true
	}
	pick := func(suites []suite, name string) suite {
		i := slices.IndexFunc(suites, func(s suite) bool { return s.esp == name || s.ah == name })
		if i < 0 {
			t.Fatalf("no suite %s", name)
		}
		return suites[i]
	}
	conf := manualCase{name: "esp", s: pick(espSuites, "aes128gcm16"), spiBase: 1}.conf(3, false) +
		manualCase{name: "ah", s: pick(ahSuites, "sha256"), spiBase: 2}.conf(3, false)
	gw1d := tp.startDaemon(tp.ns("gw1"), conf, "")
	gw2d := tp.startDaemon(gw2, conf, "")
	for _, name := range []string{"esp", "ah"} {
		gw1d.mustCtl("up", name)
		gw2d.mustCtl("up", name)
		if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 3); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := tp.ping(tp.ns("lan2"), "10.1.0.2", 3); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if err := tp.transfer(tp.ns("lan1"), tp.ns("lan2"), "10.2.0.2", 1<<20); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		st := statusOf(t, gw2d, name)
		if st.in.Packets < (1<<20)/1500 || st.in.Drops["replay"] != 0 || st.in.Drops["icv"] != 0 {
			t.Fatalf("%s: gw2's inbound SA: %d packets, drops %v; want the transfer's and no replays (the ring seeing a packet twice)", name, st.in.Packets, st.in.Drops)
		}
		gw1d.mustCtl("down", name)
		gw2d.mustCtl("down", name)
	}
	var st struct {
		RawPaths struct {
			Receive map[string]string `json:"receive"`
			Ring    *struct {
				Packets uint64 `json:"packets"`
			} `json:"ring"`
		} `json:"raw_paths"`
		KernelDrops struct {
			Ingress *struct {
				Interfaces []string `json:"interfaces"`
				RingBypass uint64   `json:"ring_bypass"`
			} `json:"ingress"`
		} `json:"kernel_drops"`
	}
	if err := json.Unmarshal([]byte(gw2d.mustCtl("statusall", "--json")), &st); err != nil {
		t.Fatal(err)
	}
	r, in := st.RawPaths.Ring, st.KernelDrops.Ingress
	t.Logf("gw2 (br_netfilter %v): receive %v, ring %+v, ingress bypass %+v", hasBRNF, st.RawPaths.Receive, r, in)
	if r == nil || r.Packets == 0 {
		t.Fatalf("gw2 received nothing through its ring: %+v", st.RawPaths)
	}
	if in == nil || !slices.Contains(in.Interfaces, "br0") || in.RingBypass == 0 {
		t.Fatalf("gw2's ingress bypass is not on br0 or handed nothing over: %+v", in)
	}
}
