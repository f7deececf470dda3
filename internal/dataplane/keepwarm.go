package dataplane

import (
	"sync"
	"time"

	"github.com/gosec-ipsec/gosec/internal/clock"
)

// Keeping the process warm between sparse packets.
//
// A packet that reaches the daemon after tens of milliseconds in which it
// did nothing takes far longer from the wire to the TUN (or back) than
// one that follows another closely: on our 2-vCPU VMs, 50-250 us per
// gateway hop after 50 ms of quiet against 17-100 us after 5 ms
// (scripts/bench-pinghops.sh with ping -i 0.005). Outside processes
// waking every 2 ms, or spinning so that no vCPU halts, do not change
// that; a timer in the daemon itself does, so what goes cold is the
// daemon, not the VM's idle CPUs. The warmer runs such a timer: every
// Config.KeepWarm while packets have flowed within the last
// Config.KeepWarmFor, and every idleCheck after that (only to see
// whether traffic has come back), so an idle gateway costs ten
// wake-ups a second and a gateway with interactive traffic (a ping, an
// SSH session, a voice call) gets the latency of a busy one. While
// traffic is dense the timer adds nothing that matters: a wake-up per
// millisecond beside tens of thousands of packets. While warm it costs
// about 3 % of a core (README, Performance).

// idleCheck is how often a warmer that has gone idle looks for traffic.
const idleCheck = 100 * time.Millisecond

// DefaultKeepWarmFor is Config.KeepWarmFor's default.
const DefaultKeepWarmFor = 2 * time.Second

// warmer is the keep-warm timer of a Plane.
type warmer struct {
	clk      clock.Clock
	interval time.Duration
	warmFor  time.Duration
	activity func() uint64 // packets read so far (TUN and sockets)
	ticks    func()        // counts a warm tick

	mu         sync.Mutex
	timer      clock.Timer
	stopped    bool
	last       uint64    // activity at the last change
	lastChange time.Time // when activity last changed
}

// newWarmer returns a warmer; start runs it.
func newWarmer(clk clock.Clock, interval, warmFor time.Duration, activity func() uint64, ticks func()) *warmer {
	if warmFor <= 0 {
		warmFor = DefaultKeepWarmFor
	}
	return &warmer{clk: clk, interval: interval, warmFor: warmFor, activity: activity, ticks: ticks}
}

// start takes the present activity as the last change (so a new plane
// is warm for warmFor) and arms the timer.
func (w *warmer) start() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.last = w.activity()
	w.lastChange = w.clk.Now()
	w.timer = w.clk.AfterFunc(w.interval, w.tick)
}

// tick runs on the timer: it notes whether packets flowed since the last
// tick and arms the next one, Interval away while warm, idleCheck away
// once nothing has flowed for warmFor.
func (w *warmer) tick() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return
	}
	now := w.clk.Now()
	if n := w.activity(); n != w.last {
		w.last, w.lastChange = n, now
	}
	next := w.interval
	if now.Sub(w.lastChange) >= w.warmFor {
		next = max(idleCheck, w.interval)
	} else {
		w.ticks()
	}
	w.timer = w.clk.AfterFunc(next, w.tick)
}

// stop ends the timer.
func (w *warmer) stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopped = true
	if w.timer != nil {
		w.timer.Stop()
	}
}
