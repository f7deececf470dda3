package ike

import "fmt"

// Proto is the IPsec protocol of a child SA, as its IP protocol number
// (ESP 50, AH 51), so that a data plane keyed by protocol number can take
// it as it is.
type Proto uint8

// The IPsec protocols a child SA may use.
const (
	ProtoESP Proto = 50
	ProtoAH  Proto = 51
)

func (p Proto) String() string {
	switch p {
	case ProtoESP:
		return "ESP"
	case ProtoAH:
		return "AH"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Mode is the IPsec mode of a conn and its child SAs.
type Mode uint8

// The modes. The zero Mode is ModeTransport.
const (
	ModeTransport Mode = iota
	ModeTunnel
)

func (m Mode) String() string {
	switch m {
	case ModeTransport:
		return "transport"
	case ModeTunnel:
		return "tunnel"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Encap is the UDP encapsulation of an ESP child SA (NAT-T, RFC 3948):
// the UDP source and destination ports of the packets this host sends on
// it. The inbound SA sees the same ports swapped.
type Encap struct {
	SrcPort, DstPort uint16
}
