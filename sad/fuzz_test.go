package sad

import (
	"encoding/binary"
	"testing"
)

// model is the reference anti-replay window of RFC 4303 3.4.3, kept in
// the plainest form: every number ever accepted, and the highest.
type model struct {
	size    uint64
	seen    map[uint64]bool
	highest uint64
}

func (m *model) verdict(s uint64) error {
	switch {
	case s == 0:
		return ErrSeqZero
	case m.size == 0 || s > m.highest:
		return nil
	case m.highest-s >= m.size:
		return ErrTooOld
	case m.seen[s]:
		return ErrReplay
	}
	return nil
}

func (m *model) accept(s uint64) {
	m.seen[s] = true
	m.highest = max(m.highest, s)
}

// FuzzWindow runs a sequence of (sequence number, update?) operations
// against a Window and the model. Each operation is 3 bytes: flags (bit 0:
// call Update, bit 1: a big jump), then a signed 16-bit offset from the
// model's highest number. The window must agree with the model on every
// Check and Update, so it never accepts a duplicate and rejects exactly
// what falls outside its size.
func FuzzWindow(f *testing.F) {
	f.Add(byte(1), []byte{1, 0, 1, 1, 0, 1, 1, 0, 1, 1, 0, 0})
	f.Add(byte(2), []byte{1, 0, 5, 1, 0xff, 0xfe, 1, 0xff, 0xfe, 0, 0xff, 0x00, 3, 0x7f, 0xff})
	f.Add(byte(0), []byte{1, 0, 1, 1, 0, 0, 1, 0, 0})
	f.Add(byte(4), []byte{3, 0x10, 0, 1, 0xf0, 0, 1, 0xf0, 1, 1, 0xef, 0xff})
	f.Fuzz(func(t *testing.T, sizeSel byte, ops []byte) {
		sizes := []int{0, 32, 64, 128, 1024, 4096}
		size := sizes[int(sizeSel)%len(sizes)]
		w, err := NewWindow(size, false)
		if err != nil {
			t.Fatal(err)
		}
		m := &model{size: uint64(w.Size()), seen: map[uint64]bool{}}
		for len(ops) >= 3 {
			flags, off := ops[0], int64(int16(binary.BigEndian.Uint16(ops[1:3])))
			ops = ops[3:]
			if flags&2 != 0 {
				off *= 1000
			}
			s := int64(m.highest) + off
			if s < 0 || s > 0xffffffff {
				continue
			}
			seq := uint64(s)
			full, err := w.Check(uint32(seq))
			if full != seq {
				t.Fatalf("Check(%d) inferred %d without ESN", seq, full)
			}
			if want := m.verdict(seq); err != want {
				t.Fatalf("size %d highest %d: Check(%d) = %v, model says %v", size, m.highest, seq, err, want)
			}
			if w.Top() != m.highest {
				t.Fatalf("Check moved the top to %d (model %d)", w.Top(), m.highest)
			}
			if flags&1 == 0 {
				continue // the ICV failed: no Update
			}
			want := m.verdict(seq)
			if err := w.Update(seq); err != want {
				t.Fatalf("size %d highest %d: Update(%d) = %v, model says %v", size, m.highest, seq, err, want)
			}
			if want == nil {
				if m.size != 0 && m.seen[seq] {
					t.Fatalf("window accepted duplicate %d", seq)
				}
				m.accept(seq)
			}
			if w.Top() != m.highest {
				t.Fatalf("Top %d, model %d", w.Top(), m.highest)
			}
		}
	})
}

// FuzzWindowESN drives an ESN window with full 64-bit numbers near the
// model's highest, sending only their low 32 bits. Whenever the full
// number lies where RFC 4303 Appendix A can recover it (no further below
// the top than the window, no further above than 2^32 minus the window),
// the inferred number must be the sent one and the verdict the model's.
func FuzzWindowESN(f *testing.F) {
	f.Add(uint64(0xfffffff0), []byte{1, 0, 0, 0, 0x20, 1, 0xff, 0xff, 0xff, 0xf0})
	f.Add(uint64(1), []byte{1, 0, 0, 0, 1, 1, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, start uint64, ops []byte) {
		const size = 64
		w, err := NewWindow(size, true)
		if err != nil {
			t.Fatal(err)
		}
		m := &model{size: size, seen: map[uint64]bool{}}
		if start != 0 && start < 1<<62 {
			if err := w.Update(start); err != nil {
				t.Fatal(err)
			}
			m.accept(start)
		}
		for len(ops) >= 5 {
			flags, off := ops[0], int64(int32(binary.BigEndian.Uint32(ops[1:5])))
			ops = ops[5:]
			s := int64(m.highest) + off
			if s <= 0 || uint64(s) < m.highest && m.highest-uint64(s) >= size ||
				uint64(s) > m.highest && uint64(s)-m.highest > 1<<32-size {
				continue // not recoverable by design
			}
			seq := uint64(s)
			full, err := w.Check(uint32(seq))
			if full != seq {
				t.Fatalf("highest %#x: Check(%#x) inferred %#x, sent %#x", m.highest, uint32(seq), full, seq)
			}
			if want := m.verdict(seq); err != want {
				t.Fatalf("highest %#x: Check(%#x) = %v, model says %v", m.highest, seq, err, want)
			}
			if flags&1 == 0 {
				continue
			}
			want := m.verdict(seq)
			if err := w.Update(seq); err != want {
				t.Fatalf("Update(%#x) = %v, model says %v", seq, err, want)
			}
			if want == nil {
				m.accept(seq)
			}
		}
	})
}
