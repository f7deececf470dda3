package ah

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
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

// scapyName maps gosec's algorithms to scapy's AUTH_ALGOS names. scapy
// supports all five (its AES-CMAC-96 is not an AH algorithm gosec offers).
var scapyName = map[integ.Algorithm]string{
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

func needScapy(t *testing.T) {
	t.Helper()
	_, err := os.Stat(python)
	ok := err == nil && exec.Command(python, "-c", "import scapy.layers.ipsec").Run() == nil
	testutil.Need(t, ok, python+" with scapy (Debian python3-scapy, python3-cryptography) is needed for the AH cross-check")
}

// runScapy sends every request to one testdata/scapy_ah.py process and
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
	cmd := exec.Command(python, "testdata/scapy_ah.py")
	cmd.Stdin = &in
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("scapy_ah.py: %v\n%s", err, stderr.String())
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

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A cross-check case: what gosec or scapy produced, and how to check it
// when the answer comes back.
type xcase struct {
	name  string
	req   map[string]any
	check func(t *testing.T, a pyAnswer)
}

// mutateRR rewrites the Record Route option of an IPv4 header the way a
// router does (an address recorded, the pointer advanced) and fixes the
// checksum. It reports whether the header had one.
func mutateRR(p []byte) bool {
	hl := int(p[0]&15) * 4
	for i := 20; i < hl; {
		switch p[i] {
		case 0:
			return false
		case 1:
			i++
			continue
		case 7:
			copy(p[i+3:], []byte{203, 0, 113, 9})
			p[i+2] = 8
			iphdr.SetChecksum(p[:hl])
			return true
		}
		i += int(p[i+1])
	}
	return false
}

// TestScapyCrossCheck: packets gosec seals are verified and unwrapped by
// scapy's SecurityAssociation(AH), and packets scapy seals are opened by
// gosec, for every integrity algorithm, both modes, ESN on and off, both
// alignments on gosec's side, with and without immutable (NOP, Router
// Alert) and mutable (Record Route) IPv4 options, also after a router-like
// rewrite of the Record Route option. Tampered packets must fail on both
// sides, which shows each side really checks.
func TestScapyCrossCheck(t *testing.T) {
	needScapy(t)
	optSets := []struct {
		name string
		opts []byte
	}{{"noopt", optionsNone}, {"nop+ra", optionsRA}, {"nop+ra+rr", optionsRARR}}
	var cases []xcase
	add := func(c xcase) { cases = append(cases, c) }
	for _, alg := range allAlgs {
		for _, esn := range []bool{false, true} {
			for _, mode := range []string{"transport", "tunnel"} {
				for _, oset := range optSets {
					for _, align8 := range []bool{false, true} {
						key := testKey(alg, 0x40)
						s := newSuite(t, Config{Integ: alg, Key: key, ESN: esn, Align8: align8})
						seq := uint64(0x2a)
						if esn {
							seq |= 0x5 << 32
						}
						sp := defaultSpec()
						sp.opts = oset.opts
						sp.payload = payloadBytes(100 + int(alg))
						plain := sp.build()
						base := map[string]any{
							"alg": scapyName[alg], "key": hex.EncodeToString(key), "spi": 0x1001,
							"esn_en": esn, "esn": seq >> 32, "mode": mode,
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
						name := fmt.Sprintf("%v/esn=%v/%s/%s/align8=%v", alg, esn, mode, oset.name, align8)
						// gosec seals, scapy verifies.
						var sealed []byte
						if mode == "transport" {
							sealed = sealT(t, s, plain, 0x1001, seq)
						} else {
							sealed = sealTun(t, s, plain, 0x1001, seq, &testOuter)
						}
						want := plain
						add(xcase{name + "/gosec->scapy", with("op", "verify", "pkt", hex.EncodeToString(sealed)), func(t *testing.T, a pyAnswer) {
							if !a.OK {
								t.Fatalf("scapy rejected gosec's packet: %s", a.Err)
							}
							if got := unhex(t, a.Plain); !bytes.Equal(got, want) {
								t.Fatalf("scapy unwrapped\n%x\nwant\n%x", got, want)
							}
						}})
						if mode == "transport" && mutateRR(sealed) {
							add(xcase{name + "/gosec->scapy/rr-rewritten", with("op", "verify", "pkt", hex.EncodeToString(sealed)), func(t *testing.T, a pyAnswer) {
								if !a.OK {
									t.Fatalf("scapy rejected gosec's packet after a Record Route rewrite: %s", a.Err)
								}
							}})
						}
						bad := bytes.Clone(sealed)
						bad[len(bad)-1] ^= 1
						add(xcase{name + "/gosec->scapy/tampered", with("op", "verify", "pkt", hex.EncodeToString(bad)), func(t *testing.T, a pyAnswer) {
							if a.OK || !strings.Contains(a.Err, "IPSecIntegrityError") {
								t.Fatalf("scapy accepted a tampered packet (%+v)", a)
							}
						}})
						if align8 {
							continue // scapy sends only the RFC's 4-octet alignment
						}
						// scapy seals, gosec opens.
						req := with("op", "seal", "seq", uint32(seq), "plain", hex.EncodeToString(plain))
						if mode == "tunnel" {
							// The outer header carries options too (scapy copies
							// this header, fixing protocol, length, checksum).
							o := ipSpec{tos: 0x48, ttl: 33, id: 0x4321, df: true, src: [4]byte{198, 51, 100, 7},
								dst: [4]byte{198, 51, 100, 8}, opts: oset.opts}
							hdr := o.build()
							req["tunnel_hdr"] = hex.EncodeToString(hdr)
						}
						opener := s
						add(xcase{name + "/scapy->gosec", req, func(t *testing.T, a pyAnswer) {
							if !a.OK {
								t.Fatalf("scapy seal: %s", a.Err)
							}
							pkt := unhex(t, a.Pkt)
							if spi, wseq, err := ParseHeader(pkt); err != nil || spi != 0x1001 || wseq != uint32(seq) {
								t.Fatalf("ParseHeader(scapy's packet) = %#x %d %v", spi, wseq, err)
							}
							open := func(p []byte) ([]byte, error) {
								if mode == "transport" {
									return opener.OpenTransport(p, seq)
								}
								return opener.OpenTunnel(p, seq)
							}
							got, err := open(bytes.Clone(pkt))
							if err != nil {
								t.Fatalf("gosec rejected scapy's packet: %v\n%x", err, pkt)
							}
							if !bytes.Equal(got, want) {
								t.Fatalf("gosec unwrapped\n%x\nwant\n%x", got, want)
							}
							rr := bytes.Clone(pkt)
							if mutateRR(rr) {
								if _, err := open(rr); err != nil {
									t.Fatalf("Record Route rewrite broke the ICV: %v", err)
								}
							}
							for _, i := range []int{5, 13, 19, len(pkt) - 1} { // ID, src, dst, payload
								bad := bytes.Clone(pkt)
								bad[i] ^= 1
								iphdr.SetChecksum(bad[:int(bad[0]&15)*4])
								if _, err := open(bad); err == nil {
									t.Fatalf("gosec accepted scapy's packet with octet %d changed", i)
								}
							}
						}})
					}
				}
			}
		}
	}
	// The Linux form of HMAC-SHA2-256-128 AH (no align4): 32 octets,
	// payload length 6, zero padding, built by python's hmac module over
	// a header zeroed by hand. gosec opens it with a default suite, sends
	// exactly the same bytes with Align8, and scapy verifies it too.
	for _, esnHi := range []uint64{0} {
		key := testKey(integ.HMACSHA256_128, 0x77)
		s4 := newSuite(t, Config{Integ: integ.HMACSHA256_128, Key: key})
		s8 := newSuite(t, Config{Integ: integ.HMACSHA256_128, Key: key, Align8: true})
		plain := defaultSpec().build()
		seq := esnHi<<32 | 0x99
		mine := sealT(t, s8, plain, 0x2002, seq)
		lreq := map[string]any{"op": "linux8", "key": hex.EncodeToString(key), "spi": 0x2002, "seq": uint32(seq), "plain": hex.EncodeToString(plain)}
		add(xcase{"linux8/hmac", lreq, func(t *testing.T, a pyAnswer) {
			if !a.OK {
				t.Fatalf("linux8: %s", a.Err)
			}
			pkt := unhex(t, a.Pkt)
			if pkt[21] != 6 || len(pkt) != len(plain)+32 || !bytes.Equal(pkt[20+28:20+32], []byte{0, 0, 0, 0}) {
				t.Fatalf("not the Linux layout: %x", pkt[:52])
			}
			if !bytes.Equal(mine, pkt) {
				t.Fatalf("gosec Align8 sealed\n%x\npython built\n%x", mine, pkt)
			}
			got, err := s4.OpenTransport(bytes.Clone(pkt), seq)
			if err != nil {
				t.Fatalf("gosec rejected Linux-form AH: %v", err)
			}
			if !bytes.Equal(got, plain) {
				t.Fatalf("opened %x", got)
			}
			binary.BigEndian.PutUint32(pkt[20+28:], 1) // the padding is covered
			if _, err := s4.OpenTransport(pkt, seq); err == nil {
				t.Fatal("changed padding accepted")
			}
		}})
		add(xcase{"linux8/scapy-verifies-gosec-align8", map[string]any{"op": "verify", "alg": "SHA2-256-128",
			"key": hex.EncodeToString(key), "spi": 0x2002, "mode": "transport", "pkt": hex.EncodeToString(mine)},
			func(t *testing.T, a pyAnswer) {
				if !a.OK || !bytes.Equal(unhex(t, a.Plain), plain) {
					t.Fatalf("scapy: %+v", a)
				}
			}})
	}
	reqs := make([]map[string]any, len(cases))
	for i, c := range cases {
		reqs[i] = c.req
	}
	answers := runScapy(t, reqs)
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) { c.check(t, answers[i]) })
	}
}
