// Package iphdr holds the few IPv4 header facts that the ESP, AH and data
// plane code share: field offsets, the header checksum and validation.
// Everything that knows IPv4 layout lives here or in ah's mutable-field
// code, so that IPv6 support is an addition, not a rewrite.
package iphdr

import (
	"encoding/binary"
	"errors"
)

// IPv4 header field offsets and sizes.
const (
	IPv4MinLen   = 20
	OffVersion   = 0 // version (4 bits) and IHL (4 bits)
	OffTOS       = 1
	OffTotalLen  = 2
	OffID        = 4
	OffFlagsFrag = 6
	OffTTL       = 8
	OffProtocol  = 9
	OffChecksum  = 10
	OffSrc       = 12
	OffDst       = 16
)

// IP protocol numbers used by IPsec.
const (
	ProtoICMP   = 1
	ProtoIPIP   = 4 // IPv4 in IPv4: ESP/AH next header in tunnel mode
	ProtoTCP    = 6
	ProtoUDP    = 17
	ProtoIPv6   = 41
	ProtoESP    = 50
	ProtoAH     = 51
	ProtoNoNext = 59 // ESP dummy packets (RFC 4303 2.6)
)

// Errors returned by Parse.
var (
	ErrTruncated = errors.New("iphdr: truncated IPv4 header")
	ErrVersion   = errors.New("iphdr: not an IPv4 header")
	ErrIHL       = errors.New("iphdr: bad IPv4 header length")
	ErrTotalLen  = errors.New("iphdr: IPv4 total length disagrees with the packet")
)

// Version returns the IP version nibble of pkt, or 0 for an empty packet.
func Version(pkt []byte) int {
	if len(pkt) == 0 {
		return 0
	}
	return int(pkt[0] >> 4)
}

// HeaderLen checks that pkt starts with a well-formed IPv4 header whose
// total length fits in pkt and returns the header length and total length.
func HeaderLen(pkt []byte) (hlen, total int, err error) {
	if len(pkt) < IPv4MinLen {
		return 0, 0, ErrTruncated
	}
	if pkt[0]>>4 != 4 {
		return 0, 0, ErrVersion
	}
	hlen = int(pkt[0]&0x0f) * 4
	if hlen < IPv4MinLen || hlen > len(pkt) {
		return 0, 0, ErrIHL
	}
	total = int(binary.BigEndian.Uint16(pkt[OffTotalLen:]))
	if total < hlen || total > len(pkt) {
		return 0, 0, ErrTotalLen
	}
	return hlen, total, nil
}

// Checksum returns the Internet checksum (RFC 1071) of b.
func Checksum(b []byte) uint16 {
	var sum uint32
	for len(b) >= 2 {
		sum += uint32(b[0])<<8 | uint32(b[1])
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}

// SetChecksum recomputes the header checksum of the IPv4 header hdr
// (exactly the header, options included).
func SetChecksum(hdr []byte) {
	hdr[OffChecksum], hdr[OffChecksum+1] = 0, 0
	binary.BigEndian.PutUint16(hdr[OffChecksum:], Checksum(hdr))
}

// Outer describes the IPv4 header that tunnel mode puts in front of the
// ESP or AH packet.
type Outer struct {
	Src, Dst [4]byte
	TOS      uint8
	TTL      uint8  // 0 means 64
	ID       uint16 // must be non-zero for AH: the kernel fills a zero ID after the ICV was computed
	DF       bool
}

// PutIPv4 writes a 20-octet IPv4 header for o with protocol proto and total
// length total into b[:20], checksum included.
func PutIPv4(b []byte, o *Outer, proto uint8, total int) {
	_ = b[IPv4MinLen-1]
	b[0] = 0x45
	b[OffTOS] = o.TOS
	binary.BigEndian.PutUint16(b[OffTotalLen:], uint16(total))
	binary.BigEndian.PutUint16(b[OffID:], o.ID)
	if o.DF {
		b[OffFlagsFrag], b[OffFlagsFrag+1] = 0x40, 0
	} else {
		b[OffFlagsFrag], b[OffFlagsFrag+1] = 0, 0
	}
	ttl := o.TTL
	if ttl == 0 {
		ttl = 64
	}
	b[OffTTL] = ttl
	b[OffProtocol] = proto
	copy(b[OffSrc:], o.Src[:])
	copy(b[OffDst:], o.Dst[:])
	SetChecksum(b[:IPv4MinLen])
}
