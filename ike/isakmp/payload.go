package isakmp

import (
	"encoding/binary"
	"fmt"
)

// Payload is a decoded payload.
type Payload interface {
	// Type is the payload type that goes into the previous next-payload
	// field.
	Type() PayloadType
}

// SA is a Security Association payload (RFC 2408 3.4) with its proposals.
type SA struct {
	DOI       uint32 // 1: IPsec
	Situation uint32 // 1: SIT_IDENTITY_ONLY
	Proposals []Proposal
}

// Proposal is a proposal of an SA payload (RFC 2408 3.5).
type Proposal struct {
	Num        uint8
	Protocol   ProtocolID
	SPI        []byte
	Transforms []Transform
}

// Transform is a transform of a proposal (RFC 2408 3.6).
type Transform struct {
	Num   uint8
	ID    uint8
	Attrs []Attr
}

// Get returns the first attribute of type typ.
func (t *Transform) Get(typ uint16) (Attr, bool) {
	for _, a := range t.Attrs {
		if a.Type == typ {
			return a, true
		}
	}
	return Attr{}, false
}

// Attr is a data attribute (RFC 2408 3.3). A Value of exactly two octets
// is encoded in the basic (TV) form, anything else in the variable (TLV)
// form.
type Attr struct {
	Type  uint16
	Value []byte
}

// Basic returns a basic (TV) attribute.
func Basic(t, v uint16) Attr { return Attr{Type: t, Value: []byte{byte(v >> 8), byte(v)}} }

// Var returns a variable-length attribute.
func Var(t uint16, v []byte) Attr { return Attr{Type: t, Value: v} }

// Uint returns a basic attribute if v fits in 16 bits, else a variable
// one with the minimal 4 or 8 octets.
func Uint(t uint16, v uint64) Attr {
	switch {
	case v <= 0xffff:
		return Basic(t, uint16(v))
	case v <= 0xffffffff:
		return Attr{Type: t, Value: binary.BigEndian.AppendUint32(nil, uint32(v))}
	}
	return Attr{Type: t, Value: binary.BigEndian.AppendUint64(nil, v)}
}

// Uint reads the attribute as a big-endian number of 1 to 8 octets.
func (a Attr) Uint() (uint64, bool) {
	if len(a.Value) == 0 || len(a.Value) > 8 {
		return 0, false
	}
	var v uint64
	for _, c := range a.Value {
		v = v<<8 | uint64(c)
	}
	return v, true
}

// KE is a Key Exchange payload.
type KE struct{ Data []byte }

// Nonce is a Nonce payload.
type Nonce struct{ Data []byte }

// Hash is a Hash payload.
type Hash struct{ Data []byte }

// Sig is a Signature payload.
type Sig struct{ Data []byte }

// VendorID is a Vendor ID payload.
type VendorID struct{ Data []byte }

// ID is an Identification payload (RFC 2407 4.6.2).
type ID struct {
	IDType   uint8
	Protocol uint8
	Port     uint16
	Data     []byte
}

// ID types (RFC 2407 4.6.2.1).
const (
	IDIPv4Addr   = 1
	IDFQDN       = 2
	IDUserFQDN   = 3
	IDIPv4Subnet = 4
	IDIPv6Addr   = 5
	IDIPv6Subnet = 6
	IDIPv4Range  = 7
	IDIPv6Range  = 8
	IDDERASN1DN  = 9
	IDDERASN1GN  = 10
	IDKeyID      = 11
)

// Cert is a Certificate payload.
type Cert struct {
	Encoding uint8
	Data     []byte
}

// CertReq is a Certificate Request payload.
type CertReq struct {
	Encoding uint8
	Data     []byte
}

// Notify is a Notification payload (RFC 2408 3.14). The notify message
// type is the field Kind, as Type is the Payload method.
type Notify struct {
	DOI      uint32
	Protocol ProtocolID
	Kind     NotifyType
	SPI      []byte
	Data     []byte
}

// Delete is a Delete payload (RFC 2408 3.15).
type Delete struct {
	DOI      uint32
	Protocol ProtocolID
	SPISize  uint8
	SPIs     [][]byte
}

// NATD is a NAT-Discovery payload (RFC 3947 3.2); Draft selects the
// pre-RFC payload number 130.
type NATD struct {
	Draft bool
	Hash  []byte
}

// NATOA is a NAT Original Address payload (RFC 3947 5.2).
type NATOA struct {
	Draft  bool
	IDType uint8
	Addr   []byte
}

// Unknown is a payload of a type this package does not decode.
type Unknown struct {
	T    PayloadType
	Data []byte
}

// Type is PayloadSA.
func (*SA) Type() PayloadType { return PayloadSA }

// Type is PayloadKE.
func (*KE) Type() PayloadType { return PayloadKE }

// Type is PayloadNonce.
func (*Nonce) Type() PayloadType { return PayloadNonce }

// Type is PayloadHash.
func (*Hash) Type() PayloadType { return PayloadHash }

// Type is PayloadSig.
func (*Sig) Type() PayloadType { return PayloadSig }

// Type is PayloadVendorID.
func (*VendorID) Type() PayloadType { return PayloadVendorID }

// Type is PayloadID.
func (*ID) Type() PayloadType { return PayloadID }

// Type is PayloadCert.
func (*Cert) Type() PayloadType { return PayloadCert }

// Type is PayloadCertReq.
func (*CertReq) Type() PayloadType { return PayloadCertReq }

// Type is PayloadNotify.
func (*Notify) Type() PayloadType { return PayloadNotify }

// Type is PayloadDelete.
func (*Delete) Type() PayloadType { return PayloadDelete }

// Type is the payload type the Unknown payload was received with.
func (u *Unknown) Type() PayloadType { return u.T }

// Type of a NAT-D payload (20, or 130 in the drafts).
func (n *NATD) Type() PayloadType {
	if n.Draft {
		return PayloadNATDDraft
	}
	return PayloadNATD
}

// Type of a NAT-OA payload (21, or 131 in the drafts).
func (n *NATOA) Type() PayloadType {
	if n.Draft {
		return PayloadNATOADraft
	}
	return PayloadNATOA
}

func clone(b []byte) []byte { return append([]byte(nil), b...) }

// Decode decodes one payload with strict inner length checks.
func Decode(rp RawPayload) (Payload, error) {
	b := rp.Body
	switch rp.Type {
	case PayloadSA:
		return decodeSA(b)
	case PayloadKE:
		return &KE{Data: clone(b)}, nil
	case PayloadNonce:
		return &Nonce{Data: clone(b)}, nil
	case PayloadHash:
		return &Hash{Data: clone(b)}, nil
	case PayloadSig:
		return &Sig{Data: clone(b)}, nil
	case PayloadVendorID:
		return &VendorID{Data: clone(b)}, nil
	case PayloadID:
		if len(b) < 4 {
			return nil, fmt.Errorf("%w: ID payload of %d octets", ErrLength, len(b))
		}
		id := &ID{IDType: b[0], Protocol: b[1], Port: binary.BigEndian.Uint16(b[2:]), Data: clone(b[4:])}
		if n := idAddrLen(id.IDType); n >= 0 && len(id.Data) != n {
			return nil, fmt.Errorf("%w: ID of type %d with %d octets of data, want %d", ErrLength, id.IDType, len(id.Data), n)
		}
		return id, nil
	case PayloadCert, PayloadCertReq:
		if len(b) < 1 {
			return nil, fmt.Errorf("%w: %s payload without encoding", ErrLength, rp.Type)
		}
		if rp.Type == PayloadCert {
			return &Cert{Encoding: b[0], Data: clone(b[1:])}, nil
		}
		return &CertReq{Encoding: b[0], Data: clone(b[1:])}, nil
	case PayloadNotify:
		if len(b) < 8 {
			return nil, fmt.Errorf("%w: notify payload of %d octets", ErrLength, len(b))
		}
		n := &Notify{DOI: binary.BigEndian.Uint32(b), Protocol: ProtocolID(b[4]), Kind: NotifyType(binary.BigEndian.Uint16(b[6:]))}
		spi := int(b[5])
		if 8+spi > len(b) {
			return nil, fmt.Errorf("%w: notify SPI of %d octets in %d", ErrLength, spi, len(b))
		}
		n.SPI, n.Data = clone(b[8:8+spi]), clone(b[8+spi:])
		return n, nil
	case PayloadDelete:
		if len(b) < 8 {
			return nil, fmt.Errorf("%w: delete payload of %d octets", ErrLength, len(b))
		}
		d := &Delete{DOI: binary.BigEndian.Uint32(b), Protocol: ProtocolID(b[4]), SPISize: b[5]}
		count := int(binary.BigEndian.Uint16(b[6:]))
		rest := b[8:]
		if count*int(d.SPISize) != len(rest) || (count > 0 && d.SPISize == 0) {
			return nil, fmt.Errorf("%w: delete of %d SPIs of %d octets in %d octets", ErrLength, count, d.SPISize, len(rest))
		}
		for i := 0; i < count; i++ {
			d.SPIs = append(d.SPIs, clone(rest[i*int(d.SPISize):(i+1)*int(d.SPISize)]))
		}
		return d, nil
	case PayloadNATD, PayloadNATDDraft:
		return &NATD{Draft: rp.Type == PayloadNATDDraft, Hash: clone(b)}, nil
	case PayloadNATOA, PayloadNATOADraft:
		if len(b) < 4 {
			return nil, fmt.Errorf("%w: NAT-OA payload of %d octets", ErrLength, len(b))
		}
		n := &NATOA{Draft: rp.Type == PayloadNATOADraft, IDType: b[0], Addr: clone(b[4:])}
		if (n.IDType != IDIPv4Addr || len(n.Addr) != 4) && (n.IDType != IDIPv6Addr || len(n.Addr) != 16) {
			return nil, fmt.Errorf("%w: NAT-OA of ID type %d with %d octets of address", ErrLength, n.IDType, len(n.Addr))
		}
		return n, nil
	}
	return &Unknown{T: rp.Type, Data: clone(b)}, nil
}

// MaxProposals and MaxSATransforms bound what one SA payload may carry,
// checked before any transform is decoded. Real peers stay well below:
// strongSwan puts a whole ike= or esp= line into one proposal with one
// transform per combination of cipher, integrity and group (a long line
// makes a hundred or two, and the count field caps a proposal at 255);
// Libreswan and racoon send a few dozen. 512 transforms of ordinary
// attributes take about 20 KB, and matching them costs microseconds.
const (
	MaxProposals    = 32
	MaxSATransforms = 512
)

func decodeSA(b []byte) (*SA, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: SA payload of %d octets", ErrLength, len(b))
	}
	sa := &SA{DOI: binary.BigEndian.Uint32(b), Situation: binary.BigEndian.Uint32(b[4:])}
	// The situation's format is the DOI's: for the IPsec DOI (and the
	// generic ISAKMP DOI 0 of phase 1, which strongSwan and Linux
	// racoon treat alike) it is 4 octets unless SIT_SECRECY or
	// SIT_INTEGRITY add labelled-domain fields, which IKEv1 peers never
	// send and this package does not parse.
	if sa.DOI > DOIIPsec {
		return nil, fmt.Errorf("%w: SA of DOI %d", ErrUnsupported, sa.DOI)
	}
	if sa.Situation&(SitSecrecy|SitIntegrity) != 0 {
		return nil, fmt.Errorf("%w: SA situation %#x (labelled domains)", ErrUnsupported, sa.Situation)
	}
	// Proposals: a chain of generic payloads of type 2 (RFC 2408 3.4).
	rest := b[8:]
	ps, end, err := splitN(PayloadProposal, rest, maxInner)
	if err != nil {
		return nil, fmt.Errorf("SA payload: %w", err)
	}
	if end != len(rest) {
		return nil, fmt.Errorf("%w: %d octets after the last proposal", ErrLength, len(rest)-end)
	}
	// Cheap limits before the transforms are decoded: the proposal
	// count, and the transform counts their headers announce.
	if len(ps) > MaxProposals {
		return nil, fmt.Errorf("%w: %d proposals in one SA payload (at most %d)", ErrTooMany, len(ps), MaxProposals)
	}
	total := 0
	for _, rp := range ps {
		if len(rp.Body) >= 4 {
			total += int(rp.Body[3])
		}
	}
	if total > MaxSATransforms {
		return nil, fmt.Errorf("%w: %d transforms in one SA payload (at most %d)", ErrTooMany, total, MaxSATransforms)
	}
	for _, rp := range ps {
		if rp.Type != PayloadProposal {
			return nil, fmt.Errorf("%w: payload %s inside SA", ErrLength, rp.Type)
		}
		p, err := decodeProposal(rp.Body)
		if err != nil {
			return nil, err
		}
		sa.Proposals = append(sa.Proposals, p)
	}
	return sa, nil
}

func decodeProposal(b []byte) (Proposal, error) {
	var p Proposal
	if len(b) < 4 {
		return p, fmt.Errorf("%w: proposal of %d octets", ErrLength, len(b))
	}
	p.Num, p.Protocol = b[0], ProtocolID(b[1])
	spi, n := int(b[2]), int(b[3])
	if 4+spi > len(b) {
		return p, fmt.Errorf("%w: proposal SPI of %d octets in %d", ErrLength, spi, len(b))
	}
	p.SPI = clone(b[4 : 4+spi])
	rest := b[4+spi:]
	if n == 0 {
		if len(rest) != 0 {
			return p, fmt.Errorf("%w: proposal with 0 transforms and %d octets", ErrLength, len(rest))
		}
		return p, nil
	}
	ts, end, err := splitN(PayloadTransform, rest, maxInner)
	if err != nil {
		return p, fmt.Errorf("proposal %d: %w", p.Num, err)
	}
	if end != len(rest) || len(ts) != n {
		return p, fmt.Errorf("%w: proposal %d says %d transforms, holds %d (%d stray octets)", ErrLength, p.Num, n, len(ts), len(rest)-end)
	}
	for _, rt := range ts {
		if rt.Type != PayloadTransform {
			return p, fmt.Errorf("%w: payload %s inside a proposal", ErrLength, rt.Type)
		}
		t, err := decodeTransform(rt.Body)
		if err != nil {
			return p, err
		}
		p.Transforms = append(p.Transforms, t)
	}
	return p, nil
}

func decodeTransform(b []byte) (Transform, error) {
	var t Transform
	if len(b) < 4 {
		return t, fmt.Errorf("%w: transform of %d octets", ErrLength, len(b))
	}
	t.Num, t.ID = b[0], b[1]
	rest := b[4:]
	// One copy of the attribute values for the whole transform, not one
	// allocation per attribute (a flood of large SA payloads allocates
	// less); values are sub-slices of it with their capacity capped.
	vals := make([]byte, 0, len(rest))
	value := func(v []byte) []byte {
		off := len(vals)
		vals = append(vals, v...)
		return vals[off:len(vals):len(vals)]
	}
	for len(rest) > 0 {
		if len(t.Attrs) >= 64 {
			return t, fmt.Errorf("%w: more than 64 attributes", ErrTooMany)
		}
		if len(rest) < 4 {
			return t, fmt.Errorf("%w: attribute header", ErrTruncated)
		}
		typ := binary.BigEndian.Uint16(rest)
		if typ&0x8000 != 0 {
			t.Attrs = append(t.Attrs, Attr{Type: typ & 0x7fff, Value: value(rest[2:4])})
			rest = rest[4:]
			continue
		}
		l := int(binary.BigEndian.Uint16(rest[2:]))
		if 4+l > len(rest) {
			return t, fmt.Errorf("%w: attribute %d of %d octets runs past the transform", ErrTruncated, typ, l)
		}
		t.Attrs = append(t.Attrs, Attr{Type: typ, Value: value(rest[4 : 4+l])})
		rest = rest[4+l:]
	}
	return t, nil
}

// DecodeAll splits a chain and decodes every payload. Bytes after the
// last payload are ignored (padding).
func DecodeAll(first PayloadType, b []byte) ([]Payload, []RawPayload, error) {
	raws, _, err := SplitPayloads(first, b)
	if err != nil {
		return nil, nil, err
	}
	ps := make([]Payload, 0, len(raws))
	for _, rp := range raws {
		p, err := Decode(rp)
		if err != nil {
			return nil, nil, fmt.Errorf("%s payload: %w", rp.Type, err)
		}
		ps = append(ps, p)
	}
	return ps, raws, nil
}

// idAddrLen is the data length fixed by an ID type (RFC 2407 4.6.2), or
// -1 for the variable-length types.
func idAddrLen(t uint8) int {
	switch t {
	case IDIPv4Addr:
		return 4
	case IDIPv4Subnet, IDIPv4Range:
		return 8
	case IDIPv6Addr:
		return 16
	case IDIPv6Subnet, IDIPv6Range:
		return 32
	}
	return -1
}

// EncodeBody returns the payload's body (without the generic header).
// The output is a function of p alone. p must be one of this package's
// payload types (anything else is a programming error and panics) and
// should pass Validate: fields too long for their length fields are
// encoded with truncated lengths.
func EncodeBody(p Payload) []byte {
	switch v := p.(type) {
	case *SA:
		b := binary.BigEndian.AppendUint32(nil, v.DOI)
		b = binary.BigEndian.AppendUint32(b, v.Situation)
		for i := range v.Proposals {
			next := PayloadProposal
			if i == len(v.Proposals)-1 {
				next = PayloadNone
			}
			b = appendGeneric(b, next, encodeProposal(&v.Proposals[i]))
		}
		return b
	case *KE:
		return clone(v.Data)
	case *Nonce:
		return clone(v.Data)
	case *Hash:
		return clone(v.Data)
	case *Sig:
		return clone(v.Data)
	case *VendorID:
		return clone(v.Data)
	case *ID:
		b := []byte{v.IDType, v.Protocol, byte(v.Port >> 8), byte(v.Port)}
		return append(b, v.Data...)
	case *Cert:
		return append([]byte{v.Encoding}, v.Data...)
	case *CertReq:
		return append([]byte{v.Encoding}, v.Data...)
	case *Notify:
		b := binary.BigEndian.AppendUint32(nil, v.DOI)
		b = append(b, byte(v.Protocol), byte(len(v.SPI)), byte(v.Kind>>8), byte(v.Kind))
		b = append(b, v.SPI...)
		return append(b, v.Data...)
	case *Delete:
		b := binary.BigEndian.AppendUint32(nil, v.DOI)
		b = append(b, byte(v.Protocol), v.SPISize, byte(len(v.SPIs)>>8), byte(len(v.SPIs)))
		for _, s := range v.SPIs {
			b = append(b, s...)
		}
		return b
	case *NATD:
		return clone(v.Hash)
	case *NATOA:
		return append([]byte{v.IDType, 0, 0, 0}, v.Addr...)
	case *Unknown:
		return clone(v.Data)
	}
	panic(fmt.Sprintf("isakmp: cannot encode %T", p))
}

func encodeProposal(p *Proposal) []byte {
	b := []byte{p.Num, byte(p.Protocol), byte(len(p.SPI)), byte(len(p.Transforms))}
	b = append(b, p.SPI...)
	for i := range p.Transforms {
		next := PayloadTransform
		if i == len(p.Transforms)-1 {
			next = PayloadNone
		}
		b = appendGeneric(b, next, encodeTransform(&p.Transforms[i]))
	}
	return b
}

func encodeTransform(t *Transform) []byte {
	b := []byte{t.Num, t.ID, 0, 0}
	for _, a := range t.Attrs {
		if len(a.Value) == 2 {
			b = append(b, byte(a.Type>>8)|0x80, byte(a.Type), a.Value[0], a.Value[1])
			continue
		}
		b = append(b, byte(a.Type>>8)&0x7f, byte(a.Type), byte(len(a.Value)>>8), byte(len(a.Value)))
		b = append(b, a.Value...)
	}
	return b
}

func appendGeneric(dst []byte, next PayloadType, body []byte) []byte {
	l := 4 + len(body)
	dst = append(dst, byte(next), 0, byte(l>>8), byte(l))
	return append(dst, body...)
}

// AppendPayloads appends ps as a chain of generic payloads (the next
// field of the last is 0).
func AppendPayloads(dst []byte, ps []Payload) []byte {
	for i, p := range ps {
		next := PayloadNone
		if i+1 < len(ps) {
			next = ps[i+1].Type()
		}
		dst = appendGeneric(dst, next, EncodeBody(p))
	}
	return dst
}

// Encode renders a plaintext message: h (with Next and Length set from
// the payloads) and ps.
func Encode(h Header, ps []Payload) []byte {
	b := make([]byte, HeaderLen, HeaderLen+256)
	b = AppendPayloads(b, ps)
	h.Next = PayloadNone
	if len(ps) > 0 {
		h.Next = ps[0].Type()
	}
	h.Length = uint32(len(b))
	h.Put(b)
	return b
}

// maxBody is the longest body a generic payload header can describe.
const maxBody = 0xffff - 4

// Validate reports whether p can be encoded faithfully: every length
// fits its field (SPIs up to 255 octets, at most 255 transforms per
// proposal, attribute values up to 65535 octets and types below 0x8000,
// payload bodies up to 65531 octets), Delete SPIs all have SPISize
// octets, NAT-OA and fixed-size ID data have the size of their type.
// Decode only returns payloads that pass Validate.
func Validate(p Payload) error {
	switch v := p.(type) {
	case *SA:
		for i := range v.Proposals {
			pr := &v.Proposals[i]
			if len(pr.SPI) > 255 || len(pr.Transforms) > 255 {
				return fmt.Errorf("%w: proposal %d has a %d-octet SPI and %d transforms", ErrInvalid, pr.Num, len(pr.SPI), len(pr.Transforms))
			}
			for j := range pr.Transforms {
				for _, a := range pr.Transforms[j].Attrs {
					if a.Type >= 0x8000 || len(a.Value) > 0xffff {
						return fmt.Errorf("%w: attribute type %d with %d octets", ErrInvalid, a.Type, len(a.Value))
					}
				}
			}
		}
	case *Notify:
		if len(v.SPI) > 255 {
			return fmt.Errorf("%w: notify SPI of %d octets", ErrInvalid, len(v.SPI))
		}
	case *Delete:
		if len(v.SPIs) > 0xffff {
			return fmt.Errorf("%w: %d SPIs in one Delete", ErrInvalid, len(v.SPIs))
		}
		for _, s := range v.SPIs {
			if len(s) != int(v.SPISize) || len(s) == 0 {
				return fmt.Errorf("%w: Delete SPI of %d octets, SPI size %d", ErrInvalid, len(s), v.SPISize)
			}
		}
	case *ID:
		if n := idAddrLen(v.IDType); n >= 0 && len(v.Data) != n {
			return fmt.Errorf("%w: ID of type %d with %d octets", ErrInvalid, v.IDType, len(v.Data))
		}
	case *NATOA:
		if (v.IDType != IDIPv4Addr || len(v.Addr) != 4) && (v.IDType != IDIPv6Addr || len(v.Addr) != 16) {
			return fmt.Errorf("%w: NAT-OA of ID type %d with %d octets", ErrInvalid, v.IDType, len(v.Addr))
		}
	case *Unknown:
		if v.T == PayloadNone {
			return fmt.Errorf("%w: payload of type 0", ErrInvalid)
		}
	case *KE, *Nonce, *Hash, *Sig, *VendorID, *Cert, *CertReq, *NATD:
	default:
		return fmt.Errorf("%w: payload type %T", ErrInvalid, p)
	}
	if n := len(EncodeBody(p)); n > maxBody {
		return fmt.Errorf("%w: %s body of %d octets", ErrInvalid, p.Type(), n)
	}
	return nil
}
