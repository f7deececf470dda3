package ike

import (
	"net/netip"
	"time"
)

// Observer is told how exchanges end, for metrics. The engine calls it
// from its own goroutine: it must be quick and must not call back into
// the engine.
type Observer interface {
	Exchange(ev ExchangeEvent)
}

// ExchangeEvent is one finished exchange.
type ExchangeEvent struct {
	Peer netip.Addr
	Conn string
	// Kind is "main" (phase 1), "quick" (phase 2) or "dpd".
	Kind string
	// Result is "established", "rekeyed" (a quick mode that replaced a
	// child), "failed", "timeout" (no answer after the retransmissions),
	// "alive" or "dead" (DPD).
	Result string
	// Latency is how long a successful Main Mode or Quick Mode took, from
	// the first message to the last; zero otherwise.
	Latency time.Duration
}

// RetransmitObserver is an Observer that also wants to hear of every
// retransmission (metrics per conn). Like Exchange, Retransmit is called
// from the engine's goroutine and must be quick.
type RetransmitObserver interface {
	Retransmit(ev RetransmitEvent)
}

// RetransmitEvent is one message sent again: a request that went
// unanswered, or an answer sent again because the peer repeated the
// message it answers.
type RetransmitEvent struct {
	Peer netip.Addr
	// Conn is the conn's name, "?" while a responder does not know it.
	Conn string
	// Kind is "main" (the phase-1 exchange) or "quick".
	Kind string
	// Reply: an answer sent again for a duplicate of the peer's message;
	// false for a request retransmitted after a timeout.
	Reply bool
}

// observeRetransmit counts a retransmission of t's message and tells the
// Observer, if it wants to know.
func (e *Engine) observeRetransmit(t task, reply bool) {
	e.Stats.Retransmits.Add(1)
	o, ok := e.cfg.Observer.(RetransmitObserver)
	if !ok {
		return
	}
	p := t.sa()
	ev := RetransmitEvent{Peer: p.peer.Addr(), Conn: "?", Kind: "main", Reply: reply}
	if p.conn != nil {
		ev.Conn = p.conn.Name
	}
	if q, isQM := t.(*qm); isQM {
		ev.Kind, ev.Conn = "quick", q.conn.Name
	}
	o.Retransmit(ev)
}

// observe reports ev to the Observer, if there is one.
func (e *Engine) observe(ev ExchangeEvent) {
	if e.cfg.Observer != nil {
		e.cfg.Observer.Exchange(ev)
	}
}

// observeChild reports an established child: "rekeyed" when it replaces
// a child with the same selectors. Call it before the old one is marked.
func (e *Engine) observeChild(q *qm, ch *ChildSA) {
	result := "established"
	for _, old := range e.children[ch.Conn] {
		if old.sa.LocalTS == ch.LocalTS && old.sa.RemoteTS == ch.RemoteTS && !old.rekeyed {
			result = "rekeyed"
		}
	}
	end := q.exchanged
	if end.IsZero() {
		end = e.cfg.Clock.Now()
	}
	e.observe(ExchangeEvent{Peer: q.p.peer.Addr(), Conn: ch.Conn, Kind: "quick", Result: result, Latency: end.Sub(q.started)})
}

// QueueDepth is how many received messages and commands wait for the
// engine's goroutine.
func (e *Engine) QueueDepth() int {
	n := len(e.ctl)
	for i := range e.queues {
		n += len(e.queues[i])
	}
	return n
}

func failResult(timeout bool) string {
	if timeout {
		return "timeout"
	}
	return "failed"
}
