package isakmp

import (
	"reflect"
	"testing"
)

// FuzzWalkSA: WalkSA accepts exactly the SA payloads Decode accepts and
// shows the same transforms, in order.
func FuzzWalkSA(f *testing.F) {
	sa := &SA{DOI: DOIIPsec, Situation: SitIdentityOnly, Proposals: []Proposal{
		{Num: 1, Protocol: ProtoISAKMP, Transforms: []Transform{
			{Num: 1, ID: TransformKeyIKE, Attrs: []Attr{Basic(AttrEncryption, EncrAES), Basic(AttrKeyLength, 128), Var(12, []byte{1, 2, 3})}},
			{Num: 2, ID: TransformKeyIKE, Attrs: []Attr{Basic(AttrEncryption, EncrAES)}}}},
		{Num: 2, Protocol: ProtoESP, SPI: []byte{1, 2, 3, 4}, Transforms: []Transform{{Num: 1, ID: 12}}},
		{Num: 3, Protocol: ProtoAH},
	}}
	f.Add(EncodeBody(sa))
	f.Add([]byte{0, 0, 0, 1, 0, 0, 0, 1})
	f.Fuzz(func(t *testing.T, b []byte) {
		var seen []Transform
		_, werr := WalkSA(b, func(p ProposalView, tv TransformView) bool {
			seen = append(seen, tv.Transform())
			return true
		})
		d, derr := decodeSA(b)
		if (werr == nil) != (derr == nil) {
			t.Fatalf("WalkSA: %v, Decode: %v", werr, derr)
		}
		if derr != nil {
			return
		}
		var want []Transform
		for _, p := range d.Proposals {
			want = append(want, p.Transforms...)
		}
		if len(seen) != len(want) {
			t.Fatalf("WalkSA saw %d transforms, Decode %d", len(seen), len(want))
		}
		for i := range want {
			if !reflect.DeepEqual(seen[i], want[i]) {
				t.Fatalf("transform %d: %+v vs %+v", i, seen[i], want[i])
			}
		}
	})
}
