package integ

import (
	"bytes"
	"testing"
)

// TestWipe: the MAC's copy of the key is zeros after Wipe, and ICVs
// computed afterwards no longer match (the key is out of use).
func TestWipe(t *testing.T) {
	for _, alg := range []Algorithm{HMACMD5_96, HMACSHA1_96, HMACSHA256_128, HMACSHA384_192, HMACSHA512_256} {
		key := bytes.Repeat([]byte{0xa5}, alg.KeyLen())
		m, err := New(alg, key)
		if err != nil {
			t.Fatal(err)
		}
		held := m.keyCopy()
		icv := func() []byte {
			out := make([]byte, m.ICVLen())
			s := m.Begin()
			s.Write([]byte("covered"))
			s.Sum(out)
			return out
		}
		before := icv()
		m.Wipe()
		if !bytes.Equal(held, make([]byte, len(held))) || len(held) != alg.KeyLen() {
			t.Errorf("%v: key copy after Wipe: %x", alg, held)
		}
		if !m.Wiped() {
			t.Errorf("%v: Wiped() false", alg)
		}
		if !bytes.Equal(key, bytes.Repeat([]byte{0xa5}, alg.KeyLen())) {
			t.Errorf("%v: Wipe touched the caller's key", alg)
		}
		// A state made after Wipe (the pool may still hold old ones, so
		// drain it by taking more than it can keep) uses zeros.
		var states []*State
		for i := 0; i < 64; i++ {
			states = append(states, m.pool.New().(*State))
		}
		s := states[0]
		s.h.Reset()
		s.h.Write([]byte("covered"))
		if bytes.Equal(s.h.Sum(nil)[:m.ICVLen()], before) {
			t.Errorf("%v: a state keyed after Wipe computes the old ICV", alg)
		}
	}
}
