package sad

import (
	"fmt"
	"math/bits"
	"sync"
	"sync/atomic"

	"github.com/gosec-ipsec/gosec/internal/drop"
)

// Errors of the inbound sequence number checks. They are preallocated, so
// returning one on the packet path allocates nothing.
var (
	// ErrReplay: the sequence number was already accepted.
	ErrReplay = drop.New(drop.Replay, "sad: sequence number already received")
	// ErrTooOld: the sequence number lies left of the replay window.
	ErrTooOld = drop.New(drop.TooOld, "sad: sequence number left of the replay window")
	// ErrSeqZero: sequence number 0 is never sent (RFC 4303 3.3.3: the
	// first packet carries 1). Counted as a replay, as Linux does.
	ErrSeqZero = drop.New(drop.Replay, "sad: sequence number 0 is never sent")
	// ErrExpired: the SA is past its hard lifetime and fails closed.
	ErrExpired = drop.New(drop.Expired, "sad: SA past its hard lifetime")
)

// DefaultWindow is the replay window size when none is configured
// (strongSwan's and Linux's default).
const DefaultWindow = 64

// MaxWindow is the largest replay window accepted, in packets.
const MaxWindow = 1 << 16

// Window is an inbound anti-replay window (RFC 4303 3.4.3) kept as a ring
// of 64-bit words in the manner of RFC 6479: sliding the window clears
// whole words instead of shifting the bitmap, so Check and Update are O(1)
// per packet (a jump clears at most the ring once). The ring has at least
// one word more than the window, so advancing never clears bits that are
// still inside the window.
//
// Check never changes state; Update is called only after the packet
// authenticated, and checks again. Both are safe for concurrent use: each
// Window has its own lock, held for a few dozen instructions; no lock is
// shared between SAs.
type Window struct {
	size uint64 // window size in packets (a multiple of 64); 0 = check off
	esn  bool
	dead atomic.Bool // set when the SA passes its hard lifetime

	mu     sync.Mutex
	top    uint64   // highest authenticated sequence number (64-bit with ESN)
	bitmap []uint64 // ring; bit s%64 of word (s/64)&mask stands for s
	mask   uint64
}

// NewWindow returns a window for size packets, rounded up to whole 64-bit
// words; size 0 turns the replay check off (ipsec.conf replay_window=0)
// while still tracking the highest number for ESN inference. esn enables
// 64-bit Extended Sequence Numbers (RFC 4303 2.2.1), of which only the low
// 32 bits travel on the wire.
func NewWindow(size int, esn bool) (*Window, error) {
	if size < 0 || size > MaxWindow {
		return nil, fmt.Errorf("sad: replay window %d out of range 0..%d", size, MaxWindow)
	}
	w := &Window{esn: esn}
	if size > 0 {
		words := (size + 63) / 64
		w.size = uint64(words) * 64
		ring := 1 << bits.Len(uint(words)) // a power of two > words
		w.bitmap = make([]uint64, ring)
		w.mask = uint64(ring - 1)
	}
	return w, nil
}

// Size is the window size in packets (0 when the check is off).
func (w *Window) Size() int { return int(w.size) }

// ESN reports whether the window infers 64-bit sequence numbers.
func (w *Window) ESN() bool { return w.esn }

// Top returns the highest sequence number accepted so far (0 if none).
func (w *Window) Top() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.top
}

// infer returns the full sequence number for the wire's low 32 bits, as
// RFC 4303 Appendix A.2 describes: the candidate in the subspace that puts
// it inside or just right of the window. Without ESN it is seq itself.
//
// One deliberate deviation: in case B with Th = 0 the RFC (and Linux)
// compute Seqh = Th - 1, which underflows; there is no subspace before 0,
// so a number there is taken as the far-ahead number of subspace 0, and
// authentication decides.
func (w *Window) infer(seq uint32) uint64 {
	if !w.esn {
		return uint64(seq)
	}
	tl, th := uint32(w.top), uint32(w.top>>32)
	wsize := uint32(w.size)
	if wsize == 0 {
		wsize = DefaultWindow
	}
	bottom := tl - wsize + 1 // wraps in case B, as in the RFC
	hi := th
	if tl >= wsize-1 {
		// Case A: the window lies within one subspace.
		if seq < bottom {
			hi = th + 1
		}
	} else if seq >= bottom {
		// Case B: the window spans two subspaces and seq is in the lower.
		if th == 0 {
			return uint64(seq)
		}
		hi = th - 1
	}
	return uint64(hi)<<32 | uint64(seq)
}

// Check returns the full sequence number for the wire's low 32 bits and
// reports, without changing the window, whether it may still be accepted:
// ErrReplay, ErrTooOld, ErrSeqZero, or ErrExpired once the SA passed its
// hard lifetime. A huge forged number passes Check but moves nothing;
// only Update, after the ICV check, moves the window.
func (w *Window) Check(seq uint32) (full uint64, err error) {
	if w.dead.Load() {
		return 0, ErrExpired
	}
	w.mu.Lock()
	full = w.infer(seq)
	err = w.check(full)
	w.mu.Unlock()
	return full, err
}

func (w *Window) check(full uint64) error {
	switch {
	case full == 0:
		return ErrSeqZero
	case w.size == 0 || full > w.top:
		return nil
	case w.top-full >= w.size:
		return ErrTooOld
	case w.bitmap[(full/64)&w.mask]&(1<<(full%64)) != 0:
		return ErrReplay
	}
	return nil
}

// Update records full, whose packet has just authenticated, sliding the
// window if it is the new highest. It checks again first, since another
// goroutine may have accepted the same number after this one's Check.
func (w *Window) Update(full uint64) error {
	if w.dead.Load() {
		return ErrExpired
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if err := w.check(full); err != nil {
		return err
	}
	if w.size == 0 {
		if full > w.top {
			w.top = full
		}
		return nil
	}
	if full > w.top {
		// Clear the ring words of the blocks the window now enters.
		oldBlock, newBlock := w.top/64, full/64
		n := newBlock - oldBlock
		if n > uint64(len(w.bitmap)) {
			n = uint64(len(w.bitmap))
		}
		for i := uint64(1); i <= n; i++ {
			w.bitmap[(oldBlock+i)&w.mask] = 0
		}
		w.top = full
	}
	w.bitmap[(full/64)&w.mask] |= 1 << (full % 64)
	return nil
}
