package esp

import (
	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/integ"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
)

// Names for the types of gosec's internal packages that this package's
// API uses, so that a program in another Go module can fill a Config,
// seal in tunnel mode and inspect errors. They are aliases: the values
// are the same everywhere in gosec.

// Integ is an integrity algorithm (Config.Integ).
type Integ = integ.Algorithm

// The integrity algorithms: the HMAC truncations of RFC 2403, 2404 and
// 4868; IntegNone for combined-mode ciphers.
const (
	IntegNone      = integ.None
	IntegMD5_96    = integ.HMACMD5_96
	IntegSHA1_96   = integ.HMACSHA1_96
	IntegSHA256128 = integ.HMACSHA256_128
	IntegSHA384192 = integ.HMACSHA384_192
	IntegSHA512256 = integ.HMACSHA512_256
)

// Outer is the outer IPv4 header of tunnel mode (Suite.SealTunnel).
type Outer = iphdr.Outer

// Error is the type of this package's errors; its reason says why the
// packet was dropped.
type Error = drop.Error

// Reason is why a packet was dropped.
type Reason = drop.Reason

// ReasonOf returns the drop reason of err (an error of this package, or
// one wrapping it).
func ReasonOf(err error) Reason { return drop.ReasonOf(err) }
