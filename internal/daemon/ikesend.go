package daemon

import (
	"net"
	"net/netip"

	"golang.org/x/net/ipv4"
)

// SendFrom sends an IKE message on UDP 500, or on the NAT-T port with
// the non-ESP marker, from local address src (an IP_PKTINFO control
// message): a responder answers from the address the request was sent
// to, which on a host with several addresses on one link need not be the
// one the kernel would choose. For non-IPv4 sources, or when the kernel
// refuses src, the kernel chooses.
func (t ikeTransport) SendFrom(msg []byte, src netip.Addr, to netip.AddrPort, natt bool) error {
	if !src.Is4() {
		return t.Send(msg, to, natt)
	}
	if natt {
		if t.d.natt == nil || t.d.natt.WriteIKEFrom(msg, src, to) != nil {
			return t.Send(msg, to, natt)
		}
		return nil
	}
	if t.d.ikeSock == nil {
		return t.Send(msg, to, natt)
	}
	pc := ipv4.NewPacketConn(t.d.ikeSock)
	if _, err := pc.WriteTo(msg, &ipv4.ControlMessage{Src: src.AsSlice()}, net.UDPAddrFromAddrPort(to)); err != nil {
		return t.Send(msg, to, natt)
	}
	return nil
}
