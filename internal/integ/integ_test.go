package integ

import (
	"bytes"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/testutil"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// The RFC 2202/4231 test cases use keys of lengths other than IPsec's, so
// they are checked through newUnchecked; the truncated outputs are the
// prefixes of the published full HMACs. RFC 4868 section 2.7.2 gives
// vectors with IPsec-length keys.
func TestKnownAnswers(t *testing.T) {
	tests := []struct {
		name string
		alg  Algorithm
		key  string
		data string
		full string // published full HMAC output
	}{
		// RFC 2202 test case 1 (MD5): key 0x0b x16, "Hi There".
		{"rfc2202-md5-1", HMACMD5_96, "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", hex.EncodeToString([]byte("Hi There")),
			"9294727a3638bb1c13f48ef8158bfc9d"},
		// RFC 2202 test case 1 (SHA1): key 0x0b x20.
		{"rfc2202-sha1-1", HMACSHA1_96, "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", hex.EncodeToString([]byte("Hi There")),
			"b617318655057264e28bc0b6fb378c8ef146be00"},
		// RFC 2202 test case 3 (SHA1): key 0xaa x20, data 0xdd x50.
		{"rfc2202-sha1-3", HMACSHA1_96, strings.Repeat("aa", 20), strings.Repeat("dd", 50),
			"125d7342b9ac11cd91a39af48aa17b4f63f175d3"},
		// RFC 4868 2.7.2.1 test case AUTH256-1: key 0x0b x32, "Hi There".
		{"rfc4868-auth256-1", HMACSHA256_128, strings.Repeat("0b", 32), hex.EncodeToString([]byte("Hi There")),
			"198a607eb44bfbc69903a0f1cf2bbdc5ba0aa3f3d9ae3c1c7a3b1696a0b68cf7"},
		// RFC 4868 2.7.2.2 AUTH384-1: key 0x0b x48.
		{"rfc4868-auth384-1", HMACSHA384_192, strings.Repeat("0b", 48), hex.EncodeToString([]byte("Hi There")),
			"b6a8d5636f5c6a7224f9977dcf7ee6c7fb6d0c48cbdee9737a959796489bddbc4c5df61d5b3297b4fb68dab9f1b582c2"},
		// RFC 4868 2.7.2.3 AUTH512-1: key 0x0b x64.
		{"rfc4868-auth512-1", HMACSHA512_256, strings.Repeat("0b", 64), hex.EncodeToString([]byte("Hi There")),
			"637edc6e01dce7e6742a99451aae82df23da3e92439e590e43e761b33e910fb8ac2878ebd5803f6f0b61dbce5e251ff8789a4722c1be65aea45fd464e89f8f5b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m, err := New(tc.alg, unhex(t, tc.key))
			if err != nil {
				t.Fatal(err)
			}
			want := unhex(t, tc.full)[:tc.alg.ICVLen()]
			icv := make([]byte, m.ICVLen())
			s := m.Begin()
			data := unhex(t, tc.data)
			// Split the data to check that Write accumulates.
			s.Write(data[:len(data)/2])
			s.Write(data[len(data)/2:])
			s.Sum(icv)
			if !bytes.Equal(icv, want) {
				t.Fatalf("icv %x, want %x", icv, want)
			}
			s = m.Begin()
			s.Write(data)
			if !s.Verify(want) {
				t.Fatal("Verify rejected the right ICV")
			}
			bad := append([]byte(nil), want...)
			bad[len(bad)-1] ^= 1
			s = m.Begin()
			s.Write(data)
			if s.Verify(bad) {
				t.Fatal("Verify accepted a flipped ICV")
			}
			s = m.Begin()
			s.Write(data)
			if s.Verify(want[:len(want)-1]) {
				t.Fatal("Verify accepted a short ICV")
			}
		})
	}
}

func TestKeyLengthChecked(t *testing.T) {
	for _, a := range []Algorithm{HMACMD5_96, HMACSHA1_96, HMACSHA256_128, HMACSHA384_192, HMACSHA512_256} {
		if _, err := New(a, make([]byte, a.KeyLen()-1)); err == nil {
			t.Errorf("%v accepted a short key", a)
		}
		if _, err := New(a, make([]byte, a.KeyLen())); err != nil {
			t.Errorf("%v: %v", a, err)
		}
	}
	if _, err := New(None, nil); err == nil {
		t.Error("None was keyed")
	}
	if _, err := New(Algorithm(99), nil); err == nil {
		t.Error("unknown algorithm was keyed")
	}
}

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Algorithm
	}{{"md5", HMACMD5_96}, {"sha1", HMACSHA1_96}, {"SHA256", HMACSHA256_128}, {"sha2_384", HMACSHA384_192},
		{"hmac-sha2-512-256", HMACSHA512_256}, {"none", None}} {
		got, err := Parse(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("Parse(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if tc.want != None {
			if back, err := Parse(got.String()); err != nil || back != got {
				t.Errorf("round trip of %v: %v, %v", got, back, err)
			}
		}
	}
	if _, err := Parse("sha3"); err == nil {
		t.Error("Parse accepted sha3")
	}
}

func TestZeroAllocs(t *testing.T) {
	if testutil.RaceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	m, _ := New(HMACSHA256_128, make([]byte, 32))
	data := make([]byte, 1400)
	icv := make([]byte, m.ICVLen())
	s := m.Begin()
	s.Write(data)
	s.Sum(icv) // warm the pool
	allocs := testing.AllocsPerRun(100, func() {
		s := m.Begin()
		s.Write(data)
		s.Sum(icv)
	})
	if allocs != 0 {
		t.Fatalf("%v allocations per ICV", allocs)
	}
}
