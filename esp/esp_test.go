package esp

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
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

var allIntegs = []integ.Algorithm{integ.HMACMD5_96, integ.HMACSHA1_96, integ.HMACSHA256_128, integ.HMACSHA384_192, integ.HMACSHA512_256}

// encKeyLens lists the EncKey lengths each cipher accepts.
var encKeyLens = map[Cipher][]int{
	CipherNull:             {0},
	Cipher3DESCBC:          {24},
	CipherAESCBC:           {16, 24, 32},
	CipherAESCTR:           {20, 28, 36},
	CipherAESGCM16:         {20, 28, 36},
	CipherChaCha20Poly1305: {36},
}

func keyOf(n int, seed byte) []byte {
	k := make([]byte, n)
	for i := range k {
		k[i] = seed + byte(i)*7
	}
	return k
}

type suiteSpec struct {
	c      Cipher
	keyLen int
	in     integ.Algorithm
}

func (sp suiteSpec) String() string { return fmt.Sprintf("%v-%d/%v", sp.c, sp.keyLen, sp.in) }

func (sp suiteSpec) config(esn bool) Config {
	cfg := Config{Cipher: sp.c, EncKey: keyOf(sp.keyLen, 0x30), Integ: sp.in, ESN: esn}
	if sp.in != integ.None {
		cfg.AuthKey = keyOf(sp.in.KeyLen(), 0x90)
	}
	return cfg
}

// allSpecs: every cipher and key length with every integrity algorithm
// (AEAD ciphers with none).
func allSpecs() []suiteSpec {
	var out []suiteSpec
	for c := CipherNull; c <= CipherChaCha20Poly1305; c++ {
		for _, kl := range encKeyLens[c] {
			if c.AEAD() {
				out = append(out, suiteSpec{c, kl, integ.None})
				continue
			}
			for _, in := range allIntegs {
				out = append(out, suiteSpec{c, kl, in})
			}
		}
	}
	return out
}

func mustSuite(t testing.TB, cfg Config) *Suite {
	t.Helper()
	s, err := NewSuite(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestNewSuiteValidation(t *testing.T) {
	ok := allSpecs()
	for _, sp := range ok {
		if _, err := NewSuite(sp.config(false)); err != nil {
			t.Errorf("%v: %v", sp, err)
		}
	}
	bad := []struct {
		name string
		cfg  Config
	}{
		{"null-without-integ", Config{Cipher: CipherNull}},
		{"cbc-without-integ", Config{Cipher: CipherAESCBC, EncKey: keyOf(16, 1)}},
		{"ctr-without-integ", Config{Cipher: CipherAESCTR, EncKey: keyOf(20, 1)}},
		{"3des-without-integ", Config{Cipher: Cipher3DESCBC, EncKey: keyOf(24, 1)}},
		{"gcm-plus-integ", Config{Cipher: CipherAESGCM16, EncKey: keyOf(20, 1), Integ: integ.HMACSHA1_96, AuthKey: keyOf(20, 1)}},
		{"chacha-plus-integ", Config{Cipher: CipherChaCha20Poly1305, EncKey: keyOf(36, 1), Integ: integ.HMACSHA256_128, AuthKey: keyOf(32, 1)}},
		{"aes-cbc-15", Config{Cipher: CipherAESCBC, EncKey: keyOf(15, 1), Integ: integ.HMACSHA1_96, AuthKey: keyOf(20, 1)}},
		{"aes-cbc-20", Config{Cipher: CipherAESCBC, EncKey: keyOf(20, 1), Integ: integ.HMACSHA1_96, AuthKey: keyOf(20, 1)}},
		{"aes-ctr-no-nonce", Config{Cipher: CipherAESCTR, EncKey: keyOf(16, 1), Integ: integ.HMACSHA1_96, AuthKey: keyOf(20, 1)}},
		{"gcm-no-salt", Config{Cipher: CipherAESGCM16, EncKey: keyOf(32, 1)}},
		{"chacha-no-salt", Config{Cipher: CipherChaCha20Poly1305, EncKey: keyOf(32, 1)}},
		{"3des-16", Config{Cipher: Cipher3DESCBC, EncKey: keyOf(16, 1), Integ: integ.HMACSHA1_96, AuthKey: keyOf(20, 1)}},
		{"null-with-key", Config{Cipher: CipherNull, EncKey: keyOf(16, 1), Integ: integ.HMACSHA1_96, AuthKey: keyOf(20, 1)}},
		{"bad-auth-key", Config{Cipher: CipherAESCBC, EncKey: keyOf(16, 1), Integ: integ.HMACSHA1_96, AuthKey: keyOf(16, 1)}},
		{"unknown-cipher", Config{Cipher: 99, Integ: integ.HMACSHA1_96, AuthKey: keyOf(20, 1)}},
	}
	for _, c := range bad {
		if _, err := NewSuite(c.cfg); err == nil {
			t.Errorf("%s: accepted", c.name)
		}
	}
}

func TestCipherString(t *testing.T) {
	for c, want := range map[Cipher]string{CipherNull: "null", CipherAESGCM16: "aes-gcm-16", CipherChaCha20Poly1305: "chacha20-poly1305", 77: "cipher(77)"} {
		if got := c.String(); got != want {
			t.Errorf("%d: %q want %q", c, got, want)
		}
	}
}

// seal puts payload in a fresh buffer with exactly the room Seal needs and
// seals it.
func seal(t testing.TB, s *Suite, payload []byte, spi uint32, seq uint64, nh uint8) []byte {
	t.Helper()
	b := buf(payload, s.Headroom(), s.MaxTrailer())
	pkt, err := s.Seal(b, s.Headroom(), len(payload), spi, seq, nh)
	if err != nil {
		t.Fatal(err)
	}
	return pkt
}

// TestRoundTrip: every cipher x key length x integrity, ESN off and on,
// payload lengths 0..70 and 1400: Seal then Open returns the payload; the
// packet has the length Overhead predicts, the right alignment and header,
// and (for real ciphers) no plaintext in the clear.
func TestRoundTrip(t *testing.T) {
	lens := []int{1400}
	for i := 0; i <= 70; i++ {
		lens = append(lens, i)
	}
	for _, sp := range allSpecs() {
		for _, esn := range []bool{false, true} {
			t.Run(fmt.Sprintf("%v/esn=%v", sp, esn), func(t *testing.T) {
				s := mustSuite(t, sp.config(esn))
				for _, n := range lens {
					payload := keyOf(n, byte(n))
					seq := uint64(0x1_0000_0000)*uint64(esn2(esn)) + uint64(n) + 1
					pkt := seal(t, s, payload, 0xdeadbeef, seq, 6)
					if len(pkt) != n+s.Overhead(n) {
						t.Fatalf("n=%d: len %d, Overhead says %d", n, len(pkt), n+s.Overhead(n))
					}
					if (len(pkt)-HeaderLen-s.ivLen-s.icvLen)%s.align != 0 || len(pkt)%4 != 0 {
						t.Fatalf("n=%d: misaligned %d", n, len(pkt))
					}
					spi, wseq, err := ParseHeader(pkt)
					if err != nil || spi != 0xdeadbeef || wseq != uint32(seq) {
						t.Fatalf("header %x %x %v", spi, wseq, err)
					}
					if sp.c != CipherNull && n >= 16 && bytes.Contains(pkt, payload[:16]) {
						t.Fatalf("n=%d: plaintext visible", n)
					}
					got, nh, err := s.Open(pkt, seq)
					if err != nil {
						t.Fatalf("n=%d: Open: %v", n, err)
					}
					if nh != 6 || !bytes.Equal(got, payload) {
						t.Fatalf("n=%d: got nh %d %x", n, nh, got)
					}
				}
			})
		}
	}
}

func esn2(b bool) int {
	if b {
		return 5
	}
	return 0
}

var testOuter = iphdr.Outer{Src: [4]byte{192, 0, 2, 1}, Dst: [4]byte{198, 51, 100, 2}, TTL: 64, ID: 7}

// ipv4 builds an IPv4 packet with a UDP-ish payload of n octets.
func ipv4(n int, proto uint8) []byte {
	p := make([]byte, 20+n)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(len(p)))
	binary.BigEndian.PutUint16(p[4:], 0x1234)
	p[8] = 64
	p[9] = proto
	copy(p[12:], []byte{10, 0, 0, 1, 10, 0, 0, 2})
	iphdr.SetChecksum(p[:20])
	for i := 20; i < len(p); i++ {
		p[i] = byte(i)
	}
	return p
}

func TestModesRoundTrip(t *testing.T) {
	for _, sp := range allSpecs() {
		for _, esn := range []bool{false, true} {
			s := mustSuite(t, sp.config(esn))
			for _, n := range []int{0, 1, 37, 1000} {
				name := fmt.Sprintf("%v/esn=%v/n=%d", sp, esn, n)
				seq := uint64(n+3) | uint64(esn2(esn))<<32
				plain := ipv4(n, iphdr.ProtoUDP)
				// transport
				b := buf(plain, s.Headroom(), s.MaxTrailer())
				out, err := s.SealTransport(b, s.Headroom(), len(plain), 0x100, seq)
				if err != nil {
					t.Fatalf("%s: SealTransport: %v", name, err)
				}
				hl, total, err := iphdr.HeaderLen(out)
				if err != nil || total != len(out) || out[9] != iphdr.ProtoESP || iphdr.Checksum(out[:hl]) != 0 {
					t.Fatalf("%s: transport header %x (%v)", name, out[:20], err)
				}
				ip, err := s.OpenTransport(out, seq)
				if err != nil || !bytes.Equal(ip, plain) {
					t.Fatalf("%s: OpenTransport %v\n%x\n%x", name, err, ip, plain)
				}
				// tunnel
				h := s.Headroom() + 20
				b = buf(plain, h, s.MaxTrailer())
				out, err = s.SealTunnel(b, h, len(plain), 0x100, seq, &testOuter)
				if err != nil {
					t.Fatalf("%s: SealTunnel: %v", name, err)
				}
				if _, total, err := iphdr.HeaderLen(out); err != nil || total != len(out) || out[9] != iphdr.ProtoESP {
					t.Fatalf("%s: tunnel header %x (%v)", name, out[:20], err)
				}
				inner, err := s.OpenTunnel(out, seq)
				if err != nil || !bytes.Equal(inner, plain) {
					t.Fatalf("%s: OpenTunnel %v", name, err)
				}
			}
		}
	}
}

func TestSealBufferErrors(t *testing.T) {
	s := mustSuite(t, suiteSpec{CipherAESCBC, 16, integ.HMACSHA256_128}.config(false))
	p := make([]byte, 100)
	cases := []struct {
		name   string
		b      []byte
		off, n int
		want   error
	}{
		{"no-headroom", buf(p, s.Headroom()-1, 64), s.Headroom() - 1, 100, ErrHeadroom},
		{"no-tailroom", buf(p, s.Headroom(), 10), s.Headroom(), 100, ErrTailroom},
		{"bounds", buf(p, s.Headroom(), 64), s.Headroom(), 200, ErrBufferBounds},
		{"negative", buf(p, s.Headroom(), 64), -1, 10, ErrBufferBounds},
	}
	for _, c := range cases {
		if _, err := s.Seal(c.b, c.off, c.n, 1, 1, 4); !errors.Is(err, c.want) {
			t.Errorf("%s: %v want %v", c.name, err, c.want)
		}
	}
	// Mode helpers: not IP, fragments, too little headroom.
	notIP := make([]byte, 200)
	if _, err := s.SealTunnel(notIP, 100, 50, 1, 1, &testOuter); !errors.Is(err, ErrInnerPacket) {
		t.Errorf("tunnel non-IP: %v", err)
	}
	frag := ipv4(30, 17)
	frag[6] = 0x20 // MF
	iphdr.SetChecksum(frag[:20])
	if _, err := s.SealTransport(buf(frag, 64, 64), 64, len(frag), 1, 1); !errors.Is(err, ErrFragment) {
		t.Errorf("fragment: %v", err)
	}
	ip := ipv4(30, 17)
	if _, err := s.SealTunnel(buf(ip, s.Headroom(), 64), s.Headroom(), len(ip), 1, 1, &testOuter); !errors.Is(err, ErrHeadroom) {
		t.Errorf("tunnel headroom: %v", err)
	}
}

// One suite of each cipher, for the negative and allocation tests.
func oneOfEach() []suiteSpec {
	return []suiteSpec{
		{CipherNull, 0, integ.HMACSHA256_128},
		{Cipher3DESCBC, 24, integ.HMACSHA1_96},
		{CipherAESCBC, 16, integ.HMACSHA1_96},
		{CipherAESCBC, 32, integ.HMACSHA256_128},
		{CipherAESCTR, 20, integ.HMACSHA256_128},
		{CipherAESGCM16, 20, integ.None},
		{CipherAESGCM16, 36, integ.None},
		{CipherChaCha20Poly1305, 36, integ.None},
	}
}

// TestTamper: flipping any single bit of a sealed packet (header, IV,
// ciphertext, ICV) makes Open fail with ErrICV or ErrSeq (the wire's
// sequence number field) and never return data.
func TestTamper(t *testing.T) {
	for _, sp := range oneOfEach() {
		for _, esn := range []bool{false, true} {
			s := mustSuite(t, sp.config(esn))
			seq := uint64(77) | uint64(esn2(esn))<<32
			pkt := seal(t, s, keyOf(50, 3), 9, seq, 4)
			for i := 0; i < len(pkt)*8; i++ {
				bad := bytes.Clone(pkt)
				bad[i/8] ^= 1 << (i % 8)
				_, _, err := s.Open(bad, seq)
				want := error(ErrICV)
				if i/8 >= 4 && i/8 < 8 {
					want = ErrSeq
				}
				if !errors.Is(err, want) {
					t.Fatalf("%v esn=%v bit %d: %v, want %v", sp, esn, i, err, want)
				}
				if drop.ReasonOf(err) == drop.ICV && err != ErrICV {
					t.Fatal("wrapped error")
				}
			}
		}
	}
}

// TestTruncated: every proper prefix of a packet fails cleanly.
func TestTruncated(t *testing.T) {
	for _, sp := range oneOfEach() {
		s := mustSuite(t, sp.config(false))
		pkt := seal(t, s, keyOf(40, 1), 9, 5, 4)
		for n := 0; n < len(pkt); n++ {
			p, _, err := s.Open(bytes.Clone(pkt[:n]), 5)
			if err == nil || p != nil {
				t.Fatalf("%v: prefix %d accepted", sp, n)
			}
			if r := drop.ReasonOf(err); r != drop.Malformed && r != drop.ICV {
				t.Fatalf("%v: prefix %d: %v", sp, n, err)
			}
		}
		ip := ipv4(40, 17)
		out, err := s.SealTransport(buf(ip, s.Headroom(), s.MaxTrailer()), s.Headroom(), len(ip), 9, 5)
		if err != nil {
			t.Fatal(err)
		}
		for n := 0; n < len(out); n++ {
			cut := bytes.Clone(out[:n])
			if len(cut) >= 4 {
				binary.BigEndian.PutUint16(cut[2:], uint16(n)) // claim the cut length
			}
			if _, err := s.OpenTransport(cut, 5); err == nil {
				t.Fatalf("%v: transport prefix %d accepted", sp, n)
			}
		}
	}
}

// authentic builds a NULL-cipher HMAC-SHA256 ESP packet with the given
// plaintext body (payload, padding, pad length, next header), its ICV
// computed with crypto/hmac: authentic but possibly malformed inside.
func authentic(akey []byte, spi, seq uint32, body []byte) []byte {
	pkt := binary.BigEndian.AppendUint32(nil, spi)
	pkt = binary.BigEndian.AppendUint32(pkt, seq)
	pkt = append(pkt, body...)
	m := hmac.New(sha256.New, akey)
	m.Write(pkt)
	return append(pkt, m.Sum(nil)[:16]...)
}

// TestPaddingAndDummy: authentic packets with bad padding give ErrPadding,
// with next header 59 ErrDummy (both drop reasons the caller counts after
// updating its replay window); good padding of every length is accepted.
func TestPaddingAndDummy(t *testing.T) {
	akey := keyOf(32, 9)
	s := mustSuite(t, Config{Cipher: CipherNull, Integ: integ.HMACSHA256_128, AuthKey: akey})
	cases := []struct {
		name string
		body string
		want error
		n    int
	}{
		{"pad0", "aabbccdd 0004", nil, 4},
		{"pad2", "aabb 0102 0204", nil, 2},
		{"pad6", "aabbccdd 010203040506 0604", nil, 4},
		{"pad255", "", nil, 1},
		{"non-monotonic", "aabbccdd 0103 0204", ErrPadding, 0},
		{"zero-pad-bytes", "aabbccdd 0000 0204", ErrPadding, 0},
		{"pad-too-long", "aabb 0106", ErrPadding, 0},
		{"pad-len-eats-all", "0102 0204", nil, 0},
		{"dummy", "aabbccdd 003b", ErrDummy, 0},
		{"dummy-padded", "aabb 0102 023b", ErrDummy, 0},
	}
	for _, c := range cases {
		body := hx(c.body)
		if c.name == "pad255" {
			body = []byte{0xee}
			for i := 1; i <= 255; i++ {
				body = append(body, byte(i))
			}
			body = append(body, 255, 41)
		}
		pkt := authentic(akey, 1, 2, body)
		got, nh, err := s.Open(pkt, 2)
		if !errors.Is(err, c.want) {
			t.Errorf("%s: %v want %v", c.name, err, c.want)
			continue
		}
		if err == nil && (len(got) != c.n || nh != body[len(body)-1]) {
			t.Errorf("%s: payload %x nh %d", c.name, got, nh)
		}
	}
	// Dummy packets sealed by gosec itself.
	for _, sp := range oneOfEach() {
		s := mustSuite(t, sp.config(true))
		pkt := seal(t, s, keyOf(20, 1), 1, 1<<32|3, iphdr.ProtoNoNext)
		if _, _, err := s.Open(pkt, 1<<32|3); !errors.Is(err, ErrDummy) {
			t.Errorf("%v: dummy: %v", sp, err)
		}
	}
}

func TestOpenModeErrors(t *testing.T) {
	s := mustSuite(t, suiteSpec{CipherAESGCM16, 20, integ.None}.config(false))
	// A transport payload (next header UDP) presented to OpenTunnel.
	ip := ipv4(30, 17)
	out, err := s.SealTransport(buf(ip, s.Headroom(), s.MaxTrailer()), s.Headroom(), len(ip), 9, 5)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenTunnel(bytes.Clone(out), 5); !errors.Is(err, ErrInnerProto) {
		t.Errorf("transport via OpenTunnel: %v", err)
	}
	// Next header 4 over an IPv6-looking inner packet.
	inner := ipv4(30, 17)
	inner[0] = 0x65
	pay := buf(inner, s.Headroom()+20, s.MaxTrailer())
	esp, err := s.Seal(pay, s.Headroom()+20, len(inner), 9, 5, iphdr.ProtoIPIP)
	if err != nil {
		t.Fatal(err)
	}
	whole := pay[:s.Headroom()+20+len(esp)-s.Headroom()]
	whole = whole[:20+len(esp)]
	iphdr.PutIPv4(whole[:20], &testOuter, iphdr.ProtoESP, len(whole))
	if _, err := s.OpenTunnel(whole, 5); !errors.Is(err, ErrInnerPacket) {
		t.Errorf("version mismatch: %v", err)
	}
	// Not ESP.
	udp := ipv4(40, 17)
	if _, err := s.OpenTransport(udp, 5); !errors.Is(err, ErrNotESP) {
		t.Errorf("not ESP: %v", err)
	}
}

// TestConcurrent: many goroutines sealing and opening on one Suite (run
// with -race).
func TestConcurrent(t *testing.T) {
	for _, sp := range oneOfEach() {
		s := mustSuite(t, sp.config(true))
		var wg sync.WaitGroup
		for g := 0; g < 8; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				for i := 0; i < 200; i++ {
					seq := uint64(g)<<32 | uint64(i)
					p := keyOf(100+i, byte(g))
					b := buf(p, s.Headroom(), s.MaxTrailer())
					pkt, err := s.Seal(b, s.Headroom(), len(p), 1, seq, 17)
					if err != nil {
						t.Error(err)
						return
					}
					got, _, err := s.Open(pkt, seq)
					if err != nil || !bytes.Equal(got, p) {
						t.Errorf("%v: %v", sp, err)
						return
					}
				}
			}(g)
		}
		wg.Wait()
	}
}

// TestCBCIVsDiffer: default CBC IVs differ packet to packet (distinct
// sequence numbers), and two suites with the same keys give different IVs
// for the same sequence number (the IV key is random per suite).
func TestCBCIVsDiffer(t *testing.T) {
	for _, sp := range []suiteSpec{{CipherAESCBC, 16, integ.HMACSHA1_96}, {Cipher3DESCBC, 24, integ.HMACSHA1_96}} {
		s := mustSuite(t, sp.config(false))
		s2 := mustSuite(t, sp.config(false))
		seen := map[string]bool{}
		for i := 0; i < 1000; i++ {
			pkt := seal(t, s, []byte("same"), 1, uint64(i), 4)
			iv := string(pkt[8 : 8+s.ivLen])
			if seen[iv] {
				t.Fatalf("%v: repeated IV", sp)
			}
			seen[iv] = true
			other := seal(t, s2, []byte("same"), 1, uint64(i), 4)
			if string(other[8:8+s.ivLen]) == iv {
				t.Fatalf("%v: two suites made the same IV", sp)
			}
		}
	}
}

// TestAllocs: Seal and Open allocate nothing, for each cipher.
func TestAllocs(t *testing.T) {
	if testutil.RaceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
	for _, sp := range oneOfEach() {
		for _, esn := range []bool{false, true} {
			s := mustSuite(t, sp.config(esn))
			p := keyOf(1400, 1)
			b := buf(p, s.Headroom(), s.MaxTrailer())
			off := s.Headroom()
			var pkt []byte
			seal := testing.AllocsPerRun(100, func() {
				copy(b[off:], p)
				var err error
				pkt, err = s.Seal(b, off, len(p), 1, 5, 17)
				if err != nil {
					t.Fatal(err)
				}
			})
			saved := bytes.Clone(pkt)
			open := testing.AllocsPerRun(100, func() {
				copy(pkt, saved)
				if _, _, err := s.Open(pkt, 5); err != nil {
					t.Fatal(err)
				}
			})
			bad := testing.AllocsPerRun(100, func() {
				copy(pkt, saved)
				pkt[len(pkt)-1] ^= 1
				if _, _, err := s.Open(pkt, 5); err != ErrICV {
					t.Fatal(err)
				}
			})
			if seal != 0 || open != 0 || bad != 0 {
				t.Errorf("%v esn=%v: allocs seal %v open %v bad %v", sp, esn, seal, open, bad)
			}
		}
	}
}
