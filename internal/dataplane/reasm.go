package dataplane

import (
	"encoding/binary"
	"time"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/netio"
)

// Transport mode protects whole datagrams (RFC 4303 3.1.1): a datagram
// larger than the TUN's MTU reaches gosec as fragments the host kernel
// made, so the outbound path reassembles them before sealing and, when
// the sealed packet no longer fits the wire, fragments the outer packet
// (raw sockets do not fragment for us). Tunnel mode needs neither: it
// carries fragments as they are.

const (
	// reasmSlots bounds datagrams being reassembled per TUN loop.
	reasmSlots = 16
	// reasmTimeout forgets an incomplete datagram (RFC 791: 15 s and up).
	reasmTimeout = 30 * time.Second
	// reasmMaxHeader is the largest IPv4 header.
	reasmMaxHeader = 60
	// reasmBufSize holds headroom, the largest header and datagram, and
	// room to seal behind it.
	reasmBufSize = netio.Headroom + reasmMaxHeader + 65535 + tailroom
)

type reasmKey struct {
	src, dst [4]byte
	id       uint16
	proto    uint8
}

type reasmSlot struct {
	used     bool
	done     bool // complete; its buffer is in flight until the batch ends
	key      reasmKey
	deadline time.Time
	buf      []byte
	hl       int    // header length, once the first fragment arrived
	total    int    // payload length, once the last fragment arrived (-1 before)
	got      int    // payload bytes received
	cover    []byte // one bit per 8-byte block received
}

// reassembler joins the fragments of outbound transport-mode datagrams.
// It belongs to one TUN loop and allocates its buffers once.
type reassembler struct {
	slots []reasmSlot
	now   func() time.Time
}

func newReassembler(now func() time.Time) *reassembler {
	return &reassembler{slots: make([]reasmSlot, reasmSlots), now: now}
}

// isFragment reports whether the IPv4 packet is a fragment.
func isFragment(pkt []byte) bool {
	ff := binary.BigEndian.Uint16(pkt[iphdr.OffFlagsFrag:])
	return ff&0x2000 != 0 || ff&0x1fff != 0
}

// add files one fragment. When it completes a datagram, add returns the
// buffer holding it and the datagram's offset and length there (with at
// least netio.Headroom bytes before and tailroom after). ok is false
// while fragments are missing; bad is true when the fragment was refused
// (overlap, inconsistency, no slot): the datagram is dropped.
func (r *reassembler) add(pkt []byte) (buf []byte, off, n int, ok, bad bool) {
	hl, total, err := iphdr.HeaderLen(pkt)
	if err != nil || total > len(pkt) {
		return nil, 0, 0, false, true
	}
	ff := binary.BigEndian.Uint16(pkt[iphdr.OffFlagsFrag:])
	more := ff&0x2000 != 0
	foff := int(ff&0x1fff) * 8
	payload := pkt[hl:total]
	if (more && len(payload)%8 != 0) || len(payload) == 0 || foff+len(payload) > 65535-hl {
		return nil, 0, 0, false, true
	}
	var k reasmKey
	copy(k.src[:], pkt[iphdr.OffSrc:iphdr.OffSrc+4])
	copy(k.dst[:], pkt[iphdr.OffDst:iphdr.OffDst+4])
	k.id = binary.BigEndian.Uint16(pkt[iphdr.OffID:])
	k.proto = pkt[iphdr.OffProtocol]
	now := r.now()
	s := r.slot(k, now)
	if s == nil {
		return nil, 0, 0, false, true
	}
	// Overlapping fragments are refused (RFC 5722's rule for IPv6; the
	// local kernel never sends them).
	first, last := foff/8, (foff+len(payload)+7)/8
	for b := first; b < last; b++ {
		if s.cover[b/8]&(1<<(b%8)) != 0 {
			s.used = false
			return nil, 0, 0, false, true
		}
	}
	for b := first; b < last; b++ {
		s.cover[b/8] |= 1 << (b % 8)
	}
	base := netio.Headroom + reasmMaxHeader
	copy(s.buf[base+foff:], payload)
	s.got += len(payload)
	if foff == 0 {
		s.hl = hl
		copy(s.buf[base-hl:base], pkt[:hl])
	}
	if !more {
		if s.total >= 0 && s.total != foff+len(payload) {
			s.used = false
			return nil, 0, 0, false, true
		}
		s.total = foff + len(payload)
	}
	if s.total < 0 || s.hl == 0 || s.got != s.total {
		return nil, 0, 0, false, false
	}
	// Complete: rewrite the header for the whole datagram.
	start := base - s.hl
	h := s.buf[start:base]
	binary.BigEndian.PutUint16(h[iphdr.OffTotalLen:], uint16(s.hl+s.total))
	binary.BigEndian.PutUint16(h[iphdr.OffFlagsFrag:], ff&0x4000) // keep DF (never set here), clear MF and offset
	iphdr.SetChecksum(h)
	s.used, s.done = false, true
	return s.buf, start, s.hl + s.total, true, false
}

// release frees the slots of datagrams completed in the last batch, once
// their packets have been sent.
func (r *reassembler) release() {
	for i := range r.slots {
		r.slots[i].done = false
	}
}

// slot finds the datagram's slot or takes a free (or expired) one.
func (r *reassembler) slot(k reasmKey, now time.Time) *reasmSlot {
	var free *reasmSlot
	for i := range r.slots {
		s := &r.slots[i]
		if s.used && now.After(s.deadline) {
			s.used = false
		}
		if s.used && s.key == k {
			return s
		}
		if !s.used && !s.done && free == nil {
			free = s
		}
	}
	if free == nil {
		return nil
	}
	if free.buf == nil {
		free.buf = make([]byte, reasmBufSize)
		free.cover = make([]byte, 65536/8/8+1)
	}
	free.used, free.key, free.deadline = true, k, now.Add(reasmTimeout)
	free.hl, free.total, free.got = 0, -1, 0
	clear(free.cover)
	return free
}

// fragmentOuter cuts the IPv4 packet pkt into fragments of at most mtu
// bytes, written one after another into arena; it returns them (views
// into arena) or nil when arena is too small. The first fragment keeps
// the header with its options; the others carry a 20-byte header (RFC 791
// asks to copy options with the copy flag; gosec's outer headers for
// transport mode only have options when the original datagram had them).
func fragmentOuter(pkt []byte, mtu int, arena []byte, out [][]byte) [][]byte {
	hl, total, err := iphdr.HeaderLen(pkt)
	if err != nil || total > len(pkt) {
		return nil
	}
	payload := pkt[hl:total]
	pos := 0
	for off := 0; off < len(payload); {
		h := hl
		if off > 0 {
			h = iphdr.IPv4MinLen
		}
		room := (mtu - h) &^ 7
		if room <= 0 {
			return nil
		}
		n := min(room, len(payload)-off)
		if pos+h+n > len(arena) {
			return nil
		}
		f := arena[pos : pos+h+n]
		copy(f, pkt[:iphdr.IPv4MinLen])
		if h > iphdr.IPv4MinLen {
			copy(f[iphdr.IPv4MinLen:], pkt[iphdr.IPv4MinLen:hl])
		}
		f[0] = 0x40 | byte(h/4)
		copy(f[h:], payload[off:off+n])
		ff := uint16(off / 8)
		if off+n < len(payload) {
			ff |= 0x2000
		}
		binary.BigEndian.PutUint16(f[iphdr.OffFlagsFrag:], ff)
		binary.BigEndian.PutUint16(f[iphdr.OffTotalLen:], uint16(h+n))
		iphdr.SetChecksum(f[:h])
		out = append(out, f)
		pos += h + n
		off += n
	}
	return out
}
