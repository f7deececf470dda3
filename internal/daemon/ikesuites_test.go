package daemon

import (
	"testing"

	"github.com/gosec-ipsec/gosec/internal/conf"
)

// TestIKESuiteMapping: every configured algorithm maps to the engine's
// algorithm of the same name, key length and transform ID.
func TestIKESuiteMapping(t *testing.T) {
	for e := conf.EncrNull; e <= conf.EncrChaCha20Poly1305; e++ {
		for _, bits := range []int{0, 128, 256} {
			c := conf.Cipher{Encr: e, KeyBits: bits}
			got := ikeSuite(conf.Suite{Cipher: c, DH: 14})
			if got.Cipher.Name() != c.Name() || got.Cipher.KeyLen() != c.KeyLen() || got.Cipher.Encr.IANA() != e.IANA() || got.DH.Name() != conf.DHGroup(14).Name() {
				t.Errorf("%s maps to %s (key %d vs %d, id %d vs %d)", c.Name(), got.Cipher.Name(), got.Cipher.KeyLen(), c.KeyLen(), got.Cipher.Encr.IANA(), e.IANA())
			}
		}
	}
	for i := conf.IntegNone; i <= conf.IntegSHA512; i++ {
		got := ikeInteg(i)
		if got.Name() != i.Name() || got.KeyLen() != i.KeyLen() || got.IANA() != i.IANA() {
			t.Errorf("integrity %s maps to %s", i.Name(), got.Name())
		}
	}
	for _, g := range []conf.DHGroup{2, 5, 14, 15, 16, 17, 18, 19, 20, 21} {
		if got := ikeSuite(conf.Suite{DH: g}).DH; got.Name() != g.Name() {
			t.Errorf("group %s maps to %s", g.Name(), got.Name())
		}
	}
}
