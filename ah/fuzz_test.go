package ah

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/integ"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
)

// FuzzOpen feeds arbitrary packets to ParseHeader, OpenTransport and
// OpenTunnel of a 4-octet (SHA-256) and an 8-octet-padding-capable suite:
// they must never panic, and whatever opens must be a sub-slice that fits
// in the input.
func FuzzOpen(f *testing.F) {
	key := testKey(integ.HMACSHA256_128, 0x33)
	s4, err := NewSuite(Config{Integ: integ.HMACSHA256_128, Key: key, ESN: true})
	if err != nil {
		f.Fatal(err)
	}
	s1, err := NewSuite(Config{Integ: integ.HMACSHA1_96, Key: testKey(integ.HMACSHA1_96, 0x33)})
	if err != nil {
		f.Fatal(err)
	}
	s8, err := NewSuite(Config{Integ: integ.HMACSHA256_128, Key: key, ESN: true, Align8: true})
	if err != nil {
		f.Fatal(err)
	}
	for _, opts := range [][]byte{optionsNone, optionsRARR, optionsAllKinds} {
		sp := defaultSpec()
		sp.opts = opts
		plain := sp.build()
		for _, s := range []*Suite{s4, s8, s1} {
			f.Add(sealT(f, s, plain, 7, 1<<32|5), uint64(1<<32|5))
			f.Add(sealTun(f, s, plain, 7, 1<<32|5, &testOuter), uint64(1<<32|5))
		}
	}
	f.Add([]byte{0x45, 0, 0, 20}, uint64(0))
	f.Fuzz(func(t *testing.T, pkt []byte, seq uint64) {
		_, _, _ = ParseHeader(pkt)
		for _, s := range []*Suite{s4, s8, s1} {
			for _, tunnel := range []bool{false, true} {
				p := bytes.Clone(pkt)
				var out []byte
				var err error
				if tunnel {
					out, err = s.OpenTunnel(p, seq)
				} else {
					out, err = s.OpenTransport(p, seq)
				}
				if err != nil {
					if out != nil {
						t.Fatal("error with a packet")
					}
					continue
				}
				if len(out) > len(pkt) {
					t.Fatalf("opened %d octets from %d", len(out), len(pkt))
				}
			}
		}
	})
}

// FuzzSealOpen treats the input as a plaintext IPv4 packet: whenever
// SealTransport accepts it, OpenTransport must accept the result and give
// back the same packet (up to the ID Seal fills in for a zero ID and the
// header checksum Open recomputes). Packets with a source route whose
// final destination differs from the destination address are skipped: the
// receiver sees a different destination than the sender's packet has.
func FuzzSealOpen(f *testing.F) {
	s, err := NewSuite(Config{Integ: integ.HMACSHA384_192, Key: testKey(integ.HMACSHA384_192, 1), ESN: true})
	if err != nil {
		f.Fatal(err)
	}
	for _, opts := range [][]byte{optionsNone, optionsRA, optionsRARR, optionsAllKinds} {
		sp := defaultSpec()
		sp.opts = opts
		f.Add(sp.build(), uint64(9))
	}
	f.Fuzz(func(t *testing.T, plain []byte, seq uint64) {
		hl, total, err := iphdr.HeaderLen(plain)
		if err != nil || total != len(plain) {
			return
		}
		var a, b [60]byte
		if zeroMutable(a[:hl], plain[:hl], true) != nil {
			return
		}
		if zeroMutable(b[:hl], plain[:hl], false); a != b {
			return
		}
		sealed, err := s.SealTransport(withHeadroom(plain), headroom, len(plain), 3, seq)
		if err != nil {
			return
		}
		got, err := s.OpenTransport(sealed, seq)
		if err != nil {
			t.Fatalf("sealed packet does not open: %v", err)
		}
		want := bytes.Clone(plain)
		if binary.BigEndian.Uint16(want[4:]) == 0 {
			copy(want[4:6], got[4:6])
		}
		copy(want[10:12], got[10:12])
		if !bytes.Equal(got, want) || iphdr.Checksum(got[:hl]) != 0 {
			t.Fatalf("round trip\n%x\nwant\n%x", got, want)
		}
	})
}
