// Package ah seals and opens IPv4 packets with the IP Authentication Header
// (RFC 4302) for one Security Association, in transport and tunnel mode.
//
// The Integrity Check Value covers, in this order (RFC 4302 section 3.3.3):
//
//   - the IPv4 header with its mutable fields (TOS, flags and fragment
//     offset, TTL, header checksum) and its mutable options (Appendix A)
//     zeroed; for a packet with a loose or strict source route the sender
//     uses the final destination for the Destination Address;
//   - the AH header with the ICV field zeroed (padding included as sent);
//   - the payload;
//   - with extended sequence numbers, the high 32 bits of the sequence
//     number (sections 2.5.1 and 3.3.3.5), which are not sent.
//
// The received packet is never modified to compute the ICV: zeroed copies of
// the headers go through a small pooled scratch buffer, so Seal and Open
// allocate nothing per packet. A Suite is safe for concurrent use.
package ah

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"sync"

	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/integ"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
)

// Wire layout of the AH header (RFC 4302 section 2).
const (
	offNextHeader = 0
	offPayloadLen = 1
	offReserved   = 2
	offSPI        = 4
	offSeq        = 8
	fixedLen      = 12 // next header .. sequence number

	maxIPv4HeaderLen = 60
	maxICVLen        = 32
	maxAHLen         = fixedLen + maxICVLen + 8 // ICV plus at most 8-octet padding
	scratchLen       = maxIPv4HeaderLen + maxAHLen + 4
)

// The errors of this package. Each carries a drop reason (drop.ReasonOf).
var (
	ErrTruncated     = drop.New(drop.Malformed, "ah: truncated packet")
	ErrIPv4          = drop.New(drop.Malformed, "ah: bad IPv4 header")
	ErrNotAH         = drop.New(drop.Malformed, "ah: IPv4 protocol is not AH (51)")
	ErrFragment      = drop.New(drop.Malformed, "ah: IPv4 fragment (AH applies to whole datagrams only)")
	ErrPayloadLen    = drop.New(drop.Malformed, "ah: AH payload length does not match the SA's ICV")
	ErrOptions       = drop.New(drop.Malformed, "ah: malformed IPv4 options")
	ErrSeq           = drop.New(drop.Malformed, "ah: sequence number does not match the wire")
	ErrInnerProto    = drop.New(drop.Malformed, "ah: tunnel-mode next header is not IPv4 (4) or IPv6 (41)")
	ErrInnerPacket   = drop.New(drop.Malformed, "ah: inner packet version does not match the next header")
	ErrICV           = drop.New(drop.ICV, "ah: ICV mismatch")
	ErrHeadroom      = drop.New(drop.NoBuffer, "ah: not enough headroom before the packet")
	ErrTooBig        = drop.New(drop.TooBig, "ah: packet would exceed 65535 octets")
	ErrPacketLength  = drop.New(drop.Malformed, "ah: IPv4 total length disagrees with the buffer")
	ErrBufferBounds  = drop.New(drop.Malformed, "ah: packet bounds outside the buffer")
	errScratchTooBig = drop.New(drop.Malformed, "ah: header too long for the scratch buffer")
)

// Config describes one AH SA's algorithm and options.
type Config struct {
	// Integ is the integrity algorithm (internal/integ).
	Integ integ.Algorithm
	// Key is the integrity key, exactly Integ.KeyLen() octets.
	Key []byte
	// ESN enables extended sequence numbers: the high 32 bits of the
	// 64-bit sequence number are appended to the ICV input (RFC 4302
	// sections 2.5.1 and 3.3.3.5); only the low 32 bits go on the wire.
	ESN bool
	// Align8 makes the suite SEND AH padded to a multiple of 8 octets on
	// IPv4, as Linux does for an SA without `flag align4`. The default is
	// RFC 4302's 4-octet alignment. Open accepts both forms regardless.
	Align8 bool
}

// Suite seals and opens AH packets for one SA. It is safe for concurrent
// use and allocates nothing per packet.
type Suite struct {
	mac     *integ.MAC
	icvLen  int
	authLen int // ICV + padding that this suite sends
	hdrLen  int // fixedLen + authLen
	auth4   int // ICV field length with 4-octet alignment (accepted)
	auth8   int // ICV field length with 8-octet alignment (accepted)
	esn     bool
	idBase  uint32 // seeds the IPv4 IDs that Seal fills in
}

// Wipe zeroes the Suite's copy of the integrity key (integ.MAC.Wipe: the
// HMAC pads inside crypto/hmac are not reachable). ICVs computed after it
// are wrong: call it once the SA is out of use.
func (s *Suite) Wipe() { s.mac.Wipe() }

// Wiped reports whether Wipe was called.
func (s *Suite) Wiped() bool { return s.mac.Wiped() }

// NewSuite checks cfg and returns a Suite for it.
func NewSuite(cfg Config) (*Suite, error) {
	if cfg.Integ == integ.None {
		return nil, fmt.Errorf("ah: AH needs an integrity algorithm")
	}
	mac, err := integ.New(cfg.Integ, cfg.Key)
	if err != nil {
		return nil, fmt.Errorf("ah: new suite: %w", err)
	}
	icv := mac.ICVLen()
	if icv > maxICVLen {
		return nil, fmt.Errorf("ah: ICV of %d octets is longer than %d", icv, maxICVLen)
	}
	s := &Suite{
		mac:    mac,
		icvLen: icv,
		auth4:  align(fixedLen+icv, 4) - fixedLen,
		auth8:  align(fixedLen+icv, 8) - fixedLen,
		esn:    cfg.ESN,
	}
	s.authLen = s.auth4
	if cfg.Align8 {
		s.authLen = s.auth8
	}
	s.hdrLen = fixedLen + s.authLen
	var seed [4]byte
	if _, err := rand.Read(seed[:]); err != nil {
		return nil, fmt.Errorf("ah: seeding IPv4 IDs: %w", err)
	}
	s.idBase = binary.BigEndian.Uint32(seed[:])
	return s, nil
}

func align(n, a int) int { return (n + a - 1) / a * a }

// HeaderLen is the length of the AH header that this suite sends:
// 12 octets, the ICV and the padding.
func (s *Suite) HeaderLen() int { return s.hdrLen }

// ICVLen is the length of the ICV in octets (without padding).
func (s *Suite) ICVLen() int { return s.icvLen }

// ParseHeader finds the AH header in the whole IPv4 packet ip and returns
// its SPI and (low 32 bits of the) sequence number. It checks the IPv4
// header, that the protocol is AH, that the packet is not a fragment and
// that the AH header, as its payload length field gives it, fits in the
// packet; the ICV length is checked later, by the SA's Suite.
func ParseHeader(ip []byte) (spi, seq uint32, err error) {
	hl, total, err := ipv4AH(ip)
	if err != nil {
		return 0, 0, err
	}
	ah := ip[hl:total]
	if ahLen := (int(ah[offPayloadLen]) + 2) * 4; ahLen > len(ah) {
		return 0, 0, ErrTruncated
	}
	return binary.BigEndian.Uint32(ah[offSPI:]), binary.BigEndian.Uint32(ah[offSeq:]), nil
}

// ipv4AH validates the IPv4 header of a received AH packet and returns its
// header and total length, with at least fixedLen octets after the header.
func ipv4AH(ip []byte) (hl, total int, err error) {
	hl, total, err = iphdr.HeaderLen(ip)
	if err != nil {
		if err == iphdr.ErrTruncated {
			return 0, 0, ErrTruncated
		}
		return 0, 0, ErrIPv4
	}
	if ip[iphdr.OffProtocol] != iphdr.ProtoAH {
		return 0, 0, ErrNotAH
	}
	if isFragment(ip) {
		return 0, 0, ErrFragment
	}
	if total-hl < fixedLen {
		return 0, 0, ErrTruncated
	}
	return hl, total, nil
}

// isFragment reports whether the IPv4 header has MF set or a non-zero
// fragment offset.
func isFragment(ip []byte) bool {
	return binary.BigEndian.Uint16(ip[iphdr.OffFlagsFrag:])&0x3fff != 0
}

// scratch holds the zeroed copies of the IPv4 and AH headers (and the ESN
// high bits) fed to the MAC. Pooled: a stack array passed to the hash's
// Write through an interface would escape and allocate per packet.
type scratch struct{ b [scratchLen]byte }

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// ipID returns a non-zero IPv4 ID for the packet with sequence number seq:
// distinct for 65535 consecutive packets of the SA, with no shared state.
func (s *Suite) ipID(seq uint64) uint16 {
	return uint16((uint64(s.idBase)+seq)%65535) + 1
}

// icv computes (icv != nil: Sum into icv) or checks (want: Verify) the ICV
// of the packet made of the IPv4 header hdr, the AH header ah (whose first
// s.icvLen octets of authentication data are taken as zero) and payload.
// sending selects the sender's handling of source routes.
func (s *Suite) icv(hdr, ah, payload []byte, seqHi uint32, sending bool, out, want []byte) (bool, error) {
	if len(hdr) > maxIPv4HeaderLen || len(ah) > maxAHLen || len(ah) < fixedLen+s.icvLen {
		return false, errScratchTooBig
	}
	sc := scratchPool.Get().(*scratch)
	defer scratchPool.Put(sc)
	b := sc.b[:]
	if err := zeroMutable(b[:len(hdr)], hdr, sending); err != nil {
		return false, err
	}
	n := len(hdr)
	copy(b[n:], ah[:fixedLen])
	clear(b[n+fixedLen : n+fixedLen+s.icvLen])
	copy(b[n+fixedLen+s.icvLen:], ah[fixedLen+s.icvLen:])
	n += len(ah)
	st := s.mac.Begin()
	st.Write(b[:n])
	st.Write(payload)
	if s.esn {
		binary.BigEndian.PutUint32(b[n:], seqHi)
		st.Write(b[n : n+4])
	}
	if out != nil {
		st.Sum(out)
		return true, nil
	}
	return st.Verify(want), nil
}

// SealTransport protects the IPv4 packet b[off:off+n] in transport mode: it
// moves the IPv4 header s.HeaderLen() octets forward into the headroom
// before off, inserts the AH header after it, sets the protocol to AH, the
// total length and the checksum, and returns the packet, a sub-slice of b.
//
// IPv4 ID: a raw socket with IP_HDRINCL fills in an ID of 0 after the ICV
// was computed, which would break it (the ID is immutable in AH). So if the
// packet's ID is 0, SealTransport first sets a non-zero one derived from
// seq (distinct for 65535 consecutive packets of the SA).
//
// Only the low 32 bits of seq go on the wire; with ESN the high 32 bits are
// covered by the ICV. Fragments are refused (AH applies to whole datagrams).
func (s *Suite) SealTransport(b []byte, off, n int, spi uint32, seq uint64) ([]byte, error) {
	if off < 0 || n < 0 || off > len(b) || n > len(b)-off {
		return nil, ErrBufferBounds
	}
	pkt := b[off : off+n]
	hl, total, err := iphdr.HeaderLen(pkt)
	if err != nil {
		return nil, fmt.Errorf("ah: seal transport: %w", ErrIPv4)
	}
	if total != n {
		return nil, ErrPacketLength
	}
	if isFragment(pkt) {
		return nil, ErrFragment
	}
	if err := checkOptions(pkt[:hl]); err != nil {
		// Checked before anything moves: the header copy below may
		// overlap the packet.
		return nil, err
	}
	if off < s.hdrLen {
		return nil, ErrHeadroom
	}
	newTotal := total + s.hdrLen
	if newTotal > 0xffff {
		return nil, ErrTooBig
	}
	start := off - s.hdrLen
	nh := pkt[iphdr.OffProtocol]
	copy(b[start:start+hl], pkt[:hl])
	out := b[start : off+n]
	hdr := out[:hl]
	if binary.BigEndian.Uint16(hdr[iphdr.OffID:]) == 0 {
		binary.BigEndian.PutUint16(hdr[iphdr.OffID:], s.ipID(seq))
	}
	hdr[iphdr.OffProtocol] = iphdr.ProtoAH
	binary.BigEndian.PutUint16(hdr[iphdr.OffTotalLen:], uint16(newTotal))
	ah := out[hl : hl+s.hdrLen]
	s.putAH(ah, nh, spi, seq)
	if _, err := s.icv(hdr, ah, out[hl+s.hdrLen:], uint32(seq>>32), true, ah[fixedLen:fixedLen+s.icvLen], nil); err != nil {
		return nil, fmt.Errorf("ah: seal transport: %w", err)
	}
	iphdr.SetChecksum(hdr)
	return out, nil
}

// SealTunnel protects the inner packet b[off:off+n] in tunnel mode: it
// prepends the AH header and a 20-octet outer IPv4 header made from outer
// (iphdr.PutIPv4) and returns the packet, a sub-slice of b. The AH next
// header is 4 for an IPv4 inner packet and 41 for IPv6.
//
// If outer.ID is 0, the outer header gets a non-zero ID derived from seq
// instead (see SealTransport); outer itself is not modified.
func (s *Suite) SealTunnel(b []byte, off, n int, spi uint32, seq uint64, outer *iphdr.Outer) ([]byte, error) {
	if off < 0 || n < 0 || off > len(b) || n > len(b)-off {
		return nil, ErrBufferBounds
	}
	if outer == nil {
		return nil, fmt.Errorf("ah: seal tunnel: %w", ErrIPv4)
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
	need := iphdr.IPv4MinLen + s.hdrLen
	if off < need {
		return nil, ErrHeadroom
	}
	total := n + need
	if total > 0xffff {
		return nil, ErrTooBig
	}
	start := off - need
	out := b[start : off+n]
	o := *outer
	if o.ID == 0 {
		o.ID = s.ipID(seq)
	}
	hdr := out[:iphdr.IPv4MinLen]
	iphdr.PutIPv4(hdr, &o, iphdr.ProtoAH, total)
	ah := out[iphdr.IPv4MinLen:need]
	s.putAH(ah, nh, spi, seq)
	if _, err := s.icv(hdr, ah, out[need:], uint32(seq>>32), true, ah[fixedLen:fixedLen+s.icvLen], nil); err != nil {
		return nil, fmt.Errorf("ah: seal tunnel: %w", err)
	}
	return out, nil
}

// putAH writes the AH header this suite sends into ah (s.hdrLen octets),
// with a zero ICV and zero padding.
func (s *Suite) putAH(ah []byte, nh uint8, spi uint32, seq uint64) {
	ah[offNextHeader] = nh
	ah[offPayloadLen] = uint8(s.hdrLen/4 - 2)
	ah[offReserved], ah[offReserved+1] = 0, 0
	binary.BigEndian.PutUint32(ah[offSPI:], spi)
	binary.BigEndian.PutUint32(ah[offSeq:], uint32(seq))
	clear(ah[fixedLen:s.hdrLen])
}

// open checks pkt, a whole received IPv4 packet carrying AH, and its ICV.
// It returns the IPv4 header length, the AH header length and the total
// length.
func (s *Suite) open(pkt []byte, seq uint64) (hl, ahLen, total int, err error) {
	hl, total, err = ipv4AH(pkt)
	if err != nil {
		return 0, 0, 0, err
	}
	ah := pkt[hl:total]
	ahLen = (int(ah[offPayloadLen]) + 2) * 4
	if ahLen > len(ah) {
		return 0, 0, 0, ErrTruncated
	}
	if auth := ahLen - fixedLen; auth != s.auth4 && auth != s.auth8 {
		return 0, 0, 0, ErrPayloadLen
	}
	if binary.BigEndian.Uint32(ah[offSeq:]) != uint32(seq) {
		return 0, 0, 0, ErrSeq
	}
	ok, err := s.icv(pkt[:hl], ah[:ahLen], ah[ahLen:], uint32(seq>>32), false, nil, ah[fixedLen:fixedLen+s.icvLen])
	if err != nil {
		return 0, 0, 0, err
	}
	if !ok {
		return 0, 0, 0, ErrICV
	}
	return hl, ahLen, total, nil
}

// OpenTransport verifies the transport-mode AH packet pkt (a whole IPv4
// packet) whose full sequence number, as the replay window inferred it, is
// seq (its low 32 bits must equal the wire's). It accepts the AH header
// aligned to 4 octets and padded to 8 octets (Linux without align4). On
// success it removes AH in place (the IPv4 header moves back, the protocol
// becomes the AH next header, total length and checksum are fixed) and
// returns the IPv4 packet, a sub-slice of pkt. On failure pkt is unchanged.
// The ICV is compared in constant time.
func (s *Suite) OpenTransport(pkt []byte, seq uint64) (ip []byte, err error) {
	hl, ahLen, total, err := s.open(pkt, seq)
	if err != nil {
		return nil, err
	}
	nh := pkt[hl+offNextHeader]
	copy(pkt[ahLen:ahLen+hl], pkt[:hl])
	ip = pkt[ahLen:total]
	hdr := ip[:hl]
	hdr[iphdr.OffProtocol] = nh
	binary.BigEndian.PutUint16(hdr[iphdr.OffTotalLen:], uint16(total-ahLen))
	iphdr.SetChecksum(hdr)
	return ip, nil
}

// OpenTunnel verifies the tunnel-mode AH packet pkt (see OpenTransport)
// and returns the inner packet, a sub-slice of pkt. The AH next header must
// be 4 (IPv4) or 41 (IPv6) and match the inner packet's version.
func (s *Suite) OpenTunnel(pkt []byte, seq uint64) (inner []byte, err error) {
	hl, ahLen, total, err := s.open(pkt, seq)
	if err != nil {
		return nil, err
	}
	inner = pkt[hl+ahLen : total]
	switch pkt[hl+offNextHeader] {
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
