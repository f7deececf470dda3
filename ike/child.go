package ike

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/gosec-ipsec/gosec/internal/clock"
)

// Children: the IPsec SA pairs Quick Modes installed, their rekeys and
// expiries, and their removal.

// child is an installed ChildSA and the phase-1 SA that made it.
type child struct {
	sa          *ChildSA
	p           *p1
	established time.Time
	initiator   bool
	group       string
	conn        *Conn
	rekeyed     bool
	timers      []clock.Timer
	// identity is the identity pair of the ISAKMP SA that negotiated it
	// (p1.identity): Deletes and INITIAL-CONTACT from other identities
	// do not touch it.
	identity string
	// seq is when it was installed (Engine.seq).
	seq uint64
	// rekeying is set while a Quick Mode negotiates its successor;
	// rekeyAt is when its rekey is due (0: never), from its installation.
	rekeying bool
	rekeyAt  time.Duration
}

func (c *child) stop() {
	for _, t := range c.timers {
		t.Stop()
	}
	c.timers = nil
}

var errNoSA = errors.New("no ISAKMP SA")

// rekeyGrace is how long a replaced SA pair stays installed.
const rekeyGrace = 5 * time.Second

// armChild schedules the rekey (rekey=yes) and the hard expiry of a
// child; see rekeyTime for when.
func (e *Engine) armChild(c *child) {
	life := c.sa.Lifetime
	if life <= 0 {
		return
	}
	if at := c.sa.RekeyAfter; at > 0 {
		c.rekeyAt = at
		c.timers = append(c.timers, e.cfg.Clock.AfterFunc(at, func() {
			e.post(func() { e.softExpire(c, "lifetime") })
		}))
	}
	c.timers = append(c.timers, e.cfg.Clock.AfterFunc(life, func() {
		e.post(func() { e.deleteChild(c, "lifetime expired") })
	}))
}

// rekeyTime is when, after its installation, child c is rekeyed; 0 for
// never. The side that initiated c rekeys at lifetime - margin -
// random(0, margin x rekeyfuzz), as strongSwan's child_cfg computes it
// (src/libcharon/config/child_cfg.c, get_lifetime with jitter); the
// responder waits until only half the margin is left, as Libreswan does
// (programs/pluto/rekeyfuzz.c, fuzz_rekey_margin: "Give the responder a
// smaller margin so that its rekey event is scheduled later"), so that
// both peers do not rekey at once. A responder of a right=%any conn
// cannot initiate and never rekeys. A margin that leaves no lifetime is
// cut to a tenth of the lifetime.
func (e *Engine) rekeyTime(c *child) time.Duration {
	return e.rekeyTimeFor(c.conn, c.sa.Lifetime, c.initiator)
}

func (e *Engine) rekeyTimeFor(conn *Conn, life time.Duration, initiator bool) time.Duration {
	if conn == nil || !conn.Rekey || life <= 0 {
		return 0
	}
	margin := conn.RekeyMargin
	if margin <= 0 || margin >= life {
		margin = life / 10
	}
	if !initiator {
		if !conn.Remote.IsValid() {
			return 0
		}
		return life - margin/2
	}
	at := life - margin
	if conn.RekeyFuzz > 0 {
		span := uint64(margin) * uint64(conn.RekeyFuzz) / 100
		at -= time.Duration(be64u(e.random(8)) % (span + 1))
	}
	if at < life/10 {
		at = life / 10
	}
	return at
}

// softVolume is the soft byte or packet limit for a hard limit: hard -
// margin - random(0, margin x fuzz) on the side that initiated the SA,
// hard - margin/2 on the other (as rekeyTimeFor); margin 0 means a tenth
// of hard; never below a tenth of hard. 0 for no hard limit.
func (e *Engine) softVolume(hard, margin uint64, fuzz int, initiator bool) uint64 {
	if hard == 0 {
		return 0
	}
	if margin == 0 || margin >= hard {
		margin = hard / 10
	}
	soft := hard - margin/2
	if initiator {
		soft = hard - margin
		if fuzz > 0 {
			span := margin / 100 * uint64(fuzz)
			if margin < 1<<40 {
				span = margin * uint64(fuzz) / 100
			}
			if span < ^uint64(0) {
				span = be64u(e.random(8)) % (span + 1)
			}
			if span > soft {
				span = soft
			}
			soft -= span
		}
	}
	return max(soft, hard/10, 1)
}

func be64u(b []byte) uint64 { return uint64(be32u(b[:4]))<<32 | uint64(be32u(b[4:8])) }

// softExpire starts the rekey of c unless it is replaced, already being
// rekeyed, or its conn does not rekey.
func (e *Engine) softExpire(c *child, why string) {
	if c.rekeyed || c.rekeying || !e.hasChild(c) {
		return
	}
	if c.conn == nil || !c.conn.Rekey || (!c.initiator && !c.conn.Remote.IsValid()) {
		return
	}
	e.log.Info("rekeying IPsec SA", "conn", c.sa.Conn, "in_spi", fmt.Sprintf("%08x", c.sa.InSPI), "why", why)
	e.rekey(c)
}

// SoftExpire reports the data plane's soft lifetime event (time, bytes,
// packets or sequence numbers near exhaustion) of an SA of conn, named by
// its inbound or outbound SPI: the engine negotiates the successor now,
// unless one exists or is under way. Safe from any goroutine.
func (e *Engine) SoftExpire(conn string, spi uint32) {
	e.postLifecycle(func() {
		if c := e.childBySPI(conn, spi); c != nil {
			e.softExpire(c, "soft lifetime reached in the data plane")
		}
	})
}

// HardExpire reports the data plane's hard lifetime event of an SA of
// conn (inbound or outbound SPI): the pair is removed and the peer told.
// Safe from any goroutine.
func (e *Engine) HardExpire(conn string, spi uint32) {
	e.postLifecycle(func() {
		if c := e.childBySPI(conn, spi); c != nil {
			e.deleteChild(c, "hard lifetime reached in the data plane")
		}
	})
}

// postLifecycle queues a lifecycle event; such events must not be lost,
// so a full queue is retried from another goroutine for a while.
func (e *Engine) postLifecycle(f func()) {
	if e.post(f) {
		return
	}
	go func() {
		for i := 0; i < 100; i++ {
			time.Sleep(50 * time.Millisecond)
			if e.post(f) {
				return
			}
		}
		e.log.Error("IKE event queue full: a lifetime event was lost")
	}()
}

func (e *Engine) childBySPI(conn string, spi uint32) *child {
	for _, c := range e.children[conn] {
		if c.sa.InSPI == spi || c.sa.OutSPI == spi {
			return c
		}
	}
	return nil
}

func (e *Engine) hasChild(c *child) bool {
	for _, x := range e.children[c.sa.Conn] {
		if x == c {
			return true
		}
	}
	return false
}

// rekey negotiates a successor for c's selectors, under the existing
// ISAKMP SA or a new one.
func (e *Engine) rekey(c *child) {
	conn := e.conns[c.sa.Conn]
	if conn == nil {
		return
	}
	c.rekeying = true
	e.armRekeyRetry(c)
	p := e.newestP1(c.identity, conn)
	if p == nil {
		p = e.newestP1("", conn)
	}
	if p != nil {
		e.quickInitiate(p, conn, c.sa.LocalTS, c.sa.RemoteTS, func(err error) {
			if err != nil {
				e.log.Warn("rekey failed", "conn", conn.Name, "err", err)
			}
		}, nil)
		return
	}
	if e.joinPending(conn, nil) {
		return // a Main Mode under way negotiates every selector pair
	}
	e.startPhase1(conn, nil, 1) // its Quick Modes negotiate every selector pair
}

// armRekeyRetry tries the rekey of c again if no successor exists after
// half its remaining lifetime (between 5 s and 2 min): a lost exchange
// or a peer briefly away must not let the pair expire without one.
func (e *Engine) armRekeyRetry(c *child) {
	left := time.Minute
	if c.sa.Lifetime > 0 {
		left = c.sa.Lifetime - e.cfg.Clock.Now().Sub(c.established)
	}
	d := min(max(left/2, 5*time.Second), 2*time.Minute)
	if c.sa.Lifetime > 0 && d >= left {
		return
	}
	c.timers = append(c.timers, e.cfg.Clock.AfterFunc(d, func() {
		e.post(func() {
			if c.rekeyed || !e.hasChild(c) {
				return
			}
			c.rekeying = false
			e.softExpire(c, "no successor yet: retrying the rekey")
		})
	}))
}

// deleteChild removes c, telling the peer.
func (e *Engine) deleteChild(c *child, why string) {
	e.dropChildren(c.sa.Conn, func(x *child) bool { return x == c }, true, "IPsec SA deleted", "why", why)
}

func (e *Engine) allChildren() []*child {
	var out []*child
	for _, l := range e.children {
		out = append(out, l...)
	}
	return out
}

// startBackground is Start: it negotiates what conn name lacks, and
// nothing that is already up or under way, so that a trap that fires on
// every packet, or auto=start racing the peer, starts one negotiation.
func (e *Engine) startBackground(name string) error {
	c, ok := e.conns[name]
	if !ok {
		return fmt.Errorf("no connection named %q", name)
	}
	for _, p := range e.sas {
		if p.conn == c && p.initiator && !p.established() && !p.reauthOnly {
			return nil // its Quick Modes follow
		}
	}
	p := e.newestP1("", c)
	if p == nil {
		return e.initiate(name, nil)
	}
	for _, pair := range selectorPairs(c) {
		if e.pairCovered(c, pair) {
			continue
		}
		e.quickInitiate(p, c, pair[0], pair[1], func(err error) {
			if err != nil {
				e.log.Warn("Quick Mode failed", "conn", name, "err", err)
			}
		}, nil)
	}
	return nil
}

// pairCovered reports whether conn c has a live (not replaced) IPsec SA
// pair for the selectors, or a Quick Mode for them under way.
func (e *Engine) pairCovered(c *Conn, pair [2]netip.Prefix) bool {
	for _, ch := range e.children[c.Name] {
		if !ch.rekeyed && ch.sa.LocalTS == pair[0] && ch.sa.RemoteTS == pair[1] {
			return true
		}
	}
	for _, q := range e.sas {
		for _, x := range q.qms {
			if x.initiator && (x.state == quickI1 || x.outPending()) && x.conn == c && x.localTS == pair[0] && x.remoteTS == pair[1] {
				return true
			}
		}
		if q.quickQueued(c, pair) {
			return true // waiting for a slot (share.go)
		}
	}
	return false
}

// dropChildren removes every installed child that match selects: its
// timers stop, its SAs leave the data plane and the engine forgets it,
// each logged with msg. tell sends the peer a Delete first, under the
// ISAKMP SA that speaks for the child. conn, unless empty, limits the
// search to that conn's children. It returns how many went.
func (e *Engine) dropChildren(conn string, match func(*child) bool, tell bool, msg string, args ...any) int {
	n := 0
	drop := func(name string, list []*child) {
		keep := list[:0]
		for _, ch := range list {
			if !match(ch) {
				keep = append(keep, ch)
				continue
			}
			n++
			if p := e.p1ForChild(ch); tell && p != nil {
				e.sendDelete(p, ch.sa.Proto, [][]byte{be32(ch.sa.InSPI)})
			}
			ch.stop()
			e.cfg.Installer.Remove(ch.sa)
			e.log.Info(msg, append([]any{"conn", name, "in_spi", fmt.Sprintf("%08x", ch.sa.InSPI), "out_spi", fmt.Sprintf("%08x", ch.sa.OutSPI)}, args...)...)
		}
		clear(list[len(keep):])
		if len(keep) == 0 {
			delete(e.children, name)
		} else {
			e.children[name] = keep
		}
	}
	if conn != "" {
		if list, ok := e.children[conn]; ok {
			drop(conn, list)
		}
		return n
	}
	for name, list := range e.children {
		drop(name, list)
	}
	return n
}

// orphan detaches the children ISAKMP SA p negotiated from it once p is
// gone: a later Delete or rekey uses the newest SA of the same
// identities (p1ForChild).
func (e *Engine) orphan(p *p1) {
	for _, l := range e.children {
		for _, ch := range l {
			if ch.p == p {
				ch.p = nil
			}
		}
	}
}
