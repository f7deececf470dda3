package ah

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/integ"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

const headroom = 128

var allAlgs = []integ.Algorithm{
	integ.HMACMD5_96, integ.HMACSHA1_96, integ.HMACSHA256_128,
	integ.HMACSHA384_192, integ.HMACSHA512_256,
}

// IPv4 options used by the tests (RFC 791, RFC 2113).
var (
	optNOPb         = []byte{1}
	optRouterAlert  = []byte{148, 4, 0, 0}
	optRecordRoute  = []byte{7, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0} // two empty slots
	optTimestamp    = []byte{68, 12, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	optSecurityOpt  = []byte{130, 11, 0xf1, 0x35, 0, 0, 0, 0, 0, 0, 0}
	optUnknown      = []byte{0x9e, 4, 0xaa, 0xbb} // copy=1, class 0, number 30: unassigned
	optionsNone     = []byte(nil)
	optionsRA       = cat(optNOPb, optRouterAlert, optNOPb, optNOPb, optNOPb)                    // 8
	optionsRARR     = cat(optNOPb, optRouterAlert, optRecordRoute)                               // 16
	optionsAllKinds = cat(optSecurityOpt, optNOPb, optTimestamp, optUnknown, []byte{0, 0, 0, 0}) // 32
)

func cat(bs ...[]byte) []byte {
	var out []byte
	for _, b := range bs {
		out = append(out, b...)
	}
	return out
}

type ipSpec struct {
	tos, ttl uint8
	id       uint16
	df       bool
	proto    uint8
	src, dst [4]byte
	opts     []byte
	payload  []byte
}

func defaultSpec() ipSpec {
	return ipSpec{
		tos: 0x10, ttl: 61, id: 0x1234, df: true, proto: iphdr.ProtoUDP,
		src: [4]byte{192, 0, 2, 1}, dst: [4]byte{192, 0, 2, 2},
		payload: payloadBytes(64),
	}
}

func payloadBytes(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(i*7 + 3)
	}
	return p
}

func (sp ipSpec) build() []byte {
	if len(sp.opts)%4 != 0 {
		panic("options must be a multiple of 4 octets")
	}
	hl := 20 + len(sp.opts)
	p := make([]byte, hl+len(sp.payload))
	p[0] = 0x40 | byte(hl/4)
	p[1] = sp.tos
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], sp.id)
	if sp.df {
		p[6] = 0x40
	}
	p[8] = sp.ttl
	p[9] = sp.proto
	copy(p[12:], sp.src[:])
	copy(p[16:], sp.dst[:])
	copy(p[20:], sp.opts)
	copy(p[hl:], sp.payload)
	iphdr.SetChecksum(p[:hl])
	return p
}

func testKey(alg integ.Algorithm, salt byte) []byte {
	k := make([]byte, alg.KeyLen())
	for i := range k {
		k[i] = byte(i)*13 + salt
	}
	return k
}

func newSuite(t testing.TB, cfg Config) *Suite {
	t.Helper()
	s, err := NewSuite(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func withHeadroom(p []byte) []byte {
	b := make([]byte, headroom+len(p))
	copy(b[headroom:], p)
	return b
}

func sealT(t testing.TB, s *Suite, plain []byte, spi uint32, seq uint64) []byte {
	t.Helper()
	out, err := s.SealTransport(withHeadroom(plain), headroom, len(plain), spi, seq)
	if err != nil {
		t.Fatalf("SealTransport: %v", err)
	}
	return bytes.Clone(out)
}

var testOuter = iphdr.Outer{Src: [4]byte{198, 51, 100, 1}, Dst: [4]byte{198, 51, 100, 2}, TOS: 0x28, TTL: 50, ID: 777, DF: true}

func sealTun(t testing.TB, s *Suite, inner []byte, spi uint32, seq uint64, o *iphdr.Outer) []byte {
	t.Helper()
	out, err := s.SealTunnel(withHeadroom(inner), headroom, len(inner), spi, seq, o)
	if err != nil {
		t.Fatalf("SealTunnel: %v", err)
	}
	return bytes.Clone(out)
}

func TestNewSuite(t *testing.T) {
	for _, tc := range []struct {
		alg          integ.Algorithm
		hdr4, hdr8   int
		icv, plen4   int
		wantErr      bool
		keyLenOffset int
	}{
		{alg: integ.HMACMD5_96, hdr4: 24, hdr8: 24, icv: 12, plen4: 4},
		{alg: integ.HMACSHA1_96, hdr4: 24, hdr8: 24, icv: 12, plen4: 4},
		{alg: integ.HMACSHA256_128, hdr4: 28, hdr8: 32, icv: 16, plen4: 5},
		{alg: integ.HMACSHA384_192, hdr4: 36, hdr8: 40, icv: 24, plen4: 7},
		{alg: integ.HMACSHA512_256, hdr4: 44, hdr8: 48, icv: 32, plen4: 9},
		{alg: integ.None, wantErr: true},
		{alg: integ.HMACSHA1_96, keyLenOffset: 1, wantErr: true},
		{alg: integ.Algorithm(99), wantErr: true},
	} {
		t.Run(fmt.Sprintf("%v/%d", tc.alg, tc.keyLenOffset), func(t *testing.T) {
			key := make([]byte, tc.alg.KeyLen()+tc.keyLenOffset)
			s4, err := NewSuite(Config{Integ: tc.alg, Key: key})
			if tc.wantErr {
				if err == nil {
					t.Fatal("NewSuite accepted a bad config")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s8 := newSuite(t, Config{Integ: tc.alg, Key: key, Align8: true})
			if s4.HeaderLen() != tc.hdr4 || s8.HeaderLen() != tc.hdr8 || s4.ICVLen() != tc.icv || s8.ICVLen() != tc.icv {
				t.Fatalf("HeaderLen %d/%d ICVLen %d, want %d/%d %d", s4.HeaderLen(), s8.HeaderLen(), s4.ICVLen(), tc.hdr4, tc.hdr8, tc.icv)
			}
			// RFC 4302 2.2: payload length = AH length in 32-bit words minus 2.
			p := sealT(t, s4, defaultSpec().build(), 1, 1)
			if got := int(p[21]); got != tc.plen4 {
				t.Fatalf("payload length field %d, want %d", got, tc.plen4)
			}
		})
	}
}

// TestRoundTrip seals and opens with every algorithm, both modes, both
// alignments, ESN on and off, with and without IPv4 options.
func TestRoundTrip(t *testing.T) {
	optSets := map[string][]byte{"none": optionsNone, "ra": optionsRA, "ra+rr": optionsRARR, "all": optionsAllKinds}
	for _, alg := range allAlgs {
		for _, align8 := range []bool{false, true} {
			for _, esn := range []bool{false, true} {
				name := fmt.Sprintf("%v/align8=%v/esn=%v", alg, align8, esn)
				t.Run(name, func(t *testing.T) {
					cfg := Config{Integ: alg, Key: testKey(alg, 1), ESN: esn, Align8: align8}
					s := newSuite(t, cfg)
					seq := uint64(0x0000000700000042)
					if !esn {
						seq = 0x42
					}
					for on, opts := range optSets {
						sp := defaultSpec()
						sp.opts = opts
						plain := sp.build()
						// transport
						sealed := sealT(t, s, plain, 0xc0ffee, seq)
						if len(sealed) != len(plain)+s.HeaderLen() {
							t.Fatalf("%s: sealed length %d, want %d", on, len(sealed), len(plain)+s.HeaderLen())
						}
						checkSealedTransport(t, sealed, plain, s, 0xc0ffee, seq)
						spi, wseq, err := ParseHeader(sealed)
						if err != nil || spi != 0xc0ffee || wseq != uint32(seq) {
							t.Fatalf("%s: ParseHeader = %#x %d %v", on, spi, wseq, err)
						}
						// Any suite of the same key and alg opens either alignment.
						other := newSuite(t, Config{Integ: alg, Key: cfg.Key, ESN: esn, Align8: !align8})
						for _, o := range []*Suite{s, other} {
							got, err := o.OpenTransport(bytes.Clone(sealed), seq)
							if err != nil {
								t.Fatalf("%s: OpenTransport: %v", on, err)
							}
							if !bytes.Equal(got, plain) {
								t.Fatalf("%s: opened\n%x\nwant\n%x", on, got, plain)
							}
						}
						// tunnel
						tun := sealTun(t, s, plain, 0xc0ffee, seq, &testOuter)
						if len(tun) != len(plain)+20+s.HeaderLen() {
							t.Fatalf("%s: tunnel length %d", on, len(tun))
						}
						if tun[9] != iphdr.ProtoAH || tun[20] != iphdr.ProtoIPIP || iphdr.Checksum(tun[:20]) != 0 ||
							binary.BigEndian.Uint16(tun[4:]) != testOuter.ID || int(binary.BigEndian.Uint16(tun[2:])) != len(tun) {
							t.Fatalf("%s: bad tunnel header %x", on, tun[:24])
						}
						for _, o := range []*Suite{s, other} {
							inner, err := o.OpenTunnel(bytes.Clone(tun), seq)
							if err != nil {
								t.Fatalf("%s: OpenTunnel: %v", on, err)
							}
							if !bytes.Equal(inner, plain) {
								t.Fatalf("%s: tunnel inner %x", on, inner)
							}
						}
					}
				})
			}
		}
	}
}

// checkSealedTransport checks the layout RFC 4302 section 2 gives a
// transport-mode AH packet, independently of the ICV.
func checkSealedTransport(t testing.TB, sealed, plain []byte, s *Suite, spi uint32, seq uint64) {
	t.Helper()
	hl := int(plain[0]&15) * 4
	if !bytes.Equal(sealed[12:hl], plain[12:hl]) || sealed[0] != plain[0] || sealed[1] != plain[1] ||
		!bytes.Equal(sealed[4:9], plain[4:9]) {
		t.Fatalf("IPv4 header changed beyond protocol/length/checksum:\n%x\n%x", sealed[:hl], plain[:hl])
	}
	if sealed[9] != iphdr.ProtoAH || int(binary.BigEndian.Uint16(sealed[2:])) != len(sealed) || iphdr.Checksum(sealed[:hl]) != 0 {
		t.Fatalf("protocol/length/checksum wrong: %x", sealed[:hl])
	}
	ah := sealed[hl:]
	if ah[0] != plain[9] || int(ah[1]) != s.HeaderLen()/4-2 || ah[2] != 0 || ah[3] != 0 ||
		binary.BigEndian.Uint32(ah[4:]) != spi || binary.BigEndian.Uint32(ah[8:]) != uint32(seq) {
		t.Fatalf("AH fixed fields wrong: %x", ah[:12])
	}
	if pad := ah[12+s.ICVLen() : s.HeaderLen()]; !bytes.Equal(pad, make([]byte, len(pad))) {
		t.Fatalf("padding not zero: %x", pad)
	}
	if !bytes.Equal(sealed[hl+s.HeaderLen():], plain[hl:]) {
		t.Fatal("payload changed")
	}
}

// TestESNCoversHighBits: with ESN the high 32 bits are covered, without it
// they are not.
func TestESNCoversHighBits(t *testing.T) {
	for _, esn := range []bool{false, true} {
		s := newSuite(t, Config{Integ: integ.HMACSHA1_96, Key: testKey(integ.HMACSHA1_96, 2), ESN: esn})
		sealed := sealT(t, s, defaultSpec().build(), 5, 1<<32|9)
		_, err := s.OpenTransport(bytes.Clone(sealed), 2<<32|9)
		if esn && !errors.Is(err, ErrICV) {
			t.Fatalf("ESN: wrong high bits accepted (%v)", err)
		}
		if !esn && err != nil {
			t.Fatalf("no ESN: high bits must not matter: %v", err)
		}
		if _, err := s.OpenTransport(bytes.Clone(sealed), 1<<32|10); !errors.Is(err, ErrSeq) {
			t.Fatalf("low bits differing from the wire: %v", err)
		}
	}
}

// TestZeroIDFilled: a zero IPv4 ID is replaced before the ICV is computed
// (the kernel would fill it after), in both modes.
func TestZeroIDFilled(t *testing.T) {
	s := newSuite(t, Config{Integ: integ.HMACSHA256_128, Key: testKey(integ.HMACSHA256_128, 3)})
	sp := defaultSpec()
	sp.id = 0
	plain := sp.build()
	seen := map[uint16]bool{}
	for seq := uint64(1); seq <= 1000; seq++ {
		sealed := sealT(t, s, plain, 1, seq)
		id := binary.BigEndian.Uint16(sealed[4:])
		if id == 0 || seen[id] {
			t.Fatalf("seq %d: ID %d zero or repeated", seq, id)
		}
		seen[id] = true
		got, err := s.OpenTransport(sealed, seq)
		if err != nil {
			t.Fatal(err)
		}
		if binary.BigEndian.Uint16(got[4:]) != id {
			t.Fatal("opened packet lost the ID")
		}
		o := testOuter
		o.ID = 0
		tun := sealTun(t, s, plain, 1, seq, &o)
		if binary.BigEndian.Uint16(tun[4:]) == 0 {
			t.Fatal("tunnel outer ID is zero")
		}
		if _, err := s.OpenTunnel(tun, seq); err != nil {
			t.Fatal(err)
		}
	}
	if testOuter.ID != 777 {
		t.Fatal("SealTunnel modified *outer")
	}
}

type mutation struct {
	name    string
	mutable bool
	f       func(p []byte, hl int)
}

func mutations(opts []byte) []mutation {
	ms := []mutation{
		{"tos", true, func(p []byte, hl int) { p[1] ^= 0xfc }},
		{"ttl", true, func(p []byte, hl int) { p[8]-- }},
		{"df-flag", true, func(p []byte, hl int) { p[6] ^= 0x40 }},
		{"checksum-only", true, func(p []byte, hl int) { p[10] ^= 0x55 }},
		{"src", false, func(p []byte, hl int) { p[12] ^= 1 }},
		{"dst", false, func(p []byte, hl int) { p[19] ^= 1 }},
		{"id", false, func(p []byte, hl int) { p[5] ^= 1 }},
		{"protocol", false, func(p []byte, hl int) { p[9] = 50 }},
		{"version-ihl-immutable-length", false, func(p []byte, hl int) { binary.BigEndian.PutUint16(p[2:], binary.BigEndian.Uint16(p[2:])-1) }},
		{"ah-next-header", false, func(p []byte, hl int) { p[hl] ^= 0x20 }},
		{"ah-reserved", false, func(p []byte, hl int) { p[hl+3] = 1 }},
		{"ah-spi", false, func(p []byte, hl int) { p[hl+4] ^= 0x80 }},
		{"icv-bit", false, func(p []byte, hl int) { p[hl+12] ^= 1 }},
		{"icv-last-bit", false, func(p []byte, hl int) {}}, // set per suite below
		{"payload-first", false, func(p []byte, hl int) { p[len(p)-64] ^= 1 }},
		{"payload-last", false, func(p []byte, hl int) { p[len(p)-1] ^= 0x80 }},
	}
	if bytes.Contains(opts, optRecordRoute[:3]) {
		i := 20 + bytes.Index(opts, optRecordRoute[:3])
		ms = append(ms,
			mutation{"record-route-data", true, func(p []byte, hl int) { copy(p[i+3:], []byte{10, 1, 2, 3}); p[i+2] = 8 }},
			mutation{"record-route-full", true, func(p []byte, hl int) {
				copy(p[i+3:], []byte{10, 1, 2, 3, 10, 4, 5, 6})
				p[i+2] = 12
			}})
	}
	if j := bytes.Index(opts, optTimestamp[:3]); j >= 0 {
		i := 20 + j
		ms = append(ms, mutation{"timestamp-data", true, func(p []byte, hl int) {
			binary.BigEndian.PutUint32(p[i+4:], 0x01020304)
			p[i+2] = 9
		}})
	}
	if j := bytes.Index(opts, optUnknown); j >= 0 {
		i := 20 + j
		ms = append(ms, mutation{"unknown-option-data", true, func(p []byte, hl int) { p[i+3] ^= 0xff }})
	}
	if j := bytes.Index(opts, optRouterAlert); j >= 0 {
		i := 20 + j
		ms = append(ms, mutation{"router-alert-value", false, func(p []byte, hl int) { p[i+3] = 1 }})
	}
	if j := bytes.Index(opts, optSecurityOpt[:4]); j >= 0 {
		i := 20 + j
		ms = append(ms, mutation{"security-option", false, func(p []byte, hl int) { p[i+5] = 9 }})
	}
	return ms
}

// TestMutations: changing a mutable field (then fixing the header checksum,
// as a router would) must still verify; changing anything immutable must
// fail with drop.ICV, leaving the packet unchanged.
func TestMutations(t *testing.T) {
	for _, alg := range allAlgs {
		for _, align8 := range []bool{false, true} {
			for _, opts := range [][]byte{optionsNone, optionsRARR, optionsAllKinds} {
				s := newSuite(t, Config{Integ: alg, Key: testKey(alg, 4), Align8: align8, ESN: true})
				sp := defaultSpec()
				sp.opts = opts
				plain := sp.build()
				seq := uint64(3<<32 | 17)
				sealed := sealT(t, s, plain, 99, seq)
				hl := 20 + len(opts)
				for _, m := range mutations(opts) {
					t.Run(fmt.Sprintf("%v/align8=%v/opts=%d/%s", alg, align8, len(opts), m.name), func(t *testing.T) {
						p := bytes.Clone(sealed)
						if m.name == "icv-last-bit" {
							p[hl+12+s.ICVLen()-1] ^= 0x80
						} else {
							m.f(p, hl)
						}
						if m.name != "checksum-only" {
							iphdr.SetChecksum(p[:hl])
						}
						before := bytes.Clone(p)
						got, err := s.OpenTransport(p, seq)
						if m.mutable {
							if err != nil {
								t.Fatalf("mutable change rejected: %v", err)
							}
							if !bytes.Equal(got[hl:], plain[hl:]) {
								t.Fatal("payload differs")
							}
							return
						}
						if err == nil {
							t.Fatal("immutable change accepted")
						}
						if r := drop.ReasonOf(err); r != drop.ICV && m.name != "protocol" {
							t.Fatalf("reason %v (%v), want icv", r, err)
						}
						if !bytes.Equal(p, before) {
							t.Fatal("failed Open modified the packet")
						}
					})
				}
			}
		}
	}
}

// TestPaddingCovered: the padding octets of 8-octet-aligned AH are in the
// ICV as sent (RFC 4302 3.3.3.2.1).
func TestPaddingCovered(t *testing.T) {
	s := newSuite(t, Config{Integ: integ.HMACSHA256_128, Key: testKey(integ.HMACSHA256_128, 5), Align8: true})
	sealed := sealT(t, s, defaultSpec().build(), 1, 1)
	sealed[20+12+16] = 0xaa
	if _, err := s.OpenTransport(sealed, 1); !errors.Is(err, ErrICV) {
		t.Fatalf("changed padding: %v", err)
	}
}

// TestTruncated opens every prefix of good packets (with the IPv4 total
// length both left alone and adjusted to the prefix): all must fail with a
// drop.Malformed or drop.ICV error and never panic.
func TestTruncated(t *testing.T) {
	for _, alg := range allAlgs {
		s := newSuite(t, Config{Integ: alg, Key: testKey(alg, 6), Align8: alg == integ.HMACSHA256_128})
		sp := defaultSpec()
		sp.opts = optionsRARR
		plain := sp.build()
		for _, pkt := range [][]byte{sealT(t, s, plain, 1, 1), sealTun(t, s, plain, 1, 1, &testOuter)} {
			for n := 0; n < len(pkt); n++ {
				for _, fixLen := range []bool{false, true} {
					p := bytes.Clone(pkt[:n])
					if fixLen && n >= 20 {
						binary.BigEndian.PutUint16(p[2:], uint16(n))
						iphdr.SetChecksum(p[:min(n, int(p[0]&15)*4)])
					}
					_, err1 := s.OpenTransport(bytes.Clone(p), 1)
					_, err2 := s.OpenTunnel(bytes.Clone(p), 1)
					for _, err := range []error{err1, err2} {
						if r := drop.ReasonOf(err); r != drop.Malformed && r != drop.ICV {
							t.Fatalf("%v len %d fix %v: err %v (reason %v)", alg, n, fixLen, err, r)
						}
					}
					if _, _, err := ParseHeader(p); err == nil && (n == 0 || n < int(p[0]&15)*4+12) {
						t.Fatalf("ParseHeader accepted %d octets", n)
					}
				}
			}
		}
	}
}

// TestPayloadLength: only the 4- and 8-octet-aligned AH lengths for the
// SA's ICV are accepted; every other payload length is Malformed.
func TestPayloadLength(t *testing.T) {
	for _, alg := range allAlgs {
		s := newSuite(t, Config{Integ: alg, Key: testKey(alg, 7)})
		sealed := sealT(t, s, defaultSpec().build(), 1, 1)
		ok4 := (align(12+alg.ICVLen(), 4))/4 - 2
		ok8 := (align(12+alg.ICVLen(), 8))/4 - 2
		for v := 0; v < 256; v++ {
			p := bytes.Clone(sealed)
			p[21] = byte(v)
			_, err := s.OpenTransport(p, 1)
			switch {
			case v == ok4 && v == int(sealed[21]):
				if err != nil {
					t.Fatalf("%v: payload length %d: %v", alg, v, err)
				}
			case v == ok4 || v == ok8:
				// Accepted length, but the field is covered by the ICV.
				if !errors.Is(err, ErrICV) {
					t.Fatalf("%v: payload length %d: %v, want ICV error", alg, v, err)
				}
			default:
				if drop.ReasonOf(err) != drop.Malformed {
					t.Fatalf("%v: payload length %d: %v, want malformed", alg, v, err)
				}
			}
		}
	}
}

func TestOpenRejects(t *testing.T) {
	s := newSuite(t, Config{Integ: integ.HMACSHA1_96, Key: testKey(integ.HMACSHA1_96, 8)})
	sp := defaultSpec()
	plain := sp.build()
	sealed := sealT(t, s, plain, 1, 1)
	tun := sealTun(t, s, plain, 1, 1, &testOuter)
	fragMF := bytes.Clone(sealed)
	fragMF[6] |= 0x20
	iphdr.SetChecksum(fragMF[:20])
	fragOff := bytes.Clone(sealed)
	fragOff[7] = 3
	iphdr.SetChecksum(fragOff[:20])
	notAH := bytes.Clone(plain)
	v6 := bytes.Clone(sealed)
	v6[0] = 0x65
	// Seal with good options (RA and four NOPs), then break them.
	badOpt := func(mod func(p []byte)) []byte {
		sp := defaultSpec()
		sp.opts = cat(optRouterAlert, []byte{1, 1, 1, 1})
		p := sealT(t, s, sp.build(), 1, 1)
		mod(p)
		iphdr.SetChecksum(p[:28])
		return p
	}
	badOptLen0 := badOpt(func(p []byte) { p[24], p[25] = 7, 0 })
	badOptLenLong := badOpt(func(p []byte) { p[24], p[25] = 7, 5 })
	badOptLast := badOpt(func(p []byte) { p[27] = 7 })
	for _, tc := range []struct {
		name   string
		pkt    []byte
		tunnel bool
		want   error
	}{
		{"fragment MF", fragMF, false, ErrFragment},
		{"fragment offset", fragOff, false, ErrFragment},
		{"not AH", notAH, false, ErrNotAH},
		{"IPv6 version", v6, false, ErrIPv4},
		{"option length 0", badOptLen0, false, ErrOptions},
		{"option past header", badOptLenLong, false, ErrOptions},
		{"option type at last octet", badOptLast, false, ErrOptions},
		{"transport packet opened as tunnel (next header UDP)", sealed, true, ErrInnerProto},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var err error
			if tc.tunnel {
				_, err = s.OpenTunnel(bytes.Clone(tc.pkt), 1)
			} else {
				_, err = s.OpenTransport(bytes.Clone(tc.pkt), 1)
			}
			if !errors.Is(err, tc.want) || drop.ReasonOf(err) != drop.Malformed {
				t.Fatalf("err %v, want %v", err, tc.want)
			}
		})
	}
	// Tunnel with next header 4 but an inner packet that is not IPv4: a
	// correctly sealed packet whose inner bytes lie.
	junk := bytes.Clone(plain)
	junk[0] = 0x60
	tunJunk, err := s.SealTunnel(withHeadroom(junk), headroom, len(junk), 1, 1, &testOuter)
	if err != nil {
		t.Fatal(err)
	}
	tunJunk[20] = iphdr.ProtoIPIP // next header claims IPv4
	if _, err := s.OpenTunnel(tunJunk, 1); err == nil {
		t.Fatal("accepted a lying next header")
	}
	if _, err := s.OpenTunnel(tun, 1); err != nil {
		t.Fatal(err)
	}
}

func TestSealRejects(t *testing.T) {
	s := newSuite(t, Config{Integ: integ.HMACSHA512_256, Key: testKey(integ.HMACSHA512_256, 9)})
	plain := defaultSpec().build()
	frag := bytes.Clone(plain)
	frag[6] = 0x20
	iphdr.SetChecksum(frag[:20])
	big := defaultSpec()
	big.payload = make([]byte, 65535-20)
	bigPkt := big.build()
	for _, tc := range []struct {
		name string
		buf  []byte
		off  int
		n    int
		want drop.Reason
	}{
		{"empty packet", withHeadroom(plain), headroom, 0, drop.Malformed},
		{"short headroom", append(make([]byte, s.HeaderLen()-1), plain...), s.HeaderLen() - 1, len(plain), drop.NoBuffer},
		{"n past buffer", withHeadroom(plain), headroom, len(plain) + 1, drop.Malformed},
		{"negative off", withHeadroom(plain), -1, len(plain), drop.Malformed},
		{"length mismatch", withHeadroom(plain), headroom, len(plain) - 1, drop.Malformed},
		{"fragment", withHeadroom(frag), headroom, len(frag), drop.Malformed},
		{"too big", withHeadroom(bigPkt), headroom, len(bigPkt), drop.TooBig},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := s.SealTransport(tc.buf, tc.off, tc.n, 1, 1)
			if err == nil || drop.ReasonOf(err) != tc.want {
				t.Fatalf("err %v (reason %v), want %v", err, drop.ReasonOf(err), tc.want)
			}
		})
	}
	// Malformed options: refused before anything moves (a 60-octet header
	// overlaps its own new place), the buffer is left as it was.
	badSp := defaultSpec()
	badSp.opts = cat(optRouterAlert, optTimestamp, optRecordRoute, []byte{1, 7, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}) // 40 octets
	badPkt := badSp.build()
	buf := withHeadroom(badPkt)
	before := bytes.Clone(buf)
	if _, err := s.SealTransport(buf, headroom, len(badPkt), 1, 1); !errors.Is(err, ErrOptions) {
		t.Fatalf("malformed options: %v", err)
	}
	if !bytes.Equal(buf, before) {
		t.Fatal("failed SealTransport modified the buffer")
	}
	if _, err := s.SealTunnel(append(make([]byte, 20+s.HeaderLen()-1), plain...), 20+s.HeaderLen()-1, len(plain), 1, 1, &testOuter); drop.ReasonOf(err) != drop.NoBuffer {
		t.Fatalf("tunnel short headroom: %v", err)
	}
	if _, err := s.SealTunnel(withHeadroom(plain), headroom, len(plain), 1, 1, nil); err == nil {
		t.Fatal("tunnel with nil outer")
	}
	if _, err := s.SealTunnel(withHeadroom([]byte{0x20, 0}), headroom, 2, 1, 1, &testOuter); err == nil {
		t.Fatal("tunnel with a non-IP inner packet")
	}
}

// TestSourceRoute: a sender computes the ICV with the final destination of
// an unused source route (RFC 4302 3.3.3.1.1.1, mutable but predictable),
// so the receiver, which sees that destination, verifies it.
func TestSourceRoute(t *testing.T) {
	s := newSuite(t, Config{Integ: integ.HMACSHA1_96, Key: testKey(integ.HMACSHA1_96, 10)})
	for _, typ := range []byte{optLSRR, optSSRR} {
		sp := defaultSpec()
		sp.dst = [4]byte{10, 0, 0, 1} // first hop
		sp.opts = []byte{typ, 11, 4, 10, 0, 0, 2, 192, 0, 2, 2, 0}
		sealed := sealT(t, s, sp.build(), 1, 1)
		// As the final destination receives it: dst rewritten, the route
		// recorded and the pointer past the end.
		copy(sealed[16:20], []byte{192, 0, 2, 2})
		copy(sealed[23:31], []byte{10, 0, 0, 1, 10, 0, 0, 2})
		sealed[22] = 12
		iphdr.SetChecksum(sealed[:32])
		if _, err := s.OpenTransport(sealed, 1); err != nil {
			t.Fatalf("type %d: %v", typ, err)
		}
	}
}

// TestOptionClassification checks zeroMutable against RFC 4302 Appendix
// A.1 option by option.
func TestOptionClassification(t *testing.T) {
	immutable := map[byte]bool{0: true, 1: true, 130: true, 133: true, 134: true, 148: true, 149: true}
	mutableNamed := []byte{131, 68, 7, 137, 82, 136, 11, 12, 145, 10, 205, 142, 15, 144, 147}
	for _, typ := range mutableNamed {
		if immutable[typ] {
			t.Fatalf("bad table %d", typ)
		}
	}
	for typ := 2; typ < 256; typ++ {
		hdr := defaultSpec().build()[:20]
		hdr[0] = 0x46
		hdr = append(hdr, byte(typ), 4, 0xab, 0xcd)
		dst := make([]byte, len(hdr))
		if err := zeroMutable(dst, hdr, false); err != nil {
			t.Fatal(err)
		}
		kept := bytes.Equal(dst[20:], hdr[20:])
		zeroed := bytes.Equal(dst[20:], []byte{0, 0, 0, 0})
		if immutable[byte(typ)] != kept || kept == zeroed {
			t.Fatalf("option type %d: got %x (immutable %v)", typ, dst[20:], immutable[byte(typ)])
		}
	}
	// EOL ends the list: what follows is kept as it is.
	hdr := append(defaultSpec().build()[:20], 0, 7, 3, 4)
	hdr[0] = 0x46
	dst := make([]byte, len(hdr))
	if err := zeroMutable(dst, hdr, false); err != nil || !bytes.Equal(dst[20:], hdr[20:]) {
		t.Fatalf("EOL: %x %v", dst[20:], err)
	}
	// Base header: TOS, flags+offset, TTL, checksum zeroed; the rest kept.
	if !bytes.Equal(dst[:20], []byte{0x46, 0, hdr[2], hdr[3], hdr[4], hdr[5], 0, 0, 0, hdr[9], 0, 0,
		192, 0, 2, 1, 192, 0, 2, 2}) {
		t.Fatalf("base header: %x", dst[:20])
	}
}

// TestConcurrent seals and opens from several goroutines with one Suite
// (run with -race).
func TestConcurrent(t *testing.T) {
	s := newSuite(t, Config{Integ: integ.HMACSHA256_128, Key: testKey(integ.HMACSHA256_128, 11), ESN: true})
	plain := defaultSpec().build()
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, headroom+len(plain))
			for i := range 200 {
				seq := uint64(g)<<32 | uint64(i+1)
				copy(buf[headroom:], plain)
				out, err := s.SealTransport(buf, headroom, len(plain), 1, seq)
				if err == nil {
					out, err = s.OpenTransport(out, seq)
				}
				if err == nil && !bytes.Equal(out, plain) {
					err = errors.New("round trip differs")
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// TestNoAllocs: Seal and Open allocate nothing per packet.
func TestNoAllocs(t *testing.T) {
	if testutil.RaceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	for _, alg := range allAlgs {
		s := newSuite(t, Config{Integ: alg, Key: testKey(alg, 12), ESN: true})
		sp := defaultSpec()
		sp.opts = optionsRARR
		sp.payload = payloadBytes(1400)
		plain := sp.build()
		buf := withHeadroom(plain)
		tbuf := withHeadroom(plain)
		if n := testing.AllocsPerRun(200, func() {
			copy(buf[headroom:], plain)
			out, err := s.SealTransport(buf, headroom, len(plain), 1, 5)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.OpenTransport(out, 5); err != nil {
				t.Fatal(err)
			}
			copy(tbuf[headroom:], plain)
			out, err = s.SealTunnel(tbuf, headroom, len(plain), 1, 5, &testOuter)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.OpenTunnel(out, 5); err != nil {
				t.Fatal(err)
			}
			out[len(out)-1] ^= 1
			if _, err := s.OpenTunnel(out, 5); err == nil {
				t.Fatal("corrupt packet opened")
			}
		}); n != 0 {
			t.Fatalf("%v: %v allocs per seal+open", alg, n)
		}
	}
}
