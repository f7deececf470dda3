package netio

import (
	"encoding/binary"
	"net/netip"
	"slices"
	"sort"
)

// span is an inclusive range of IPv4 addresses [lo, hi] (host order): one
// element of an nftables interval set.
type span struct{ lo, hi uint32 }

func prefixSpan(p netip.Prefix) span {
	p = p.Masked()
	a := p.Addr().As4()
	lo := binary.BigEndian.Uint32(a[:])
	return span{lo, lo | uint32(uint64(1)<<(32-p.Bits())-1)}
}

func u32Addr(v uint32) netip.Addr {
	return netip.AddrFrom4([4]byte(binary.BigEndian.AppendUint32(nil, v)))
}

// prefixUnion is the userspace model of one of the Filter's interval sets:
// the IPv4 prefixes conns protect, each with the conns that hold it (a
// prefix of several conns is one entry with several owners), and the
// disjoint spans the set holds.
//
// Two CIDR prefixes are either disjoint or one contains the other, so the
// union is cut into spans at every prefix's first address and the address
// after its last: within a span every address is covered by the same
// prefixes, and so belongs to the same conns. That is what makes the
// set's per-element counters attributable to conns exactly (spanOwners).
// The spans are a function of the prefixes present: adding or removing a
// prefix only changes the spans it overlaps (a prefix disjoint from every
// other: one span).
type prefixUnion struct {
	owners map[netip.Prefix]map[string]struct{}
	// sorted are the present prefixes by first address, then shorter
	// first (an enclosing prefix before the ones inside it).
	sorted []netip.Prefix
	// spans are the set's elements, by lo.
	spans []span
}

func newPrefixUnion() *prefixUnion {
	return &prefixUnion{owners: map[netip.Prefix]map[string]struct{}{}}
}

// spanConn is a conn's ownership of a span.
type spanConn struct {
	s    span
	conn string
}

// spanDiff collects the elements a batch of changes adds and deletes, an
// element added then deleted (or deleted then added) within the batch
// cancelling out, and how the ownership of elements changed: owned is +1
// where a conn came to own an element, -1 where it stopped (every owner
// of an element that goes), summed. An element's counter counts from its
// creation, so a conn that comes to own an existing element must not be
// given what it counted before, and one that stops must keep it (the
// Filter banks the difference, spanDiff.bank).
type spanDiff struct {
	add, del map[span]struct{}
	owned    map[spanConn]int
}

func newSpanDiff() *spanDiff {
	return &spanDiff{add: map[span]struct{}{}, del: map[span]struct{}{}, owned: map[spanConn]int{}}
}

func (d *spanDiff) own(s span, conn string, delta int) {
	k := spanConn{s, conn}
	if d.owned[k] += delta; d.owned[k] == 0 {
		delete(d.owned, k)
	}
}

// bank tells, for every conn whose ownership of an element of u's set
// that was there before the batch changed, what to add to its banked
// count: minus the element's count so far where it came to own it, plus
// where it stopped. counts are the elements' counters before the batch,
// by first address. Call it after the batch was applied to u.
func (d *spanDiff) bank(u *prefixUnion, counts map[uint32]uint64, to func(conn string, n int64)) {
	for k, delta := range d.owned {
		if n := int64(counts[k.s.lo]); n != 0 && d.wasSet(u, k.s) {
			to(k.conn, -int64(delta)*n)
		}
	}
}

// wasSet reports whether span s was an element of u's set before the
// batch of d (elements added in it count from zero). Call it after the
// batch was applied to u.
func (d *spanDiff) wasSet(u *prefixUnion, s span) bool {
	if _, ok := d.del[s]; ok {
		return true
	}
	if _, ok := d.add[s]; ok {
		return false
	}
	i := u.spanAt(s.lo)
	return i >= 0 && u.spans[i] == s
}

// needsCounts reports whether the ownership of an element that was in
// u's set changed for a conn that stays (keeps: its counter must be read
// for bank; the counts of a conn that goes go with it).
func (d *spanDiff) needsCounts(u *prefixUnion, stays func(conn string) bool) bool {
	for k := range d.owned {
		if stays(k.conn) && d.wasSet(u, k.s) {
			return true
		}
	}
	return false
}

// countsNeeded returns the first addresses of the elements needsCounts
// finds, each once.
func (d *spanDiff) countsNeeded(u *prefixUnion, stays func(conn string) bool) []uint32 {
	var los []uint32
	for k := range d.owned {
		if stays(k.conn) && d.wasSet(u, k.s) && !slices.Contains(los, k.s.lo) {
			los = append(los, k.s.lo)
		}
	}
	slices.Sort(los)
	return los
}

func (d *spanDiff) empty() bool { return len(d.add) == 0 && len(d.del) == 0 }

// sortedSpans returns the spans of m by lo.
func sortedSpans(m map[span]struct{}) []span {
	out := make([]span, 0, len(m))
	for s := range m {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b span) int { return cmpU32(a.lo, b.lo) })
	return out
}

func cmpU32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func prefixLess(a, b netip.Prefix) int {
	if c := a.Addr().Compare(b.Addr()); c != 0 {
		return c
	}
	return a.Bits() - b.Bits()
}

// holds reports whether conn owns prefix p.
func (u *prefixUnion) holds(conn string, p netip.Prefix) bool {
	_, ok := u.owners[p.Masked()][conn]
	return ok
}

// add records that conn holds p (masked, IPv4); d collects the change
// of elements.
func (u *prefixUnion) add(conn string, p netip.Prefix, d *spanDiff) {
	p = p.Masked()
	if u.holds(conn, p) {
		return
	}
	rs, before, owners := u.region(p)
	if own, ok := u.owners[p]; ok {
		own[conn] = struct{}{}
	} else {
		u.owners[p] = map[string]struct{}{conn: {}}
		i, _ := slices.BinarySearchFunc(u.sorted, p, prefixLess)
		u.sorted = slices.Insert(u.sorted, i, p)
	}
	u.recut(rs, before, owners, d)
}

// remove records that conn no longer holds p; d collects the change of
// elements.
func (u *prefixUnion) remove(conn string, p netip.Prefix, d *spanDiff) {
	p = p.Masked()
	if !u.holds(conn, p) {
		return
	}
	rs, before, owners := u.region(p)
	own := u.owners[p]
	delete(own, conn)
	if len(own) == 0 {
		delete(u.owners, p)
		if i, found := slices.BinarySearchFunc(u.sorted, p, prefixLess); found {
			u.sorted = slices.Delete(u.sorted, i, i+1)
		}
	}
	u.recut(rs, before, owners, d)
}

// region returns what a change of p may touch: p widened to the spans
// its edges fall in (cut when p comes) and to those next to it (joined
// when p goes), the spans inside it and their owners now. The edges of
// the region are edges of spans that stay, or lie next to addresses no
// prefix covers.
func (u *prefixUnion) region(p netip.Prefix) (span, []span, [][]string) {
	rs := prefixSpan(p)
	ps := rs
	if i := u.spanAt(ps.lo); i >= 0 {
		rs.lo = u.spans[i].lo
	}
	if i := u.spanAt(ps.lo - 1); ps.lo > 0 && i >= 0 {
		rs.lo = min(rs.lo, u.spans[i].lo)
	}
	if i := u.spanAt(ps.hi); i >= 0 {
		rs.hi = u.spans[i].hi
	}
	if i := u.spanAt(ps.hi + 1); ps.hi < ^uint32(0) && i >= 0 {
		rs.hi = max(rs.hi, u.spans[i].hi)
	}
	lo, hi := u.spanRange(rs)
	before := slices.Clone(u.spans[lo:hi])
	owners := make([][]string, len(before))
	for i, s := range before {
		owners[i] = u.spanOwners(s)
	}
	return rs, before, owners
}

// spanAt returns the index of the span that holds address a, or -1.
func (u *prefixUnion) spanAt(a uint32) int {
	i := sort.Search(len(u.spans), func(i int) bool { return u.spans[i].hi >= a })
	if i < len(u.spans) && u.spans[i].lo <= a {
		return i
	}
	return -1
}

// recut recomputes the spans inside rs after a change and records in d
// what changed: elements, and the ownership of those that stay.
func (u *prefixUnion) recut(rs span, before []span, ownersBefore [][]string, d *spanDiff) {
	lo, hi := u.spanRange(rs)
	after := u.cut(rs)
	inAfter := make(map[span]bool, len(after))
	for _, s := range after {
		inAfter[s] = true
	}
	inBefore := make(map[span]bool, len(before))
	for i, s := range before {
		inBefore[s] = true
		if !inAfter[s] {
			if _, ok := d.add[s]; ok {
				delete(d.add, s)
			} else {
				d.del[s] = struct{}{}
			}
			for _, c := range ownersBefore[i] {
				d.own(s, c, -1)
			}
			continue
		}
		now := u.spanOwners(s)
		for _, c := range now {
			if !slices.Contains(ownersBefore[i], c) {
				d.own(s, c, 1)
			}
		}
		for _, c := range ownersBefore[i] {
			if !slices.Contains(now, c) {
				d.own(s, c, -1)
			}
		}
	}
	for _, s := range after {
		if inBefore[s] {
			continue
		}
		if _, ok := d.del[s]; ok {
			// It goes back into the set as it was, counter and all:
			// its owners own it again.
			delete(d.del, s)
			for _, c := range u.spanOwners(s) {
				d.own(s, c, 1)
			}
			continue
		}
		d.add[s] = struct{}{}
	}
	u.spans = slices.Replace(u.spans, lo, hi, after...)
}

// spanRange returns the index range of the spans inside rs.
func (u *prefixUnion) spanRange(rs span) (int, int) {
	lo := sort.Search(len(u.spans), func(i int) bool { return u.spans[i].lo >= rs.lo })
	hi := lo
	for hi < len(u.spans) && u.spans[hi].hi <= rs.hi {
		hi++
	}
	return lo, hi
}

// cut returns the spans of the present prefixes within rs (clipped to
// it).
func (u *prefixUnion) cut(rs span) []span {
	type event struct {
		at    uint64
		delta int
	}
	var ev []event
	clip := func(s span) {
		lo, hi := max(s.lo, rs.lo), min(s.hi, rs.hi)
		if lo <= hi {
			ev = append(ev, event{uint64(lo), 1}, event{uint64(hi) + 1, -1})
		}
	}
	// Those that begin before rs and reach into it contain its first
	// address; those that begin inside follow in sorted.
	first := u32Addr(rs.lo)
	for bits := 0; bits <= 32; bits++ {
		q := netip.PrefixFrom(first, bits).Masked()
		if _, ok := u.owners[q]; ok && prefixSpan(q).lo < rs.lo {
			clip(prefixSpan(q))
		}
	}
	i := sort.Search(len(u.sorted), func(i int) bool { return prefixSpan(u.sorted[i]).lo >= rs.lo })
	for ; i < len(u.sorted); i++ {
		s := prefixSpan(u.sorted[i])
		if s.lo > rs.hi {
			break
		}
		clip(s)
	}
	slices.SortFunc(ev, func(a, b event) int {
		switch {
		case a.at < b.at:
			return -1
		case a.at > b.at:
			return 1
		}
		return 0
	})
	var out []span
	cover := 0
	for j := 0; j < len(ev); {
		at := ev[j].at
		for ; j < len(ev) && ev[j].at == at; j++ {
			cover += ev[j].delta
		}
		if cover > 0 && j < len(ev) {
			out = append(out, span{uint32(at), uint32(ev[j].at - 1)})
		}
	}
	return out
}

// spanOwners returns the conns that own span s: those holding a present
// prefix that contains its first address (no prefix edge lies inside a
// span, so such a prefix contains all of it), sorted.
func (u *prefixUnion) spanOwners(s span) []string {
	a := u32Addr(s.lo)
	var out []string
	for bits := 0; bits <= 32; bits++ {
		for c := range u.owners[netip.PrefixFrom(a, bits).Masked()] {
			if !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	sort.Strings(out)
	return out
}
