package ike

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/ike/ikecrypto"
	"github.com/gosec-ipsec/gosec/ike/isakmp"
	"github.com/gosec-ipsec/gosec/internal/clock"
	"github.com/gosec-ipsec/gosec/sad"
)

// qm is one Quick Mode exchange under a phase-1 SA.
type qm struct {
	p         *p1
	conn      *Conn
	msgID     uint32
	initiator bool
	state     string // QUICK_I1, QUICK_I2, QUICK_R1, QUICK_R2
	iv        []byte
	suites    []p2Suite
	suite     p2Suite
	inSPI     uint32
	outSPI    uint32
	encap     uint16
	ni, nr    []byte
	dh        *ikecrypto.DH
	gqm       []byte
	localTS   netip.Prefix
	remoteTS  netip.Prefix
	// startSeq is when the exchange began (Engine.seq); outInstalled is
	// set once the outbound SA is installed, which happens only once.
	startSeq     uint64
	outInstalled bool
	// proto, lport and rport are the negotiated IDci/IDcr protocol and
	// ports (0: any), installed with the SAs.
	proto        uint8
	lport, rport uint16
	idci         *isakmp.ID
	idcr         *isakmp.ID
	lastSent     []byte
	lastRecv     [32]byte
	timer        clock.Timer
	timerGen     int
	done         func(error)
	w            *waiter // the `gosec up` that started it, if any
	child        *ChildSA
	installed    bool
}

func (q *qm) stopTimer() {
	q.timerGen++
	if q.timer != nil {
		q.timer.Stop()
		q.timer = nil
	}
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
	if len(ls) == 0 || c.Mode == sad.Transport {
		ls = host(c.Local)
	}
	if len(rs) == 0 || c.Mode == sad.Transport {
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
		e.quickI1(p, c, pair[0], pair[1], func(err error) {
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

func (e *Engine) encapMode(p *p1, mode sad.Mode) uint16 {
	switch {
	case p.natt && p.natDetected() && mode == sad.Transport:
		if p.peerNATT == 2 {
			return encapUDPTransportDft
		}
		return encapUDPTransport
	case p.natt && p.natDetected():
		if p.peerNATT == 2 {
			return encapUDPTunnelDraft
		}
		return encapUDPTunnel
	case mode == sad.Transport:
		return encapTransport
	}
	return encapTunnel
}

// quickI1 sends QM1.
func (e *Engine) quickI1(p *p1, c *Conn, lts, rts netip.Prefix, done func(error), w *waiter) {
	orig := done
	done, ok := e.admitQuick(p, c, [2]netip.Prefix{lts, rts}, func() { e.quickI1(p, c, lts, rts, orig, w) }, orig)
	if !ok {
		return
	}
	q := &qm{p: p, conn: c, initiator: true, state: "QUICK_I1", suites: p2Suites(c), localTS: lts, remoteTS: rts, done: done, w: w, startSeq: e.nextSeq()}
	q.msgID = e.randomMsgID(p)
	bs := p.cbc.BlockSize()
	q.iv = ikecrypto.PhaseIV(p.suite.Hash, p.iv, q.msgID, bs)
	proto := q.suites[0].Proto
	spi, err := e.cfg.Installer.AllocSPI(proto)
	if err != nil {
		q.finish(fmt.Errorf("conn %s: SPI: %w", c.Name, err))
		return
	}
	q.inSPI = spi
	q.encap = e.encapMode(p, c.Mode)
	q.ni = e.random(32)
	sa := p2SA(q.suites, spi, q.encap)
	ps := []isakmp.Payload{&isakmp.Hash{Data: make([]byte, p.suite.Hash.Size())}, sa, &isakmp.Nonce{Data: q.ni}}
	if g := q.suites[0].Group; g != 0 {
		dh, err := ikecrypto.GenerateDH(g, e.cfg.Rand)
		if err != nil {
			q.finish(fmt.Errorf("conn %s: PFS group %s: %w", c.Name, g, err))
			return
		}
		q.dh = dh
		ps = append(ps, &isakmp.KE{Data: dh.Public()})
	}
	q.idci, q.idcr = tsID(lts, c.Proto, c.LocalPort), tsID(rts, c.Proto, c.RemotePort)
	q.proto, q.lport, q.rport = c.Proto, c.LocalPort, c.RemotePort
	ps = append(ps, q.idci, q.idcr)
	if c.Mode == sad.Transport && encapUDP(q.encap) {
		draft := p.peerNATT == 2
		la, ra := p.local.Addr().As4(), p.peer.Addr().As4()
		ps = append(ps, &isakmp.NATOA{Draft: draft, IDType: idIPv4Addr, Addr: la[:]}, &isakmp.NATOA{Draft: draft, IDType: idIPv4Addr, Addr: ra[:]})
	}
	b := isakmp.AppendPayloads(nil, ps)
	hl := p.suite.Hash.Size()
	copy(b[4:4+hl], ikecrypto.QMHash1(p.suite.Hash, p.keys.A, q.msgID, b[4+hl:]))
	msg, last := e.seal(p, p.header(isakmp.ExchQuick, q.msgID, true), b, isakmp.PayloadHash, q.iv)
	q.iv = last
	p.qms[q.msgID] = q
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
	q.say(w, "generating QUICK_MODE request %d [ HASH SA No%s ID ID ] for %v === %v", q.msgID, keTag(q.dh != nil), lts, rts)
	q.lastSent = msg
	e.transmit(p, msg)
	e.armQM(q, 0, w)
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

// armQM retransmits q's last message until the answer comes.
func (e *Engine) armQM(q *qm, tries int, w *waiter) {
	q.timerGen++
	gen := q.timerGen
	q.timer = e.cfg.Clock.AfterFunc(e.retransmitDelay(tries), func() {
		e.post(func() {
			if q.timerGen != gen || q.p.qms[q.msgID] != q || e.sas[q.p.key()] != q.p {
				return
			}
			if tries >= e.cfg.Retransmits {
				e.failQM(q, fmt.Errorf("conn %s: no response to Quick Mode %d from %v after %d retransmissions", q.conn.Name, q.msgID, q.p.peer, tries))
				return
			}
			e.Stats.Retransmits.Add(1)
			w.say("retransmit %d of request with message ID %d", tries+1, q.msgID)
			e.transmit(q.p, q.lastSent)
			e.armQM(q, tries+1, w)
		})
	})
}

func (e *Engine) failQM(q *qm, err error) {
	e.Stats.Failed.Add(1)
	e.log.Warn("Quick Mode failed", "conn", q.conn.Name, "peer", q.p.peer, "msgid", q.msgID, "state", q.state, "err", err)
	e.observe(ExchangeEvent{Peer: q.p.peer.Addr(), Conn: q.conn.Name, Kind: "quick", Result: "failed"})
	q.stopTimer()
	if q.inSPI != 0 && !q.installed {
		e.cfg.Installer.ReleaseSPI(q.suite.Proto, q.inSPI)
	} else if q.child != nil && q.installed {
		e.cfg.Installer.Remove(q.child)
	}
	delete(q.p.qms, q.msgID)
	q.finish(err)
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
		e.warn("Quick Mode message out of place", "peer", p.peer, "state", p.state)
		return
	}
	q := p.qms[h.MessageID]
	if q != nil && sum == q.lastRecv {
		e.Stats.Duplicate.Add(1)
		if q.state == "QUICK_R1" || q.state == "QUICK_I2" {
			e.Stats.Retransmits.Add(1)
			e.transmit(p, q.lastSent)
		}
		return
	}
	switch {
	case q == nil:
		e.quickR1(p, h, msg, sum)
	case q.state == "QUICK_I1":
		e.quickI2(q, h, msg, sum)
	case q.state == "QUICK_R1":
		e.quickR2(q, h, msg, sum)
	default:
		e.Stats.Malformed.Add(1)
		e.warn("unexpected Quick Mode message", "peer", p.peer, "state", q.state)
	}
}

// keys derives both SAs of the child from KEYMAT and fills its configs.
func (e *Engine) childSA(q *qm) (*ChildSA, error) {
	p, c, s := q.p, q.conn, q.suite
	encLen, intLen := s.keyLens()
	n := encLen + intLen
	proto := uint8(isakmp.ProtoESP)
	if s.Proto == sad.AH {
		proto = uint8(isakmp.ProtoAH)
	}
	var ni, nr = q.ni, q.nr
	in := ikecrypto.Keymat(p.suite.Hash, p.keys.D, q.gqm, proto, be32(q.inSPI), ni, nr, n)
	out := ikecrypto.Keymat(p.suite.Hash, p.keys.D, q.gqm, proto, be32(q.outSPI), ni, nr, n)
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
		ch.Encap = &sad.Encap{SrcPort: e.cfg.NATTPort, DstPort: p.peer.Port()}
	}
	if s.Proto == sad.AH {
		alg := IntegAlgorithm(s.Integ)
		ch.InAH = ah.Config{Integ: alg, Key: in[:intLen], Align8: c.AHAlign8}
		ch.OutAH = ah.Config{Integ: alg, Key: out[:intLen], Align8: c.AHAlign8}
	} else {
		cipher, err := ESPCipher(s.Encr)
		if err != nil {
			return nil, err
		}
		alg := IntegAlgorithm(s.Integ)
		ch.InESP = esp.Config{Cipher: cipher, EncKey: in[:encLen], Integ: alg, AuthKey: in[encLen:n]}
		ch.OutESP = esp.Config{Cipher: cipher, EncKey: out[:encLen], Integ: alg, AuthKey: out[encLen:n]}
	}
	return ch, nil
}

// quickI2: QM2 received; install both SAs; send QM3.
func (e *Engine) quickI2(q *qm, h isakmp.Header, msg []byte, sum [32]byte) {
	p := q.p
	ps, hash, rest, last, ok := e.qmBody(q, h, msg)
	if !ok {
		return
	}
	if !hashEqual(ikecrypto.QMHash2(p.suite.Hash, p.keys.A, q.msgID, q.ni, rest), hash) {
		e.Stats.BadHash.Add(1)
		e.warn("QM2 HASH(2) does not verify", "peer", p.peer, "msgid", q.msgID)
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
		if q.gqm, err = q.dh.SharedSecret(ke.Data); err != nil {
			e.failQM(q, fmt.Errorf("conn %s: PFS KE: %w", q.conn.Name, err))
			return
		}
	}
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
	q.lastRecv = sum
	q.stopTimer()
	b := isakmp.AppendPayloads(nil, []isakmp.Payload{&isakmp.Hash{Data: ikecrypto.QMHash3(p.suite.Hash, p.keys.A, q.msgID, q.ni, q.nr)}})
	m, lastOut := e.seal(p, p.header(isakmp.ExchQuick, q.msgID, true), b, isakmp.PayloadHash, q.iv)
	q.iv = lastOut
	if e.cfg.OutboundDelay <= 0 {
		if err := e.install(q, ch, true); err != nil {
			e.failQM(q, err)
			return
		}
		q.lastSent = m
		e.transmit(p, m)
		q.state = "QUICK_I2"
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
	q.lastSent = m
	e.transmit(p, m)
	q.state = "QUICK_I2"
	q.timerGen++
	gen := q.timerGen
	q.timer = e.cfg.Clock.AfterFunc(e.cfg.OutboundDelay, func() {
		e.post(func() {
			// forget and failQM stop this timer and remove the inbound SA
			if q.timerGen != gen || q.p.qms[q.msgID] != q || e.sas[q.p.key()] != q.p {
				return
			}
			if err := e.install(q, ch, true); err != nil {
				e.failQM(q, err)
				return
			}
			e.childUp(q, ch)
		})
	})
}

// outPending reports whether q is an initiator's Quick Mode that has sent
// QM3 and waits for OutboundDelay before installing its outbound SA.
func (q *qm) outPending() bool {
	return q.initiator && q.state == "QUICK_I2" && q.installed && !q.outInstalled
}

func sameID(a, b *isakmp.ID) bool {
	return a.IDType == b.IDType && a.Protocol == b.Protocol && a.Port == b.Port && string(a.Data) == string(b.Data)
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
	}
	if both && !q.outInstalled {
		if err := e.cfg.Installer.InstallOutbound(ch); err != nil {
			return fmt.Errorf("conn %s: installing outbound SA: %w", ch.Conn, err)
		}
		q.outInstalled = true
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
	q.say(q.w, "CHILD_SA %s{%d} established with SPIs %08x_i %08x_o and TS %v === %v (%s %s%s)", ch.Conn, q.msgID, ch.InSPI, ch.OutSPI,
		ch.LocalTS, ch.RemoteTS, ch.Suite, ch.Mode, encap)
	delete(q.p.qms, q.msgID)
	// Keep the exchange reachable for duplicate QM2/QM3 detection,
	// for a while (retireQuick).
	q.p.qms[q.msgID] = q
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
	if c.Mode != sad.Transport && len(c.LocalSubnets) > 0 && len(c.RemoteSubnets) > 0 {
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

// quickR1: QM1 received; choose; install inbound; send QM2.
func (e *Engine) quickR1(p *p1, h isakmp.Header, msg []byte, sum [32]byte) {
	bs := p.cbc.BlockSize()
	q := &qm{p: p, msgID: h.MessageID, state: "QUICK_R1", iv: ikecrypto.PhaseIV(p.suite.Hash, p.iv, h.MessageID, bs), startSeq: e.nextSeq()}
	ps, hash, rest, last, ok := e.qmBody(q, h, msg)
	if !ok {
		return
	}
	if !hashEqual(ikecrypto.QMHash1(p.suite.Hash, p.keys.A, q.msgID, rest), hash) {
		e.Stats.BadHash.Add(1)
		e.warn("QM1 HASH(1) does not verify", "peer", p.peer, "msgid", q.msgID)
		return
	}
	e.authentic(p)
	q.iv = last
	q.lastRecv = sum
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
		ch, s, spi, en, err := selectP2(p2Suites(cand), cand.Mode, sa)
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
		dh, err := ikecrypto.GenerateDH(suite.Group, e.cfg.Rand)
		if err != nil {
			e.sendNotify(p, 14, nil)
			return
		}
		if q.gqm, err = dh.SharedSecret(peerKE.Data); err != nil {
			e.Stats.Malformed.Add(1)
			e.warn("QM1 with an invalid KE", "peer", p.peer, "err", err)
			e.sendNotify(p, 17, nil) // INVALID_KEY_INFORMATION
			return
		}
		ke = &isakmp.KE{Data: dh.Public()}
	}
	spi, err := e.cfg.Installer.AllocSPI(suite.Proto)
	if err != nil {
		e.log.Error("Quick Mode: SPI", "err", err)
		return
	}
	q.inSPI = spi
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
		return
	}
	if err := e.install(q, ch, false); err != nil {
		e.log.Error("Quick Mode responder", "conn", c.Name, "err", err)
		e.cfg.Installer.ReleaseSPI(suite.Proto, spi)
		return
	}
	b := isakmp.AppendPayloads(nil, out)
	hl := p.suite.Hash.Size()
	copy(b[4:4+hl], ikecrypto.QMHash2(p.suite.Hash, p.keys.A, q.msgID, q.ni, b[4+hl:]))
	m, lastOut := e.seal(p, p.header(isakmp.ExchQuick, q.msgID, true), b, isakmp.PayloadHash, q.iv)
	q.iv = lastOut
	q.lastSent = m
	p.qms[q.msgID] = q
	e.transmit(p, m)
	e.armQM(q, 0, nil)
}

// quickR2: QM3 received; install the outbound SA.
func (e *Engine) quickR2(q *qm, h isakmp.Header, msg []byte, sum [32]byte) {
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
		!hashEqual(ikecrypto.QMHash3(p.suite.Hash, p.keys.A, q.msgID, q.ni, q.nr), raws[0].Body) {
		e.Stats.BadHash.Add(1)
		e.warn("QM3 HASH(3) does not verify", "peer", p.peer, "msgid", q.msgID)
		return
	}
	e.authentic(p)
	q.stopTimer()
	q.lastRecv = sum
	if err := e.install(q, q.child, true); err != nil {
		e.failQM(q, err)
		return
	}
	q.state = "QUICK_R2"
	e.childUp(q, q.child)
}

var errNoSA = errors.New("no ISAKMP SA")

// rekeyGrace is how long a replaced SA pair stays installed.
const rekeyGrace = 5 * time.Second

// armChild schedules the rekey (rekey=yes) and the hard expiry of a
// child; see rekeyTime for when.
func (e *Engine) armChild(c *child) {
	life := c.sa.Lifetime
	if life <= 0 {
		return
	}
	if at := c.sa.RekeyAfter; at > 0 {
		c.rekeyAt = at
		c.timers = append(c.timers, e.cfg.Clock.AfterFunc(at, func() {
			e.post(func() { e.softExpire(c, "lifetime") })
		}))
	}
	c.timers = append(c.timers, e.cfg.Clock.AfterFunc(life, func() {
		e.post(func() { e.deleteChild(c, "lifetime expired") })
	}))
}

// rekeyTime is when, after its installation, child c is rekeyed; 0 for
// never. The side that initiated c rekeys at lifetime - margin -
// random(0, margin x rekeyfuzz), as strongSwan's child_cfg computes it
// (src/libcharon/config/child_cfg.c, get_lifetime with jitter); the
// responder waits until only half the margin is left, as Libreswan does
// (programs/pluto/rekeyfuzz.c, fuzz_rekey_margin: "Give the responder a
// smaller margin so that its rekey event is scheduled later"), so that
// both peers do not rekey at once. A responder of a right=%any conn
// cannot initiate and never rekeys. A margin that leaves no lifetime is
// cut to a tenth of the lifetime.
func (e *Engine) rekeyTime(c *child) time.Duration {
	return e.rekeyTimeFor(c.conn, c.sa.Lifetime, c.initiator)
}

func (e *Engine) rekeyTimeFor(conn *Conn, life time.Duration, initiator bool) time.Duration {
	if conn == nil || !conn.Rekey || life <= 0 {
		return 0
	}
	margin := conn.RekeyMargin
	if margin <= 0 || margin >= life {
		margin = life / 10
	}
	if !initiator {
		if !conn.Remote.IsValid() {
			return 0
		}
		return life - margin/2
	}
	at := life - margin
	if conn.RekeyFuzz > 0 {
		span := uint64(margin) * uint64(conn.RekeyFuzz) / 100
		at -= time.Duration(be64u(e.random(8)) % (span + 1))
	}
	if at < life/10 {
		at = life / 10
	}
	return at
}

// softVolume is the soft byte or packet limit for a hard limit: hard -
// margin - random(0, margin x fuzz) on the side that initiated the SA,
// hard - margin/2 on the other (as rekeyTimeFor); margin 0 means a tenth
// of hard; never below a tenth of hard. 0 for no hard limit.
func (e *Engine) softVolume(hard, margin uint64, fuzz int, initiator bool) uint64 {
	if hard == 0 {
		return 0
	}
	if margin == 0 || margin >= hard {
		margin = hard / 10
	}
	soft := hard - margin/2
	if initiator {
		soft = hard - margin
		if fuzz > 0 {
			span := margin / 100 * uint64(fuzz)
			if margin < 1<<40 {
				span = margin * uint64(fuzz) / 100
			}
			if span < ^uint64(0) {
				span = be64u(e.random(8)) % (span + 1)
			}
			if span > soft {
				span = soft
			}
			soft -= span
		}
	}
	return max(soft, hard/10, 1)
}

func be64u(b []byte) uint64 { return uint64(be32u(b[:4]))<<32 | uint64(be32u(b[4:8])) }

// softExpire starts the rekey of c unless it is replaced, already being
// rekeyed, or its conn does not rekey.
func (e *Engine) softExpire(c *child, why string) {
	if c.rekeyed || c.rekeying || !e.hasChild(c) {
		return
	}
	if c.conn == nil || !c.conn.Rekey || (!c.initiator && !c.conn.Remote.IsValid()) {
		return
	}
	e.log.Info("rekeying IPsec SA", "conn", c.sa.Conn, "in_spi", fmt.Sprintf("%08x", c.sa.InSPI), "why", why)
	e.rekey(c)
}

// SoftExpire reports the data plane's soft lifetime event (time, bytes,
// packets or sequence numbers near exhaustion) of an SA of conn, named by
// its inbound or outbound SPI: the engine negotiates the successor now,
// unless one exists or is under way. Safe from any goroutine.
func (e *Engine) SoftExpire(conn string, spi uint32) {
	e.postLifecycle(func() {
		if c := e.childBySPI(conn, spi); c != nil {
			e.softExpire(c, "soft lifetime reached in the data plane")
		}
	})
}

// HardExpire reports the data plane's hard lifetime event of an SA of
// conn (inbound or outbound SPI): the pair is removed and the peer told.
// Safe from any goroutine.
func (e *Engine) HardExpire(conn string, spi uint32) {
	e.postLifecycle(func() {
		if c := e.childBySPI(conn, spi); c != nil {
			e.deleteChild(c, "hard lifetime reached in the data plane")
		}
	})
}

// postLifecycle queues a lifecycle event; such events must not be lost,
// so a full queue is retried from another goroutine for a while.
func (e *Engine) postLifecycle(f func()) {
	if e.post(f) {
		return
	}
	go func() {
		for i := 0; i < 100; i++ {
			time.Sleep(50 * time.Millisecond)
			if e.post(f) {
				return
			}
		}
		e.log.Error("IKE event queue full: a lifetime event was lost")
	}()
}

func (e *Engine) childBySPI(conn string, spi uint32) *child {
	for _, c := range e.children[conn] {
		if c.sa.InSPI == spi || c.sa.OutSPI == spi {
			return c
		}
	}
	return nil
}

func (e *Engine) hasChild(c *child) bool {
	for _, x := range e.children[c.sa.Conn] {
		if x == c {
			return true
		}
	}
	return false
}

// rekey negotiates a successor for c's selectors, under the existing
// ISAKMP SA or a new one.
func (e *Engine) rekey(c *child) {
	conn := e.conns[c.sa.Conn]
	if conn == nil {
		return
	}
	c.rekeying = true
	e.armRekeyRetry(c)
	p := e.newestP1(c.identity, conn)
	if p == nil {
		p = e.newestP1("", conn)
	}
	if p != nil {
		e.quickI1(p, conn, c.sa.LocalTS, c.sa.RemoteTS, func(err error) {
			if err != nil {
				e.log.Warn("rekey failed", "conn", conn.Name, "err", err)
			}
		}, nil)
		return
	}
	if e.joinPending(conn, nil) {
		return // a Main Mode under way negotiates every selector pair
	}
	e.startMain(conn, nil, 1) // its Quick Modes negotiate every selector pair
}

// armRekeyRetry tries the rekey of c again if no successor exists after
// half its remaining lifetime (between 5 s and 2 min): a lost exchange
// or a peer briefly away must not let the pair expire without one.
func (e *Engine) armRekeyRetry(c *child) {
	left := time.Minute
	if c.sa.Lifetime > 0 {
		left = c.sa.Lifetime - e.cfg.Clock.Now().Sub(c.established)
	}
	d := min(max(left/2, 5*time.Second), 2*time.Minute)
	if c.sa.Lifetime > 0 && d >= left {
		return
	}
	c.timers = append(c.timers, e.cfg.Clock.AfterFunc(d, func() {
		e.post(func() {
			if c.rekeyed || !e.hasChild(c) {
				return
			}
			c.rekeying = false
			e.softExpire(c, "no successor yet: retrying the rekey")
		})
	}))
}

// deleteChild removes c, telling the peer.
func (e *Engine) deleteChild(c *child, why string) {
	if !e.hasChild(c) {
		return
	}
	c.stop()
	if p := e.p1ForChild(c); p != nil {
		e.sendDelete(p, c.sa.Proto, [][]byte{be32(c.sa.InSPI)})
	}
	e.cfg.Installer.Remove(c.sa)
	list := e.children[c.sa.Conn]
	for i, x := range list {
		if x == c {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(e.children, c.sa.Conn)
	} else {
		e.children[c.sa.Conn] = list
	}
	e.log.Info("IPsec SA deleted", "conn", c.sa.Conn, "in_spi", fmt.Sprintf("%08x", c.sa.InSPI), "out_spi", fmt.Sprintf("%08x", c.sa.OutSPI), "why", why)
}

// idProtoPort renders a client ID's protocol and port for logs.
func idProtoPort(id *isakmp.ID) string {
	return fmt.Sprintf("%s proto %d port %d", idString(id), id.Protocol, id.Port)
}
