package daemon

import (
	"io"
	"log/slog"
	"net/netip"
	"reflect"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/ike"
)

// TestIKEStats: exchanges, latencies and retransmissions are counted per
// loaded conn; events for conns not loaded fold into UnmatchedConn; a
// reload that removes a conn removes its counts.
func TestIKEStats(t *testing.T) {
	var s ikeStats
	s.setConns([]string{"a", "b"})
	peer := netip.MustParseAddr("192.0.2.2")
	o := ikeObserver{exchangeLogger{log: discardLog()}, &s}
	for _, ev := range []ike.ExchangeEvent{
		{Peer: peer, Conn: "a", Kind: "main", Result: "established", Latency: 20 * time.Millisecond},
		{Peer: peer, Conn: "a", Kind: "quick", Result: "established", Latency: 5 * time.Millisecond},
		{Peer: peer, Conn: "a", Kind: "quick", Result: "rekeyed", Latency: 3 * time.Second},
		{Peer: peer, Conn: "a", Kind: "dpd", Result: "alive"},
		{Peer: peer, Conn: "gone", Kind: "main", Result: "failed"},
		{Peer: peer, Conn: "?", Kind: "main", Result: "timeout"},
	} {
		o.Exchange(ev)
	}
	for _, ev := range []ike.RetransmitEvent{
		{Peer: peer, Conn: "a", Kind: "main"}, {Peer: peer, Conn: "a", Kind: "quick", Reply: true},
		{Peer: peer, Conn: "a", Kind: "quick"}, {Peer: peer, Conn: "?", Kind: "main"},
	} {
		o.Retransmit(ev)
	}
	want := &IKEConnStats{
		Exchanges:   map[string]map[string]uint64{"main": {"established": 1}, "quick": {"established": 1, "rekeyed": 1}, "dpd": {"alive": 1}},
		Retransmits: map[string]uint64{"main": 1, "quick": 2},
		Latency: map[string]*LatencyHistogram{
			"main":  {Count: 1, SumSeconds: 0.02, Buckets: []uint64{0, 1, 1, 1, 1, 1, 1, 1}},
			"quick": {Count: 2, SumSeconds: 3.005, Buckets: []uint64{1, 1, 1, 1, 1, 1, 2, 2}},
		},
	}
	if got := s.get("a"); !reflect.DeepEqual(got, want) {
		t.Errorf("a: got %+v\nwant %+v", got, want)
	}
	if got := s.get("b"); got != nil {
		t.Errorf("b had no exchange, got %+v", got)
	}
	wantUnmatched := &IKEConnStats{Exchanges: map[string]map[string]uint64{"main": {"failed": 1, "timeout": 1}}, Retransmits: map[string]uint64{"main": 1}}
	if got := s.get(UnmatchedConn); !reflect.DeepEqual(got, wantUnmatched) {
		t.Errorf("unmatched: got %+v, want %+v", got, wantUnmatched)
	}
	if got, want := s.get("a").Text(), "dpd alive 1; main established 1; quick established 1 rekeyed 1; retransmits main 1 quick 2; latency main avg 20ms; latency quick avg 1.503s"; got != want {
		t.Errorf("text %q, want %q", got, want)
	}
	// A copy: later events do not change what was returned.
	before := s.get("a")
	o.Exchange(ike.ExchangeEvent{Conn: "a", Kind: "dpd", Result: "alive"})
	if before.Exchanges["dpd"]["alive"] != 1 {
		t.Error("get returned the live counts")
	}
	// Reload without a: its counts go; b keeps its place.
	s.setConns([]string{"b"})
	if _, ok := s.conns["a"]; ok || len(s.conns) != 2 {
		t.Errorf("after removing a: %v", s.conns)
	}
	o.Exchange(ike.ExchangeEvent{Conn: "a", Kind: "main", Result: "established"})
	if _, ok := s.conns["a"]; ok {
		t.Error("an event for a removed conn brought its entry back")
	}
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }
