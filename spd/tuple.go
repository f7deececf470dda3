package spd

import (
	"encoding/binary"
	"net/netip"

	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
)

const (
	protoICMP = 1
	protoSCTP = 132
	protoUDPL = 136 // UDP-Lite
)

func hasPorts(proto uint8) bool {
	switch proto {
	case protoICMP, iphdr.ProtoTCP, iphdr.ProtoUDP, protoSCTP, protoUDPL:
		return true
	}
	return false
}

// ErrTuple is returned for packets whose selector fields cannot be read.
var ErrTuple = drop.New(drop.Malformed, "spd: malformed IPv4 packet")

// ErrNotIPv4 is returned by ParseIPv4Tuple for a packet whose version
// field is not 4.
var ErrNotIPv4 = drop.New(drop.Malformed, "spd: not an IPv4 packet")

// ParseIPv4Tuple reads the selector fields of an IPv4 packet. TCP, UDP,
// UDP-Lite and SCTP give their ports, ICMP its type (as SrcPort) and code
// (as DstPort). A non-first fragment carries no ports (RFC 4301 calls them
// OPAQUE): its ports are returned as 0, so it matches only policies that do
// not select on ports, or whose ranges include 0. A first fragment or an
// unfragmented packet too short to hold its ports is an error. This is
// what Linux XFRM does (its flow decoding leaves the ports of non-first
// fragments at zero); without reassembly a port-specific Protect policy
// therefore does not see the non-first fragments of its traffic, which
// fall to a policy with ANY ports (RFC 4301 7.1, OPAQUE).
func ParseIPv4Tuple(pkt []byte) (Tuple, error) {
	hl, total, err := iphdr.HeaderLen(pkt)
	if err != nil {
		if err == iphdr.ErrVersion {
			return Tuple{}, ErrNotIPv4
		}
		return Tuple{}, ErrTuple
	}
	t := Tuple{
		Src:   netip.AddrFrom4([4]byte(pkt[iphdr.OffSrc : iphdr.OffSrc+4])),
		Dst:   netip.AddrFrom4([4]byte(pkt[iphdr.OffDst : iphdr.OffDst+4])),
		Proto: pkt[iphdr.OffProtocol],
	}
	if binary.BigEndian.Uint16(pkt[iphdr.OffFlagsFrag:])&0x1fff != 0 {
		return t, nil // non-first fragment: OPAQUE ports
	}
	l4 := pkt[hl:total]
	switch t.Proto {
	case protoICMP:
		if len(l4) < 2 {
			return Tuple{}, ErrTuple
		}
		t.SrcPort, t.DstPort = uint16(l4[0]), uint16(l4[1])
	case iphdr.ProtoTCP, iphdr.ProtoUDP, protoSCTP, protoUDPL:
		if len(l4) < 4 {
			return Tuple{}, ErrTuple
		}
		t.SrcPort = binary.BigEndian.Uint16(l4[0:])
		t.DstPort = binary.BigEndian.Uint16(l4[2:])
	}
	return t, nil
}
