package spd

import (
	"math/rand/v2"
	"net/netip"
	"testing"
)

// TestCacheFollowsChanges: a lookup through a Cache answers what the DB
// answers at that moment, through every kind of change (add, replace,
// in-place edit, delete, delete by conn), and repeats are answered from
// the entry.
func TestCacheFollowsChanges(t *testing.T) {
	db := New()
	wide := pol("wide", Out, "10.1.0.0/16", "10.2.0.0/16", Protect)
	narrow := pol("narrow", Out, "10.1.0.0/24", "10.2.0.0/24", Protect)
	narrow.ReqID = 2
	in := pol("in", In, "10.1.0.0/24", "10.2.0.0/24", Protect)
	in.ReqID = 2
	tu := Tuple{Src: addr("10.1.0.5"), Dst: addr("10.2.0.7"), Proto: 6, SrcPort: 1000, DstPort: 80}
	back := Tuple{Src: tu.Dst, Dst: tu.Src, Proto: 6, SrcPort: 80, DstPort: 1000}

	none := func() *Policy { return nil }
	is := func(p **Policy) func() *Policy { return func() *Policy { return *p } }
	var c, cIn Cache // one question each: every step asks what the last one did
	steps := []struct {
		name   string
		change func()
		want   func() *Policy // Out lookup of tu
		inOK   bool           // CheckInbound(2, back)
	}{
		{"empty", func() {}, none, false},
		{"add wide", func() { mustAdd(t, db, wide) }, is(&wide), false},
		{"add narrow", func() { mustAdd(t, db, narrow) }, is(&narrow), false},
		{"add in", func() { mustAdd(t, db, in) }, is(&narrow), true},
		{"replace narrow by a discard", func() {
			d := pol("narrow", Out, "10.1.0.0/24", "10.2.0.0/24", Discard)
			if err := db.Replace(narrow.ID, d); err != nil {
				t.Fatal(err)
			}
			narrow = d
		}, is(&narrow), true},
		{"edit in place", func() {
			in.ReqID = 3
			if err := db.Replace(in.ID, in); err != nil {
				t.Fatal(err)
			}
		}, is(&narrow), false},
		{"delete narrow", func() { db.Delete(narrow.ID) }, is(&wide), false},
		{"delete conn wide", func() { db.DeleteConn("wide") }, none, false},
	}
	for _, s := range steps {
		s.change()
		want := s.want()
		for i := 0; i < 3; i++ {
			if got := c.Lookup(db, Out, tu); got != want || got != db.Lookup(Out, tu) {
				t.Fatalf("%s: lookup %d: got %v, want %v", s.name, i, name(got), name(want))
			}
			if got := cIn.CheckInbound(db, 2, back); got != s.inOK || got != db.CheckInbound(2, back) {
				t.Fatalf("%s: CheckInbound %d: got %v, want %v", s.name, i, got, s.inOK)
			}
		}
	}
	// One miss per step (the change), hits for the repeats.
	if n := uint64(len(steps)); c.Misses != n || c.Hits != 2*n || cIn.Misses != n {
		t.Errorf("Out: %d misses, %d hits; In: %d misses; want %d, %d, %d", c.Misses, c.Hits, cIn.Misses, n, 2*n, n)
	}
	var nilCache *Cache
	if nilCache.Lookup(db, Out, tu) != db.Lookup(Out, tu) || nilCache.CheckInbound(db, 2, back) != db.CheckInbound(2, back) {
		t.Error("a nil Cache does not answer as the DB")
	}
}

// TestCacheMatchesIndex: random tuples in runs, with random changes
// between them, answered through a Cache and directly, agree.
func TestCacheMatchesIndex(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 9))
	db := New()
	all := sitePolicies(4)
	var ids []uint64
	var c Cache
	for round := 0; round < 2000; round++ {
		switch rng.IntN(3) {
		case 0:
			p := *all[rng.IntN(len(all))]
			p.ID = 0
			p.Dir = Direction(rng.IntN(2))
			id, err := db.Add(&p)
			if err != nil {
				t.Fatal(err)
			}
			ids = append(ids, id)
		case 1:
			if len(ids) > 0 {
				i := rng.IntN(len(ids))
				db.Delete(ids[i])
				ids = append(ids[:i], ids[i+1:]...)
			}
		}
		i := rng.IntN(4) // few flows: a question often repeats across a change
		tu := Tuple{Src: netip.AddrFrom4([4]byte{172, 16, byte(i % 16), 9}), Dst: netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), byte(rng.IntN(3))}), Proto: 6}
		d := Direction(rng.IntN(2))
		for k := 0; k < 1+rng.IntN(3); k++ {
			if got, want := c.Lookup(db, d, tu), db.Lookup(d, tu); got != want {
				t.Fatalf("round %d: cache %v, index %v", round, name(got), name(want))
			}
		}
	}
	if c.Hits == 0 || c.Misses == 0 {
		t.Errorf("hits %d, misses %d: the runs should give both", c.Hits, c.Misses)
	}
}

func mustAdd(t *testing.T, db *DB, p *Policy) {
	t.Helper()
	if _, err := db.Add(p); err != nil {
		t.Fatal(err)
	}
}

// BenchmarkLookupCached: the lookup of BenchmarkLookup repeated through a
// Cache (a flow's run of packets).
func BenchmarkLookupCached(b *testing.B) {
	db := New()
	for _, p := range sitePolicies(10) {
		db.Add(p)
	}
	tu := Tuple{Src: netip.AddrFrom4([4]byte{172, 16, 7, 9}), Dst: netip.AddrFrom4([4]byte{10, 0, 7, 7}), Proto: 6, SrcPort: 1000, DstPort: 80}
	if db.Lookup(Out, tu) == nil {
		b.Fatal("benchmark tuple matches nothing")
	}
	var c Cache
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		c.Lookup(db, Out, tu)
	}
}
