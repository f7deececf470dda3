package esp

import (
	"bytes"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/integ"
)

// TestWipe: after Wipe the suite's salt is zero and packets sealed before
// no longer open (the nonce or the ICV key changed).
func TestWipe(t *testing.T) {
	for _, cfg := range []Config{
		{Cipher: CipherAESGCM16, EncKey: bytes.Repeat([]byte{1}, 20)},
		{Cipher: CipherChaCha20Poly1305, EncKey: bytes.Repeat([]byte{2}, 36)},
		{Cipher: CipherAESCTR, EncKey: bytes.Repeat([]byte{3}, 20), Integ: integ.HMACSHA256_128, AuthKey: bytes.Repeat([]byte{4}, 32)},
		{Cipher: CipherAESCBC, EncKey: bytes.Repeat([]byte{5}, 16), Integ: integ.HMACSHA1_96, AuthKey: bytes.Repeat([]byte{6}, 20)},
	} {
		s, err := NewSuite(cfg)
		if err != nil {
			t.Fatal(err)
		}
		payload := []byte("a packet of some length, sealed before the wipe")
		buf := make([]byte, 2048)
		n := copy(buf[s.Headroom():], payload)
		out, err := s.Seal(buf, s.Headroom(), n, 0x1234, 7, 4)
		if err != nil {
			t.Fatal(err)
		}
		sealed := bytes.Clone(out)
		if got, _, err := s.Open(bytes.Clone(sealed), 7); err != nil || !bytes.Equal(got, payload) {
			t.Fatalf("%v: opens before Wipe: %v", cfg.Cipher, err)
		}
		s.Wipe()
		if s.salt.Load() != 0 || !s.Wiped() {
			t.Errorf("%v: salt %08x after Wipe", cfg.Cipher, s.salt.Load())
		}
		if s.mac != nil && !s.mac.Wiped() {
			t.Errorf("%v: integrity key not wiped", cfg.Cipher)
		}
		// CBC has no salt, and the HMAC states already in the pool keep
		// the pads crypto/hmac derived (see integ.MAC.Wipe).
		if cfg.Cipher == CipherAESCBC {
			continue
		}
		if got, _, err := s.Open(bytes.Clone(sealed), 7); err == nil && bytes.Equal(got, payload) {
			t.Errorf("%v: a packet sealed before Wipe still opens", cfg.Cipher)
		}
	}
}
