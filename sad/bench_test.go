package sad

import (
	"math/rand/v2"
	"net/netip"
	"sync/atomic"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/clock"
)

// BenchmarkWindowInOrder: Check+Update for numbers arriving in order.
func BenchmarkWindowInOrder(b *testing.B) {
	for _, size := range []int{64, 1024, 4096} {
		b.Run(sizeName(size), func(b *testing.B) {
			w := mustWindow(b, size, true)
			b.ReportAllocs()
			for n := range b.N {
				full, err := w.Check(uint32(n + 1))
				if err != nil {
					b.Fatal(err)
				}
				if err := w.Update(full); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkWindowRandom: numbers arrive shuffled within blocks as large
// as the window, so each one is inside the window when it arrives.
func BenchmarkWindowRandom(b *testing.B) {
	for _, size := range []int{64, 1024, 4096} {
		b.Run(sizeName(size), func(b *testing.B) {
			w := mustWindow(b, size, true)
			perm := rand.New(rand.NewPCG(1, 2)).Perm(size)
			b.ReportAllocs()
			base := uint32(0)
			for n := range b.N {
				i := n % size
				if i == 0 && n > 0 {
					base += uint32(size)
				}
				full, err := w.Check(base + uint32(perm[i]) + 1)
				if err != nil {
					b.Fatal(err)
				}
				if err := w.Update(full); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkWindowParallel: all goroutines share one window.
func BenchmarkWindowParallel(b *testing.B) {
	w := mustWindow(b, 1024, false)
	var ctr atomic.Uint32
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			n := ctr.Add(1)
			if full, err := w.Check(n); err == nil {
				_ = w.Update(full)
			}
		}
	})
}

// BenchmarkLookup: inbound lookups among 10,000 SAs.
func BenchmarkLookup(b *testing.B) {
	db := New(clock.Real{}, nil)
	defer db.Close()
	const N = 10000
	keys := make([]uint32, N)
	dst := netip.MustParseAddr("192.0.2.1")
	for k := range N {
		spi, err := db.AllocSPI(ESP)
		if err != nil {
			b.Fatal(err)
		}
		if err := db.Add(suited(&SA{SPI: spi, Proto: ESP, Dir: Inbound, Src: addrB, Dst: dst, ReqID: uint32(k + 1)})); err != nil {
			b.Fatal(err)
		}
		keys[k] = spi
	}
	b.Run("serial", func(b *testing.B) {
		b.ReportAllocs()
		for n := range b.N {
			if db.Lookup(keys[n%N], ESP, dst) == nil {
				b.Fatal("missing")
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			n := 0
			for pb.Next() {
				n++
				if db.Lookup(keys[n%N], ESP, dst) == nil {
					b.Fatal("missing")
				}
			}
		})
	})
	b.Run("outbound", func(b *testing.B) {
		b.ReportAllocs()
		for n := range b.N {
			_ = db.Outbound(uint32(n%N + 1))
		}
	})
}

// BenchmarkNextSeq: one outbound SA shared by every goroutine.
func BenchmarkNextSeq(b *testing.B) {
	for _, esn := range []bool{false, true} {
		name := "32bit"
		if esn {
			name = "esn"
		}
		b.Run(name, func(b *testing.B) {
			db := New(clock.Real{}, nil)
			defer db.Close()
			sa := out(1)
			sa.ESN = esn
			if err := db.Add(sa); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := sa.NextSeq(); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	}
}

// BenchmarkCount: CountOut (with the clock read for last-packet time).
func BenchmarkCount(b *testing.B) {
	db := New(clock.Real{}, nil)
	defer db.Close()
	sa := out(1)
	sa.Soft.Bytes, sa.Hard.Bytes = 1<<62, 1<<63
	if err := db.Add(sa); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			sa.CountOut(1400)
		}
	})
}

func sizeName(n int) string {
	switch n {
	case 64:
		return "w64"
	case 1024:
		return "w1024"
	}
	return "w4096"
}
