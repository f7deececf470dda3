package isakmp

import (
	"encoding/binary"
	"fmt"
)

// ProposalView is one proposal of an SA payload, read in place.
type ProposalView struct {
	Num      uint8
	Protocol ProtocolID
	SPI      []byte // aliases the payload
}

// TransformView is one transform of an SA payload, read in place.
type TransformView struct {
	Num, ID uint8
	attrs   []byte // the attributes, already checked by WalkSA
}

// EachAttr calls fn with every attribute's type and value; value aliases
// the payload.
func (t TransformView) EachAttr(fn func(typ uint16, value []byte)) {
	rest := t.attrs
	for len(rest) >= 4 {
		typ := binary.BigEndian.Uint16(rest)
		if typ&0x8000 != 0 {
			fn(typ&0x7fff, rest[2:4])
			rest = rest[4:]
			continue
		}
		l := int(binary.BigEndian.Uint16(rest[2:]))
		fn(typ, rest[4:4+l])
		rest = rest[4+l:]
	}
}

// Transform returns a decoded copy of t.
func (t TransformView) Transform() Transform {
	tr, _ := decodeTransform(append([]byte{t.Num, t.ID, 0, 0}, t.attrs...))
	return tr
}

// WalkSA checks an SA payload body as Decode does (DOI, situation, the
// proposal and transform structure, MaxProposals, MaxSATransforms, 64
// attributes a transform) and calls fn for every transform in order,
// without allocating: a responder matches a flood of SA payloads at the
// caps without building them. It stops early when fn returns false.
func WalkSA(b []byte, fn func(ProposalView, TransformView) bool) (doi uint32, err error) {
	if len(b) < 8 {
		return 0, fmt.Errorf("%w: SA payload of %d octets", ErrLength, len(b))
	}
	doi, sit := binary.BigEndian.Uint32(b), binary.BigEndian.Uint32(b[4:])
	if doi > DOIIPsec {
		return doi, fmt.Errorf("%w: SA of DOI %d", ErrUnsupported, doi)
	}
	if sit&(SitSecrecy|SitIntegrity) != 0 {
		return doi, fmt.Errorf("%w: SA situation %#x (labelled domains)", ErrUnsupported, sit)
	}
	// First pass: structure and caps, nothing called.
	for pass := 0; pass < 2; pass++ {
		rest := b[8:]
		next := PayloadProposal
		proposals, transforms := 0, 0
		for next != PayloadNone {
			if next != PayloadProposal {
				return doi, fmt.Errorf("%w: payload %s inside SA", ErrLength, next)
			}
			if proposals++; proposals > MaxProposals {
				return doi, fmt.Errorf("%w: more than %d proposals in one SA payload", ErrTooMany, MaxProposals)
			}
			if len(rest) < 8 {
				return doi, fmt.Errorf("%w: proposal header", ErrTruncated)
			}
			next = PayloadType(rest[0])
			l := int(binary.BigEndian.Uint16(rest[2:]))
			if l < 8 || l > len(rest) {
				return doi, fmt.Errorf("%w: proposal of %d octets in %d", ErrLength, l, len(rest))
			}
			body := rest[4:l]
			rest = rest[l:]
			pv := ProposalView{Num: body[0], Protocol: ProtocolID(body[1])}
			spi, n := int(body[2]), int(body[3])
			if 4+spi > len(body) {
				return doi, fmt.Errorf("%w: proposal SPI of %d octets in %d", ErrLength, spi, len(body))
			}
			pv.SPI = body[4 : 4+spi]
			if transforms += n; transforms > MaxSATransforms {
				return doi, fmt.Errorf("%w: more than %d transforms in one SA payload", ErrTooMany, MaxSATransforms)
			}
			ts := body[4+spi:]
			tnext := PayloadTransform
			if n == 0 {
				tnext = PayloadNone
			}
			for i := 0; tnext != PayloadNone; i++ {
				if tnext != PayloadTransform || i >= n {
					return doi, fmt.Errorf("%w: proposal %d says %d transforms, holds more", ErrLength, pv.Num, n)
				}
				if len(ts) < 8 {
					return doi, fmt.Errorf("%w: transform header", ErrTruncated)
				}
				tnext = PayloadType(ts[0])
				tl := int(binary.BigEndian.Uint16(ts[2:]))
				if tl < 8 || tl > len(ts) {
					return doi, fmt.Errorf("%w: transform of %d octets in %d", ErrLength, tl, len(ts))
				}
				tv := TransformView{Num: ts[4], ID: ts[5], attrs: ts[8:tl]}
				if pass == 0 {
					if err := checkAttrs(tv.attrs); err != nil {
						return doi, err
					}
				} else if !fn(pv, tv) {
					return doi, nil
				}
				ts = ts[tl:]
				if tnext == PayloadNone && i+1 != n {
					return doi, fmt.Errorf("%w: proposal %d says %d transforms, holds %d", ErrLength, pv.Num, n, i+1)
				}
			}
			if len(ts) != 0 {
				return doi, fmt.Errorf("%w: %d stray octets in proposal %d", ErrLength, len(ts), pv.Num)
			}
		}
		if len(rest) != 0 {
			return doi, fmt.Errorf("%w: %d octets after the last proposal", ErrLength, len(rest))
		}
	}
	return doi, nil
}

func checkAttrs(rest []byte) error {
	for n := 0; len(rest) > 0; n++ {
		if n >= 64 {
			return fmt.Errorf("%w: more than 64 attributes", ErrTooMany)
		}
		if len(rest) < 4 {
			return fmt.Errorf("%w: attribute header", ErrTruncated)
		}
		typ := binary.BigEndian.Uint16(rest)
		if typ&0x8000 != 0 {
			rest = rest[4:]
			continue
		}
		l := int(binary.BigEndian.Uint16(rest[2:]))
		if 4+l > len(rest) {
			return fmt.Errorf("%w: attribute %d of %d octets runs past the transform", ErrTruncated, typ, l)
		}
		rest = rest[4+l:]
	}
	return nil
}
