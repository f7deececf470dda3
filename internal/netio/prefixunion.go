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
// set's per-element counters attributable to conns exactly (owners). The
// spans are a function of the prefixes present: adding or removing a
// prefix only changes the spans inside the outermost present prefix that
// contains it (a prefix disjoint from every other: one span).
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

// spanDiff collects the elements a batch of changes adds and deletes, an
// element added then deleted (or deleted then added) within the batch
// cancelling out. delOwners are the conns that owned each deleted
// element when it went (their counters are banked).
type spanDiff struct {
	add, del  map[span]struct{}
	delOwners map[span][]string
}

func newSpanDiff() *spanDiff {
	return &spanDiff{add: map[span]struct{}{}, del: map[span]struct{}{}, delOwners: map[span][]string{}}
}

func (d *spanDiff) added(s span) {
	if _, ok := d.del[s]; ok {
		delete(d.del, s)
		delete(d.delOwners, s)
		return
	}
	d.add[s] = struct{}{}
}

func (d *spanDiff) deleted(s span, owners []string) {
	if _, ok := d.add[s]; ok {
		delete(d.add, s)
		return
	}
	d.del[s] = struct{}{}
	d.delOwners[s] = owners
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

// outermost returns the shortest present prefix that contains p (p
// itself if none does and p is present), and whether there is one.
func (u *prefixUnion) outermost(p netip.Prefix) (netip.Prefix, bool) {
	for bits := 0; bits <= p.Bits(); bits++ {
		q := netip.PrefixFrom(p.Addr(), bits).Masked()
		if _, ok := u.owners[q]; ok {
			return q, true
		}
	}
	return netip.Prefix{}, false
}

// add records that conn holds p (masked, IPv4); d collects the change
// of elements.
func (u *prefixUnion) add(conn string, p netip.Prefix, d *spanDiff) {
	p = p.Masked()
	if own, ok := u.owners[p]; ok {
		own[conn] = struct{}{} // the spans do not change, their owners do
		return
	}
	r, ok := u.outermost(p)
	if !ok {
		r = p
	}
	u.owners[p] = map[string]struct{}{conn: {}}
	i, _ := slices.BinarySearchFunc(u.sorted, p, prefixLess)
	u.sorted = slices.Insert(u.sorted, i, p)
	// A span cut now was owned by the others only: p was not there.
	u.recut(r, d, func(s span) []string { return u.spanOwnersExcept(s, p) })
}

// remove records that conn no longer holds p; d collects the change of
// elements.
func (u *prefixUnion) remove(conn string, p netip.Prefix, d *spanDiff) {
	p = p.Masked()
	own, ok := u.owners[p]
	if !ok {
		return
	}
	if _, ok := own[conn]; !ok {
		return
	}
	if len(own) > 1 {
		delete(own, conn)
		return
	}
	r, _ := u.outermost(p)
	delete(u.owners, p)
	if i, found := slices.BinarySearchFunc(u.sorted, p, prefixLess); found {
		u.sorted = slices.Delete(u.sorted, i, i+1)
	}
	// A span that goes now was owned by conn too where p covers it.
	u.recut(r, d, func(s span) []string {
		owners := u.spanOwnersExcept(s, netip.Prefix{})
		if ps := prefixSpan(p); ps.lo <= s.lo && s.hi <= ps.hi && !slices.Contains(owners, conn) {
			owners = append(owners, conn)
			sort.Strings(owners)
		}
		return owners
	})
}

// recut recomputes the spans inside r (the outermost prefix the change
// touched) and records the difference in d; ownedBefore gives the
// owners of a span that goes, as they were before the change.
func (u *prefixUnion) recut(r netip.Prefix, d *spanDiff, ownedBefore func(span) []string) {
	rs := prefixSpan(r)
	lo, hi := u.spanRange(rs)
	before := u.spans[lo:hi]
	after := u.cut(rs)
	inAfter := make(map[span]bool, len(after))
	for _, s := range after {
		inAfter[s] = true
	}
	inBefore := make(map[span]bool, len(before))
	for _, s := range before {
		inBefore[s] = true
		if !inAfter[s] {
			d.deleted(s, ownedBefore(s))
		}
	}
	for _, s := range after {
		if !inBefore[s] {
			d.added(s)
		}
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

// cut returns the spans of the present prefixes inside rs.
func (u *prefixUnion) cut(rs span) []span {
	i := sort.Search(len(u.sorted), func(i int) bool { return prefixSpan(u.sorted[i]).lo >= rs.lo })
	type event struct {
		at    uint64
		delta int
	}
	var ev []event
	for ; i < len(u.sorted); i++ {
		s := prefixSpan(u.sorted[i])
		if s.lo > rs.hi {
			break
		}
		ev = append(ev, event{uint64(s.lo), 1}, event{uint64(s.hi) + 1, -1})
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
	return u.spanOwnersExcept(s, netip.Prefix{})
}

// spanOwnersExcept is spanOwners without prefix skip.
func (u *prefixUnion) spanOwnersExcept(s span, skip netip.Prefix) []string {
	a := u32Addr(s.lo)
	var out []string
	for bits := 0; bits <= 32; bits++ {
		q := netip.PrefixFrom(a, bits).Masked()
		if q == skip {
			continue
		}
		for c := range u.owners[q] {
			if !slices.Contains(out, c) {
				out = append(out, c)
			}
		}
	}
	sort.Strings(out)
	return out
}

// prefixes returns the present prefixes (tests).
func (u *prefixUnion) prefixes() []netip.Prefix { return slices.Clone(u.sorted) }
