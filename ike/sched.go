package ike

import (
	"context"
	"net/netip"
)

// The engine goroutine serves its events in a fixed order, so that a
// flood of messages from unauthenticated peers can only lose messages:
//
//  1. internal events: timers (retransmissions, rekeys, expiries, DPD,
//     keepalives) and the results of crypto jobs. They sit on a list the
//     engine owns, not in a bounded queue, and are never dropped; the
//     list is bounded by the timers and jobs that exist.
//  2. commands (status, up, down, reload), so that `gosec statusall`
//     never waits behind received messages.
//  3. received messages by class (classOf): those of established ISAKMP
//     SAs and of negotiations we initiated, then those of responder
//     negotiations under way, then new negotiations (Main Mode first
//     messages) and everything the engine does not know. Each class has
//     its own queue bounded in messages and in octets; a full queue drops
//     the message (counted as queue-full).
//
// The responder's Diffie-Hellman computations run on CryptoWorkers
// goroutines (offload), at most MaxCryptoPerPeer per source address.

const (
	classEstablished = iota // established ISAKMP SAs, our own negotiations
	classNegotiating        // responder negotiations past MM1
	classNew                // MM1 and unknown cookies
	nClasses
)

// queueLen and queueBytes bound each class's queue: at most 16 MB of
// received messages wait for the engine in all.
var (
	queueLen   = [nClasses]int{512, 256, 512}
	queueBytes = [nClasses]int64{8 << 20, 4 << 20, 4 << 20}
)

// inMsg is one received message waiting for the engine.
type inMsg struct {
	b        []byte
	from, to netip.AddrPort
	natt     bool
}

// post runs f on the engine goroutine ahead of every command and
// message. It never drops f: timers and crypto results use it.
func (e *Engine) post(f func()) bool {
	e.imu.Lock()
	e.internal = append(e.internal, f)
	e.imu.Unlock()
	select {
	case e.wake <- struct{}{}:
	default:
	}
	return true
}

// enqueue copies a received message into its class's queue, or drops it
// when that queue is full.
func (e *Engine) enqueue(msg []byte, from, to netip.AddrPort, natt bool) {
	c := e.classOf(msg)
	n := int64(len(msg))
	if e.qbytes[c].Add(n) > queueBytes[c] {
		e.qbytes[c].Add(-n)
		e.Stats.QueueFull.Add(1)
		return
	}
	m := inMsg{b: append([]byte(nil), msg...), from: from, to: to, natt: natt}
	select {
	case e.queues[c] <- m:
	default:
		e.qbytes[c].Add(-n)
		e.Stats.QueueFull.Add(1)
	}
}

// next serves one round of events, highest class first. Without block it
// returns false when nothing is ready; with block it waits, and returns
// false once ctx ends.
func (e *Engine) next(ctx context.Context, block bool) bool {
	select {
	case <-e.wake:
		e.runInternal()
		return true
	default:
	}
	select {
	case f := <-e.ctl:
		f()
		return true
	default:
	}
	for c := range e.queues {
		select {
		case m := <-e.queues[c]:
			e.serve(c, m)
			return true
		default:
		}
	}
	if !block {
		return false
	}
	select {
	case <-e.wake:
		e.runInternal()
	case f := <-e.ctl:
		f()
	case m := <-e.queues[classEstablished]:
		e.serve(classEstablished, m)
	case m := <-e.queues[classNegotiating]:
		e.serve(classNegotiating, m)
	case m := <-e.queues[classNew]:
		e.serve(classNew, m)
	case <-ctx.Done():
		return false
	}
	return true
}

func (e *Engine) serve(c int, m inMsg) {
	e.qbytes[c].Add(-int64(len(m.b)))
	e.handle(m.b, m.from, m.to, m.natt)
}

func (e *Engine) runInternal() {
	e.imu.Lock()
	fs := e.internal
	e.internal = nil
	e.imu.Unlock()
	for _, f := range fs {
		f()
	}
}

// pump serves every ready event without waiting (tests and the fuzz
// driver, which run the engine on their own goroutine).
func (e *Engine) pump() {
	for e.next(context.Background(), false) {
	}
}

// startWorkers runs the crypto workers until ctx ends.
func (e *Engine) startWorkers(ctx context.Context) {
	for i := 0; i < e.cfg.CryptoWorkers; i++ {
		go func() {
			for {
				select {
				case job := <-e.jobs:
					e.post(job())
				case <-ctx.Done():
					return
				}
			}
		}()
	}
}

// offload runs work on a crypto worker and then, on the engine
// goroutine, the function work returns. It refuses (false, counted as
// crypto-busy) when peer already has MaxCryptoPerPeer jobs or the
// workers' queue is full: the peer retransmits.
func (e *Engine) offload(peer netip.Addr, work func() func()) bool {
	if e.inline {
		work()()
		return true
	}
	if e.cryptoPeer[peer] >= e.cfg.MaxCryptoPerPeer {
		e.Stats.CryptoBusy.Add(1)
		return false
	}
	job := func() func() {
		then := work()
		return func() {
			if e.cryptoPeer[peer]--; e.cryptoPeer[peer] <= 0 {
				delete(e.cryptoPeer, peer)
			}
			then()
		}
	}
	select {
	case e.jobs <- job:
		e.cryptoPeer[peer]++
		return true
	default:
		e.Stats.CryptoBusy.Add(1)
		return false
	}
}

// compute runs work (a Diffie-Hellman computation of our own
// negotiation or of an authenticated peer's Quick Mode) on a crypto
// worker and then, on the engine goroutine, the function work returns.
// Unlike offload it has no per-peer bound and never refuses: when the
// workers' queue is full the step runs on the engine goroutine rather
// than being lost (such work is bounded by our own conns and by
// authenticated peers).
func (e *Engine) compute(work func() func()) {
	if e.inline {
		work()()
		return
	}
	select {
	case e.jobs <- work:
	default:
		work()()
	}
}

// classOf tells a message's class from its cookies, on the receiving
// goroutine.
func (e *Engine) classOf(msg []byte) int {
	var k cookies
	copy(k.i[:], msg[0:8])
	copy(k.r[:], msg[8:16])
	e.cmu.RLock()
	defer e.cmu.RUnlock()
	if c, ok := e.classes[k]; ok {
		return c
	}
	if e.mine[k.i] {
		return classEstablished
	}
	return classNew
}

// classify publishes p's class: our own negotiations by our cookie,
// responder SAs by their cookie pair.
func (e *Engine) classify(p *p1) {
	e.cmu.Lock()
	defer e.cmu.Unlock()
	switch {
	case p.initiator:
		e.mine[p.icky] = true
	case p.established():
		e.classes[p.key()] = classEstablished
	default:
		e.classes[p.key()] = classNegotiating
	}
}

func (e *Engine) unclassify(p *p1) {
	e.cmu.Lock()
	defer e.cmu.Unlock()
	delete(e.classes, p.key())
	if p.initiator {
		delete(e.mine, p.icky)
	}
}
