package ike

import (
	"fmt"
	"net/netip"
	"time"

	"github.com/gosec-ipsec/gosec/ike/isakmp"
	"github.com/gosec-ipsec/gosec/internal/clock"
)

// The task manager. Each ISAKMP SA (p1) runs its exchanges as tasks: its
// phase-1 exchange (Main Mode, message ID 0) and one task per Quick Mode
// (its message ID). Whatever the exchange type, what is in flight is the
// same and is handled here once (as strongSwan's IKEv1 task manager
// keeps one "exchange in the air" per direction):
//
//   - the message ID;
//   - the last message sent, retransmitted with backoff
//     (Config.RetransmitTimeout, RetransmitBackoff, Retransmits) while
//     it is a request, until the task is answered or expires;
//   - duplicate detection: the digest of the last message acted upon; a
//     copy of it is not processed again, and when our last message was
//     the answer to it, that answer goes again (the peer lost it);
//   - one timer: the retransmission, or a deadline (a half-open
//     responder's lifetime, the initiator's OutboundDelay) that fires
//     only while the task is still the SA's current one.
//
// A task supplies only what differs: what to say when it retransmits and
// what to do when nothing came back (task).

// received is one message for an ISAKMP SA: its header, the whole
// message (header included), its SHA-256 and where it came from.
type received struct {
	h    isakmp.Header
	msg  []byte
	sum  [32]byte
	from netip.AddrPort
}

// exchangeType is what the engine knows of one ISAKMP exchange type.
type exchangeType struct {
	// open handles a message for which no ISAKMP SA exists (a first
	// Main Mode message, an unprotected Informational); false: it does
	// not open anything, the message is for an unknown SA. nil: this
	// exchange never comes first.
	open func(e *Engine, h isakmp.Header, msg []byte, from, to netip.AddrPort, natt bool) bool
	// process handles a message under ISAKMP SA p (its sender's
	// address checked, not a duplicate of the phase-1 exchange's last).
	process func(e *Engine, p *p1, m received)
	// phase1Duplicates: a copy of the phase-1 exchange's last message
	// is answered by the task manager before process (not for
	// Informationals, which have their own replay check).
	phase1Duplicates bool
}

// exchanges are the exchange types the engine speaks, each in its own
// file. Another exchange (Aggressive Mode, a Transaction exchange for
// XAUTH or Mode Config) is a new file with its task and one line here;
// the others are not edited.
var exchanges = map[isakmp.ExchangeType]exchangeType{
	isakmp.ExchMain: {open: (*Engine).openMain, phase1Duplicates: true,
		process: func(e *Engine, p *p1, m received) { e.handleMain(p, m.h, m.msg, m.sum) }},
	isakmp.ExchQuick: {phase1Duplicates: true,
		process: func(e *Engine, p *p1, m received) { e.handleQuick(p, m.h, m.msg, m.sum) }},
	isakmp.ExchInfo: {open: (*Engine).openInfo, process: (*Engine).processInfo},
}

// startPhase1 starts the phase-1 exchange that conn c negotiates its
// ISAKMP SA with (attempt counts keyingtries): Main Mode today.
// Aggressive Mode would be chosen here by the conn's setting.
func (e *Engine) startPhase1(c *Conn, w *waiter, attempt int) *p1 {
	return e.startMain(c, w, attempt)
}

// exchange is the state of one exchange in flight.
type exchange struct {
	msgID uint32
	// sent is the last message sent; recv the SHA-256 of the last
	// message of the peer acted upon; replyTo the one sent answers.
	sent    []byte
	recv    [32]byte
	replyTo [32]byte
	timer   clock.Timer
	// gen invalidates a timer that fired while its event was queued.
	gen int
}

// stop cancels the exchange's timer.
func (x *exchange) stop() {
	x.gen++
	if x.timer != nil {
		x.timer.Stop()
		x.timer = nil
	}
}

// received records that the message with digest sum was acted upon.
func (x *exchange) received(sum [32]byte) { x.recv = sum }

// task is one exchange under an ISAKMP SA.
type task interface {
	// flight is the task's exchange in flight.
	flight() *exchange
	// sa is the ISAKMP SA it runs under.
	sa() *p1
	// current reports whether the task is still its SA's task for its
	// message ID (not finished with an error, not replaced).
	current() bool
	// retrying is told before retransmission number try (1, 2, ...).
	retrying(try int)
	// expired is called when the last retransmission went unanswered.
	expired(tries int)
	// messageName names msg, the first copy of a message the task
	// sends (a request or a reply), for fault injection: "MM3", "QM2".
	messageName(msg []byte, request bool) string
}

// phase1Task is the exchange that establishes an ISAKMP SA (p1.phase1):
// Main Mode today; Aggressive Mode would be another implementation. The
// ISAKMP SA asks it only these.
type phase1Task interface {
	task
	// String is the state by Pluto's name (MAIN_I1 .. MAIN_R3).
	String() string
	// done reports that the ISAKMP SA is established.
	done() bool
	// complete records that the exchange has established the SA.
	complete()
	// answeredFirst reports a responder that has answered only the
	// peer's first message (half-open SAs evicted first).
	answeredFirst() bool
	// awaitingPeerProof reports an initiator whose proof is sent and
	// who waits for the peer's (a protected Informational may refuse
	// it).
	awaitingPeerProof() bool
	// forget zeroes what the exchange kept for its proofs (Diffie-
	// Hellman pair, nonces, public values, SA payload).
	forget()
}

// live reports whether t's timers may still act: its ISAKMP SA is
// known and t is its current task.
func (e *Engine) live(t task) bool {
	p := t.sa()
	return e.sas[p.key()] == p && t.current()
}

// request sends msg as t's next request and retransmits it until t is
// answered (stop) or its retransmissions are used up (expired). When msg
// also answers the peer's message with digest to (Main Mode's MM3 and
// MM5 answer MM2 and MM4), a duplicate of that message makes it go again;
// a first request answers nothing (zero).
func (e *Engine) request(t task, msg []byte, to [32]byte) {
	x := t.flight()
	x.sent, x.replyTo = msg, to
	e.send(t, msg, true)
	e.retransmit(t, 0)
}

// reply sends msg as t's answer to the message with digest to; a
// duplicate of that message makes it go again (duplicate).
func (e *Engine) reply(t task, msg []byte, to [32]byte) {
	x := t.flight()
	x.sent, x.recv, x.replyTo = msg, to, to
	e.send(t, msg, false)
}

// send transmits the first copy of t's message, through the configured
// impairments (Config.Impair) if any.
func (e *Engine) send(t task, msg []byte, request bool) {
	if len(e.impair) == 0 {
		e.transmit(t.sa(), msg)
		return
	}
	e.impairedSend(t, t.messageName(msg, request), func() { e.transmit(t.sa(), msg) })
}

// retransmit arms t's timer for retransmission number tries+1.
func (e *Engine) retransmit(t task, tries int) {
	e.after(t, e.retransmitDelay(tries), func() {
		if tries >= e.cfg.Retransmits {
			t.expired(tries)
			return
		}
		e.observeRetransmit(t, false)
		t.retrying(tries + 1)
		e.transmit(t.sa(), t.flight().sent)
		e.retransmit(t, tries+1)
	})
}

// after runs f on the engine goroutine after d, unless t's timer was
// stopped or re-armed meanwhile, or t is no longer live.
func (e *Engine) after(t task, d time.Duration, f func()) {
	x := t.flight()
	x.stop()
	gen := x.gen
	x.timer = e.cfg.Clock.AfterFunc(d, func() {
		e.post(func() {
			if x.gen != gen || !e.live(t) {
				return
			}
			x.timer = nil
			f()
		})
	})
}

// duplicate reports whether the message with digest sum is the last one
// t's exchange acted upon; if our last message answered it, that answer
// goes again.
func (e *Engine) duplicate(t task, sum [32]byte) bool {
	x := t.flight()
	if sum != x.recv {
		return false
	}
	e.Stats.Duplicate.Add(1)
	if x.sent != nil && x.replyTo == sum {
		e.observeRetransmit(t, true)
		e.transmit(t.sa(), x.sent)
	}
	return true
}

func (e *Engine) retransmitDelay(tries int) time.Duration {
	d := float64(e.cfg.RetransmitTimeout)
	for i := 0; i < tries; i++ {
		d *= e.cfg.RetransmitBackoff
	}
	return time.Duration(d)
}

// A Quick Mode is a task under its ISAKMP SA, by message ID.

func (q *qm) flight() *exchange { return &q.x }
func (q *qm) sa() *p1           { return q.p }
func (q *qm) current() bool     { return q.p.qms[q.x.msgID] == q }
func (q *qm) retrying(try int) {
	q.w.say("retransmit %d of request with message ID %d", try, q.x.msgID)
}
func (q *qm) expired(tries int) {
	q.p.e.failQM(q, fmt.Errorf("conn %s: no response to Quick Mode %d from %v after %d retransmissions", q.conn.Name, q.x.msgID, q.p.peer, tries))
}
func (q *qm) messageName(_ []byte, request bool) string {
	switch {
	case q.initiator && request:
		return "QM1"
	case q.initiator:
		return "QM3"
	}
	return "QM2"
}
