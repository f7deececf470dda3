// Package esp implements the IP Encapsulating Security Payload (RFC 4303)
// packet transform: AES-CBC (RFC 3602), 3DES-CBC (RFC 2451), AES-CTR
// (RFC 3686), AES-GCM-16 (RFC 4106), ChaCha20-Poly1305 (RFC 7634) and NULL
// (RFC 2410) encryption with the HMAC integrity algorithms of internal/integ,
// optional extended sequence numbers, and transport- and tunnel-mode helpers
// on whole IPv4 packets.
//
// A Suite is safe for concurrent use and allocates nothing per packet: every
// per-operation state (CBC block modes, AEAD nonces, CTR key stream) is
// borrowed from a sync.Pool.
//
// Errors are package-level *drop.Error values. The order of checks on input
// follows RFC 4303 section 3.4: the caller checks the replay window, Open
// verifies the ICV (in constant time) before it decrypts. ErrPadding and
// ErrDummy mean the packet WAS authentic (its ICV verified), so the caller
// must still update its replay window after them; every other error means
// the packet was not authenticated and the window must not move.
package esp

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/des"
	"crypto/rand"
	"crypto/subtle"
	"encoding/binary"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"golang.org/x/crypto/chacha20poly1305"

	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/integ"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
)

// Cipher names an ESP encryption transform.
type Cipher uint8

// The ESP ciphers.
const (
	CipherNull             Cipher = iota // RFC 2410, only with integrity
	Cipher3DESCBC                        // RFC 2451, 24-octet key
	CipherAESCBC                         // RFC 3602, 16/24/32-octet key
	CipherAESCTR                         // RFC 3686, key || 4-octet nonce
	CipherAESGCM16                       // RFC 4106, key || 4-octet salt, 16-octet ICV
	CipherChaCha20Poly1305               // RFC 7634, 32-octet key || 4-octet salt
)

var cipherNames = [...]string{
	CipherNull:             "null",
	Cipher3DESCBC:          "3des-cbc",
	CipherAESCBC:           "aes-cbc",
	CipherAESCTR:           "aes-ctr",
	CipherAESGCM16:         "aes-gcm-16",
	CipherChaCha20Poly1305: "chacha20-poly1305",
}

// String returns the cipher's name.
func (c Cipher) String() string {
	if int(c) < len(cipherNames) {
		return cipherNames[c]
	}
	return fmt.Sprintf("cipher(%d)", uint8(c))
}

// AEAD reports whether c is a combined-mode cipher (no separate integrity).
func (c Cipher) AEAD() bool { return c == CipherAESGCM16 || c == CipherChaCha20Poly1305 }

// HeaderLen is the length of the ESP header (SPI and sequence number).
const HeaderLen = 8

const (
	saltLen   = 4
	aeadIVLen = 8
	aeadICV   = 16
)

// Errors. ErrPadding and ErrDummy are returned only after the ICV verified:
// the packet was authentic and the replay window must be updated.
var (
	ErrTruncated    = drop.New(drop.Malformed, "esp: truncated packet")
	ErrLength       = drop.New(drop.Malformed, "esp: ciphertext length not a multiple of the block size")
	ErrSeq          = drop.New(drop.Malformed, "esp: sequence number disagrees with the wire")
	ErrICV          = drop.New(drop.ICV, "esp: integrity check failed")
	ErrPadding      = drop.New(drop.Padding, "esp: bad padding")
	ErrDummy        = drop.New(drop.Dummy, "esp: dummy packet (next header 59)")
	ErrInnerProto   = drop.New(drop.Malformed, "esp: tunnel next header is not IPv4 or IPv6")
	ErrInnerPacket  = drop.New(drop.Malformed, "esp: inner packet disagrees with next header")
	ErrIPv4         = drop.New(drop.Malformed, "esp: bad IPv4 header")
	ErrNotESP       = drop.New(drop.Malformed, "esp: IPv4 protocol is not ESP")
	ErrFragment     = drop.New(drop.Malformed, "esp: IPv4 fragment")
	ErrBufferBounds = drop.New(drop.NoBuffer, "esp: payload outside the buffer")
	ErrHeadroom     = drop.New(drop.NoBuffer, "esp: not enough headroom before the payload")
	ErrTailroom     = drop.New(drop.NoBuffer, "esp: not enough capacity after the payload for the trailer")
	ErrTooBig       = drop.New(drop.TooBig, "esp: packet longer than 65535 octets")
	ErrRandom       = drop.New(drop.NoBuffer, "esp: IV source failed")
)

// Config describes an ESP SA's transforms and keys.
type Config struct {
	Cipher Cipher
	// EncKey is the cipher key; for AES-CTR, AES-GCM-16 and
	// ChaCha20-Poly1305 it is the key followed by the 4-octet nonce/salt
	// (RFC 3686/4106/7634), as ip xfrm and manual keys give it.
	EncKey  []byte
	Integ   integ.Algorithm // integ.None for AEAD ciphers
	AuthKey []byte
	ESN     bool      // extended sequence numbers (RFC 4303 2.2.1)
	Rand    io.Reader // CBC IV source; nil: the sequence number encrypted under a random key (Suite.cbcIV)
}

// cbcMode is a CBC BlockMode whose IV can be reset (as crypto/tls uses it).
type cbcMode interface {
	cipher.BlockMode
	SetIV([]byte)
}

// scratch is per-operation state borrowed from Suite.scratch.
type scratch struct {
	nonce [12]byte
	aad   [12]byte
	hi    [4]byte
	iv    [16]byte
}

// Suite is one direction's keyed ESP transform. It is safe for concurrent
// use.
type Suite struct {
	cipher  Cipher
	esn     bool
	ivLen   int
	align   int // padding alignment: max(4, block size)
	icvLen  int
	salt    atomic.Uint32 // GCM/ChaCha20 nonce salt, big endian; zero once wiped
	wiped   atomic.Bool
	block   cipher.Block // CBC, CTR
	aead    cipher.AEAD  // GCM, ChaCha20-Poly1305
	mac     *integ.MAC
	rand    io.Reader    // injected CBC IV source, or nil
	ivBlock cipher.Block // CBC IV generator when rand is nil (see cbcIV)
	enc     sync.Pool    // of cbcMode
	dec     sync.Pool    // of cbcMode
	scratch sync.Pool    // of *scratch
	ctrGCM  cipher.AEAD  // AES-CTR: key stream generator (see ctr)
	ctrBuf  sync.Pool    // AES-CTR: of *[]byte, GCM output
	randMu  sync.Mutex
}

// Wipe zeroes the key material the Suite holds in memory gosec controls:
// the nonce salt (GCM, CTR, ChaCha20-Poly1305) and the integrity key's
// copy (see integ.MAC.Wipe). The cipher's key schedule lives in
// crypto/aes, crypto/des or chacha20poly1305 structures with unexported
// fields and is not reachable: it goes with the Suite when the garbage
// collector frees it, and a copy the collector made may remain in freed
// memory until it is reused. Packets processed after Wipe fail (wrong
// nonce or ICV): call it once the SA is out of use.
func (s *Suite) Wipe() {
	s.salt.Store(0)
	if s.mac != nil {
		s.mac.Wipe()
	}
	s.wiped.Store(true)
}

// Wiped reports whether Wipe was called.
func (s *Suite) Wiped() bool { return s.wiped.Load() }

// NewSuite validates cfg and returns a keyed Suite.
func NewSuite(cfg Config) (*Suite, error) {
	return newSuite(cfg, false)
}

func newSuite(cfg Config, allowNoInteg bool) (*Suite, error) {
	s := &Suite{cipher: cfg.Cipher, esn: cfg.ESN, align: 4, rand: cfg.Rand}
	c := cfg.Cipher
	if int(c) >= len(cipherNames) {
		return nil, fmt.Errorf("esp: unknown cipher %v", c)
	}
	if c.AEAD() {
		if cfg.Integ != integ.None || len(cfg.AuthKey) != 0 {
			return nil, fmt.Errorf("esp: %v is a combined-mode cipher and takes no separate integrity algorithm (got %v)", c, cfg.Integ)
		}
	} else {
		if cfg.Integ == integ.None {
			if c == CipherNull {
				return nil, fmt.Errorf("esp: NULL encryption needs an integrity algorithm")
			}
			if !allowNoInteg {
				return nil, fmt.Errorf("esp: %v without integrity is refused", c)
			}
		} else {
			m, err := integ.New(cfg.Integ, cfg.AuthKey)
			if err != nil {
				return nil, fmt.Errorf("esp: %w", err)
			}
			s.mac = m
			s.icvLen = m.ICVLen()
		}
	}
	key := cfg.EncKey
	switch c {
	case CipherNull:
		if len(key) != 0 {
			return nil, fmt.Errorf("esp: NULL encryption takes no key, got %d octets", len(key))
		}
	case Cipher3DESCBC:
		if len(key) != 24 {
			return nil, fmt.Errorf("esp: 3DES-CBC needs a 24-octet key, got %d", len(key))
		}
		b, err := des.NewTripleDESCipher(key)
		if err != nil {
			return nil, fmt.Errorf("esp: 3DES-CBC: %w", err)
		}
		s.block = b
	case CipherAESCBC, CipherAESCTR, CipherAESGCM16:
		k := len(key)
		if c != CipherAESCBC {
			k -= saltLen
		}
		if k != 16 && k != 24 && k != 32 {
			extra := ""
			if c != CipherAESCBC {
				extra = " plus a 4-octet salt"
			}
			return nil, fmt.Errorf("esp: %v needs a 16-, 24- or 32-octet key%s, got %d octets", c, extra, len(key))
		}
		b, err := aes.NewCipher(key[:k])
		if err != nil {
			return nil, fmt.Errorf("esp: %v: %w", c, err)
		}
		if c != CipherAESCBC {
			s.salt.Store(binary.BigEndian.Uint32(key[k:]))
		}
		if c == CipherAESGCM16 {
			a, err := cipher.NewGCM(b)
			if err != nil {
				return nil, fmt.Errorf("esp: %v: %w", c, err)
			}
			s.aead = a
		} else {
			s.block = b
		}
		if c == CipherAESCTR {
			g, err := cipher.NewGCM(b)
			if err != nil {
				return nil, fmt.Errorf("esp: %v: %w", c, err)
			}
			s.ctrGCM = g
			s.ctrBuf.New = func() any { b := make([]byte, 0, 2048); return &b }
		}
	case CipherChaCha20Poly1305:
		if len(key) != chacha20poly1305.KeySize+saltLen {
			return nil, fmt.Errorf("esp: %v needs a 32-octet key plus a 4-octet salt, got %d octets", c, len(key))
		}
		a, err := chacha20poly1305.New(key[:chacha20poly1305.KeySize])
		if err != nil {
			return nil, fmt.Errorf("esp: %v: %w", c, err)
		}
		s.salt.Store(binary.BigEndian.Uint32(key[chacha20poly1305.KeySize:]))
		s.aead = a
	}
	switch c {
	case Cipher3DESCBC, CipherAESCBC:
		bs := s.block.BlockSize()
		s.ivLen, s.align = bs, bs
		blk := s.block
		zero := make([]byte, bs)
		if _, ok := cipher.NewCBCEncrypter(blk, zero).(cbcMode); !ok {
			return nil, fmt.Errorf("esp: %v: CBC mode without SetIV", c)
		}
		if _, ok := cipher.NewCBCDecrypter(blk, zero).(cbcMode); !ok {
			return nil, fmt.Errorf("esp: %v: CBC mode without SetIV", c)
		}
		if s.rand == nil {
			var k [16]byte
			if _, err := rand.Read(k[:]); err != nil {
				return nil, fmt.Errorf("esp: IV key: %w", err)
			}
			ivb, err := aes.NewCipher(k[:])
			clear(k[:])
			if err != nil {
				return nil, fmt.Errorf("esp: IV key: %w", err)
			}
			s.ivBlock = ivb
		}
		s.enc.New = func() any { return cipher.NewCBCEncrypter(blk, zero).(cbcMode) }
		s.dec.New = func() any { return cipher.NewCBCDecrypter(blk, zero).(cbcMode) }
	case CipherAESCTR:
		s.ivLen = 8
	case CipherAESGCM16, CipherChaCha20Poly1305:
		s.ivLen = aeadIVLen
		s.icvLen = aeadICV
	}
	s.scratch.New = func() any { return new(scratch) }
	return s, nil
}

// Cipher returns the suite's cipher.
func (s *Suite) Cipher() Cipher { return s.cipher }

// ESN reports whether the suite uses extended sequence numbers.
func (s *Suite) ESN() bool { return s.esn }

// ICVLen is the length of the ICV in octets (0 without integrity).
func (s *Suite) ICVLen() int { return s.icvLen }

// Headroom is the ESP header plus IV: what Seal writes before the payload.
func (s *Suite) Headroom() int { return HeaderLen + s.ivLen }

// MaxTrailer is the most Seal writes after the payload: worst-case
// padding, pad length, next header and ICV.
func (s *Suite) MaxTrailer() int { return s.align - 1 + 2 + s.icvLen }

// padLen returns the padding for an n-octet payload.
func (s *Suite) padLen(n int) int {
	return (s.align - (n+2)%s.align) % s.align
}

// Overhead returns exactly how many octets Seal adds to an n-octet payload.
func (s *Suite) Overhead(n int) int {
	return s.Headroom() + s.padLen(n) + 2 + s.icvLen
}

// ParseHeader returns the SPI and the (low 32 bits of the) sequence number
// of the ESP packet esp.
func ParseHeader(esp []byte) (spi, seq uint32, err error) {
	if len(esp) < HeaderLen {
		return 0, 0, ErrTruncated
	}
	return binary.BigEndian.Uint32(esp), binary.BigEndian.Uint32(esp[4:]), nil
}

// Seal encrypts and authenticates the payload b[off:off+n]. It writes the
// ESP header and IV into b[off-Headroom():off] and the padding, trailer and
// ICV after the payload (within cap(b)), and returns the ESP packet
// b[off-Headroom():off+n+trailer]. seq is the full 64-bit sequence number
// the SA assigned; only its low 32 bits travel, with ESN the high 32 bits
// enter the ICV or AEAD AAD. For CTR and the AEADs the IV is seq, which the
// SA never reuses.
func (s *Suite) Seal(b []byte, off, n int, spi uint32, seq uint64, nextHeader uint8) ([]byte, error) {
	if off < 0 || n < 0 || off > len(b) || n > len(b)-off {
		return nil, ErrBufferBounds
	}
	h := s.Headroom()
	if off < h {
		return nil, ErrHeadroom
	}
	pad := s.padLen(n)
	end := off + n + pad + 2 + s.icvLen
	if end > cap(b) {
		return nil, ErrTailroom
	}
	pkt := b[off-h : end : end]
	binary.BigEndian.PutUint32(pkt[0:], spi)
	binary.BigEndian.PutUint32(pkt[4:], uint32(seq))
	iv := pkt[HeaderLen:h]
	pl := h + n // end of payload within pkt
	for i := 1; i <= pad; i++ {
		pkt[pl+i-1] = byte(i)
	}
	pkt[pl+pad] = byte(pad)
	pkt[pl+pad+1] = nextHeader
	encEnd := pl + pad + 2
	body := pkt[h:encEnd]
	switch s.cipher {
	case CipherNull:
	case Cipher3DESCBC, CipherAESCBC:
		if err := s.cbcIV(iv, spi, seq); err != nil {
			return nil, err
		}
		m := s.enc.Get().(cbcMode)
		m.SetIV(iv)
		m.CryptBlocks(body, body)
		s.enc.Put(m)
	case CipherAESCTR:
		binary.BigEndian.PutUint64(iv, seq)
		s.ctr(iv, body)
	case CipherAESGCM16, CipherChaCha20Poly1305:
		binary.BigEndian.PutUint64(iv, seq)
		sc := s.scratch.Get().(*scratch)
		binary.BigEndian.PutUint32(sc.nonce[:saltLen], s.salt.Load())
		copy(sc.nonce[saltLen:], iv)
		aad := s.aad(sc, pkt, seq)
		s.aead.Seal(body[:0], sc.nonce[:], body, aad)
		s.scratch.Put(sc)
		return pkt, nil
	}
	if s.mac != nil {
		st := s.mac.Begin()
		st.Write(pkt[:encEnd])
		if s.esn {
			sc := s.scratch.Get().(*scratch)
			binary.BigEndian.PutUint32(sc.hi[:], uint32(seq>>32))
			st.Write(sc.hi[:])
			s.scratch.Put(sc)
		}
		st.Sum(pkt[encEnd:])
	}
	return pkt, nil
}

// aad returns the AEAD additional data: SPI || seq (RFC 4106 5), or with
// ESN SPI || seq high || seq low.
func (s *Suite) aad(sc *scratch, pkt []byte, seq uint64) []byte {
	if !s.esn {
		return pkt[:HeaderLen]
	}
	copy(sc.aad[:4], pkt[:4])
	binary.BigEndian.PutUint64(sc.aad[4:], seq)
	return sc.aad[:12]
}

// cbcIV writes the CBC IV for the packet with SPI spi and sequence number
// seq into iv. By default it is AES-128 under a random per-suite key (from
// crypto/rand at NewSuite, used for nothing else) of seq || spi || 0,
// truncated to the block size: the encrypted-nonce IV of NIST SP 800-38A
// Appendix C, like Linux's seqiv/echainiv. The SA never reuses seq, so the
// IVs are distinct and unpredictable without the IV key, and cost one block
// encryption instead of a getrandom call. An injected Config.Rand (tests,
// known answers) is read instead.
func (s *Suite) cbcIV(iv []byte, spi uint32, seq uint64) error {
	if s.rand == nil {
		sc := s.scratch.Get().(*scratch)
		binary.BigEndian.PutUint64(sc.iv[0:], seq)
		binary.BigEndian.PutUint32(sc.iv[8:], spi)
		binary.BigEndian.PutUint32(sc.iv[12:], 0)
		s.ivBlock.Encrypt(sc.iv[:], sc.iv[:])
		copy(iv, sc.iv[:])
		clear(sc.iv[:])
		s.scratch.Put(sc)
		return nil
	}
	// An injected reader need not be safe for concurrent use.
	s.randMu.Lock()
	_, err := io.ReadFull(s.rand, iv)
	s.randMu.Unlock()
	if err != nil {
		return ErrRandom
	}
	return nil
}

// ctr XORs data with the RFC 3686 key stream for the 8-octet IV iv:
// AES(nonce || IV || counter), the 32-bit counter starting at 1.
//
// cipher.NewCTR allocates (it copies the expanded key into a new Stream)
// and per-block Encrypt calls are slow, so the key stream comes from the
// suite's AES-GCM instance under the same key instead: GCM with the 12-octet
// nonce N = nonce || IV encrypts with exactly the counter blocks N || 2,
// N || 3, ... (NIST SP 800-38D 7.1), which are RFC 3686's blocks 2, 3, ...
// Block 1 is one Encrypt call. The GCM tag is computed into pooled scratch
// space and discarded.
func (s *Suite) ctr(iv, data []byte) {
	sc := s.scratch.Get().(*scratch)
	binary.BigEndian.PutUint32(sc.nonce[:saltLen], s.salt.Load())
	copy(sc.nonce[saltLen:], iv)
	copy(sc.iv[:12], sc.nonce[:])
	binary.BigEndian.PutUint32(sc.iv[12:], 1)
	s.block.Encrypt(sc.iv[:], sc.iv[:])
	k := min(len(data), 16)
	subtle.XORBytes(data[:k], data[:k], sc.iv[:k])
	if rest := data[k:]; len(rest) > 0 {
		bp := s.ctrBuf.Get().(*[]byte)
		if cap(*bp) < len(rest)+aeadICV {
			*bp = make([]byte, 0, len(rest)+aeadICV+512)
		}
		out := s.ctrGCM.Seal((*bp)[:0], sc.nonce[:], rest, nil)
		copy(rest, out)
		clear(out)
		s.ctrBuf.Put(bp)
	}
	clear(sc.iv[:])
	s.scratch.Put(sc)
}

// Open authenticates and decrypts the ESP packet pkt (starting at the SPI)
// in place. seq is the full sequence number the replay window inferred; its
// low 32 bits must equal the wire's. The ICV is verified in constant time
// before anything is decrypted. It returns the payload (a sub-slice of pkt)
// and the next header. ErrPadding and ErrDummy are returned only for
// authentic packets (see the package comment).
func (s *Suite) Open(pkt []byte, seq uint64) (payload []byte, nextHeader uint8, err error) {
	if err := s.CheckLength(len(pkt)); err != nil {
		return nil, 0, err
	}
	h := s.Headroom()
	encEnd := len(pkt) - s.icvLen
	body := pkt[h:encEnd]
	if binary.BigEndian.Uint32(pkt[4:]) != uint32(seq) {
		return nil, 0, ErrSeq
	}
	iv := pkt[HeaderLen:h]
	switch s.cipher {
	case CipherAESGCM16, CipherChaCha20Poly1305:
		sc := s.scratch.Get().(*scratch)
		binary.BigEndian.PutUint32(sc.nonce[:saltLen], s.salt.Load())
		copy(sc.nonce[saltLen:], iv)
		aad := s.aad(sc, pkt, seq)
		_, err := s.aead.Open(body[:0], sc.nonce[:], pkt[h:], aad)
		s.scratch.Put(sc)
		if err != nil {
			return nil, 0, ErrICV
		}
	default:
		if s.mac != nil {
			st := s.mac.Begin()
			st.Write(pkt[:encEnd])
			if s.esn {
				sc := s.scratch.Get().(*scratch)
				binary.BigEndian.PutUint32(sc.hi[:], uint32(seq>>32))
				st.Write(sc.hi[:])
				s.scratch.Put(sc)
			}
			if !st.Verify(pkt[encEnd:]) {
				return nil, 0, ErrICV
			}
		}
		switch s.cipher {
		case Cipher3DESCBC, CipherAESCBC:
			m := s.dec.Get().(cbcMode)
			m.SetIV(iv)
			m.CryptBlocks(body, body)
			s.dec.Put(m)
		case CipherAESCTR:
			s.ctr(iv, body)
		}
	}
	nh := body[len(body)-1]
	pad := int(body[len(body)-2])
	if pad > len(body)-2 {
		return nil, 0, ErrPadding
	}
	plen := len(body) - 2 - pad
	var bad byte
	for i := 0; i < pad; i++ {
		bad |= body[plen+i] ^ byte(i+1)
	}
	if bad != 0 {
		return nil, 0, ErrPadding
	}
	if nh == iphdr.ProtoNoNext {
		return nil, nh, ErrDummy
	}
	return body[:plen], nh, nil
}

// CheckLength reports whether an ESP packet of n octets (from the SPI to
// the end of the ICV) can be one of this suite's: long enough for header,
// IV, trailer and ICV (else ErrTruncated) and, for block ciphers, with
// whole blocks of ciphertext (else ErrLength). Open checks it first; a
// receiver may check it before queueing the packet for Open, so that such
// packets cost no hand-off and no cryptography.
func (s *Suite) CheckLength(n int) error {
	h := s.Headroom()
	if n < h+2+s.icvLen {
		return ErrTruncated
	}
	if s.ivLen != 0 && s.align > 4 && (n-h-s.icvLen)%s.align != 0 {
		return ErrLength
	}
	return nil
}

// SealTunnel protects the inner IP packet b[off:off+n] in tunnel mode: it
// prepends ESP (next header 4 for IPv4, 41 for IPv6) and then a 20-octet
// outer IPv4 header from outer, protocol 50, and returns the whole outer
// packet, a sub-slice of b. It needs Headroom()+20 octets before off.
func (s *Suite) SealTunnel(b []byte, off, n int, spi uint32, seq uint64, outer *iphdr.Outer) ([]byte, error) {
	if off < 0 || n < 0 || off > len(b) || n > len(b)-off {
		return nil, ErrBufferBounds
	}
	if outer == nil {
		return nil, fmt.Errorf("esp: seal tunnel without an outer header: %w", ErrIPv4)
	}
	var nh uint8
	switch iphdr.Version(b[off : off+n]) {
	case 4:
		nh = iphdr.ProtoIPIP
	case 6:
		nh = iphdr.ProtoIPv6
	default:
		return nil, ErrInnerPacket
	}
	h := s.Headroom()
	if off < h+iphdr.IPv4MinLen {
		return nil, ErrHeadroom
	}
	total := iphdr.IPv4MinLen + n + s.Overhead(n)
	if total > 0xffff {
		return nil, ErrTooBig
	}
	esp, err := s.Seal(b, off, n, spi, seq, nh)
	if err != nil {
		return nil, err
	}
	start := off - h - iphdr.IPv4MinLen
	out := b[start : start+total]
	iphdr.PutIPv4(out[:iphdr.IPv4MinLen], outer, iphdr.ProtoESP, total)
	_ = esp
	return out, nil
}

// SealTransport protects the IPv4 packet b[off:off+n] in transport mode:
// the IPv4 header moves Headroom() octets forward into the headroom, ESP
// follows it, and protocol, total length and checksum are fixed. It
// returns the packet, a sub-slice of b. Fragments are refused.
func (s *Suite) SealTransport(b []byte, off, n int, spi uint32, seq uint64) ([]byte, error) {
	if off < 0 || n < 0 || off > len(b) || n > len(b)-off {
		return nil, ErrBufferBounds
	}
	pkt := b[off : off+n]
	hl, total, err := iphdr.HeaderLen(pkt)
	if err != nil || total != n {
		return nil, ErrIPv4
	}
	if binary.BigEndian.Uint16(pkt[iphdr.OffFlagsFrag:])&0x3fff != 0 {
		return nil, ErrFragment
	}
	h := s.Headroom()
	if off < h {
		return nil, ErrHeadroom
	}
	plen := n - hl
	newTotal := hl + h + plen + s.padLen(plen) + 2 + s.icvLen
	if newTotal > 0xffff {
		return nil, ErrTooBig
	}
	if off+newTotal-h > cap(b) {
		return nil, ErrTailroom
	}
	nh := pkt[iphdr.OffProtocol]
	start := off - h
	copy(b[start:start+hl], pkt[:hl])
	if _, err := s.Seal(b, off+hl, plen, spi, seq, nh); err != nil {
		return nil, err
	}
	out := b[start : start+newTotal]
	hdr := out[:hl]
	hdr[iphdr.OffProtocol] = iphdr.ProtoESP
	binary.BigEndian.PutUint16(hdr[iphdr.OffTotalLen:], uint16(newTotal))
	iphdr.SetChecksum(hdr)
	return out, nil
}

// espIn checks that pkt is an IPv4 packet carrying ESP and returns its
// header length and the ESP packet.
func espIn(pkt []byte) (hl int, esp []byte, err error) {
	hl, total, err := iphdr.HeaderLen(pkt)
	if err != nil {
		return 0, nil, ErrIPv4
	}
	if pkt[iphdr.OffProtocol] != iphdr.ProtoESP {
		return 0, nil, ErrNotESP
	}
	if binary.BigEndian.Uint16(pkt[iphdr.OffFlagsFrag:])&0x3fff != 0 {
		return 0, nil, ErrFragment
	}
	return hl, pkt[hl:total], nil
}

// OpenTunnel opens the tunnel-mode ESP packet pkt, a whole outer IPv4
// packet, and returns the inner packet (a sub-slice of pkt). The next
// header must be 4 or 41 and match the inner packet's version. Errors as
// for Open.
func (s *Suite) OpenTunnel(pkt []byte, seq uint64) (inner []byte, err error) {
	_, esp, err := espIn(pkt)
	if err != nil {
		return nil, err
	}
	inner, nh, err := s.Open(esp, seq)
	if err != nil {
		return nil, err
	}
	switch nh {
	case iphdr.ProtoIPIP:
		if iphdr.Version(inner) != 4 {
			return nil, ErrInnerPacket
		}
	case iphdr.ProtoIPv6:
		if iphdr.Version(inner) != 6 {
			return nil, ErrInnerPacket
		}
	default:
		return nil, ErrInnerProto
	}
	return inner, nil
}

// OpenTransport opens the transport-mode ESP packet pkt, a whole IPv4
// packet, in place: the IPv4 header moves back against the payload, its
// protocol becomes the ESP next header, length and checksum are fixed. It
// returns the reconstructed packet, a sub-slice of pkt. Errors as for Open.
func (s *Suite) OpenTransport(pkt []byte, seq uint64) (ip []byte, err error) {
	hl, esp, err := espIn(pkt)
	if err != nil {
		return nil, err
	}
	payload, nh, err := s.Open(esp, seq)
	if err != nil {
		return nil, err
	}
	h := s.Headroom()
	copy(pkt[h:h+hl], pkt[:hl])
	ip = pkt[h : hl+h+len(payload)]
	hdr := ip[:hl]
	hdr[iphdr.OffProtocol] = nh
	binary.BigEndian.PutUint16(hdr[iphdr.OffTotalLen:], uint16(len(ip)))
	iphdr.SetChecksum(hdr)
	return ip, nil
}
