package ah

import (
	"fmt"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/integ"
)

var benchSizes = []int{64, 1400}

// benchPlain is an IPv4/UDP packet of n octets in total.
func benchPlain(n int) []byte {
	sp := defaultSpec()
	sp.payload = payloadBytes(n - 20)
	return sp.build()
}

func BenchmarkSealTransport(b *testing.B) {
	for _, alg := range allAlgs {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%v/%d", alg, n), func(b *testing.B) {
				s := newSuite(b, Config{Integ: alg, Key: testKey(alg, 1)})
				plain := benchPlain(n)
				buf := withHeadroom(plain)
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					copy(buf[headroom:], plain)
					if _, err := s.SealTransport(buf, headroom, n, 1, uint64(i+1)); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkOpenTransport(b *testing.B) {
	for _, alg := range allAlgs {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%v/%d", alg, n), func(b *testing.B) {
				s := newSuite(b, Config{Integ: alg, Key: testKey(alg, 1)})
				sealed := sealT(b, s, benchPlain(n), 1, 1)
				pkt := make([]byte, len(sealed))
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					copy(pkt, sealed) // Open removes AH in place
					if _, err := s.OpenTransport(pkt, 1); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkHMAC is the bare keyed MAC (internal/integ) over the same number
// of octets that AH covers for an n-octet packet (the packet plus the AH
// header), for the AH-over-HMAC overhead ratio.
func BenchmarkHMAC(b *testing.B) {
	for _, alg := range allAlgs {
		for _, n := range benchSizes {
			b.Run(fmt.Sprintf("%v/%d", alg, n), func(b *testing.B) {
				m, err := integ.New(alg, testKey(alg, 1))
				if err != nil {
					b.Fatal(err)
				}
				s := newSuite(b, Config{Integ: alg, Key: testKey(alg, 1)})
				data := payloadBytes(n + s.HeaderLen())
				icv := make([]byte, m.ICVLen())
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					st := m.Begin()
					st.Write(data)
					st.Sum(icv)
				}
			})
		}
	}
}
