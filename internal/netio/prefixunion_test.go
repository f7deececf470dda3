package netio

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"reflect"
	"slices"
	"testing"
)

// kernelSet simulates an interval set: it refuses what the kernel
// refuses (deleting a missing element, adding one that overlaps).
type kernelSet map[span]struct{}

func (k kernelSet) apply(t *testing.T, d *spanDiff) {
	t.Helper()
	for s := range d.del {
		if _, ok := k[s]; !ok {
			t.Fatalf("diff deletes %v, which the set does not hold", s)
		}
		delete(k, s)
	}
	for s := range d.add {
		for o := range k {
			if s.lo <= o.hi && o.lo <= s.hi {
				t.Fatalf("diff adds %v over %v", s, o)
			}
		}
		k[s] = struct{}{}
	}
}

func spanOf(a, b string) span {
	return span{prefixSpan(netip.PrefixFrom(netip.MustParseAddr(a), 32)).lo, prefixSpan(netip.PrefixFrom(netip.MustParseAddr(b), 32)).lo}
}

type unionOp struct {
	remove bool
	conn   string
	prefix string
}

func TestPrefixUnion(t *testing.T) {
	type want struct {
		spans  []span
		owners [][]string // of each span
	}
	tests := []struct {
		name string
		ops  []unionOp
		want want
		// changes is the number of element changes (adds + deletes)
		// the last op causes.
		lastChanges int
	}{
		{"disjoint", []unionOp{{false, "a", "10.0.0.0/24"}, {false, "b", "10.0.2.0/30"}},
			want{[]span{spanOf("10.0.0.0", "10.0.0.255"), spanOf("10.0.2.0", "10.0.2.3")}, [][]string{{"a"}, {"b"}}}, 1},
		{"equal, shared", []unionOp{{false, "a", "10.0.0.0/24"}, {false, "b", "10.0.0.0/24"}},
			want{[]span{spanOf("10.0.0.0", "10.0.0.255")}, [][]string{{"a", "b"}}}, 0},
		{"equal, one removed keeps the other", []unionOp{{false, "a", "10.0.0.0/24"}, {false, "b", "10.0.0.0/24"}, {true, "a", "10.0.0.0/24"}},
			want{[]span{spanOf("10.0.0.0", "10.0.0.255")}, [][]string{{"b"}}}, 0},
		{"removing what another conn holds does nothing", []unionOp{{false, "a", "10.0.0.0/24"}, {true, "b", "10.0.0.0/24"}},
			want{[]span{spanOf("10.0.0.0", "10.0.0.255")}, [][]string{{"a"}}}, 0},
		{"nested inner after", []unionOp{{false, "a", "10.0.0.0/16"}, {false, "b", "10.0.1.0/24"}},
			want{[]span{spanOf("10.0.0.0", "10.0.0.255"), spanOf("10.0.1.0", "10.0.1.255"), spanOf("10.0.2.0", "10.0.255.255")},
				[][]string{{"a"}, {"a", "b"}, {"a"}}}, 4},
		{"nested outer after", []unionOp{{false, "b", "10.0.1.0/24"}, {false, "a", "10.0.0.0/16"}},
			want{[]span{spanOf("10.0.0.0", "10.0.0.255"), spanOf("10.0.1.0", "10.0.1.255"), spanOf("10.0.2.0", "10.0.255.255")},
				[][]string{{"a"}, {"a", "b"}, {"a"}}}, 2},
		{"nested at the start", []unionOp{{false, "a", "10.0.0.0/16"}, {false, "b", "10.0.0.0/24"}},
			want{[]span{spanOf("10.0.0.0", "10.0.0.255"), spanOf("10.0.1.0", "10.0.255.255")}, [][]string{{"a", "b"}, {"a"}}}, 3},
		{"inner removed: merged again", []unionOp{{false, "a", "10.0.0.0/16"}, {false, "b", "10.0.1.0/24"}, {true, "b", "10.0.1.0/24"}},
			want{[]span{spanOf("10.0.0.0", "10.0.255.255")}, [][]string{{"a"}}}, 4},
		{"outer removed: inner stays", []unionOp{{false, "a", "10.0.0.0/16"}, {false, "b", "10.0.1.0/24"}, {true, "a", "10.0.0.0/16"}},
			want{[]span{spanOf("10.0.1.0", "10.0.1.255")}, [][]string{{"b"}}}, 2},
		{"one conn, nested prefixes", []unionOp{{false, "a", "10.0.0.0/16"}, {false, "a", "10.0.1.0/24"}},
			want{[]span{spanOf("10.0.0.0", "10.0.0.255"), spanOf("10.0.1.0", "10.0.1.255"), spanOf("10.0.2.0", "10.0.255.255")},
				[][]string{{"a"}, {"a"}, {"a"}}}, 4},
		{"adjacent stay apart", []unionOp{{false, "a", "10.0.0.0/24"}, {false, "b", "10.0.1.0/24"}},
			want{[]span{spanOf("10.0.0.0", "10.0.0.255"), spanOf("10.0.1.0", "10.0.1.255")}, [][]string{{"a"}, {"b"}}}, 1},
		{"the whole space and its last address", []unionOp{{false, "a", "0.0.0.0/0"}, {false, "b", "255.255.255.255/32"}},
			want{[]span{spanOf("0.0.0.0", "255.255.255.254"), spanOf("255.255.255.255", "255.255.255.255")}, [][]string{{"a"}, {"a", "b"}}}, 3},
		{"unmasked prefix", []unionOp{{false, "a", "10.0.0.7/24"}, {true, "a", "10.0.0.9/24"}},
			want{nil, [][]string{}}, 1},
		{"three levels, middle removed", []unionOp{{false, "a", "10.0.0.0/8"}, {false, "b", "10.1.0.0/16"}, {false, "c", "10.1.2.0/24"}, {true, "b", "10.1.0.0/16"}},
			want{[]span{spanOf("10.0.0.0", "10.1.1.255"), spanOf("10.1.2.0", "10.1.2.255"), spanOf("10.1.3.0", "10.255.255.255")},
				[][]string{{"a"}, {"a", "c"}, {"a"}}}, 6},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u := newPrefixUnion()
			k := kernelSet{}
			var d *spanDiff
			for _, op := range tt.ops {
				d = newSpanDiff()
				if op.remove {
					u.remove(op.conn, netip.MustParsePrefix(op.prefix), d)
				} else {
					u.add(op.conn, netip.MustParsePrefix(op.prefix), d)
				}
				k.apply(t, d)
			}
			if !slices.Equal(u.spans, tt.want.spans) {
				t.Fatalf("spans %v, want %v", u.spans, tt.want.spans)
			}
			if got := sortedSpans(k); !slices.Equal(got, u.spans) && !(len(got) == 0 && len(u.spans) == 0) {
				t.Fatalf("the kernel set holds %v, the model %v", got, u.spans)
			}
			owners := [][]string{}
			for _, s := range u.spans {
				owners = append(owners, u.spanOwners(s))
			}
			if !reflect.DeepEqual(owners, tt.want.owners) {
				t.Errorf("owners %v, want %v", owners, tt.want.owners)
			}
			if n := len(d.add) + len(d.del); n != tt.lastChanges {
				t.Errorf("the last op changed %d elements (+%v -%v), want %d", n, d.add, d.del, tt.lastChanges)
			}
		})
	}
}

// TestPrefixUnionOwnership: the ownership changes of elements that
// stay or go, and a batch that cancels out.
func TestPrefixUnionOwnership(t *testing.T) {
	u := newPrefixUnion()
	d := newSpanDiff()
	u.add("a", netip.MustParsePrefix("10.0.0.0/16"), d)
	if len(d.owned) != 0 {
		t.Errorf("a new element: ownership changes %v, want none (it counts from zero)", d.owned)
	}
	d = newSpanDiff()
	u.add("b", netip.MustParsePrefix("10.0.0.0/16"), d)
	whole := spanOf("10.0.0.0", "10.0.255.255")
	if want := map[spanConn]int{{whole, "b"}: 1}; !maps.Equal(d.owned, want) {
		t.Errorf("shared: %v, want %v", d.owned, want)
	}
	d = newSpanDiff()
	u.remove("b", netip.MustParsePrefix("10.0.0.0/16"), d)
	if want := map[spanConn]int{{whole, "b"}: -1}; !maps.Equal(d.owned, want) {
		t.Errorf("unshared: %v, want %v", d.owned, want)
	}
	d = newSpanDiff()
	u.add("c", netip.MustParsePrefix("10.0.1.0/24"), d)
	if want := map[spanConn]int{{whole, "a"}: -1}; !maps.Equal(d.owned, want) {
		t.Errorf("split: %v, want %v", d.owned, want)
	}
	d = newSpanDiff()
	u.remove("c", netip.MustParsePrefix("10.0.1.0/24"), d)
	want := map[spanConn]int{
		{spanOf("10.0.0.0", "10.0.0.255"), "a"}:   -1,
		{spanOf("10.0.1.0", "10.0.1.255"), "a"}:   -1,
		{spanOf("10.0.1.0", "10.0.1.255"), "c"}:   -1,
		{spanOf("10.0.2.0", "10.0.255.255"), "a"}: -1,
	}
	if !maps.Equal(d.owned, want) {
		t.Errorf("merged: %v, want %v", d.owned, want)
	}
	// Within one batch, an element added and deleted again cancels out,
	// and one deleted and added again stays with its owners.
	d = newSpanDiff()
	u.add("c", netip.MustParsePrefix("10.9.0.0/24"), d)
	u.remove("c", netip.MustParsePrefix("10.9.0.0/24"), d)
	u.add("x", netip.MustParsePrefix("10.0.1.0/24"), d)
	u.remove("x", netip.MustParsePrefix("10.0.1.0/24"), d)
	if !d.empty() || len(d.owned) != 0 && d.needsCounts(u, func(string) bool { return true }) {
		t.Errorf("add then remove in one batch: diff +%v -%v owned %v, want none", d.add, d.del, d.owned)
	}
}

// TestPrefixUnionRandom checks random batches of adds and removes of
// nesting and equal prefixes against a brute-force model: every address's
// owners are the conns holding a prefix that contains it, the diffs keep
// a simulated kernel set equal to the model, and with packets counted by
// the simulated set's elements, each conn's count (banked plus the
// elements it owns, as Filter.Counts) is the packets to addresses it held
// when they were sent.
func TestPrefixUnionRandom(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	u := newPrefixUnion()
	k := map[span]uint64{} // element: counter
	held := map[string]map[netip.Prefix]bool{}
	want, banked := map[string]int64{}, map[string]int64{}
	base := prefixSpan(netip.MustParsePrefix("10.0.0.0/22")).lo
	randPrefix := func() netip.Prefix {
		return netip.PrefixFrom(u32Addr(base+uint32(rng.IntN(1024))), 22+rng.IntN(9)).Masked()
	}
	for step := range 3000 {
		d := newSpanDiff()
		// Up to three changes per batch, as AddConn replacing prefixes.
		for range 1 + rng.IntN(3) {
			conn := fmt.Sprintf("c%d", rng.IntN(6))
			p := randPrefix()
			if held[conn] == nil {
				held[conn] = map[netip.Prefix]bool{}
			}
			if rng.IntN(2) == 0 {
				u.add(conn, p, d)
				held[conn][p] = true
			} else {
				u.remove(conn, p, d)
				delete(held[conn], p)
			}
		}
		counts := map[uint32]uint64{}
		for s, n := range k {
			counts[s.lo] = n
		}
		for s := range d.del {
			if _, ok := k[s]; !ok {
				t.Fatalf("step %d: diff deletes %v, which the set does not hold", step, s)
			}
			delete(k, s)
		}
		for s := range d.add {
			for o := range k {
				if s.lo <= o.hi && o.lo <= s.hi {
					t.Fatalf("step %d: diff adds %v over %v", step, s, o)
				}
			}
			k[s] = 0
		}
		d.bank(u, counts, func(c string, n int64) { banked[c] += n })
		for c, ps := range held {
			if len(ps) == 0 { // RemoveConn: its counts go with it
				delete(held, c)
				delete(banked, c)
				delete(want, c)
			}
		}
		if got := sortedSpans(func() map[span]struct{} {
			m := map[span]struct{}{}
			for s := range k {
				m[s] = struct{}{}
			}
			return m
		}()); len(got)+len(u.spans) > 0 && !slices.Equal(got, u.spans) {
			t.Fatalf("step %d: the kernel set holds %v, the model %v", step, got, u.spans)
		}
		owners := func(a uint32) []string {
			var out []string
			for c, ps := range held {
				for p := range ps {
					if p.Contains(u32Addr(a)) {
						out = append(out, c)
						break
					}
				}
			}
			slices.Sort(out)
			return out
		}
		// Packets.
		for range 5 {
			a := base + uint32(rng.IntN(1024))
			for s := range k {
				if s.lo <= a && a <= s.hi {
					k[s]++
				}
			}
			for _, c := range owners(a) {
				want[c]++
			}
		}
		got := maps.Clone(banked)
		counts = map[uint32]uint64{}
		for s, n := range k {
			counts[s.lo] = n
		}
		attribute(u, counts, func(c string, n uint64) { got[c] += int64(n) })
		for c := range got {
			if got[c] == 0 {
				delete(got, c)
			}
		}
		for c := range want {
			if want[c] == 0 {
				delete(want, c)
			}
		}
		if !maps.Equal(got, want) {
			t.Fatalf("step %d: counts %v, want %v", step, got, want)
		}
		if step%50 != 0 {
			continue
		}
		if canon := u.cut(span{0, ^uint32(0)}); !slices.Equal(canon, u.spans) {
			t.Fatalf("step %d: spans %v, cut from scratch %v", step, u.spans, canon)
		}
		for a := base; a < base+1024; a++ {
			i := u.spanAt(a)
			var got []string
			if i >= 0 {
				got = u.spanOwners(u.spans[i])
			}
			if w := owners(a); !slices.Equal(got, w) {
				t.Fatalf("step %d: %v owned by %v, want %v (spans %v)", step, u32Addr(a), got, w, u.spans)
			}
		}
	}
}
