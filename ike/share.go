package ike

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"
)

// One ISAKMP SA for many conns, as Pluto and charon do: conns between the
// same two endpoints with the same identities, pre-shared key and phase-1
// settings negotiate their Quick Modes under one Main Mode instead of one
// each. A conn that wants phase 1 while such a Main Mode is under way
// follows it (p1.followers) and starts its Quick Modes once it is
// established; the Quick Modes one ISAKMP SA initiates are paced
// (maxQuickInFlight), so that thousands of conns do not send thousands of
// QM1s at once into the peer's bounded queues.

// maxQuickInFlight bounds the Quick Modes we initiate that are under way
// at once under one ISAKMP SA; more wait in p1.quickBacklog, in order.
// The responder's queue for established SAs holds 512 messages
// (sched.go); 32 leaves room for every other peer and for retransmits.
const maxQuickInFlight = 32

// follower is a conn waiting for another conn's Main Mode; w is its
// `gosec up`, if any.
type follower struct {
	conn *Conn
	w    *waiter
}

// queuedQuick is a Quick Mode waiting for a slot: run starts it, fail
// ends it when its ISAKMP SA goes away first.
type queuedQuick struct {
	run  func()
	fail func(error)
	// conn and pair are what it negotiates (pairCovered).
	conn *Conn
	pair [2]netip.Prefix
}

// quickQueued reports whether a Quick Mode for conn c's selector pair
// waits under p.
func (p *p1) quickQueued(c *Conn, pair [2]netip.Prefix) bool {
	for _, b := range p.quickBacklog {
		if b.conn == c && b.pair == pair {
			return true
		}
	}
	return false
}

// sharesPhase1 reports whether conns a and b would negotiate the same
// ISAKMP SA: endpoints, identities, phase-1 proposals and settings and
// pre-shared key all equal.
func (e *Engine) sharesPhase1(a, b *Conn) bool {
	if a.Local != b.Local || a.Remote != b.Remote || a.LocalID != b.LocalID || a.RemoteID != b.RemoteID ||
		a.ForceEncaps != b.ForceEncaps || a.IKELifetime != b.IKELifetime || a.KeyingTries != b.KeyingTries ||
		a.DPDDelay != b.DPDDelay || a.DPDTimeout != b.DPDTimeout || a.DPDAction != b.DPDAction ||
		!slices.Equal(a.IKE, b.IKE) {
		return false
	}
	ka, err := e.pskFor(a, a.Remote)
	if err != nil {
		return false
	}
	kb, err := e.pskFor(b, b.Remote)
	return err == nil && subtle.ConstantTimeCompare(ka, kb) == 1
}

// joinPending attaches conn c (and its `gosec up` w) to a Main Mode we
// initiated that is under way and shares its phase 1; it reports whether
// c needs no Main Mode of its own.
func (e *Engine) joinPending(c *Conn, w *waiter) bool {
	for _, p := range e.sas {
		if !p.initiator || p.established() || p.reauthOnly || p.conn == nil {
			continue
		}
		if p.conn == c {
			if w == nil {
				return true // its Quick Modes follow
			}
			continue
		}
		for _, f := range p.followers {
			if f.conn == c && w == nil {
				return true
			}
		}
		if e.sharesPhase1(p.conn, c) {
			p.followers = append(p.followers, follower{conn: c, w: w})
			w.say("waiting for ISAKMP SA %s[%s] with %v, under way", p.conn.Name, p.cookieString(), p.peer.Addr())
			return true
		}
	}
	return false
}

// startFollowers negotiates the Quick Modes of the conns that waited for
// p, now established.
func (e *Engine) startFollowers(p *p1) {
	fs := p.followers
	p.followers = nil
	for _, f := range fs {
		c := e.conns[f.conn.Name]
		switch {
		case c == nil:
			f.w.finish(fmt.Errorf("no connection named %q", f.conn.Name))
		case f.w != nil && e.authorizes(p, c):
			f.w.say("reusing ISAKMP SA %s[%s] with %v", p.conn.Name, p.cookieString(), p.peer.Addr())
			e.startQuickFor(p, c, f.w)
		case f.w != nil:
			e.startPhase1(c, f.w, 1)
		default:
			if err := e.startBackground(c.Name); err != nil {
				e.log.Error("auto=start", "conn", c.Name, "err", err)
			}
		}
	}
}

// releaseFollowers hands p's followers on when p will never be
// established. With restart (p's own conn was taken down) they go on
// under a new Main Mode; otherwise p failed after every keying try its
// settings allow, which are theirs too: each `gosec up` hears err, and
// only background conns that try forever (keyingtries=%forever, their
// lead being a `gosec up` that tries three times) go on.
func (e *Engine) releaseFollowers(fs []follower, err error, restart bool) {
	if e.stopping {
		for _, f := range fs {
			f.w.finish(err)
		}
		return
	}
	var rest []follower
	for _, f := range fs {
		c := e.conns[f.conn.Name]
		switch {
		case c == nil:
			f.w.finish(fmt.Errorf("no connection named %q", f.conn.Name))
		case restart || (f.w == nil && c.KeyingTries == 0):
			rest = append(rest, follower{conn: c, w: f.w})
		case f.w != nil:
			f.w.finish(fmt.Errorf("conn %s: %w", c.Name, err))
		default:
			e.log.Warn("ISAKMP SA failed", "conn", c.Name, "err", err)
		}
	}
	if len(rest) == 0 {
		return
	}
	np := e.startPhase1(rest[0].conn, rest[0].w, 1)
	np.followers = rest[1:]
}

// admitQuick takes one of p's Quick Mode slots for an exchange that ends
// with done, or queues start (which calls quickI1 again) and returns
// false. The returned done gives the slot back (if release has not) and
// then calls done; release gives the slot back early, once the peer has
// nothing more to answer (QM3 sent), without ending the exchange: an
// initiator that then waits Config.OutboundDelay before its outbound SA
// would otherwise hold the slot for that time, which paced thousands of
// Quick Modes under one ISAKMP SA to 32 per OutboundDelay.
func (e *Engine) admitQuick(p *p1, c *Conn, pair [2]netip.Prefix, start func(), done func(error)) (finish func(error), release func(), ok bool) {
	if p.quickActive >= maxQuickInFlight {
		p.quickBacklog = append(p.quickBacklog, queuedQuick{run: start, fail: done, conn: c, pair: pair})
		return nil, nil, false
	}
	p.quickActive++
	held := true
	release = func() {
		if held {
			held = false
			e.quickDone(p)
		}
	}
	return func(err error) {
		release()
		if done != nil {
			done(err)
		}
	}, release, true
}

// quickDone frees a slot of p and starts the next queued Quick Mode.
func (e *Engine) quickDone(p *p1) {
	if len(p.quickBacklog) == 0 {
		p.quickActive--
		return
	}
	// The slot passes to the first queued exchange on the engine
	// goroutine, after the one that ends now has finished its
	// bookkeeping; until then it stays queued, so pairCovered sees it.
	e.post(func() {
		p.quickActive--
		if len(p.quickBacklog) == 0 || e.sas[p.key()] != p {
			return // forget failed the backlog
		}
		next := p.quickBacklog[0]
		p.quickBacklog[0] = queuedQuick{}
		p.quickBacklog = p.quickBacklog[1:]
		next.run()
	})
}

// dropQuickBacklog fails the Quick Modes still waiting under p, which is
// going away.
func (e *Engine) dropQuickBacklog(p *p1) {
	q := p.quickBacklog
	p.quickBacklog = nil
	for _, b := range q {
		if b.fail != nil {
			b.fail(errors.New("ISAKMP SA deleted before the Quick Mode started"))
		}
	}
}

// quickLinger is how long a finished Quick Mode stays in p.qms, so that
// a retransmission of its last message is recognised and answered: longer
// than a peer retransmits (strongSwan's default gives up after 165 s).
const quickLinger = 5 * time.Minute

// retireQuick forgets finished Quick Mode q after quickLinger. Without
// it an ISAKMP SA kept every Quick Mode ever made under it (thousands of
// conns, each rekeyed every hour, under one ISAKMP SA that lives for
// hours); the keying material it no longer needs goes at once.
func (e *Engine) retireQuick(q *qm) {
	q.forgetSecrets() // already wiped once HASH(3) was made or checked
	e.after(q, quickLinger, func() { delete(q.p.qms, q.x.msgID) })
}
