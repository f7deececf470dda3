package ike

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/ike/isakmp"
	"github.com/gosec-ipsec/gosec/internal/clock"
)

// manyConns returns n conns between A and B with a subnet pair each, as
// seen from A and from B.
func manyConns(n int) (as, bs []*Conn) {
	for i := range n {
		a, b := pairConns(fmt.Sprintf("c%d", i), testIKE, testESP, ModeTunnel)
		a.KeyingTries, b.KeyingTries = 0, 0
		a.LocalSubnets = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 64, byte(i), 0}), 30)}
		a.RemoteSubnets = []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 128, byte(i), 0}), 30)}
		b.LocalSubnets, b.RemoteSubnets = a.RemoteSubnets, a.LocalSubnets
		as, bs = append(as, a), append(bs, b)
	}
	return as, bs
}

// TestSharedPhase1: conns between the same gateways with the same IDs
// and key negotiate under one ISAKMP SA, whether started together (the
// later ones follow the first Main Mode) or brought up one by one; the
// Quick Modes one ISAKMP SA initiates are paced.
func TestSharedPhase1(t *testing.T) {
	const n = 3*maxQuickInFlight + 5
	as, bs := manyConns(n)
	var mu sync.Mutex
	started, done := map[uint32]bool{}, map[uint32]bool{}
	peak := 0
	r := newRig(t, "secret", "secret", as, bs, func(c *Config) { c.RetransmitTimeout = 5 * time.Second })
	r.net.drop = func(from, to netip.AddrPort, msg []byte) bool {
		h, err := isakmp.ParseHeader(msg)
		if err != nil || h.Exchange != isakmp.ExchQuick || from.Addr() != addrA {
			return false
		}
		mu.Lock()
		defer mu.Unlock()
		if started[h.MessageID] {
			done[h.MessageID] = true // QM3
		}
		started[h.MessageID] = true
		peak = max(peak, len(started)-len(done))
		return false
	}
	// Each again once phase 1 is up, as a trap fires on every packet:
	// followers and queued Quick Modes count as under way, so no pair is
	// negotiated twice.
	for _, c := range as[:n-1] {
		r.a.Start(c.Name)
	}
	waitFor(t, func() bool { return r.a.Stats.Established.Load() == 1 })
	for _, c := range as[:n-1] {
		r.a.Start(c.Name)
	}
	waitFor(t, func() bool { return len(r.ia.children()) == n-1 && len(r.ib.children()) == n-1 })
	if got := r.a.Stats.Established.Load(); got != 1 {
		t.Errorf("%d conns started together made %d ISAKMP SAs, want 1", n-1, got)
	}
	mu.Lock()
	if peak > maxQuickInFlight || peak < 2 {
		t.Errorf("Quick Modes under way at once: peak %d, want 2..%d", peak, maxQuickInFlight)
	}
	mu.Unlock()
	lines, err := r.up(r.a, as[n-1].Name)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.a.Stats.Established.Load(); got != 1 {
		t.Errorf("gosec up of another conn made a new ISAKMP SA (%d in all):\n%v", got, lines)
	}
	waitFor(t, func() bool { return len(r.ia.children()) == n && len(r.ib.children()) == n })
	checkPairSubset(t, r.ia, r.ib)
	r.ia.mu.Lock()
	if r.ia.inCalls != n {
		t.Errorf("%d inbound SAs installed for %d selector pairs", r.ia.inCalls, n)
	}
	r.ia.mu.Unlock()
}

// TestQuickSlotFreedAtQM3: an initiator's Quick Mode gives its slot back
// when QM3 is sent, not when its outbound SA goes in after
// OutboundDelay: with a delay longer than the test, every one of more
// than maxQuickInFlight conns still gets through QM3 (the responder
// installs both SAs on it), and the initiator's outbound SAs wait.
func TestQuickSlotFreedAtQM3(t *testing.T) {
	const n = 2*maxQuickInFlight + 3
	as, bs := manyConns(n)
	r := newRig(t, "secret", "secret", as, bs, func(c *Config) { c.OutboundDelay = time.Hour })
	for _, c := range as {
		r.a.Start(c.Name)
	}
	waitFor(t, func() bool {
		r.ib.mu.Lock()
		defer r.ib.mu.Unlock()
		return r.ib.outCalls == n
	})
	r.ia.mu.Lock()
	defer r.ia.mu.Unlock()
	if r.ia.inCalls != n || r.ia.outCalls != 0 {
		t.Errorf("initiator installed %d inbound and %d outbound SAs, want %d and 0 (outbound after the delay)", r.ia.inCalls, r.ia.outCalls, n)
	}
}

// TestSharedPhase1NotAcrossKeys: a conn with other phase-1 settings (here
// other IDs) does not follow another's Main Mode.
func TestSharedPhase1NotAcrossKeys(t *testing.T) {
	as, bs := manyConns(2)
	as[1].LocalID, bs[1].RemoteID = "@a.example", "@a.example"
	r := newRig(t, "secret", "secret", as, bs, nil)
	r.a.Start(as[0].Name)
	r.a.Start(as[1].Name)
	waitFor(t, func() bool { return len(r.ia.children()) == 2 && len(r.ib.children()) == 2 })
	if got := r.a.Stats.Established.Load(); got != 2 {
		t.Errorf("conns with different IDs made %d ISAKMP SAs, want 2", got)
	}
}

// TestQuickModesRetired: a finished Quick Mode is kept for duplicate
// detection for quickLinger, then forgotten on both sides.
func TestQuickModesRetired(t *testing.T) {
	as, bs := manyConns(3)
	fc := clock.NewFake(time.Unix(1e9, 0))
	r := newRig(t, "secret", "secret", as, bs, func(c *Config) { c.Clock = fc })
	for _, c := range as {
		if _, err := r.up(r.a, c.Name); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 3 })
	qms := func(e *Engine) (n int) {
		e.call(context.Background(), func() {
			for _, p := range e.sas {
				n += len(p.qms)
			}
		})
		return n
	}
	if a, b := qms(r.a), qms(r.b); a != 3 || b != 3 {
		t.Fatalf("Quick Modes kept after the exchanges: A %d, B %d; want 3 each", a, b)
	}
	fc.Advance(quickLinger + time.Second)
	waitFor(t, func() bool { return qms(r.a) == 0 && qms(r.b) == 0 })
	checkPair(t, r.ia, r.ib, 3)
}
