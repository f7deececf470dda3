package ike

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/ike/ikecrypto"
	"github.com/gosec-ipsec/gosec/ike/isakmp"
	"github.com/gosec-ipsec/gosec/internal/clock"
)

// Tests that hostile or merely noisy peers cannot stall the engine.

func basicConns() (*Conn, *Conn) {
	return pairConns("c", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
}

// block occupies e's goroutine until the returned function is called.
func block(t *testing.T, e *Engine) func() {
	t.Helper()
	release, started := make(chan struct{}), make(chan struct{})
	go e.call(context.Background(), func() { close(started); <-release })
	<-started
	var once sync.Once
	f := func() { once.Do(func() { close(release) }) }
	t.Cleanup(f)
	return f
}

// spoofedMM1 is a Main Mode first message offering c's suites, with
// cookie i.
func spoofedMM1(c *Conn, i int) []byte {
	h := isakmp.Header{Version: 0x10, Exchange: isakmp.ExchMain}
	h.ICookie[0], h.ICookie[1], h.ICookie[2], h.ICookie[7] = byte(i>>16), byte(i>>8), byte(i), 1
	return isakmp.Encode(h, []isakmp.Payload{p1SA(p1Suites(c))})
}

func spoofedSource(i int) netip.AddrPort {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)}), 500)
}

// TestTimersSurviveFlood: with every message queue full, a timer still
// fires its event (here a retransmission): a flood can only drop
// messages, never timers.
func TestTimersSurviveFlood(t *testing.T) {
	ca, cb := basicConns()
	fc := clock.NewFake(time.Unix(1e9, 0))
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) { c.Clock = fc; c.Retransmits = 10 })
	r.net.mu.Lock()
	r.net.drop = func(_, to netip.AddrPort, _ []byte) bool { return to.Addr() == addrB } // B is silent
	r.net.mu.Unlock()
	r.a.Start("c")
	waitFor(t, func() bool { return r.a.Stats.Sent.Load() == 1 }) // MM1 sent, retransmission armed
	release := block(t, r.a)
	for i := 0; i < 5000; i++ {
		r.a.HandleMessage(spoofedMM1(ca, i), spoofedSource(i), netip.AddrPortFrom(addrA, 500), false)
	}
	if r.a.Stats.QueueFull.Load() == 0 {
		t.Fatal("the flood did not fill the queue")
	}
	fc.Advance(time.Second) // the retransmission falls due while the queues are full
	release()
	waitFor(t, func() bool { return r.a.Stats.Retransmits.Load() >= 1 })
}

// TestCommandsBeforeQueuedMessages: a status request made while
// thousands of messages wait is served before them.
func TestCommandsBeforeQueuedMessages(t *testing.T) {
	ca, cb := basicConns()
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	release := block(t, r.b)
	garbage := make([]byte, 64) // zero initiator cookie: counted malformed by the engine
	for i := 0; i < 3000; i++ {
		r.b.HandleMessage(garbage, spoofedSource(i), netip.AddrPortFrom(addrB, 500), false)
	}
	queued := r.b.Stats.Received.Load() - r.b.Stats.QueueFull.Load()
	var handledBefore atomic.Uint64
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		// A command, like Status, recording what the engine had handled
		// when it ran.
		done <- r.b.call(ctx, func() { handledBefore.Store(r.b.Stats.Malformed.Load()) })
	}()
	time.Sleep(50 * time.Millisecond)
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := handledBefore.Load(); n >= queued/2 {
		t.Fatalf("status answered after %d of %d queued messages", n, queued)
	}
}

// TestEstablishedBeforeNew: a message of an established ISAKMP SA (a
// Quick Mode) is served before new negotiations queued ahead of it.
func TestEstablishedBeforeNew(t *testing.T) {
	ca, cb := basicConns()
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	var mm2Before atomic.Int64
	mm2Before.Store(-1)
	sentAtBlock := r.b.Stats.Sent.Load()
	r.net.mu.Lock()
	r.net.drop = func(from, to netip.AddrPort, msg []byte) bool {
		if from.Addr() == addrB && to.Addr() == addrA && msg[18] == byte(isakmp.ExchQuick) && mm2Before.Load() < 0 {
			mm2Before.Store(int64(r.b.Stats.Sent.Load() - sentAtBlock - 1))
		}
		return false
	}
	r.net.mu.Unlock()
	release := block(t, r.b)
	for i := 0; i < 300; i++ {
		r.b.HandleMessage(spoofedMM1(ca, i), spoofedSource(i), netip.AddrPortFrom(addrB, 500), false)
	}
	done := make(chan error, 1)
	go func() { _, err := r.up(r.a, "c"); done <- err }() // QM1 reaches B behind the flood
	waitFor(t, func() bool { return r.a.Stats.Sent.Load() > 0 && len(r.b.queues[classEstablished]) == 1 })
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := mm2Before.Load(); n > 5 {
		t.Fatalf("B answered %d first messages before the established SA's Quick Mode", n)
	}
}

// gatedRand blocks reads of n octets (a DH private value) until opened.
type gatedRand struct {
	n    int
	gate chan struct{}
}

func (g *gatedRand) Read(b []byte) (int, error) {
	if len(b) == g.n {
		<-g.gate
	}
	return io.ReadFull(rand.Reader, b)
}

// TestDHOffEngine: while the responder's Diffie-Hellman work for an MM3
// is stuck on a worker, the engine still answers.
func TestDHOffEngine(t *testing.T) {
	ca, cb := basicConns()
	g := &gatedRand{n: 256, gate: make(chan struct{})} // modp2048's private value
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) {
		if c.Transport.(*fakeTransport).local == addrB {
			c.Rand = g
		}
	})
	done := make(chan error, 1)
	go func() { _, err := r.up(r.a, "c"); done <- err }()
	waitFor(t, func() bool {
		n := 0
		r.b.call(context.Background(), func() {
			for _, p := range r.b.sas {
				if mm, _ := p.phase1.(*mainMode); mm != nil && mm.computing {
					n++
				}
			}
		})
		return n == 1
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if _, _, err := r.b.Status(ctx); err != nil {
		t.Fatalf("the responder's engine is stuck behind its DH work: %v", err)
	}
	close(g.gate)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestCryptoPerPeerLimit: one source gets at most MaxCryptoPerPeer jobs,
// and the workers' queue is bounded.
func TestCryptoPerPeerLimit(t *testing.T) {
	e := New(Config{CryptoWorkers: 1, MaxCryptoPerPeer: 2}) // not running: jobs stay queued
	noop := func() func() { return func() {} }
	a, b := netip.MustParseAddr("198.18.0.1"), netip.MustParseAddr("198.18.0.2")
	got := []bool{e.offload(a, noop), e.offload(a, noop), e.offload(a, noop), e.offload(b, noop), e.offload(b, noop)}
	want := []bool{true, true, false, true, true}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("offload results %v, want %v", got, want)
		}
	}
	if e.offload(netip.MustParseAddr("198.18.0.3"), noop) {
		t.Fatal("a job beyond the workers' queue (4 per worker) was accepted")
	}
	if e.Stats.CryptoBusy.Load() != 2 {
		t.Fatalf("crypto-busy %d, want 2", e.Stats.CryptoBusy.Load())
	}
}

// bigSA offers n transforms in proposals of at most 255, none of which
// gosec accepts unless last is set (then the last one is ours).
func bigSA(n int, last *p1Suite) *isakmp.SA {
	sa := &isakmp.SA{DOI: doiIPsec, Situation: sitIDOnly}
	for i := 0; i < n; i++ {
		if i%255 == 0 {
			sa.Proposals = append(sa.Proposals, isakmp.Proposal{Num: uint8(len(sa.Proposals) + 1), Protocol: isakmp.ProtoISAKMP})
		}
		s := p1Suite{Cipher: ikecrypto.CipherAES, KeyBits: 192, Hash: ikecrypto.HashMD5, Group: ikecrypto.Group(1 + i%30), Life: time.Hour}
		if last != nil && i == n-1 {
			s = *last
		}
		pr := &sa.Proposals[len(sa.Proposals)-1]
		pr.Transforms = append(pr.Transforms, s.transform(uint8(len(pr.Transforms)+1)))
	}
	return sa
}

// TestProposalCaps: SA payloads beyond the caps are refused before their
// transforms are decoded; what is within is matched without formatting,
// and a refusal's explanation stays short.
func TestProposalCaps(t *testing.T) {
	body := isakmp.EncodeBody(bigSA(isakmp.MaxSATransforms+1, nil))
	if _, err := isakmp.Decode(isakmp.RawPayload{Type: isakmp.PayloadSA, Body: body}); !errors.Is(err, isakmp.ErrTooMany) {
		t.Fatalf("%d transforms: %v", isakmp.MaxSATransforms+1, err)
	}
	many := &isakmp.SA{DOI: doiIPsec, Situation: sitIDOnly}
	for i := 0; i <= isakmp.MaxProposals; i++ {
		many.Proposals = append(many.Proposals, isakmp.Proposal{Num: uint8(i + 1), Protocol: isakmp.ProtoISAKMP})
	}
	if _, err := isakmp.Decode(isakmp.RawPayload{Type: isakmp.PayloadSA, Body: isakmp.EncodeBody(many)}); !errors.Is(err, isakmp.ErrTooMany) {
		t.Fatalf("%d proposals: %v", isakmp.MaxProposals+1, err)
	}

	ours := []p1Suite{{Cipher: ikecrypto.CipherAES, KeyBits: 128, Hash: ikecrypto.HashSHA1, Group: 14, Life: time.Hour}}
	match := isakmp.EncodeBody(bigSA(isakmp.MaxSATransforms, &ours[0]))
	allocs := testing.AllocsPerRun(20, func() {
		if _, _, err := selectP1Raw(ours, match); err != nil {
			t.Fatal(err)
		}
	})
	// Matching reads the transforms in place; only the chosen one is
	// copied for the reply. Decoding every transform and formatting each
	// refused one (what selectP1 used to do) allocated thousands of times.
	if allocs > 10 {
		t.Fatalf("matching %d transforms allocates %.0f times", isakmp.MaxSATransforms, allocs)
	}
	_, _, err := selectP1(ours, bigSA(isakmp.MaxSATransforms, nil))
	if err == nil {
		t.Fatal("no transform is acceptable, yet one was chosen")
	}
	if msg := err.Error(); len(msg) > 1024 || !strings.Contains(msg, "more") || !strings.Contains(msg, "nearest") {
		t.Fatalf("explanation of %d octets: %.300s", len(msg), msg)
	}
}

// TestRefusalLogsBounded: a flood of unacceptable first messages writes a
// bounded number of log lines.
func TestRefusalLogsBounded(t *testing.T) {
	ca, cb := basicConns()
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	msg := isakmp.Encode(isakmp.Header{ICookie: [8]byte{1}, Version: 0x10, Exchange: isakmp.ExchMain},
		[]isakmp.Payload{bigSA(isakmp.MaxSATransforms, nil)})
	for i := 0; i < 500; i++ {
		msg[0], msg[1], msg[7] = byte(i), byte(i>>8), 1
		r.b.HandleMessage(msg, netip.AddrPortFrom(addrA, uint16(1024+i)), netip.AddrPortFrom(addrB, 500), false)
		if i%100 == 0 {
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor(t, func() bool { return r.b.Stats.NoProposal.Load()+r.b.Stats.QueueFull.Load() == 500 })
	logs := r.logText()
	// 10 lines a second get through (the test may span a few seconds on
	// a loaded machine); unlimited, it would be 500.
	if n := strings.Count(logs, "Main Mode from peer refused"); n > 50 || n == 0 {
		t.Fatalf("%d refusal lines for 500 refused messages", n)
	}
	if len(logs) > 64<<10 {
		t.Fatalf("%d octets of log for 500 refused messages", len(logs))
	}
}

// TestHalfOpenBytes: a half-open SA keeps its peer's SA payload, not the
// whole first message; the half-open state stays within the bound that
// halfOpenEntryBytes documents.
func TestHalfOpenBytes(t *testing.T) {
	ca, _ := basicConns()
	ca.Remote = netip.Addr{}
	e := New(Config{Transport: &fakeTransport{net: &fakeNet{engines: map[netip.Addr]*Engine{}}, local: addrB}})
	e.conns, e.order = map[string]*Conn{"c": ca}, []string{"c"}
	ca.Local = addrB
	// A first message padded with vendor IDs to 60 KB: only its SA
	// payload (a few hundred octets) is needed later.
	pad := make([]isakmp.Payload, 0, 61)
	pad = append(pad, p1SA(p1Suites(ca)))
	for i := 0; i < 60; i++ {
		pad = append(pad, &isakmp.VendorID{Data: make([]byte, 1000)})
	}
	const n = 2000
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := 0; i < n; i++ {
		h := isakmp.Header{Version: 0x10, Exchange: isakmp.ExchMain}
		h.ICookie[0], h.ICookie[1], h.ICookie[7] = byte(i>>8), byte(i), 1
		e.handle(isakmp.Encode(h, pad), spoofedSource(i), netip.AddrPortFrom(addrB, 500), false)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	if len(e.halfOpen) != n {
		t.Fatalf("%d half-open SAs, want %d", len(e.halfOpen), n)
	}
	per := int(after.HeapAlloc-before.HeapAlloc) / n
	saBody := len(isakmp.EncodeBody(p1SA(p1Suites(ca))))
	if bound := halfOpenEntryBytes + saBody; per > bound {
		t.Fatalf("each half-open SA holds %d octets, more than the documented %d", per, bound)
	}
	t.Logf("%d octets per half-open SA (bound %d + SA payload %d)", per, halfOpenEntryBytes, saBody)
	runtime.KeepAlive(e)
}

// TestHalfOpenByteBudget: MaxHalfOpenBytes evicts the oldest half-open
// SAs once their SA payloads exceed it.
func TestHalfOpenByteBudget(t *testing.T) {
	ca, _ := basicConns()
	ca.Remote, ca.Local = netip.Addr{}, addrB
	e := New(Config{Transport: &fakeTransport{net: &fakeNet{engines: map[netip.Addr]*Engine{}}, local: addrB}, MaxHalfOpenBytes: 10000})
	e.conns, e.order = map[string]*Conn{"c": ca}, []string{"c"}
	for i := 0; i < 1000; i++ {
		e.handle(spoofedMM1(ca, i), spoofedSource(i), netip.AddrPortFrom(addrB, 500), false)
	}
	if e.halfOpenBytes > 10000 || len(e.halfOpen) == 0 || e.Stats.HalfOpenEvicted.Load() == 0 {
		t.Fatalf("%d half-open SAs hold %d octets (budget 10000), %d evicted", len(e.halfOpen), e.halfOpenBytes, e.Stats.HalfOpenEvicted.Load())
	}
}

// TestInformationalReplay: a protected error Notify replayed while a
// Quick Mode is pending does not fail it.
func TestInformationalReplay(t *testing.T) {
	ca, cb := basicConns()
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	// B sends a protected NO_PROPOSAL_CHOSEN; it is recorded on the way.
	var captured []byte
	var mu sync.Mutex
	r.net.mu.Lock()
	r.net.drop = func(from, to netip.AddrPort, msg []byte) bool {
		mu.Lock()
		defer mu.Unlock()
		if from.Addr() == addrB && msg[18] == byte(isakmp.ExchInfo) && captured == nil {
			captured = append([]byte(nil), msg...)
		}
		return false
	}
	r.net.mu.Unlock()
	r.b.call(context.Background(), func() {
		for _, p := range r.b.sas {
			r.b.sendNotify(p, notifyNoProposalChosen, nil)
		}
	})
	waitFor(t, func() bool { mu.Lock(); defer mu.Unlock(); return captured != nil })
	// Captured is not yet handled: A must have acted upon the original
	// before the second Quick Mode starts, or the original itself (not a
	// replay) would fail it. Commands go before received messages on
	// A's engine (sched.go), and B delivers after its hook returns.
	mu.Lock()
	origID := binary.BigEndian.Uint32(captured[20:24])
	mu.Unlock()
	waitFor(t, func() bool {
		seen := false
		r.a.call(context.Background(), func() {
			for _, p := range r.a.sas {
				seen = seen || slices.Contains(p.infoIDs, origID)
			}
		})
		return seen
	})
	// A second Quick Mode, with QM1 lost once so that it stays pending
	// while the replay arrives.
	var qm1 atomic.Int32
	r.net.mu.Lock()
	r.net.drop = func(_, to netip.AddrPort, msg []byte) bool {
		return to.Addr() == addrB && msg[18] == byte(isakmp.ExchQuick) && qm1.Add(1) == 1
	}
	r.net.mu.Unlock()
	done := make(chan error, 1)
	go func() { _, err := r.up(r.a, "c"); done <- err }()
	waitFor(t, func() bool { return qm1.Load() == 1 })
	mu.Lock()
	r.a.HandleMessage(captured, netip.AddrPortFrom(addrB, 500), netip.AddrPortFrom(addrA, 500), false)
	mu.Unlock()
	if err := <-done; err != nil {
		t.Fatalf("the replayed Notify failed the Quick Mode: %v", err)
	}
	if r.a.Stats.Replays.Load() != 1 {
		t.Fatalf("replays counted: %d", r.a.Stats.Replays.Load())
	}
}

// TestFloatOnlyWhenAuthentic: a forged message from the peer's address on
// the NAT-T port does not move the ISAKMP SA there.
func TestFloatOnlyWhenAuthentic(t *testing.T) {
	ca, cb := basicConns()
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	p1s, _, _ := r.b.Status(context.Background())
	h := isakmp.Header{Version: 0x10, Exchange: isakmp.ExchInfo, Flags: isakmp.FlagEncryption, MessageID: 77}
	copyHex(h.ICookie[:], p1s[0].ICookie)
	copyHex(h.RCookie[:], p1s[0].RCookie)
	forged := make([]byte, isakmp.HeaderLen+32)
	h.Next, h.Length = isakmp.PayloadHash, uint32(len(forged))
	h.Put(forged)
	r.b.HandleMessage(forged, netip.AddrPortFrom(addrA, 4500), netip.AddrPortFrom(addrB, 4500), true)
	time.Sleep(50 * time.Millisecond)
	p1s, _, _ = r.b.Status(context.Background())
	if p1s[0].NATT || p1s[0].Remote != netip.AddrPortFrom(addrA, 500).String() {
		t.Fatalf("a forged message moved the peer to %s (natt %v)", p1s[0].Remote, p1s[0].NATT)
	}
}

func copyHex(dst []byte, s string) {
	for i := range dst {
		fmt.Sscanf(s[2*i:2*i+2], "%02x", &dst[i])
	}
}

// TestAnswerFromRequestedAddress: a responder with two addresses answers
// from the one the request was sent to.
func TestAnswerFromRequestedAddress(t *testing.T) {
	addrB2 := netip.MustParseAddr("192.0.2.22")
	ca, cb := basicConns()
	ca.Remote, cb.Local = addrB2, netip.Addr{}
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	r.net.mu.Lock()
	r.net.engines[addrB2] = r.b
	r.net.mu.Unlock()
	if lines, err := r.up(r.a, "c"); err != nil {
		t.Fatalf("up to the responder's second address: %v\n%s", err, strings.Join(lines, "\n"))
	}
}

// TestStatusBoundedUnderFlood: status lists a bounded number of half-open
// SAs and counts them all.
func TestStatusBoundedUnderFlood(t *testing.T) {
	ca, cb := basicConns()
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	for i := 0; i < 100; i++ {
		r.b.HandleMessage(spoofedMM1(ca, i), netip.AddrPortFrom(addrA, uint16(2000+i)), netip.AddrPortFrom(addrB, 500), false)
	}
	waitFor(t, func() bool { return r.b.Stats.HalfOpen.Load() == 100 })
	p1s, _, err := r.b.Status(context.Background())
	if err != nil || len(p1s) != maxListedHalfOpen {
		t.Fatalf("status lists %d ISAKMP SAs (%v), want %d", len(p1s), err, maxListedHalfOpen)
	}
	if got := r.b.Stats.Snapshot()["half-open"]; got != 100 {
		t.Fatalf("half-open gauge %d", got)
	}
}
