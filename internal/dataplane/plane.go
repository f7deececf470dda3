// Package dataplane is gosec's userspace packet path: it reads plaintext
// from the TUN device, seals it with the SA its policy names and sends it
// through raw ESP/AH sockets or ESP-in-UDP, and it opens what arrives on
// those sockets, checks it against its SA's policy and writes the inner
// packet into the TUN for the kernel to deliver or forward.
//
// Each device (the TUN, each socket) has a reader goroutine; a pool of
// workers seals and opens in parallel; a sequential stage per reader sends
// or writes in the order packets were read (pipeline.go). Buffers are
// preallocated per reader and recycled; SA and policy lookups read
// immutable snapshots, counters are atomics added once per batch, so the
// hot path takes no global lock and allocates nothing per packet.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gosec-ipsec/gosec/internal/clock"
	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/internal/ratelog"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

// PacketConn is a raw IP socket for ESP or AH (netio.RawConn, or an
// AF_PACKET ring): Recv fills whole IPv4 packets into ms, Send sends whole
// IPv4 packets (the destination taken from their headers).
type PacketConn interface {
	Recv(ms []netio.Msg) (int, error)
	Send(ms []netio.Msg) (int, error)
}

// TUNDevice is the plaintext side (netio.TUN): batches of IPv4 packets
// read at an offset and written with netio.TUNHeadroom in front.
type TUNDevice interface {
	BatchSize() int
	MTU() (int, error)
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	Write(bufs [][]byte, offset int) (int, error)
}

// UDPConn is the ESP-in-UDP socket on the NAT-T port (netio.NATT): it
// reads only the ESP packets of a batch (IKE and keepalives go elsewhere)
// and sends ESP runs coalesced (UDP_SEGMENT).
type UDPConn interface {
	ReadESP(ms []netio.Msg, out []netio.Packet) (int, error)
	SendCoalesced(ms []netio.Msg) (int, error)
	LocalAddr() netip.AddrPort
}

// Config wires a Plane to its devices and databases. The devices are
// interfaces so that the plane runs on fakes (benchmarks, tests); a nil
// AH or NATT must be a nil interface, not a typed nil pointer.
type Config struct {
	TUN  TUNDevice
	ESP  PacketConn // raw IP protocol 50; also sends bypassed cleartext
	AH   PacketConn // raw IP protocol 51; nil: no AH
	NATT UDPConn    // ESP-in-UDP on the NAT-T port; nil: none
	// NATTQueues are more ESP-in-UDP sockets bound to NATT's port with
	// SO_REUSEPORT, one reader each: the kernel hashes each flow (peer
	// address and port) to one socket, so peers spread over readers while
	// each SA's packets keep to one reader and their order. Sends go
	// through NATT.
	NATTQueues []UDPConn
	// TUNQueues are the TUN's other queues (netio.TUN.Queue(1..)), one
	// reader each. The TUN must steer every SA's packets to one queue:
	// Steer is given the outbound policies' destinations whenever the SPD
	// changes. Opened packets are written through TUN.
	TUNQueues []TUNDevice
	// Steer sets the TUN's queue choice (netio.TUN.Steer); needed with
	// TUNQueues.
	Steer func(dsts []netip.Prefix) error
	SAD   *sad.DB
	SPD   *spd.DB
	// WireMTU is the MTU of the path to the peers (default 1500): sealed
	// packets larger than it are not sent; the sender gets ICMP
	// fragmentation-needed with the inner MTU that fits.
	WireMTU int
	// Workers is the number of goroutines that seal and open in parallel.
	// 0 chooses by the machine (see autoWorkers): GOMAXPROCS workers from
	// minParallelProcs cores up, none below. With 1, or a negative value,
	// every reader does its own cryptography inline.
	Workers int
	// OnTrap is called (from the TUN loop, so it must not block) when a
	// packet matches a trap policy that has no SA yet.
	OnTrap func(reqid uint32)
	Log    *slog.Logger
	// Debug logs every dropped packet at debug level (slow; for
	// troubleshooting only).
	Debug bool
	// DebugDrops, if set, decides the same per conn ("" for drops of no
	// SA): the daemon asks the conn's log level (gosec debug CONN debug).
	DebugDrops func(conn string) bool
	// KeepWarm, when positive, wakes the plane every KeepWarm while
	// packets have flowed within KeepWarmFor (default 2 s), which cuts
	// the latency of sparse packets (keepwarm.go); 0 turns it off.
	KeepWarm    time.Duration
	KeepWarmFor time.Duration
	// Clock drives the keep-warm timer (nil: real time).
	Clock clock.Clock
}

// Stats are the plane-wide counters. Per-SA counters live in the SAD.
type Stats struct {
	Drops      [drop.Count]atomic.Uint64
	InPackets  atomic.Uint64 // opened and written to the TUN
	InBytes    atomic.Uint64
	OutPackets atomic.Uint64 // sealed and sent
	OutBytes   atomic.Uint64
	Bypassed   atomic.Uint64 // sent in the clear by a bypass policy
	SendErrors atomic.Uint64
	Held       atomic.Uint64 // held by a trap policy until its SA existed
	// Stalls counts the times a reader found all its batches in flight
	// and waited for one: the pipeline's drop policy is back-pressure, so
	// the kernel's socket or TUN queue holds (or drops, and counts) what
	// arrives meanwhile; nothing already read is dropped for lack of room.
	Stalls atomic.Uint64
	// Inline counts the batches a reader sealed or opened itself instead
	// of handing them to the workers (small batches with the pipeline
	// idle, for latency; or the workers' queue full).
	Inline atomic.Uint64
	// KeepWarmTicks counts the keep-warm wake-ups (Config.KeepWarm): what
	// the lower latency of sparse packets has cost.
	KeepWarmTicks atomic.Uint64
}

// StatsSnapshot is a plain copy of Stats.
type StatsSnapshot struct {
	Drops      map[string]uint64 `json:"drops"`
	InPackets  uint64            `json:"in_packets"`
	InBytes    uint64            `json:"in_bytes"`
	OutPackets uint64            `json:"out_packets"`
	OutBytes   uint64            `json:"out_bytes"`
	Bypassed   uint64            `json:"bypassed"`
	SendErrors uint64            `json:"send_errors"`
	Held       uint64            `json:"held"`
	Stalls     uint64            `json:"stalls"`
	Inline     uint64            `json:"inline_batches"`
	// KeepWarmTicks are the keep-warm wake-ups so far.
	KeepWarmTicks uint64 `json:"keep_warm_ticks"`
	// TUNQueuePackets are the packets read from each TUN queue (how the
	// steering spread the tunnels).
	TUNQueuePackets []uint64 `json:"tun_queue_packets"`
}

// Plane is a running data plane.
type Plane struct {
	cfg   Config
	stats Stats
	rl    ratelog.Limiter
	log   *slog.Logger

	trapMu   sync.Mutex
	trapSeen map[uint32]struct{}
	held     holdQueue
	dropLog  [drop.Count]logGate
	// sendHeld, if set, replaces dispatch for released packets (tests).
	sendHeld func(raw, rawAH, udp []netio.Msg)
	// ipid hands the TUN readers blocks of outer IPv4 IDs, so that
	// readers on several queues never number two tunnels' packets alike.
	ipid atomic.Uint32
	// tunRead counts the packets read per TUN queue.
	tunRead []atomic.Uint64
	stopped chan struct{}
}

// New returns a Plane for cfg; Run starts it.
func New(cfg Config) (*Plane, error) {
	if cfg.TUN == nil || cfg.ESP == nil || cfg.SAD == nil || cfg.SPD == nil {
		return nil, errors.New("dataplane: TUN, ESP socket, SAD and SPD are required")
	}
	if len(cfg.TUNQueues) > 0 && cfg.Steer == nil {
		return nil, errors.New("dataplane: TUN queues need Steer: unsteered queues reorder an SA's packets")
	}
	if cfg.WireMTU == 0 {
		cfg.WireMTU = 1500
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	p := &Plane{cfg: cfg, log: log, rl: ratelog.Limiter{Log: log}, trapSeen: map[uint32]struct{}{}, stopped: make(chan struct{})}
	p.ipid.Store(rand.Uint32())
	p.tunRead = make([]atomic.Uint64, 1+len(cfg.TUNQueues))
	return p, nil
}

// Stats returns a snapshot of the plane-wide counters.
func (p *Plane) Stats() StatsSnapshot {
	s := StatsSnapshot{Drops: map[string]uint64{}}
	for r := drop.Reason(1); r < drop.Count; r++ {
		if n := p.stats.Drops[r].Load(); n > 0 {
			s.Drops[r.String()] = n
		}
	}
	s.InPackets = p.stats.InPackets.Load()
	s.InBytes = p.stats.InBytes.Load()
	s.OutPackets = p.stats.OutPackets.Load()
	s.OutBytes = p.stats.OutBytes.Load()
	s.Bypassed = p.stats.Bypassed.Load()
	s.SendErrors = p.stats.SendErrors.Load()
	s.Held = p.stats.Held.Load()
	s.Stalls = p.stats.Stalls.Load()
	s.Inline = p.stats.Inline.Load()
	s.KeepWarmTicks = p.stats.KeepWarmTicks.Load()
	for i := range p.tunRead {
		s.TUNQueuePackets = append(s.TUNQueuePackets, p.tunRead[i].Load())
	}
	return s
}

// activity is the number of packets read so far from the TUN and opened
// from the sockets: what the keep-warm timer watches.
func (p *Plane) activity() uint64 {
	n := p.stats.InPackets.Load()
	for i := range p.tunRead {
		n += p.tunRead[i].Load()
	}
	return n
}

// Run runs the loops until ctx ends or a device fails. The caller closes
// the devices after Run returns (closing them also ends the loops, and
// then the workers and sequential stages; Stopped tells when all have).
func (p *Plane) Run(ctx context.Context) error {
	workers := autoWorkers(p.cfg.Workers, runtime.GOMAXPROCS(0))
	var jobs chan cryptoJob
	if workers > 0 {
		jobs = make(chan cryptoJob, jobQueueLen)
	}
	var readers, all sync.WaitGroup
	errc := make(chan error, 4+len(p.cfg.NATTQueues)+len(p.cfg.TUNQueues))
	start := func(name string, f func() error) {
		readers.Add(1)
		all.Add(1)
		go func() {
			defer all.Done()
			defer readers.Done()
			if err := f(); err != nil && ctx.Err() == nil && !errors.Is(err, netio.ErrClosed) {
				errc <- fmt.Errorf("dataplane: %s loop: %w", name, err)
			}
		}()
	}
	if p.cfg.KeepWarm > 0 {
		clk := p.cfg.Clock
		if clk == nil {
			clk = clock.Real{}
		}
		w := newWarmer(clk, p.cfg.KeepWarm, p.cfg.KeepWarmFor, p.activity, func() { p.stats.KeepWarmTicks.Add(1) })
		w.start()
		defer w.stop()
	}
	if p.cfg.Steer != nil {
		// Steer before the extra queues are read, and after every change.
		p.steer()
		go p.steerLoop(ctx, p.cfg.SPD.Watch())
	}
	start("tun", func() error { return p.tunLoop(p.cfg.TUN, &p.tunRead[0], jobs, workers) })
	for i, q := range p.cfg.TUNQueues {
		start(fmt.Sprintf("tun%d", i+1), func() error { return p.tunLoop(q, &p.tunRead[i+1], jobs, workers) })
	}
	start("esp", func() error { return p.rawLoop(p.cfg.ESP, jobs, workers) })
	if p.cfg.AH != nil {
		start("ah", func() error { return p.rawLoop(p.cfg.AH, jobs, workers) })
	}
	if p.cfg.NATT != nil {
		start("udp", func() error { return p.udpLoop(p.cfg.NATT, jobs, workers) })
		for i, q := range p.cfg.NATTQueues {
			start(fmt.Sprintf("udp%d", i+1), func() error { return p.udpLoop(q, jobs, workers) })
		}
	}
	for i := 0; i < workers; i++ {
		all.Add(1)
		go func() {
			defer all.Done()
			worker(jobs)
		}()
	}
	done := make(chan struct{})
	go func() {
		// Every reader has ended (and waited for its sequential stage):
		// nothing more is queued for the workers.
		readers.Wait()
		if jobs != nil {
			close(jobs)
		}
		close(done)
		all.Wait()
		close(p.stopped)
	}()
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	case <-done:
		return nil
	}
}

// steerLoop keeps the TUN's queue steering in line with the SPD until
// ctx ends or the plane stops. Between a policy's arrival and its
// steering its first packets may be read from queue 0; a group never
// changes queues while it exists. Each pass recomputes the groups of all
// outbound policies (about 1 ms at 10,000 tunnels), so after a pass the
// loop rests steerRest times as long before the next one: while
// thousands of tunnels come up, steering takes at most a fifth of a core
// and lags by a few milliseconds; with a few tunnels, microseconds.
func (p *Plane) steerLoop(ctx context.Context, changed <-chan struct{}) {
	rest := time.NewTimer(0)
	defer rest.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.stopped:
			return
		case <-changed:
		}
		start := time.Now()
		p.steer()
		rest.Reset(min(steerRest*time.Since(start), steerRestMax))
		select {
		case <-ctx.Done():
			return
		case <-p.stopped:
			return
		case <-rest.C:
		}
	}
}

// A steering pass is followed by a rest of steerRest times its duration,
// at most steerRestMax.
const (
	steerRest    = 4
	steerRestMax = 50 * time.Millisecond
)

func (p *Plane) steer() {
	if err := p.cfg.Steer(p.cfg.SPD.OutDestinations()); err != nil {
		p.rl.Warn("steer", "TUN queue steering not updated", "err", err)
	}
}

// Stopped is closed when every goroutine Run started has ended (after the
// devices were closed).
func (p *Plane) Stopped() <-chan struct{} { return p.stopped }

// dropPkt counts a drop globally and on sa (when known), and logs it at a
// limited rate. Dummy packets are dropped quietly.
func (p *Plane) dropPkt(sa *sad.SA, r drop.Reason, where string, peer netip.Addr) {
	p.stats.Drops[r].Add(1)
	if sa != nil {
		sa.CountDrop(r)
	}
	if r == drop.Dummy {
		return
	}
	conn := ""
	if sa != nil {
		conn = sa.Conn
	}
	if p.cfg.Debug || (p.cfg.DebugDrops != nil && p.cfg.DebugDrops(conn)) {
		p.log.Debug("drop", "conn", conn, "reason", r.String(), "where", where, "peer", peer)
		return
	}
	// Decide before building any log arguments: a flood of drops costs two
	// atomic operations per packet, no allocation and no shared lock.
	suppressed, ok := p.dropLog[r].allow(time.Now().UnixNano())
	if !ok {
		return
	}
	if suppressed > 0 {
		p.log.Warn("dropped packet", "conn", conn, "reason", r.String(), "where", where, "peer", peer, "suppressed", suppressed)
		return
	}
	p.log.Warn("dropped packet", "conn", conn, "reason", r.String(), "where", where, "peer", peer)
}

// Drop log rate: at most dropLogBurst lines per reason in each
// dropLogInterval; the next line says how many were suppressed.
const (
	dropLogInterval = int64(time.Second)
	dropLogBurst    = 5
)

// logGate is one drop reason's log budget, lock-free.
type logGate struct {
	start      atomic.Int64 // unix nanoseconds of the current interval
	n          atomic.Int32 // lines in it
	suppressed atomic.Uint64
}

// allow reports whether a line may be logged at now, and how many were
// suppressed since the last one that was.
func (g *logGate) allow(now int64) (uint64, bool) {
	start := g.start.Load()
	if now-start >= dropLogInterval && g.start.CompareAndSwap(start, now) {
		g.n.Store(0)
	}
	if g.n.Add(1) > dropLogBurst {
		g.suppressed.Add(1)
		return 0, false
	}
	return g.suppressed.Swap(0), true
}

func (p *Plane) trap(reqid uint32) {
	if p.cfg.OnTrap == nil {
		return
	}
	p.trapMu.Lock()
	_, seen := p.trapSeen[reqid]
	if !seen {
		p.trapSeen[reqid] = struct{}{}
	}
	p.trapMu.Unlock()
	if !seen {
		p.cfg.OnTrap(reqid)
	}
}

// ClearTrap lets the next packet for reqid call OnTrap again (after the key
// manager has given up or the SA has gone).
func (p *Plane) ClearTrap(reqid uint32) {
	p.trapMu.Lock()
	delete(p.trapSeen, reqid)
	p.trapMu.Unlock()
}

// minParallelProcs is the fewest cores on which the data plane hands
// batches to crypto workers by default. Below it every reader (the TUN,
// each socket) seals or opens its own batches: the readers of the two
// directions already keep two cores busy, and on two cores a hand-off
// costs more (two goroutine wake-ups, a futex and a context switch per
// batch, expensive in a VM) than the parallel cryptography gains.
// Measured with scripts/bench-e2e.sh on a 2-core VM (README,
// Performance): AES-128-GCM raw ESP 1.3-1.5 Gbit/s inline against
// 0.8-1.5 with two workers, ESP-in-UDP 2.0-2.7 against 1.7-2.2.
const minParallelProcs = 4

// autoWorkers returns the number of crypto workers for a configured
// value (0: choose) on procs cores; 0 means every reader works inline.
func autoWorkers(configured, procs int) int {
	w := configured
	if w == 0 {
		if procs < minParallelProcs {
			return 0
		}
		w = procs
	}
	if w < 2 {
		return 0 // one worker: hand-offs would only cost
	}
	return w
}
