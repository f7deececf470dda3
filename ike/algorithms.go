package ike

import "fmt"

// The algorithms of a conn's proposals, in ike's own types: the daemon
// maps its configuration (internal/conf) to them, and another program
// can fill them without gosec's configuration parser.

// Encr is an encryption algorithm of a proposal.
type Encr uint8

// The encryption algorithms.
const (
	EncrNull Encr = iota + 1
	Encr3DES
	EncrAESCBC
	EncrAESCTR
	EncrAESGCM8
	EncrAESGCM12
	EncrAESGCM16
	EncrChaCha20Poly1305
)

// IANA returns the IPsec DOI ESP transform ID (RFC 2407; IANA "IPsec
// ESP transform identifiers").
func (e Encr) IANA() uint16 {
	switch e {
	case EncrNull:
		return 11
	case Encr3DES:
		return 3
	case EncrAESCBC:
		return 12
	case EncrAESCTR:
		return 13
	case EncrAESGCM8:
		return 18
	case EncrAESGCM12:
		return 19
	case EncrAESGCM16:
		return 20
	case EncrChaCha20Poly1305:
		return 28
	}
	return 0
}

// saltLen is the octets of salt that follow the key in the KEYMAT.
func (e Encr) saltLen() int {
	switch e {
	case EncrAESCTR, EncrAESGCM8, EncrAESGCM12, EncrAESGCM16, EncrChaCha20Poly1305:
		return 4
	}
	return 0
}

// Integ is an integrity (and, for phase 1, hash and PRF) algorithm.
type Integ uint8

// The integrity algorithms; in ESP and AH the HMAC truncations of RFC
// 2403, 2404 and 4868.
const (
	IntegNone Integ = iota
	IntegMD5
	IntegSHA1
	IntegSHA256
	IntegSHA384
	IntegSHA512
)

// KeyLen is the HMAC key length in octets for ESP and AH.
func (i Integ) KeyLen() int {
	lens := [...]int{0, 16, 20, 32, 48, 64}
	if int(i) < len(lens) {
		return lens[i]
	}
	return 0
}

// IANA returns the IPsec DOI authentication algorithm attribute value.
func (i Integ) IANA() uint16 {
	ids := [...]uint16{0, 1, 2, 5, 6, 7}
	if int(i) < len(ids) {
		return ids[i]
	}
	return 0
}

// Name is strongSwan's name ("sha1").
func (i Integ) Name() string {
	names := [...]string{"none", "md5", "sha1", "sha256", "sha384", "sha512"}
	if int(i) < len(names) {
		return names[i]
	}
	return fmt.Sprintf("integ%d", uint8(i))
}

// DHGroup is an IANA Diffie-Hellman group number (0: none).
type DHGroup uint16

var dhGroupNames = map[DHGroup]string{1: "modp768", 2: "modp1024", 5: "modp1536", 14: "modp2048", 15: "modp3072",
	16: "modp4096", 17: "modp6144", 18: "modp8192", 19: "ecp256", 20: "ecp384", 21: "ecp521"}

// Name is strongSwan's name of the group ("modp2048").
func (g DHGroup) Name() string {
	if n, ok := dhGroupNames[g]; ok {
		return n
	}
	return fmt.Sprintf("dh%d", uint16(g))
}

// Cipher is an encryption algorithm with its key size.
type Cipher struct {
	Encr    Encr
	KeyBits int // 0 for 3DES and NULL
}

// Name is strongSwan's name ("aes128", "aes256gcm16", "3des").
func (c Cipher) Name() string {
	switch c.Encr {
	case EncrNull:
		return "null"
	case Encr3DES:
		return "3des"
	case EncrAESCBC:
		return fmt.Sprintf("aes%d", c.KeyBits)
	case EncrAESCTR:
		return fmt.Sprintf("aes%dctr", c.KeyBits)
	case EncrAESGCM8:
		return fmt.Sprintf("aes%dgcm8", c.KeyBits)
	case EncrAESGCM12:
		return fmt.Sprintf("aes%dgcm12", c.KeyBits)
	case EncrAESGCM16:
		return fmt.Sprintf("aes%dgcm16", c.KeyBits)
	case EncrChaCha20Poly1305:
		return "chacha20poly1305"
	}
	return "?"
}

// KeyLen is the key length in octets, salt included.
func (c Cipher) KeyLen() int {
	switch c.Encr {
	case EncrNull:
		return 0
	case Encr3DES:
		return 24
	case EncrChaCha20Poly1305:
		return 36
	}
	return c.KeyBits/8 + c.Encr.saltLen()
}

// Suite is one concrete combination of algorithms a conn proposes.
type Suite struct {
	Cipher Cipher
	Integ  Integ
	DH     DHGroup
	ESN    bool // ESP: extended sequence numbers
}
