package spd

import (
	"net/netip"
	"sort"
)

// index is the compiled, immutable lookup structure: per direction and
// address family, a binary trie over the remote prefix whose nodes hold a
// second trie over the local prefix, whose nodes hold the policies with
// exactly those two prefixes in preference order.
type index struct {
	v4, v6 [numDirs]*node
}

type node struct {
	child [2]*node
	sub   *node     // remote-trie node: the local trie of its policies
	pols  []*Policy // local-trie node: the policies, best first
}

func build(all []*Policy) *index {
	ix := &index{}
	for _, p := range all {
		roots := &ix.v4
		if p.Sel.Remote.Addr().Is6() {
			roots = &ix.v6
		}
		if roots[p.Dir] == nil {
			roots[p.Dir] = &node{}
		}
		r := insert(roots[p.Dir], p.Sel.Remote)
		if r.sub == nil {
			r.sub = &node{}
		}
		l := insert(r.sub, p.Sel.Local)
		l.pols = append(l.pols, p)
	}
	for _, roots := range []*[numDirs]*node{&ix.v4, &ix.v6} {
		for _, root := range roots {
			sortAll(root)
		}
	}
	return ix
}

// with returns a copy of ix in which p is added (add) or removed: only
// the nodes on p's path are copied, so a change costs O(address bits), not
// O(policies).
func (ix *index) with(p *Policy, add bool) *index {
	next := *ix
	roots := &next.v4
	if p.Sel.Remote.Addr().Is6() {
		roots = &next.v6
	}
	roots[p.Dir] = editPath(roots[p.Dir], p.Sel.Remote, func(r *node) {
		r.sub = editPath(r.sub, p.Sel.Local, func(l *node) {
			pols := make([]*Policy, 0, len(l.pols)+1)
			for _, q := range l.pols {
				if q != p {
					pols = append(pols, q)
				}
			}
			if add {
				i := sort.Search(len(pols), func(i int) bool { return less(p, pols[i]) })
				pols = append(pols, nil)
				copy(pols[i+1:], pols[i:])
				pols[i] = p
			}
			l.pols = pols
		})
	})
	return &next
}

// editPath copies the nodes from n down to pfx, applies edit to the copy of
// the last one and prunes nodes left empty. n may be nil.
func editPath(n *node, pfx netip.Prefix, edit func(*node)) *node {
	a := pfx.Addr().AsSlice()
	var walk func(n *node, i int) *node
	walk = func(n *node, i int) *node {
		c := &node{}
		if n != nil {
			*c = *n
		}
		if i == pfx.Bits() {
			edit(c)
		} else {
			b := (a[i/8] >> (7 - i%8)) & 1
			c.child[b] = walk(c.child[b], i+1)
		}
		if c.child[0] == nil && c.child[1] == nil && c.sub == nil && len(c.pols) == 0 {
			return nil
		}
		return c
	}
	return walk(n, 0)
}

func insert(n *node, pfx netip.Prefix) *node {
	a := pfx.Addr().AsSlice()
	for i := 0; i < pfx.Bits(); i++ {
		b := (a[i/8] >> (7 - i%8)) & 1
		if n.child[b] == nil {
			n.child[b] = &node{}
		}
		n = n.child[b]
	}
	return n
}

func sortAll(n *node) {
	if n == nil {
		return
	}
	if len(n.pols) > 1 {
		sort.Slice(n.pols, func(i, j int) bool { return less(n.pols[i], n.pols[j]) })
	}
	sortAll(n.sub)
	sortAll(n.child[0])
	sortAll(n.child[1])
}

// lookup returns the preferred policy of direction d selecting t.
func (ix *index) lookup(d Direction, t *Tuple) *Policy {
	if d >= numDirs {
		return nil
	}
	local, remote := t.Src, t.Dst
	if d != Out {
		local, remote = t.Dst, t.Src
	}
	var root *node
	var bits int
	switch {
	case remote.Is4() && local.Is4():
		root, bits = ix.v4[d], 32
	case remote.Is6() && local.Is6():
		root, bits = ix.v6[d], 128
	default:
		return nil
	}
	ra, la := remote.As16(), local.As16()
	off := 0
	if bits == 32 {
		off = 12 // As16 of an IPv4 address is v4-mapped
	}
	var best *Policy
	for n, i := root, 0; n != nil; i++ {
		if n.sub != nil {
			best = walkLocal(n.sub, la[off:], bits, d, t, best)
		}
		if i == bits {
			break
		}
		n = n.child[(ra[off+i/8]>>(7-i%8))&1]
	}
	return best
}

func walkLocal(n *node, la []byte, bits int, d Direction, t *Tuple, best *Policy) *Policy {
	for i := 0; n != nil; i++ {
		for _, p := range n.pols {
			if best != nil && !less(p, best) {
				break // the rest of this list is worse still
			}
			if p.Sel.matches(d, t) {
				best = p
				break
			}
		}
		if i == bits {
			break
		}
		n = n.child[(la[i/8]>>(7-i%8))&1]
	}
	return best
}
