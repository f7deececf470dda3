package ikecrypto

import (
	"bytes"
	"crypto/rand"
	"errors"
	"net/netip"
	"testing"
)

func TestDES3WeakKeys(t *testing.T) {
	k1, k2, k3 := bytes.Repeat([]byte{0x01}, 8), bytes.Repeat([]byte{0x23}, 8), bytes.Repeat([]byte{0x45}, 8)
	cat := func(a ...[]byte) []byte { return bytes.Join(a, nil) }
	for _, tc := range []struct {
		name string
		key  []byte
		weak bool
	}{
		{"distinct", cat(k1, k2, k3), false},
		{"K1=K3 (2-key 3DES)", cat(k1, k2, k1), false},
		{"K1=K2", cat(k1, k1, k3), true},
		{"K2=K3", cat(k1, k2, k2), true},
		{"all equal", cat(k1, k1, k1), true},
	} {
		_, err := NewCBC(CipherDES3, tc.key)
		if tc.weak != errors.Is(err, ErrWeakKey) || (!tc.weak && err != nil) {
			t.Errorf("%s: err = %v, weak = %v", tc.name, err, tc.weak)
		}
	}
}

func TestNATDMappedAddress(t *testing.T) {
	c := []byte("12345678abcdefgh")
	v4 := NATD(HashSHA1, c[:8], c[8:], netip.MustParseAddr("192.0.2.1"), 500)
	mapped := NATD(HashSHA1, c[:8], c[8:], netip.MustParseAddr("::ffff:192.0.2.1"), 500)
	if !bytes.Equal(v4, mapped) {
		t.Error("IPv4-mapped address hashed differently from the IPv4 address")
	}
}

// FuzzSharedSecret: arbitrary peer public values never panic, and a value
// accepted for MODP has the group's length.
func FuzzSharedSecret(f *testing.F) {
	ds := map[Group]*DH{}
	for _, g := range []Group{2, 19} {
		d, err := GenerateDH(g, rand.Reader)
		if err != nil {
			f.Fatal(err)
		}
		ds[g] = d
		f.Add(uint8(g), d.Public())
	}
	f.Add(uint8(2), make([]byte, 128))
	f.Add(uint8(19), make([]byte, 64))
	f.Fuzz(func(t *testing.T, g uint8, peer []byte) {
		d := ds[Group(19)]
		if g%2 == 0 {
			d = ds[Group(2)]
		}
		s, err := d.SharedSecret(peer)
		if err == nil && len(s) == 0 {
			t.Fatal("empty shared secret accepted")
		}
	})
}
