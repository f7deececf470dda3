package ike

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/gosec-ipsec/gosec/ike/ikecrypto"
	"github.com/gosec-ipsec/gosec/ike/isakmp"
)

// Main Mode (RFC 2409 5, identity protection) with pre-shared keys:
//
//	initiator                          responder
//	MM1 HDR, SA, VIDs            -->   mainResponderMM1: choose a proposal
//	mainInitiatorMM2             <--   MM2 HDR, SA, VIDs              (mainR1)
//	MM3 HDR, KE, Ni, NAT-D       -->   mainResponderMM3: DH on a worker
//	mainInitiatorMM4             <--   MM4 HDR, KE, Nr, NAT-D         (mainR2)
//	MM5 HDR*, IDii, HASH_I       -->   mainResponderMM5: authenticate
//	mainInitiatorMM6             <--   MM6 HDR*, IDir, HASH_R         (mainR3)
//
// Main Mode is a task of its own (mainMode), the ISAKMP SA's phase-1
// task (p1.phase1, message ID 0): it owns its state, the exchange in
// flight, what the initiator offered, the initiator's SA payload body,
// its Diffie-Hellman pair, the public values and the nonces, and forgets
// them once it is done. Each step processes one message and builds the
// next; the states are Pluto's. The exchange in flight (retransmission,
// duplicates) is the task manager's (taskmanager.go); the SA's keys are
// its keymat's (keymat.go).

// mainMode is the Main Mode exchange of one ISAKMP SA.
type mainMode struct {
	p     *p1
	state mainState
	// x is the exchange in flight (taskmanager.go).
	x exchange
	// suites is what the initiator offered in MM1 (MM2 is checked
	// against it); saiBody the initiator's SA payload body, covered by
	// HASH_I and HASH_R.
	suites  []p1Suite
	saiBody []byte
	// dh is our Diffie-Hellman pair until g^xy is computed; gxi, gxr
	// the public values and ni, nr the nonces, until the proofs are done.
	dh               *ikecrypto.DH
	gxi, gxr, ni, nr []byte
	// computing: a Diffie-Hellman step is on a crypto worker.
	computing bool
}

// The task (taskmanager.go).

func (mm *mainMode) flight() *exchange { return &mm.x }
func (mm *mainMode) sa() *p1           { return mm.p }
func (mm *mainMode) current() bool     { return mm.p.phase1 == mm }
func (mm *mainMode) retrying(try int) {
	mm.p.say("retransmit %d of request with message ID 0", try)
}
func (mm *mainMode) expired(tries int) {
	mm.p.e.failP1(mm.p, fmt.Errorf("no response from %v in state %s after %d retransmissions", mm.p.peer, mm.state, tries), true)
}

// messageName tells MM1..MM6 apart by the first payload and the
// encryption flag.
func (mm *mainMode) messageName(msg []byte, _ bool) string {
	n := 0
	switch {
	case len(msg) > 19 && msg[19]&1 != 0: // encrypted: MM5 / MM6
		n = 5
	case len(msg) > 16 && msg[16] == 4: // first payload KE: MM3 / MM4
		n = 3
	default: // SA: MM1 / MM2
		n = 1
	}
	if !mm.p.initiator {
		n++
	}
	return fmt.Sprintf("MM%d", n)
}

// The phase-1 task (phase1Task).

func (mm *mainMode) String() string { return mm.state.String() }
func (mm *mainMode) done() bool     { return mm.state == mainI4 || mm.state == mainR3 }
func (mm *mainMode) complete() {
	if mm.p.initiator {
		mm.state = mainI4
	} else {
		mm.state = mainR3
	}
}
func (mm *mainMode) answeredFirst() bool     { return mm.state == mainR1 }
func (mm *mainMode) awaitingPeerProof() bool { return mm.state == mainI3 }

// forget zeroes the Diffie-Hellman private value and the nonces and
// drops the public values and the SA payload: only the proofs needed
// them.
func (mm *mainMode) forget() {
	mm.forgetDH()
	wipe(mm.ni)
	wipe(mm.nr)
	mm.ni, mm.nr, mm.gxi, mm.gxr, mm.saiBody, mm.suites = nil, nil, nil, nil, nil, nil
}

// forgetDH zeroes our Diffie-Hellman private value.
func (mm *mainMode) forgetDH() {
	if mm.dh != nil {
		mm.dh.Wipe()
		mm.dh = nil
	}
}

// authInput is what the proofs cover besides SKEYID and the IDs.
func (mm *mainMode) authInput() authInput {
	p := mm.p
	return authInput{icky: p.icky[:], rcky: p.rcky[:], saiBody: mm.saiBody, gxi: mm.gxi, gxr: mm.gxr}
}

// deriveKeys derives the SA's keys from g^xy (wiped) and what the
// exchange has.
func (mm *mainMode) deriveKeys(gxy []byte) error {
	return mm.p.e.deriveKeys(mm.p, mm.authInput(), mm.ni, mm.nr, gxy)
}

// mainState is where an ISAKMP SA's Main Mode stands.
type mainState uint8

const (
	mainI1 mainState = iota + 1 // MM1 sent
	mainI2                      // MM3 sent
	mainI3                      // MM5 sent
	mainI4                      // MM6 verified: established
	mainR1                      // MM2 sent
	mainR2                      // MM4 sent
	mainR3                      // MM6 sent: established
)

var mainStateNames = [...]string{mainI1: "MAIN_I1", mainI2: "MAIN_I2", mainI3: "MAIN_I3", mainI4: "MAIN_I4",
	mainR1: "MAIN_R1", mainR2: "MAIN_R2", mainR3: "MAIN_R3"}

// String returns Pluto's name of the state (MAIN_I1 .. MAIN_R3).
func (s mainState) String() string {
	if int(s) < len(mainStateNames) && mainStateNames[s] != "" {
		return mainStateNames[s]
	}
	return fmt.Sprintf("MAIN_STATE_%d", uint8(s))
}

// MarshalText logs the state by name.
func (s mainState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// startMain sends MM1 for conn c.
func (e *Engine) startMain(c *Conn, w *waiter, attempt int) *p1 {
	p := &p1{e: e, conn: c, initiator: true, created: e.cfg.Clock.Now(), createdSeq: e.nextSeq(), attempt: attempt,
		peer: netip.AddrPortFrom(c.Remote, 500), local: netip.AddrPortFrom(c.Local, 500), qms: map[uint32]*qm{}}
	copy(p.icky[:], e.random(8))
	if w != nil {
		p.waiters = append(p.waiters, w)
	}
	mm := &mainMode{p: p, state: mainI1, suites: p1Suites(c)}
	p.phase1 = mm
	sa := p1SA(mm.suites)
	mm.saiBody = isakmp.EncodeBody(sa)
	ps := []isakmp.Payload{sa}
	for _, v := range [][]byte{isakmp.VendorNATT, isakmp.VendorNATTDraft02N, isakmp.VendorNATTDraft02, isakmp.VendorDPD} {
		ps = append(ps, &isakmp.VendorID{Data: v})
	}
	msg := isakmp.Encode(isakmp.Header{ICookie: p.icky, Version: 0x10, Exchange: isakmp.ExchMain}, ps)
	e.sas[p.key()] = p
	e.classify(p)
	var offered []string
	for _, s := range mm.suites {
		offered = append(offered, s.String())
	}
	p.say("initiating Main Mode IKE_SA %s[%s] to %v", c.Name, hex.EncodeToString(p.icky[:]), c.Remote)
	p.say("generating ID_PROT request 0 [ SA V V V V ] offering %s", strings.Join(offered, ", "))
	p.say("sending packet: from %v to %v (%d bytes)", p.local, p.peer, len(msg))
	e.request(mm, msg, [32]byte{})
	return p
}

func (p *p1) noteVendorIDs(ps []isakmp.Payload) {
	for _, v := range findAll[*isakmp.VendorID](ps) {
		switch {
		case bytesEq(v.Data, isakmp.VendorNATT):
			p.peerNATT = 1
		case bytesEq(v.Data, isakmp.VendorNATTDraft02), bytesEq(v.Data, isakmp.VendorNATTDraft02N), bytesEq(v.Data, isakmp.VendorNATTDraft03):
			if p.peerNATT == 0 {
				p.peerNATT = 2
			}
		case bytesEq(v.Data, isakmp.VendorDPD):
			p.peerDPD = true
		}
		if p.e != nil {
			p.e.log.Debug("vendor ID", "peer", p.peer, "vid", isakmp.VendorName(v.Data))
		}
	}
}

// handleMain runs one Main Mode message through p's state machine.
func (e *Engine) handleMain(p *p1, h isakmp.Header, msg []byte, sum [32]byte) {
	enc := h.Flags&isakmp.FlagEncryption != 0
	mm, _ := p.phase1.(*mainMode)
	var state mainState
	if mm != nil {
		state = mm.state
	}
	switch {
	case state == mainI1 && !enc:
		e.mainInitiatorMM2(mm, h, msg, sum)
	case state == mainI2 && !enc:
		e.mainInitiatorMM4(mm, h, msg, sum)
	case state == mainI3 && enc:
		e.mainInitiatorMM6(mm, h, msg, sum)
	case state == mainR1 && !enc:
		e.mainResponderMM3(mm, h, msg, sum)
	case state == mainR2 && enc:
		e.mainResponderMM5(mm, h, msg, sum)
	default:
		e.Stats.Malformed.Add(1)
		e.warn("unexpected Main Mode message", "peer", p.peer, "state", p.phase1.String(), "encrypted", enc)
	}
}

// mainInitiatorMM2: MM2 received (SA), send MM3 (KE, Ni, NAT-D).
func (e *Engine) mainInitiatorMM2(mm *mainMode, h isakmp.Header, msg []byte, sum [32]byte) {
	p := mm.p
	if mm.computing {
		e.Stats.Duplicate.Add(1) // another MM2 while the first one's key pair is made
		return
	}
	ps, _, ok := e.decode(p, h.Next, msg[isakmp.HeaderLen:], "MM2")
	if !ok {
		return
	}
	if n, ok := find[*isakmp.Notify](ps); ok {
		e.failP1(p, fmt.Errorf("peer answered MM1 with %s: %s", n.Kind, notifyAdvice(n.Kind, p)), false)
		return
	}
	sa, ok := find[*isakmp.SA](ps)
	if !ok {
		e.Stats.Malformed.Add(1)
		e.warn("MM2 without SA payload", "peer", p.peer)
		return
	}
	suite, err := acceptP1Reply(mm.suites, sa)
	if err != nil {
		e.failP1(p, err, false)
		return
	}
	delete(e.sas, p.key())
	p.rcky = h.RCookie
	e.sas[p.key()] = p
	p.suite = suite
	p.noteVendorIDs(ps)
	mm.x.received(sum)
	p.say("received ID_PROT response 0 [ SA V ... ]: %s, lifetime %v", suite, suite.Life)
	// Our key pair is made on a crypto worker (a modular exponentiation:
	// not on the engine goroutine); mainInitiatorMM2Keyed sends MM3.
	group, rnd := suite.Group, e.cfg.Rand
	mm.computing = true
	e.compute(func() func() {
		dh, err := ikecrypto.GenerateDH(group, rnd)
		return func() { e.mainInitiatorMM2Keyed(mm, sum, dh, err) }
	})
}

// mainInitiatorMM2Keyed sends MM3 once our key pair exists.
func (e *Engine) mainInitiatorMM2Keyed(mm *mainMode, sum [32]byte, dh *ikecrypto.DH, err error) {
	p := mm.p
	mm.computing = false
	if !e.live(mm) || mm.state != mainI1 {
		if dh != nil {
			dh.Wipe() // forgotten (failed, terminated) meanwhile
		}
		return
	}
	suite := p.suite
	if err != nil {
		e.failP1(p, fmt.Errorf("DH group %s: %w", suite.Group, err), false)
		return
	}
	mm.dh, mm.gxi, mm.ni = dh, dh.Public(), e.random(32)
	out := []isakmp.Payload{&isakmp.KE{Data: mm.gxi}, &isakmp.Nonce{Data: mm.ni}}
	out = append(out, e.natdPayloads(p)...)
	mm.state = mainI2
	p.say("generating ID_PROT request 0 [ KE No NAT-D NAT-D ]")
	e.request(mm, isakmp.Encode(p.header(isakmp.ExchMain, 0, false), out), sum)
}

// natdPayloads returns NAT-D payloads when the peer speaks NAT-T: the
// peer's address first, then ours (RFC 3947 3.2). forceencaps fakes ours.
func (e *Engine) natdPayloads(p *p1) []isakmp.Payload {
	if p.peerNATT == 0 {
		return nil
	}
	draft := p.peerNATT == 2
	remote := ikecrypto.NATD(p.suite.Hash, p.icky[:], p.rcky[:], p.peer.Addr(), p.peer.Port())
	local := ikecrypto.NATD(p.suite.Hash, p.icky[:], p.rcky[:], p.local.Addr(), p.local.Port())
	if p.conn != nil && p.conn.ForceEncaps {
		local = e.random(len(local))
	}
	return []isakmp.Payload{&isakmp.NATD{Draft: draft, Hash: remote}, &isakmp.NATD{Draft: draft, Hash: local}}
}

// checkNATD compares the peer's NAT-D payloads with what we see.
func (e *Engine) checkNATD(p *p1, ps []isakmp.Payload) {
	ds := findAll[*isakmp.NATD](ps)
	if len(ds) < 2 || p.peerNATT == 0 {
		return
	}
	us := ikecrypto.NATD(p.suite.Hash, p.icky[:], p.rcky[:], p.local.Addr(), p.local.Port())
	them := ikecrypto.NATD(p.suite.Hash, p.icky[:], p.rcky[:], p.peer.Addr(), p.peer.Port())
	p.weBehindNAT = !bytesEq(ds[0].Hash, us)
	p.peerBehindNAT = true
	for _, d := range ds[1:] {
		if bytesEq(d.Hash, them) {
			p.peerBehindNAT = false
		}
	}
	if p.conn != nil && p.conn.ForceEncaps {
		p.weBehindNAT = true
	}
	switch {
	case p.weBehindNAT:
		p.say("local host is behind NAT (or forceencaps=yes), switching to port %d", e.cfg.NATTPort)
	case p.peerBehindNAT:
		p.say("remote host is behind NAT, switching to port %d", e.cfg.NATTPort)
	}
}

// mainInitiatorMM4: MM4 received (KE, Nr, NAT-D); derive keys; send MM5 (ID, HASH_I).
func (e *Engine) mainInitiatorMM4(mm *mainMode, h isakmp.Header, msg []byte, sum [32]byte) {
	p := mm.p
	if mm.computing {
		e.Stats.Duplicate.Add(1) // another MM4 while the first one's g^xy is computed
		return
	}
	ps, _, ok := e.decode(p, h.Next, msg[isakmp.HeaderLen:], "MM4")
	if !ok {
		return
	}
	ke, ok1 := find[*isakmp.KE](ps)
	nonce, ok2 := find[*isakmp.Nonce](ps)
	if !ok1 || !ok2 || len(nonce.Data) < 8 || len(nonce.Data) > 256 {
		e.Stats.Malformed.Add(1)
		e.warn("MM4 without a valid KE and nonce", "peer", p.peer)
		return
	}
	// g^xy on a crypto worker, which owns our key pair meanwhile (the
	// engine goroutine may forget the SA, and so wipe, concurrently).
	dh, gxr, nr := mm.dh, ke.Data, nonce.Data
	mm.dh = nil
	mm.computing = true
	e.compute(func() func() {
		gxy, err := dh.SharedSecret(gxr)
		return func() { e.mainInitiatorMM4Keyed(mm, ps, dh, gxr, nr, sum, gxy, err) }
	})
}

// mainInitiatorMM4Keyed derives the keys and sends MM5 (ID, HASH_I)
// once g^xy is computed.
func (e *Engine) mainInitiatorMM4Keyed(mm *mainMode, ps []isakmp.Payload, dh *ikecrypto.DH, gxr, nr []byte, sum [32]byte, gxy []byte, err error) {
	p := mm.p
	mm.computing = false
	if !e.live(mm) || mm.state != mainI2 {
		dh.Wipe()
		wipe(gxy)
		return
	}
	if err != nil {
		// A forged or broken MM4: keep waiting for the real one.
		mm.dh = dh
		e.Stats.Malformed.Add(1)
		e.warn("MM4 with an invalid KE", "peer", p.peer, "err", err)
		return
	}
	dh.Wipe()
	mm.gxr, mm.nr = gxr, nr
	mm.x.received(sum)
	e.checkNATD(p, ps)
	if err := mm.deriveKeys(gxy); err != nil {
		e.failP1(p, err, false)
		return
	}
	if p.natDetected() {
		p.natt = true
		p.peer = netip.AddrPortFrom(p.peer.Addr(), e.cfg.NATTPort)
		p.local = netip.AddrPortFrom(p.local.Addr(), e.cfg.NATTPort)
	}
	id := idPayload(p.conn.LocalID, p.conn.Local)
	p.localIDKey = idKey(id)
	idBody := isakmp.EncodeBody(id)
	out := []isakmp.Payload{id, p.auth.prove(&p.km, mm.authInput(), true, idBody)}
	ic := e.wantInitialContact(p)
	if ic {
		out = append(out, &isakmp.Notify{DOI: doiIPsec, Protocol: isakmp.ProtoISAKMP, Kind: notifyInitialContact, SPI: append(p.icky[:], p.rcky[:]...)})
	}
	plain := isakmp.AppendPayloads(nil, out)
	m, last := e.seal(p, p.header(isakmp.ExchMain, 0, true), plain, out[0].Type(), p.km.iv)
	p.km.iv = last
	mm.state = mainI3
	if ic {
		p.say("generating ID_PROT request 0 [ ID HASH N(INITIAL_CONTACT) ]")
	} else {
		p.say("generating ID_PROT request 0 [ ID HASH ]")
	}
	p.say("sending packet: from %v to %v (%d bytes)", p.local, p.peer, len(m))
	e.request(mm, m, sum)
}

// mainInitiatorMM6: MM6 received (ID, HASH_R): phase 1 is up.
func (e *Engine) mainInitiatorMM6(mm *mainMode, h isakmp.Header, msg []byte, sum [32]byte) {
	p := mm.p
	plain, last, err := e.open(p, msg, p.km.iv)
	if err != nil {
		e.Stats.Decrypt.Add(1)
		e.warn("MM6 did not decrypt", "peer", p.peer, "err", err)
		return
	}
	ps, raws, ok := e.decode(p, h.Next, plain, "MM6")
	if !ok {
		e.Stats.AuthFailed.Add(1)
		e.failP1(p, errors.New("MM6 did not decrypt to valid payloads: the pre-shared keys most likely differ"), false)
		return
	}
	if n, ok := find[*isakmp.Notify](ps); ok && !hasPayload(ps, isakmp.PayloadHash) {
		e.failP1(p, fmt.Errorf("peer answered MM5 with %s: %s", n.Kind, notifyAdvice(n.Kind, p)), false)
		return
	}
	id, ok := find[*isakmp.ID](ps)
	err = p.auth.verify(&p.km, mm.authInput(), false, rawBody(raws, isakmp.PayloadID), ps)
	if !ok || errors.Is(err, errNoProof) {
		e.Stats.Malformed.Add(1)
		e.warn("MM6 without ID and HASH", "peer", p.peer)
		return
	}
	if err != nil {
		e.Stats.BadHash.Add(1)
		e.Stats.AuthFailed.Add(1)
		e.failP1(p, errors.New("HASH_R of the peer does not verify: the pre-shared keys (or IDs) most likely differ"), false)
		return
	}
	if !idMatches(p.conn.RemoteID, p.conn.Remote, id) {
		e.Stats.AuthFailed.Add(1)
		e.failP1(p, fmt.Errorf("peer identified as %s, but rightid expects %s", idString(id), expectedID(p.conn.RemoteID, p.conn.Remote)), false)
		return
	}
	e.authentic(p)
	p.peerID, p.peerIDPay, p.peerIDKey = idString(id), id, idKey(id)
	p.km.iv = last
	mm.x.received(sum)
	mm.x.sent = nil
	mm.x.stop()
	e.established(p)
}

// maxSAIBody bounds the SA payload of a first Main Mode message that
// the responder keeps for HASH_I. The transform cap (isakmp.MaxSATransforms)
// allows about 20 KB of ordinary transforms; what a real peer sends is a
// few hundred octets (strongSwan's longest default offer about 5 KB).
const maxSAIBody = 32 << 10

// openMain answers a first Main Mode message (no responder cookie, not
// encrypted); anything else of Main Mode needs a known SA.
func (e *Engine) openMain(h isakmp.Header, msg []byte, from, to netip.AddrPort, natt bool) bool {
	var zero [8]byte
	if h.RCookie != zero || h.Flags&isakmp.FlagEncryption != 0 {
		return false
	}
	e.mainResponderMM1(h, msg, from, to, natt)
	return true
}

// mainResponderMM1 handles a first Main Mode message: find the conn, choose a
// proposal, answer with MM2. Nothing expensive happens here: the SA
// payload is parsed once (bounded by isakmp's caps), matched against
// every conn without formatting, refusals are logged at a limited rate,
// and half-open SAs are bounded in number and in octets.
func (e *Engine) mainResponderMM1(h isakmp.Header, msg []byte, from, to netip.AddrPort, natt bool) {
	// A retransmitted MM1 for an SA we already answered (a map lookup:
	// this runs for every message of a flood), or one replayed later.
	if q := e.responders[respKey{h.ICookie, from.Addr()}]; q != nil {
		e.Stats.Duplicate.Add(1)
		if x := q.phase1.flight(); q.phase1.answeredFirst() && q.peer == from && x.sent != nil {
			e.observeRetransmit(q.phase1, true)
			e.transmit(q, x.sent)
		}
		return
	}
	// The SA payload is matched in place (selectP1Raw); the other
	// payloads (vendor IDs) are decoded.
	raws, _, err := isakmp.SplitPayloads(h.Next, msg[isakmp.HeaderLen:])
	if err != nil {
		e.Stats.Malformed.Add(1)
		e.warn("malformed IKE message", "peer", from, "message", "MM1", "err", err)
		return
	}
	var ps []isakmp.Payload
	var saiBody []byte
	for _, rp := range raws {
		if rp.Type == isakmp.PayloadSA {
			if saiBody == nil {
				saiBody = rp.Body
			}
			continue
		}
		pl, err := isakmp.Decode(rp)
		if err != nil {
			e.Stats.Malformed.Add(1)
			e.warn("malformed IKE message", "peer", from, "message", "MM1", "err", err)
			return
		}
		ps = append(ps, pl)
	}
	if saiBody == nil {
		e.Stats.Malformed.Add(1)
		e.warn("MM1 without SA payload", "peer", from)
		return
	}
	if len(saiBody) > maxSAIBody {
		e.Stats.Malformed.Add(1)
		e.warn("MM1 with an oversized SA payload", "peer", from, "octets", len(saiBody))
		return
	}
	if _, err := isakmp.WalkSA(saiBody, func(isakmp.ProposalView, isakmp.TransformView) bool { return false }); err != nil {
		e.Stats.Malformed.Add(1)
		e.warn("malformed IKE message", "peer", from, "message", "MM1", "err", fmt.Errorf("SA payload: %w", err))
		return
	}
	var conn *Conn
	var chosen isakmp.Proposal
	var suite p1Suite
	var lastErr error
	for _, name := range e.order {
		c := e.conns[name]
		if c.Remote.IsValid() && c.Remote != from.Addr() {
			continue
		}
		if to.Addr().IsValid() && !to.Addr().IsUnspecified() && c.Local.IsValid() && c.Local != to.Addr() {
			continue
		}
		if len(c.IKE) == 0 {
			continue
		}
		pr, s, err := selectP1Raw(p1Suites(c), saiBody)
		if err != nil {
			lastErr = err
			if ep, ok := err.(*errNoProposal); ok && ep.whole {
				break // the SA payload itself is unacceptable
			}
			continue
		}
		conn, chosen, suite = c, pr, s
		break
	}
	if conn == nil {
		if lastErr == nil {
			e.Stats.NoConn.Add(1)
			e.warn("no conn for IKE peer", "peer", from)
			e.sendPlainNotifyFrom(to.Addr(), h.ICookie, [8]byte{}, from, natt, notifyNoProposalChosen) // NO_PROPOSAL_CHOSEN
			return
		}
		e.Stats.NoProposal.Add(1)
		e.warn("Main Mode from peer refused", "peer", from, "err", lastErr)
		e.sendPlainNotifyFrom(to.Addr(), h.ICookie, [8]byte{}, from, natt, notifyNoProposalChosen)
		return
	}
	local := to
	if !local.Addr().IsValid() || local.Addr().IsUnspecified() {
		local = netip.AddrPortFrom(conn.Local, to.Port())
	}
	p := &p1{e: e, conn: conn, icky: h.ICookie, peer: from, local: local, natt: natt,
		created: e.cfg.Clock.Now(), createdSeq: e.nextSeq(), suite: suite, qms: map[uint32]*qm{}}
	copy(p.rcky[:], e.random(8))
	// A copy: a subslice would keep the whole message (up to 64 KB).
	mm := &mainMode{p: p, state: mainR1, saiBody: append([]byte(nil), saiBody...)}
	p.phase1 = mm
	p.noteVendorIDs(ps)
	e.admitHalfOpen(p, len(mm.saiBody))
	e.sas[p.key()] = p
	e.responders[respKey{p.icky, from.Addr()}] = p
	e.classify(p)
	out := []isakmp.Payload{&isakmp.SA{DOI: doiIPsec, Situation: sitIDOnly, Proposals: []isakmp.Proposal{chosen}}}
	if p.peerNATT != 0 {
		out = append(out, &isakmp.VendorID{Data: isakmp.VendorNATT})
	}
	out = append(out, &isakmp.VendorID{Data: isakmp.VendorDPD})
	e.log.Debug("Main Mode responder", "conn", conn.Name, "peer", from, "suite", suite.String())
	e.reply(mm, isakmp.Encode(p.header(isakmp.ExchMain, 0, false), out), sha256Sum(msg))
	// A responder negotiation that stalls is forgotten.
	e.after(mm, e.cfg.HalfOpenTimeout, func() {
		if !p.established() {
			e.log.Info("half-open ISAKMP SA timed out", "peer", p.peer, "state", mm.state)
			e.forget(p)
		}
	})
}

// mainResponderMM3: MM3 received (KE, Ni, NAT-D): the Diffie-Hellman work runs
// on a crypto worker (a reachable source needs no key to send MM3), then
// mainResponderMM3Keyed sends MM4.
func (e *Engine) mainResponderMM3(mm *mainMode, h isakmp.Header, msg []byte, sum [32]byte) {
	p := mm.p
	if mm.computing {
		// A retransmitted (or forged) MM3 while the first one's DH runs.
		e.Stats.Duplicate.Add(1)
		return
	}
	ps, _, ok := e.decode(p, h.Next, msg[isakmp.HeaderLen:], "MM3")
	if !ok {
		return
	}
	ke, ok1 := find[*isakmp.KE](ps)
	nonce, ok2 := find[*isakmp.Nonce](ps)
	if !ok1 || !ok2 || len(nonce.Data) < 8 || len(nonce.Data) > 256 {
		e.Stats.Malformed.Add(1)
		e.warn("MM3 without a valid KE and nonce", "peer", p.peer)
		return
	}
	group, rnd, gxi := p.suite.Group, e.cfg.Rand, ke.Data
	mm.computing = true
	queued := e.offload(p.peer.Addr(), func() func() {
		dh, genErr := ikecrypto.GenerateDH(group, rnd)
		var gxy []byte
		var keErr error
		if genErr == nil {
			gxy, keErr = dh.SharedSecret(gxi)
		}
		return func() { e.mainResponderMM3Keyed(mm, ps, gxi, nonce.Data, sum, dh, gxy, genErr, keErr) }
	})
	if !queued {
		mm.computing = false
		e.warn("MM3 dropped: the Diffie-Hellman workers are busy (the peer retransmits)", "peer", p.peer)
	}
}

// mainResponderMM3Keyed finishes MM3 once its Diffie-Hellman work is done.
func (e *Engine) mainResponderMM3Keyed(mm *mainMode, ps []isakmp.Payload, gxi, ni []byte, sum [32]byte, dh *ikecrypto.DH, gxy []byte, genErr, keErr error) {
	p := mm.p
	mm.computing = false
	// The private value and g^xy are not needed past this step,
	// whatever its outcome.
	defer wipe(gxy)
	if dh != nil {
		defer dh.Wipe()
	}
	if !e.live(mm) || mm.state != mainR1 {
		return // forgotten (evicted, timed out) while the worker ran
	}
	if genErr != nil {
		e.failP1(p, genErr, false)
		return
	}
	if keErr != nil {
		e.Stats.Malformed.Add(1)
		e.warn("MM3 with an invalid KE", "peer", p.peer, "err", keErr)
		return
	}
	mm.gxi, mm.ni, mm.gxr, mm.nr = gxi, ni, dh.Public(), e.random(32)
	e.checkNATD(p, ps)
	if err := mm.deriveKeys(gxy); err != nil {
		e.warn("Main Mode responder", "conn", p.conn.Name, "peer", p.peer, "err", err)
		e.forget(p)
		return
	}
	out := []isakmp.Payload{&isakmp.KE{Data: mm.gxr}, &isakmp.Nonce{Data: mm.nr}}
	out = append(out, e.natdPayloads(p)...)
	mm.state = mainR2
	e.reply(mm, isakmp.Encode(p.header(isakmp.ExchMain, 0, false), out), sum)
}

// mainResponderMM5: MM5 received (ID, HASH_I); send MM6.
func (e *Engine) mainResponderMM5(mm *mainMode, h isakmp.Header, msg []byte, sum [32]byte) {
	p := mm.p
	plain, last, err := e.open(p, msg, p.km.iv)
	if err != nil {
		e.Stats.Decrypt.Add(1)
		e.warn("MM5 did not decrypt", "peer", p.peer, "err", err)
		return
	}
	ps, raws, ok := e.decode(p, h.Next, plain, "MM5")
	if !ok {
		e.Stats.AuthFailed.Add(1)
		e.warn("Main Mode responder: MM5 did not decrypt to valid payloads: the pre-shared keys most likely differ",
			"conn", p.conn.Name, "peer", p.peer)
		e.sendPlainNotifyFrom(p.local.Addr(), p.icky, p.rcky, p.peer, p.natt, notifyPayloadMalformed)
		e.forget(p)
		return
	}
	id, ok := find[*isakmp.ID](ps)
	err = p.auth.verify(&p.km, mm.authInput(), true, rawBody(raws, isakmp.PayloadID), ps)
	if !ok || errors.Is(err, errNoProof) {
		e.Stats.Malformed.Add(1)
		e.warn("MM5 without ID and HASH", "peer", p.peer)
		return
	}
	if err != nil {
		e.Stats.BadHash.Add(1)
		e.Stats.AuthFailed.Add(1)
		e.warn("Main Mode responder: HASH_I does not verify: the pre-shared keys (or IDs) most likely differ",
			"conn", p.conn.Name, "peer", p.peer, "peer_id", idString(id))
		e.sendPlainNotifyFrom(p.local.Addr(), p.icky, p.rcky, p.peer, p.natt, notifyInvalidHashInfo)
		e.forget(p)
		return
	}
	myID := idPayload(p.conn.LocalID, p.local.Addr())
	p.peerID, p.peerIDPay, p.peerIDKey, p.localIDKey = idString(id), id, idKey(id), idKey(myID)
	if !idMatches(p.conn.RemoteID, p.peer.Addr(), id) {
		// Like Pluto's refine_host_connection: another conn between
		// the same endpoints whose rightid the peer's ID matches and
		// whose pre-shared key is the one that just authenticated it.
		if c := e.refineConn(p); c != nil {
			e.log.Info("Main Mode responder: peer ID selects another conn", "from", p.conn.Name, "to", c.Name, "peer_id", p.peerID)
			p.conn = c
		}
	}
	if !idMatches(p.conn.RemoteID, p.peer.Addr(), id) {
		e.Stats.AuthFailed.Add(1)
		e.warn("Main Mode responder: peer ID does not match rightid", "conn", p.conn.Name, "peer", p.peer,
			"peer_id", idString(id), "expected", expectedID(p.conn.RemoteID, p.peer.Addr()))
		e.sendPlainNotifyFrom(p.local.Addr(), p.icky, p.rcky, p.peer, p.natt, notifyInvalidIDInfo)
		e.forget(p)
		return
	}
	e.authentic(p)
	p.km.iv = last
	for _, n := range findAll[*isakmp.Notify](ps) {
		if uint16(n.Kind) == notifyInitialContact {
			e.initialContact(p)
		}
	}
	out := []isakmp.Payload{myID, p.auth.prove(&p.km, mm.authInput(), false, isakmp.EncodeBody(myID))}
	m, lastOut := e.seal(p, p.header(isakmp.ExchMain, 0, true), isakmp.AppendPayloads(nil, out), out[0].Type(), p.km.iv)
	p.km.iv = lastOut
	e.reply(mm, m, sum)
	mm.x.stop()
	e.established(p)
}
