package netio

import (
	"net/netip"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// BenchmarkSteeringSet10k is one recomputation of the steering at 10,000
// tunnels after one tunnel was added: what the data plane does after
// every SPD change (the new group is one map update; the rest is sorting
// and comparing the 10,000 destinations).
func BenchmarkSteeringSet10k(b *testing.B) {
	testutil.NeedRoot(b)
	s, err := newSteering(4)
	if err != nil {
		b.Fatal(err)
	}
	defer s.close()
	var dsts []netip.Prefix
	for i := 0; i < 10000; i++ {
		dsts = append(dsts, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(100 + i>>8), byte(i), 0}), 24))
	}
	if err := s.set(dsts[:9999]); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		n := 9999 + i%2 // add, then remove, the last tunnel
		if err := s.set(dsts[:n]); err != nil {
			b.Fatal(err)
		}
	}
}
