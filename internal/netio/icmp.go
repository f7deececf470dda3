package netio

import (
	"encoding/binary"
	"net/netip"

	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
)

// Reasons FragNeeded declines to answer (RFC 1122 3.2.2, RFC 1812 4.3.2.7).
var (
	ErrFragMalformed = drop.New(drop.Malformed, "netio: frag-needed: not a well-formed IPv4 packet")
	ErrFragNotDF     = drop.New(drop.TooBig, "netio: frag-needed: DF clear, fragment instead")
	ErrFragNoICMP    = drop.New(drop.TooBig, "netio: frag-needed: no ICMP error allowed for this packet")
	ErrFragShortBuf  = drop.New(drop.NoBuffer, "netio: frag-needed: buffer too small")
	ErrFragMTU       = drop.New(drop.Malformed, "netio: frag-needed: MTU below 68 or not below the packet size")
)

// FragNeededQuote is how much of the offending packet the reply quotes at
// most: RFC 1812 4.3.2.3 keeps the whole ICMP error within 576 octets.
const FragNeededQuote = 576 - 20 - 8

// FragNeededMax is the largest message FragNeeded writes.
const FragNeededMax = 576

// FragNeeded builds into b the IPv4 ICMP "fragmentation needed and DF set"
// (type 3 code 4, RFC 792 with the RFC 1191 next-hop MTU) that answers pkt,
// an IPv4 packet read from the TUN that does not fit mtu, the usable inner
// MTU of its tunnel. Written back into the TUN, it makes the sending host
// lower its path MTU. from is the reply's source (the gateway's address; if
// invalid, pkt's destination is used). It returns the reply's length; b
// needs FragNeededMax bytes (or 28 + the quoted length). It allocates
// nothing and declines, with an error, the packets RFC 1122/1812 forbid
// answering: DF clear (fragment those instead), non-first fragments, ICMP
// errors, and packets from or to unspecified, broadcast or multicast
// addresses.
func FragNeeded(b, pkt []byte, mtu int, from netip.Addr) (int, error) {
	hl, total, err := iphdr.HeaderLen(pkt)
	if err != nil {
		return 0, ErrFragMalformed
	}
	if mtu < 68 || mtu >= total || mtu > 0xffff {
		return 0, ErrFragMTU
	}
	ff := binary.BigEndian.Uint16(pkt[iphdr.OffFlagsFrag:])
	if ff&0x4000 == 0 {
		return 0, ErrFragNotDF
	}
	if ff&0x1fff != 0 {
		return 0, ErrFragNoICMP
	}
	src := netip.AddrFrom4([4]byte(pkt[iphdr.OffSrc : iphdr.OffSrc+4]))
	dst := netip.AddrFrom4([4]byte(pkt[iphdr.OffDst : iphdr.OffDst+4]))
	if !unicast(src) || !unicast(dst) {
		return 0, ErrFragNoICMP
	}
	if pkt[iphdr.OffProtocol] == iphdr.ProtoICMP {
		if total < hl+1 {
			return 0, ErrFragMalformed
		}
		switch pkt[hl] { // ICMP errors: unreachable, quench, redirect, time exceeded, parameter problem
		case 3, 4, 5, 11, 12:
			return 0, ErrFragNoICMP
		}
	}
	q := min(total, FragNeededQuote)
	n := 20 + 8 + q
	if len(b) < n {
		return 0, ErrFragShortBuf
	}
	if !from.Is4() {
		from = dst
	}
	iphdr.PutIPv4(b, &iphdr.Outer{Src: from.As4(), Dst: src.As4(), TOS: 0xc0, TTL: 64}, iphdr.ProtoICMP, n)
	icmp := b[20:n]
	icmp[0], icmp[1] = 3, 4
	icmp[2], icmp[3] = 0, 0
	icmp[4], icmp[5] = 0, 0
	binary.BigEndian.PutUint16(icmp[6:], uint16(mtu))
	copy(icmp[8:], pkt[:q])
	binary.BigEndian.PutUint16(icmp[2:], iphdr.Checksum(icmp))
	return n, nil
}

// unicast reports whether a is a specific unicast IPv4 address (not 0/8,
// limited broadcast, or multicast/class E).
func unicast(a netip.Addr) bool {
	b := a.As4()
	return b[0] != 0 && b[0] < 224
}
