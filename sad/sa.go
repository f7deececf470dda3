// Package sad is the Security Association Database: the SAs the data plane
// uses, found by (SPI, protocol, destination) for inbound packets and by
// request ID for outbound ones, with their sequence numbers, anti-replay
// windows, counters and lifetimes.
//
// Lookups read immutable, sharded snapshots through atomic pointers,
// counters are atomics and each replay window has its own lock, so the
// packet path takes no lock shared between SAs or goroutines.
//
// Per inbound packet the data plane does:
//
//	sa := db.Lookup(spi, proto, dst)       // nil: drop.UnknownSPI
//	full, err := sa.Replay.Check(seqLow)   // drop.Replay/TooOld/Expired
//	... verify the ICV and open with full ...
//	err = sa.Replay.Update(full)           // re-checks: concurrent duplicates
//	sa.CountIn(n)
//
// and per outbound packet:
//
//	sa := db.Outbound(reqid)               // nil: drop.NoSA
//	seq, err := sa.NextSeq()               // drop.SeqExhausted/Expired
//	... seal with seq ...
//	sa.CountOut(n)
package sad

import (
	"fmt"
	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"math"
	"net/netip"
	"sync/atomic"
	"time"

	"github.com/gosec-ipsec/gosec/internal/drop"
)

// Proto is the IPsec protocol of an SA (its IP protocol number).
type Proto uint8

// The IPsec protocols.
const (
	ESP Proto = 50
	AH  Proto = 51
)

func (p Proto) String() string {
	switch p {
	case ESP:
		return "ESP"
	case AH:
		return "AH"
	}
	return fmt.Sprintf("proto(%d)", uint8(p))
}

// Mode is transport or tunnel mode.
type Mode uint8

// The modes.
const (
	Transport Mode = iota
	Tunnel
)

func (m Mode) String() string {
	switch m {
	case Transport:
		return "transport"
	case Tunnel:
		return "tunnel"
	}
	return fmt.Sprintf("mode(%d)", uint8(m))
}

// Dir says whether an SA protects traffic we receive or traffic we send.
type Dir uint8

// The directions.
const (
	Inbound Dir = iota
	Outbound
)

func (d Dir) String() string {
	switch d {
	case Inbound:
		return "in"
	case Outbound:
		return "out"
	}
	return fmt.Sprintf("dir(%d)", uint8(d))
}

// Encap is the UDP encapsulation of an ESP SA (RFC 3948): the UDP ports of
// the packets this SA's sender puts on the wire.
type Encap struct {
	SrcPort, DstPort uint16
}

// Lifetime is a set of limits; a zero field means no limit. Time counts
// from when the SA was added to the DB; Bytes counts the bytes given to
// CountIn/CountOut, Packets the calls.
type Lifetime struct {
	Time    time.Duration
	Bytes   uint64
	Packets uint64
}

// ErrSeqExhausted is NextSeq's error once the outbound sequence numbers
// are used up (RFC 4303 3.3.3: the counter must not cycle).
var ErrSeqExhausted = drop.New(drop.SeqExhausted, "sad: outbound sequence numbers used up; the SA needs rekeying")

// SA is one security association. Fill in the exported fields and Add it
// to a DB; from then on they are read-only (the data plane reads them
// without locks). The methods are for SAs that a DB holds or held.
type SA struct {
	SPI      uint32
	Proto    Proto
	Mode     Mode
	Dir      Dir
	Src, Dst netip.Addr // outer addresses (tunnel endpoints, or the hosts)
	ReqID    uint32     // links the SA to its SPD policies; 0 = none
	Encap    *Encap     // non-nil: ESP in UDP (RFC 3948)
	ESN      bool       // 64-bit Extended Sequence Numbers (RFC 4303 2.2.1)

	// ESP or AH does the SA's cryptography: exactly the one of its Proto
	// is set. A Suite is safe for concurrent use.
	ESP *esp.Suite
	AH  *ah.Suite

	// Replay is the inbound anti-replay window. Add gives an inbound SA
	// without one a DefaultWindow-sized window; use NewWindow(0, esn) to
	// turn the check off. Outbound SAs have none.
	Replay *Window

	// Soft and Hard are the lifetimes: passing Soft raises SoftExpired
	// (rekey now); passing Hard raises HardExpired and the SA fails
	// closed. Each soft limit must be below its hard counterpart.
	Soft, Hard Lifetime

	// Conn names the configuration the SA belongs to (for status only).
	Conn string

	db      *DB
	st      *state // shared with a same-key replacement (see DB.Replace)
	removed atomic.Bool
}

// state is the mutable part of an SA. A same-key Replace hands it to the
// new SA, so sequence numbers continue and never repeat under one key.
type state struct {
	seq     atomic.Uint64 // last sequence number handed out
	flags   atomic.Uint32 // flag* bits
	owner   atomic.Pointer[SA]
	created time.Time

	bytesIn, pktsIn   atomic.Uint64
	bytesOut, pktsOut atomic.Uint64
	last              atomic.Int64 // unix nanoseconds of the last packet
	drops             [drop.Count]atomic.Uint64
}

const (
	flagSoft uint32 = 1 << iota
	flagHard
	flagExhausted
)

func (k EventKind) flag() uint32 {
	switch k {
	case SoftExpired:
		return flagSoft
	case HardExpired:
		return flagHard
	case SeqExhausted:
		return flagExhausted
	}
	return 0
}

// NextSeq hands out the next outbound sequence number, starting at 1.
// Without ESN the counter never wraps: 2^32-1 is the last number, after
// which NextSeq returns ErrSeqExhausted and raises SeqExhausted once; with
// ESN the same holds at 2^64-1. Past the hard lifetime it returns
// ErrExpired. Safe for concurrent use; no number is handed out twice.
func (sa *SA) NextSeq() (uint64, error) {
	st := sa.st
	if st.flags.Load()&flagHard != 0 {
		return 0, ErrExpired
	}
	if !sa.ESN {
		// A 64-bit counter cannot wrap in practice, so a plain Add is
		// enough: every value past 2^32-1 is refused.
		if s := st.seq.Add(1); s <= math.MaxUint32 {
			return s, nil
		}
	} else {
		for {
			cur := st.seq.Load()
			if cur == math.MaxUint64 {
				break
			}
			if st.seq.CompareAndSwap(cur, cur+1) {
				return cur + 1, nil
			}
		}
	}
	sa.fire(SeqExhausted)
	return 0, ErrSeqExhausted
}

// setSeq sets the last sequence number handed out (a test hook).
func (sa *SA) setSeq(s uint64) { sa.st.seq.Store(s) }

// Usable reports whether the SA is within its hard lifetime and, for an
// outbound SA, still has sequence numbers.
func (sa *SA) Usable() bool {
	f := sa.st.flags.Load()
	return f&flagHard == 0 && (sa.Dir != Outbound || f&flagExhausted == 0)
}

// CountIn counts an inbound packet of n bytes (after it authenticated)
// and checks the byte and packet lifetimes.
func (sa *SA) CountIn(n int) { sa.CountInN(1, n) }

// CountInN counts pkts inbound packets of n bytes in all at once (a run
// of one batch), with one clock read and one lifetime check: a lifetime
// crossed inside the run is seen at its end.
func (sa *SA) CountInN(pkts, n int) {
	st := sa.st
	b := st.bytesIn.Add(uint64(n))
	p := st.pktsIn.Add(uint64(pkts))
	sa.counted(b, p)
}

// CountOut counts an outbound packet of n bytes and checks the byte and
// packet lifetimes.
func (sa *SA) CountOut(n int) { sa.CountOutN(1, n) }

// CountOutN counts pkts outbound packets of n bytes in all at once, as
// CountInN does.
func (sa *SA) CountOutN(pkts, n int) {
	st := sa.st
	b := st.bytesOut.Add(uint64(n))
	p := st.pktsOut.Add(uint64(pkts))
	sa.counted(b, p)
}

func (sa *SA) counted(b, p uint64) {
	sa.st.last.Store(sa.db.clk.Now().UnixNano())
	// Soft before hard, so that one packet crossing both raises both in
	// order.
	if (sa.Soft.Bytes != 0 && b >= sa.Soft.Bytes) || (sa.Soft.Packets != 0 && p >= sa.Soft.Packets) {
		sa.fire(SoftExpired)
	}
	if (sa.Hard.Bytes != 0 && b >= sa.Hard.Bytes) || (sa.Hard.Packets != 0 && p >= sa.Hard.Packets) {
		sa.fire(HardExpired)
	}
}

// CountDrop counts a packet dropped on this SA under reason r.
func (sa *SA) CountDrop(r drop.Reason) {
	if r < drop.Count {
		sa.st.drops[r].Add(1)
	}
}

// fire marks kind as happened and queues its event, once per SA state.
// After a hard expiry the SA's replay window refuses everything.
func (sa *SA) fire(kind EventKind) {
	st := sa.st
	bit := kind.flag()
	if st.flags.Load()&bit != 0 {
		return
	}
	if kind == HardExpired && sa.Replay != nil {
		sa.Replay.dead.Store(true)
	}
	sa.db.queueEvent(st, bit, kind)
}

// Stats is a plain copy of an SA's counters, for status output.
type Stats struct {
	BytesIn, PacketsIn   uint64
	BytesOut, PacketsOut uint64
	Drops                [drop.Count]uint64 // indexed by drop.Reason
	LastPacket           time.Time          // zero if none yet
	Created              time.Time          // when the SA (or the one it replaced in place) was added
	// Seq is, outbound, the last sequence number handed out; inbound, the
	// highest accepted.
	Seq                                    uint64
	SoftExpired, HardExpired, SeqExhausted bool
}

// Stats returns a copy of the SA's counters.
func (sa *SA) Stats() Stats {
	st := sa.st
	s := Stats{
		BytesIn: st.bytesIn.Load(), PacketsIn: st.pktsIn.Load(),
		BytesOut: st.bytesOut.Load(), PacketsOut: st.pktsOut.Load(),
		Created: st.created,
	}
	for r := range s.Drops {
		s.Drops[r] = st.drops[r].Load()
	}
	if t := st.last.Load(); t != 0 {
		s.LastPacket = time.Unix(0, t)
	}
	f := st.flags.Load()
	s.SoftExpired, s.HardExpired, s.SeqExhausted = f&flagSoft != 0, f&flagHard != 0, f&flagExhausted != 0
	if sa.Dir == Outbound {
		s.Seq = st.seq.Load()
		if !sa.ESN && s.Seq > math.MaxUint32 {
			s.Seq = math.MaxUint32
		}
	} else if sa.Replay != nil {
		s.Seq = sa.Replay.Top()
	}
	return s
}

// String identifies the SA for logs (no key material).
func (sa *SA) String() string {
	return fmt.Sprintf("%s/%s SPI %08x %v->%v reqid %d", sa.Proto, sa.Dir, sa.SPI, sa.Src, sa.Dst, sa.ReqID)
}
