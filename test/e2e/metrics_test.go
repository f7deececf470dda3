package e2e

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// promSample parses Prometheus text exposition into "name{labels}" ->
// value, labels in the order the client library writes them (sorted).
func promSamples(t testing.TB, text string) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, l := range strings.Split(text, "\n") {
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		i := strings.LastIndexByte(l, ' ')
		v, err := strconv.ParseFloat(l[i+1:], 64)
		if err != nil {
			t.Fatalf("metrics line %q: %v", l, err)
		}
		out[l[:i]] = v
	}
	return out
}

type metricsStatus struct {
	Schema int `json:"schema"`
	Plane  struct {
		InPackets  uint64 `json:"in_packets"`
		OutPackets uint64 `json:"out_packets"`
		InBytes    uint64 `json:"in_bytes"`
		OutBytes   uint64 `json:"out_bytes"`
		Held       uint64 `json:"held"`
		Stalls     uint64 `json:"stalls"`
		Inline     uint64 `json:"inline_batches"`
	} `json:"dataplane"`
	KernelDrops *struct {
		UnknownSPI uint64  `json:"unknown-spi"`
		SPIs       int     `json:"spis"`
		RingBypass *uint64 `json:"ring_bypass"`
	} `json:"kernel_drops"`
	RawPaths *struct {
		Ring *struct {
			Packets     uint64 `json:"packets"`
			NotLocal    uint64 `json:"not_local"`
			BadHeader   uint64 `json:"bad_header"`
			Copied      uint64 `json:"copied"`
			Truncated   uint64 `json:"truncated"`
			KernelDrops uint64 `json:"kernel_drops"`
		} `json:"ring"`
	} `json:"raw_paths"`
	Conns []struct {
		Name     string        `json:"name"`
		State    string        `json:"state"`
		IKEStats *ikeStatsJSON `json:"ike_stats"`
		SAs      []struct {
			SPI          string            `json:"spi"`
			Dir          string            `json:"dir"`
			Proto        string            `json:"proto"`
			Packets      uint64            `json:"packets"`
			Bytes        uint64            `json:"bytes"`
			Seq          uint64            `json:"seq"`
			ReplayWindow int               `json:"replay_window"`
			Drops        map[string]uint64 `json:"drops"`
			LifeLeft     *int64            `json:"life_left_seconds"`
		} `json:"sas"`
	} `json:"conns"`
	IKE          map[string]uint64 `json:"ike_counters"`
	IKEUnmatched *ikeStatsJSON     `json:"ike_unmatched"`
}

// ikeStatsJSON is a conn's ike_stats in statusall --json.
type ikeStatsJSON struct {
	Exchanges   map[string]map[string]uint64 `json:"exchanges"`
	Retransmits map[string]uint64            `json:"retransmits"`
	Latency     map[string]struct {
		Count      uint64   `json:"count"`
		SumSeconds float64  `json:"sum_seconds"`
		Buckets    []uint64 `json:"buckets"`
	} `json:"latency"`
}

// latencyBounds are daemon.LatencyBuckets as the exposition writes them.
var latencyBounds = []string{"0.01", "0.025", "0.1", "0.25", "1", "2.5", "10", "30"}

// wantIKE adds to want the IKE series of conn that statusall's s implies.
func wantIKE(t *testing.T, want map[string]float64, conn string, s *ikeStatsJSON) {
	t.Helper()
	if s == nil {
		return
	}
	for kind, results := range s.Exchanges {
		for result, n := range results {
			want[fmt.Sprintf(`gosec_ike_exchanges_total{conn="%s",exchange="%s",result="%s"}`, conn, kind, result)] = float64(n)
		}
	}
	for kind, n := range s.Retransmits {
		want[fmt.Sprintf(`gosec_ike_retransmits_total{conn="%s",exchange="%s"}`, conn, kind)] = float64(n)
	}
	for kind, h := range s.Latency {
		if len(h.Buckets) != len(latencyBounds) {
			t.Fatalf("conn %s: %d latency buckets in statusall, want %d", conn, len(h.Buckets), len(latencyBounds))
		}
		l := fmt.Sprintf(`conn="%s",exchange="%s"`, conn, kind)
		want["gosec_ike_negotiation_seconds_count{"+l+"}"] = float64(h.Count)
		want["gosec_ike_negotiation_seconds_sum{"+l+"}"] = h.SumSeconds
		for i, le := range latencyBounds {
			want[fmt.Sprintf(`gosec_ike_negotiation_seconds_bucket{%s,le="%s"}`, l, le)] = float64(h.Buckets[i])
		}
		want[fmt.Sprintf(`gosec_ike_negotiation_seconds_bucket{%s,le="+Inf"}`, l)] = float64(h.Count)
	}
}

// TestMetricsEndpoint: two gosec daemons with the Prometheus endpoint on
// (gw1 through metrics= in config setup, gw2 through --metrics) carry
// traffic over an IKE tunnel; every per-SA, per-conn, data-plane and IKE
// value scraped equals what statusall --json says at the same moment, and
// the exchange counters and latency histogram saw the negotiation. Each
// side loses one message on the way out (--impair: gw2 its first MM2, gw1
// its first QM1), so the per-conn retransmission counters see real
// retransmissions: gw1 sends MM1 and QM1 again after their timeouts, gw2
// answers the repeated MM1 with its MM2 again.
func TestMetricsEndpoint(t *testing.T) {
	tp := newTopo(t, "gsp-")
	c := ikeCase{name: "mx", ike: "aes128-sha256-modp2048", esp: "aes128gcm16"}
	secrets := "192.0.2.1 192.0.2.2 : PSK \"gosec-metrics-psk\"\n"
	gw1 := tp.startDaemon(tp.ns("gw1"), "config setup\n\tmetrics=127.0.0.1:9569\n\n"+c.conf(), secrets, "--impair", "drop:QM1")
	gw2 := tp.startDaemon(tp.ns("gw2"), c.conf(), secrets, "--metrics", "127.0.0.1:9570", "--impair", "drop:MM2")
	scrape := func(d *daemon, port string) string {
		t.Helper()
		out, err := tp.run(d.ns, 10*time.Second, "curl", "-sf", "http://127.0.0.1:"+port+"/metrics")
		if err != nil {
			t.Fatalf("%s: scrape: %v\n%s", d.ns, err, out)
		}
		return out
	}
	// Off by default: nothing listens before the tunnel either way, but
	// the endpoint answers.
	if m := promSamples(t, scrape(gw1, "9569")); m["gosec_up"] != 1 {
		t.Fatalf("gosec_up = %v", m["gosec_up"])
	}

	gw1.mustCtl("up", c.name)
	if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 3); err != nil {
		t.Fatal(err)
	}
	if err := tp.transfer(tp.ns("lan1"), tp.ns("lan2"), "10.2.0.2", 1<<20); err != nil {
		t.Fatal(err)
	}

	for _, gw := range []struct {
		d    *daemon
		port string
	}{{gw1, "9569"}, {gw2, "9570"}} {
		d := gw.d
		// statusall, scrape, statusall: compare when nothing moved
		// between the two statusalls (a stray packet could).
		var st metricsStatus
		var m map[string]float64
		for try := 0; ; try++ {
			before := d.mustCtl("statusall", "--json")
			text := scrape(d, gw.port)
			after := d.mustCtl("statusall", "--json")
			if err := json.Unmarshal([]byte(after), &st); err != nil {
				t.Fatal(err)
			}
			m = promSamples(t, text)
			if stableStatus(before) == stableStatus(after) {
				break
			}
			if try == 5 {
				t.Fatalf("%s: status keeps moving", d.ns)
			}
		}
		if st.Schema != 1 {
			t.Fatalf("statusall --json schema = %d", st.Schema)
		}
		want := map[string]float64{
			`gosec_up`: 1,
			`gosec_dataplane_packets_total{dir="in"}`:  float64(st.Plane.InPackets),
			`gosec_dataplane_packets_total{dir="out"}`: float64(st.Plane.OutPackets),
			`gosec_dataplane_bytes_total{dir="in"}`:    float64(st.Plane.InBytes),
			`gosec_dataplane_bytes_total{dir="out"}`:   float64(st.Plane.OutBytes),
			`gosec_conn_up{conn="mx"}`:                 1,
			`gosec_isakmp_sas{state="MAIN_I4"}`:        0,
		}
		want[`gosec_dataplane_held_total`] = float64(st.Plane.Held)
		want[`gosec_dataplane_stalls_total`] = float64(st.Plane.Stalls)
		want[`gosec_dataplane_inline_batches_total`] = float64(st.Plane.Inline)
		if k := st.KernelDrops; k == nil || k.RingBypass == nil {
			t.Errorf("%s: statusall has no kernel_drops with ring_bypass: %+v", d.ns, k)
		} else {
			want[`gosec_kernel_drops_total{reason="unknown-spi"}`] = float64(k.UnknownSPI)
			want[`gosec_kernel_drops_total{reason="ring-bypass"}`] = float64(*k.RingBypass)
			want[`gosec_kernel_spi_filter_spis`] = float64(k.SPIs)
			if *k.RingBypass == 0 || k.SPIs == 0 {
				t.Errorf("%s: the tunnel's traffic kept nothing from the IP stack (ring_bypass %d, %d SPIs)", d.ns, *k.RingBypass, k.SPIs)
			}
		}
		if r := st.RawPaths; r == nil || r.Ring == nil {
			t.Errorf("%s: statusall has no receive ring", d.ns)
		} else {
			g := r.Ring
			for outcome, v := range map[string]uint64{"received": g.Packets, "not_local": g.NotLocal, "bad_header": g.BadHeader,
				"copied": g.Copied, "truncated": g.Truncated, "kernel_drops": g.KernelDrops} {
				want[fmt.Sprintf(`gosec_rx_ring_packets_total{outcome="%s"}`, outcome)] = float64(v)
			}
		}
		if d == gw2 {
			want[`gosec_isakmp_sas{state="MAIN_R3"}`] = 1
			delete(want, `gosec_isakmp_sas{state="MAIN_I4"}`)
		} else {
			want[`gosec_isakmp_sas{state="MAIN_I4"}`] = 1
		}
		var sas int
		for _, cs := range st.Conns {
			var pk, by [2]uint64
			for _, sa := range cs.SAs {
				sas++
				l := fmt.Sprintf(`{conn="%s",dir="%s",proto="%s",spi="%s"}`, cs.Name, sa.Dir, sa.Proto, sa.SPI)
				want["gosec_sa_packets_total"+l] = float64(sa.Packets)
				want["gosec_sa_bytes_total"+l] = float64(sa.Bytes)
				want["gosec_sa_sequence"+l] = float64(sa.Seq)
				want["gosec_sa_replay_window"+l] = float64(sa.ReplayWindow)
				if sa.LifeLeft == nil {
					t.Fatalf("%s: SA %s has no life_left_seconds", d.ns, sa.SPI)
				}
				// Lifetime left moves with the clock between the reads.
				got := m["gosec_sa_lifetime_left_seconds"+l]
				if diff := got - float64(*sa.LifeLeft); diff > 1 || diff < -1 || got < 1000 {
					t.Errorf("%s: lifetime left %v, statusall %d", d.ns, got, *sa.LifeLeft)
				}
				i := 0
				if sa.Dir == "out" {
					i = 1
				}
				pk[i] += sa.Packets
				by[i] += sa.Bytes
				if sa.Packets == 0 {
					t.Errorf("%s: SA %s carried nothing", d.ns, sa.SPI)
				}
			}
			want[fmt.Sprintf(`gosec_conn_packets_total{conn="%s",dir="in"}`, cs.Name)] = float64(pk[0])
			want[fmt.Sprintf(`gosec_conn_packets_total{conn="%s",dir="out"}`, cs.Name)] = float64(pk[1])
			want[fmt.Sprintf(`gosec_conn_bytes_total{conn="%s",dir="in"}`, cs.Name)] = float64(by[0])
			want[fmt.Sprintf(`gosec_conn_bytes_total{conn="%s",dir="out"}`, cs.Name)] = float64(by[1])
		}
		if sas != 2 {
			t.Fatalf("%s: %d SAs in statusall", d.ns, sas)
		}
		for k, v := range st.IKE {
			want[fmt.Sprintf(`gosec_ike_messages_total{outcome="%s"}`, k)] = float64(v)
		}
		var perConn uint64
		for _, cs := range st.Conns {
			wantIKE(t, want, cs.Name, cs.IKEStats)
			if cs.IKEStats != nil {
				for _, n := range cs.IKEStats.Retransmits {
					perConn += n
				}
			}
		}
		wantIKE(t, want, "?", st.IKEUnmatched)
		if st.IKEUnmatched != nil {
			for _, n := range st.IKEUnmatched.Retransmits {
				perConn += n
			}
		}
		// Every retransmission is some conn's.
		if perConn != st.IKE["retransmits"] {
			t.Errorf("%s: %d retransmissions per conn, %d in all", d.ns, perConn, st.IKE["retransmits"])
		}
		for k, v := range want {
			got, ok := m[k]
			if !ok && v != 0 {
				t.Errorf("%s: %s missing (statusall: %v)", d.ns, k, v)
			} else if got != v {
				t.Errorf("%s: %s = %v, statusall says %v", d.ns, k, got, v)
			}
		}
		// What the negotiation was, independently of statusall.
		ones := []string{
			`gosec_ike_exchanges_total{conn="mx",exchange="main",result="established"}`,
			`gosec_ike_exchanges_total{conn="mx",exchange="quick",result="established"}`,
			`gosec_ike_negotiation_seconds_count{conn="mx",exchange="main"}`,
			`gosec_ike_negotiation_seconds_count{conn="mx",exchange="quick"}`,
			// gw1 sent MM1 again (no MM2 came); gw2 answered that repeat.
			`gosec_ike_retransmits_total{conn="mx",exchange="main"}`,
		}
		if d == gw1 {
			// gw1 sent QM1 again (its first was dropped).
			ones = append(ones, `gosec_ike_retransmits_total{conn="mx",exchange="quick"}`)
		} else if v, ok := m[`gosec_ike_retransmits_total{conn="mx",exchange="quick"}`]; ok {
			t.Errorf("%s: %v Quick Mode retransmissions, want none", d.ns, v)
		}
		for _, k := range ones {
			if m[k] != 1 {
				t.Errorf("%s: %s = %v, want 1", d.ns, k, m[k])
			}
		}
		// Main Mode waited for one retransmission (2 s).
		if m[`gosec_ike_negotiation_seconds_bucket{conn="mx",exchange="main",le="1"}`] != 0 ||
			m[`gosec_ike_negotiation_seconds_bucket{conn="mx",exchange="main",le="10"}`] != 1 {
			t.Errorf("%s: Main Mode latency not between 1 and 10 s: %v", d.ns, m[`gosec_ike_negotiation_seconds_sum{conn="mx",exchange="main"}`])
		}
		t.Logf("%s: %d samples scraped; %d checked against statusall", d.ns, len(m), len(want))
	}

	// Down: the SA series go.
	gw1.mustCtl("down", c.name)
	time.Sleep(300 * time.Millisecond)
	for _, gw := range []struct {
		d    *daemon
		port string
	}{{gw1, "9569"}, {gw2, "9570"}} {
		if text := scrape(gw.d, gw.port); regexp.MustCompile(`(?m)^gosec_sa_`).MatchString(text) {
			t.Errorf("%s: SA series remain after down:\n%s", gw.d.ns, text)
		}
	}
}

// stableStatus drops what changes with the clock alone.
func stableStatus(s string) string {
	return regexp.MustCompile(`"(uptime|age_seconds|life_left_seconds|lifetime|last_packet|keep_warm_ticks)": [^,\n]*`).ReplaceAllString(s, "")
}
