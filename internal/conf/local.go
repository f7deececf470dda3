package conf

import (
	"fmt"
	"net"
	"net/netip"
)

// LocalAddrs returns a function that reports whether an address belongs
// to this host (in the current network namespace).
func LocalAddrs() func(netip.Addr) bool {
	set := map[netip.Addr]bool{}
	if addrs, err := net.InterfaceAddrs(); err == nil {
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				if ip, ok := netip.AddrFromSlice(ipn.IP); ok {
					set[ip.Unmap()] = true
				}
			}
		}
	}
	return func(a netip.Addr) bool { return set[a.Unmap()] }
}

// LocalSide decides which end of c is this host, as Pluto does: the end
// whose address this host has; override ("left" or "right") decides
// instead when given. When neither address is local, an end that is
// %defaultroute or %any is taken as local (strongSwan's "left is local"
// convention for responders).
func LocalSide(c *Conn, override string, isLocal func(netip.Addr) bool) (string, error) {
	switch override {
	case "left", "right":
		return override, nil
	case "":
	default:
		return "", fmt.Errorf("conn %s: --local must be left or right, not %q", c.Name, override)
	}
	l := c.Left.Addr.IsValid() && isLocal(c.Left.Addr)
	r := c.Right.Addr.IsValid() && isLocal(c.Right.Addr)
	switch {
	case l && r:
		return "", fmt.Errorf("conn %s: both left (%v) and right (%v) are addresses of this host; say which with --local", c.Name, c.Left.Addr, c.Right.Addr)
	case l:
		return "left", nil
	case r:
		return "right", nil
	case c.Left.DefaultRoute || c.Left.Any:
		return "left", nil
	case c.Right.DefaultRoute || c.Right.Any:
		return "right", nil
	}
	return "", fmt.Errorf("conn %s: neither left (%s) nor right (%s) is an address of this host", c.Name, c.Left.Host, c.Right.Host)
}
