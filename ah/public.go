package ah

import (
	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/integ"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
)

// Names for the types of gosec's internal packages that this package's
// API uses, so that a program in another Go module can use it (aliases:
// the same types as esp's).

// Integ is an integrity algorithm (Config.Integ).
type Integ = integ.Algorithm

// The integrity algorithms (HMAC truncations of RFC 2403, 2404, 4868).
const (
	IntegMD5_96    = integ.HMACMD5_96
	IntegSHA1_96   = integ.HMACSHA1_96
	IntegSHA256128 = integ.HMACSHA256_128
	IntegSHA384192 = integ.HMACSHA384_192
	IntegSHA512256 = integ.HMACSHA512_256
)

// Outer is the outer IPv4 header of tunnel mode (Suite.SealTunnel).
type Outer = iphdr.Outer

// Error is the type of this package's errors.
type Error = drop.Error

// Reason is why a packet was dropped.
type Reason = drop.Reason

// ReasonOf returns the drop reason of err.
func ReasonOf(err error) Reason { return drop.ReasonOf(err) }
