package netio

import (
	"net"
	"net/netip"
)

// prefixToIPNet converts a netip.Prefix into the *net.IPNet netlink wants,
// keeping the host bits (an interface address, not a route).
func prefixToIPNet(p netip.Prefix) *net.IPNet {
	a := p.Addr().Unmap()
	bits := 32
	if a.Is6() {
		bits = 128
	}
	return &net.IPNet{IP: net.IP(a.AsSlice()), Mask: net.CIDRMask(p.Bits(), bits)}
}

// prefixNet is prefixToIPNet of the masked prefix (a route destination).
func prefixNet(p netip.Prefix) *net.IPNet { return prefixToIPNet(p.Masked()) }
