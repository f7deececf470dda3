package ike

import (
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/gosec-ipsec/gosec/ike/ikecrypto"
	"github.com/gosec-ipsec/gosec/ike/isakmp"
)

// Quick Mode (RFC 2409 5.5) under an established ISAKMP SA:
//
//	initiator                               responder
//	quickInitiate: QM1 HASH(1), SA, Ni [, KE] [, IDci, IDcr] -->
//	                                        quickResponderQM1: choose,
//	                                        install inbound    (quickR1)
//	quickInitiatorQM2 <-- QM2 HASH(2), SA, Nr [, KE] [, IDci, IDcr]
//	install both, QM3 HASH(3) -->           quickResponderQM3:
//	(quickI2)                               install outbound   (quickR2)
//
// Each Quick Mode is a task of its ISAKMP SA under its message ID
// (taskmanager.go).

// quickState is where a Quick Mode stands.
type quickState uint8

const (
	quickI1 quickState = iota + 1 // QM1 sent
	quickI2                       // QM3 sent: established (initiator)
	quickR1                       // QM2 sent, inbound SA installed
	quickR2                       // QM3 verified: established (responder)
)

var quickStateNames = [...]string{quickI1: "QUICK_I1", quickI2: "QUICK_I2", quickR1: "QUICK_R1", quickR2: "QUICK_R2"}

// String returns Pluto's name of the state (QUICK_I1 .. QUICK_R2).
func (s quickState) String() string {
	if int(s) < len(quickStateNames) && quickStateNames[s] != "" {
		return quickStateNames[s]
	}
	return fmt.Sprintf("QUICK_STATE_%d", uint8(s))
}

// MarshalText logs the state by name.
func (s quickState) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// qm is one Quick Mode exchange under a phase-1 SA.
type qm struct {
	p         *p1
	conn      *Conn
	initiator bool
	state     quickState
	iv        []byte
	suites    []p2Suite
	suite     p2Suite
	inSPI     uint32
	// spiProto is the protocol inSPI was allocated for: an initiator
	// allocates before QM2 chooses a suite (suite is zero until then),
	// and the SAD reserves SPIs per protocol.
	spiProto Proto
	outSPI   uint32
	encap    uint16
	// ni, nr, dh and gqm (the PFS g^xy) live until the child's keys are
	// derived and the HASHes that cover the nonces are done
	// (forgetSecrets); inKeys and outKeys are the KEYMAT of each
	// direction, which the ChildSA's configurations slice, zeroed once
	// the data plane has them (install) or the exchange fails.
	ni, nr          []byte
	dh              *ikecrypto.DH
	gqm             []byte
	inKeys, outKeys []byte
	// computing: a Diffie-Hellman step of q is on a crypto worker.
	computing bool
	localTS   netip.Prefix
	remoteTS  netip.Prefix
	// startSeq is when the exchange began (Engine.seq); outInstalled is
	// set once the outbound SA is installed, which happens only once.
	startSeq uint64
	started  time.Time // for the negotiation latency metric
	// exchanged is when the initiator sent QM3, the end of the exchange
	// in the latency metric: the OutboundDelay after it is a wait, not
	// the negotiation (zero: it ends when the child is up).
	exchanged    time.Time
	outInstalled bool
	// proto, lport and rport are the negotiated IDci/IDcr protocol and
	// ports (0: any), installed with the SAs.
	proto        uint8
	lport, rport uint16
	idci         *isakmp.ID
	idcr         *isakmp.ID
	// x is the exchange in flight (taskmanager.go).
	x    exchange
	done func(error)
	// releaseSlot gives the Quick Mode slot (admitQuick) back before
	// done, once QM3 is sent; nil for responders.
	releaseSlot func()
	w           *waiter // the `gosec up` that started it, if any
	child       *ChildSA
	installed   bool
}

func (q *qm) finish(err error) {
	if q.done != nil {
		f := q.done
		q.done = nil
		f(err)
	}
}

// selectorPairs lists the (local, remote) traffic selector pairs of c.
func selectorPairs(c *Conn) [][2]netip.Prefix {
	host := func(a netip.Addr) []netip.Prefix { return []netip.Prefix{netip.PrefixFrom(a, 32)} }
	ls, rs := c.LocalSubnets, c.RemoteSubnets
	if len(ls) == 0 || c.Mode == ModeTransport {
		ls = host(c.Local)
	}
	if len(rs) == 0 || c.Mode == ModeTransport {
		rs = host(c.Remote)
	}
	var out [][2]netip.Prefix
	for _, l := range ls {
		for _, r := range rs {
			out = append(out, [2]netip.Prefix{l, r})
		}
	}
	return out
}

// startQuick negotiates every selector pair of p's conn; w hears the
// outcome once all of them are done.
func (e *Engine) startQuick(p *p1, w *waiter) { e.startQuickFor(p, p.conn, w) }

// startQuickFor negotiates every selector pair of conn c under p.
func (e *Engine) startQuickFor(p *p1, c *Conn, w *waiter) {
	pairs := selectorPairs(c)
	left := len(pairs)
	var first error
	for _, pair := range pairs {
		e.quickInitiate(p, c, pair[0], pair[1], func(err error) {
			if err != nil && first == nil {
				first = err
			}
			left--
			if left == 0 {
				if first == nil {
					w.say("connection '%s' established successfully", c.Name)
				}
				w.finish(first)
			}
		}, w)
	}
}

func (e *Engine) encapMode(p *p1, mode Mode) uint16 {
	switch {
	case p.natt && p.natDetected() && mode == ModeTransport:
		if p.peerNATT == 2 {
			return encapUDPTransportDft
		}
		return encapUDPTransport
	case p.natt && p.natDetected():
		if p.peerNATT == 2 {
			return encapUDPTunnelDraft
		}
		return encapUDPTunnel
	case mode == ModeTransport:
		return encapTransport
	}
	return encapTunnel
}

// quickInitiate sends QM1, once one of p's Quick Mode slots is free
// (admitQuick, share.go).
func (e *Engine) quickInitiate(p *p1, c *Conn, lts, rts netip.Prefix, done func(error), w *waiter) {
	orig := done
	done, release, ok := e.admitQuick(p, c, [2]netip.Prefix{lts, rts}, func() { e.quickInitiate(p, c, lts, rts, orig, w) }, orig)
	if !ok {
		return
	}
	q := &qm{p: p, conn: c, initiator: true, state: quickI1, suites: p2Suites(c), localTS: lts, remoteTS: rts, done: done, releaseSlot: release, w: w, startSeq: e.nextSeq(), started: e.cfg.Clock.Now()}
	q.x.msgID = e.randomMsgID(p)
	bs := p.km.cbc.BlockSize()
	q.iv = ikecrypto.PhaseIV(p.suite.Hash, p.km.iv, q.x.msgID, bs)
	proto := q.suites[0].Proto
	spi, err := e.cfg.Installer.AllocSPI(proto)
	if err != nil {
		q.finish(fmt.Errorf("conn %s: SPI: %w", c.Name, err))
		return
	}
	q.inSPI, q.spiProto = spi, proto
	q.encap = e.encapMode(p, c.Mode)
	q.ni = e.random(32)
	g := q.suites[0].Group
	if g == 0 {
		e.quickInitiateSend(q)
		return
	}
	// The PFS key pair is made on a crypto worker; meanwhile the task is
	// registered under its message ID (a trap firing again sees it
	// under way), then quickInitiateSend sends QM1.
	p.qms[q.x.msgID] = q
	q.computing = true
	rnd := e.cfg.Rand
	e.compute(func() func() {
		dh, err := ikecrypto.GenerateDH(g, rnd)
		return func() {
			q.computing = false
			if !e.live(q) {
				if dh != nil {
					dh.Wipe() // failed or forgotten meanwhile (the SPI went with it)
				}
				return
			}
			if err != nil {
				delete(p.qms, q.x.msgID)
				e.releaseSPI(q)
				q.wipeAll()
				q.finish(fmt.Errorf("conn %s: PFS group %s: %w", c.Name, g, err))
				return
			}
			q.dh = dh
			e.quickInitiateSend(q)
		}
	})
}

// quickInitiateSend builds and sends QM1 (HASH(1), SA, Ni [, KE] [,
// IDci, IDcr] [, NAT-OA]).
func (e *Engine) quickInitiateSend(q *qm) {
	p, c, w, lts, rts := q.p, q.conn, q.w, q.localTS, q.remoteTS
	sa := p2SA(q.suites, q.inSPI, q.encap)
	ps := []isakmp.Payload{&isakmp.Hash{Data: make([]byte, p.suite.Hash.Size())}, sa, &isakmp.Nonce{Data: q.ni}}
	if q.dh != nil {
		ps = append(ps, &isakmp.KE{Data: q.dh.Public()})
	}
	q.idci, q.idcr = tsID(lts, c.Proto, c.LocalPort), tsID(rts, c.Proto, c.RemotePort)
	q.proto, q.lport, q.rport = c.Proto, c.LocalPort, c.RemotePort
	ps = append(ps, q.idci, q.idcr)
	if c.Mode == ModeTransport && encapUDP(q.encap) {
		draft := p.peerNATT == 2
		la, ra := p.local.Addr().As4(), p.peer.Addr().As4()
		ps = append(ps, &isakmp.NATOA{Draft: draft, IDType: idIPv4Addr, Addr: la[:]}, &isakmp.NATOA{Draft: draft, IDType: idIPv4Addr, Addr: ra[:]})
	}
	b := isakmp.AppendPayloads(nil, ps)
	hl := p.suite.Hash.Size()
	copy(b[4:4+hl], ikecrypto.QMHash1(p.suite.Hash, p.km.a, q.x.msgID, b[4+hl:]))
	msg, last := e.seal(p, p.header(isakmp.ExchQuick, q.x.msgID, true), b, isakmp.PayloadHash, q.iv)
	q.iv = last
	p.qms[q.x.msgID] = q
	if w != nil {
		wq := w
		inner := q.done
		q.done = func(err error) {
			if err != nil {
				wq.say("%v", err)
			}
			inner(err)
		}
	}
	q.say(w, "generating QUICK_MODE request %d [ HASH SA No%s ID ID ] for %v === %v", q.x.msgID, keTag(q.dh != nil), lts, rts)
	e.request(q, msg, [32]byte{})
}

func keTag(ke bool) string {
	if ke {
		return " KE"
	}
	return ""
}

func (q *qm) say(w *waiter, format string, args ...any) {
	if w != nil {
		w.say(format, args...)
	}
	q.p.say(format, args...)
}

func (e *Engine) failQM(q *qm, err error) {
	e.Stats.Failed.Add(1)
	e.log.Warn("Quick Mode failed", "conn", q.conn.Name, "peer", q.p.peer, "msgid", q.x.msgID, "state", q.state, "err", err)
	e.observe(ExchangeEvent{Peer: q.p.peer.Addr(), Conn: q.conn.Name, Kind: "quick", Result: "failed"})
	q.x.stop()
	if q.inSPI != 0 && !q.installed {
		e.releaseSPI(q)
	} else if q.child != nil && q.installed {
		e.cfg.Installer.Remove(q.child)
	}
	delete(q.p.qms, q.x.msgID)
	q.wipeAll()
	q.finish(err)
}

// releaseSPI frees q's inbound SPI, reserved but never installed, under
// the protocol it was reserved for.
func (e *Engine) releaseSPI(q *qm) {
	e.cfg.Installer.ReleaseSPI(q.spiProto, q.inSPI)
}

// qmBody decrypts and decodes a Quick Mode message and checks that HASH
// comes first; rest is everything after the HASH payload.
func (e *Engine) qmBody(q *qm, h isakmp.Header, msg []byte) (ps []isakmp.Payload, hash []byte, rest []byte, last []byte, ok bool) {
	plain, last, err := e.open(q.p, msg, q.iv)
	if err != nil {
		e.Stats.Decrypt.Add(1)
		e.warn("Quick Mode message did not decrypt", "peer", q.p.peer, "err", err)
		return nil, nil, nil, nil, false
	}
	ps, raws, good := e.decode(q.p, h.Next, plain, "Quick Mode")
	if !good {
		return nil, nil, nil, nil, false
	}
	if len(raws) == 0 || raws[0].Type != isakmp.PayloadHash {
		e.Stats.Malformed.Add(1)
		e.warn("Quick Mode message does not start with HASH", "peer", q.p.peer)
		return nil, nil, nil, nil, false
	}
	lastRaw := raws[len(raws)-1]
	end := lastRaw.Off + 4 + len(lastRaw.Body)
	start := raws[0].Off + 4 + len(raws[0].Body)
	return ps, raws[0].Body, plain[start:end], last, true
}

// handleQuick runs a Quick Mode message through its exchange.
func (e *Engine) handleQuick(p *p1, h isakmp.Header, msg []byte, sum [32]byte) {
	if !p.established() || h.Flags&isakmp.FlagEncryption == 0 || h.MessageID == 0 {
		e.Stats.Malformed.Add(1)
		e.warn("Quick Mode message out of place", "peer", p.peer, "state", p.phase1.String())
		return
	}
	q := p.qms[h.MessageID]
	if q != nil && e.duplicate(q, sum) {
		return
	}
	switch {
	case q == nil:
		e.quickResponderQM1(p, h, msg, sum)
	case q.state == quickI1:
		e.quickInitiatorQM2(q, h, msg, sum)
	case q.state == quickR1:
		e.quickResponderQM3(q, h, msg, sum)
	default:
		e.Stats.Malformed.Add(1)
		e.warn("unexpected Quick Mode message", "peer", p.peer, "state", q.state)
	}
}

// childSA derives both SAs of the child from KEYMAT and describes them
// in ike's own terms (ChildSA: algorithms, keys per direction).
func (e *Engine) childSA(q *qm) (*ChildSA, error) {
	p, c, s := q.p, q.conn, q.suite
	encLen, intLen := s.keyLens()
	n := encLen + intLen
	proto := uint8(isakmp.ProtoESP)
	if s.Proto == ProtoAH {
		proto = uint8(isakmp.ProtoAH)
	}
	var ni, nr = q.ni, q.nr
	in := ikecrypto.Keymat(p.suite.Hash, p.km.d, q.gqm, proto, be32(q.inSPI), ni, nr, n)
	out := ikecrypto.Keymat(p.suite.Hash, p.km.d, q.gqm, proto, be32(q.outSPI), ni, nr, n)
	q.inKeys, q.outKeys = in, out
	// g^xy of PFS served only these.
	wipe(q.gqm)
	q.gqm = nil
	ch := &ChildSA{Conn: c.Name, Proto: s.Proto, Mode: c.Mode, InSPI: q.inSPI, OutSPI: q.outSPI,
		Local: p.local.Addr(), Remote: p.peer.Addr(), LocalTS: q.localTS, RemoteTS: q.remoteTS,
		Proto8: q.proto, LocalPort: q.lport, RemotePort: q.rport, Lifetime: s.Life, LifeBytes: s.LifeKB * 1024,
		LifePackets: c.LifePackets, ReplayWindow: c.ReplayWindow, Suite: s.String()}
	if c.LifeBytes > 0 && c.LifeBytes < ch.LifeBytes {
		ch.LifeBytes = c.LifeBytes // exact, not rounded up to kilobytes
	}
	ch.RekeyAfter = e.rekeyTimeFor(c, s.Life, q.initiator)
	if ch.RekeyAfter > 0 || (s.Life <= 0 && c.Rekey && (q.initiator || c.Remote.IsValid())) {
		ch.SoftBytes = e.softVolume(ch.LifeBytes, c.MarginBytes, c.RekeyFuzz, q.initiator)
		ch.SoftPackets = e.softVolume(ch.LifePackets, c.MarginPackets, c.RekeyFuzz, q.initiator)
	}
	if encapUDP(q.encap) {
		ch.Encap = &Encap{SrcPort: e.cfg.NATTPort, DstPort: p.peer.Port()}
	}
	ch.Integ = s.Integ
	if s.Proto == ProtoAH {
		ch.AHAlign8 = c.AHAlign8
	} else {
		ch.Cipher = Cipher{Encr: s.Encr, KeyBits: s.KeyBits}
	}
	ch.In = ChildKeys{Enc: in[:encLen:encLen], Integ: in[encLen:n:n]}
	ch.Out = ChildKeys{Enc: out[:encLen:encLen], Integ: out[encLen:n:n]}
	return ch, nil
}

// quickInitiatorQM2: QM2 received; install both SAs; send QM3.
func (e *Engine) quickInitiatorQM2(q *qm, h isakmp.Header, msg []byte, sum [32]byte) {
	if q.computing {
		e.Stats.Duplicate.Add(1) // QM1 not sent yet, or QM2's g^xy under way
		return
	}
	p := q.p
	ps, hash, rest, last, ok := e.qmBody(q, h, msg)
	if !ok {
		return
	}
	if !hashEqual(ikecrypto.QMHash2(p.suite.Hash, p.km.a, q.x.msgID, q.ni, rest), hash) {
		e.Stats.BadHash.Add(1)
		e.warn("QM2 HASH(2) does not verify", "peer", p.peer, "msgid", q.x.msgID)
		return
	}
	e.authentic(p)
	sa, ok1 := find[*isakmp.SA](ps)
	nonce, ok2 := find[*isakmp.Nonce](ps)
	if !ok1 || !ok2 {
		e.Stats.Malformed.Add(1)
		e.warn("QM2 without SA and nonce", "peer", p.peer)
		return
	}
	suite, outSPI, encap, err := acceptP2Reply(q.suites, q.conn.Mode, sa)
	if err != nil {
		e.failQM(q, fmt.Errorf("conn %s: %w", q.conn.Name, err))
		return
	}
	q.suite, q.outSPI, q.nr = suite, outSPI, nonce.Data
	if suite.lifeNote != "" {
		e.log.Warn("Quick Mode: the responder's lifetime was bounded", "conn", q.conn.Name, "peer", p.peer, "why", suite.lifeNote)
	}
	if encapUDP(encap) != encapUDP(q.encap) {
		e.failQM(q, fmt.Errorf("conn %s: the responder chose %s, we proposed %s", q.conn.Name, encapName(encap), encapName(q.encap)))
		return
	}
	if q.dh != nil {
		ke, ok := find[*isakmp.KE](ps)
		if !ok {
			e.failQM(q, fmt.Errorf("conn %s: the responder sent no KE although PFS (%s) was proposed", q.conn.Name, suite.Group))
			return
		}
		// g^xy on a crypto worker, which owns the key pair meanwhile.
		dh, gy := q.dh, ke.Data
		q.dh, q.computing = nil, true
		e.compute(func() func() {
			gqm, err := dh.SharedSecret(gy)
			dh.Wipe()
			return func() {
				q.computing = false
				if !e.live(q) || q.state != quickI1 {
					wipe(gqm)
					return
				}
				if err != nil {
					e.failQM(q, fmt.Errorf("conn %s: PFS KE: %w", q.conn.Name, err))
					return
				}
				q.gqm = gqm
				e.quickInitiatorQM2Keyed(q, ps, last, sum)
			}
		})
		return
	}
	e.quickInitiatorQM2Keyed(q, ps, last, sum)
}

// quickInitiatorQM2Keyed installs the child and sends QM3 once any PFS
// g^xy is known.
func (e *Engine) quickInitiatorQM2Keyed(q *qm, ps []isakmp.Payload, last []byte, sum [32]byte) {
	p := q.p
	ids := findAll[*isakmp.ID](ps)
	if len(ids) == 2 && (!sameID(ids[0], q.idci) || !sameID(ids[1], q.idcr)) {
		e.failQM(q, fmt.Errorf("conn %s: the responder changed the traffic selectors to %s === %s", q.conn.Name, idString(ids[0]), idString(ids[1])))
		return
	}
	ch, err := e.childSA(q)
	if err != nil {
		e.failQM(q, err)
		return
	}
	q.iv = last
	q.x.received(sum)
	q.x.stop()
	b := isakmp.AppendPayloads(nil, []isakmp.Payload{&isakmp.Hash{Data: ikecrypto.QMHash3(p.suite.Hash, p.km.a, q.x.msgID, q.ni, q.nr)}})
	m, lastOut := e.seal(p, p.header(isakmp.ExchQuick, q.x.msgID, true), b, isakmp.PayloadHash, q.iv)
	q.iv = lastOut
	q.forgetSecrets() // QM3 is built; a duplicate QM2 gets it again as it is
	if e.cfg.OutboundDelay <= 0 {
		if err := e.install(q, ch, true); err != nil {
			e.failQM(q, err)
			return
		}
		e.reply(q, m, sum)
		q.state = quickI2
		e.childUp(q, ch)
		return
	}
	// Our inbound SA before QM3 (the responder may send on the new pair
	// as soon as QM3 arrives), then QM3, then, once the responder has had
	// OutboundDelay to install its inbound SA, our outbound SA: packets
	// sent on it earlier would meet the responder's larval SA.
	if err := e.install(q, ch, false); err != nil {
		e.failQM(q, err)
		return
	}
	e.reply(q, m, sum)
	q.exchanged = e.cfg.Clock.Now()
	q.state = quickI2
	if q.releaseSlot != nil {
		q.releaseSlot() // the responder has nothing more to answer
	}
	// forget and failQM stop this timer and remove the inbound SA.
	e.after(q, e.cfg.OutboundDelay, func() {
		if err := e.install(q, ch, true); err != nil {
			e.failQM(q, err)
			return
		}
		e.childUp(q, ch)
	})
}

// outPending reports whether q is an initiator's Quick Mode that has sent
// QM3 and waits for OutboundDelay before installing its outbound SA.
func (q *qm) outPending() bool {
	return q.initiator && q.state == quickI2 && q.installed && !q.outInstalled
}

func sameID(a, b *isakmp.ID) bool {
	return a.IDType == b.IDType && a.Protocol == b.Protocol && a.Port == b.Port && string(a.Data) == string(b.Data)
}

// forgetSecrets wipes the nonces, the PFS key pair and g^xy.
func (q *qm) forgetSecrets() {
	wipe(q.ni)
	wipe(q.nr)
	wipe(q.gqm)
	if q.dh != nil {
		q.dh.Wipe()
	}
	q.ni, q.nr, q.gqm, q.dh = nil, nil, nil, nil
}

// wipeAll forgets every secret of q (it failed, or its ISAKMP SA went).
func (q *qm) wipeAll() {
	q.forgetSecrets()
	wipe(q.inKeys)
	wipe(q.outKeys)
	q.inKeys, q.outKeys = nil, nil
}

// install hands the child to the data plane: the inbound SA, and with
// both also the outbound SA, policies and routes.
func (e *Engine) install(q *qm, ch *ChildSA, both bool) error {
	q.child = ch
	if !q.installed {
		if err := e.cfg.Installer.InstallInbound(ch); err != nil {
			return fmt.Errorf("conn %s: installing inbound SA: %w", ch.Conn, err)
		}
		q.installed = true
		wipe(q.inKeys) // the data plane keyed its own copy (Installer)
	}
	if both && !q.outInstalled {
		if err := e.cfg.Installer.InstallOutbound(ch); err != nil {
			return fmt.Errorf("conn %s: installing outbound SA: %w", ch.Conn, err)
		}
		q.outInstalled = true
		wipe(q.outKeys)
	}
	return nil
}

// childUp records an established child.
func (e *Engine) childUp(q *qm, ch *ChildSA) {
	e.Stats.ChildrenInstalled.Add(1)
	nc := &child{sa: ch, p: q.p, established: e.cfg.Clock.Now(), initiator: q.initiator, group: groupName(q.suite.Group), conn: q.conn,
		identity: q.p.identity(), seq: e.nextSeq()}
	e.observeChild(q, ch)
	// The pair this one replaces (a rekey, ours or the peer's) goes after
	// a short grace period, so that packets in flight still open.
	// Only pairs installed before this exchange began are replaced: when
	// both peers rekey (or initiate) at once, neither new pair replaces
	// the other, so no side deletes the pair the other sends on; both
	// live until their expiry, or until the next rekey replaces both.
	for _, old := range e.children[ch.Conn] {
		if old.sa.LocalTS == ch.LocalTS && old.sa.RemoteTS == ch.RemoteTS && !old.rekeyed && old.seq < q.startSeq {
			old.rekeyed = true
			o := old
			o.timers = append(o.timers, e.cfg.Clock.AfterFunc(rekeyGrace, func() { e.post(func() { e.deleteChild(o, "replaced by a newer SA") }) }))
		}
	}
	e.children[ch.Conn] = append(e.children[ch.Conn], nc)
	e.armChild(nc)
	encap := ""
	if ch.Encap != nil {
		encap = fmt.Sprintf(", UDP-encapsulated %d->%d", ch.Encap.SrcPort, ch.Encap.DstPort)
	}
	e.log.Info("IPsec SA established", "conn", ch.Conn, "in_spi", fmt.Sprintf("%08x", ch.InSPI), "out_spi", fmt.Sprintf("%08x", ch.OutSPI),
		"suite", ch.Suite, "mode", ch.Mode.String(), "local_ts", ch.LocalTS, "remote_ts", ch.RemoteTS, "udp", ch.Encap != nil)
	q.say(q.w, "CHILD_SA %s{%d} established with SPIs %08x_i %08x_o and TS %v === %v (%s %s%s)", ch.Conn, q.x.msgID, ch.InSPI, ch.OutSPI,
		ch.LocalTS, ch.RemoteTS, ch.Suite, ch.Mode, encap)
	delete(q.p.qms, q.x.msgID)
	// Keep the exchange reachable for duplicate QM2/QM3 detection,
	// for a while (retireQuick).
	q.p.qms[q.x.msgID] = q
	e.retireQuick(q)
	q.finish(nil)
}

// connsForTS lists the conns that ISAKMP SA p authorizes (same
// endpoints, identities and key: see authorizes) whose selectors contain
// the proposed ones (p's own conn first).
func (e *Engine) connsForTS(p *p1, remote, local netip.Prefix, proto uint8, rport, lport uint16) []*Conn {
	// The selectors are checked before the authorization (a hash of the
	// key): among thousands of conns, most fail the first, cheap test.
	try := func(c *Conn) bool {
		if !protoPortsFit(c, proto, rport, lport) || !selectorsFit(c, p.peer.Addr(), local, remote) {
			return false
		}
		return e.authorizes(p, c)
	}
	var out []*Conn
	if try(p.conn) {
		out = append(out, p.conn)
	}
	for _, n := range e.order {
		c := e.conns[n]
		if c != p.conn && len(c.IKE) > 0 && try(c) {
			out = append(out, c)
		}
	}
	return out
}

// selectorsFit reports whether one of c's selector pairs (with peer as
// the remote end of a right=%any conn) contains local and remote.
func selectorsFit(c *Conn, peer netip.Addr, local, remote netip.Prefix) bool {
	if c.Mode != ModeTransport && len(c.LocalSubnets) > 0 && len(c.RemoteSubnets) > 0 {
		// selectorPairs without building the list
		return slices.ContainsFunc(c.LocalSubnets, func(l netip.Prefix) bool { return contains(l, local) }) &&
			slices.ContainsFunc(c.RemoteSubnets, func(r netip.Prefix) bool { return contains(r, remote) })
	}
	for _, pair := range selectorPairs(withRemote(c, peer)) {
		if contains(pair[0], local) && contains(pair[1], remote) {
			return true
		}
	}
	return false
}

// withRemote fills in the peer's address for a right=%any conn.
// protoPortsFit reports whether the protocol and ports a peer proposed
// in IDci/IDcr lie within conn c's leftprotoport/rightprotoport (0 in c
// means any). A narrower proposal is accepted and installed as proposed,
// as strongSwan narrows; a wider one is refused.
func protoPortsFit(c *Conn, proto uint8, rport, lport uint16) bool {
	if c.Proto != 0 && c.Proto != proto {
		return false
	}
	if c.RemotePort != 0 && c.RemotePort != rport {
		return false
	}
	return c.LocalPort == 0 || c.LocalPort == lport
}

func withRemote(c *Conn, peer netip.Addr) *Conn {
	if c.Remote.IsValid() {
		return c
	}
	cc := *c
	cc.Remote = peer
	return &cc
}

func contains(outer, inner netip.Prefix) bool {
	return outer.Bits() <= inner.Bits() && outer.Contains(inner.Addr())
}

// quickResponderQM1: QM1 received; choose; install inbound; send QM2.
func (e *Engine) quickResponderQM1(p *p1, h isakmp.Header, msg []byte, sum [32]byte) {
	bs := p.km.cbc.BlockSize()
	q := &qm{p: p, x: exchange{msgID: h.MessageID}, state: quickR1, iv: ikecrypto.PhaseIV(p.suite.Hash, p.km.iv, h.MessageID, bs), startSeq: e.nextSeq(), started: e.cfg.Clock.Now()}
	// Secrets of a QM1 that is refused or fails go with it.
	registered := false
	defer func() {
		if !registered {
			q.wipeAll()
		}
	}()
	ps, hash, rest, last, ok := e.qmBody(q, h, msg)
	if !ok {
		return
	}
	if !hashEqual(ikecrypto.QMHash1(p.suite.Hash, p.km.a, q.x.msgID, rest), hash) {
		e.Stats.BadHash.Add(1)
		e.warn("QM1 HASH(1) does not verify", "peer", p.peer, "msgid", q.x.msgID)
		return
	}
	e.authentic(p)
	q.iv = last
	q.x.received(sum)
	sa, ok1 := find[*isakmp.SA](ps)
	nonce, ok2 := find[*isakmp.Nonce](ps)
	if !ok1 || !ok2 || len(nonce.Data) < 8 {
		e.Stats.Malformed.Add(1)
		e.warn("QM1 without SA and nonce", "peer", p.peer)
		return
	}
	q.ni = nonce.Data
	// Traffic selectors: IDci is the initiator's side (our remote).
	ids := findAll[*isakmp.ID](ps)
	remoteTS, localTS := netip.PrefixFrom(p.peer.Addr(), 32), netip.PrefixFrom(p.local.Addr(), 32)
	var proto uint8
	var rport, lport uint16
	if len(ids) == 2 {
		var ok1, ok2 bool
		remoteTS, ok1 = idPrefix(ids[0])
		localTS, ok2 = idPrefix(ids[1])
		if !ok1 || !ok2 {
			e.sendNotify(p, 18, nil)
			e.log.Warn("Quick Mode refused: unsupported client ID types", "peer", p.peer, "idci", idString(ids[0]), "idcr", idString(ids[1]))
			return
		}
		q.idci, q.idcr = ids[0], ids[1]
		proto, rport, lport = ids[0].Protocol, ids[0].Port, ids[1].Port
		if ids[0].Protocol != ids[1].Protocol || (proto == 0 && (rport != 0 || lport != 0)) {
			e.Stats.NoProposal.Add(1)
			e.sendNotify(p, notifyInvalidIDInfo, nil)
			e.log.Warn("Quick Mode refused (INVALID_ID_INFORMATION): IDci and IDcr protocols differ, or ports without a protocol",
				"peer", p.peer, "idci", idProtoPort(ids[0]), "idcr", idProtoPort(ids[1]))
			return
		}
	} else if len(ids) != 0 {
		e.Stats.Malformed.Add(1)
		e.warn("QM1 with one client ID", "peer", p.peer)
		return
	}
	cands := e.connsForTS(p, remoteTS, localTS, proto, rport, lport)
	if len(cands) == 0 {
		e.Stats.NoProposal.Add(1)
		var ours []string
		for _, pair := range selectorPairs(withRemote(p.conn, p.peer.Addr())) {
			ours = append(ours, fmt.Sprintf("%v === %v", pair[0], pair[1]))
		}
		e.log.Warn("Quick Mode refused (INVALID_ID_INFORMATION): the peer's traffic selectors match no conn its ISAKMP SA authorizes", "peer_id", p.peerID,
			"conn", p.conn.Name, "peer", p.peer, "proposed", fmt.Sprintf("%v === %v (ours: local %v, remote %v), protocol %d, ports %d/%d", remoteTS, localTS, localTS, remoteTS, proto, rport, lport),
			"configured", ours)
		e.sendNotify(p, 18, nil)
		return
	}
	q.localTS, q.remoteTS = localTS, remoteTS
	q.proto, q.lport, q.rport = proto, lport, rport
	// Like Pluto, switch to another conn with this peer whose selectors
	// and proposals fit when the phase-1 conn's do not.
	var c *Conn
	var chosen isakmp.Proposal
	var suite p2Suite
	var outSPI uint32
	var encap uint16
	var firstErr error
	for _, cand := range cands {
		ch, s, spi, en, err := selectP2(p2ResponderSuites(cand), cand.Mode, sa)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		c, chosen, suite, outSPI, encap = cand, ch, s, spi, en
		break
	}
	if c == nil {
		e.Stats.NoProposal.Add(1)
		e.log.Warn("Quick Mode refused (NO_PROPOSAL_CHOSEN)", "conn", cands[0].Name, "peer", p.peer, "err", firstErr)
		e.sendNotify(p, 14, nil)
		return
	}
	q.conn = c
	q.suites = p2Suites(c)
	q.suite, q.outSPI, q.encap = suite, outSPI, encap
	if suite.lifeNote != "" {
		e.log.Warn("Quick Mode: the peer's lifetime was bounded", "conn", c.Name, "peer", p.peer, "why", suite.lifeNote)
	}
	var ke *isakmp.KE
	if suite.Group != 0 {
		peerKE, ok := find[*isakmp.KE](ps)
		if !ok {
			e.log.Warn("Quick Mode refused: PFS chosen but no KE payload", "conn", c.Name, "peer", p.peer)
			e.sendNotify(p, 14, nil)
			return
		}
		// The PFS key pair and g^xy on a crypto worker; meanwhile the
		// task is registered, so a retransmitted QM1 is a duplicate.
		group, rnd, gx := suite.Group, e.cfg.Rand, peerKE.Data
		p.qms[q.x.msgID] = q
		registered, q.computing = true, true
		e.compute(func() func() {
			dh, genErr := ikecrypto.GenerateDH(group, rnd)
			var gqm, pub []byte
			var keErr error
			if genErr == nil {
				gqm, keErr = dh.SharedSecret(gx)
				pub = dh.Public()
				dh.Wipe()
			}
			return func() {
				q.computing = false
				if !e.live(q) {
					wipe(gqm)
					q.wipeAll()
					return
				}
				if genErr != nil || keErr != nil {
					delete(p.qms, q.x.msgID)
					wipe(gqm)
					q.wipeAll()
					if genErr != nil {
						e.sendNotify(p, 14, nil)
						return
					}
					e.Stats.Malformed.Add(1)
					e.warn("QM1 with an invalid KE", "peer", p.peer, "err", keErr)
					e.sendNotify(p, 17, nil) // INVALID_KEY_INFORMATION
					return
				}
				q.gqm = gqm
				if !e.quickResponderQM1Send(q, chosen, &isakmp.KE{Data: pub}) {
					delete(p.qms, q.x.msgID)
					q.wipeAll()
				}
			}
		})
		return
	}
	registered = e.quickResponderQM1Send(q, chosen, ke)
}

// quickResponderQM1Send allocates the inbound SPI, derives and installs
// the inbound SA and sends QM2 (HASH(2), SA, Nr [, KE] [, IDci, IDcr]);
// false if it could not.
func (e *Engine) quickResponderQM1Send(q *qm, chosen isakmp.Proposal, ke *isakmp.KE) bool {
	p, c, suite := q.p, q.conn, q.suite
	spi, err := e.cfg.Installer.AllocSPI(suite.Proto)
	if err != nil {
		e.log.Error("Quick Mode: SPI", "err", err)
		return false
	}
	q.inSPI, q.spiProto = spi, suite.Proto
	q.nr = e.random(32)
	chosen.SPI = be32(spi)
	out := []isakmp.Payload{&isakmp.Hash{Data: make([]byte, p.suite.Hash.Size())},
		&isakmp.SA{DOI: doiIPsec, Situation: sitIDOnly, Proposals: []isakmp.Proposal{chosen}}, &isakmp.Nonce{Data: q.nr}}
	if ke != nil {
		out = append(out, ke)
	}
	if q.idci != nil {
		out = append(out, q.idci, q.idcr)
	}
	ch, err := e.childSA(q)
	if err != nil {
		e.failQM(q, err)
		return false
	}
	if err := e.install(q, ch, false); err != nil {
		e.log.Error("Quick Mode responder", "conn", c.Name, "err", err)
		e.cfg.Installer.ReleaseSPI(suite.Proto, spi)
		return false
	}
	b := isakmp.AppendPayloads(nil, out)
	hl := p.suite.Hash.Size()
	copy(b[4:4+hl], ikecrypto.QMHash2(p.suite.Hash, p.km.a, q.x.msgID, q.ni, b[4+hl:]))
	m, lastOut := e.seal(p, p.header(isakmp.ExchQuick, q.x.msgID, true), b, isakmp.PayloadHash, q.iv)
	q.iv = lastOut
	p.qms[q.x.msgID] = q
	e.request(q, m, q.x.recv)
	return true
}

// quickResponderQM3: QM3 received; install the outbound SA.
func (e *Engine) quickResponderQM3(q *qm, h isakmp.Header, msg []byte, sum [32]byte) {
	if q.computing {
		e.Stats.Duplicate.Add(1) // QM2 is not sent yet
		return
	}
	p := q.p
	plain, _, err := e.open(p, msg, q.iv)
	if err != nil {
		e.Stats.Decrypt.Add(1)
		return
	}
	_, raws, ok := e.decode(p, h.Next, plain, "QM3")
	if !ok {
		return
	}
	if len(raws) == 0 || raws[0].Type != isakmp.PayloadHash ||
		!hashEqual(ikecrypto.QMHash3(p.suite.Hash, p.km.a, q.x.msgID, q.ni, q.nr), raws[0].Body) {
		e.Stats.BadHash.Add(1)
		e.warn("QM3 HASH(3) does not verify", "peer", p.peer, "msgid", q.x.msgID)
		return
	}
	e.authentic(p)
	q.x.stop()
	q.x.received(sum)
	q.forgetSecrets() // HASH(3) was the last use of the nonces
	if err := e.install(q, q.child, true); err != nil {
		e.failQM(q, err)
		return
	}
	q.state = quickR2
	e.childUp(q, q.child)
}

// idProtoPort renders a client ID's protocol and port for logs.
func idProtoPort(id *isakmp.ID) string {
	return fmt.Sprintf("%s proto %d port %d", idString(id), id.Protocol, id.Port)
}
