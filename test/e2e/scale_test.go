package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil/wire"
)

// scaleConf is n conns between gw1 and gw2, conn i with the subnet pair
// 10.(64+i/256).(i%256).0/30 === 10.(128+i/256).(i%256).0/30 (the shape
// of scripts/bench-scale.sh, which runs the same at 10,000).
func scaleConf(n int, auto string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "conn %%default\n\tkeyexchange=ikev1\n\tauthby=secret\n\tleft=192.0.2.1\n\tright=192.0.2.2\n"+
		"\tike=aes128-sha256-modp2048!\n\tesp=aes128gcm16!\n\tkeyingtries=%%forever\n\tauto=%s\n\n", auto)
	for i := range n {
		fmt.Fprintf(&b, "conn s%d\n\tleftsubnet=10.%d.%d.0/30\n\trightsubnet=10.%d.%d.0/30\n\n", i, 64+i/256, i%256, 128+i/256, i%256)
	}
	return b.String()
}

// scaleStatus is what the test reads of `gosec status --json`.
type scaleStatus struct {
	Conns []struct {
		State string `json:"state"`
	} `json:"conns"`
	ISAKMP []json.RawMessage `json:"isakmp"`
}

func (d *daemon) scaleStatus(t *testing.T) scaleStatus {
	t.Helper()
	var st scaleStatus
	if err := json.Unmarshal([]byte(d.mustCtl("status", "--json")), &st); err != nil {
		t.Fatalf("%s: status --json: %v", d.ns, err)
	}
	return st
}

func (st scaleStatus) installed() (n int) {
	for _, c := range st.Conns {
		if c.State == "installed" {
			n++
		}
	}
	return n
}

// TestScale200: 200 auto=start conns between two gateways all come up
// under one ISAKMP SA, and a random sample of them carries pings between
// addresses inside the LAN namespaces with no cleartext on either WAN.
// (scripts/bench-scale.sh measures 10,000.)
func TestScale200(t *testing.T) {
	const n, sample = 200, 5
	tp := newTopo(t, "gsc-e", "wan-default")
	secrets := "192.0.2.1 192.0.2.2 : PSK \"gsc-scale-test\"\n"
	gw2 := tp.startDaemon(tp.ns("gw2"), scaleConf(n, "add"), secrets)
	w := wire.WatchLeaks(t, wire.LeakFilter(netip.MustParsePrefix("10.64.0.0/10"), netip.MustParsePrefix("10.128.0.0/10")),
		wire.Tap{Label: "gw1", NetNS: tp.ns("gw1"), Iface: "wan0"},
		wire.Tap{Label: "gw2", NetNS: tp.ns("gw2"), Iface: "wan0"})
	gw1 := tp.startDaemon(tp.ns("gw1"), scaleConf(n, "start"), secrets)
	deadline := time.Now().Add(90 * time.Second)
	for {
		a, b := gw1.scaleStatus(t), gw2.scaleStatus(t)
		if a.installed() == n && b.installed() == n {
			if len(a.ISAKMP) != 1 {
				t.Errorf("gw1 holds %d ISAKMP SAs for %d conns to one peer, want 1", len(a.ISAKMP), n)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 90 s: %d of %d conns installed on gw1, %d on gw2", a.installed(), n, b.installed())
		}
		time.Sleep(500 * time.Millisecond)
	}
	tp.must(tp.ns("gw1"), "ip", "route", "add", "10.64.0.0/10", "via", "10.1.0.2")
	tp.must(tp.ns("gw2"), "ip", "route", "add", "10.128.0.0/10", "via", "10.2.0.2")
	for _, i := range rand.Perm(n)[:sample] {
		src := fmt.Sprintf("10.%d.%d.1", 64+i/256, i%256)
		dst := fmt.Sprintf("10.%d.%d.1", 128+i/256, i%256)
		tp.must(tp.ns("lan1"), "ip", "addr", "add", src+"/32", "dev", "eth0")
		tp.must(tp.ns("lan2"), "ip", "addr", "add", dst+"/32", "dev", "eth0")
		if out, err := tp.run(tp.ns("lan1"), 15*time.Second, "ping", "-c", "3", "-i", "0.2", "-W", "2", "-I", src, dst); err != nil {
			t.Errorf("conn s%d: ping %s -> %s: %v\n%s", i, src, dst, err, out)
		}
	}
	leaks, problems := w.Stop()
	if len(leaks) > 0 || len(problems) > 0 {
		t.Errorf("cleartext on the WAN:\n%s", wire.Report(leaks, problems, &wire.Timeline{}, nil))
	}
}
