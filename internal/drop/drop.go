// Package drop names the reasons for which the data plane drops a packet,
// so that every drop is counted under a reason and the packet code can
// return preallocated errors that carry it (no allocation per packet).
package drop

import "errors"

// Reason is why a packet was dropped.
type Reason uint8

// The drop reasons. Keep Count last.
const (
	None           Reason = iota // not a drop
	Malformed                    // truncated or inconsistent headers
	UnknownSPI                   // no SA for (SPI, protocol, destination)
	Replay                       // sequence number already seen
	TooOld                       // sequence number left of the replay window
	ICV                          // integrity check failed
	Padding                      // bad ESP padding or pad length (after a good ICV)
	Dummy                        // ESP next header 59 (RFC 4303 2.6): dropped quietly
	PolicyMismatch               // inner packet does not match the SA's policy
	NoPolicy                     // no policy matched
	Discard                      // a discard policy matched
	NoSA                         // protect policy without a usable outbound SA
	SeqExhausted                 // outbound sequence number space used up
	Expired                      // SA past its hard lifetime
	TooBig                       // larger than the path MTU allows
	Cleartext                    // unprotected packet from a protected peer
	NoBuffer                     // no buffer or queue space
	Count                        // number of reasons; not a reason
)

var names = [Count]string{
	None:           "none",
	Malformed:      "malformed",
	UnknownSPI:     "unknown-spi",
	Replay:         "replay",
	TooOld:         "too-old",
	ICV:            "icv",
	Padding:        "padding",
	Dummy:          "dummy",
	PolicyMismatch: "policy-mismatch",
	NoPolicy:       "no-policy",
	Discard:        "discard",
	NoSA:           "no-sa",
	SeqExhausted:   "seq-exhausted",
	Expired:        "expired",
	TooBig:         "too-big",
	Cleartext:      "cleartext",
	NoBuffer:       "no-buffer",
}

// String returns the reason's short name as statusall shows it.
func (r Reason) String() string {
	if r < Count {
		return names[r]
	}
	return "unknown"
}

// Error is an error that carries a drop reason. Packet code declares its
// errors once as package variables, so returning one allocates nothing.
type Error struct {
	Reason Reason
	Msg    string
}

// New returns an *Error for reason with message msg.
func New(reason Reason, msg string) *Error { return &Error{Reason: reason, Msg: msg} }

func (e *Error) Error() string { return e.Msg }

// ReasonOf returns the drop reason carried by err (through wrapping), or
// Malformed for an error that carries none, or None for a nil error.
func ReasonOf(err error) Reason {
	if err == nil {
		return None
	}
	if e, ok := err.(*Error); ok {
		return e.Reason
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Reason
	}
	return Malformed
}
