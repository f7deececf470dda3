package spd

// Cache remembers the last lookup made through it. A flow's packets come
// in runs (the TUN hands over a TCP super-packet as up to 64 KB of
// segments of one flow, and a receive batch is mostly one peer's), so a
// data-plane reader that looks up each packet's policy finds the answer
// here at the cost of one comparison instead of a walk down both tries.
//
// An entry is valid only for the index it was computed on: every change to
// the DB installs a new index, so the first lookup after a change misses
// and the policy it returns is always the one DB.Lookup would return at
// that moment. The zero Cache is empty. A Cache is not safe for concurrent
// use: each reader or sequential stage keeps its own. Until its next
// lookup it keeps the index it last used reachable.
type Cache struct {
	idx *index
	d   Direction
	t   Tuple
	p   *Policy
	// Hits and Misses count the lookups answered from the entry and
	// those that walked the index (for tests and benchmarks).
	Hits, Misses uint64
}

// lookup returns ix's preferred policy of direction d for t, from the
// entry when it is ix's answer for the same question.
func (c *Cache) lookup(ix *index, d Direction, t *Tuple) *Policy {
	if c.idx == ix && c.d == d && c.t == *t {
		c.Hits++
		return c.p
	}
	c.Misses++
	p := ix.lookup(d, t)
	c.idx, c.d, c.t, c.p = ix, d, *t, p
	return p
}

// Lookup is db.Lookup(d, t) answered through c. A nil c looks up directly.
func (c *Cache) Lookup(db *DB, d Direction, t Tuple) *Policy {
	if c == nil {
		return db.Lookup(d, t)
	}
	return c.lookup(db.idx.Load(), d, &t)
}

// CheckInbound is db.CheckInbound(reqid, t) answered through c. A nil c
// checks directly.
func (c *Cache) CheckInbound(db *DB, reqid uint32, t Tuple) bool {
	if c == nil {
		return db.CheckInbound(reqid, t)
	}
	p := c.lookup(db.idx.Load(), In, &t)
	return p != nil && p.Action == Protect && p.ReqID == reqid
}
