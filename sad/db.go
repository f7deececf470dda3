package sad

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gosec-ipsec/gosec/internal/clock"
)

// EventKind says what happened to an SA.
type EventKind uint8

// The events the key manager hears about.
const (
	SoftExpired  EventKind = iota + 1 // soft lifetime passed: rekey now
	HardExpired                       // hard lifetime passed: the SA fails closed
	SeqExhausted                      // outbound sequence numbers used up: rekey
)

func (k EventKind) String() string {
	switch k {
	case SoftExpired:
		return "soft-expired"
	case HardExpired:
		return "hard-expired"
	case SeqExhausted:
		return "seq-exhausted"
	}
	return fmt.Sprintf("event(%d)", uint8(k))
}

// Event is delivered to the DB's callback, each kind at most once per SA.
type Event struct {
	Kind EventKind
	SA   *SA
}

// key identifies an SA as RFC 4301 4.1 does for inbound lookups.
type key struct {
	spi   uint32
	proto Proto
	dst   netip.Addr
}

// spiKey identifies the SAs sharing an SPI within one protocol.
type spiKey struct {
	spi   uint32
	proto Proto
}

// The indexes are split into shards, each an immutable map behind an
// atomic pointer: readers load and index it without a lock, and a writer
// copies only the one shard it changes, so installing n SAs costs
// O(n²/shards) rather than O(n²).
const shards = 256

type (
	keyMap   = map[key]*SA
	spiMap   = map[spiKey][]*SA
	reqidMap = map[uint32][]*SA
)

// DB is the SA database. Lookup, LookupSPI and Outbound take no lock;
// writers are serialised by a mutex and publish copied shards.
type DB struct {
	clk     clock.Clock
	onEvent func(Event)

	byKey   [shards]atomic.Pointer[keyMap]   // shard: spi
	bySPI   [shards]atomic.Pointer[spiMap]   // shard: spi; every SA
	byReqID [shards]atomic.Pointer[reqidMap] // shard: reqid; insertion order
	n       atomic.Int64

	mu       sync.Mutex // writers
	timers   map[*SA][]clock.Timer
	wipes    map[*SA]func()      // removed SAs whose keys are wiped after WipeDelay
	reserved map[spiKey]struct{} // SPIs handed out by AllocSPI, not yet added
	closed   bool

	evMu  sync.Mutex // event queue; taken only when an event happens
	queue []Event
	wake  chan struct{}
	done  chan struct{}
}

// New returns an empty DB using clk for lifetimes (nil: the real clock).
// onEvent (may be nil) receives the events in order on a goroutine of the
// DB's own, never on the packet path; a slow callback delays later events
// but never a packet.
func New(clk clock.Clock, onEvent func(Event)) *DB {
	if clk == nil {
		clk = clock.Real{}
	}
	db := &DB{
		clk: clk, onEvent: onEvent,
		timers: map[*SA][]clock.Timer{}, reserved: map[spiKey]struct{}{},
		wake: make(chan struct{}, 1), done: make(chan struct{}),
	}
	for i := range shards {
		db.byKey[i].Store(&keyMap{})
		db.bySPI[i].Store(&spiMap{})
		db.byReqID[i].Store(&reqidMap{})
	}
	go db.deliver()
	return db
}

func (db *DB) deliver() {
	for {
		select {
		case <-db.wake:
		case <-db.done:
			return
		}
		for {
			db.evMu.Lock()
			q := db.queue
			db.queue = nil
			db.evMu.Unlock()
			if len(q) == 0 {
				break
			}
			for _, ev := range q {
				select {
				case <-db.done:
					return
				default:
				}
				if db.onEvent != nil {
					db.onEvent(ev)
				}
			}
		}
	}
}

// queueEvent sets bit in st and, if this call set it, queues kind for the
// SA that now owns st. The lock makes "set the flag" and "queue the event"
// one step, so a soft event is always queued before a hard one that
// another goroutine raises right after it.
func (db *DB) queueEvent(st *state, bit uint32, kind EventKind) {
	db.evMu.Lock()
	defer db.evMu.Unlock()
	if st.flags.Or(bit)&bit != 0 {
		return
	}
	sa := st.owner.Load()
	if sa == nil || sa.removed.Load() {
		return
	}
	db.queue = append(db.queue, Event{Kind: kind, SA: sa})
	select {
	case db.wake <- struct{}{}:
	default:
	}
}

// ErrExists means an SA with the same SPI, protocol and destination is
// already in the database.
var ErrExists = errors.New("sad: an SA with this SPI, protocol and destination exists")

// ErrClosed is returned by writers after Close.
var ErrClosed = errors.New("sad: database closed")

func keyOf(sa *SA) key { return key{sa.SPI, sa.Proto, sa.Dst.Unmap()} }

// Add installs sa and starts its lifetime timers. An SA with the same
// (SPI, protocol, destination) is refused with ErrExists. An SA object is
// added once: after Delete it cannot come back.
func (db *DB) Add(sa *SA) error {
	if err := validate(sa); err != nil {
		return err
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return ErrClosed
	}
	if err := db.prepare(sa); err != nil {
		return err
	}
	k := keyOf(sa)
	if db.lookupKey(k) != nil {
		return fmt.Errorf("sad: add %v: %w", sa, ErrExists)
	}
	sa.st = &state{created: db.clk.Now()}
	sa.st.owner.Store(sa)
	db.insert(k, sa)
	db.startTimers(sa)
	return nil
}

// Replace swaps old (which must be in the DB) for sa in one step, as
// readers see it. With the same (SPI, protocol, destination), it changes
// an SA in place (say, new UDP ports after a NAT mapping moved) and sa
// continues old's state: sequence numbers, replay window (sa.Replay is set
// to old's), counters, creation time, lifetime clock and events already
// raised, so no sequence number repeats under the same key. With a
// different key, sa starts afresh, as with Delete and Add.
func (db *DB) Replace(old, sa *SA) error {
	if old == nil {
		return errors.New("sad: replace: nil old SA")
	}
	if err := validate(sa); err != nil {
		return err
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return ErrClosed
	}
	ok, kn := keyOf(old), keyOf(sa)
	if db.lookupKey(ok) != old {
		return fmt.Errorf("sad: replace: %v is not in the database", old)
	}
	same := ok == kn
	if same {
		if old.Dir != sa.Dir || old.ESN != sa.ESN {
			return fmt.Errorf("sad: replace %v in place: direction and ESN must not change", old)
		}
		if sa.db != nil {
			return fmt.Errorf("sad: replace: %v was already added", sa)
		}
		sa.db = db
		sa.Replay = old.Replay
		sa.st = old.st
	} else {
		if db.lookupKey(kn) != nil {
			return fmt.Errorf("sad: replace with %v: %w", sa, ErrExists)
		}
		if err := db.prepare(sa); err != nil {
			return err
		}
		sa.st = &state{created: db.clk.Now()}
	}
	db.stopTimers(old)
	old.removed.Store(true)
	db.remove(ok, old)
	db.scheduleWipe(old, sa)
	sa.st.owner.Store(sa)
	db.insert(kn, sa)
	db.startTimers(sa)
	return nil
}

// prepare checks sa is fresh, gives an inbound SA its default window and
// attaches it to db. Called with db.mu held.
func (db *DB) prepare(sa *SA) error {
	if sa.db != nil {
		return fmt.Errorf("sad: %v was already added to a database", sa)
	}
	if sa.Dir == Inbound && sa.Replay == nil {
		w, err := NewWindow(DefaultWindow, sa.ESN)
		if err != nil {
			return fmt.Errorf("sad: %v: %w", sa, err)
		}
		sa.Replay = w
	}
	sa.db = db
	return nil
}

// Delete removes the SA with this SPI, protocol and destination and stops
// its timers; packets already holding it finish normally.
func (db *DB) Delete(spi uint32, proto Proto, dst netip.Addr) bool {
	db.mu.Lock()
	defer db.mu.Unlock()
	k := key{spi, proto, dst.Unmap()}
	sa := db.lookupKey(k)
	if sa == nil {
		return false
	}
	db.del(k, sa)
	return true
}

// DeleteReqID removes every SA of a request ID (not 0) and returns how many.
func (db *DB) DeleteReqID(reqid uint32) int {
	if reqid == 0 {
		return 0
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	list := (*db.byReqID[reqid%shards].Load())[reqid]
	for _, sa := range list {
		db.del(keyOf(sa), sa)
	}
	return len(list)
}

func (db *DB) del(k key, sa *SA) {
	db.stopTimers(sa)
	sa.removed.Store(true)
	db.remove(k, sa)
	db.scheduleWipe(sa, nil)
}

// WipeDelay is how long after its removal an SA's keys are wiped
// (ESP/AH suites' Wipe): a packet that looked the SA up just before the
// removal finishes with the real keys. Close wipes at once.
const WipeDelay = 2 * time.Second

// scheduleWipe wipes the suites of sa, a removed SA, WipeDelay from now,
// except a suite that keep (its same-key replacement) still uses (db.mu
// held).
func (db *DB) scheduleWipe(sa, keep *SA) {
	w := func() {
		if sa.ESP != nil && (keep == nil || keep.ESP != sa.ESP) {
			sa.ESP.Wipe()
		}
		if sa.AH != nil && (keep == nil || keep.AH != sa.AH) {
			sa.AH.Wipe()
		}
	}
	if db.wipes == nil {
		db.wipes = map[*SA]func(){}
	}
	db.wipes[sa] = w
	db.clk.AfterFunc(WipeDelay, func() {
		db.mu.Lock()
		_, pending := db.wipes[sa]
		delete(db.wipes, sa)
		db.mu.Unlock()
		if pending {
			w()
		}
	})
}

func (db *DB) lookupKey(k key) *SA { return (*db.byKey[k.spi%shards].Load())[k] }

// insert publishes sa in every index (db.mu held).
func (db *DB) insert(k key, sa *SA) {
	sk := spiKey{sa.SPI, sa.Proto}
	delete(db.reserved, sk)
	ps := &db.bySPI[sa.SPI%shards]
	ms := copyMap(*ps.Load())
	ms[sk] = append(slices.Clip(ms[sk]), sa)
	ps.Store(&ms)
	if sa.ReqID != 0 {
		p := &db.byReqID[sa.ReqID%shards]
		m := copyMap(*p.Load())
		m[sa.ReqID] = append(slices.Clip(m[sa.ReqID]), sa)
		p.Store(&m)
	}
	// The key index last: once Lookup finds sa, the others do too.
	p := &db.byKey[k.spi%shards]
	m := copyMap(*p.Load())
	m[k] = sa
	p.Store(&m)
	db.n.Add(1)
}

// remove unpublishes sa from every index (db.mu held).
func (db *DB) remove(k key, sa *SA) {
	p := &db.byKey[k.spi%shards]
	m := copyMap(*p.Load())
	delete(m, k)
	p.Store(&m)
	sk := spiKey{sa.SPI, sa.Proto}
	ps := &db.bySPI[sa.SPI%shards]
	ms := copyMap(*ps.Load())
	if l := without(ms[sk], sa); len(l) > 0 {
		ms[sk] = l
	} else {
		delete(ms, sk)
	}
	ps.Store(&ms)
	if sa.ReqID != 0 {
		pr := &db.byReqID[sa.ReqID%shards]
		mr := copyMap(*pr.Load())
		if l := without(mr[sa.ReqID], sa); len(l) > 0 {
			mr[sa.ReqID] = l
		} else {
			delete(mr, sa.ReqID)
		}
		pr.Store(&mr)
	}
	db.n.Add(-1)
}

func copyMap[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m)+1)
	for k, v := range m {
		c[k] = v
	}
	return c
}

// without returns a new slice of list without sa (list is never modified:
// readers may hold it).
func without(list []*SA, sa *SA) []*SA {
	out := make([]*SA, 0, len(list))
	for _, x := range list {
		if x != sa {
			out = append(out, x)
		}
	}
	return out
}

// Lookup finds the SA for an inbound packet by SPI, protocol and the
// packet's destination, or nil. It takes no lock and allocates nothing.
func (db *DB) Lookup(spi uint32, proto Proto, dst netip.Addr) *SA {
	return (*db.byKey[spi%shards].Load())[key{spi, proto, dst.Unmap()}]
}

// LookupSPI finds the inbound SA by SPI and protocol alone, or nil when
// there is none or more than one: for ESP-in-UDP behind a NAT, where the
// packet's destination is not the address the SA was made for. SPIs from
// AllocSPI are unique per protocol.
func (db *DB) LookupSPI(spi uint32, proto Proto) *SA {
	var found *SA
	for _, sa := range (*db.bySPI[spi%shards].Load())[spiKey{spi, proto}] {
		if sa.Dir == Inbound {
			if found != nil {
				return nil
			}
			found = sa
		}
	}
	return found
}

// Outbound returns the newest usable outbound SA of reqid (make-before-
// break: the rekeyed SA takes over as soon as it is added), or nil. SAs
// past their hard lifetime or out of sequence numbers are skipped.
func (db *DB) Outbound(reqid uint32) *SA {
	list := (*db.byReqID[reqid%shards].Load())[reqid]
	for i := len(list) - 1; i >= 0; i-- {
		sa := list[i]
		if sa.Dir == Outbound && sa.st.flags.Load()&(flagHard|flagExhausted) == 0 {
			return sa
		}
	}
	return nil
}

// All returns every SA, ordered by request ID, direction, protocol, SPI
// and destination (a total order, so status output is stable).
func (db *DB) All() []*SA {
	out := make([]*SA, 0, db.Len())
	for i := range shards {
		for _, sa := range *db.byKey[i].Load() {
			out = append(out, sa)
		}
	}
	slices.SortFunc(out, func(a, b *SA) int {
		return cmp.Or(
			cmp.Compare(a.ReqID, b.ReqID),
			cmp.Compare(a.Dir, b.Dir),
			cmp.Compare(a.Proto, b.Proto),
			cmp.Compare(a.SPI, b.SPI),
			a.Dst.Unmap().Compare(b.Dst.Unmap()),
		)
	})
	return out
}

// Len is the number of SAs.
func (db *DB) Len() int { return int(db.n.Load()) }

// startTimers schedules the time lifetimes, counted from the state's
// creation (db.mu held).
func (db *DB) startTimers(sa *SA) {
	now := db.clk.Now()
	var ts []clock.Timer
	at := func(d time.Duration, kind EventKind) {
		if d <= 0 || sa.st.flags.Load()&kind.flag() != 0 {
			return
		}
		left := max(sa.st.created.Add(d).Sub(now), 0)
		ts = append(ts, db.clk.AfterFunc(left, func() { sa.fire(kind) }))
	}
	at(sa.Soft.Time, SoftExpired)
	at(sa.Hard.Time, HardExpired)
	if len(ts) > 0 {
		db.timers[sa] = ts
	}
}

func (db *DB) stopTimers(sa *SA) {
	for _, t := range db.timers[sa] {
		t.Stop()
	}
	delete(db.timers, sa)
}

// Close stops every timer and the event goroutine; events not yet
// delivered are dropped. Lookups keep working; writers fail.
func (db *DB) Close() {
	db.mu.Lock()
	defer db.mu.Unlock()
	if db.closed {
		return
	}
	db.closed = true
	for sa := range db.timers {
		db.stopTimers(sa)
	}
	// Removed SAs' keys at once (their timers may not run before the
	// process ends), and those of every SA still in the DB: after Close
	// nothing may use them but lookups of a stopped data plane.
	for sa, w := range db.wipes {
		w()
		delete(db.wipes, sa)
	}
	for _, sa := range db.All() {
		if sa.ESP != nil {
			sa.ESP.Wipe()
		}
		if sa.AH != nil {
			sa.AH.Wipe()
		}
	}
	close(db.done)
}

func validate(sa *SA) error {
	if sa == nil {
		return errors.New("sad: nil SA")
	}
	var err error
	switch {
	case sa.Proto != ESP && sa.Proto != AH:
		err = fmt.Errorf("protocol %v is neither ESP nor AH", sa.Proto)
	case sa.Mode != Transport && sa.Mode != Tunnel:
		err = fmt.Errorf("bad %v", sa.Mode)
	case sa.Dir != Inbound && sa.Dir != Outbound:
		err = fmt.Errorf("bad %v", sa.Dir)
	case sa.SPI < 256:
		err = fmt.Errorf("SPI %d is reserved (RFC 4303 2.1)", sa.SPI)
	case !sa.Src.IsValid() || !sa.Dst.IsValid():
		err = errors.New("endpoints missing")
	case sa.Src.Unmap().Is4() != sa.Dst.Unmap().Is4():
		err = errors.New("endpoints of different address families")
	case sa.Proto == ESP && (sa.ESP == nil || sa.AH != nil):
		err = errors.New("an ESP SA needs an ESP suite and no AH suite")
	case sa.Proto == AH && (sa.AH == nil || sa.ESP != nil):
		err = errors.New("an AH SA needs an AH suite and no ESP suite")
	case sa.ESP != nil && sa.ESP.ESN() != sa.ESN:
		err = errors.New("the ESP suite's ESN setting differs from the SA's")
	case sa.Encap != nil && sa.Proto != ESP:
		err = errors.New("UDP encapsulation is for ESP only")
	case sa.Dir == Outbound && sa.Replay != nil:
		err = errors.New("an outbound SA has no replay window")
	case sa.Replay != nil && sa.Replay.ESN() != sa.ESN:
		err = errors.New("the replay window's ESN setting differs from the SA's")
	case below(sa.Soft.Time, sa.Hard.Time) || below(sa.Soft.Bytes, sa.Hard.Bytes) || below(sa.Soft.Packets, sa.Hard.Packets):
		err = errors.New("a soft lifetime is not below its hard lifetime")
	}
	if err != nil {
		return fmt.Errorf("sad: SA %08x: %w", sa.SPI, err)
	}
	return nil
}

// below reports a soft limit that is set but not below a set hard limit.
func below[T int64 | uint64 | time.Duration](soft, hard T) bool {
	return soft != 0 && hard != 0 && soft >= hard
}
