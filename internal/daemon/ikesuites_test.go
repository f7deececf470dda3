package daemon

import (
	"testing"

	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/internal/conf"
	"github.com/gosec-ipsec/gosec/sad"
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

// TestChildSADMapping: a child's protocol, mode and UDP encapsulation
// map to the SAD's, the inbound SA seeing the outbound ports swapped.
func TestChildSADMapping(t *testing.T) {
	for _, tc := range []struct {
		proto ike.Proto
		want  sad.Proto
	}{{ike.ProtoESP, sad.ESP}, {ike.ProtoAH, sad.AH}} {
		if got := sadProto(tc.proto); got != tc.want {
			t.Errorf("sadProto(%v) = %v, want %v", tc.proto, got, tc.want)
		}
	}
	for _, tc := range []struct {
		ike ike.Mode
		sad sad.Mode
	}{{ike.ModeTunnel, sad.Tunnel}, {ike.ModeTransport, sad.Transport}} {
		if got := sadMode(tc.ike); got != tc.sad {
			t.Errorf("sadMode(%v) = %v, want %v", tc.ike, got, tc.sad)
		}
		if got := ikeMode(tc.sad); got != tc.ike {
			t.Errorf("ikeMode(%v) = %v, want %v", tc.sad, got, tc.ike)
		}
	}
	e := &ike.Encap{SrcPort: 4500, DstPort: 31337}
	for _, tc := range []struct {
		in      *ike.Encap
		reverse bool
		want    *sad.Encap
	}{
		{nil, false, nil},
		{nil, true, nil},
		{e, false, &sad.Encap{SrcPort: 4500, DstPort: 31337}},
		{e, true, &sad.Encap{SrcPort: 31337, DstPort: 4500}},
	} {
		got := sadEncap(tc.in, tc.reverse)
		if (got == nil) != (tc.want == nil) || got != nil && *got != *tc.want {
			t.Errorf("sadEncap(%v, %v) = %v, want %v", tc.in, tc.reverse, got, tc.want)
		}
	}
}
