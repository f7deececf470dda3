package esp

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/des"
	"fmt"
	"testing"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/gosec-ipsec/gosec/internal/integ"
)

var benchSpecs = []suiteSpec{
	{CipherNull, 0, integ.HMACSHA256_128},
	{Cipher3DESCBC, 24, integ.HMACSHA1_96},
	{CipherAESCBC, 16, integ.HMACSHA1_96},
	{CipherAESCBC, 16, integ.HMACSHA256_128},
	{CipherAESCTR, 20, integ.HMACSHA256_128},
	{CipherAESGCM16, 20, integ.None},
	{CipherAESGCM16, 36, integ.None},
	{CipherChaCha20Poly1305, 36, integ.None},
}

var benchSizes = []int{64, 1400}

func benchName(sp suiteSpec, n int) string { return fmt.Sprintf("%v/%d", sp, n) }

func BenchmarkSeal(b *testing.B) {
	for _, sp := range benchSpecs {
		for _, n := range benchSizes {
			b.Run(benchName(sp, n), func(b *testing.B) {
				s := mustSuite(b, sp.config(false))
				p := keyOf(n, 1)
				buf := buf(p, s.Headroom(), s.MaxTrailer())
				off := s.Headroom()
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for i := 0; b.Loop(); i++ {
					if _, err := s.Seal(buf, off, n, 1, uint64(i), 4); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

func BenchmarkOpen(b *testing.B) {
	for _, sp := range benchSpecs {
		for _, n := range benchSizes {
			b.Run(benchName(sp, n), func(b *testing.B) {
				s := mustSuite(b, sp.config(false))
				pkt := seal(b, s, keyOf(n, 1), 1, 5, 4)
				saved := append([]byte(nil), pkt...)
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					// Open decrypts in place; the copy back (a memmove of
					// the packet) is part of the measured cost.
					copy(pkt, saved)
					if _, _, err := s.Open(pkt, 5); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// bare is the bare cipher+MAC over the same bytes that ESP encrypts and
// authenticates, with the same library primitives, built once outside the
// loop where the library allows it (CTR: cipher.NewCTR per packet, as any
// caller must).
type bare struct {
	seal, open func(body, all, icv []byte)
}

func newBare(b *testing.B, sp suiteSpec) bare {
	cfg := sp.config(false)
	var mac *integ.MAC
	if sp.in != integ.None {
		m, err := integ.New(sp.in, cfg.AuthKey)
		if err != nil {
			b.Fatal(err)
		}
		mac = m
	}
	sum := func(all, icv []byte) {
		if mac != nil {
			st := mac.Begin()
			st.Write(all)
			st.Sum(icv)
		}
	}
	verify := func(all, icv []byte) {
		if mac != nil {
			st := mac.Begin()
			st.Write(all)
			st.Verify(icv)
		}
	}
	iv := make([]byte, 16)
	switch sp.c {
	case CipherNull:
		return bare{func(_, all, icv []byte) { sum(all, icv) }, func(_, all, icv []byte) { verify(all, icv) }}
	case CipherAESCBC, Cipher3DESCBC:
		var blk cipher.Block
		var err error
		if sp.c == CipherAESCBC {
			blk, err = aes.NewCipher(cfg.EncKey)
		} else {
			blk, err = des.NewTripleDESCipher(cfg.EncKey)
		}
		if err != nil {
			b.Fatal(err)
		}
		iv = iv[:blk.BlockSize()]
		enc := cipher.NewCBCEncrypter(blk, iv)
		dec := cipher.NewCBCDecrypter(blk, iv)
		return bare{
			func(body, all, icv []byte) { enc.CryptBlocks(body, body); sum(all, icv) },
			func(body, all, icv []byte) { verify(all, icv); dec.CryptBlocks(body, body) },
		}
	case CipherAESCTR:
		blk, err := aes.NewCipher(cfg.EncKey[:len(cfg.EncKey)-4])
		if err != nil {
			b.Fatal(err)
		}
		return bare{
			func(body, all, icv []byte) { cipher.NewCTR(blk, iv).XORKeyStream(body, body); sum(all, icv) },
			func(body, all, icv []byte) { verify(all, icv); cipher.NewCTR(blk, iv).XORKeyStream(body, body) },
		}
	default:
		var a cipher.AEAD
		var err error
		k := cfg.EncKey[:len(cfg.EncKey)-4]
		if sp.c == CipherAESGCM16 {
			blk, err2 := aes.NewCipher(k)
			if err2 != nil {
				b.Fatal(err2)
			}
			a, err = cipher.NewGCM(blk)
		} else {
			a, err = chacha20poly1305.New(k)
		}
		if err != nil {
			b.Fatal(err)
		}
		nonce := make([]byte, 12)
		return bare{
			func(body, all, icv []byte) { a.Seal(body[:0], nonce, body, all[:8]) },
			func(body, all, icv []byte) {
				if _, err := a.Open(body[:0], nonce, body[:len(body)+16], all[:8]); err != nil {
					panic(err)
				}
			},
		}
	}
}

// BenchmarkBareSeal and BenchmarkBareOpen run only the cipher and MAC of
// each suite over exactly the bytes ESP would (the encrypted part: payload,
// padding, trailer; the MAC also over header and IV), for the ratio
// Seal/Open throughput : bare throughput.
func BenchmarkBareSeal(b *testing.B) { benchBare(b, true) }

// BenchmarkBareOpen: see BenchmarkBareSeal.
func BenchmarkBareOpen(b *testing.B) { benchBare(b, false) }

func benchBare(b *testing.B, sealing bool) {
	for _, sp := range benchSpecs {
		for _, n := range benchSizes {
			b.Run(benchName(sp, n), func(b *testing.B) {
				s := mustSuite(b, sp.config(false))
				bb := newBare(b, sp)
				pkt := seal(b, s, keyOf(n, 1), 1, 5, 4)
				h := s.Headroom()
				encEnd := len(pkt) - s.icvLen
				body := pkt[h:encEnd]
				icv := pkt[encEnd:]
				bb.seal(body, pkt[:encEnd], icv) // valid tag/ICV for open
				saved := append([]byte(nil), pkt...)
				b.SetBytes(int64(n))
				b.ReportAllocs()
				for b.Loop() {
					if sealing {
						bb.seal(body, pkt[:encEnd], icv)
					} else {
						copy(pkt, saved)
						bb.open(body, pkt[:encEnd], icv)
					}
				}
			})
		}
	}
}
