package ah

import "github.com/gosec-ipsec/gosec/internal/iphdr"

// IPv4 option type octets (copy flag, class and number together) that
// RFC 4302 Appendix A.1 classifies as immutable: they are included in the
// ICV as they are. Every other option, the known mutable ones (Loose and
// Strict Source Route, Time Stamp, Record Route, Traceroute), the
// experimental and superseded ones, and unknown ones, is zeroed as a whole,
// type and length octets included (section 3.3.3.1.1.2).
const (
	optEOL        = 0   // End of Options List
	optNOP        = 1   // No Operation
	optSecurity   = 130 // Security (RFC 1108)
	optExtSec     = 133 // Extended Security (RFC 1108)
	optCommercial = 134 // Commercial Security (CIPSO)
	optRA         = 148 // Router Alert (RFC 2113)
	optSDMDD      = 149 // Sender Directed Multi-Destination Delivery (RFC 1770)

	optLSRR = 131 // Loose Source Route
	optSSRR = 137 // Strict Source Route
)

func immutableOption(t byte) bool {
	switch t {
	case optEOL, optNOP, optSecurity, optExtSec, optCommercial, optRA, optSDMDD:
		return true
	}
	return false
}

// zeroMutable copies the IPv4 header hdr (options included) into dst,
// which must be len(hdr) octets, with the fields that RFC 4302 section
// 3.3.3.1.1 calls mutable zeroed: TOS, flags and fragment offset, TTL,
// header checksum, and the mutable options of Appendix A.1.
//
// When sending, the Destination Address of a packet with a loose or strict
// source route that is not yet used up is mutable but predictable: the
// receiver will see the route's final address, so that address (the last
// one in the option) is used. A receiver uses the address it received.
//
// It returns ErrOptions for a malformed option list (an option length
// below 2 or past the header), as the Linux kernel does.
func zeroMutable(dst, hdr []byte, sending bool) error {
	copy(dst, hdr)
	dst[iphdr.OffTOS] = 0
	dst[iphdr.OffFlagsFrag], dst[iphdr.OffFlagsFrag+1] = 0, 0
	dst[iphdr.OffTTL] = 0
	dst[iphdr.OffChecksum], dst[iphdr.OffChecksum+1] = 0, 0
	for i := iphdr.IPv4MinLen; i < len(hdr); {
		t, l, err := nextOption(hdr, i)
		if err != nil {
			return err
		}
		if t == optEOL {
			// The rest of the header is padding; it is kept as sent.
			return nil
		}
		if l > 1 && !immutableOption(t) {
			if sending && (t == optLSRR || t == optSSRR) && l >= 7 && int(hdr[i+2]) <= l-3 {
				copy(dst[iphdr.OffDst:iphdr.OffDst+4], hdr[i+l-4:i+l])
			}
			clear(dst[i : i+l])
		}
		i += l
	}
	return nil
}

// checkOptions reports ErrOptions if the options of the IPv4 header hdr
// are malformed, the same check zeroMutable makes.
func checkOptions(hdr []byte) error {
	for i := iphdr.IPv4MinLen; i < len(hdr); {
		t, l, err := nextOption(hdr, i)
		if err != nil || t == optEOL {
			return err
		}
		i += l
	}
	return nil
}

// nextOption returns the type and length of the option at hdr[i]: length
// 1 for End of Options List and No Operation, else the option's length
// octet, which must be at least 2 and stay inside hdr.
func nextOption(hdr []byte, i int) (t byte, l int, err error) {
	t = hdr[i]
	if t == optEOL || t == optNOP {
		return t, 1, nil
	}
	if i+1 >= len(hdr) {
		return 0, 0, ErrOptions
	}
	l = int(hdr[i+1])
	if l < 2 || l > len(hdr)-i {
		return 0, 0, ErrOptions
	}
	return t, l, nil
}
