// Package spd is the Security Policy Database (RFC 4301 4.4.1): which
// traffic is protected, bypassed or discarded, looked up per packet.
//
// Policies live in an immutable index (a binary trie over the remote
// prefix whose nodes hold a trie over the local prefix, whose nodes hold
// the policies in preference order) that lookups read through an atomic
// pointer, without locks or allocations. A change copies only the nodes on
// its path and publishes the new root, so adding one of 10,000 policies
// costs the same as adding the first.
package spd

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"sync"
	"sync/atomic"
)

// Direction is the traffic direction a policy applies to.
type Direction uint8

// The directions, as XFRM has them.
const (
	Out Direction = iota // sent by this host or forwarded to a peer
	In                   // received for this host
	Fwd                  // received and forwarded
	numDirs
)

func (d Direction) String() string {
	switch d {
	case Out:
		return "out"
	case In:
		return "in"
	case Fwd:
		return "fwd"
	}
	return "dir?"
}

// Action is what a policy does with matching traffic.
type Action uint8

// The actions.
const (
	Protect Action = iota // apply the SAs of the policy's ReqID
	Bypass                // let it pass in the clear
	Discard               // drop it
)

func (a Action) String() string {
	switch a {
	case Protect:
		return "protect"
	case Bypass:
		return "bypass"
	case Discard:
		return "discard"
	}
	return "action?"
}

// PortRange is an inclusive range of ports. For ICMP a packet's type
// stands in its source port and its code in its destination port, as in
// strongSwan's and Linux XFRM's selectors: an Out policy's LocalPorts
// select the type, an In policy's RemotePorts do.
type PortRange struct{ Lo, Hi uint16 }

// AnyPort matches every port.
var AnyPort = PortRange{0, 65535}

// Contains reports whether p is in r.
func (r PortRange) Contains(p uint16) bool { return p >= r.Lo && p <= r.Hi }

func (r PortRange) any() bool { return r.Lo == 0 && r.Hi == 65535 }

func (r PortRange) String() string {
	if r.any() {
		return "any"
	}
	if r.Lo == r.Hi {
		return fmt.Sprint(r.Lo)
	}
	return fmt.Sprintf("%d-%d", r.Lo, r.Hi)
}

// Selector picks traffic: for Out, Local is the source and Remote the
// destination; for In and Fwd, Remote is the source and Local the
// destination.
type Selector struct {
	Local, Remote           netip.Prefix
	Proto                   uint8 // 0 = any
	LocalPorts, RemotePorts PortRange
}

// Template mode values.
const (
	TemplateTransport uint8 = iota
	TemplateTunnel
)

// Template describes an SA a Protect policy needs (an ESP or AH SA, in a
// mode, between tunnel endpoints).
type Template struct {
	Proto                uint8 // 50 or 51
	Mode                 uint8 // TemplateTransport or TemplateTunnel
	TunnelSrc, TunnelDst netip.Addr
}

// Policy is one SPD entry.
type Policy struct {
	ID       uint64 // assigned by Add
	Name     string // the conn it belongs to
	Dir      Direction
	Sel      Selector
	Action   Action
	Priority uint32 // lower wins, as in XFRM
	// ReqID links a Protect policy to its SAs in the SAD.
	ReqID uint32
	// Templates are the SAs a Protect policy applies, in the order they
	// are applied outbound (innermost first, as setkey and XFRM list
	// them): an AH+ESP bundle is [ESP, AH].
	Templates []Template
	// Trap marks a Protect policy whose SAs do not exist yet: traffic that
	// hits it asks the key manager to negotiate them.
	Trap bool
}

// Tuple is the selector fields of one packet.
type Tuple struct {
	Src, Dst         netip.Addr
	Proto            uint8
	SrcPort, DstPort uint16 // ICMP: type and code
}

// Matches reports whether the packet t, travelling in the policy's
// direction, is selected by p (its selectors only: priority and other
// policies play no part; use DB.Lookup for the preferred policy).
func (p *Policy) Matches(t Tuple) bool { return p.Sel.matches(p.Dir, &t) }

// matches reports whether t (as seen in direction d) is selected by s.
func (s *Selector) matches(d Direction, t *Tuple) bool {
	local, remote := t.Src, t.Dst
	lport, rport := t.SrcPort, t.DstPort
	if d != Out {
		local, remote = t.Dst, t.Src
		lport, rport = t.DstPort, t.SrcPort
	}
	if !s.Local.Contains(local) || !s.Remote.Contains(remote) {
		return false
	}
	if s.Proto != 0 && s.Proto != t.Proto {
		return false
	}
	if s.LocalPorts.any() && s.RemotePorts.any() {
		return true
	}
	if !hasPorts(t.Proto) {
		return false // a port selector cannot match a portless packet
	}
	return s.LocalPorts.Contains(lport) && s.RemotePorts.Contains(rport)
}

// specificity orders policies of equal priority: more prefix bits (local
// plus remote) first, then port selectors, then a specific protocol. These
// are the weights strongSwan's kernel-netlink plugin uses to derive a
// policy's XFRM priority from its selectors (get_priority), so overlapping
// conns resolve here as they do in strongSwan.
func specificity(p *Policy) int {
	s := (p.Sel.Remote.Bits() + p.Sel.Local.Bits()) * 4
	if !p.Sel.LocalPorts.any() || !p.Sel.RemotePorts.any() {
		s += 2
	}
	if p.Sel.Proto != 0 {
		s++
	}
	return s
}

// less orders policies by preference.
func less(a, b *Policy) bool {
	if a.Priority != b.Priority {
		return a.Priority < b.Priority
	}
	sa, sb := specificity(a), specificity(b)
	if sa != sb {
		return sa > sb
	}
	return a.ID < b.ID
}

// DB is the policy database.
type DB struct {
	mu       sync.Mutex
	policies map[uint64]*Policy
	nextID   uint64
	idx      atomic.Pointer[index]
	watchers []chan struct{}
}

// New returns an empty DB.
func New() *DB {
	db := &DB{policies: map[uint64]*Policy{}}
	db.idx.Store(build(nil))
	return db
}

// Add validates p, assigns its ID and adds it.
func (db *DB) Add(p *Policy) (uint64, error) {
	if err := validate(p); err != nil {
		return 0, err
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	if q, ok := db.policies[p.ID]; ok && q == p {
		return 0, fmt.Errorf("spd: policy %d (%s) is already in the database", p.ID, p.Name)
	}
	db.nextID++
	p.ID = db.nextID
	p.Sel.Local, p.Sel.Remote = p.Sel.Local.Masked(), p.Sel.Remote.Masked()
	db.policies[p.ID] = p
	db.idx.Store(db.idx.Load().with(p, true))
	db.changed()
	return p.ID, nil
}

// Replace swaps the policy with ID id for p (p gets that ID). A stored
// policy must not be modified in place except through Replace(p.ID, p).
func (db *DB) Replace(id uint64, p *Policy) error {
	if err := validate(p); err != nil {
		return err
	}
	db.mu.Lock()
	defer db.mu.Unlock()
	old, ok := db.policies[id]
	if !ok {
		return fmt.Errorf("spd: no policy %d", id)
	}
	p.ID = id
	p.Sel.Local, p.Sel.Remote = p.Sel.Local.Masked(), p.Sel.Remote.Masked()
	db.policies[id] = p
	if p == old {
		// The caller edited the stored policy in place: its old position
		// in the index is unknown, so rebuild.
		db.rebuild()
		return nil
	}
	db.idx.Store(db.idx.Load().with(old, false).with(p, true))
	db.changed()
	return nil
}

// Delete removes a policy.
func (db *DB) Delete(id uint64) bool {
	db.mu.Lock()
	defer db.mu.Unlock()
	old, ok := db.policies[id]
	if !ok {
		return false
	}
	delete(db.policies, id)
	db.idx.Store(db.idx.Load().with(old, false))
	db.changed()
	return true
}

// DeleteConn removes every policy named name and returns how many.
func (db *DB) DeleteConn(name string) int {
	db.mu.Lock()
	defer db.mu.Unlock()
	n := 0
	for id, p := range db.policies {
		if p.Name == name {
			delete(db.policies, id)
			n++
		}
	}
	if n > 0 {
		db.rebuild()
	}
	return n
}

func (db *DB) rebuild() {
	all := make([]*Policy, 0, len(db.policies))
	for _, p := range db.policies {
		all = append(all, p)
	}
	db.idx.Store(build(all))
	db.changed()
}

// Watch returns a channel that receives after the database changes (at
// least once after any number of changes: a watcher that is busy misses
// none, it sees them together). For work that follows the policies off
// the packet path, such as the TUN's queue steering.
func (db *DB) Watch() <-chan struct{} {
	c := make(chan struct{}, 1)
	db.mu.Lock()
	db.watchers = append(db.watchers, c)
	db.mu.Unlock()
	return c
}

// changed tells the watchers; db.mu is held.
func (db *DB) changed() {
	for _, c := range db.watchers {
		select {
		case c <- struct{}{}:
		default:
		}
	}
}

// OutDestinations returns the destination prefixes of the outbound
// protect policies (one per policy, duplicates included).
func (db *DB) OutDestinations() []netip.Prefix {
	db.mu.Lock()
	defer db.mu.Unlock()
	var out []netip.Prefix
	for _, p := range db.policies {
		if p.Dir == Out && p.Action == Protect {
			out = append(out, p.Sel.Remote)
		}
	}
	return out
}

// All returns every policy, by direction, then in lookup preference.
func (db *DB) All() []*Policy {
	db.mu.Lock()
	defer db.mu.Unlock()
	out := make([]*Policy, 0, len(db.policies))
	for _, p := range db.policies {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Dir != out[j].Dir {
			return out[i].Dir < out[j].Dir
		}
		return less(out[i], out[j])
	})
	return out
}

// Lookup returns the policy for a packet in direction d, or nil.
func (db *DB) Lookup(d Direction, t Tuple) *Policy {
	return db.idx.Load().lookup(d, &t)
}

// CheckInbound is the RFC 4301 5.2 check after decapsulation: the inner
// packet must be selected by an In policy of the SA's ReqID, and that
// policy must be the one a lookup would pick (no more specific policy of
// another conn, or a bypass or discard, may claim the packet).
func (db *DB) CheckInbound(reqid uint32, t Tuple) bool {
	p := db.idx.Load().lookup(In, &t)
	return p != nil && p.Action == Protect && p.ReqID == reqid
}

// LookupIn returns the In policy for a packet that arrived in the clear
// (not decapsulated), and whether it must be dropped as drop.Cleartext
// because that policy requires protection. A nil policy means no In
// policy selects it (the data plane's default applies).
func (db *DB) LookupIn(t Tuple) (p *Policy, cleartext bool) {
	p = db.idx.Load().lookup(In, &t)
	return p, p != nil && p.Action == Protect
}

// Cleartext reports whether a packet that arrived unprotected would be
// claimed by a Protect In policy (and so must be dropped).
func (db *DB) Cleartext(t Tuple) bool {
	p := db.Lookup(In, t)
	return p != nil && p.Action == Protect
}

func validate(p *Policy) error {
	switch {
	case p == nil:
		return errors.New("spd: nil policy")
	case p.Dir >= numDirs:
		return fmt.Errorf("spd: bad direction %d", p.Dir)
	case !p.Sel.Local.IsValid() || !p.Sel.Remote.IsValid():
		return errors.New("spd: selector needs local and remote prefixes")
	case p.Sel.Local.Addr().Is4() != p.Sel.Remote.Addr().Is4():
		return errors.New("spd: selector mixes IPv4 and IPv6")
	case p.Sel.LocalPorts.Lo > p.Sel.LocalPorts.Hi || p.Sel.RemotePorts.Lo > p.Sel.RemotePorts.Hi:
		return errors.New("spd: empty port range")
	case p.Action > Discard:
		return fmt.Errorf("spd: bad action %d", p.Action)
	case p.Action == Protect && p.ReqID == 0:
		return errors.New("spd: a protect policy needs a request ID")
	case p.Trap && p.Action != Protect:
		return errors.New("spd: only a protect policy can trap")
	}
	for i, t := range p.Templates {
		if err := t.validate(); err != nil {
			return fmt.Errorf("spd: policy %q template %d: %w", p.Name, i, err)
		}
	}
	return nil
}

func (t *Template) validate() error {
	switch {
	case t.Proto != 50 && t.Proto != 51:
		return fmt.Errorf("protocol %d is neither ESP (50) nor AH (51)", t.Proto)
	case t.Mode > TemplateTunnel:
		return fmt.Errorf("bad mode %d", t.Mode)
	case t.Mode == TemplateTunnel && (!t.TunnelSrc.IsValid() || !t.TunnelDst.IsValid()):
		return errors.New("tunnel mode needs both tunnel endpoints")
	case t.Mode == TemplateTunnel && t.TunnelSrc.Is4() != t.TunnelDst.Is4():
		return errors.New("tunnel endpoints mix IPv4 and IPv6")
	}
	return nil
}
