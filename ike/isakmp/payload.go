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

// Notify is a Notification payload (RFC 2408 3.14).
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

func (*SA) Type() PayloadType        { return PayloadSA }
func (*KE) Type() PayloadType        { return PayloadKE }
func (*Nonce) Type() PayloadType     { return PayloadNonce }
func (*Hash) Type() PayloadType      { return PayloadHash }
func (*Sig) Type() PayloadType       { return PayloadSig }
func (*VendorID) Type() PayloadType  { return PayloadVendorID }
func (*ID) Type() PayloadType        { return PayloadID }
func (*Cert) Type() PayloadType      { return PayloadCert }
func (*CertReq) Type() PayloadType   { return PayloadCertReq }
func (*Notify) Type() PayloadType    { return PayloadNotify }
func (*Delete) Type() PayloadType    { return PayloadDelete }
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
		return &ID{IDType: b[0], Protocol: b[1], Port: binary.BigEndian.Uint16(b[2:]), Data: clone(b[4:])}, nil
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
		return &NATOA{Draft: rp.Type == PayloadNATOADraft, IDType: b[0], Addr: clone(b[4:])}, nil
	}
	return &Unknown{T: rp.Type, Data: clone(b)}, nil
}

func decodeSA(b []byte) (*SA, error) {
	if len(b) < 8 {
		return nil, fmt.Errorf("%w: SA payload of %d octets", ErrLength, len(b))
	}
	sa := &SA{DOI: binary.BigEndian.Uint32(b), Situation: binary.BigEndian.Uint32(b[4:])}
	// Proposals: a chain of generic payloads of type 2 (RFC 2408 3.4).
	rest := b[8:]
	if sa.Situation&^0x7 != 0 || sa.DOI != 1 {
		// Other DOIs or labelled situations carry more fields we do not
		// parse; keep the proposals empty rather than misread them.
		if sa.DOI != 1 {
			return sa, nil
		}
	}
	ps, end, err := SplitPayloads(PayloadProposal, rest)
	if err != nil {
		return nil, fmt.Errorf("SA payload: %w", err)
	}
	if end != len(rest) {
		return nil, fmt.Errorf("%w: %d octets after the last proposal", ErrLength, len(rest)-end)
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
	ts, end, err := SplitPayloads(PayloadTransform, rest)
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
	for len(rest) > 0 {
		if len(t.Attrs) >= 64 {
			return t, fmt.Errorf("%w: more than 64 attributes", ErrTooMany)
		}
		if len(rest) < 4 {
			return t, fmt.Errorf("%w: attribute header", ErrTruncated)
		}
		typ := binary.BigEndian.Uint16(rest)
		if typ&0x8000 != 0 {
			t.Attrs = append(t.Attrs, Attr{Type: typ & 0x7fff, Value: clone(rest[2:4])})
			rest = rest[4:]
			continue
		}
		l := int(binary.BigEndian.Uint16(rest[2:]))
		if 4+l > len(rest) {
			return t, fmt.Errorf("%w: attribute %d of %d octets runs past the transform", ErrTruncated, typ, l)
		}
		t.Attrs = append(t.Attrs, Attr{Type: typ, Value: clone(rest[4 : 4+l])})
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

// EncodeBody returns the payload's body (without the generic header).
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
