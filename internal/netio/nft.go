package netio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strings"
	"sync"

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
}

// Filter is the daemon's nftables table `inet <Table>`:
//
//	chain output   (filter hook output, priority 0, policy accept):
//	    ICMP dest-unreachable/protocol-unreachable quoting an ESP or AH
//	    packet: counter drop. The host has no ESP/AH; while the daemon's raw
//	    sockets are closed (restart) the kernel would otherwise answer every
//	    ESP/AH packet with this error. Nothing else is dropped.
//	chain cleartext (filter hook prerouting, priority 0, policy accept):
//	    meta l4proto {esp, ah} return
//	    udp dport {IKE ports} return
//	    iifname <TUN> return
//	    per conn, per remote prefix: ip saddr <prefix> counter drop
//	chain mark (filter hook prerouting, priority mangle; only with InboundMark):
//	    meta l4proto {esp, ah} meta mark set InboundMark
//	    udp dport {IKE ports} meta mark set InboundMark
//	chain guard (filter hook postrouting, priority 0, policy accept):
//	    oifname <TUN> return
//	    meta mark <Mark> return
//	    per conn, per remote prefix: ip daddr <prefix> counter drop
//
// so that cleartext from a protected peer or subnet that did not come out of
// the TUN (KLIPS-style policy enforcement) never reaches a local socket or
// gets forwarded, and cleartext to a protected peer or subnet never leaves
// through any interface but the TUN: not when a route into the TUN is
// missing, and not after the daemon died (the table outlives the process;
// the TUN and its routes do not). It is safe for concurrent use.
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
	// kept are the stale guards carried over from a crashed daemon.
	kept map[string][]netip.Prefix
	// added are the conns AddConn gave rules: only they (and kept) have
	// rules to delete, so adding a new conn lists no chain (a listing
	// costs O(rules): with thousands of conns, O(conns^2) in all).
	added map[string]bool
	// chunkRetries counts AddConns transactions the kernel refused and
	// that were retried conn by conn (tests).
	chunkRetries int
	// nl is one lasting netlink socket, opened in NewFilter: entering
	// the namespace (setns) needs CAP_SYS_ADMIN, which a daemon that
	// dropped its privileges (internal/privs) no longer has.
	nl *nftables.Conn
}

func (f *Filter) conn() (*nftables.Conn, error) {
	if f.nl != nil {
		return f.nl, nil
	}
	c, err := nftablesHere()
	if err != nil {
		return nil, fmt.Errorf("netio: nftables: %w", err)
	}
	f.nl = c
	return c, nil
}

// NewFilter replaces any stale table of the same name (a crashed daemon's)
// with a fresh one holding the ICMP rule and the empty cleartext chain, in
// the calling thread's network namespace.
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
	ns, err := netns.Get()
	if err != nil {
		return nil, fmt.Errorf("netio: filter: current namespace: %w", err)
	}
	f := &Filter{cfg: cfg, ns: ns}
	c, err := f.conn()
	if err != nil {
		ns.Close()
		return nil, err
	}
	f.table = &nftables.Table{Family: nftables.TableFamilyINet, Name: cfg.Table}
	guards := map[string][]netip.Prefix{}
	for name, ps := range cfg.Guards {
		guards[name] = append(guards[name], ps...)
	}
	if cfg.KeepStale != nil {
		f.kept = staleGuards(c, f.table, cfg.KeepStale)
		for name, ps := range f.kept {
			guards[name] = append(guards[name], ps...)
		}
	}
	// Add-then-delete removes a stale table without failing when there is
	// none; the whole batch is one atomic transaction.
	c.AddTable(f.table)
	c.DelTable(f.table)
	c.AddTable(f.table)
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
	for _, name := range sortedKeys(guards) {
		for _, p := range dedupPrefixes(guards[name]) {
			c.AddRule(&nftables.Rule{Table: f.table, Chain: f.guard, UserData: guardTag(name), Exprs: prefixDropExprs(p, 16)})
		}
	}
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
	if err := c.Flush(); err != nil {
		ns.Close()
		c.CloseLasting()
		return nil, fmt.Errorf("netio: filter: create table inet %s: %w", cfg.Table, err)
	}
	return f, nil
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

func connTag(name string) []byte { return []byte(connPrefix + name) }

const (
	connPrefix  = "gosec:conn:"
	guardPrefix = "gosec:guard:"
)

func guardTag(name string) []byte { return []byte(guardPrefix + name) }

// staleGuards reads the guard rules of an existing table (a crashed
// daemon's) and returns those of the conns keep accepts.
func staleGuards(c *nftables.Conn, t *nftables.Table, keep func(string) bool) map[string][]netip.Prefix {
	rules, err := c.GetRules(t, &nftables.Chain{Name: "guard", Table: t})
	if err != nil {
		return nil // no stale table, or no guard chain in it
	}
	out := map[string][]netip.Prefix{}
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

// Kept returns the stale guards NewFilter carried over, by conn.
func (f *Filter) Kept() map[string][]netip.Prefix {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make(map[string][]netip.Prefix, len(f.kept))
	for k, v := range f.kept {
		out[k] = append([]netip.Prefix(nil), v...)
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func dedupPrefixes(ps []netip.Prefix) []netip.Prefix {
	seen := map[netip.Prefix]bool{}
	var out []netip.Prefix
	for _, p := range ps {
		p = p.Masked()
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	return out
}

// AddConn adds the cleartext drops for conn name's protected remote
// prefixes (its remote subnets in tunnel mode, the peer's /32 in transport
// mode): inbound, cleartext from them that did not come out of the TUN;
// outbound (the guard), cleartext to them that would not leave through the
// TUN. Adding a conn again replaces its rules, in one transaction.
func (f *Filter) AddConn(name string, remotes []netip.Prefix) error {
	for _, p := range remotes {
		if !p.Addr().Is4() {
			return fmt.Errorf("netio: filter: conn %s: %v is not IPv4", name, p)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addConnLocked(name, remotes)
}

func (f *Filter) addConnLocked(name string, remotes []netip.Prefix) error {
	c, err := f.conn()
	if err != nil {
		return err
	}
	if err := f.delConnRules(c, name); err != nil {
		return err
	}
	f.queueConnRules(c, name, remotes)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netio: filter: add conn %s: %w", name, err)
	}
	return nil
}

// queueConnRules queues conn name's rules on c.
func (f *Filter) queueConnRules(c *nftables.Conn, name string, remotes []netip.Prefix) {
	if f.added == nil {
		f.added = map[string]bool{}
	}
	f.added[name] = true
	for _, p := range remotes {
		for _, ch := range f.chains() {
			c.AddRule(&nftables.Rule{Table: f.table, Chain: ch, UserData: connTag(name), Exprs: prefixDropExprs(p, 12)})
		}
	}
	for _, p := range dedupPrefixes(remotes) {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: f.guard, UserData: guardTag(name), Exprs: prefixDropExprs(p, 16)})
	}
}

// ConnPrefixes is one conn's protected remote prefixes (AddConns).
type ConnPrefixes struct {
	Name    string
	Remotes []netip.Prefix
}

// addConnsChunk bounds the rules AddConns writes per transaction (a
// conn's rules are never split): about 300 octets each, so that a batch
// stays well inside one sendmsg (the socket's send buffer, 208 KB by
// default; more fails with EMSGSIZE) and the chains are still rebuilt
// only once per about 60 conns.
const addConnsChunk = 256

// AddConns does what AddConn does for many conns (routing them at start
// or reload), in one transaction per addConnsChunk conns instead of one
// per conn: the kernel rebuilds a chain's rule array in every transaction
// that changes the chain, so with thousands of conns, one transaction each
// cost O(conns^2) (74 s to reload 10,000 conns). As with AddConn, a conn's
// old rules go in the same transaction as its new ones come, and the
// chains are listed once for all the conns that had rules. A chunk the
// kernel refuses changed nothing (a transaction is atomic) and is retried
// conn by conn, so that one bad conn does not fail the others. Each conn
// appears at most once in conns. It returns the errors by conn (nil when
// every conn was written).
func (f *Filter) AddConns(conns []ConnPrefixes) map[string]error {
	errs := map[string]error{}
	for _, cp := range conns {
		for _, p := range cp.Remotes {
			if !p.Addr().Is4() {
				errs[cp.Name] = fmt.Errorf("netio: filter: conn %s: %v is not IPv4", cp.Name, p)
			}
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		for _, cp := range conns {
			errs[cp.Name] = err
		}
		return errs
	}
	// The rules the conns have now, from one listing of each chain.
	old := map[string][]*nftables.Rule{}
	var listErr error
	for _, cp := range conns {
		if _, ok := f.kept[cp.Name]; ok || f.added[cp.Name] {
			old, listErr = f.rulesByTag(c)
			break
		}
	}
	for start := 0; start < len(conns); {
		var todo []ConnPrefixes
		for nrules := 0; start < len(conns) && (len(todo) == 0 || nrules+4*len(conns[start].Remotes) <= addConnsChunk); start++ {
			if cp := conns[start]; errs[cp.Name] == nil {
				todo = append(todo, cp)
				nrules += 4 * len(cp.Remotes)
			}
		}
		if len(todo) == 0 {
			continue
		}
		if listErr == nil && f.addChunkLocked(c, todo, old) == nil {
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

// addChunkLocked replaces the rules of conns in one transaction; old are
// the rules listed by tag.
func (f *Filter) addChunkLocked(c *nftables.Conn, conns []ConnPrefixes, old map[string][]*nftables.Rule) error {
	// Checked before anything is queued: a half-queued batch must never
	// reach the kernel (deletions without the additions lift a guard).
	var dels []*nftables.Rule
	seen := map[string]bool{}
	for _, cp := range conns {
		if seen[cp.Name] {
			return fmt.Errorf("netio: filter: conn %s twice in one batch", cp.Name)
		}
		seen[cp.Name] = true
		if _, ok := f.kept[cp.Name]; ok || f.added[cp.Name] {
			for _, tag := range []string{string(connTag(cp.Name)), string(guardTag(cp.Name))} {
				for _, r := range old[tag] {
					if r.Handle == 0 {
						return fmt.Errorf("netio: filter: rule of %s without a handle", cp.Name)
					}
					dels = append(dels, r)
				}
			}
		}
	}
	for _, r := range dels {
		_ = c.DelRule(r) // cannot fail: every handle is set
	}
	kept, wasAdded := map[string][]netip.Prefix{}, map[string]bool{}
	for _, cp := range conns {
		if ps, ok := f.kept[cp.Name]; ok {
			kept[cp.Name] = ps
		}
		wasAdded[cp.Name] = f.added[cp.Name]
		delete(f.kept, cp.Name)
		f.queueConnRules(c, cp.Name, cp.Remotes)
	}
	if err := c.Flush(); err != nil {
		// Nothing changed in the kernel: the bookkeeping goes back too.
		for _, cp := range conns {
			if ps, ok := kept[cp.Name]; ok {
				f.kept[cp.Name] = ps
			}
			if !wasAdded[cp.Name] {
				delete(f.added, cp.Name)
			}
		}
		return err
	}
	for _, cp := range conns {
		for _, tag := range []string{string(connTag(cp.Name)), string(guardTag(cp.Name))} {
			delete(old, tag)
		}
	}
	return nil
}

// rulesByTag lists the chains with per-conn rules once, by user data.
func (f *Filter) rulesByTag(c *nftables.Conn) (map[string][]*nftables.Rule, error) {
	out := map[string][]*nftables.Rule{}
	for _, ch := range append(f.chains(), f.guard) {
		rules, err := c.GetRules(f.table, ch)
		if err != nil {
			return nil, fmt.Errorf("netio: filter: list rules: %w", err)
		}
		for _, r := range rules {
			if tag := string(r.UserData); strings.HasPrefix(tag, connPrefix) || strings.HasPrefix(tag, guardPrefix) {
				out[tag] = append(out[tag], r)
			}
		}
	}
	return out, nil
}

// prefixDropExprs: ip saddr (off 12) or ip daddr (off 16) in p: counter drop.
func prefixDropExprs(p netip.Prefix, off uint32) []expr.Any {
	p = p.Masked()
	a := p.Addr().As4()
	mask := net4Mask(p.Bits())
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
		cmpEq(unix.NFPROTO_IPV4),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: off, Len: 4},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: mask[:], Xor: []byte{0, 0, 0, 0}},
		cmpEq(a[:]...),
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}
}

// prefixOf reads back the prefix of a rule made by prefixDropExprs.
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

func net4Mask(bits int) [4]byte {
	var m [4]byte
	for i := 0; i < bits; i++ {
		m[i/8] |= 0x80 >> (i % 8)
	}
	return m
}

// chains are the chains that hold per-conn cleartext drops.
func (f *Filter) chains() []*nftables.Chain { return []*nftables.Chain{f.clear, f.local, f.fwd} }

// delConnRules queues the deletion of conn name's rules (inbound drops and
// guard) on c.
func (f *Filter) delConnRules(c *nftables.Conn, name string) error {
	if _, ok := f.kept[name]; !ok && !f.added[name] {
		return nil // it has none
	}
	delete(f.kept, name)
	delete(f.added, name)
	tag, gtag := connTag(name), guardTag(name)
	for _, ch := range append(f.chains(), f.guard) {
		rules, err := c.GetRules(f.table, ch)
		if err != nil {
			return fmt.Errorf("netio: filter: list rules: %w", err)
		}
		for _, r := range rules {
			if bytes.Equal(r.UserData, tag) || bytes.Equal(r.UserData, gtag) {
				if err := c.DelRule(r); err != nil {
					return fmt.Errorf("netio: filter: delete rule of %s: %w", name, err)
				}
			}
		}
	}
	return nil
}

// RemoveConn removes conn name's rules (none is not an error).
func (f *Filter) RemoveConn(name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		return err
	}
	if err := f.delConnRules(c, name); err != nil {
		return err
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netio: filter: remove conn %s: %w", name, err)
	}
	return nil
}

// Dropped returns the packet counters of conn name's inbound drop rules,
// summed.
func (f *Filter) Dropped(name string) (uint64, error) {
	return f.counted(f.chains(), connTag(name))
}

// Guarded returns how many cleartext packets to conn name's protected
// prefixes the outbound guard dropped.
func (f *Filter) Guarded(name string) (uint64, error) {
	return f.counted([]*nftables.Chain{f.guard}, guardTag(name))
}

// FilterCounts are the packet counters of one conn's filter rules.
type FilterCounts struct {
	// Dropped counts cleartext from its protected prefixes (inbound
	// drops), Guarded cleartext to them that the guard dropped.
	Dropped, Guarded uint64
}

// Counts returns the counters of every conn's rules, by conn name, from
// one listing of each chain (Dropped and Guarded list them per call).
func (f *Filter) Counts() (map[string]FilterCounts, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		return nil, err
	}
	out := map[string]FilterCounts{}
	for _, ch := range append(f.chains(), f.guard) {
		rules, err := c.GetRules(f.table, ch)
		if err != nil {
			return nil, fmt.Errorf("netio: filter: list rules: %w", err)
		}
		for _, r := range rules {
			tag := string(r.UserData)
			var name string
			var guard bool
			switch {
			case strings.HasPrefix(tag, connPrefix):
				name = tag[len(connPrefix):]
			case strings.HasPrefix(tag, guardPrefix):
				name, guard = tag[len(guardPrefix):], true
			default:
				continue
			}
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					fc := out[name]
					if guard {
						fc.Guarded += ctr.Packets
					} else {
						fc.Dropped += ctr.Packets
					}
					out[name] = fc
				}
			}
		}
	}
	return out, nil
}

func (f *Filter) counted(chains []*nftables.Chain, tag []byte) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		return 0, err
	}
	var n uint64
	for _, ch := range chains {
		rules, err := c.GetRules(f.table, ch)
		if err != nil {
			return 0, fmt.Errorf("netio: filter: list rules: %w", err)
		}
		for _, r := range rules {
			if !bytes.Equal(r.UserData, tag) {
				continue
			}
			for _, e := range r.Exprs {
				if ctr, ok := e.(*expr.Counter); ok {
					n += ctr.Packets
				}
			}
		}
	}
	return n, nil
}

// Close deletes the whole table.
func (f *Filter) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.ns == -1 {
		return nil
	}
	defer func() {
		f.ns.Close()
		f.ns = -1
		if f.nl != nil {
			f.nl.CloseLasting()
			f.nl = nil
		}
	}()
	c, err := f.conn()
	if err != nil {
		return err
	}
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
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil {
		return fmt.Errorf("netio: filter: delete table inet %s: %w", name, err)
	}
	return nil
}
