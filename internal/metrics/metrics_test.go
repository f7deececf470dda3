package metrics

import (
	"encoding/json"
	"io"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/internal/daemon"
	"github.com/gosec-ipsec/gosec/internal/dataplane"
	"github.com/gosec-ipsec/gosec/internal/netio"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestSnapshotSeries(t *testing.T) {
	life := int64(1190)
	ringBypass := uint64(17)
	st := &daemon.Status{
		Drops:       map[string]uint64{"icv": 3},
		Plane:       dataplane.StatsSnapshot{TUNQueuePackets: []uint64{5, 7}, KeepWarmTicks: 42, Held: 1, Stalls: 8, Inline: 9},
		KernelDrops: &daemon.KernelDropsStatus{UnknownSPI: 13, SPIs: 2, RingBypass: &ringBypass},
		RawPaths:    &daemon.RawPathStatus{Ring: &netio.RingStats{Packets: 20, NotLocal: 1, BadHeader: 2, Copied: 3, Truncated: 4, KernelDrops: 5}},
		Conns: []daemon.ConnStatus{{
			Name: "net", State: "installed", Cleartext: 2,
			IKEStats: &daemon.IKEConnStats{
				Exchanges:   map[string]map[string]uint64{"main": {"established": 1}, "quick": {"rekeyed": 1}},
				Retransmits: map[string]uint64{"quick": 2},
				Latency: map[string]*daemon.LatencyHistogram{
					"main":  {Count: 1, SumSeconds: 0.03, Buckets: []uint64{0, 0, 1, 1, 1, 1, 1, 1}},
					"quick": {Count: 1, SumSeconds: 0.004, Buckets: []uint64{1, 1, 1, 1, 1, 1, 1, 1}},
				},
			},
			SAs: []daemon.SAStatus{
				{SPI: "c0ffee01", Dir: "in", Proto: "esp", Packets: 10, Bytes: 1000, Seq: 10, ReplayWindow: 64, Drops: map[string]uint64{"replay": 1}, LifeLeftSeconds: &life},
				{SPI: "c0ffee02", Dir: "out", Proto: "esp", Packets: 12, Bytes: 1200, Seq: 12},
			},
		}, {Name: "idle", State: "down"}},
		ISAKMP:       []ike.ISAKMPStatus{{Conn: "net", State: "MAIN_I4", ICookie: "0102030405060708", LifeLeftSeconds: 3500}, {State: "MAIN_R1"}},
		IKE:          map[string]uint64{"retransmits": 4},
		IKEUnmatched: &daemon.IKEConnStats{Exchanges: map[string]map[string]uint64{"main": {"failed": 3}}},
		IKEHalfOpen:  1,
	}
	var cur *daemon.Status = st
	m := New()
	m.SetSource(func() *daemon.Status { return cur })
	out := scrape(t, m)
	for _, want := range []string{
		`gosec_up 1`,
		`gosec_drops_total{reason="icv"} 3`,
		`gosec_dataplane_tun_queue_packets_total{queue="0"} 5`,
		`gosec_dataplane_tun_queue_packets_total{queue="1"} 7`,
		`gosec_dataplane_keep_warm_wakeups_total 42`,
		`gosec_dataplane_held_total 1`,
		`gosec_dataplane_stalls_total 8`,
		`gosec_dataplane_inline_batches_total 9`,
		`gosec_kernel_drops_total{reason="unknown-spi"} 13`,
		`gosec_kernel_drops_total{reason="ring-bypass"} 17`,
		`gosec_kernel_spi_filter_spis 2`,
		`gosec_rx_ring_packets_total{outcome="received"} 20`,
		`gosec_rx_ring_packets_total{outcome="not_local"} 1`,
		`gosec_rx_ring_packets_total{outcome="bad_header"} 2`,
		`gosec_rx_ring_packets_total{outcome="copied"} 3`,
		`gosec_rx_ring_packets_total{outcome="truncated"} 4`,
		`gosec_rx_ring_packets_total{outcome="kernel_drops"} 5`,
		`gosec_conn_up{conn="idle"} 0`,
		`gosec_conn_up{conn="net"} 1`,
		`gosec_conn_cleartext_dropped_total{conn="net"} 2`,
		`gosec_conn_packets_total{conn="net",dir="in"} 10`,
		`gosec_conn_bytes_total{conn="net",dir="out"} 1200`,
		`gosec_sa_packets_total{conn="net",dir="in",proto="esp",spi="c0ffee01"} 10`,
		`gosec_sa_bytes_total{conn="net",dir="out",proto="esp",spi="c0ffee02"} 1200`,
		`gosec_sa_drops_total{conn="net",dir="in",proto="esp",reason="replay",spi="c0ffee01"} 1`,
		`gosec_sa_replay_window{conn="net",dir="in",proto="esp",spi="c0ffee01"} 64`,
		`gosec_sa_sequence{conn="net",dir="out",proto="esp",spi="c0ffee02"} 12`,
		`gosec_sa_lifetime_left_seconds{conn="net",dir="in",proto="esp",spi="c0ffee01"} 1190`,
		`gosec_isakmp_sas{state="MAIN_I4"} 1`,
		`gosec_isakmp_lifetime_left_seconds{conn="net",icookie="0102030405060708"} 3500`,
		`gosec_ike_messages_total{outcome="retransmits"} 4`,
		`gosec_ike_half_open 1`,
		`gosec_ike_exchanges_total{conn="net",exchange="main",result="established"} 1`,
		`gosec_ike_exchanges_total{conn="net",exchange="quick",result="rekeyed"} 1`,
		`gosec_ike_exchanges_total{conn="?",exchange="main",result="failed"} 3`,
		`gosec_ike_retransmits_total{conn="net",exchange="quick"} 2`,
		`gosec_ike_negotiation_seconds_bucket{conn="net",exchange="main",le="0.1"} 1`,
		`gosec_ike_negotiation_seconds_bucket{conn="net",exchange="main",le="0.025"} 0`,
		`gosec_ike_negotiation_seconds_bucket{conn="net",exchange="quick",le="0.01"} 1`,
		`gosec_ike_negotiation_seconds_bucket{conn="net",exchange="quick",le="+Inf"} 1`,
		`gosec_ike_negotiation_seconds_count{conn="net",exchange="quick"} 1`,
		`gosec_ike_negotiation_seconds_sum{conn="net",exchange="main"} 0.03`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("missing %s", want)
		}
	}
	if t.Failed() {
		t.Logf("scrape:\n%s", out)
	}

	// The SA goes: its series go with it.
	cur = &daemon.Status{Conns: []daemon.ConnStatus{{Name: "net", State: "down", IKEStats: st.Conns[0].IKEStats}}}
	out = scrape(t, m)
	if strings.Contains(out, "c0ffee01") || strings.Contains(out, "gosec_sa_") {
		t.Fatalf("series of a removed SA remain:\n%s", out)
	}
	if !strings.Contains(out, `gosec_ike_retransmits_total{conn="net",exchange="quick"} 2`) {
		t.Fatalf("the conn's IKE series went with its SA:\n%s", out)
	}
	// A reload removes the conn: its IKE series go too.
	cur = &daemon.Status{Conns: []daemon.ConnStatus{{Name: "other", State: "down"}}}
	out = scrape(t, m)
	if strings.Contains(out, `conn="net"`) || strings.Contains(out, "gosec_ike_exchanges_total") {
		t.Fatalf("series of a removed conn remain:\n%s", out)
	}
}

func TestNoSource(t *testing.T) {
	out := scrape(t, New())
	if !strings.Contains(out, "gosec_up 0\n") {
		t.Fatalf("without a daemon: %s", out)
	}
}

// TestDashboardNamesExist: every metric the Grafana dashboard in dist/
// queries is one this package exports.
func TestDashboardNamesExist(t *testing.T) {
	data, err := os.ReadFile("../../dist/grafana/gosec-dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	var dash struct {
		Panels []struct {
			Title   string
			Targets []struct{ Expr string }
		}
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatal(err)
	}
	m := New()
	descs := make(chan *prometheus.Desc, 100)
	go func() { m.reg.Describe(descs); close(descs) }()
	known := map[string]bool{}
	for d := range descs {
		if n := regexp.MustCompile(`fqName: "([^"]+)"`).FindStringSubmatch(d.String()); n != nil {
			known[n[1]] = true
		}
	}
	for _, p := range dash.Panels {
		for _, tg := range p.Targets {
			for _, name := range regexp.MustCompile(`gosec_[a-z_]+`).FindAllString(tg.Expr, -1) {
				base := strings.TrimSuffix(strings.TrimSuffix(strings.TrimSuffix(name, "_bucket"), "_count"), "_sum")
				if !known[name] && !known[base] {
					t.Errorf("panel %q queries %s, which gosec does not export", p.Title, name)
				}
			}
		}
	}
	if len(known) < 20 {
		t.Fatalf("only %d metric names described", len(known))
	}
}
