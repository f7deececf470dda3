// Package integ implements the truncated-HMAC integrity algorithms that ESP
// (RFC 4303) and AH (RFC 4302) share: HMAC-MD5-96 (RFC 2403), HMAC-SHA1-96
// (RFC 2404) and HMAC-SHA2-256-128, -384-192, -512-256 (RFC 4868).
//
// A MAC is safe for concurrent use and allocates nothing per packet once its
// internal pool is warm: each computation borrows a keyed hash state from a
// sync.Pool and returns it afterwards.
package integ

import (
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"fmt"
	"hash"
	"strings"
	"sync"
)

// Algorithm names one integrity algorithm.
type Algorithm uint8

// The integrity algorithms. None is valid only for AEAD ESP suites.
const (
	None Algorithm = iota
	HMACMD5_96
	HMACSHA1_96
	HMACSHA256_128
	HMACSHA384_192
	HMACSHA512_256
)

type algInfo struct {
	name   string
	keyLen int // octets, as the RFCs fix them for IPsec
	icvLen int // truncated output, octets
	newH   func() hash.Hash
}

var algs = [...]algInfo{
	None:           {name: "none"},
	HMACMD5_96:     {name: "hmac-md5-96", keyLen: 16, icvLen: 12, newH: md5.New},
	HMACSHA1_96:    {name: "hmac-sha1-96", keyLen: 20, icvLen: 12, newH: sha1.New},
	HMACSHA256_128: {name: "hmac-sha2-256-128", keyLen: 32, icvLen: 16, newH: sha256.New},
	HMACSHA384_192: {name: "hmac-sha2-384-192", keyLen: 48, icvLen: 24, newH: sha512.New384},
	HMACSHA512_256: {name: "hmac-sha2-512-256", keyLen: 64, icvLen: 32, newH: sha512.New},
}

func (a Algorithm) info() (algInfo, bool) {
	if int(a) >= len(algs) {
		return algInfo{}, false
	}
	return algs[a], true
}

// Valid reports whether a is a known algorithm (None included).
func (a Algorithm) Valid() bool { _, ok := a.info(); return ok }

// KeyLen is the key length in octets that IPsec uses for a.
func (a Algorithm) KeyLen() int { i, _ := a.info(); return i.keyLen }

// ICVLen is the length in octets of the truncated ICV.
func (a Algorithm) ICVLen() int { i, _ := a.info(); return i.icvLen }

// String returns the RFC-style name, such as "hmac-sha1-96".
func (a Algorithm) String() string {
	if i, ok := a.info(); ok {
		return i.name
	}
	return fmt.Sprintf("integ(%d)", uint8(a))
}

// Parse maps an RFC-style name ("hmac-sha1-96") or a strongSwan/Libreswan
// short name ("md5", "sha1", "sha256", "sha2_256", "sha384", "sha512") to an
// Algorithm.
func Parse(s string) (Algorithm, error) {
	switch strings.ToLower(s) {
	case "none", "null":
		return None, nil
	case "hmac-md5-96", "md5", "md5_96":
		return HMACMD5_96, nil
	case "hmac-sha1-96", "sha1", "sha", "sha1_96":
		return HMACSHA1_96, nil
	case "hmac-sha2-256-128", "sha256", "sha2_256", "sha2-256", "sha256_128", "sha2_256_128":
		return HMACSHA256_128, nil
	case "hmac-sha2-384-192", "sha384", "sha2_384", "sha2-384", "sha384_192", "sha2_384_192":
		return HMACSHA384_192, nil
	case "hmac-sha2-512-256", "sha512", "sha2_512", "sha2-512", "sha512_256", "sha2_512_256":
		return HMACSHA512_256, nil
	}
	return None, fmt.Errorf("integ: unknown integrity algorithm %q", s)
}

// MAC is a keyed integrity transform. It is safe for concurrent use.
type MAC struct {
	alg    Algorithm
	icvLen int
	pool   sync.Pool // of *State

	keyMu sync.Mutex // key is read by pool.New and cleared by Wipe
	key   []byte     // gosec's copy of the key; zeros once wiped
	wiped bool
}

// State is one borrowed keyed hash state. Write the covered bytes into it,
// then finish with Sum or Verify, which return it to its MAC.
type State struct {
	h   hash.Hash
	mac *MAC
	sum [64]byte
}

// New returns a MAC for alg with key, which must be exactly alg.KeyLen()
// octets long.
func New(alg Algorithm, key []byte) (*MAC, error) {
	info, ok := alg.info()
	if !ok || alg == None {
		return nil, fmt.Errorf("integ: cannot key algorithm %v", alg)
	}
	if len(key) != info.keyLen {
		return nil, fmt.Errorf("integ: %v needs a %d-octet key, got %d", alg, info.keyLen, len(key))
	}
	m := &MAC{alg: alg, icvLen: info.icvLen, key: append([]byte(nil), key...)}
	m.pool.New = func() any {
		m.keyMu.Lock()
		defer m.keyMu.Unlock()
		return &State{h: hmac.New(info.newH, m.key), mac: m}
	}
	return m, nil
}

// Wipe zeroes m's copy of the key. crypto/hmac's keyed states (the inner
// and outer pads derived from the key, in unexported fields) cannot be
// reached; states created after Wipe use an all-zero key, so an ICV
// computed after Wipe is wrong: call it once nothing uses m any more.
func (m *MAC) Wipe() {
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	clear(m.key)
	m.wiped = true
}

// Wiped reports whether Wipe was called.
func (m *MAC) Wiped() bool {
	m.keyMu.Lock()
	defer m.keyMu.Unlock()
	return m.wiped
}

// keyCopy is m's key copy, for tests that check it was zeroed.
func (m *MAC) keyCopy() []byte { return m.key }

// Algorithm returns the algorithm m computes.
func (m *MAC) Algorithm() Algorithm { return m.alg }

// ICVLen is the length in octets of the ICV that m produces.
func (m *MAC) ICVLen() int { return m.icvLen }

// Begin borrows a fresh keyed state.
func (m *MAC) Begin() *State {
	s := m.pool.Get().(*State)
	s.h.Reset()
	return s
}

// Write adds p to the covered bytes.
func (s *State) Write(p []byte) {
	s.h.Write(p)
}

// Sum writes the truncated ICV into icv, which must be ICVLen octets long,
// and returns the state to its MAC.
func (s *State) Sum(icv []byte) {
	full := s.h.Sum(s.sum[:0])
	copy(icv, full[:s.mac.icvLen])
	s.release()
}

// Verify reports, in constant time, whether icv equals the truncated ICV of
// the covered bytes, and returns the state to its MAC.
func (s *State) Verify(icv []byte) bool {
	full := s.h.Sum(s.sum[:0])
	ok := len(icv) == s.mac.icvLen && subtle.ConstantTimeCompare(full[:s.mac.icvLen], icv) == 1
	s.release()
	return ok
}

func (s *State) release() {
	clear(s.sum[:])
	s.mac.pool.Put(s)
}
