package ikecrypto

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math/big"
	"os/exec"
	"strings"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/testutil"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestNISTKDF: the IKEv1 PSK / SHA-1 case of NIST's ACVP
// kdf-components-IKEv1 tests (listed in VECTORS.md).
func TestNISTKDF(t *testing.T) {
	k := DerivePSK(HashSHA1, unhex(t, "75"), unhex(t, "b9a2d0e922dc66dd"), unhex(t, "2130166863b5ddef"),
		unhex(t, "739003ba2c11c982946c65e26acf661fbf8ebb78011a9fead79efa12fe3e71cc"),
		unhex(t, "83d374c30b3b5082"), unhex(t, "5afc0da06c728029"), 16)
	for name, c := range map[string][2][]byte{
		"SKEYID":   {k.SKEYID, unhex(t, "62b04d112877e442fc3282fc37c076997718a0b9")},
		"SKEYID_d": {k.D, unhex(t, "369e5aad1bdb5faf6a3d929d500cdc236710a9ab")},
		"SKEYID_a": {k.A, unhex(t, "588e957d8d790d093b3a39f121473473af78e9bb")},
		"SKEYID_e": {k.E, unhex(t, "cd74b0c048219db81384d3fda8f6cda51e398a2b")},
	} {
		if !bytes.Equal(c[0], c[1]) {
			t.Errorf("%s = %x, want %x", name, c[0], c[1])
		}
	}
}

// piFloor returns floor(2^bits * pi), computed with Machin's formula in
// integer arithmetic (guard bits absorb the truncation).
func piFloor(bits uint) *big.Int {
	guard := uint(64)
	one := new(big.Int).Lsh(big.NewInt(1), bits+guard)
	arctanInv := func(x int64) *big.Int {
		// arctan(1/x) * one
		sum := new(big.Int)
		xx := big.NewInt(x * x)
		term := new(big.Int).Div(one, big.NewInt(x))
		for n := int64(0); term.Sign() != 0; n++ {
			t := new(big.Int).Div(term, big.NewInt(2*n+1))
			if n%2 == 0 {
				sum.Add(sum, t)
			} else {
				sum.Sub(sum, t)
			}
			term.Div(term, xx)
		}
		return sum
	}
	pi := new(big.Int).Mul(big.NewInt(16), arctanInv(5))
	pi.Sub(pi, new(big.Int).Mul(big.NewInt(4), arctanInv(239)))
	return pi.Rsh(pi, guard)
}

// TestMODPPrimes recomputes every prime from the RFCs' definition
// p = 2^n - 2^(n-64) - 1 + 2^64 * ([2^(n-130) pi] + k).
func TestMODPPrimes(t *testing.T) {
	ks := map[Group]struct {
		n uint
		k int64
	}{
		2: {1024, 129093}, 5: {1536, 741804}, 14: {2048, 124476}, 15: {3072, 1690314},
		16: {4096, 240904}, 17: {6144, 929484}, 18: {8192, 4743158},
	}
	for g, c := range ks {
		p := new(big.Int).Lsh(big.NewInt(1), c.n)
		p.Sub(p, new(big.Int).Lsh(big.NewInt(1), c.n-64))
		p.Sub(p, big.NewInt(1))
		m := new(big.Int).Add(piFloor(c.n-130), big.NewInt(c.k))
		p.Add(p, m.Lsh(m, 64))
		if p.Cmp(g.prime()) != 0 {
			t.Errorf("group %d (%s): table prime differs from the RFC formula", g, g)
		}
		if !p.ProbablyPrime(4) {
			t.Errorf("group %d: not prime", g)
		}
	}
}

// python computes the other side of a DH exchange with an independent
// implementation: Python's pow() for MODP, pyca/cryptography for ECP.
const pyDH = `
import sys
from cryptography.hazmat.primitives.asymmetric import ec
g, peer, p = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]
if g.startswith("ecp"):
    curve = {"ecp256": ec.SECP256R1(), "ecp384": ec.SECP384R1(), "ecp521": ec.SECP521R1()}[g]
    k = ec.generate_private_key(curve)
    pub = ec.EllipticCurvePublicKey.from_encoded_point(curve, b"\x04" + peer)
    shared = k.exchange(ec.ECDH(), pub)
    n = k.public_key().public_numbers()
    size = len(peer) // 2
    print((n.x.to_bytes(size, "big") + n.y.to_bytes(size, "big")).hex(), shared.hex())
else:
    import secrets
    p = int(p, 16); size = (p.bit_length() + 7) // 8
    x = secrets.randbelow(p - 3) + 2
    print(pow(2, x, p).to_bytes(size, "big").hex(), pow(int.from_bytes(peer, "big"), x, p).to_bytes(size, "big").hex())
`

func TestDHAgainstPython(t *testing.T) {
	_, err := exec.LookPath("/usr/bin/python3")
	testutil.Need(t, err == nil && exec.Command("/usr/bin/python3", "-c", "import cryptography").Run() == nil,
		"Debian's python3-cryptography is not installed (scripts/deps.sh installs it)")
	for _, g := range []Group{2, 5, 14, 15, 16, 17, 18, 19, 20, 21} {
		t.Run(g.String(), func(t *testing.T) {
			d, err := GenerateDH(g, rand.Reader)
			if err != nil {
				t.Fatal(err)
			}
			if len(d.Public()) != g.PublicLen() {
				t.Fatalf("public value of %d octets, want %d", len(d.Public()), g.PublicLen())
			}
			p := "0"
			if g.prime() != nil {
				p = g.prime().Text(16)
			}
			out, err := exec.Command("/usr/bin/python3", "-c", pyDH, g.String(), hex.EncodeToString(d.Public()), p).CombinedOutput()
			if err != nil {
				t.Fatalf("python: %v\n%s", err, out)
			}
			f := strings.Fields(string(out))
			theirPub, theirShared := unhex(t, f[0]), unhex(t, f[1])
			shared, err := d.SharedSecret(theirPub)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(shared, theirShared) {
				t.Fatalf("shared secret differs from python's:\n%x\n%x", shared, theirShared)
			}
		})
	}
}

func TestDHValidation(t *testing.T) {
	d, _ := GenerateDH(14, rand.Reader)
	p := Group(14).prime()
	pad := func(v *big.Int) []byte { return v.FillBytes(make([]byte, 256)) }
	pm1 := new(big.Int).Sub(p, big.NewInt(1))
	for name, peer := range map[string][]byte{
		"short": make([]byte, 255), "long": make([]byte, 257), "zero": pad(big.NewInt(0)), "one": pad(big.NewInt(1)),
		"p-1": pad(pm1), "p": pad(p),
	} {
		if _, err := d.SharedSecret(peer); err == nil {
			t.Errorf("MODP peer value %s accepted", name)
		}
	}
	e, _ := GenerateDH(19, rand.Reader)
	bad := e.Public()
	bad[63] ^= 1 // off the curve
	if _, err := e.SharedSecret(bad); err == nil {
		t.Error("ECP point off the curve accepted")
	}
	if _, err := e.SharedSecret(make([]byte, 64)); err == nil {
		t.Error("ECP zero point accepted")
	}
	if _, err := GenerateDH(1, rand.Reader); err == nil {
		t.Error("group 1 (modp768) accepted")
	}
}

// TestExpandKey: RFC 2409 Appendix B for AES-256 with SHA-1, against
// Python's hmac.
func TestExpandKey(t *testing.T) {
	e := unhex(t, "6f2b50ed3b836c660ac8e902ec6f9d2695675f07")
	got := ExpandKey(HashSHA1, e, 32)
	out, err := exec.Command("/usr/bin/python3", "-c", `
import hmac, hashlib, sys
e = bytes.fromhex(sys.argv[1])
k1 = hmac.new(e, b"\x00", hashlib.sha1).digest()
k2 = hmac.new(e, k1, hashlib.sha1).digest()
print((k1 + k2)[:32].hex())`, hex.EncodeToString(e)).Output()
	testutil.Need(t, err == nil, fmt.Sprintf("python3: %v", err))
	if want := unhex(t, strings.TrimSpace(string(out))); !bytes.Equal(got, want) {
		t.Fatalf("expanded key %x, python %x", got, want)
	}
	if !bytes.Equal(ExpandKey(HashSHA1, e, 16), e[:16]) {
		t.Fatal("a long enough SKEYID_e is not simply truncated")
	}
}

func TestPadAndCBC(t *testing.T) {
	for _, n := range []int{0, 1, 15, 16, 17, 31, 32} {
		p := Pad(make([]byte, n), 16)
		// 1..16 zero octets, as strongSwan sends (see checkPadding).
		if len(p)%16 != 0 || len(p)-n < 1 || len(p)-n > 16 || !bytes.Equal(p, make([]byte, len(p))) {
			t.Fatalf("Pad(%d) = %d octets", n, len(p))
		}
	}
	c, err := NewCBC(CipherAES, make([]byte, 16))
	if err != nil {
		t.Fatal(err)
	}
	buf := bytes.Repeat([]byte{7}, 32)
	iv := make([]byte, 16)
	c.Encrypt(iv, buf)
	if err := c.Decrypt(iv, buf); err != nil || !bytes.Equal(buf, bytes.Repeat([]byte{7}, 32)) {
		t.Fatal("CBC round trip failed")
	}
	if err := c.Decrypt(iv, make([]byte, 15)); err == nil {
		t.Fatal("partial block accepted")
	}
	if _, err := NewCBC(CipherDES3, make([]byte, 16)); err == nil {
		t.Fatal("short 3DES key accepted")
	}
}

func BenchmarkDH(b *testing.B) {
	for _, g := range []Group{2, 5, 14, 15, 16, 17, 18, 19, 20, 21} {
		b.Run(g.String(), func(b *testing.B) {
			peer, _ := GenerateDH(g, rand.Reader)
			for i := 0; i < b.N; i++ {
				d, err := GenerateDH(g, rand.Reader)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := d.SharedSecret(peer.Public()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func TestDHWipe(t *testing.T) {
	for _, g := range []Group{2, 14, 19} {
		a, err := GenerateDH(g, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := GenerateDH(g, rand.Reader)
		var words []big.Word
		if a.x != nil {
			words = a.x.Bits()
		}
		a.Wipe()
		for i, w := range words {
			if w != 0 {
				t.Fatalf("group %d: word %d of the private exponent survives Wipe", g, i)
			}
		}
		if a.x != nil || a.priv != nil {
			t.Fatalf("group %d: private value still referenced after Wipe", g)
		}
		if _, err := a.SharedSecret(b.Public()); err == nil {
			t.Fatalf("group %d: SharedSecret works after Wipe", g)
		}
		if len(a.Public()) != g.PublicLen() {
			t.Fatalf("group %d: Public lost after Wipe", g)
		}
	}
}
