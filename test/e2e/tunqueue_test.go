package e2e

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/testutil/wire"
)

// TestTUNQueues: gw1 runs two TUN queues and two IKE tunnels, to
// 10.2.0.0/24 and to a second LAN 10.3.0.0/24 behind gw2. The steering
// puts the two destinations on different queues, so both queues read and
// seal at once; each tunnel carries two TCP transfers at a time (two
// flows, which the kernel's own per-flow queue choice would split over
// both readers and reorder past gw2's replay window). Every transfer must
// arrive whole, no SA may count a drop, and a capture on both WAN links
// must hold no cleartext packet of the three subnets. gw2, whose two
// tunnels share one destination (10.1.0.0/24), reads them from one queue.
func TestTUNQueues(t *testing.T) {
	tp := newTopo(t, "gtq-", "wan-default")
	tp.must(tp.ns("gw2"), "ip", "addr", "add", "10.3.0.1/24", "dev", "lan0")
	tp.must(tp.ns("lan2"), "ip", "addr", "add", "10.3.0.2/24", "dev", "eth0")
	var conf strings.Builder
	for _, c := range []struct{ name, remote string }{{"q2", "10.2.0.0/24"}, {"q3", "10.3.0.0/24"}} {
		fmt.Fprintf(&conf, "conn %s\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tauthby=secret\n\tkeyexchange=ikev1\n"+
			"\tike=aes128-sha256-modp2048!\n\tesp=aes128gcm16!\n\ttype=tunnel\n\tleftsubnet=10.1.0.0/24\n\trightsubnet=%s\n"+
			"\tikelifetime=1h\n\tlifetime=20m\n\tkeyingtries=1\n\tauto=add\n\n", c.name, c.remote)
	}
	secrets := "192.0.2.1 192.0.2.2 : PSK \"gosec-e2e-psk\"\n"
	subnets := []netip.Prefix{netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.2.0.0/24"), netip.MustParsePrefix("10.3.0.0/24")}
	leaks := wire.WatchLeaks(t, wire.LeakFilter(subnets...),
		wire.Tap{Label: "gw1", NetNS: tp.ns("gw1"), Iface: "wan0"},
		wire.Tap{Label: "gw2", NetNS: tp.ns("gw2"), Iface: "wan0"})

	gw1 := tp.startDaemon(tp.ns("gw1"), conf.String(), secrets, "--tun-queues", "2")
	gw2 := tp.startDaemon(tp.ns("gw2"), conf.String(), secrets, "--tun-queues", "2")
	for _, name := range []string{"q2", "q3"} {
		if out := gw1.mustCtl("up", name); !strings.Contains(out, "CHILD_SA") {
			t.Fatalf("gosec up %s:\n%s", name, out)
		}
	}
	for _, dst := range []string{"10.2.0.2", "10.3.0.2"} {
		if err := tp.ping(tp.ns("lan1"), dst, 3); err != nil {
			t.Fatal(err)
		}
	}

	size := transferSize() / 2
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for _, dst := range []string{"10.2.0.2", "10.2.0.2", "10.3.0.2", "10.3.0.2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := tp.transfer(tp.ns("lan1"), tp.ns("lan2"), dst, size); err != nil {
				errs <- fmt.Errorf("transfer to %s: %w", dst, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	queues := func(d *daemon) (int, []uint64) {
		var st struct {
			TUNQueues int `json:"tun_queues"`
			Plane     struct {
				TUNQueuePackets []uint64 `json:"tun_queue_packets"`
			} `json:"dataplane"`
		}
		out := d.mustCtl("statusall", "--json")
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			t.Fatalf("statusall --json: %v", err)
		}
		return st.TUNQueues, st.Plane.TUNQueuePackets
	}
	n1, read1 := queues(gw1)
	n2, read2 := queues(gw2)
	t.Logf("packets read per TUN queue: gw1 %v, gw2 %v", read1, read2)
	if n1 != 2 || n2 != 2 || len(read1) != 2 || len(read2) != 2 {
		t.Fatalf("TUN queues: gw1 %d %v, gw2 %d %v; want 2 each", n1, read1, n2, read2)
	}
	// Each transfer is thousands of packets; acknowledgements alone would
	// be hundreds.
	if read1[0] < 1000 || read1[1] < 1000 {
		t.Errorf("gw1 did not read both tunnels' traffic from two queues: %v", read1)
	}
	if min(read2[0], read2[1]) != 0 {
		t.Errorf("gw2's tunnels share destination 10.1.0.0/24 and should share a queue: %v", read2)
	}
	for _, d := range []*daemon{gw1, gw2} {
		for _, name := range []string{"q2", "q3"} {
			st := statusOf(t, d, name)
			if len(st.in.Drops) > 0 || len(st.out.Drops) > 0 || st.in.Packets == 0 {
				t.Errorf("%s %s: in %+v, out %+v", d.ns, name, st.in, st.out)
			}
		}
	}
	checkLeaks(t, leaks, &wire.Timeline{}, map[string]*daemon{"gw1": gw1, "gw2": gw2}, func(wire.Leak) string { return "" })
}
