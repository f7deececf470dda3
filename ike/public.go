package ike

import "github.com/gosec-ipsec/gosec/internal/clock"

// Clock is the engine's time source (Config.Clock): it tells the time and
// runs retransmission, lifetime, DPD and keepalive timers. A nil
// Config.Clock is the system clock. It is an alias of gosec's internal
// clock interface (as sad.Clock is), so that a program in another module
// can pass its own fake clock.
type Clock = clock.Clock

// Timer is a pending Clock.AfterFunc call.
type Timer = clock.Timer
