package ike

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gosec-ipsec/gosec/ike/isakmp"
	"github.com/gosec-ipsec/gosec/internal/clock"
	"github.com/gosec-ipsec/gosec/internal/ratelog"
)

// Config configures an Engine.
type Config struct {
	Transport Transport
	Installer Installer
	PSK       PSKFunc
	Clock     Clock // nil: the system clock
	Log       *slog.Logger
	Rand      io.Reader
	// NATTPort is the port IKE floats to (4500).
	NATTPort uint16
	// RetransmitTimeout is the wait before the first retransmission;
	// each later wait is RetransmitBackoff times longer; after
	// Retransmits retransmissions the exchange fails.
	RetransmitTimeout time.Duration
	RetransmitBackoff float64
	Retransmits       int
	// MaxHalfOpen bounds responder phase-1 SAs that are still
	// negotiating; MaxHalfOpenPerPeer bounds them per peer address.
	// Beyond either, the oldest half-open SA is forgotten.
	MaxHalfOpen        int
	MaxHalfOpenPerPeer int
	// HalfOpenTimeout forgets a responder negotiation that stalls.
	HalfOpenTimeout time.Duration
	// OutboundDelay is how long a Quick Mode initiator waits after
	// sending QM3 before it installs the outbound SA (and reports the
	// child up). An IKEv1 responder such as strongSwan's charon installs
	// its inbound SA only when QM3 arrives; packets we seal with the new
	// SPI before that are dropped by the peer (in Linux: a larval SA,
	// XfrmAcquireError). Meanwhile a rekey keeps sending on the old
	// outbound SA and an on-demand conn keeps its packets held. 0 installs
	// at once, before QM3 leaves.
	OutboundDelay time.Duration
	// LogKeys logs derived keys (debug only).
	LogKeys bool
	// CryptoWorkers is the number of goroutines that do the responder's
	// Diffie-Hellman work off the engine goroutine (default: one less
	// than GOMAXPROCS, at least one); MaxCryptoPerPeer bounds the jobs
	// one source address may have queued or running on them (default 2).
	CryptoWorkers    int
	MaxCryptoPerPeer int
	// MaxHalfOpenBytes bounds the octets half-open responder SAs keep of
	// their peers' SA payloads (needed for HASH_I); beyond it the oldest
	// half-open SA is forgotten, as beyond MaxHalfOpen.
	MaxHalfOpenBytes int
	// SaveKeys, if set, receives each phase-1 SA's initiator cookie and
	// encryption key (key export for Wireshark, opt-in).
	SaveKeys func(icookie [8]byte, encKey []byte)
	// Observer, if set, is told how exchanges end (metrics).
	Observer Observer
	// Impair lists fault injections (tests against real peers only).
	Impair []Impairment
}

func (c *Config) defaults() {
	if c.Clock == nil {
		c.Clock = clock.Real{}
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
	if c.Rand == nil {
		c.Rand = rand.Reader
	}
	if c.NATTPort == 0 {
		c.NATTPort = 4500
	}
	if c.RetransmitTimeout == 0 {
		c.RetransmitTimeout = 2 * time.Second
	}
	if c.RetransmitBackoff == 0 {
		c.RetransmitBackoff = 1.8
	}
	if c.Retransmits == 0 {
		c.Retransmits = 4
	}
	// A real peer's half-open SA lives one round trip before its MM3
	// makes it MAIN_R2; a flood must send more first messages than these
	// caps within that round trip to push it out, and MAIN_R2 SAs are
	// evicted only after every MAIN_R1 one. What each entry costs is
	// computed at halfOpenEntryBytes (p1.go).
	if c.MaxHalfOpen == 0 {
		c.MaxHalfOpen = 8192
	}
	// One address rarely needs more than a few negotiations at once
	// (strongSwan blocks a peer address past 5 half-open IKE SAs by
	// default); 128 leaves room for many hosts behind one NAT while a
	// single reachable flooder holds at most 128 entries.
	if c.MaxHalfOpenPerPeer == 0 {
		c.MaxHalfOpenPerPeer = min(128, c.MaxHalfOpen/2)
	}
	if c.HalfOpenTimeout == 0 {
		c.HalfOpenTimeout = 30 * time.Second
	}
	if c.MaxHalfOpenBytes == 0 {
		c.MaxHalfOpenBytes = 4 << 20
	}
	if c.CryptoWorkers == 0 {
		c.CryptoWorkers = max(1, runtime.GOMAXPROCS(0)-1)
	}
	if c.MaxCryptoPerPeer == 0 {
		c.MaxCryptoPerPeer = 2
	}
}

// Counters are the engine's message counters by outcome.
type Counters struct {
	Received, Sent, Retransmits                       atomic.Uint64
	Malformed, UnknownSA, BadHash, Decrypt, Duplicate atomic.Uint64
	HalfOpenEvicted, QueueFull, NoConn, NoProposal    atomic.Uint64
	Notifies, Deletes, Established, ChildrenInstalled atomic.Uint64
	AuthFailed, Failed                                atomic.Uint64
	// CryptoBusy counts messages dropped because the Diffie-Hellman
	// workers (or the sender's share of them) were busy; Replays counts
	// protected Informationals whose message ID was seen before.
	CryptoBusy, Replays atomic.Uint64
	// HalfOpen is the number of responder SAs still negotiating (a gauge).
	HalfOpen atomic.Int64
}

// Snapshot returns the counters as a name -> value map.
func (c *Counters) Snapshot() map[string]uint64 {
	return map[string]uint64{
		"received": c.Received.Load(), "sent": c.Sent.Load(), "retransmits": c.Retransmits.Load(),
		"malformed": c.Malformed.Load(), "unknown-sa": c.UnknownSA.Load(), "bad-hash": c.BadHash.Load(),
		"decrypt-failed": c.Decrypt.Load(), "duplicates": c.Duplicate.Load(),
		"half-open-evicted": c.HalfOpenEvicted.Load(), "queue-full": c.QueueFull.Load(),
		"no-conn": c.NoConn.Load(), "no-proposal": c.NoProposal.Load(), "notifies": c.Notifies.Load(),
		"deletes": c.Deletes.Load(), "established": c.Established.Load(),
		"children-installed": c.ChildrenInstalled.Load(), "auth-failed": c.AuthFailed.Load(), "failed": c.Failed.Load(),
		"crypto-busy": c.CryptoBusy.Load(), "replays": c.Replays.Load(), "half-open": uint64(max(0, c.HalfOpen.Load())),
	}
}

type cookies struct{ i, r [8]byte }

type respKey struct {
	icky [8]byte
	peer netip.Addr
}

// Engine negotiates SAs. Create it with New, run it with Run.
type Engine struct {
	cfg Config
	// Events, served in this order (sched.go): internal events (timers,
	// crypto results; never dropped), commands, then received messages
	// by class: established ISAKMP SAs and our own negotiations first,
	// responder negotiations under way next, new negotiations last.
	wake     chan struct{}
	imu      sync.Mutex
	internal []func()
	ctl      chan func()
	queues   [nClasses]chan inMsg
	qbytes   [nClasses]atomic.Int64
	jobs     chan func() func()
	// cryptoPeer counts the crypto jobs of each source address.
	cryptoPeer map[netip.Addr]int
	// inline runs crypto jobs on the engine goroutine (the fuzz driver).
	inline bool
	// classes and mine let the reading goroutines classify a message by
	// its cookies without the engine goroutine (sched.go).
	cmu     sync.RWMutex
	classes map[cookies]int
	mine    map[[8]byte]bool
	// halfOpenBytes is what half-open SAs keep of their peers' SA payloads.
	halfOpenBytes int
	// responders finds our responder SAs by the peer's cookie and
	// address: a retransmitted or replayed MM1 is recognised in O(1).
	responders map[respKey]*p1

	conns map[string]*Conn
	order []string
	// sas holds every phase-1 SA by its cookie pair (the responder cookie
	// is zero until MM2 for SAs we initiate).
	sas      map[cookies]*p1
	halfOpen []*p1 // responder SAs still negotiating, oldest first
	perPeer  map[netip.Addr]int
	children map[string][]*child
	log      *slog.Logger
	rl       *ratelog.Limiter
	// seq orders lifecycle events (ISAKMP SAs created and established,
	// Quick Modes started, children installed) independently of the
	// clock, whose readings may be equal.
	seq uint64

	// stopping is set once Run's context ended (shutdown).
	stopping bool

	// impair is Config.Impair and what each has done.
	impair []*impairmentState

	// Stats counts messages by outcome.
	Stats Counters
}

// New returns an engine; call Run to start it.
func New(cfg Config) *Engine {
	cfg.defaults()
	e := &Engine{
		cfg: cfg, wake: make(chan struct{}, 1), ctl: make(chan func(), 64), jobs: make(chan func() func(), 4*cfg.CryptoWorkers),
		cryptoPeer: map[netip.Addr]int{}, responders: map[respKey]*p1{}, classes: map[cookies]int{}, mine: map[[8]byte]bool{}, conns: map[string]*Conn{},
		sas: map[cookies]*p1{}, children: map[string][]*child{}, perPeer: map[netip.Addr]int{},
		log: cfg.Log, rl: &ratelog.Limiter{Log: cfg.Log, Clock: cfg.Clock, Burst: 10},
	}
	for _, im := range cfg.Impair {
		e.impair = append(e.impair, &impairmentState{Impairment: im})
	}
	for i := range e.queues {
		e.queues[i] = make(chan inMsg, queueLen[i])
	}
	return e
}

// Run processes events until ctx ends; then it deletes every SA it made
// (telling peers) and returns.
func (e *Engine) Run(ctx context.Context) {
	e.startWorkers(ctx)
	for e.next(ctx, true) {
	}
	e.shutdown()
}

// call runs f on the engine goroutine, before any received message that
// is still queued, and waits for it.
func (e *Engine) call(ctx context.Context, f func()) error {
	done := make(chan struct{})
	select {
	case e.ctl <- func() { f(); close(done) }:
	case <-ctx.Done():
		return ctx.Err()
	}
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// SetConns replaces the configured conns (on start and reload).
func (e *Engine) SetConns(ctx context.Context, conns []*Conn) error {
	return e.call(ctx, func() {
		e.conns = map[string]*Conn{}
		e.order = e.order[:0]
		for _, c := range conns {
			e.conns[c.Name] = c
			e.order = append(e.order, c.Name)
		}
	})
}

// HandleMessage takes one received IKE message (the non-ESP marker
// already stripped for port 4500). msg is copied; safe from any goroutine.
func (e *Engine) HandleMessage(msg []byte, from, to netip.AddrPort, natt bool) {
	e.Stats.Received.Add(1)
	if len(msg) < isakmp.HeaderLen || len(msg) > 65535 {
		e.Stats.Malformed.Add(1)
		return
	}
	e.enqueue(msg, from, to, natt)
}

// waiter is a `gosec up` waiting for its conn.
type waiter struct {
	progress func(string)
	done     chan error
}

func (w *waiter) say(format string, args ...any) {
	if w != nil && w.progress != nil {
		w.progress(fmt.Sprintf(format, args...))
	}
}

func (w *waiter) finish(err error) {
	if w == nil {
		return
	}
	select {
	case w.done <- err:
	default:
	}
}

// Initiate negotiates conn name (phase 1 if needed, then Quick Mode for
// every pair of subnets) and returns once the IPsec SAs are installed or
// the negotiation failed, saying why. progress gets one line per step.
func (e *Engine) Initiate(ctx context.Context, name string, progress func(string)) error {
	w := &waiter{progress: progress, done: make(chan error, 1)}
	var err error
	if cerr := e.call(ctx, func() { err = e.initiate(name, w) }); cerr != nil {
		return cerr
	}
	if err != nil {
		return err
	}
	select {
	case err := <-w.done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Start begins negotiating conn name in the background (auto=start, a
// trap, dpdaction=hold once the peer is back): only the selector pairs
// without a live IPsec SA or a negotiation under way, so calling it again
// while one runs does nothing.
func (e *Engine) Start(name string) {
	e.post(func() {
		if err := e.startBackground(name); err != nil {
			e.log.Error("auto=start", "conn", name, "err", err)
		}
	})
}

// Terminate deletes the conn's IPsec SAs and phase-1 SAs, telling the
// peer (Delete payloads).
func (e *Engine) Terminate(ctx context.Context, name string) (bool, error) {
	var had bool
	err := e.call(ctx, func() { had = e.terminate(name, true) })
	return had, err
}

// Established reports whether conn name has installed IPsec SAs.
func (e *Engine) Established(ctx context.Context, name string) bool {
	var ok bool
	e.call(ctx, func() { ok = len(e.children[name]) > 0 })
	return ok
}

func (e *Engine) initiate(name string, w *waiter) error {
	c, ok := e.conns[name]
	if !ok {
		return fmt.Errorf("no connection named %q", name)
	}
	if len(p1Suites(c)) == 0 {
		return fmt.Errorf("conn %s: no phase-1 proposal gosec can offer", name)
	}
	if len(p2Suites(c)) == 0 {
		return fmt.Errorf("conn %s: no phase-2 proposal gosec can offer", name)
	}
	if !c.Remote.IsValid() {
		return fmt.Errorf("conn %s: right=%%any: gosec can only respond to this conn", name)
	}
	// Reuse an established phase-1 SA with the peer that authorizes c
	// (its own, or another conn's with the same endpoints, identities
	// and key), or follow one under way (share.go).
	if p := e.newestP1("", c); p != nil {
		w.say("reusing ISAKMP SA %s[%s] with %v", p.conn.Name, p.cookieString(), p.peer.Addr())
		e.startQuickFor(p, c, w)
		return nil
	}
	if e.joinPending(c, w) {
		return nil
	}
	e.startPhase1(c, w, 1)
	return nil
}

// terminate removes name's children and phase-1 SAs; with notify it
// sends Delete payloads first.
func (e *Engine) terminate(name string, notify bool) bool {
	had := e.dropChildren(name, func(*child) bool { return true }, notify, "IPsec SA deleted") > 0
	// Conns following another conn's Main Mode under way (share.go).
	for _, p := range e.sas {
		p.followers = slices.DeleteFunc(p.followers, func(f follower) bool {
			if f.conn.Name == name {
				had = true
				f.w.finish(errors.New("connection terminated"))
				return true
			}
			return false
		})
	}
	for _, p := range e.sortedSAs() {
		if p.conn == nil || p.conn.Name != name {
			continue
		}
		had = true
		if notify && p.established() {
			e.sendDeleteISAKMP(p)
		}
		p.fail(errors.New("connection terminated"))
		e.forget(p)
	}
	return had
}

func (e *Engine) shutdown() {
	e.stopping = true
	names := make([]string, 0, len(e.children))
	for n := range e.children {
		names = append(names, n)
	}
	for _, p := range e.sas {
		if p.conn != nil {
			names = append(names, p.conn.Name)
		}
	}
	for _, n := range names {
		e.terminate(n, true)
	}
}

// sendFrom sends msg from local address src when the transport can
// choose it (a responder answers from the address the request was sent
// to, which need not be the outgoing interface's first address).
func (e *Engine) sendFrom(src netip.Addr, msg []byte, to netip.AddrPort, natt bool) error {
	if st, ok := e.cfg.Transport.(SourceTransport); ok && src.IsValid() && !src.IsUnspecified() {
		return st.SendFrom(msg, src, to, natt)
	}
	return e.cfg.Transport.Send(msg, to, natt)
}

// handle dispatches one received message on the engine goroutine.
func (e *Engine) handle(msg []byte, from, to netip.AddrPort, natt bool) {
	h, err := isakmp.ParseHeader(msg)
	if err != nil {
		e.Stats.Malformed.Add(1)
		e.warn("malformed IKE message", "peer", from, "err", err)
		return
	}
	msg = msg[:h.Length]
	var zero [8]byte
	if h.ICookie == zero {
		e.Stats.Malformed.Add(1)
		e.warn("IKE message with a zero initiator cookie", "peer", from)
		return
	}
	p := e.sas[cookies{h.ICookie, h.RCookie}]
	if p == nil && h.RCookie != zero {
		// MM2 answers an SA we know by our cookie alone.
		if q := e.sas[cookies{h.ICookie, zero}]; q != nil && q.initiator {
			p = q
		}
	}
	x, known := exchanges[h.Exchange]
	if p == nil {
		if !known || x.open == nil || !x.open(e, h, msg, from, to, natt) {
			e.Stats.UnknownSA.Add(1)
			e.warn("IKE message for an unknown ISAKMP SA", "peer", from, "exchange", h.Exchange, "icookie", fmt.Sprintf("%x", h.ICookie), "rcookie", fmt.Sprintf("%x", h.RCookie))
		}
		return
	}
	if from.Addr() != p.peer.Addr() {
		e.Stats.UnknownSA.Add(1)
		e.warn("IKE message for an ISAKMP SA from another address", "peer", from, "sa_peer", p.peer)
		return
	}
	// A duplicate of the last message of its exchange: the peer lost
	// our answer (the task manager sends it again).
	sum := sha256.Sum256(msg)
	if x.phase1Duplicates && e.duplicate(p.phase1, sum) {
		return
	}
	// The peer floated to 4500 (RFC 3947 4), or its NAT mapping moved:
	// believed once this message authenticates (authentic).
	p.floatTo = netip.AddrPort{}
	if natt && (!p.natt || from != p.peer) {
		p.floatTo = from
	}
	defer func() { p.floatTo = netip.AddrPort{} }()
	if !known {
		e.Stats.Malformed.Add(1)
		e.warn("unsupported IKE exchange type", "peer", from, "exchange", h.Exchange)
		return
	}
	x.process(e, p, received{h: h, msg: msg, sum: sum, from: from})
}

func (e *Engine) warn(msg string, args ...any) { e.rl.Warn(msg, msg, args...) }

func (e *Engine) random(n int) []byte {
	b := make([]byte, n)
	if _, err := io.ReadFull(e.cfg.Rand, b); err != nil {
		panic("ike: random source failed: " + err.Error())
	}
	return b
}
