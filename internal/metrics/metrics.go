// Package metrics is gosec's Prometheus endpoint. Everything is read
// from the daemon's status snapshot at scrape time by a custom Collector,
// so a series exists exactly as long as what it counts: nothing labelled
// by SPI outlives the SA, the IKE series of a conn (exchanges by kind and
// result, retransmissions, the negotiation latency histogram) go when a
// reload removes the conn, and thousands of tunnels cost nothing between
// scrapes. The peer label of the IKE series is the conn's name, never
// the peer's address: their number is bounded by the configuration, not
// by the peers seen.
package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/gosec-ipsec/gosec/internal/daemon"
)

// Source returns the daemon's status (statusall's data); nil while the
// daemon is not running yet.
type Source func() *daemon.Status

// Metrics holds the registry, the exchange counters and the snapshot
// collector.
type Metrics struct {
	reg    *prometheus.Registry
	source atomic.Pointer[Source]
}

// New builds the registry (with the Go runtime and process collectors).
func New() *Metrics {
	m := &Metrics{reg: prometheus.NewRegistry()}
	m.reg.MustRegister(snapshotCollector{m},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// SetSource tells the collector where to read the status from.
func (m *Metrics) SetSource(s Source) { m.source.Store(&s) }

// Handler serves the registry in the Prometheus exposition format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// Listen opens the endpoint's socket (before privileges are dropped).
func Listen(addr string) (net.Listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics: %w", err)
	}
	return ln, nil
}

// Serve serves /metrics on ln until ctx ends.
func (m *Metrics) Serve(ctx context.Context, ln net.Listener, log *slog.Logger) error {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shut, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(shut)
	}()
	log.Info("metrics endpoint", "addr", ln.Addr().String())
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}

// Descriptions of the snapshot's metrics.
var (
	descUp          = prometheus.NewDesc("gosec_up", "1 while the daemon answers.", nil, nil)
	descPlanePkts   = prometheus.NewDesc("gosec_dataplane_packets_total", "Packets through the data plane by direction (in: opened, out: sealed).", []string{"dir"}, nil)
	descPlaneBytes  = prometheus.NewDesc("gosec_dataplane_bytes_total", "Bytes through the data plane by direction.", []string{"dir"}, nil)
	descBypassed    = prometheus.NewDesc("gosec_dataplane_bypassed_total", "Packets that bypassed IPsec by policy.", nil, nil)
	descSendErrors  = prometheus.NewDesc("gosec_dataplane_send_errors_total", "Packets the data plane could not send.", nil, nil)
	descTUNQueue    = prometheus.NewDesc("gosec_dataplane_tun_queue_packets_total", "Packets read from each TUN queue (queues are steered per destination prefix).", []string{"queue"}, nil)
	descKeepWarm    = prometheus.NewDesc("gosec_dataplane_keep_warm_wakeups_total", "Keep-warm timer wake-ups of the data plane (gosec start --keep-warm): what the lower latency of sparse packets has cost.", nil, nil)
	descHeld        = prometheus.NewDesc("gosec_dataplane_held_total", "Packets held by a trap policy until their SA existed.", nil, nil)
	descStalls      = prometheus.NewDesc("gosec_dataplane_stalls_total", "Times a reader found all its batches in flight and waited for one (back-pressure: the kernel's queue holds what arrives meanwhile).", nil, nil)
	descInline      = prometheus.NewDesc("gosec_dataplane_inline_batches_total", "Batches a reader sealed or opened itself instead of handing them to the crypto workers.", nil, nil)
	descKernelDrops = prometheus.NewDesc("gosec_kernel_drops_total", "Packets the kernel dropped for gosec before its sockets, by reason (unknown-spi: the SPI filter; ring-bypass: ESP/AH the receive ring took, kept from the IP stack's second pass).", []string{"reason"}, nil)
	descKernelSPIs  = prometheus.NewDesc("gosec_kernel_spi_filter_spis", "SPIs the kernel's unknown-SPI filter lets through.", nil, nil)
	descRing        = prometheus.NewDesc("gosec_rx_ring_packets_total", "Packets at the AF_PACKET receive ring, by outcome (received, not_local, bad_header, copied, truncated, kernel_drops: the ring was full).", []string{"outcome"}, nil)
	descDrops       = prometheus.NewDesc("gosec_drops_total", "Packets dropped, by reason (all SAs and none).", []string{"reason"}, nil)
	descNATT        = prometheus.NewDesc("gosec_natt_received_total", "Non-ESP datagrams on the NAT-T port, by kind.", []string{"kind"}, nil)
	descConnUp      = prometheus.NewDesc("gosec_conn_up", "1 when the conn has SAs installed.", []string{"conn"}, nil)
	descConnSAs     = prometheus.NewDesc("gosec_conn_sas", "SAs installed for the conn.", []string{"conn"}, nil)
	descCleartext   = prometheus.NewDesc("gosec_conn_cleartext_dropped_total", "Cleartext packets from the conn's protected peers dropped by the filter.", []string{"conn"}, nil)
	descConnPkts    = prometheus.NewDesc("gosec_conn_packets_total", "Packets of the conn's current SAs, by direction.", []string{"conn", "dir"}, nil)
	descConnBytes   = prometheus.NewDesc("gosec_conn_bytes_total", "Bytes of the conn's current SAs, by direction.", []string{"conn", "dir"}, nil)
	descSAPkts      = prometheus.NewDesc("gosec_sa_packets_total", "Packets of one SA.", saLabels, nil)
	descSABytes     = prometheus.NewDesc("gosec_sa_bytes_total", "Bytes of one SA.", saLabels, nil)
	descSADrops     = prometheus.NewDesc("gosec_sa_drops_total", "Packets of one SA dropped, by reason.", append(saLabels, "reason"), nil)
	descSASeq       = prometheus.NewDesc("gosec_sa_sequence", "Highest sequence number accepted (in) or sent (out).", saLabels, nil)
	descSAReplay    = prometheus.NewDesc("gosec_sa_replay_window", "Anti-replay window size in packets (0: off).", saLabels, nil)
	descSALifeSecs  = prometheus.NewDesc("gosec_sa_lifetime_left_seconds", "Seconds until the SA's hard lifetime ends.", saLabels, nil)
	descSALifeBytes = prometheus.NewDesc("gosec_sa_lifetime_left_bytes", "Bytes until the SA's hard byte lifetime ends.", saLabels, nil)
	descISAKMP      = prometheus.NewDesc("gosec_isakmp_sas", "Phase-1 SAs by state.", []string{"state"}, nil)
	descISAKMPLife  = prometheus.NewDesc("gosec_isakmp_lifetime_left_seconds", "Seconds until an established phase-1 SA's lifetime ends.", []string{"conn", "icookie"}, nil)
	descIKEMsgs     = prometheus.NewDesc("gosec_ike_messages_total", "IKE messages by outcome (received, sent, retransmits, malformed, ...).", []string{"outcome"}, nil)
	descExchanges   = prometheus.NewDesc("gosec_ike_exchanges_total", "IKE exchanges of a conn (\"?\": no conn known) by kind (main, quick, dpd) and result (established, rekeyed, failed, timeout, alive, dead).", []string{"conn", "exchange", "result"}, nil)
	descRetransmits = prometheus.NewDesc("gosec_ike_retransmits_total", "IKE messages of a conn sent again, by exchange (main, quick): requests after a timeout, answers to a repeated request.", []string{"conn", "exchange"}, nil)
	descLatency     = prometheus.NewDesc("gosec_ike_negotiation_seconds", "Duration of a conn's successful negotiations, first to last message, by exchange (main: Main Mode, quick: Quick Mode).", []string{"conn", "exchange"}, nil)
	descHalfOpen    = prometheus.NewDesc("gosec_ike_half_open", "Phase-1 SAs still negotiating.", nil, nil)
	descQueue       = prometheus.NewDesc("gosec_ike_queue_depth", "Events waiting for the key manager.", nil, nil)
)

var saLabels = []string{"conn", "spi", "dir", "proto"}

// snapshotCollector turns one status snapshot into metrics.
type snapshotCollector struct{ m *Metrics }

func (c snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descUp, descPlanePkts, descPlaneBytes, descBypassed, descSendErrors, descTUNQueue, descKeepWarm,
		descHeld, descStalls, descInline, descKernelDrops, descKernelSPIs, descRing, descDrops, descNATT,
		descConnUp, descConnSAs, descCleartext, descConnPkts, descConnBytes, descSAPkts, descSABytes, descSADrops, descSASeq, descSAReplay,
		descSALifeSecs, descSALifeBytes, descISAKMP, descISAKMPLife, descIKEMsgs, descExchanges, descRetransmits, descLatency, descHalfOpen, descQueue} {
		ch <- d
	}
}

func (c snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	src := c.m.source.Load()
	var st *daemon.Status
	if src != nil {
		st = (*src)()
	}
	if st == nil {
		ch <- prometheus.MustNewConstMetric(descUp, prometheus.GaugeValue, 0)
		return
	}
	collectStatus(ch, st)
}

func counter(ch chan<- prometheus.Metric, d *prometheus.Desc, v uint64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
}

func gauge(ch chan<- prometheus.Metric, d *prometheus.Desc, v float64, labels ...string) {
	ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
}

// collectStatus emits the metrics of one snapshot.
func collectStatus(ch chan<- prometheus.Metric, st *daemon.Status) {
	gauge(ch, descUp, 1)
	p := st.Plane
	counter(ch, descPlanePkts, p.InPackets, "in")
	counter(ch, descPlanePkts, p.OutPackets, "out")
	counter(ch, descPlaneBytes, p.InBytes, "in")
	counter(ch, descPlaneBytes, p.OutBytes, "out")
	counter(ch, descBypassed, p.Bypassed)
	counter(ch, descSendErrors, p.SendErrors)
	for i, n := range p.TUNQueuePackets {
		counter(ch, descTUNQueue, n, strconv.Itoa(i))
	}
	counter(ch, descKeepWarm, p.KeepWarmTicks)
	counter(ch, descHeld, p.Held)
	counter(ch, descStalls, p.Stalls)
	counter(ch, descInline, p.Inline)
	if k := st.KernelDrops; k != nil {
		counter(ch, descKernelDrops, k.UnknownSPI, "unknown-spi")
		if k.RingBypass != nil {
			counter(ch, descKernelDrops, *k.RingBypass, "ring-bypass")
		}
		gauge(ch, descKernelSPIs, float64(k.SPIs))
	}
	if r := st.RawPaths; r != nil && r.Ring != nil {
		g := r.Ring
		counter(ch, descRing, g.Packets, "received")
		counter(ch, descRing, g.NotLocal, "not_local")
		counter(ch, descRing, g.BadHeader, "bad_header")
		counter(ch, descRing, g.Copied, "copied")
		counter(ch, descRing, g.Truncated, "truncated")
		counter(ch, descRing, g.KernelDrops, "kernel_drops")
	}
	for reason, n := range st.Drops {
		counter(ch, descDrops, n, reason)
	}
	counter(ch, descNATT, st.NATT.Keepalives, "keepalive")
	counter(ch, descNATT, st.NATT.IKE, "ike")
	counter(ch, descNATT, st.NATT.Invalid, "invalid")
	for _, c := range st.Conns {
		up := 0.0
		if c.State == "installed" {
			up = 1
		}
		gauge(ch, descConnUp, up, c.Name)
		gauge(ch, descConnSAs, float64(len(c.SAs)), c.Name)
		counter(ch, descCleartext, c.Cleartext, c.Name)
		var pkts, bytes [2]uint64
		for _, sa := range c.SAs {
			i := 0
			if sa.Dir == "out" {
				i = 1
			}
			pkts[i] += sa.Packets
			bytes[i] += sa.Bytes
			l := []string{c.Name, sa.SPI, sa.Dir, sa.Proto}
			counter(ch, descSAPkts, sa.Packets, l...)
			counter(ch, descSABytes, sa.Bytes, l...)
			for reason, n := range sa.Drops {
				counter(ch, descSADrops, n, append(l, reason)...)
			}
			gauge(ch, descSASeq, float64(sa.Seq), l...)
			gauge(ch, descSAReplay, float64(sa.ReplayWindow), l...)
			if sa.LifeLeftSeconds != nil {
				gauge(ch, descSALifeSecs, float64(*sa.LifeLeftSeconds), l...)
			}
			if sa.LifeLeftBytes != nil {
				gauge(ch, descSALifeBytes, float64(*sa.LifeLeftBytes), l...)
			}
		}
		collectIKE(ch, c.Name, c.IKEStats)
		if c.State == "installed" {
			counter(ch, descConnPkts, pkts[0], c.Name, "in")
			counter(ch, descConnPkts, pkts[1], c.Name, "out")
			counter(ch, descConnBytes, bytes[0], c.Name, "in")
			counter(ch, descConnBytes, bytes[1], c.Name, "out")
		}
	}
	states := map[string]int{}
	for _, s := range st.ISAKMP {
		states[s.State]++
		if s.LifeLeftSeconds > 0 {
			gauge(ch, descISAKMPLife, float64(s.LifeLeftSeconds), s.Conn, s.ICookie)
		}
	}
	for state, n := range states {
		gauge(ch, descISAKMP, float64(n), state)
	}
	for outcome, n := range st.IKE {
		counter(ch, descIKEMsgs, n, outcome)
	}
	collectIKE(ch, daemon.UnmatchedConn, st.IKEUnmatched)
	gauge(ch, descHalfOpen, float64(st.IKEHalfOpen))
	gauge(ch, descQueue, float64(st.IKEQueue))
}

// collectIKE emits the IKE series of one conn.
func collectIKE(ch chan<- prometheus.Metric, conn string, s *daemon.IKEConnStats) {
	if s == nil {
		return
	}
	for kind, results := range s.Exchanges {
		for result, n := range results {
			counter(ch, descExchanges, n, conn, kind, result)
		}
	}
	for kind, n := range s.Retransmits {
		counter(ch, descRetransmits, n, conn, kind)
	}
	for kind, h := range s.Latency {
		buckets := make(map[float64]uint64, len(daemon.LatencyBuckets))
		for i, le := range daemon.LatencyBuckets {
			if i < len(h.Buckets) {
				buckets[le] = h.Buckets[i]
			}
		}
		ch <- prometheus.MustNewConstHistogram(descLatency, h.Count, h.SumSeconds, buckets, conn, kind)
	}
}
