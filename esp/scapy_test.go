package esp

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/integ"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// Debian's python with python3-scapy (the python3 first on PATH may be
// another interpreter).
const python = "/usr/bin/python3"

var scapyCrypt = map[Cipher]string{
	CipherNull:             "NULL",
	Cipher3DESCBC:          "3DES",
	CipherAESCBC:           "AES-CBC",
	CipherAESCTR:           "AES-CTR",
	CipherAESGCM16:         "AES-GCM",
	CipherChaCha20Poly1305: "CHACHA20-POLY1305",
}

var scapyAuth = map[integ.Algorithm]string{
	integ.None:           "NULL",
	integ.HMACMD5_96:     "HMAC-MD5-96",
	integ.HMACSHA1_96:    "HMAC-SHA1-96",
	integ.HMACSHA256_128: "SHA2-256-128",
	integ.HMACSHA384_192: "SHA2-384-192",
	integ.HMACSHA512_256: "SHA2-512-256",
}

type pyAnswer struct {
	OK    bool   `json:"ok"`
	Err   string `json:"err"`
	Plain string `json:"plain"`
	Pkt   string `json:"pkt"`
}

func havePython() bool {
	if _, err := os.Stat(python); err != nil {
		return false
	}
	return exec.Command(python, "-c", "import scapy.layers.ipsec, cryptography").Run() == nil
}

// runScapy sends every request to one testdata/scapy_esp.py process and
// returns its answers in order.
func runScapy(t *testing.T, reqs []map[string]any) []pyAnswer {
	t.Helper()
	var in bytes.Buffer
	enc := json.NewEncoder(&in)
	for _, r := range reqs {
		if err := enc.Encode(r); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(python, "testdata/scapy_esp.py")
	cmd.Stdin = &in
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scapy_esp.py: %v\n%s", err, stderr.String())
	}
	var ans []pyAnswer
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var a pyAnswer
		if err := json.Unmarshal(sc.Bytes(), &a); err != nil {
			t.Fatalf("scapy answer %q: %v", sc.Text(), err)
		}
		ans = append(ans, a)
	}
	if len(ans) != len(reqs) {
		t.Fatalf("scapy answered %d of %d requests\n%s", len(ans), len(reqs), stderr.String())
	}
	return ans
}

type xcase struct {
	name  string
	req   map[string]any
	check func(t *testing.T, a pyAnswer)
}

// TestScapyCrossCheck: for every cipher (key lengths included) x integrity
// algorithm scapy 2.5 supports (all of gosec's: NULL, 3DES, AES-CBC,
// AES-CTR, AES-GCM-16, ChaCha20-Poly1305; HMAC-MD5/SHA1/SHA2), both modes,
// ESN off and on: packets gosec seals are decrypted and ICV-checked by
// scapy's SecurityAssociation, packets scapy seals are opened by gosec, and
// a tampered gosec packet is refused by scapy. scapy ignores the ESN high
// bits in the ESP HMAC, so for ESN with HMAC the script computes and checks
// that ICV with python's hmac module instead (scapy still does the
// cipher); ESN in the AEAD AAD is scapy's own.
func TestScapyCrossCheck(t *testing.T) {
	testutil.Need(t, havePython(), python+" with scapy and cryptography (Debian python3-scapy, python3-cryptography) is needed for the ESP cross-check")
	var cases []xcase
	for _, sp := range allSpecs() {
		for _, esn := range []bool{false, true} {
			for _, mode := range []string{"transport", "tunnel"} {
				cfg := sp.config(esn)
				s := mustSuite(t, cfg)
				seq := uint64(0x2a + int(sp.in))
				if esn {
					seq |= 0x7 << 32
				}
				plain := ipv4(50+int(sp.c)*7+int(sp.in), iphdr.ProtoUDP)
				base := map[string]any{
					"crypt": scapyCrypt[sp.c], "ckey": hex.EncodeToString(cfg.EncKey),
					"auth": scapyAuth[sp.in], "akey": hex.EncodeToString(cfg.AuthKey),
					"spi": 0x1001, "esn_en": esn, "esn": seq >> 32, "mode": mode,
				}
				with := func(kv ...any) map[string]any {
					m := map[string]any{}
					for k, v := range base {
						m[k] = v
					}
					for i := 0; i < len(kv); i += 2 {
						m[kv[i].(string)] = kv[i+1]
					}
					return m
				}
				name := fmt.Sprintf("%v/esn=%v/%s", sp, esn, mode)
				var sealed []byte
				var err error
				if mode == "transport" {
					sealed, err = s.SealTransport(buf(plain, s.Headroom(), s.MaxTrailer()), s.Headroom(), len(plain), 0x1001, seq)
				} else {
					h := s.Headroom() + 20
					sealed, err = s.SealTunnel(buf(plain, h, s.MaxTrailer()), h, len(plain), 0x1001, seq, &testOuter)
				}
				if err != nil {
					t.Fatal(err)
				}
				want := plain
				cases = append(cases, xcase{name + "/gosec->scapy", with("op", "open", "pkt", hex.EncodeToString(sealed)), func(t *testing.T, a pyAnswer) {
					if !a.OK {
						t.Fatalf("scapy rejected gosec's packet: %s", a.Err)
					}
					if got := unhexT(t, a.Plain); !bytes.Equal(got, want) {
						t.Fatalf("scapy opened\n%x\nwant\n%x", got, want)
					}
				}})
				bad := bytes.Clone(sealed)
				bad[len(bad)-1] ^= 1
				cases = append(cases, xcase{name + "/gosec->scapy/tampered", with("op", "open", "pkt", hex.EncodeToString(bad)), func(t *testing.T, a pyAnswer) {
					if a.OK || !strings.Contains(a.Err, "Integrity") && !strings.Contains(a.Err, "InvalidTag") {
						t.Fatalf("scapy accepted a tampered packet (%+v)", a)
					}
				}})
				// scapy seals, gosec opens. scapy's IV: random for CBC,
				// the sequence number for the counter modes (gosec reads
				// the IV from the wire either way).
				var iv any
				if s.ivLen == 8 {
					iv = hex.EncodeToString(binary.BigEndian.AppendUint64(nil, seq+100))
				}
				var tunHdr []byte
				if mode == "tunnel" {
					tunHdr = make([]byte, 20)
					iphdr.PutIPv4(tunHdr, &testOuter, 0, 20)
				}
				seqCopy, sCopy := seq, s
				cases = append(cases, xcase{name + "/scapy->gosec", with("op", "seal", "seq", uint32(seq), "iv", iv, "plain", hex.EncodeToString(plain), "tunnel_hdr", hex.EncodeToString(tunHdr)), func(t *testing.T, a pyAnswer) {
					if !a.OK {
						t.Fatalf("scapy seal: %s", a.Err)
					}
					pkt := unhexT(t, a.Pkt)
					var got []byte
					var err error
					if mode == "transport" {
						got, err = sCopy.OpenTransport(pkt, seqCopy)
					} else {
						got, err = sCopy.OpenTunnel(pkt, seqCopy)
					}
					if err != nil {
						t.Fatalf("gosec could not open scapy's packet %x: %v", unhexT(t, a.Pkt), err)
					}
					if !bytes.Equal(got, want) {
						t.Fatalf("gosec opened\n%x\nwant\n%x", got, want)
					}
					if sCopy.esn {
						// The same packet with other ESN high bits fails.
						open := sCopy.OpenTransport
						if mode == "tunnel" {
							open = sCopy.OpenTunnel
						}
						if _, err := open(unhexT(t, a.Pkt), seqCopy+1<<32); !errors.Is(err, ErrICV) {
							t.Fatalf("other ESN high bits: %v, want ErrICV", err)
						}
					}
				}})
			}
		}
	}
	reqs := make([]map[string]any, len(cases))
	for i, c := range cases {
		reqs[i] = c.req
	}
	ans := runScapy(t, reqs)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.check(t, ans[i]) })
	}
}

func unhexT(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
