package netio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// DefaultFilterTable is the nftables table gosec owns (family inet).
const DefaultFilterTable = "gosec"

// FilterConfig configures the daemon's nftables table.
type FilterConfig struct {
	// Table is the name of the inet table (DefaultFilterTable if empty).
	// The daemon owns the whole table: it is replaced on start and deleted
	// on Close.
	Table string
	// TUN is the TUN interface name: cleartext from protected networks is
	// accepted only when it arrives on it.
	TUN string
	// IKEPorts are UDP destination ports exempt from the cleartext drop
	// (IKE and NAT-T: 500 and 4500 when empty).
	IKEPorts []uint16
	// InboundMark, if non-zero, marks incoming ESP, AH and IKE-port UDP
	// packets with the daemon's fwmark before routing. Together with
	// src_valid_mark (RouteConfig.SrcValidMark) the reverse-path check
	// then skips the TUN table, so strict rp_filter (=1) no longer drops
	// ESP from a transport-mode peer whose address is routed into the TUN.
	InboundMark uint32
	// Mark is the firewall mark of the daemon's own sockets: packets that
	// carry it (ESP, AH, IKE, and cleartext a bypass policy lets out) are
	// exempt from the outbound guard.
	Mark uint32
	// Guards are the protected prefixes per conn that the outbound guard
	// holds from the first instant the table exists (conns that are routed
	// at start), installed in the same transaction that replaces a stale
	// table, so that there is no moment without them.
	Guards map[string][]netip.Prefix
	// KeepStale, if set, is asked for each conn whose guard rules a stale
	// table (a crashed daemon's) holds: those it keeps are carried over
	// into the new table, so protected traffic of a conn that was up before
	// the crash stays blocked until it is up again or taken down.
	KeepStale func(conn string) bool
	// OnGone, if set, is called (on a goroutine of its own) each time
	// another process deleted an unowned table while the Filter ran (a
	// ruleset flush before Linux 6.9), after the Filter tried to restore
	// it, with the restoration's error (nftwatch.go). Gone reports a
	// table that is still missing, Restores how many came back.
	OnGone func(restoreErr error)
	// Claim, if set, is the table's claim taken earlier (ClaimTable with
	// the same table name), which the Filter takes over; if nil, NewFilter
	// claims the table itself.
	Claim *TableClaim
}

// The Filter's sets.
const (
	// protectedSet holds the conns' protected remote prefixes that the
	// inbound chains drop cleartext from (ip saddr).
	protectedSet = "protected"
	// guardedSet holds the prefixes the guard drops cleartext to (ip
	// daddr): those of protectedSet, and those of conns that have a
	// guard only (routed at start and not yet written, or kept from a
	// crashed daemon).
	guardedSet = "guarded"
	// guardConnsSet records which conn holds which guarded prefix, one
	// element per conn and prefix, for the next daemon after a crash
	// (staleGuards). No rule looks into it.
	guardConnsSet = "guard-conns"
)

// Filter is the daemon's nftables table `inet <Table>`:
//
//	set protected { type ipv4_addr; flags interval; counter }
//	set guarded   { type ipv4_addr; flags interval; counter }
//	set guard-conns { 16-octet key: prefix and a hash of the conn's name;
//	                  comment: the conn's name }
//	chain output   (filter hook output, priority 0, policy accept):
//	    ICMP dest-unreachable/protocol-unreachable quoting an ESP or AH
//	    packet: counter drop. The host has no ESP/AH; while the daemon's raw
//	    sockets are closed (restart) the kernel would otherwise answer every
//	    ESP/AH packet with this error. Nothing else is dropped.
//	chain cleartext (filter hook prerouting, priority 0, policy accept):
//	    meta l4proto {esp, ah} return
//	    udp dport {IKE ports} return
//	    iifname <TUN> return
//	    meta nfproto ipv4 ip saddr @protected counter drop
//	chain mark (filter hook prerouting, priority mangle; only with InboundMark):
//	    meta l4proto {esp, ah} meta mark set InboundMark
//	    udp dport {IKE ports} meta mark set InboundMark
//	chain guard (filter hook postrouting, priority 0, policy accept):
//	    oifname <TUN> return
//	    meta mark <Mark> return
//	    meta nfproto ipv4 ip daddr @guarded counter drop
//
// so that cleartext from a protected peer or subnet that did not come out of
// the TUN (KLIPS-style policy enforcement) never reaches a local socket or
// gets forwarded, and cleartext to a protected peer or subnet never leaves
// through any interface but the TUN: not when a route into the TUN is
// missing, and not after the daemon died (the table outlives the process;
// the TUN and its routes do not). It is safe for concurrent use.
//
// Every packet those chains see costs one set lookup per chain, however
// many conns there are, and adding or removing a conn changes a few set
// elements (no chain is rebuilt or listed). The prefixes of different
// conns may be equal or nested, which an interval set cannot hold as
// elements of their own: the sets hold the union of the prefixes, cut into
// disjoint elements at every prefix's edges (prefixUnion), with a count of
// the conns holding each prefix kept here, so that removing one conn never
// lifts a prefix another conn still protects.
//
// Counters: within one element every address belongs to the same conns,
// and each element counts its packets (the sets' per-element counters),
// so a conn's counts are the packets dropped from (Dropped) or to
// (Guarded) any address it protects: exact per conn, a packet to an
// address that several conns protect counting for each of them. An
// element counts from its creation; when a conn comes to own an element
// that exists (a prefix equal to another conn's, or around it) or stops
// owning one that stays or goes (cut anew around a nested prefix, merged
// again), what the element counted so far is banked here for that conn
// (subtracted or kept), so that its counts neither take in packets from
// before nor go back (packets counted between that reading and the
// change are taken as before it). Such a change reads the counters once (one
// listing, O(elements)); a conn whose prefixes overlap no other's costs
// no listing at all. The counts of a conn go when it is removed.
type Filter struct {
	cfg   FilterConfig
	ns    netns.NsHandle
	mu    sync.Mutex
	table *nftables.Table
	clear *nftables.Chain
	// local and fwd judge IPv4 fragments, which clear lets pass: the
	// input hook sees them reassembled (ip_local_deliver defragments
	// before it), so an ESP-in-UDP datagram that the peer's kernel had to
	// fragment still meets the IKE-port exemption; fwd drops forwarded
	// fragments from protected prefixes as they are.
	local, fwd *nftables.Chain
	// guard drops cleartext to protected prefixes that would leave
	// through another interface than the TUN.
	guard *nftables.Chain
	// protected, guarded and guardConns are the sets (see above); in
	// and out model protected and guarded.
	protected, guarded, guardConns *nftables.Set
	in, out                        *prefixUnion
	// conns are the conns that have entries, with their prefixes.
	conns map[string]*filterConn
	// kept are the stale guards carried over from a crashed daemon (a
	// guard-only entry in conns until the conn is written again).
	kept map[string][]netip.Prefix
	// banked corrects the counts of the elements a conn owns now, by
	// conn (filterTxn.done).
	banked map[string]bankedCounts
	// chunkRetries counts AddConns transactions the kernel refused and
	// that were retried conn by conn (tests).
	chunkRetries int
	// get reads single set elements (their counters), on a socket of
	// its own opened in NewFilter; nil if that failed (the sets are
	// listed instead).
	get *nftElemGetter
	// sess is one lasting netlink socket, opened in NewFilter: entering
	// the namespace (setns) needs CAP_SYS_ADMIN, which a daemon that
	// dropped its privileges (internal/privs) no longer has. It owns the
	// table (nftown.go) and the SPIGate shares it.
	sess *nftSession
	// owned: the table is owned by sess and persistent (nftown.go).
	owned bool
	// watch reports an unowned table's deletion by another process
	// (nil: owned, or the watch could not start); gone is set then.
	watch *tableWatch
	gone  atomic.Bool
	// restores counts the table's restorations (Restore); lastCounts are
	// the conns' counts as Counts last read them, where a restored
	// table's counters start.
	restores   int
	lastCounts map[string]bankedCounts
	// restoreHooks run after each Restore the watch makes (onRestore).
	restoreHooks []func() error
}

// bankedCounts are what a conn counted on elements it no longer owns,
// less what the elements it owns counted before it came to own them.
type bankedCounts struct{ dropped, guarded int64 }

// filterConn is one conn's entry: its protected prefixes (masked, each
// once), in the guard and, when inbound, in the inbound drops too.
type filterConn struct {
	remotes []netip.Prefix
	inbound bool
}

// conn returns the session's connection (f.mu held; NewFilter opens it,
// Close closes it). Lock f.sess.mu around its use.
func (f *Filter) conn() (*nftables.Conn, error) {
	if f.sess == nil {
		return nil, fmt.Errorf("netio: filter: %w", ErrClosed)
	}
	return f.sess.c, nil
}

// Owned reports whether the daemon's socket owns the table, so that no
// other process can change or delete it and `nft flush ruleset` leaves it
// (nftown.go); false on a kernel without NFT_TABLE_F_PERSIST, or when the
// table was a stale one of an older gosec.
func (f *Filter) Owned() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.owned
}

// Gone reports whether another process deleted the (unowned) table while
// the Filter ran and it could not be restored: its drops and guards are
// gone, and changes to it fail (nftwatch.go).
func (f *Filter) Gone() bool { return f.gone.Load() }

// NewFilter replaces any stale table of the same name (a crashed daemon's)
// with a fresh one holding the ICMP rule, the cleartext chains and the
// initial guards, in one transaction, in the calling thread's network
// namespace.
func NewFilter(cfg FilterConfig) (*Filter, error) {
	if cfg.Table == "" {
		cfg.Table = DefaultFilterTable
	}
	if cfg.TUN == "" || len(cfg.TUN) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("netio: filter: bad TUN name %q", cfg.TUN)
	}
	if len(cfg.IKEPorts) == 0 {
		cfg.IKEPorts = []uint16{500, 4500}
	}
	for name, ps := range cfg.Guards {
		if err := checkConn(name, ps); err != nil {
			return nil, err
		}
	}
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("netio: filter: current namespace: %w", err)
	}
	f := &Filter{cfg: cfg, ns: ns, in: newPrefixUnion(), out: newPrefixUnion(),
		conns: map[string]*filterConn{}, kept: map[string][]netip.Prefix{}, banked: map[string]bankedCounts{}}
	claim := cfg.Claim
	if claim == nil {
		if claim, err = ClaimTable(cfg.Table); err != nil {
			ns.Close()
			return nil, fmt.Errorf("netio: filter: %w", err)
		}
	} else if claim.name != cfg.Table || claim.taken || claim.sess == nil {
		ns.Close()
		return nil, fmt.Errorf("netio: filter: the claim on table inet %s cannot serve table inet %s (taken or closed)", claim.name, cfg.Table)
	}
	// The Filter takes the claim's socket (and so the table's ownership):
	// its Close, or abortNew, ends it.
	claim.taken = true
	sess := claim.sess
	f.sess = sess
	f.owned = claim.owned
	c := sess.c
	if g, err := newNftElemGetter(); err == nil {
		f.get = g
	}
	f.table = &nftables.Table{Family: nftables.TableFamilyINet, Name: cfg.Table}
	guards := map[string][]netip.Prefix{}
	for name, ps := range cfg.Guards {
		guards[name] = append(guards[name], ps...)
	}
	if cfg.KeepStale != nil {
		for name, ps := range staleGuards(c, f.table, cfg.KeepStale) {
			if checkConn(name, ps) != nil {
				continue
			}
			f.kept[name] = uniquePrefixes(ps)
			guards[name] = append(guards[name], ps...)
		}
	}
	// The table is owned already (the claim created it, or adopted a
	// crashed daemon's, which changes nothing in it: the stale guards
	// stay in force until the transaction below). The guards are in the
	// very transaction that replaces the table's contents.
	x := f.begin()
	for _, name := range sortedKeys(guards) {
		x.set(name, &filterConn{remotes: uniquePrefixes(guards[name])})
	}
	if f.owned {
		// Emptied and filled again in one atomic transaction; the table
		// itself, and so its owner, stays.
		if err := sess.clearTable(f.table); err != nil {
			return nil, f.abortNew(c, fmt.Errorf("netio: filter: table inet %s: %w", cfg.Table, err))
		}
	} else {
		// Add-then-delete removes a stale table without failing when
		// there is none; the whole batch is one atomic transaction.
		c.AddTable(f.table)
		c.DelTable(f.table)
		c.AddTable(f.table)
	}
	if err := f.queueTable(c, x); err != nil {
		return nil, f.abortNew(c, err)
	}
	if err := c.Flush(); err != nil {
		return nil, f.abortNew(c, fmt.Errorf("netio: filter: create table inet %s: %w", cfg.Table, err))
	}
	x.done()
	if !f.owned {
		// Not fatal if it cannot start: the table is as it was before
		// the watch existed.
		f.watch, _ = watchTable(f.ns, cfg.Table, portID(f.sess.raw), f.lost)
	}
	return f, nil
}

// queueTable queues the table's contents on c: its sets, the elements of
// x (a transaction on an empty model), its chains and rules. The table
// itself is queued (or owned) by the caller. f.sess.mu held, or f not
// yet shared.
func (f *Filter) queueTable(c *nftables.Conn, x *filterTxn) error {
	cfg := f.cfg
	f.protected = &nftables.Set{Table: f.table, Name: protectedSet, KeyType: nftables.TypeIPAddr, Interval: true, Counter: true,
		Comment: "gosec: conns' protected prefixes (inbound cleartext drop)"}
	f.guarded = &nftables.Set{Table: f.table, Name: guardedSet, KeyType: nftables.TypeIPAddr, Interval: true, Counter: true,
		Comment: "gosec: conns' protected prefixes (outbound guard)"}
	f.guardConns = &nftables.Set{Table: f.table, Name: guardConnsSet, KeyType: guardConnKeyType,
		Comment: "gosec: which conn holds which guard (carried over a crash)"}
	for _, s := range []*nftables.Set{f.protected, f.guarded, f.guardConns} {
		if err := c.AddSet(s, nil); err != nil {
			return fmt.Errorf("netio: filter: set %s: %w", s.Name, err)
		}
	}
	if err := x.queue(c); err != nil {
		return err
	}
	out := c.AddChain(&nftables.Chain{
		Name: "output", Table: f.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter,
	})
	c.AddRule(&nftables.Rule{Table: f.table, Chain: out, Exprs: icmpProtoUnreachExprs(), UserData: []byte("gosec:icmp-esp-ah")})
	f.clear = c.AddChain(&nftables.Chain{
		Name: "cleartext", Table: f.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityFilter,
	})
	c.AddRule(&nftables.Rule{Table: f.table, Chain: f.clear, Exprs: fragmentExprs(), UserData: []byte("gosec:exempt")})
	for _, r := range exemptions(cfg) {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: f.clear, Exprs: r, UserData: []byte("gosec:exempt")})
	}
	f.local = c.AddChain(&nftables.Chain{
		Name: "cleartext-local", Table: f.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter,
	})
	for _, r := range exemptions(cfg) {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: f.local, Exprs: r, UserData: []byte("gosec:exempt")})
	}
	f.fwd = c.AddChain(&nftables.Chain{
		Name: "cleartext-forward", Table: f.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter,
	})
	c.AddRule(&nftables.Rule{Table: f.table, Chain: f.fwd, Exprs: notFragmentExprs(), UserData: []byte("gosec:exempt")})
	for _, r := range exemptions(cfg) {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: f.fwd, Exprs: r, UserData: []byte("gosec:exempt")})
	}
	for _, ch := range []*nftables.Chain{f.clear, f.local, f.fwd} {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: ch, Exprs: lookupDropExprs(f.protected, 12), UserData: []byte("gosec:protected")})
	}
	f.guard = c.AddChain(&nftables.Chain{
		Name: "guard", Table: f.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityFilter,
	})
	c.AddRule(&nftables.Rule{Table: f.table, Chain: f.guard, UserData: []byte("gosec:exempt"), Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyOIFNAME, Register: 1},
		cmpEq(ifname(cfg.TUN)...),
		&expr.Verdict{Kind: expr.VerdictReturn},
	}})
	if cfg.Mark != 0 {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: f.guard, UserData: []byte("gosec:exempt"), Exprs: []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: 1},
			cmpEq(binary.NativeEndian.AppendUint32(nil, cfg.Mark)...),
			&expr.Verdict{Kind: expr.VerdictReturn},
		}})
	}
	c.AddRule(&nftables.Rule{Table: f.table, Chain: f.guard, Exprs: lookupDropExprs(f.guarded, 16), UserData: []byte("gosec:guarded")})
	if cfg.InboundMark != 0 {
		mark := c.AddChain(&nftables.Chain{
			Name: "mark", Table: f.table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle,
		})
		for _, r := range exemptions(cfg) {
			if len(r) == 3 { // the iifname rule: not wire traffic
				if m, ok := r[0].(*expr.Meta); ok && m.Key == expr.MetaKeyIIFNAME {
					continue
				}
			}
			setMark := append(r[:len(r)-1:len(r)-1],
				&expr.Counter{},
				&expr.Immediate{Register: 1, Data: binary.NativeEndian.AppendUint32(nil, cfg.InboundMark)},
				&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: 1})
			c.AddRule(&nftables.Rule{Table: f.table, Chain: mark, Exprs: setMark, UserData: []byte("gosec:mark")})
		}
	}
	return nil
}

// abortNew discards what NewFilter queued and closes what it opened.
func (f *Filter) abortNew(c *nftables.Conn, err error) error {
	discardQueued(c)
	f.ns.Close()
	c.CloseLasting()
	if f.get != nil {
		f.get.Close()
	}
	return err
}

func cmpEq(data ...byte) *expr.Cmp { return &expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: data} }

// fragFieldExprs loads "ip frag-off & 0x3fff" (MF and the offset) into
// register 1 for IPv4 packets.
func fragFieldExprs() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		cmpEq(unix.NFPROTO_IPV4),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 6, Len: 2},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 2, Mask: []byte{0x3f, 0xff}, Xor: []byte{0, 0}},
	}
}

// fragmentExprs: an IPv4 fragment returns (judged later, see Filter.local).
func fragmentExprs() []expr.Any {
	return append(fragFieldExprs(),
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0}},
		&expr.Verdict{Kind: expr.VerdictReturn})
}

// notFragmentExprs: a whole packet returns (prerouting judged it already).
func notFragmentExprs() []expr.Any {
	return append(fragFieldExprs(),
		cmpEq(0, 0),
		&expr.Verdict{Kind: expr.VerdictReturn})
}

// icmpProtoUnreachExprs: meta nfproto ipv4 meta l4proto icmp
// icmp type 3 code 2, quoted protocol (transport offset 8+9) in 50-51.
func icmpProtoUnreachExprs() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		cmpEq(unix.NFPROTO_IPV4),
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		cmpEq(unix.IPPROTO_ICMP),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2},
		cmpEq(3, 2),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 8 + 9, Len: 1},
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{unix.IPPROTO_ESP}, ToData: []byte{unix.IPPROTO_AH}},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

func ifname(name string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, name)
	return b
}

func exemptions(cfg FilterConfig) [][]expr.Any {
	rules := [][]expr.Any{{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Range{Op: expr.CmpOpEq, Register: 1, FromData: []byte{unix.IPPROTO_ESP}, ToData: []byte{unix.IPPROTO_AH}},
		&expr.Verdict{Kind: expr.VerdictReturn},
	}, {
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: 1},
		cmpEq(ifname(cfg.TUN)...),
		&expr.Verdict{Kind: expr.VerdictReturn},
	}}
	for _, p := range cfg.IKEPorts {
		rules = append(rules, []expr.Any{
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			cmpEq(unix.IPPROTO_UDP),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			cmpEq(byte(p>>8), byte(p)),
			&expr.Verdict{Kind: expr.VerdictReturn},
		})
	}
	return rules
}

// lookupDropExprs: meta nfproto ipv4, the address at network offset off
// (12 ip saddr, 16 ip daddr) in set: counter drop (the rule's counter is
// the chain's total; the set's elements count by prefix).
func lookupDropExprs(set *nftables.Set, off uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		cmpEq(unix.NFPROTO_IPV4),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// maxConnName bounds the name a guard-conns element keeps as its comment
// (the kernel keeps at most 256 octets of user data per element): the
// guard of a conn with a longer name is written as any other, but is not
// carried over a crash (its name cannot be read back).
const maxConnName = 200

func checkConn(name string, remotes []netip.Prefix) error {
	for _, p := range remotes {
		if !p.IsValid() || !p.Addr().Is4() {
			return fmt.Errorf("netio: filter: conn %s: %v is not IPv4", name, p)
		}
	}
	return nil
}

// uniquePrefixes returns ps masked, each once, sorted.
func uniquePrefixes(ps []netip.Prefix) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ps))
	for _, p := range ps {
		out = append(out, p.Masked())
	}
	slices.SortFunc(out, prefixLess)
	return slices.Compact(out)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// guardConnKeyType is the key of guard-conns: 16 octets (guardConnKey).
var guardConnKeyType = func() nftables.SetDatatype {
	t := nftables.TypeInteger
	t.Bytes = 16
	return t
}()

// guardConnKey is conn name's guard-conns key for prefix p: the address,
// the prefix length, three zero octets and FNV-1a-64 of the name (the
// element's comment holds the name itself).
func guardConnKey(name string, p netip.Prefix) [16]byte {
	var k [16]byte
	a := p.Masked().Addr().As4()
	copy(k[:4], a[:])
	k[4] = byte(p.Bits())
	h := fnv.New64a()
	h.Write([]byte(name))
	binary.BigEndian.PutUint64(k[8:], h.Sum64())
	return k
}

// decodeGuardConn reads a guard-conns element back.
func decodeGuardConn(e nftables.SetElement) (string, netip.Prefix, bool) {
	if len(e.Key) != 16 || e.Key[4] > 32 || e.Comment == "" {
		return "", netip.Prefix{}, false
	}
	p := netip.PrefixFrom(netip.AddrFrom4([4]byte(e.Key[:4])), int(e.Key[4]))
	if p.Masked() != p || guardConnKey(e.Comment, p) != [16]byte(e.Key) {
		return "", netip.Prefix{}, false
	}
	return e.Comment, p, true
}

// Rule tags of the filter before it used sets: a stale table of an older
// gosec holds its guards as rules tagged guardPrefix+conn.
const guardPrefix = "gosec:guard:"

// staleGuards reads the guards of an existing table (a crashed daemon's)
// and returns those of the conns keep accepts: the guard-conns set's
// elements, and the tagged guard rules of an older gosec's table.
func staleGuards(c *nftables.Conn, t *nftables.Table, keep func(string) bool) map[string][]netip.Prefix {
	out := map[string][]netip.Prefix{}
	if s, err := c.GetSetByName(t, guardConnsSet); err == nil {
		elems, _ := c.GetSetElements(s)
		for _, e := range elems {
			if name, p, ok := decodeGuardConn(e); ok && keep(name) {
				out[name] = append(out[name], p)
			}
		}
	}
	rules, err := c.GetRules(t, &nftables.Chain{Name: "guard", Table: t})
	if err != nil {
		return out // no stale table, or no guard chain in it
	}
	for _, r := range rules {
		tag := string(r.UserData)
		if !strings.HasPrefix(tag, guardPrefix) {
			continue
		}
		name := strings.TrimPrefix(tag, guardPrefix)
		if p, ok := prefixOf(r.Exprs); ok && keep(name) {
			out[name] = append(out[name], p)
		}
	}
	return out
}

// prefixOf reads back the prefix of an older gosec's guard rule: ip daddr
// & mask == addr.
func prefixOf(exprs []expr.Any) (netip.Prefix, bool) {
	var addr []byte
	var mask []byte
	for _, e := range exprs {
		switch e := e.(type) {
		case *expr.Bitwise:
			mask = e.Mask
		case *expr.Cmp:
			if len(e.Data) == 4 {
				addr = e.Data
			}
		}
	}
	if len(addr) != 4 || len(mask) != 4 {
		return netip.Prefix{}, false
	}
	bits := 0
	for _, m := range mask {
		for i := 7; i >= 0 && m&(1<<i) != 0; i-- {
			bits++
		}
	}
	return netip.PrefixFrom(netip.AddrFrom4([4]byte(addr)), bits).Masked(), true
}

// Kept returns the stale guards NewFilter carried over, by conn (until
// the conn is written again or removed).
func (f *Filter) Kept() map[string][]netip.Prefix {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string][]netip.Prefix, len(f.kept))
	for k, v := range f.kept {
		out[k] = slices.Clone(v)
	}
	return out
}

// filterTxn is one transaction on the Filter's sets: the model changes
// at once (set), the elements that changed are queued and flushed in one
// nftables transaction (commit), and if the kernel refuses it the model
// goes back (a transaction is atomic: nothing changed in the kernel).
type filterTxn struct {
	f       *Filter
	in, out *spanDiff
	// ownAdd and ownDel are the guard-conns elements to add and delete,
	// with the conn's name.
	ownAdd, ownDel map[[16]byte]string
	undo           []func()
	// inCounts and outCounts are the counters of the elements that go
	// (read before the transaction when an owner stays), by first address.
	inCounts, outCounts map[uint32]uint64
}

func (f *Filter) begin() *filterTxn {
	return &filterTxn{f: f, in: newSpanDiff(), out: newSpanDiff(),
		ownAdd: map[[16]byte]string{}, ownDel: map[[16]byte]string{}}
}

// set makes e conn name's entry (nil: none) in the model.
func (x *filterTxn) set(name string, e *filterConn) {
	f := x.f
	old := f.conns[name]
	oldKept, wasKept := f.kept[name]
	oldIn, oldOut := old.prefixes()
	newIn, newOut := e.prefixes()
	rechange(f.out, x.out, name, oldOut, newOut)
	rechange(f.in, x.in, name, oldIn, newIn)
	for _, p := range newOut {
		if !slices.Contains(oldOut, p) {
			pend(x.ownAdd, x.ownDel, guardConnKey(name, p), name)
		}
	}
	for _, p := range oldOut {
		if !slices.Contains(newOut, p) {
			pend(x.ownDel, x.ownAdd, guardConnKey(name, p), name)
		}
	}
	if e == nil {
		delete(f.conns, name)
	} else {
		f.conns[name] = e
	}
	if e == nil || e.inbound {
		delete(f.kept, name)
	}
	x.undo = append(x.undo, func() {
		rechange(f.out, newSpanDiff(), name, newOut, oldOut)
		rechange(f.in, newSpanDiff(), name, newIn, oldIn)
		if old == nil {
			delete(f.conns, name)
		} else {
			f.conns[name] = old
		}
		if wasKept {
			f.kept[name] = oldKept
		}
	})
}

// pend records a change of guard-conns key k (an add or a delete) in
// this, unless the opposite change is pending in opposite: then the two
// cancel out.
func pend(this, opposite map[[16]byte]string, k [16]byte, name string) {
	if _, ok := opposite[k]; ok {
		delete(opposite, k)
		return
	}
	this[k] = name
}

// prefixes returns the prefixes of e in the inbound drops and in the
// guard.
func (e *filterConn) prefixes() (in, out []netip.Prefix) {
	if e == nil {
		return nil, nil
	}
	if e.inbound {
		in = e.remotes
	}
	return in, e.remotes
}

// rechange moves conn name in u from holding old to holding new (adding
// first: within one transaction the order does not matter to the
// kernel, but it spares cutting elements that come back).
func rechange(u *prefixUnion, d *spanDiff, name string, old, new []netip.Prefix) {
	for _, p := range new {
		u.add(name, p, d)
	}
	for _, p := range old {
		if !slices.Contains(new, p) {
			u.remove(name, p, d)
		}
	}
}

// rollback undoes the model's changes.
func (x *filterTxn) rollback() {
	for i := len(x.undo) - 1; i >= 0; i-- {
		x.undo[i]()
	}
	x.undo = nil
}

// queue reads the counters the transaction needs, then queues its
// element changes on c. If it fails, nothing is left queued.
func (x *filterTxn) queue(c *nftables.Conn) error {
	f := x.f
	var err error
	if x.inCounts, err = f.elemCounters(c, f.protected, x.in.countsNeeded(f.in, x.stays)); err != nil {
		return err
	}
	if x.outCounts, err = f.elemCounters(c, f.guarded, x.out.countsNeeded(f.out, x.stays)); err != nil {
		return err
	}
	var own, disown []nftables.SetElement
	for _, k := range sortedOwnKeys(x.ownAdd) {
		name := x.ownAdd[k]
		if len(name) > maxConnName {
			name = name[:maxConnName] // not read back (decodeGuardConn)
		}
		own = append(own, nftables.SetElement{Key: slices.Clone(k[:]), Comment: name})
	}
	for _, k := range sortedOwnKeys(x.ownDel) {
		disown = append(disown, nftables.SetElement{Key: slices.Clone(k[:])})
	}
	// Deletions before additions: an element cut anew is deleted and
	// added (in parts) in the same transaction.
	steps := []struct {
		set   *nftables.Set
		elems []nftables.SetElement
		add   bool
	}{
		{f.protected, spanElems(sortedSpans(x.in.del)), false},
		{f.guarded, spanElems(sortedSpans(x.out.del)), false},
		{f.guardConns, disown, false},
		{f.guardConns, own, true},
		{f.guarded, spanElems(sortedSpans(x.out.add)), true},
		{f.protected, spanElems(sortedSpans(x.in.add)), true},
	}
	for _, s := range steps {
		if err := queueElements(c, s.set, s.elems, s.add); err != nil {
			discardQueued(c)
			return fmt.Errorf("netio: filter: set %s: %w", s.set.Name, err)
		}
	}
	return nil
}

// elemCounters reads the counters of the elements of s that start at
// los: those elements alone when they are few, else with a listing of
// the set.
func (f *Filter) elemCounters(c *nftables.Conn, s *nftables.Set, los []uint32) (map[uint32]uint64, error) {
	if len(los) == 0 {
		return nil, nil
	}
	if f.get != nil && len(los) <= maxGetElems {
		if counts, err := f.get.counters(f.table.Name, s.Name, los); err == nil {
			return counts, nil
		}
	}
	return setCounters(c, s)
}

// stays reports whether conn has an entry after the transaction.
func (x *filterTxn) stays(conn string) bool { return x.f.conns[conn] != nil }

func sortedOwnKeys(m map[[16]byte]string) [][16]byte {
	keys := make([][16]byte, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b [16]byte) int { return strings.Compare(string(a[:]), string(b[:])) })
	return keys
}

// done banks what the elements whose ownership changed counted so far
// (spanDiff.bank). Call it after the transaction went through.
func (x *filterTxn) done() {
	f := x.f
	x.in.bank(f.in, x.inCounts, func(conn string, n int64) { b := f.banked[conn]; b.dropped += n; f.banked[conn] = b })
	x.out.bank(f.out, x.outCounts, func(conn string, n int64) { b := f.banked[conn]; b.guarded += n; f.banked[conn] = b })
	x.undo = nil
}

// commit writes the transaction (f.mu held): all of it or, if the kernel
// refuses it, nothing, and the model goes back.
func (x *filterTxn) commit() error {
	c, err := x.f.conn()
	if err == nil {
		x.f.sess.mu.Lock()
		err = x.queue(c)
		if err == nil {
			err = c.Flush() // nothing queued (only owners changed): nothing sent
		}
		x.f.sess.mu.Unlock()
	}
	if err != nil {
		x.rollback()
		return err
	}
	x.done()
	return nil
}

// spanElems are the interval set elements of spans (sorted): a start
// element at lo and an end element at hi+1 (none when hi is the last
// address: the interval then runs to the end).
func spanElems(spans []span) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, 2*len(spans))
	for _, s := range spans {
		out = append(out, nftables.SetElement{Key: binary.BigEndian.AppendUint32(nil, s.lo)})
		if s.hi != ^uint32(0) {
			out = append(out, nftables.SetElement{Key: binary.BigEndian.AppendUint32(nil, s.hi+1), IntervalEnd: true})
		}
	}
	return out
}

// elementsPerMessage bounds the octets of elements in one netlink
// message: their list is one attribute, whose length is 16 bits.
const elementsPerMessage = 32 << 10

// queueElements queues the addition or deletion of elems on c, in as
// many messages as their size needs (an interval's start and end stay in
// one).
func queueElements(c *nftables.Conn, s *nftables.Set, elems []nftables.SetElement, add bool) error {
	for len(elems) > 0 {
		n, size := 0, 0
		for n < len(elems) && (n == 0 || size < elementsPerMessage || elems[n].IntervalEnd) {
			size += 48 + len(elems[n].Key) + len(elems[n].Comment)
			n++
		}
		var err error
		if add {
			err = c.SetAddElements(s, elems[:n])
		} else {
			err = c.SetDeleteElements(s, elems[:n])
		}
		if err != nil {
			return err
		}
		elems = elems[n:]
	}
	return nil
}

// discardQueued throws away what is queued on c: it flushes it with one
// more message the kernel must refuse (a table name longer than any may
// be), so that the whole transaction is refused and changes nothing.
func discardQueued(c *nftables.Conn) {
	c.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: strings.Repeat("-", 300)})
	_ = c.Flush()
}

// setCounters reads the element counters of an interval set, by the
// first address of each element.
func setCounters(c *nftables.Conn, s *nftables.Set) (map[uint32]uint64, error) {
	elems, err := c.GetSetElements(s)
	if err != nil {
		return nil, fmt.Errorf("netio: filter: list set %s: %w", s.Name, err)
	}
	out := map[uint32]uint64{}
	for _, e := range elems {
		if e.IntervalEnd || len(e.Key) != 4 || e.Counter == nil {
			continue
		}
		out[binary.BigEndian.Uint32(e.Key)] += e.Counter.Packets
	}
	return out, nil
}

// AddConn adds the cleartext drops for conn name's protected remote
// prefixes (its remote subnets in tunnel mode, the peer's /32 in transport
// mode): inbound, cleartext from them that did not come out of the TUN;
// outbound (the guard), cleartext to them that would not leave through the
// TUN. Adding a conn again replaces its prefixes, in one transaction; a
// conn whose entry is already so (the same prefixes, inbound drops too)
// costs nothing. A new conn whose prefixes nest in no other's changes
// one element per set: no chain is listed or rebuilt.
func (f *Filter) AddConn(name string, remotes []netip.Prefix) error {
	if err := checkConn(name, remotes); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addConnLocked(name, remotes)
}

func (f *Filter) addConnLocked(name string, remotes []netip.Prefix) error {
	e := &filterConn{remotes: uniquePrefixes(remotes), inbound: true}
	if old := f.conns[name]; old != nil && old.inbound && slices.Equal(old.remotes, e.remotes) {
		return nil
	}
	x := f.begin()
	x.set(name, e)
	if err := x.commit(); err != nil {
		return fmt.Errorf("netio: filter: add conn %s: %w", name, err)
	}
	return nil
}

// ConnPrefixes is one conn's protected remote prefixes (AddConns).
type ConnPrefixes struct {
	Name    string
	Remotes []netip.Prefix
}

// addConnsChunk bounds the conns AddConns writes per transaction: about
// 200 octets of messages each, so that one transaction stays far inside
// the socket's send buffer (nftablesHere), and a transaction the kernel
// refuses is retried conn by conn without redoing all of them.
const addConnsChunk = 1024

// AddConns does what AddConn does for many conns (routing them at start
// or reload), in one transaction per addConnsChunk conns instead of one
// per conn. A chunk the kernel refuses changed nothing (a transaction is
// atomic) and is retried conn by conn, so that one bad conn does not
// fail the others (a conn that appears twice ends with its last entry).
// It returns the errors by conn (nil when every conn was written).
func (f *Filter) AddConns(conns []ConnPrefixes) map[string]error {
	errs := map[string]error{}
	for _, cp := range conns {
		if err := checkConn(cp.Name, cp.Remotes); err != nil {
			errs[cp.Name] = err
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for start := 0; start < len(conns); {
		end := min(start+addConnsChunk, len(conns))
		x := f.begin()
		var todo []ConnPrefixes
		for _, cp := range conns[start:end] {
			if errs[cp.Name] != nil {
				continue
			}
			todo = append(todo, cp)
			x.set(cp.Name, &filterConn{remotes: uniquePrefixes(cp.Remotes), inbound: true})
		}
		start = end
		if x.commit() == nil {
			continue
		}
		f.chunkRetries++
		for _, cp := range todo {
			if err := f.addConnLocked(cp.Name, cp.Remotes); err != nil {
				errs[cp.Name] = err
			}
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return errs
}

// RemoveConn removes conn name's entries (none is not an error). The
// prefixes another conn holds too stay, for it.
func (f *Filter) RemoveConn(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.conns[name] == nil {
		return nil
	}
	x := f.begin()
	x.set(name, nil)
	if err := x.commit(); err != nil {
		return fmt.Errorf("netio: filter: remove conn %s: %w", name, err)
	}
	delete(f.banked, name)
	return nil
}

// Dropped returns how many cleartext packets from conn name's protected
// prefixes the inbound drops dropped.
func (f *Filter) Dropped(name string) (uint64, error) {
	all, err := f.Counts()
	return all[name].Dropped, err
}

// Guarded returns how many cleartext packets to conn name's protected
// prefixes the outbound guard dropped.
func (f *Filter) Guarded(name string) (uint64, error) {
	all, err := f.Counts()
	return all[name].Guarded, err
}

// FilterCounts are the packet counters of one conn's filter entries.
type FilterCounts struct {
	// Dropped counts cleartext from its protected prefixes (inbound
	// drops), Guarded cleartext to them that the guard dropped. A packet
	// from or to an address that several conns protect counts for each.
	Dropped, Guarded uint64
}

// Counts returns the counters of every conn's entries, by conn name, from
// one listing of each set.
func (f *Filter) Counts() (map[string]FilterCounts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		return nil, err
	}
	f.sess.mu.Lock()
	defer f.sess.mu.Unlock()
	in, err := setCounters(c, f.protected)
	if err != nil {
		return nil, err
	}
	out, err := setCounters(c, f.guarded)
	if err != nil {
		return nil, err
	}
	sums := make(map[string]bankedCounts, len(f.conns))
	for name := range f.conns {
		sums[name] = f.banked[name]
	}
	attribute(f.in, in, func(o string, n uint64) { b := sums[o]; b.dropped += int64(n); sums[o] = b })
	attribute(f.out, out, func(o string, n uint64) { b := sums[o]; b.guarded += int64(n); sums[o] = b })
	f.lastCounts = sums
	all := make(map[string]FilterCounts, len(sums))
	for name, b := range sums {
		// Never below zero: an element's counter only grows.
		all[name] = FilterCounts{Dropped: uint64(max(b.dropped, 0)), Guarded: uint64(max(b.guarded, 0))}
	}
	return all, nil
}

// attribute counts each element's packets for the conns that own it.
func attribute(u *prefixUnion, counts map[uint32]uint64, count func(string, uint64)) {
	for lo, n := range counts {
		if n == 0 {
			continue
		}
		i, ok := slices.BinarySearchFunc(u.spans, lo, func(s span, lo uint32) int { return cmpU32(s.lo, lo) })
		if !ok {
			continue // not ours (changed meanwhile)
		}
		for _, o := range u.spanOwners(u.spans[i]) {
			count(o, n)
		}
	}
}

// Close deletes the whole table.
func (f *Filter) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ns == -1 {
		return nil
	}
	if f.watch != nil {
		f.watch.close() // before the table goes: that deletion is ours
		f.watch = nil
	}
	defer func() {
		f.ns.Close()
		f.ns = -1
		if f.sess != nil {
			f.sess.close()
			f.sess = nil
		}
		if f.get != nil {
			f.get.Close()
			f.get = nil
		}
	}()
	if f.sess == nil {
		return nil // its socket is gone (tests: a crash)
	}
	c := f.sess.c
	f.sess.mu.Lock()
	defer f.sess.mu.Unlock()
	c.DelTable(f.table)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netio: filter: delete table inet %s: %w", f.cfg.Table, err)
	}
	return nil
}

// RemoveFilterTable deletes table inet name in the calling thread's
// namespace if it exists (stale state after a crash, or at uninstall).
func RemoveFilterTable(name string) error {
	if name == "" {
		name = DefaultFilterTable
	}
	c, err := nftables.New()
	if err != nil {
		return fmt.Errorf("netio: nftables: %w", err)
	}
	t := &nftables.Table{Family: nftables.TableFamilyINet, Name: name}
	// Not add-then-delete: adding (flags 0) a persistent table fails.
	c.DelTable(t)
	if err := c.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netio: filter: delete table inet %s: %w", name, err)
	}
	return nil
}
