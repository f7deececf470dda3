package sad

import (
	"github.com/gosec-ipsec/gosec/internal/clock"
	"github.com/gosec-ipsec/gosec/internal/drop"
)

// Names for the types of gosec's internal packages that this package's
// API uses, so that a program in another Go module can use the SAD
// (aliases: the same types everywhere in gosec).

// Clock is the time source of New; RealClock is the system's.
type Clock = clock.Clock

// Timer is what Clock.AfterFunc returns.
type Timer = clock.Timer

// RealClock is the system clock.
type RealClock = clock.Real

// Error is the type of this package's errors.
type Error = drop.Error

// Reason is why a packet was dropped (SA.CountDrop, Stats.Drops).
type Reason = drop.Reason

// ReasonCount is the number of drop reasons (the length of Stats.Drops).
const ReasonCount = drop.Count

// ReasonOf returns the drop reason of err.
func ReasonOf(err error) Reason { return drop.ReasonOf(err) }
