package netio

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// scaleConns are n conns with a /30 each, as scripts/bench-scale.sh gives
// them (10.(64+i/256).(i%256).0/30), none of them matching 10.232.0.0/16.
func scaleConns(n int) []ConnPrefixes {
	conns := make([]ConnPrefixes, n)
	for i := range conns {
		conns[i] = ConnPrefixes{Name: fmt.Sprintf("c%d", i),
			Remotes: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(64 + i/256), byte(i % 256), 0}), 30)}}
	}
	return conns
}

// BenchmarkFilterForward measures what the Filter costs traffic it does
// not drop: a gateway namespace (gns-g) between a sender (gns-a) and a
// receiver (gns-b) holds a Filter with N conns whose prefixes do not
// match the traffic, and each iteration measures one TCP stream
// (iperf3, 2 s) and ping's round trip through it. It also reports what
// changing the filter costs at that size: writing the N conns
// (AddConns), adding then removing a conn with a prefix of its own
// (AddConn and RemoveConn: a responder's first SA, a conn going down) and
// adding one that shares a prefix with another, and reading the counters
// (Counts, for status). Run it
// alone, as root, under the shared lock:
//
//	flock /tmp/gosec-roottests.lock go test -run XXX -bench FilterForward -benchtime 1x ./internal/netio/
func BenchmarkFilterForward(b *testing.B) {
	testutil.NeedRoot(b)
	for _, tool := range []string{"iperf3", "ping"} {
		if _, err := exec.LookPath(tool); err != nil {
			b.Skipf("%s not installed", tool)
		}
	}
	for _, n := range []int{0, 1000, 10000} {
		b.Run(fmt.Sprintf("conns=%d", n), func(b *testing.B) { benchFilterForward(b, n) })
	}
}

func benchFilterForward(b *testing.B, n int) {
	nettest.NewNS(b, "gns-a")
	nettest.NewNS(b, "gns-g")
	nettest.NewNS(b, "gns-b")
	nettest.Veth(b, nettest.End{Name: "gns-ag", NS: "gns-a", Addr: netip.MustParsePrefix("10.232.1.2/24")},
		nettest.End{Name: "gns-ga", NS: "gns-g", Addr: netip.MustParsePrefix("10.232.1.1/24")})
	nettest.Veth(b, nettest.End{Name: "gns-gb", NS: "gns-g", Addr: netip.MustParsePrefix("10.232.2.1/24")},
		nettest.End{Name: "gns-bg", NS: "gns-b", Addr: netip.MustParsePrefix("10.232.2.2/24")})
	nettest.MustExec(b, "gns-g", "sysctl", "-qw", "net.ipv4.ip_forward=1")
	nettest.MustExec(b, "gns-a", "ip", "route", "add", "10.232.2.0/24", "via", "10.232.1.1")
	nettest.MustExec(b, "gns-b", "ip", "route", "add", "10.232.1.0/24", "via", "10.232.2.1")

	var f *Filter
	nettest.MustDo(b, "gns-g", func() (err error) {
		f, err = NewFilter(FilterConfig{Table: "gns-f", TUN: "gns-tun", Mark: 0x77})
		return err
	})
	defer f.Close()
	start := time.Now()
	if errs := f.AddConns(scaleConns(n)); errs != nil {
		b.Fatalf("AddConns: %d errors, e.g. %v", len(errs), errs)
	}
	build := time.Since(start)
	// 20 conns more, each with a prefix of its own, added and then
	// removed: the cost of a change at this size (a responder's conn at
	// its first SA, a conn going down). Then 20 that share one prefix
	// with a conn already there (their ownership of an existing element
	// changes: the counters are read).
	const changes = 20
	own := func(i int) []netip.Prefix {
		return []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, byte(i), 0}), 30)}
	}
	start = time.Now()
	for i := range changes {
		if err := f.AddConn(fmt.Sprintf("x%d", i), own(i)); err != nil {
			b.Fatal(err)
		}
	}
	add := time.Since(start) / changes
	start = time.Now()
	for i := range changes {
		if err := f.RemoveConn(fmt.Sprintf("x%d", i)); err != nil {
			b.Fatal(err)
		}
	}
	remove := time.Since(start) / changes
	if err := f.AddConn("shared", own(0)); err != nil {
		b.Fatal(err)
	}
	start = time.Now()
	for i := range changes {
		if err := f.AddConn(fmt.Sprintf("s%d", i), own(0)); err != nil {
			b.Fatal(err)
		}
	}
	addShared := time.Since(start) / changes
	start = time.Now()
	if _, err := f.Counts(); err != nil {
		b.Fatal(err)
	}
	counts := time.Since(start)

	srv := exec.Command("ip", "netns", "exec", "gns-b", "iperf3", "-s", "-p", "5299")
	if err := srv.Start(); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = srv.Process.Kill(); _ = srv.Wait() }()
	time.Sleep(300 * time.Millisecond)
	var bps, rtt float64
	b.ResetTimer()
	for range b.N {
		out := nettest.MustExec(b, "gns-a", "iperf3", "-c", "10.232.2.2", "-p", "5299", "-t", "2", "-J")
		var res struct {
			End struct {
				SumReceived struct {
					BitsPerSecond float64 `json:"bits_per_second"`
				} `json:"sum_received"`
			} `json:"end"`
		}
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			b.Fatalf("iperf3: %v: %s", err, out)
		}
		bps += res.End.SumReceived.BitsPerSecond
		out = nettest.MustExec(b, "gns-a", "ping", "-q", "-c", "200", "-i", "0.002", "10.232.2.2")
		m := regexp.MustCompile(`= [0-9.]+/([0-9.]+)/`).FindStringSubmatch(out)
		if m == nil {
			b.Fatalf("ping: %s", out)
		}
		v, _ := strconv.ParseFloat(m[1], 64)
		rtt += v
	}
	b.StopTimer()
	b.ReportMetric(bps/float64(b.N)/1e6, "Mbit/s")
	b.ReportMetric(rtt/float64(b.N)*1000, "rtt-us")
	b.ReportMetric(float64(build.Milliseconds()), "addconns-ms")
	b.ReportMetric(float64(add.Microseconds()), "addconn-us")
	b.ReportMetric(float64(remove.Microseconds()), "removeconn-us")
	b.ReportMetric(float64(addShared.Microseconds()), "addconn-shared-us")
	b.ReportMetric(float64(counts.Microseconds()), "counts-us")
}
