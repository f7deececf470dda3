// Package dataplane is gosec's userspace packet path: it reads plaintext
// from the TUN device, seals it with the SA its policy names and sends it
// through raw ESP/AH sockets or ESP-in-UDP, and it opens what arrives on
// those sockets, checks it against its SA's policy and writes the inner
// packet into the TUN for the kernel to deliver or forward.
//
// Each socket has its own loop goroutine with its own preallocated buffers;
// SA and policy lookups read immutable snapshots, counters are atomics, so
// the hot path takes no global lock and allocates nothing per packet.
package dataplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/internal/ratelog"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

// Config wires a Plane to its devices and databases.
type Config struct {
	TUN  *netio.TUN
	ESP  *netio.RawConn // raw IP protocol 50; also sends bypassed cleartext
	AH   *netio.RawConn // raw IP protocol 51; nil: no AH
	NATT *netio.NATT    // ESP-in-UDP on the NAT-T port; nil: none
	SAD  *sad.DB
	SPD  *spd.DB
	// WireMTU is the MTU of the path to the peers (default 1500): sealed
	// packets larger than it are not sent; the sender gets ICMP
	// fragmentation-needed with the inner MTU that fits.
	WireMTU int
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
}

// New returns a Plane for cfg; Run starts it.
func New(cfg Config) (*Plane, error) {
	if cfg.TUN == nil || cfg.ESP == nil || cfg.SAD == nil || cfg.SPD == nil {
		return nil, errors.New("dataplane: TUN, ESP socket, SAD and SPD are required")
	}
	if cfg.WireMTU == 0 {
		cfg.WireMTU = 1500
	}
	log := cfg.Log
	if log == nil {
		log = slog.Default()
	}
	return &Plane{cfg: cfg, log: log, rl: ratelog.Limiter{Log: log}, trapSeen: map[uint32]struct{}{}}, nil
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
	return s
}

// Run runs the loops until ctx ends or a device fails. The caller closes
// the devices after Run returns (closing them also ends the loops).
func (p *Plane) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	errc := make(chan error, 4)
	start := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && ctx.Err() == nil && !errors.Is(err, netio.ErrClosed) {
				errc <- fmt.Errorf("dataplane: %s loop: %w", name, err)
			}
		}()
	}
	start("tun", p.tunLoop)
	start("esp", func() error { return p.rawLoop(p.cfg.ESP) })
	if p.cfg.AH != nil {
		start("ah", func() error { return p.rawLoop(p.cfg.AH) })
	}
	if p.cfg.NATT != nil {
		start("udp", p.udpLoop)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-ctx.Done():
		return nil
	case err := <-errc:
		return err
	case <-done:
		return nil
	}
}

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
