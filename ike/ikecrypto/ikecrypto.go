// Package ikecrypto is IKEv1's cryptography (RFC 2409): the negotiated
// hash and its HMAC as PRF, Diffie-Hellman over MODP (RFC 2409, 3526) and
// ECP groups (RFC 5903), SKEYID derivation for pre-shared keys, the
// phase-1 encryption key expansion of Appendix B, the CBC IVs of phases
// 1 and 2, HASH_I/HASH_R, Quick Mode and Informational hashes, KEYMAT and
// the NAT-D hashes of RFC 3947.
package ikecrypto

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/des"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"io"
	"math/big"
	"net/netip"
)

// Hash is an IKEv1 phase-1 hash algorithm (attribute values of RFC 2409
// Appendix A and IANA).
type Hash uint8

// Hash algorithms.
const (
	HashMD5    Hash = 1
	HashSHA1   Hash = 2
	HashSHA256 Hash = 4
	HashSHA384 Hash = 5
	HashSHA512 Hash = 6
)

// Valid reports whether gosec implements h.
func (h Hash) Valid() bool {
	switch h {
	case HashMD5, HashSHA1, HashSHA256, HashSHA384, HashSHA512:
		return true
	}
	return false
}

// New returns a new hash.Hash of h; it panics for an invalid h.
func (h Hash) New() hash.Hash {
	switch h {
	case HashMD5:
		return md5.New()
	case HashSHA1:
		return sha1.New()
	case HashSHA256:
		return sha256.New()
	case HashSHA384:
		return sha512.New384()
	case HashSHA512:
		return sha512.New()
	}
	panic(fmt.Sprintf("ikecrypto: invalid hash %d", h))
}

// Size is the output length of h.
func (h Hash) Size() int {
	switch h {
	case HashMD5:
		return 16
	case HashSHA1:
		return 20
	case HashSHA256:
		return 32
	case HashSHA384:
		return 48
	case HashSHA512:
		return 64
	}
	return 0
}

func (h Hash) String() string {
	switch h {
	case HashMD5:
		return "md5"
	case HashSHA1:
		return "sha1"
	case HashSHA256:
		return "sha256"
	case HashSHA384:
		return "sha384"
	case HashSHA512:
		return "sha512"
	}
	return fmt.Sprintf("hash%d", uint8(h))
}

// PRF is the negotiated pseudo-random function: HMAC with h over the
// concatenation of data.
func PRF(h Hash, key []byte, data ...[]byte) []byte {
	m := hmac.New(h.New, key)
	for _, d := range data {
		m.Write(d)
	}
	return m.Sum(nil)
}

func digest(h Hash, data ...[]byte) []byte {
	d := h.New()
	for _, b := range data {
		d.Write(b)
	}
	return d.Sum(nil)
}

// Group is an IKE Diffie-Hellman group number.
type Group uint16

// Supported reports whether gosec implements g.
func (g Group) Supported() bool {
	if _, ok := modpPrimes[g]; ok {
		return true
	}
	return g.curve() != nil
}

func (g Group) curve() ecdh.Curve {
	switch g {
	case 19:
		return ecdh.P256()
	case 20:
		return ecdh.P384()
	case 21:
		return ecdh.P521()
	}
	return nil
}

// PublicLen is the length of a public value (KE payload data).
func (g Group) PublicLen() int {
	if p := g.prime(); p != nil {
		return (p.BitLen() + 7) / 8
	}
	switch g {
	case 19:
		return 64
	case 20:
		return 96
	case 21:
		return 132
	}
	return 0
}

func (g Group) String() string {
	switch g {
	case 2:
		return "modp1024"
	case 5:
		return "modp1536"
	case 14:
		return "modp2048"
	case 15:
		return "modp3072"
	case 16:
		return "modp4096"
	case 17:
		return "modp6144"
	case 18:
		return "modp8192"
	case 19:
		return "ecp256"
	case 20:
		return "ecp384"
	case 21:
		return "ecp521"
	}
	return fmt.Sprintf("dh%d", uint16(g))
}

var primes = map[Group]*big.Int{}

func init() {
	for g, h := range modpPrimes {
		p, ok := new(big.Int).SetString(h, 16)
		if !ok {
			panic("ikecrypto: bad prime")
		}
		primes[g] = p
	}
}

func (g Group) prime() *big.Int { return primes[g] }

// DH is one side's Diffie-Hellman key pair.
type DH struct {
	g    Group
	x    *big.Int // MODP private value
	pub  []byte
	priv *ecdh.PrivateKey
}

// GenerateDH makes a key pair in group g.
func GenerateDH(g Group, rand io.Reader) (*DH, error) {
	if c := g.curve(); c != nil {
		k, err := c.GenerateKey(rand)
		if err != nil {
			return nil, err
		}
		return &DH{g: g, priv: k, pub: k.PublicKey().Bytes()[1:]}, nil
	}
	p := g.prime()
	if p == nil {
		return nil, fmt.Errorf("ikecrypto: DH group %d is not supported", g)
	}
	// A private exponent of twice the group's security strength would do;
	// a full-length one costs little more and needs no table.
	buf := make([]byte, (p.BitLen()+7)/8)
	for {
		if _, err := io.ReadFull(rand, buf); err != nil {
			return nil, err
		}
		x := new(big.Int).SetBytes(buf)
		if x.Cmp(big.NewInt(1)) > 0 && x.Cmp(p) < 0 {
			y := new(big.Int).Exp(big.NewInt(2), x, p)
			return &DH{g: g, x: x, pub: y.FillBytes(make([]byte, len(buf)))}, nil
		}
	}
}

// NewDHFromPrivate builds a key pair from a known private value (tests
// with published vectors).
func NewDHFromPrivate(g Group, private []byte) (*DH, error) {
	if c := g.curve(); c != nil {
		k, err := c.NewPrivateKey(private)
		if err != nil {
			return nil, err
		}
		return &DH{g: g, priv: k, pub: k.PublicKey().Bytes()[1:]}, nil
	}
	p := g.prime()
	if p == nil {
		return nil, fmt.Errorf("ikecrypto: DH group %d is not supported", g)
	}
	x := new(big.Int).SetBytes(private)
	y := new(big.Int).Exp(big.NewInt(2), x, p)
	return &DH{g: g, x: x, pub: y.FillBytes(make([]byte, (p.BitLen()+7)/8))}, nil
}

// Group returns the key pair's group.
func (d *DH) Group() Group { return d.g }

// Public returns the public value as it goes into a KE payload: MODP
// big-endian padded to the prime's length; ECP x||y (RFC 5903 section 7).
func (d *DH) Public() []byte { return append([]byte(nil), d.pub...) }

var errWiped = errors.New("ikecrypto: Diffie-Hellman private value already wiped")

// Wipe forgets the private value once the shared secret is computed:
// a MODP exponent is zeroed in place; an ECDH private key is released
// (crypto/ecdh keeps its scalar unexported, so only the garbage
// collector can reclaim it). SharedSecret fails afterwards; Public still
// works.
func (d *DH) Wipe() {
	if d.x != nil {
		clear(d.x.Bits())
		d.x = nil
	}
	d.priv = nil
}

// ErrPeerValue is returned for an invalid peer public value.
var ErrPeerValue = errors.New("ikecrypto: invalid Diffie-Hellman public value")

// SharedSecret computes g^xy from the peer's public value, after checking
// it: the exact length, 1 < y < p-1 for MODP, a point on the curve for
// ECP. The result is padded to the prime's length (MODP) or is the x
// coordinate (ECP, RFC 5903 section 7).
func (d *DH) SharedSecret(peer []byte) ([]byte, error) {
	if d.x == nil && d.priv == nil {
		return nil, errWiped
	}
	if len(peer) != d.g.PublicLen() {
		return nil, fmt.Errorf("%w: %d octets for %s, want %d", ErrPeerValue, len(peer), d.g, d.g.PublicLen())
	}
	if c := d.g.curve(); c != nil {
		pk, err := c.NewPublicKey(append([]byte{4}, peer...))
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrPeerValue, err)
		}
		s, err := d.priv.ECDH(pk)
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrPeerValue, err)
		}
		return s, nil
	}
	p := d.g.prime()
	y := new(big.Int).SetBytes(peer)
	pm1 := new(big.Int).Sub(p, big.NewInt(1))
	if y.Cmp(big.NewInt(1)) <= 0 || y.Cmp(pm1) >= 0 {
		return nil, fmt.Errorf("%w: out of range", ErrPeerValue)
	}
	s := new(big.Int).Exp(y, d.x, p)
	return s.FillBytes(make([]byte, len(peer))), nil
}

// Cipher is a phase-1 encryption algorithm (attribute values).
type Cipher uint8

// Phase-1 ciphers.
const (
	CipherDES3 Cipher = 5
	CipherAES  Cipher = 7
)

// BlockSize of the cipher.
func (c Cipher) BlockSize() int {
	if c == CipherDES3 {
		return 8
	}
	return 16
}

// KeyLen returns the key length in octets for the Key-Length attribute
// (bits; only AES uses it).
func (c Cipher) KeyLen(attrBits int) (int, error) {
	switch c {
	case CipherDES3:
		return 24, nil
	case CipherAES:
		switch attrBits {
		case 128, 192, 256:
			return attrBits / 8, nil
		case 0:
			return 16, nil
		}
		return 0, fmt.Errorf("ikecrypto: AES key length %d", attrBits)
	}
	return 0, fmt.Errorf("ikecrypto: cipher %d is not supported", c)
}

// CBC encrypts and decrypts IKE message bodies.
type CBC struct {
	b cipher.Block
}

// ErrWeakKey is returned by NewCBC for a degenerate 3DES key.
var ErrWeakKey = errors.New("ikecrypto: degenerate 3DES key (K1 = K2 or K2 = K3)")

// NewCBC returns the phase-1 cipher with key. A 3DES key whose K1 = K2 or
// K2 = K3 is refused (ErrWeakKey): EDE with such a key is single DES. A
// key derived by the PRF hits this with negligible probability; the check
// (the Linux kernel's des3_ede_verify_key makes the same one) keeps a
// broken or hostile key source from silently downgrading to DES.
func NewCBC(c Cipher, key []byte) (*CBC, error) {
	var b cipher.Block
	var err error
	switch c {
	case CipherDES3:
		if len(key) == 24 && (subtle.ConstantTimeCompare(key[0:8], key[8:16]) == 1 ||
			subtle.ConstantTimeCompare(key[8:16], key[16:24]) == 1) {
			return nil, ErrWeakKey
		}
		b, err = des.NewTripleDESCipher(key)
	case CipherAES:
		b, err = aes.NewCipher(key)
	default:
		return nil, fmt.Errorf("ikecrypto: cipher %d is not supported", c)
	}
	if err != nil {
		return nil, fmt.Errorf("ikecrypto: cipher %d: %w", c, err)
	}
	return &CBC{b: b}, nil
}

// BlockSize of the cipher.
func (c *CBC) BlockSize() int { return c.b.BlockSize() }

// Encrypt encrypts buf in place (its length a multiple of the block).
func (c *CBC) Encrypt(iv, buf []byte) {
	cipher.NewCBCEncrypter(c.b, iv[:c.b.BlockSize()]).CryptBlocks(buf, buf)
}

// Decrypt decrypts buf in place.
func (c *CBC) Decrypt(iv, buf []byte) error {
	if len(buf) == 0 || len(buf)%c.b.BlockSize() != 0 {
		return fmt.Errorf("ikecrypto: %d octets is not a whole number of %d-octet blocks", len(buf), c.b.BlockSize())
	}
	if len(iv) < c.b.BlockSize() {
		return errors.New("ikecrypto: short IV")
	}
	cipher.NewCBCDecrypter(c.b, iv[:c.b.BlockSize()]).CryptBlocks(buf, buf)
	return nil
}

// Pad pads plain for phase-1 encryption exactly as strongSwan 5.9.8 does
// (observed in testdata/mm-aes128.pcap, see TestStrongSwanExchange): 1 to
// block zero octets, so a plaintext that is already a whole number of
// blocks gets a full block. This is strongSwan's encrypt_v1
// (src/libcharon/encoding/payloads/encrypted_payload.c: padding.len =
// bs - plain.len % bs, memset 0); its decrypt_v1 only requires a non-empty
// whole number of blocks and parses payloads by their lengths, ignoring the
// padding, as gosec does. RFC 2408 3.5 / RFC 2409 5.3 leave the content open.
func Pad(plain []byte, block int) []byte {
	n := block - len(plain)%block
	out := make([]byte, len(plain)+n)
	copy(out, plain)
	return out
}

// Phase1Keys are the keys of an ISAKMP SA.
type Phase1Keys struct {
	SKEYID, D, A, E []byte
	// Key is the encryption key (SKEYID_e truncated or expanded).
	Key []byte
}

// DerivePSK derives the keys of a pre-shared-key phase 1 (RFC 2409 5):
// SKEYID = prf(psk, Ni_b | Nr_b) and then DeriveFrom.
func DerivePSK(h Hash, psk, ni, nr, gxy, ckyI, ckyR []byte, keyLen int) Phase1Keys {
	return DeriveFrom(h, PRF(h, psk, ni, nr), gxy, ckyI, ckyR, keyLen)
}

// DeriveSig derives the keys of a signature phase 1: SKEYID =
// prf(Ni_b | Nr_b, g^xy).
func DeriveSig(h Hash, ni, nr, gxy, ckyI, ckyR []byte, keyLen int) Phase1Keys {
	return DeriveFrom(h, PRF(h, append(append([]byte(nil), ni...), nr...), gxy), gxy, ckyI, ckyR, keyLen)
}

// DeriveFrom derives SKEYID_d, _a, _e and the encryption key from SKEYID.
func DeriveFrom(h Hash, skeyid, gxy, ckyI, ckyR []byte, keyLen int) Phase1Keys {
	k := Phase1Keys{SKEYID: skeyid}
	k.D = PRF(h, skeyid, gxy, ckyI, ckyR, []byte{0})
	k.A = PRF(h, skeyid, k.D, gxy, ckyI, ckyR, []byte{1})
	k.E = PRF(h, skeyid, k.A, gxy, ckyI, ckyR, []byte{2})
	k.Key = ExpandKey(h, k.E, keyLen)
	return k
}

// ExpandKey makes an encryption key of n octets from SKEYID_e: a prefix
// of it, or when it is too short K1 | K2 | ... with K1 = prf(SKEYID_e, 0)
// and Ki = prf(SKEYID_e, K(i-1)) (RFC 2409 Appendix B).
func ExpandKey(h Hash, skeyidE []byte, n int) []byte {
	if len(skeyidE) >= n {
		return append([]byte(nil), skeyidE[:n]...)
	}
	var out []byte
	k := PRF(h, skeyidE, []byte{0})
	for {
		out = append(out, k...)
		if len(out) >= n {
			return out[:n]
		}
		k = PRF(h, skeyidE, k)
	}
}

// Phase1IV is the IV of the first encrypted phase-1 message:
// hash(g^xi | g^xr) truncated to the block.
func Phase1IV(h Hash, gxi, gxr []byte, block int) []byte {
	return digest(h, gxi, gxr)[:block]
}

// PhaseIV is the first IV of a Quick Mode or Informational exchange:
// hash(last phase-1 CBC block | M-ID) truncated to the block.
func PhaseIV(h Hash, lastBlock []byte, msgID uint32, block int) []byte {
	return digest(h, lastBlock, binary.BigEndian.AppendUint32(nil, msgID))[:block]
}

// HashI is HASH_I = prf(SKEYID, g^xi | g^xr | CKY-I | CKY-R | SAi_b | IDii_b).
func HashI(h Hash, skeyid, gxi, gxr, ckyI, ckyR, saiBody, idiiBody []byte) []byte {
	return PRF(h, skeyid, gxi, gxr, ckyI, ckyR, saiBody, idiiBody)
}

// HashR is HASH_R = prf(SKEYID, g^xr | g^xi | CKY-R | CKY-I | SAi_b | IDir_b).
func HashR(h Hash, skeyid, gxi, gxr, ckyI, ckyR, saiBody, idirBody []byte) []byte {
	return PRF(h, skeyid, gxr, gxi, ckyR, ckyI, saiBody, idirBody)
}

func mid(msgID uint32) []byte { return binary.BigEndian.AppendUint32(nil, msgID) }

// QMHash1 is HASH(1) = prf(SKEYID_a, M-ID | message after HASH(1)).
func QMHash1(h Hash, skeyidA []byte, msgID uint32, rest []byte) []byte {
	return PRF(h, skeyidA, mid(msgID), rest)
}

// QMHash2 is HASH(2) = prf(SKEYID_a, M-ID | Ni_b | message after HASH(2)).
func QMHash2(h Hash, skeyidA []byte, msgID uint32, niB, rest []byte) []byte {
	return PRF(h, skeyidA, mid(msgID), niB, rest)
}

// QMHash3 is HASH(3) = prf(SKEYID_a, 0 | M-ID | Ni_b | Nr_b).
func QMHash3(h Hash, skeyidA []byte, msgID uint32, niB, nrB []byte) []byte {
	return PRF(h, skeyidA, []byte{0}, mid(msgID), niB, nrB)
}

// InfoHash is the HASH(1) of an Informational exchange (RFC 2409 5.7):
// prf(SKEYID_a, M-ID | N/D).
func InfoHash(h Hash, skeyidA []byte, msgID uint32, rest []byte) []byte {
	return PRF(h, skeyidA, mid(msgID), rest)
}

// Keymat derives n octets of keying material for the SA with spi:
// K1 = prf(SKEYID_d, [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b),
// Ki = prf(SKEYID_d, K(i-1) | [g(qm)^xy |] protocol | SPI | Ni_b | Nr_b).
func Keymat(h Hash, skeyidD, gqm []byte, proto uint8, spi, ni, nr []byte, n int) []byte {
	var out, k []byte
	for len(out) < n {
		k = PRF(h, skeyidD, k, gqm, []byte{proto}, spi, ni, nr)
		out = append(out, k...)
	}
	return out[:n]
}

// NATD is a NAT-D hash (RFC 3947 3.2): HASH(CKY-I | CKY-R | IP | Port)
// with the negotiated hash.
func NATD(h Hash, ckyI, ckyR []byte, ip netip.Addr, port uint16) []byte {
	a := ip.Unmap().AsSlice() // an IPv4 peer hashes 4 octets, even as ::ffff:a.b.c.d
	return digest(h, ckyI, ckyR, a, []byte{byte(port >> 8), byte(port)})
}
