package netio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// SPIGateConfig configures the kernel's unknown-SPI drop.
type SPIGateConfig struct {
	// Table is the inet table the gate's chain and set go into: the
	// Filter's (DefaultFilterTable if empty), which must exist. Deleting
	// the table (Filter.Close, or NewFilter replacing a stale one) takes
	// the gate with it.
	Table string
	// NATTPort is the UDP port of ESP-in-UDP (RFC 3948); 0: no UDP rule.
	NATTPort uint16
	// Filter, if set, is the Filter whose table the gate goes into
	// (Table is then ignored): the gate changes the table through the
	// filter's socket, which owns it (Filter.Owned), and must be closed
	// before the filter. Without it the gate opens a socket of its own,
	// which cannot change an owned table.
	Filter *Filter
}

// The gate's chain, set and rule tags in the Filter's table.
const (
	spiGateChain   = "spi-gate"
	spiGateSet     = "inbound-spis"
	spiGatePeerSet = "inbound-peers"
	spiGateTag     = "gosec:spi-gate:"
	// ringBypassChain holds the rules that keep the IP stack from
	// processing, a second time, the ESP and AH an RxRing receives
	// (SPIGate.BypassRing).
	ringBypassChain = "ring-bypass"
	ringBypassTag   = "gosec:ring-bypass:"
)

// SPIGate drops, in the kernel, the ESP and AH packets addressed to this
// host whose SPI no inbound SA of the daemon holds, and the ESP-in-UDP
// packets on the NAT-T port likewise, before they reach the daemon's
// sockets: a flood of forged SPIs then costs the kernel's IP input and one
// set lookup per packet, and the daemon nothing (no wake-up, no copy, no
// drop bookkeeping). In the Filter's table:
//
//	set inbound-spis { type integer (the SPI, network order) }
//	set inbound-peers { type ipv4_addr (the inbound SAs' sources) }
//	chain spi-gate (filter hook input, priority raw, policy accept):
//	    meta nfproto ipv4 meta l4proto esp  esp spi != @inbound-spis counter drop
//	    meta nfproto ipv4 meta l4proto ah   ah spi != @inbound-spis counter drop
//	    meta nfproto ipv4 meta l4proto udp  udp dport NATTPort
//	        @th,64,32 != 0 (IKE's non-ESP marker)
//	        ip saddr != @inbound-peers
//	        @th,64,32 != @inbound-spis counter drop
//
// The input hook sees only packets for this host (forwarded ESP of others
// is never judged) and sees them reassembled, as the raw socket does. A
// packet too short to hold an SPI (a NAT-T keepalive, one octet) fails the
// payload load, which ends the rule without a match: it passes. The set
// holds every SPI of an inbound SA, whatever its protocol or destination:
// the daemon's SAD judges those further. With an RxRing's bypass chain
// (BypassRing) the gate drops whole ESP and AH packets for this host
// there already, at prerouting, before the route lookup.
//
// The daemon admits an SPI before it adds the inbound SA to its SAD (so
// before the peer can know of it) and revokes it after it removed the SA;
// SPIs are reference-counted, since several SAs (protocols, destinations)
// may share one. If the set cannot be changed, the gate opens (its drop
// rules are removed) rather than risk dropping a legitimate packet; the
// daemon's own unknown-SPI check still applies.
//
// ESP-in-UDP from the address of a peer (the source of an inbound SA)
// is not judged by the gate but by the daemon, datagram by datagram. The
// reason is UDP GRO (the NAT-T socket enables UDP_GRO): a GRO train
// reaches the gate as one packet, judged by its first datagram's SPI, so
// a forged datagram with an unknown SPI that carries a peer's address and
// port (a spoofing attacker who knows them) and arrives just before the
// peer's own packets in one receive batch would have the gate drop the
// whole train, the peer's packets with it. Trains are only ever made of
// one flow's datagrams, so judging every peer's datagrams in the daemon
// leaves no train to poison; floods from any other address are still
// dropped here.
//
// It is safe for concurrent use.
type SPIGate struct {
	mu sync.Mutex
	// sess is the socket the gate changes its table through, the
	// Filter's when shared (its mu is taken after g.mu, around every use
	// of nl); nl is sess.c, nil once closed.
	sess    *nftSession
	shared  bool
	nl      *nftables.Conn
	table   *nftables.Table
	chain   *nftables.Chain
	set     *nftables.Set
	peerSet *nftables.Set
	// bypass is the ring-bypass chain (nil: none).
	bypass *nftables.Chain
	// mirror is kept holding the set's SPIs (nil: none; MirrorTo) until
	// it is opened (mirrorOpen).
	mirror     SPIMirror
	mirrorOpen bool
	refs       spiRefs
	// peers counts the holds on each peer address in peerSet.
	peers map[netip.Addr]int
	// open is set once the gate removed its drop rules after a failure;
	// why says what failed.
	open bool
	why  error
	// nattPort is the NAT-T port its ESP-in-UDP rule judges (0: none).
	nattPort uint16
}

// NewSPIGate adds the gate's set and chain to cfg.Table (replacing any of
// the same names) in the calling thread's network namespace, with an empty
// set: every ESP and AH packet for this host is dropped until SPIs are
// admitted.
func NewSPIGate(cfg SPIGateConfig) (*SPIGate, error) {
	if cfg.Table == "" {
		cfg.Table = DefaultFilterTable
	}
	var (
		sess   *nftSession
		shared = cfg.Filter != nil
	)
	if shared {
		cfg.Filter.mu.Lock()
		sess, cfg.Table = cfg.Filter.sess, cfg.Filter.cfg.Table
		cfg.Filter.mu.Unlock()
		if sess == nil {
			return nil, fmt.Errorf("netio: spi gate: filter: %w", ErrClosed)
		}
	} else {
		var err error
		if sess, err = newNFTSession(); err != nil {
			return nil, fmt.Errorf("netio: spi gate: nftables: %w", err)
		}
	}
	// Built with the socket locked; registered with the Filter after,
	// since the Filter's lock comes before the socket's.
	g, err := func() (*SPIGate, error) {
		sess.mu.Lock()
		defer sess.mu.Unlock()
		nl := sess.c
		// closeNL undoes the gate's socket on failure (a shared one stays).
		closeNL := func() {
			if shared {
				discardQueued(nl)
			} else {
				nl.CloseLasting()
			}
		}
		g := &SPIGate{sess: sess, shared: shared, nl: nl, table: &nftables.Table{Family: nftables.TableFamilyINet, Name: cfg.Table}, refs: spiRefs{}, peers: map[netip.Addr]int{},
			nattPort: cfg.NATTPort}
		g.chain = &nftables.Chain{
			Name: spiGateChain, Table: g.table, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityRaw,
		}
		g.set = &nftables.Set{Table: g.table, Name: spiGateSet, KeyType: nftables.TypeInteger,
			Comment: "SPIs of the daemon's inbound SAs"}
		g.peerSet = &nftables.Set{Table: g.table, Name: spiGatePeerSet, KeyType: nftables.TypeIPAddr,
			Comment: "sources of the daemon's inbound SAs (their ESP-in-UDP is judged by the daemon)"}
		// Add-then-delete clears what a previous gate in this table left,
		// in the same transaction.
		nl.AddChain(g.chain)
		nl.DelChain(g.chain)
		probe := &nftables.Set{Table: g.table, Name: spiGateSet, KeyType: nftables.TypeInteger}
		if err := nl.AddSet(probe, nil); err != nil {
			closeNL()
			return nil, fmt.Errorf("netio: spi gate: set: %w", err)
		}
		nl.DelSet(probe)
		probe = &nftables.Set{Table: g.table, Name: spiGatePeerSet, KeyType: nftables.TypeIPAddr}
		if err := nl.AddSet(probe, nil); err != nil {
			closeNL()
			return nil, fmt.Errorf("netio: spi gate: set: %w", err)
		}
		nl.DelSet(probe)
		for _, set := range []*nftables.Set{g.set, g.peerSet} {
			if err := nl.AddSet(set, nil); err != nil {
				closeNL()
				return nil, fmt.Errorf("netio: spi gate: set: %w", err)
			}
		}
		nl.AddChain(g.chain)
		g.queueGateRules()
		if err := nl.Flush(); err != nil {
			if !shared {
				nl.CloseLasting()
			}
			return nil, fmt.Errorf("netio: spi gate: create in table inet %s: %w", cfg.Table, err)
		}
		return g, nil
	}()
	if err != nil {
		return nil, err
	}
	if shared {
		cfg.Filter.onRestore(g.Restore)
	}
	return g, nil
}

// queueGateRules queues the gate's drop rules into its chain (the
// socket's lock held).
func (g *SPIGate) queueGateRules() {
	for _, r := range spiGateRules(g.set, g.peerSet, g.nattPort) {
		g.nl.AddRule(&nftables.Rule{Table: g.table, Chain: g.chain, Exprs: r.exprs, UserData: []byte(spiGateTag + r.name)})
	}
}

type gateRule struct {
	name  string
	exprs []expr.Any
}

// spiGateRules are the gate's drop rules: ESP, AH and, with a NAT-T port,
// ESP-in-UDP from addresses that are not in peers.
func spiGateRules(set, peers *nftables.Set, nattPort uint16) []gateRule {
	head := func(proto byte) []expr.Any {
		return []expr.Any{
			&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: 1},
			cmpEq(unix.NFPROTO_IPV4),
			&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
			cmpEq(proto),
		}
	}
	// notIn: the 4 octets at transport offset off are no admitted SPI.
	notIn := func(off uint32) []expr.Any {
		return []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: off, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: true},
			&expr.Counter{},
			&expr.Verdict{Kind: expr.VerdictDrop},
		}
	}
	rules := []gateRule{
		{"esp", append(head(unix.IPPROTO_ESP), notIn(0)...)},
		{"ah", append(head(unix.IPPROTO_AH), notIn(4)...)},
	}
	if nattPort != 0 {
		udp := append(head(unix.IPPROTO_UDP),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
			cmpEq(byte(nattPort>>8), byte(nattPort)),
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 8, Len: 4},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0, 0, 0, 0}},
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4},
			&expr.Lookup{SourceRegister: 1, SetName: peers.Name, SetID: peers.ID, Invert: true},
		)
		rules = append(rules, gateRule{"udp", append(udp, notIn(8)...)})
	}
	return rules
}

// ErrGateOpened is wrapped by Admit's error when changing the set failed
// and the gate opened instead: the SPI's packets reach the daemon (as
// every packet does now), so the caller may go on adding its SA.
var ErrGateOpened = errors.New("the gate is open (the daemon drops unknown SPIs itself)")

// Admit puts spi into the set (if no other SA holds it already) and peer,
// the SA's source (ignored unless IPv4), into the peer set. Call it before
// the inbound SA is added: from its return on, packets with spi reach the
// daemon. An error that wraps ErrGateOpened means the set could not be
// changed and the gate opened, and one that wraps ErrMirrorOpened that the
// mirror (MirrorTo) could not take the SPI and was opened: in both cases
// the SA may be added. Any other error means
// packets with spi are still dropped: the SA must not be added (nothing is
// held on spi or peer).
func (g *SPIGate) Admit(spi uint32, peer netip.Addr) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	defer g.lockNL()()
	hold := func() {
		g.refs.add(spi)
		if peer.Is4() {
			g.peers[peer]++
		}
	}
	newSPI := g.refs[spi] == 0
	newPeer := peer.Is4() && g.peers[peer] == 0
	if g.open || (!newSPI && !newPeer) {
		hold()
		return nil
	}
	var err error
	if newSPI {
		err = g.nl.SetAddElements(g.set, []nftables.SetElement{{Key: spiKey(spi)}})
	}
	if err == nil && newPeer {
		err = g.nl.SetAddElements(g.peerSet, []nftables.SetElement{{Key: peer.AsSlice()}})
	}
	if err == nil {
		err = g.nl.Flush()
	}
	if err == nil {
		var merr error
		if newSPI && g.mirror != nil && !g.mirrorOpen {
			merr = g.putMirror(spi)
		}
		if merr != nil && !errors.Is(merr, ErrMirrorOpened) {
			// Not held: the set keeps an SPI that no SA holds, which
			// only lets packets reach the daemon.
			return merr
		}
		hold()
		return merr
	}
	err = g.failOpen(fmt.Errorf("admit spi %08x from %v: %w", spi, peer, err))
	if g.open {
		hold()
	}
	return err
}

// Revoke releases one hold on spi and on peer, removing either from its
// set when no SA holds it any more. Call it after the inbound SA was
// removed, with the spi and peer it was admitted with.
func (g *SPIGate) Revoke(spi uint32, peer netip.Addr) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	defer g.lockNL()()
	lastSPI := g.refs.del(spi)
	lastPeer := false
	if n, ok := g.peers[peer]; ok {
		if n <= 1 {
			delete(g.peers, peer)
			lastPeer = true
		} else {
			g.peers[peer] = n - 1
		}
	}
	if (!lastSPI && !lastPeer) || g.open {
		return nil
	}
	// Left in its set, an SPI or a peer only lets packets reach the
	// daemon, which judges them.
	var mirrorErr error
	if lastSPI && g.mirror != nil && !g.mirrorOpen {
		// Left in the mirror, the SPI only lets packets reach the ring.
		if err := g.mirror.Delete(spi); err != nil {
			mirrorErr = fmt.Errorf("netio: spi gate: revoke spi %08x from the mirror: %w", spi, err)
		}
	}
	if lastSPI {
		if err := g.nl.SetDeleteElements(g.set, []nftables.SetElement{{Key: spiKey(spi)}}); err != nil {
			discardQueued(g.nl)
			return fmt.Errorf("netio: spi gate: revoke spi %08x: %w", spi, err)
		}
	}
	if lastPeer {
		if err := g.nl.SetDeleteElements(g.peerSet, []nftables.SetElement{{Key: peer.AsSlice()}}); err != nil {
			discardQueued(g.nl)
			return fmt.Errorf("netio: spi gate: revoke peer %v: %w", peer, err)
		}
	}
	if err := g.nl.Flush(); err != nil {
		return errors.Join(mirrorErr, fmt.Errorf("netio: spi gate: revoke spi %08x, peer %v: %w", spi, peer, err))
	}
	return mirrorErr
}

// putMirror puts an admitted spi into the mirror (g.mu held). If that
// fails (a daemon that gave up CAP_BPF cannot change an eBPF map), the
// mirror is opened, letting every SPI through, and the gate itself stays
// as it is: the error says so.
func (g *SPIGate) putMirror(spi uint32) error {
	err := g.mirror.Put(spi)
	if err == nil {
		return nil
	}
	if oerr := g.mirror.Open(); oerr != nil {
		return fmt.Errorf("netio: spi gate: mirror: %w; opening it failed too (packets with spi %08x would not reach the ring): %v", err, spi, oerr)
	}
	g.mirrorOpen = true
	return fmt.Errorf("netio: spi gate: %w: %w", ErrMirrorOpened, err)
}

// ErrMirrorOpened is wrapped by Admit's error when the SPI could not be
// put into the mirror and the mirror was opened instead (every SPI
// reaches it): the SA may be added.
var ErrMirrorOpened = errors.New("the receive ring's SPI filter is open (every SPI reaches the data plane, which drops unknown ones)")

// failOpen removes the drop rules after err (g.mu held) and returns err,
// wrapped with what became of the gate.
func (g *SPIGate) failOpen(err error) error {
	if g.mirror != nil && !g.mirrorOpen {
		if merr := g.mirror.Open(); merr != nil {
			err = fmt.Errorf("%w; opening the ring's SPI filter failed too: %v", err, merr)
		} else {
			g.mirrorOpen = true
		}
	}
	// The gate's early drops leave the ring-bypass chain; the ring's
	// bypass stays, with its counters (listed before anything is queued).
	var (
		bypassRules []*nftables.Rule
		listErr     error
	)
	if g.bypass != nil {
		bypassRules, listErr = g.nl.GetRules(g.table, g.bypass)
	}
	g.nl.FlushChain(g.chain)
	if g.bypass != nil {
		if listErr == nil {
			for _, r := range bypassRules {
				if strings.HasPrefix(string(r.UserData), spiGateTag) {
					if listErr = g.nl.DelRule(r); listErr != nil {
						break
					}
				}
			}
		}
		if listErr != nil {
			// Rebuild the chain without them instead (its counters
			// start again).
			g.nl.FlushChain(g.bypass)
			g.queueBypassRules(g.bypass, true)
		}
	}
	if ferr := g.nl.Flush(); ferr != nil {
		return fmt.Errorf("netio: spi gate: %w; opening the gate failed too: %v", err, ferr)
	}
	g.open, g.why = true, err
	return fmt.Errorf("netio: spi gate: %w; %w", err, ErrGateOpened)
}

func spiKey(spi uint32) []byte { return binary.BigEndian.AppendUint32(nil, spi) }

// SPIGateCounts are the packets the gate dropped, by kind.
type SPIGateCounts struct {
	ESP, AH, UDP uint64
	// RingBypass counts the ESP and AH packets that an RxRing received
	// and the IP stack therefore dropped at prerouting (BypassRing); not
	// in Total: they were not forged. Bypassing says the chain is in place.
	RingBypass uint64
	Bypassing  bool
	// Prerouting counts those of ESP and AH that the gate dropped in the
	// ring-bypass chain, before routing (whole packets, while the bypass
	// is in place); the rest met it at INPUT.
	Prerouting uint64
	// Admitted is how many SPIs the set holds.
	Admitted int
	// Open says the gate removed its rules after a failure (Err says
	// which); the counts are then those from before.
	Open bool
	Err  error
}

// Total is every packet the gate dropped.
func (c SPIGateCounts) Total() uint64 { return c.ESP + c.AH + c.UDP }

// Counts reads the drop rules' counters (one listing of the chain).
func (g *SPIGate) Counts() (SPIGateCounts, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	defer g.lockNL()()
	out := SPIGateCounts{Admitted: g.refs.len(), Open: g.open, Err: g.why}
	var rules []*nftables.Rule
	if !g.open {
		r, err := g.nl.GetRules(g.table, g.chain)
		if err != nil {
			return out, fmt.Errorf("netio: spi gate: list rules: %w", err)
		}
		rules = r
	}
	if g.bypass != nil {
		br, err := g.nl.GetRules(g.table, g.bypass)
		if err != nil {
			return out, fmt.Errorf("netio: ring bypass: list rules: %w", err)
		}
		rules = append(rules, br...)
	}
	for _, r := range rules {
		var n uint64
		for _, e := range r.Exprs {
			if c, ok := e.(*expr.Counter); ok {
				n += c.Packets
			}
		}
		switch string(r.UserData) {
		case spiGateTag + "esp":
			out.ESP += n
		case spiGateTag + "ah":
			out.AH += n
		case spiGateTag + earlyESP:
			out.ESP += n
			out.Prerouting += n
		case spiGateTag + earlyAH:
			out.AH += n
			out.Prerouting += n
		case spiGateTag + "udp":
			out.UDP += n
		case ringBypassTag + "esp", ringBypassTag + "ah":
			out.RingBypass += n
		}
	}
	out.Bypassing = g.bypass != nil
	return out, nil
}

// SPIMirror is a second holder of the gate's SPIs (an RxRing's
// RingSPIs): Put and Delete follow the set; Open lets every SPI through,
// when the gate opens.
type SPIMirror interface {
	Put(spi uint32) error
	Delete(spi uint32) error
	Open() error
}

// MirrorTo makes m hold the admitted SPIs from now on: those admitted so
// far are put at once, later Admits put before they return and Revokes
// delete. If putting them fails (the error wraps ErrMirrorOpened), or the
// gate is open, m is opened, and stays open: the gate puts nothing more.
func (g *SPIGate) MirrorTo(m SPIMirror) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.mirror, g.mirrorOpen = m, false
	var err error
	if !g.open {
		for spi := range g.refs {
			if err = m.Put(spi); err != nil {
				break
			}
		}
		if err == nil {
			return nil
		}
	}
	if oerr := m.Open(); oerr != nil {
		return errors.Join(err, fmt.Errorf("netio: spi gate: opening the mirror: %w", oerr))
	}
	g.mirrorOpen = true
	if err != nil {
		return fmt.Errorf("netio: spi gate: %w: %w", ErrMirrorOpened, err)
	}
	return nil
}

// Close removes the gate's chain and set (if its table still exists) and
// closes its netlink socket.
func (g *SPIGate) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.nl == nil {
		return nil
	}
	defer func() {
		if !g.shared {
			g.nl.CloseLasting()
		}
		g.nl = nil
	}()
	defer g.lockNL()()
	if g.bypass != nil {
		g.nl.DelChain(g.bypass)
		g.bypass = nil
	}
	g.nl.DelChain(g.chain)
	g.nl.DelSet(g.set)
	g.nl.DelSet(g.peerSet)
	if err := g.nl.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netio: spi gate: remove: %w", err)
	}
	return nil
}

// lockNL takes the socket's lock (g.mu held) and returns its release.
// Every change queued under it is flushed or discarded before the
// release: on a shared socket, anything left queued would go out with the
// Filter's next transaction. (The library's Flush empties the queue even
// when it fails.)
func (g *SPIGate) lockNL() func() {
	g.sess.mu.Lock()
	return g.sess.mu.Unlock
}

// spiRefs counts the holds on each admitted SPI.
type spiRefs map[uint32]int

// add takes a hold on spi and reports whether it is the first.
func (r spiRefs) add(spi uint32) bool {
	r[spi]++
	return r[spi] == 1
}

// del releases a hold on spi and reports whether it was the last (false
// too for an SPI that had none).
func (r spiRefs) del(spi uint32) bool {
	n, ok := r[spi]
	if !ok {
		return false
	}
	if n <= 1 {
		delete(r, spi)
		return true
	}
	r[spi] = n - 1
	return false
}

func (r spiRefs) len() int { return len(r) }
