package ike

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"strings"

	"github.com/gosec-ipsec/gosec/ike/isakmp"
)

// ID types of RFC 2407 4.6.2.1.
const (
	idIPv4Addr   = 1
	idFQDN       = 2
	idUserFQDN   = 3
	idIPv4Subnet = 4
	idKeyID      = 11
)

// idPayload renders a leftid= value (strongSwan syntax) as a phase-1 ID:
// empty or an IP address is ID_IPV4_ADDR, "@#hex" ID_KEY_ID, "@name" and a
// bare name ID_FQDN, "user@name" ID_USER_FQDN.
func idPayload(id string, addr netip.Addr) *isakmp.ID {
	switch {
	case id == "" || id == "%any":
		a := addr.As4()
		return &isakmp.ID{IDType: idIPv4Addr, Data: a[:]}
	case strings.HasPrefix(id, "@#"):
		b, err := hex.DecodeString(id[2:])
		if err == nil {
			return &isakmp.ID{IDType: idKeyID, Data: b}
		}
		return &isakmp.ID{IDType: idKeyID, Data: []byte(id[2:])}
	case strings.HasPrefix(id, "@"):
		return &isakmp.ID{IDType: idFQDN, Data: []byte(id[1:])}
	}
	if a, err := netip.ParseAddr(id); err == nil && a.Is4() {
		b := a.As4()
		return &isakmp.ID{IDType: idIPv4Addr, Data: b[:]}
	}
	if strings.Contains(id, "@") {
		return &isakmp.ID{IDType: idUserFQDN, Data: []byte(id)}
	}
	return &isakmp.ID{IDType: idFQDN, Data: []byte(id)}
}

// idString renders a received ID for logs and status.
func idString(id *isakmp.ID) string {
	switch id.IDType {
	case idIPv4Addr:
		if len(id.Data) == 4 {
			return netip.AddrFrom4([4]byte(id.Data)).String()
		}
	case idFQDN, idUserFQDN:
		return strings.Map(func(r rune) rune {
			if r < 0x20 || r > 0x7e {
				return '?'
			}
			return r
		}, string(id.Data))
	case idKeyID:
		return "@#" + hex.EncodeToString(id.Data)
	case idIPv4Subnet:
		if p, ok := idPrefix(id); ok {
			return p.String()
		}
	}
	return fmt.Sprintf("ID type %d (%x)", id.IDType, id.Data)
}

func expectedID(id string, addr netip.Addr) string {
	if id == "" {
		return addr.String()
	}
	return id
}

func localIDString(c *Conn) string { return expectedID(c.LocalID, c.Local) }

// idMatches checks a received phase-1 ID against rightid (empty: the
// peer's address; %any: anything).
func idMatches(want string, addr netip.Addr, got *isakmp.ID) bool {
	if want == "%any" {
		return true
	}
	exp := idPayload(want, addr)
	if want == "" && !addr.IsValid() {
		return true
	}
	if exp.IDType != got.IDType {
		return false
	}
	if exp.IDType == idFQDN || exp.IDType == idUserFQDN {
		return strings.EqualFold(string(exp.Data), string(got.Data))
	}
	return string(exp.Data) == string(got.Data)
}

// tsID renders a traffic selector as a Quick Mode client ID.
func tsID(p netip.Prefix, proto uint8, port uint16) *isakmp.ID {
	a := p.Masked().Addr().As4()
	if p.Bits() == 32 {
		return &isakmp.ID{IDType: idIPv4Addr, Protocol: proto, Port: port, Data: a[:]}
	}
	m := netip.PrefixFrom(netip.AddrFrom4([4]byte{255, 255, 255, 255}), p.Bits())
	mask := prefixMask(m.Bits())
	return &isakmp.ID{IDType: idIPv4Subnet, Protocol: proto, Port: port, Data: append(a[:], mask[:]...)}
}

func prefixMask(bits int) [4]byte {
	var m uint32
	if bits > 0 {
		m = ^uint32(0) << (32 - bits)
	}
	return [4]byte{byte(m >> 24), byte(m >> 16), byte(m >> 8), byte(m)}
}

// idPrefix reads a Quick Mode client ID as a prefix (ID_IPV4_ADDR or a
// subnet with a contiguous mask).
func idPrefix(id *isakmp.ID) (netip.Prefix, bool) {
	switch id.IDType {
	case idIPv4Addr:
		if len(id.Data) != 4 {
			return netip.Prefix{}, false
		}
		return netip.PrefixFrom(netip.AddrFrom4([4]byte(id.Data)), 32), true
	case idIPv4Subnet:
		if len(id.Data) != 8 {
			return netip.Prefix{}, false
		}
		m := uint32(id.Data[4])<<24 | uint32(id.Data[5])<<16 | uint32(id.Data[6])<<8 | uint32(id.Data[7])
		bits := 0
		for bits < 32 && m&(1<<(31-bits)) != 0 {
			bits++
		}
		if bits < 32 && m<<bits != 0 {
			return netip.Prefix{}, false // not contiguous
		}
		return netip.PrefixFrom(netip.AddrFrom4([4]byte(id.Data[:4])), bits).Masked(), true
	}
	return netip.Prefix{}, false
}
