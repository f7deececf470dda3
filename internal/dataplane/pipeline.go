package dataplane

import (
	"sync"
	"sync/atomic"
)

// The loops are pipelines in three stages, in the manner of wireguard-go's
// encryption/decryption queues and per-peer sequential senders/receivers:
//
//   - a reader (one per device: the TUN, each socket) reads a batch into a
//     container of its own, looks up policies and SAs, assigns outbound
//     sequence numbers in order (inbound: runs the replay pre-check), and
//     queues the container on its lane's ordered queue;
//   - a pool of workers, shared by all readers, seals or opens whole
//     containers in parallel;
//   - one sequential stage per reader takes its containers in the order
//     they were read, waits for each one's cryptography, and sends or
//     writes it. The peer's replay window and the TUN's GRO so see packets
//     in order, and the inbound replay window is updated in order (an
//     update out of order would slide the window past numbers that are
//     still being opened and drop them as too old).
//
// A container is recycled through its lane's free list; nothing is
// allocated per packet or per batch. When all of a reader's containers
// are in flight the reader waits (counted in Stats.Stalls), which leaves
// new packets in the kernel's queues: back-pressure, not userspace drops.
//
// Latency: a small batch (at most inlineMax packets to seal or open) read
// while the reader's lane is idle is handled inline by the reader, from
// read to send, without a hand-off to another goroutine; so is every batch
// when there are no workers (GOMAXPROCS 1) or when the workers' queue is
// full (the reader then does the work itself rather than wait).

// inlineMax is the largest batch a reader seals or opens itself when its
// lane is idle (BenchmarkPipelineLatency: a hand-off to a worker and the
// sequential stage costs two goroutine wake-ups, several microseconds,
// more than one small packet's cryptography). A variable for that
// benchmark only.
var inlineMax = 2

// jobQueueLen bounds the containers waiting for a worker, all readers
// together. A reader never blocks on it: when it is full, the reader
// does the work itself.
const jobQueueLen = 64

// cryptoJob is a container handed to the workers: crypt seals or opens
// it, done releases it to its lane's sequential stage.
type cryptoJob interface {
	crypt()
	done()
}

// batchSync is embedded in every container: its mutex is held from the
// hand-off to the workers until the cryptography is done.
type batchSync struct{ mu sync.Mutex }

func (s *batchSync) done()              { s.mu.Unlock() }
func (s *batchSync) syncer() *batchSync { return s }

// pipeBatch is a container type of a lane.
type pipeBatch interface {
	cryptoJob
	syncer() *batchSync
}

// lane is one reader's containers, their free list and the ordered queue
// of its sequential stage.
type lane[B pipeBatch] struct {
	p        *Plane
	jobs     chan<- cryptoJob // nil: no workers, everything inline
	free     chan B
	seq      chan B
	inflight atomic.Int32 // containers queued on seq and not yet finished
	finish   func(B)      // the sequential stage's work on one container
	stopped  chan struct{}
}

// newLane returns a lane over batches; with jobs set it starts the
// sequential stage, which ends after close.
func newLane[B pipeBatch](p *Plane, jobs chan cryptoJob, batches []B, finish func(B)) *lane[B] {
	l := &lane[B]{p: p, free: make(chan B, len(batches)), finish: finish, stopped: make(chan struct{})}
	for _, b := range batches {
		l.free <- b
	}
	if jobs == nil {
		close(l.stopped)
		return l
	}
	l.jobs = jobs
	l.seq = make(chan B, len(batches))
	go l.sequential()
	return l
}

// maxLane bounds a reader's containers (a raw socket's are 4 MB each,
// though only the bytes packets fill become resident).
const maxLane = 16

// lanes is how many containers a reader has with the given workers: one
// per worker and two more, so that the reader can read the next batch
// and the sequential stage send the last while every worker is busy.
func lanes(workers int) int {
	if workers == 0 {
		return 1
	}
	return min(workers+2, maxLane)
}

// get returns a free container, waiting for one if all are in flight.
func (l *lane[B]) get() B {
	select {
	case b := <-l.free:
		return b
	default:
	}
	l.p.stats.Stalls.Add(1)
	return <-l.free
}

// put returns a container that was not submitted.
func (l *lane[B]) put(b B) { l.free <- b }

// submit passes a read and prepared container on; work is the number of
// its packets to seal or open.
func (l *lane[B]) submit(b B, work int) {
	if l.jobs == nil || (work <= inlineMax && l.inflight.Load() == 0) {
		// Nothing of this reader is in flight, so finishing here keeps
		// the order.
		if l.jobs != nil {
			l.p.stats.Inline.Add(1)
		}
		if work > 0 {
			b.crypt()
		}
		l.finish(b)
		l.free <- b
		return
	}
	l.inflight.Add(1)
	if work == 0 {
		l.seq <- b // only drops, bypass or ICMP: order it, nothing to wait for
		return
	}
	s := b.syncer()
	s.mu.Lock()
	l.seq <- b // never blocks: seq has room for every container
	select {
	case l.jobs <- b:
	default:
		l.p.stats.Inline.Add(1)
		b.crypt()
		s.mu.Unlock()
	}
}

// sequential finishes the containers in the order they were submitted.
func (l *lane[B]) sequential() {
	defer close(l.stopped)
	for b := range l.seq {
		s := b.syncer()
		s.mu.Lock() // wait for the workers
		s.mu.Unlock()
		l.finish(b)
		l.inflight.Add(-1)
		l.free <- b
	}
}

// close ends the sequential stage after it finished what was submitted.
// Only the reader calls it, once, after its last submit.
func (l *lane[B]) close() {
	if l.seq != nil {
		close(l.seq)
	}
	<-l.stopped
}

// worker seals or opens containers until jobs is closed.
func worker(jobs <-chan cryptoJob) {
	for j := range jobs {
		j.crypt()
		j.done()
	}
}
