package netio

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// BypassRing adds, in the gate's table, a chain that drops at prerouting
// (priority raw, before routing and INPUT) the ESP and AH packets an RxRing
// has already received, so that the IP stack does not process each of
// them a second time (route lookup, INPUT, the raw socket's clone that its
// drop-all filter discards):
//
//	chain ring-bypass (filter hook prerouting, priority raw, policy accept):
//	    meta nfproto ipv4 meta pkttype host ip frag-off & 0x3fff == 0
//	        meta l4proto esp esp spi @inbound-spis meta iifkind != "bridge"
//	        fib daddr type local counter drop
//	    (the same for ah, its SPI 4 octets into the header)
//
// These are exactly packets the ring's filter takes (protocol, not a
// fragment, addressed to this host's link address) and its Recv keeps
// (a local destination; a header ip_rcv accepted), with an SPI an inbound
// SA holds. Fragments are left to the IP stack, which reassembles its own
// copy for the raw socket's drop-all filter while the ring's fanout
// reassembles another. The same packets with an SPI no inbound SA holds
// (a forged-SPI flood) are the gate's, and while the gate is shut the
// chain drops them too, counted as the gate's, so that a flood costs no
// route lookup and no INPUT traversal (bench-flood, interleaved rounds:
// the flood's kernel cost on the receiving gateway about 13 % lower, the
// tunnel under it at 85-96 % of the control's throughput against 82-90):
//
//	meta nfproto ipv4 meta pkttype host ip frag-off & 0x3fff == 0
//	    meta l4proto esp esp spi != @inbound-spis meta iifkind != "bridge"
//	    fib daddr type local counter drop
//
// Fragments and ESP-in-UDP still meet the gate at INPUT. On a veth the
// receiving namespace's input runs in the sending thread, so the saving
// shows up on the peer's sending path as well. Call it only while the
// ring is open and remove it (Close, or RemoveBypass) before the ring
// closes: without the ring these packets are lost.
func (g *SPIGate) BypassRing() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.nl == nil {
		return fmt.Errorf("netio: ring bypass: %w", ErrClosed)
	}
	if g.bypass != nil {
		return nil
	}
	defer g.lockNL()()
	ch := &nftables.Chain{
		Name: ringBypassChain, Table: g.table, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw,
	}
	g.nl.AddChain(ch)
	g.nl.DelChain(ch)
	g.nl.AddChain(ch)
	g.queueBypassRules(ch, g.open)
	if err := g.nl.Flush(); err != nil {
		return fmt.Errorf("netio: ring bypass: create in table inet %s: %w", g.table.Name, err)
	}
	g.bypass = ch
	return nil
}

// RemoveBypass removes the ring-bypass chain (if any): from its return on,
// the IP stack processes every ESP and AH packet again.
func (g *SPIGate) RemoveBypass() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.nl == nil || g.bypass == nil {
		return nil
	}
	defer g.lockNL()()
	g.nl.DelChain(g.bypass)
	g.bypass = nil
	if err := g.nl.Flush(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("netio: ring bypass: remove: %w", err)
	}
	return nil
}

// queueBypassRules queues the ring bypass's drop rules into ch, with the
// gate's early drops of unknown SPIs unless the gate is open (the
// socket's lock held).
func (g *SPIGate) queueBypassRules(ch *nftables.Chain, open bool) {
	for _, r := range ringBypassRules(g.set) {
		g.nl.AddRule(&nftables.Rule{Table: g.table, Chain: ch, Exprs: r.exprs, UserData: []byte(ringBypassTag + r.name)})
	}
	if open {
		return
	}
	for _, r := range earlyGateRules(g.set) {
		g.nl.AddRule(&nftables.Rule{Table: g.table, Chain: ch, Exprs: r.exprs, UserData: []byte(spiGateTag + r.name)})
	}
}

// ringBypassRules are BypassRing's drop rules, for ESP and AH.
func ringBypassRules(set *nftables.Set) []gateRule {
	return []gateRule{
		{"esp", wholeLocalRule(unix.IPPROTO_ESP, 0, set, false)},
		{"ah", wholeLocalRule(unix.IPPROTO_AH, 4, set, false)},
	}
}

// earlyGateRules are the gate's drops in the ring-bypass chain: whole ESP
// and AH packets for a local address with an SPI not in the set.
func earlyGateRules(set *nftables.Set) []gateRule {
	return []gateRule{
		{earlyESP, wholeLocalRule(unix.IPPROTO_ESP, 0, set, true)},
		{earlyAH, wholeLocalRule(unix.IPPROTO_AH, 4, set, true)},
	}
}

// The early rules' names (after spiGateTag).
const (
	earlyESP = "esp-prerouting"
	earlyAH  = "ah-prerouting"
)

// metaKeyIIFKIND is NFT_META_IIFKIND (Linux 4.18): the kind of the input
// interface ("bridge", "veth", ...), which the library does not name.
const metaKeyIIFKIND = expr.MetaKey(26)

// wholeLocalRule drops an unfragmented IPv4 packet of proto for this
// host (link and IP) whose SPI, spiOff octets into its header, is in set
// (or, with notIn, is not), and counts it; unless it came in on a bridge:
// with br_netfilter (bridge-nf-call-iptables) a bridge runs the IPv4
// prerouting hooks, this chain's too, with the bridge as the input
// interface while the frame is still on its port, before it passes the
// frame up to the bridge's interface, where the ring would see it; a
// packet dropped there would reach neither (TestIngressBypassBridge). On
// a bridge such packets go on to INPUT (br_netfilter does not run the
// hooks a second time) and to the raw socket's drop-all filter; the
// ingress bypass on the bridge's interface keeps them from the IP stack.
//
// The protocol is tested first: every packet the host receives or
// forwards runs this chain, and for all but ESP and AH that one test ends
// each rule (it was the fourth, after the fragment and link tests, which
// most forwarded packets pass).
func wholeLocalRule(proto byte, spiOff uint32, set *nftables.Set, notIn bool) []expr.Any {
	return append(append([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		cmpEq(proto),
	}, fragFieldExprs()...), // meta nfproto ipv4, ip frag-off & 0x3fff
		cmpEq(0, 0),
		&expr.Meta{Key: expr.MetaKeyPKTTYPE, Register: 1},
		cmpEq(unix.PACKET_HOST),
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: spiOff, Len: 4},
		&expr.Lookup{SourceRegister: 1, SetName: set.Name, SetID: set.ID, Invert: notIn},
		&expr.Meta{Key: metaKeyIIFKIND, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: ifname("bridge")},
		&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binary.NativeEndian.AppendUint32(nil, unix.RTN_LOCAL)},
		&expr.Counter{},
		&expr.Verdict{Kind: expr.VerdictDrop},
	)
}
