package daemon

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/gosec-ipsec/gosec/ike"
)

// LatencyBuckets are the upper bounds, in seconds, of the buckets of the
// negotiation latency histograms (IKEConnStats.Latency): milliseconds on
// a LAN, tens to hundreds over a WAN, seconds once a message had to be
// retransmitted (the first retransmission waits 2 s).
var LatencyBuckets = []float64{0.01, 0.025, 0.1, 0.25, 1, 2.5, 10, 30}

// UnmatchedConn is the name under which exchanges are counted while the
// engine knows no conn for them (a Main Mode responder before it found
// one, a peer no conn accepts).
const UnmatchedConn = "?"

// IKEConnStats is how the IKE exchanges of one conn went since the conn
// was loaded (a conn removed from ipsec.conf takes its counts with it; a
// conn that reappears starts again from zero).
type IKEConnStats struct {
	// Exchanges counts finished exchanges by kind ("main", "quick",
	// "dpd") and result ("established", "rekeyed", "failed", "timeout",
	// "alive", "dead").
	Exchanges map[string]map[string]uint64 `json:"exchanges,omitempty"`
	// Retransmits counts messages sent again, by exchange kind ("main",
	// "quick"): requests after a timeout and answers to a repeated
	// request.
	Retransmits map[string]uint64 `json:"retransmits,omitempty"`
	// Latency is the histogram of successful Main Mode and Quick Mode
	// negotiations, by kind.
	Latency map[string]*LatencyHistogram `json:"latency,omitempty"`
}

// LatencyHistogram is a latency histogram over LatencyBuckets.
type LatencyHistogram struct {
	Count      uint64  `json:"count"`
	SumSeconds float64 `json:"sum_seconds"`
	// Buckets[i] is how many took at most LatencyBuckets[i] seconds
	// (cumulative, as Prometheus counts).
	Buckets []uint64 `json:"buckets"`
}

// Text is s in one line: "main established 1; quick established 2
// rekeyed 1; retransmits main 1; latency main avg 12ms".
func (s *IKEConnStats) Text() string {
	var parts []string
	for _, kind := range slices.Sorted(maps.Keys(s.Exchanges)) {
		p := kind
		for _, result := range slices.Sorted(maps.Keys(s.Exchanges[kind])) {
			p += fmt.Sprintf(" %s %d", result, s.Exchanges[kind][result])
		}
		parts = append(parts, p)
	}
	if len(s.Retransmits) > 0 {
		p := "retransmits"
		for _, kind := range slices.Sorted(maps.Keys(s.Retransmits)) {
			p += fmt.Sprintf(" %s %d", kind, s.Retransmits[kind])
		}
		parts = append(parts, p)
	}
	for _, kind := range slices.Sorted(maps.Keys(s.Latency)) {
		if h := s.Latency[kind]; h.Count > 0 {
			avg := time.Duration(h.SumSeconds / float64(h.Count) * float64(time.Second))
			parts = append(parts, fmt.Sprintf("latency %s avg %s", kind, avg.Round(time.Millisecond)))
		}
	}
	return strings.Join(parts, "; ")
}

// empty reports whether nothing was counted.
func (s *IKEConnStats) empty() bool {
	return len(s.Exchanges) == 0 && len(s.Retransmits) == 0 && len(s.Latency) == 0
}

// clone is a deep copy of s (nil for an empty s).
func (s *IKEConnStats) clone() *IKEConnStats {
	if s == nil || s.empty() {
		return nil
	}
	c := &IKEConnStats{Retransmits: maps.Clone(s.Retransmits)}
	if s.Exchanges != nil {
		c.Exchanges = map[string]map[string]uint64{}
		for k, v := range s.Exchanges {
			c.Exchanges[k] = maps.Clone(v)
		}
	}
	if s.Latency != nil {
		c.Latency = map[string]*LatencyHistogram{}
		for k, h := range s.Latency {
			hc := *h
			hc.Buckets = append([]uint64(nil), h.Buckets...)
			c.Latency[k] = &hc
		}
	}
	return c
}

// ikeStats counts IKE exchanges per conn. Only the conns of the loaded
// configuration (and UnmatchedConn) have counts, so the number of entries
// (and of metric series) is bounded by the configuration: setConns drops
// the conns that a reload removed, and an event for a conn that is no
// longer configured counts under UnmatchedConn. It has its own lock: the
// engine reports from its goroutine, which must never wait for d.mu.
type ikeStats struct {
	mu    sync.Mutex
	conns map[string]*IKEConnStats
}

// setConns makes names (and UnmatchedConn) the conns that have counts,
// keeping the counts of those that had some.
func (s *ikeStats) setConns(names []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := make(map[string]*IKEConnStats, len(names)+1)
	for _, n := range append(names, UnmatchedConn) {
		if c, ok := s.conns[n]; ok {
			next[n] = c
		} else {
			next[n] = &IKEConnStats{}
		}
	}
	s.conns = next
}

// entry returns conn's counts, UnmatchedConn's for a conn not loaded.
// Call with s.mu held.
func (s *ikeStats) entry(conn string) *IKEConnStats {
	if c, ok := s.conns[conn]; ok {
		return c
	}
	if s.conns == nil {
		s.conns = map[string]*IKEConnStats{}
	}
	c, ok := s.conns[UnmatchedConn]
	if !ok {
		c = &IKEConnStats{}
		s.conns[UnmatchedConn] = c
	}
	return c
}

func (s *ikeStats) exchange(ev ike.ExchangeEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.entry(ev.Conn)
	if c.Exchanges == nil {
		c.Exchanges = map[string]map[string]uint64{}
	}
	if c.Exchanges[ev.Kind] == nil {
		c.Exchanges[ev.Kind] = map[string]uint64{}
	}
	c.Exchanges[ev.Kind][ev.Result]++
	if ev.Latency <= 0 {
		return
	}
	if c.Latency == nil {
		c.Latency = map[string]*LatencyHistogram{}
	}
	h := c.Latency[ev.Kind]
	if h == nil {
		h = &LatencyHistogram{Buckets: make([]uint64, len(LatencyBuckets))}
		c.Latency[ev.Kind] = h
	}
	secs := ev.Latency.Seconds()
	h.Count++
	h.SumSeconds += secs
	for i, le := range LatencyBuckets {
		if secs <= le {
			h.Buckets[i]++
		}
	}
}

func (s *ikeStats) retransmit(ev ike.RetransmitEvent) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.entry(ev.Conn)
	if c.Retransmits == nil {
		c.Retransmits = map[string]uint64{}
	}
	c.Retransmits[ev.Kind]++
}

// get returns a copy of conn's counts (nil when there are none).
func (s *ikeStats) get(conn string) *IKEConnStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.conns[conn].clone()
}

// ikeConnNames lists the IKE conns of cfg.
func ikeConnNames(cfg *Config) []string {
	var names []string
	for _, n := range cfg.Order {
		if c := cfg.Conns[n]; c != nil && c.IKE != nil {
			names = append(names, n)
		}
	}
	return names
}

// ikeObserver is the engine's Observer: it logs every finished exchange
// at debug level with its conn (so that the conn's log level decides),
// counts exchanges and retransmissions per conn, and passes exchanges on
// to Options.Observer.
type ikeObserver struct {
	exchangeLogger
	stats *ikeStats
}

func (o ikeObserver) Exchange(ev ike.ExchangeEvent) {
	o.stats.exchange(ev)
	o.exchangeLogger.Exchange(ev)
}

func (o ikeObserver) Retransmit(ev ike.RetransmitEvent) {
	o.stats.retransmit(ev)
	if r, ok := o.next.(ike.RetransmitObserver); ok {
		r.Retransmit(ev)
	}
}
