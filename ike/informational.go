package ike

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/gosec-ipsec/gosec/ike/ikecrypto"
	"github.com/gosec-ipsec/gosec/ike/isakmp"
)

// Notify message types used here (RFC 2408 3.14.1, RFC 3706).
const (
	notifyNoProposalChosen  = 14
	notifyPayloadMalformed  = 16
	notifyInvalidKeyInfo    = 17
	notifyInvalidIDInfo     = 18
	notifyInvalidHashInfo   = 23
	notifyAuthFailed        = 24
	notifyInitialContact    = 24578
	notifyRUThere           = 36136
	notifyRUThereAck        = 36137
	notifyResponderLifetime = 24576
)

// notifyAdvice says what an administrator can do about a Notify from
// the peer.
func notifyAdvice(t isakmp.NotifyType, p *p1) string {
	switch uint16(t) {
	case notifyNoProposalChosen:
		var offered []string
		if p.established() && p.conn != nil {
			for _, s := range p2Suites(p.conn) {
				offered = append(offered, s.String())
			}
			return fmt.Sprintf("the peer accepts none of our phase-2 proposals [%s] (%s mode); compare esp=/ah= (and the PFS group) on both sides",
				strings.Join(offered, ", "), p.conn.Mode)
		}
		var suites []p1Suite
		if p.conn != nil {
			suites = p1Suites(p.conn) // what MM1 offered
		}
		for _, s := range suites {
			offered = append(offered, s.String())
		}
		return fmt.Sprintf("the peer accepts none of our phase-1 proposals [%s]; compare ike= on both sides", strings.Join(offered, ", "))
	case notifyInvalidIDInfo:
		if p.conn != nil {
			var pairs []string
			for _, pr := range selectorPairs(p.conn) {
				pairs = append(pairs, fmt.Sprintf("%v === %v", pr[0], pr[1]))
			}
			return fmt.Sprintf("the peer does not accept our identities or traffic selectors (we proposed %s); compare leftsubnet/rightsubnet and leftid/rightid on both sides",
				strings.Join(pairs, ", "))
		}
		return "the peer does not accept our identities or traffic selectors"
	case notifyInvalidHashInfo, notifyAuthFailed, notifyPayloadMalformed:
		return "authentication failed: the pre-shared keys (or the IDs that select them) most likely differ"
	}
	return "negotiation refused"
}

// sendInfo sends a protected Informational exchange with payloads.
func (e *Engine) sendInfo(p *p1, payloads []isakmp.Payload) {
	if p.km.cbc == nil || !p.established() {
		return
	}
	msgID := e.randomMsgID(p)
	bs := p.km.cbc.BlockSize()
	iv := ikecrypto.PhaseIV(p.suite.Hash, p.km.iv, msgID, bs)
	hl := p.suite.Hash.Size()
	ps := append([]isakmp.Payload{&isakmp.Hash{Data: make([]byte, hl)}}, payloads...)
	b := isakmp.AppendPayloads(nil, ps)
	copy(b[4:4+hl], ikecrypto.InfoHash(p.suite.Hash, p.km.a, msgID, b[4+hl:]))
	m, _ := e.seal(p, p.header(isakmp.ExchInfo, msgID, true), b, isakmp.PayloadHash, iv)
	e.transmit(p, m)
}

// sendNotify sends a protected Notify (or an unprotected one before
// phase 1 completes).
func (e *Engine) sendNotify(p *p1, typ uint16, spi []byte) {
	e.Stats.Notifies.Add(1)
	if !p.established() {
		e.sendPlainNotify(p.icky, p.rcky, p.peer, p.natt, typ)
		return
	}
	proto := isakmp.ProtoISAKMP
	if len(spi) == 4 {
		proto = isakmp.ProtoESP
	}
	e.sendInfo(p, []isakmp.Payload{&isakmp.Notify{DOI: doiIPsec, Protocol: proto, Kind: isakmp.NotifyType(typ), SPI: spi}})
}

// sendDelete tells the peer that SAs of proto with our inbound SPIs are
// gone.
func (e *Engine) sendDelete(p *p1, proto Proto, spis [][]byte) {
	pid := isakmp.ProtoESP
	if proto == ProtoAH {
		pid = isakmp.ProtoAH
	}
	e.Stats.Deletes.Add(1)
	e.sendInfo(p, []isakmp.Payload{&isakmp.Delete{DOI: doiIPsec, Protocol: pid, SPISize: 4, SPIs: spis}})
}

func (e *Engine) sendDeleteISAKMP(p *p1) {
	e.Stats.Deletes.Add(1)
	spi := append(append([]byte(nil), p.icky[:]...), p.rcky[:]...)
	e.sendInfo(p, []isakmp.Payload{&isakmp.Delete{DOI: doiIPsec, Protocol: isakmp.ProtoISAKMP, SPISize: 16, SPIs: [][]byte{spi}}})
}

// maxInfoIDs is how many message IDs of authenticated Informationals an
// ISAKMP SA remembers for replay protection. Peers choose them at random
// (strongSwan, Libreswan, gosec), so a replay of any of the last 64
// (DPD every 30 s: the last half hour) is recognised.
const maxInfoIDs = 64

// infoSeen reports whether id was handled before, and remembers it.
func (p *p1) infoSeen(id uint32) bool {
	for _, x := range p.infoIDs {
		if x == id {
			return true
		}
	}
	if len(p.infoIDs) >= maxInfoIDs {
		p.infoIDs = append(p.infoIDs[:0], p.infoIDs[1:]...)
	}
	p.infoIDs = append(p.infoIDs, id)
	return false
}

// handleInfo processes a protected Informational exchange.
func (e *Engine) handleInfo(p *p1, h isakmp.Header, msg []byte) {
	if p.km.cbc == nil || (!p.established() && !p.phase1.awaitingPeerProof()) {
		e.Stats.Malformed.Add(1)
		e.warn("protected Informational before keys", "peer", p.peer)
		return
	}
	iv := ikecrypto.PhaseIV(p.suite.Hash, p.km.iv, h.MessageID, p.km.cbc.BlockSize())
	plain, _, err := e.open(p, msg, iv)
	if err != nil {
		e.Stats.Decrypt.Add(1)
		return
	}
	ps, raws, ok := e.decode(p, h.Next, plain, "Informational")
	if !ok {
		if p.phase1.awaitingPeerProof() {
			// The peer answered MM5 with a message our keys cannot read:
			// its keys differ from ours, so its PSK does.
			e.Stats.AuthFailed.Add(1)
			e.failP1(p, errors.New("the peer answered MM5 with an Informational message that does not decrypt under our keys: the pre-shared keys most likely differ"), false)
		}
		return
	}
	if len(raws) == 0 || raws[0].Type != isakmp.PayloadHash {
		e.Stats.Malformed.Add(1)
		e.warn("Informational without HASH", "peer", p.peer)
		return
	}
	lastRaw := raws[len(raws)-1]
	rest := plain[raws[0].Off+4+len(raws[0].Body) : lastRaw.Off+4+len(lastRaw.Body)]
	if !hashEqual(ikecrypto.InfoHash(p.suite.Hash, p.km.a, h.MessageID, rest), raws[0].Body) {
		e.Stats.BadHash.Add(1)
		e.warn("Informational HASH(1) does not verify", "peer", p.peer)
		return
	}
	if p.infoSeen(h.MessageID) {
		// A replay: the message authenticates, but it was handled before.
		e.Stats.Replays.Add(1)
		e.warn("replayed protected Informational dropped", "peer", p.peer, "msgid", h.MessageID)
		return
	}
	e.authentic(p)
	for _, pl := range ps {
		switch v := pl.(type) {
		case *isakmp.Delete:
			e.Stats.Deletes.Add(1)
			e.peerDelete(p, v)
		case *isakmp.Notify:
			e.Stats.Notifies.Add(1)
			e.peerNotify(p, v)
		}
	}
}

// peerDelete honours a Delete payload.
func (e *Engine) peerDelete(p *p1, d *isakmp.Delete) {
	switch d.Protocol {
	case isakmp.ProtoISAKMP:
		for _, spi := range d.SPIs {
			if len(spi) == 16 && string(spi[:8]) == string(p.icky[:]) && string(spi[8:]) == string(p.rcky[:]) {
				e.log.Info("peer deleted ISAKMP SA", "conn", p.conn.Name, "peer", p.peer, "cookies", p.cookieString())
				p.fail(fmt.Errorf("conn %s: the peer deleted the ISAKMP SA", p.conn.Name))
				e.forget(p)
				e.orphan(p)
			}
		}
	case isakmp.ProtoESP, isakmp.ProtoAH:
		for _, spi := range d.SPIs {
			if len(spi) != 4 {
				continue
			}
			out := be32u(spi)
			// Only the identity that negotiated an SA may delete it:
			// clients behind one NAT share an address and may pick the
			// same SPIs.
			e.dropChildren("", func(ch *child) bool {
				return ch.sa.OutSPI == out && ch.sa.Remote == p.peer.Addr() && ch.identity == p.identity()
			}, false, "peer deleted IPsec SA")
		}
	}
}

// peerNotify handles a protected Notify.
func (e *Engine) peerNotify(p *p1, n *isakmp.Notify) {
	switch uint16(n.Kind) {
	case notifyRUThere:
		e.sendInfo(p, []isakmp.Payload{&isakmp.Notify{DOI: doiIPsec, Protocol: isakmp.ProtoISAKMP, Kind: notifyRUThereAck, SPI: n.SPI, Data: n.Data}})
		return
	case notifyRUThereAck:
		if len(n.Data) == 4 && be32u(n.Data) == p.dpdSeq {
			p.dpdWaiting = false
			e.observe(ExchangeEvent{Peer: p.peer.Addr(), Conn: p.conn.Name, Kind: "dpd", Result: "alive"})
		}
		return
	case notifyInitialContact:
		// strongSwan also honours it in an Informational exchange
		// (ikev1/tasks/informational.c).
		e.initialContact(p)
		return
	case notifyResponderLifetime:
		return
	}
	if uint16(n.Kind) < 8192 {
		err := fmt.Errorf("conn %s: the peer sent %s: %s", p.conn.Name, n.Kind, notifyAdvice(n.Kind, p))
		e.log.Warn("peer reports an error", "conn", p.conn.Name, "peer", p.peer, "notify", n.Kind.String(), "advice", notifyAdvice(n.Kind, p))
		// Fail the Quick Modes we are waiting for.
		for _, q := range p.qms {
			if q.initiator && q.state == quickI1 {
				e.failQM(q, err)
			}
		}
		if !p.established() {
			e.failP1(p, err, false)
		}
	}
}

// openInfo handles an unprotected Informational for no known SA (a
// refusal of our MM1 carries no responder cookie we know).
func (e *Engine) openInfo(h isakmp.Header, msg []byte, from, _ netip.AddrPort, _ bool) bool {
	if h.Flags&isakmp.FlagEncryption != 0 {
		return false
	}
	e.handlePlainInfo(nil, h, msg, from)
	return true
}

// processInfo handles an Informational under ISAKMP SA p.
func (e *Engine) processInfo(p *p1, m received) {
	if m.h.Flags&isakmp.FlagEncryption == 0 {
		e.handlePlainInfo(p, m.h, m.msg, m.from)
		return
	}
	e.handleInfo(p, m.h, m.msg)
}

// handlePlainInfo handles an unprotected Informational exchange (a peer
// refusing before keys exist). It is only believed for an SA that is
// still negotiating: an unprotected message cannot end an established SA.
func (e *Engine) handlePlainInfo(p *p1, h isakmp.Header, msg []byte, from netip.AddrPort) {
	if p == nil {
		for _, q := range e.sas {
			if q.icky == h.ICookie && q.initiator && q.peer.Addr() == from.Addr() {
				p = q
				break
			}
		}
	}
	ps, _, err := isakmp.DecodeAll(h.Next, msg[isakmp.HeaderLen:])
	if err != nil {
		e.Stats.Malformed.Add(1)
		return
	}
	for _, pl := range ps {
		n, ok := pl.(*isakmp.Notify)
		if !ok {
			continue
		}
		e.Stats.Notifies.Add(1)
		if p == nil || p.established() {
			e.warn("unprotected notify ignored", "peer", from, "notify", n.Kind.String())
			continue
		}
		if uint16(n.Kind) < 8192 {
			e.failP1(p, fmt.Errorf("the peer sent %s in state %s: %s", n.Kind, p.phase1, notifyAdvice(n.Kind, p)), false)
			return
		}
	}
}

// initialContact honours INITIAL-CONTACT (RFC 2407 4.6.3.3): the peer
// has no state from before, so the SAs that the same pair of identities
// established before p's negotiation began are stale and go without a
// Delete (strongSwan's check_uniqueness with force_replace). SAs of other
// identities (other clients behind the same NAT) stay, and so do SAs
// established while p was negotiated (both peers initiating at once).
func (e *Engine) initialContact(p *p1) {
	id := p.identity()
	for _, q := range e.sortedSAs() {
		if q != p && q.established() && q.identity() == id && q.estSeq < p.createdSeq {
			e.log.Info("INITIAL-CONTACT: forgetting the peer's old ISAKMP SA", "peer", p.peer, "peer_id", p.peerID, "cookies", q.cookieString())
			e.forget(q)
			e.orphan(q)
		}
	}
	e.dropChildren("", func(ch *child) bool { return ch.identity == id && ch.seq < p.createdSeq }, false,
		"INITIAL-CONTACT: removing the peer's old IPsec SA")
}
