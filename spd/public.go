package spd

import "github.com/gosec-ipsec/gosec/internal/drop"

// Error is the type of this package's errors (an alias of gosec's
// internal drop.Error, so that a program in another Go module can name
// it).
type Error = drop.Error

// Reason is why a packet was dropped.
type Reason = drop.Reason

// ReasonOf returns the drop reason of err.
func ReasonOf(err error) Reason { return drop.ReasonOf(err) }
