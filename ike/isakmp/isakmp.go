// Package isakmp encodes and decodes ISAKMP messages as IKEv1 uses them
// (RFC 2408 section 3, the IPsec DOI of RFC 2407, NAT-T payloads of RFC
// 3947). Decoding is strict about lengths and never panics on hostile
// input; unknown payload types are kept as raw bytes (RFC 2408 5.1).
package isakmp

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// HeaderLen is the length of the ISAKMP header.
const HeaderLen = 28

// MaxPayloads bounds the payloads of one message.
const MaxPayloads = 64

// ExchangeType is the ISAKMP exchange type.
type ExchangeType uint8

// Exchange types (RFC 2408 3.1, RFC 2409).
const (
	ExchBase       ExchangeType = 1
	ExchMain       ExchangeType = 2 // identity protection
	ExchAuthOnly   ExchangeType = 3
	ExchAggressive ExchangeType = 4
	ExchInfo       ExchangeType = 5
	ExchQuick      ExchangeType = 32
)

// String names the exchange type as strongSwan logs it (ID_PROT,
// QUICK_MODE ...), or EXCHANGE_n.
func (x ExchangeType) String() string {
	switch x {
	case ExchBase:
		return "BASE"
	case ExchMain:
		return "ID_PROT"
	case ExchAuthOnly:
		return "AUTH_ONLY"
	case ExchAggressive:
		return "AGGRESSIVE"
	case ExchInfo:
		return "INFORMATIONAL"
	case ExchQuick:
		return "QUICK_MODE"
	}
	return fmt.Sprintf("EXCHANGE_%d", uint8(x))
}

// PayloadType is the type of an ISAKMP payload.
type PayloadType uint8

// Payload types (RFC 2408 3.1, RFC 3947).
const (
	PayloadNone       PayloadType = 0
	PayloadSA         PayloadType = 1
	PayloadProposal   PayloadType = 2
	PayloadTransform  PayloadType = 3
	PayloadKE         PayloadType = 4
	PayloadID         PayloadType = 5
	PayloadCert       PayloadType = 6
	PayloadCertReq    PayloadType = 7
	PayloadHash       PayloadType = 8
	PayloadSig        PayloadType = 9
	PayloadNonce      PayloadType = 10
	PayloadNotify     PayloadType = 11
	PayloadDelete     PayloadType = 12
	PayloadVendorID   PayloadType = 13
	PayloadNATD       PayloadType = 20
	PayloadNATOA      PayloadType = 21
	PayloadNATDDraft  PayloadType = 130
	PayloadNATOADraft PayloadType = 131
)

var payloadNames = map[PayloadType]string{
	PayloadNone: "NONE", PayloadSA: "SA", PayloadProposal: "P", PayloadTransform: "T", PayloadKE: "KE",
	PayloadID: "ID", PayloadCert: "CERT", PayloadCertReq: "CERTREQ", PayloadHash: "HASH", PayloadSig: "SIG",
	PayloadNonce: "No", PayloadNotify: "N", PayloadDelete: "D", PayloadVendorID: "V", PayloadNATD: "NAT-D",
	PayloadNATOA: "NAT-OA", PayloadNATDDraft: "NAT-D(draft)", PayloadNATOADraft: "NAT-OA(draft)",
}

// String names the payload type in the short RFC 2408 notation (SA, KE,
// No, N, D, V, NAT-D ...), or PAYLOAD_n.
func (t PayloadType) String() string {
	if n, ok := payloadNames[t]; ok {
		return n
	}
	return fmt.Sprintf("PAYLOAD_%d", uint8(t))
}

// Header flags.
const (
	FlagEncryption uint8 = 1
	FlagCommit     uint8 = 2
	FlagAuthOnly   uint8 = 4
)

// ProtocolID is an ISAKMP/IPsec DOI protocol identifier.
type ProtocolID uint8

// Protocol IDs (RFC 2407 4.4.1).
const (
	ProtoISAKMP ProtocolID = 1
	ProtoAH     ProtocolID = 2
	ProtoESP    ProtocolID = 3
	ProtoIPComp ProtocolID = 4
)

// String names the protocol (ISAKMP, AH, ESP, IPCOMP), or PROTO_n.
func (p ProtocolID) String() string {
	switch p {
	case ProtoISAKMP:
		return "ISAKMP"
	case ProtoAH:
		return "AH"
	case ProtoESP:
		return "ESP"
	case ProtoIPComp:
		return "IPCOMP"
	}
	return fmt.Sprintf("PROTO_%d", uint8(p))
}

// Errors of the decoder.
var (
	ErrTruncated = errors.New("isakmp: truncated")
	ErrVersion   = errors.New("isakmp: unsupported major version")
	ErrLength    = errors.New("isakmp: bad length")
	ErrTooMany   = errors.New("isakmp: too many payloads")
	// ErrUnsupported reports a well-formed structure this package does
	// not parse: an SA of another DOI than IPsec, or with labelled
	// (secrecy/integrity) situations.
	ErrUnsupported = errors.New("isakmp: unsupported")
	// ErrInvalid reports a payload Validate refuses to encode.
	ErrInvalid = errors.New("isakmp: cannot encode")
)

// Header is the ISAKMP header.
type Header struct {
	ICookie, RCookie [8]byte
	Next             PayloadType
	Version          uint8 // 0x10 for IKEv1
	Exchange         ExchangeType
	Flags            uint8
	MessageID        uint32
	Length           uint32
}

// ParseHeader reads the header of b. The datagram must hold at least
// Length octets; octets after Length are ignored.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if len(b) < HeaderLen {
		return h, ErrTruncated
	}
	copy(h.ICookie[:], b[0:8])
	copy(h.RCookie[:], b[8:16])
	h.Next = PayloadType(b[16])
	h.Version = b[17]
	h.Exchange = ExchangeType(b[18])
	h.Flags = b[19]
	h.MessageID = binary.BigEndian.Uint32(b[20:24])
	h.Length = binary.BigEndian.Uint32(b[24:28])
	if h.Version>>4 != 1 {
		return h, ErrVersion
	}
	if h.Length < HeaderLen || uint64(h.Length) > uint64(len(b)) {
		return h, fmt.Errorf("%w: header says %d octets, datagram has %d", ErrLength, h.Length, len(b))
	}
	return h, nil
}

// Put writes the header into b[:HeaderLen].
func (h *Header) Put(b []byte) {
	copy(b[0:8], h.ICookie[:])
	copy(b[8:16], h.RCookie[:])
	b[16] = byte(h.Next)
	b[17] = h.Version
	b[18] = byte(h.Exchange)
	b[19] = h.Flags
	binary.BigEndian.PutUint32(b[20:24], h.MessageID)
	binary.BigEndian.PutUint32(b[24:28], h.Length)
}

// RawPayload is one payload of a chain, undecoded.
type RawPayload struct {
	Type PayloadType
	// Off is the offset of its generic header in the input.
	Off int
	// Body is the payload after its generic header; it aliases the input.
	Body []byte
}

// SplitPayloads walks a payload chain starting with type first. It stops
// at next payload 0 and returns end, the offset after the last payload;
// bytes after end (the padding of a decrypted message) are not an error.
// More than MaxPayloads payloads is ErrTooMany.
func SplitPayloads(first PayloadType, b []byte) ([]RawPayload, int, error) {
	return splitN(first, b, MaxPayloads)
}

// maxInner bounds the proposals of an SA and the transforms of a
// proposal: the transform count is one octet, and strongSwan's IKEv1
// default proposal alone has dozens of transforms.
const maxInner = 255

func splitN(first PayloadType, b []byte, max int) ([]RawPayload, int, error) {
	var ps []RawPayload
	off := 0
	t := first
	for t != PayloadNone {
		if len(ps) >= max {
			return nil, 0, fmt.Errorf("%w: more than %d", ErrTooMany, max)
		}
		if len(b)-off < 4 {
			return nil, 0, fmt.Errorf("%w: payload %s header at offset %d", ErrTruncated, t, off)
		}
		next := PayloadType(b[off])
		l := int(binary.BigEndian.Uint16(b[off+2:]))
		if l < 4 {
			return nil, 0, fmt.Errorf("%w: payload %s length %d", ErrLength, t, l)
		}
		if l > len(b)-off {
			return nil, 0, fmt.Errorf("%w: payload %s of %d octets at offset %d runs past the message", ErrTruncated, t, l, off)
		}
		ps = append(ps, RawPayload{Type: t, Off: off, Body: b[off+4 : off+l]})
		off += l
		t = next
	}
	return ps, off, nil
}
