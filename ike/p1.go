package ike

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/gosec-ipsec/gosec/ike/ikecrypto"
	"github.com/gosec-ipsec/gosec/ike/isakmp"
	"github.com/gosec-ipsec/gosec/internal/clock"
)

// p1 is one ISAKMP SA (phase 1) and the Quick Modes under it.
type p1 struct {
	e         *Engine
	conn      *Conn
	initiator bool
	state     string // Pluto's names: MAIN_I1 .. MAIN_I4, MAIN_R1 .. MAIN_R3
	icky      [8]byte
	rcky      [8]byte
	// peer is where messages go (its port changes on the NAT-T float).
	peer  netip.AddrPort
	local netip.AddrPort
	natt  bool // floated to the NAT-T port

	peerNATT      int // 0 none, 1 RFC 3947, 2 drafts
	peerDPD       bool
	weBehindNAT   bool
	peerBehindNAT bool

	suites  []p1Suite
	suite   p1Suite
	saiBody []byte
	dh      *ikecrypto.DH
	gxi     []byte
	gxr     []byte
	ni      []byte
	nr      []byte
	keys    ikecrypto.Phase1Keys
	cbc     *ikecrypto.CBC
	iv      []byte // the running phase-1 IV; after MM6, the last phase-1 block
	peerID  string
	// peerIDPay is the peer's authenticated phase-1 ID; localIDKey and
	// peerIDKey identify the pair of identities (idKey form); pskSum is
	// the SHA-256 of the pre-shared key that authenticated them. A Quick
	// Mode, Delete or INITIAL-CONTACT under this SA acts only within
	// what these authorize.
	peerIDPay             *isakmp.ID
	localIDKey, peerIDKey string
	pskSum                [32]byte
	// computing: MM3's Diffie-Hellman work is on a crypto worker.
	computing bool
	// infoIDs are the message IDs of the last authenticated protected
	// Informationals (replay protection, info.go).
	infoIDs []uint32
	// floatTo is where the message being handled came from, over NAT-T;
	// it becomes peer only once that message authenticates (authentic).
	floatTo netip.AddrPort

	lastSent    []byte
	lastRecv    [32]byte
	lastReplyTo [32]byte
	timer       clock.Timer
	timerGen    int

	created time.Time
	estTime time.Time
	// createdSeq and estSeq order creation and establishment (Engine.seq).
	createdSeq, estSeq uint64
	attempt            int
	waiters            []*waiter
	qms                map[uint32]*qm
	failure            error
	keepalive          clock.Timer
	keepaliveOn        bool
	expire             clock.Timer
	// reauth is the timer of the reauthentication (a new Main Mode
	// before this SA expires); reauthOnly marks such a Main Mode, which
	// negotiates no Quick Mode: the children live on and later rekeys
	// use the newest ISAKMP SA; reauthed marks an SA already replaced.
	reauth               clock.Timer
	reauthOnly, reauthed bool
	dpd                  clock.Timer
	dpdSeq               uint32
	dpdWaiting           bool
	dpdSince             time.Time

	// followers are conns waiting for this Main Mode (share.go);
	// quickActive counts the Quick Modes we initiated under way under
	// it, quickBacklog those waiting for a slot.
	followers    []follower
	quickActive  int
	quickBacklog []queuedQuick
}

func (p *p1) key() cookies { return cookies{p.icky, p.rcky} }

func (p *p1) established() bool { return p.state == "MAIN_I4" || p.state == "MAIN_R3" }

func (p *p1) cookieString() string {
	return hex.EncodeToString(p.icky[:]) + "_i:" + hex.EncodeToString(p.rcky[:]) + "_r"
}

func (p *p1) stopTimer() {
	p.timerGen++
	if p.timer != nil {
		p.timer.Stop()
		p.timer = nil
	}
	if p.keepalive != nil {
		p.keepalive.Stop()
		p.keepalive = nil
	}
	if p.expire != nil {
		p.expire.Stop()
		p.expire = nil
	}
	if p.reauth != nil {
		p.reauth.Stop()
		p.reauth = nil
	}
	if p.dpd != nil {
		p.dpd.Stop()
		p.dpd = nil
	}
}

// say sends a progress line to every waiting `gosec up`.
func (p *p1) say(format string, args ...any) {
	for _, w := range p.waiters {
		w.say(format, args...)
	}
}

// fail ends the negotiation: every waiter gets err.
func (p *p1) fail(err error) {
	if p.failure == nil {
		p.failure = err
	}
	for _, w := range p.waiters {
		w.finish(err)
	}
	p.waiters = nil
}

// arm schedules the retransmission of p.lastSent.
func (e *Engine) arm(p *p1, tries int) {
	p.timerGen++
	gen := p.timerGen
	d := e.retransmitDelay(tries)
	p.timer = e.cfg.Clock.AfterFunc(d, func() {
		e.post(func() {
			if p.timerGen != gen || e.sas[p.key()] != p {
				return
			}
			if tries >= e.cfg.Retransmits {
				e.failP1(p, fmt.Errorf("no response from %v in state %s after %d retransmissions", p.peer, p.state, tries), true)
				return
			}
			e.Stats.Retransmits.Add(1)
			p.say("retransmit %d of request with message ID 0", tries+1)
			e.transmit(p, p.lastSent)
			e.arm(p, tries+1)
		})
	})
}

func (e *Engine) retransmitDelay(tries int) time.Duration {
	d := float64(e.cfg.RetransmitTimeout)
	for i := 0; i < tries; i++ {
		d *= e.cfg.RetransmitBackoff
	}
	return time.Duration(d)
}

// failP1 ends a phase-1 negotiation; a timeout of an SA we initiate is
// retried while keyingtries allow.
func (e *Engine) failP1(p *p1, err error, timeout bool) {
	e.Stats.Failed.Add(1)
	name := "?"
	if p.conn != nil {
		name = p.conn.Name
	}
	e.log.Warn("ISAKMP SA failed", "conn", name, "peer", p.peer, "state", p.state, "err", err)
	e.observe(ExchangeEvent{Peer: p.peer.Addr(), Conn: name, Kind: "main", Result: failResult(timeout)})
	waiters := p.waiters
	p.waiters = nil
	followers := p.followers
	p.followers = nil
	e.forget(p)
	if timeout && p.initiator && p.conn != nil {
		tries := p.conn.KeyingTries
		if tries == 0 && len(waiters) == 0 {
			tries = 1 << 30
		} else if tries == 0 {
			tries = 3
		}
		if p.attempt < tries {
			for _, w := range waiters {
				w.say("%v; keying try %d of %d", err, p.attempt+1, tries)
			}
			np := e.startMain(p.conn, nil, p.attempt+1)
			np.waiters = waiters
			np.followers = followers
			np.reauthOnly = p.reauthOnly
			return
		}
	}
	p.waiters = waiters
	p.fail(fmt.Errorf("conn %s: %w", name, err))
	e.releaseFollowers(followers, err, false)
}

// startMain sends MM1 for conn c.
func (e *Engine) startMain(c *Conn, w *waiter, attempt int) *p1 {
	p := &p1{e: e, conn: c, initiator: true, state: "MAIN_I1", created: e.cfg.Clock.Now(), createdSeq: e.nextSeq(), attempt: attempt,
		peer: netip.AddrPortFrom(c.Remote, 500), local: netip.AddrPortFrom(c.Local, 500), qms: map[uint32]*qm{}}
	copy(p.icky[:], e.random(8))
	if w != nil {
		p.waiters = append(p.waiters, w)
	}
	p.suites = p1Suites(c)
	sa := p1SA(p.suites)
	p.saiBody = isakmp.EncodeBody(sa)
	ps := []isakmp.Payload{sa}
	for _, v := range [][]byte{isakmp.VendorNATT, isakmp.VendorNATTDraft02N, isakmp.VendorNATTDraft02, isakmp.VendorDPD} {
		ps = append(ps, &isakmp.VendorID{Data: v})
	}
	msg := isakmp.Encode(isakmp.Header{ICookie: p.icky, Version: 0x10, Exchange: isakmp.ExchMain}, ps)
	e.sas[p.key()] = p
	e.classify(p)
	var offered []string
	for _, s := range p.suites {
		offered = append(offered, s.String())
	}
	p.say("initiating Main Mode IKE_SA %s[%s] to %v", c.Name, hex.EncodeToString(p.icky[:]), c.Remote)
	p.say("generating ID_PROT request 0 [ SA V V V V ] offering %s", strings.Join(offered, ", "))
	p.say("sending packet: from %v to %v (%d bytes)", p.local, p.peer, len(msg))
	e.send(p, msg)
	e.arm(p, 0)
	return p
}

// decodeOf decodes a plaintext payload chain, counting and logging
// failures.
func (e *Engine) decode(p *p1, first isakmp.PayloadType, body []byte, what string) ([]isakmp.Payload, []isakmp.RawPayload, bool) {
	ps, raws, err := isakmp.DecodeAll(first, body)
	if err != nil {
		e.Stats.Malformed.Add(1)
		e.warn("malformed IKE message", "peer", p.peer, "message", what, "err", err)
		return nil, nil, false
	}
	return ps, raws, true
}

func find[T isakmp.Payload](ps []isakmp.Payload) (T, bool) {
	var zero T
	for _, p := range ps {
		if t, ok := p.(T); ok {
			return t, true
		}
	}
	return zero, false
}

func findAll[T isakmp.Payload](ps []isakmp.Payload) []T {
	var out []T
	for _, p := range ps {
		if t, ok := p.(T); ok {
			out = append(out, t)
		}
	}
	return out
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

func bytesEq(a, b []byte) bool { return string(a) == string(b) }

// handleMain runs one Main Mode message through p's state machine.
func (e *Engine) handleMain(p *p1, h isakmp.Header, msg []byte, sum [32]byte) {
	enc := h.Flags&isakmp.FlagEncryption != 0
	switch {
	case p.state == "MAIN_I1" && !enc:
		e.mainI2(p, h, msg, sum)
	case p.state == "MAIN_I2" && !enc:
		e.mainI3(p, h, msg, sum)
	case p.state == "MAIN_I3" && enc:
		e.mainI4(p, h, msg, sum)
	case p.state == "MAIN_R1" && !enc:
		e.mainR2(p, h, msg, sum)
	case p.state == "MAIN_R2" && enc:
		e.mainR3(p, h, msg, sum)
	default:
		e.Stats.Malformed.Add(1)
		e.warn("unexpected Main Mode message", "peer", p.peer, "state", p.state, "encrypted", enc)
	}
}

// mainI2: MM2 received (SA), send MM3 (KE, Ni, NAT-D).
func (e *Engine) mainI2(p *p1, h isakmp.Header, msg []byte, sum [32]byte) {
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
	suite, err := acceptP1Reply(p.suites, sa)
	if err != nil {
		e.failP1(p, err, false)
		return
	}
	delete(e.sas, p.key())
	p.rcky = h.RCookie
	e.sas[p.key()] = p
	p.suite = suite
	p.noteVendorIDs(ps)
	p.lastRecv = sum
	p.say("received ID_PROT response 0 [ SA V ... ]: %s, lifetime %v", suite, suite.Life)
	dh, err := ikecrypto.GenerateDH(suite.Group, e.cfg.Rand)
	if err != nil {
		e.failP1(p, fmt.Errorf("DH group %s: %w", suite.Group, err), false)
		return
	}
	p.dh, p.gxi, p.ni = dh, dh.Public(), e.random(32)
	out := []isakmp.Payload{&isakmp.KE{Data: p.gxi}, &isakmp.Nonce{Data: p.ni}}
	out = append(out, e.natdPayloads(p)...)
	p.state = "MAIN_I2"
	p.lastReplyTo = sum
	p.say("generating ID_PROT request 0 [ KE No NAT-D NAT-D ]")
	e.send(p, isakmp.Encode(p.header(isakmp.ExchMain, 0, false), out))
	e.arm(p, 0)
}

func (p *p1) header(x isakmp.ExchangeType, msgID uint32, enc bool) isakmp.Header {
	h := isakmp.Header{ICookie: p.icky, RCookie: p.rcky, Version: 0x10, Exchange: x, MessageID: msgID}
	if enc {
		h.Flags = isakmp.FlagEncryption
	}
	return h
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

func (p *p1) natDetected() bool { return p.weBehindNAT || p.peerBehindNAT }

// psk finds the pre-shared key of p's conn.
func (e *Engine) psk(p *p1) ([]byte, error) {
	return e.pskFor(p.conn, p.peer.Addr())
}

// pskFor finds the pre-shared key of conn c with the peer at peer.
func (e *Engine) pskFor(c *Conn, peer netip.Addr) ([]byte, error) {
	lid, rid := c.LocalID, c.RemoteID
	if lid == "" {
		lid = c.Local.String()
	}
	if rid == "" || rid == "%any" {
		rid = peer.String()
	}
	if e.cfg.PSK == nil {
		return nil, errors.New("no ipsec.secrets loaded")
	}
	k, ok := e.cfg.PSK(lid, rid)
	if !ok {
		return nil, fmt.Errorf("no pre-shared key in ipsec.secrets for %s - %s", lid, rid)
	}
	return k, nil
}

// deriveKeys computes SKEYID and friends after the KE exchange.
func (e *Engine) deriveKeys(p *p1, gxy []byte) error {
	psk, err := e.psk(p)
	if err != nil {
		return err
	}
	keyLen, err := p.suite.Cipher.KeyLen(p.suite.KeyBits)
	if err != nil {
		return err
	}
	p.keys = ikecrypto.DerivePSK(p.suite.Hash, psk, p.ni, p.nr, gxy, p.icky[:], p.rcky[:], keyLen)
	p.pskSum = sha256.Sum256(psk)
	p.cbc, err = ikecrypto.NewCBC(p.suite.Cipher, p.keys.Key)
	if err != nil {
		return err
	}
	p.iv = ikecrypto.Phase1IV(p.suite.Hash, p.gxi, p.gxr, p.cbc.BlockSize())
	if e.cfg.SaveKeys != nil {
		e.cfg.SaveKeys(p.icky, p.keys.Key)
	}
	if e.cfg.LogKeys {
		e.log.Debug("phase-1 keys", "skeyid", hex.EncodeToString(p.keys.SKEYID), "skeyid_d", hex.EncodeToString(p.keys.D),
			"skeyid_a", hex.EncodeToString(p.keys.A), "skeyid_e", hex.EncodeToString(p.keys.E), "enc_key", hex.EncodeToString(p.keys.Key),
			"iv", hex.EncodeToString(p.iv))
	}
	return nil
}

// seal encrypts a payload chain under p's key with iv and returns the
// message and the last ciphertext block (the next IV).
func (e *Engine) seal(p *p1, h isakmp.Header, payloads []byte, first isakmp.PayloadType, iv []byte) ([]byte, []byte) {
	bs := p.cbc.BlockSize()
	body := ikecrypto.Pad(payloads, bs)
	h.Next = first
	h.Flags |= isakmp.FlagEncryption
	h.Length = uint32(isakmp.HeaderLen + len(body))
	msg := make([]byte, isakmp.HeaderLen+len(body))
	h.Put(msg)
	copy(msg[isakmp.HeaderLen:], body)
	p.cbc.Encrypt(iv, msg[isakmp.HeaderLen:])
	last := append([]byte(nil), msg[len(msg)-bs:]...)
	return msg, last
}

// open decrypts the body of msg with iv; it returns the plaintext and the
// last ciphertext block.
func (e *Engine) open(p *p1, msg []byte, iv []byte) ([]byte, []byte, error) {
	if p.cbc == nil {
		return nil, nil, errors.New("encrypted message before keys exist")
	}
	bs := p.cbc.BlockSize()
	body := msg[isakmp.HeaderLen:]
	if len(body) == 0 || len(body)%bs != 0 {
		return nil, nil, fmt.Errorf("encrypted body of %d octets is not a multiple of the %d-octet block", len(body), bs)
	}
	last := append([]byte(nil), body[len(body)-bs:]...)
	plain := append([]byte(nil), body...)
	if err := p.cbc.Decrypt(iv, plain); err != nil {
		return nil, nil, err
	}
	return plain, last, nil
}

// mainI3: MM4 received (KE, Nr, NAT-D); derive keys; send MM5 (ID, HASH_I).
func (e *Engine) mainI3(p *p1, h isakmp.Header, msg []byte, sum [32]byte) {
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
	gxy, err := p.dh.SharedSecret(ke.Data)
	if err != nil {
		e.Stats.Malformed.Add(1)
		e.warn("MM4 with an invalid KE", "peer", p.peer, "err", err)
		return
	}
	p.gxr, p.nr = ke.Data, nonce.Data
	p.lastRecv = sum
	e.checkNATD(p, ps)
	if err := e.deriveKeys(p, gxy); err != nil {
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
	hashI := ikecrypto.HashI(p.suite.Hash, p.keys.SKEYID, p.gxi, p.gxr, p.icky[:], p.rcky[:], p.saiBody, idBody)
	out := []isakmp.Payload{id, &isakmp.Hash{Data: hashI}}
	ic := e.wantInitialContact(p)
	if ic {
		out = append(out, &isakmp.Notify{DOI: doiIPsec, Protocol: isakmp.ProtoISAKMP, Kind: notifyInitialContact, SPI: append(p.icky[:], p.rcky[:]...)})
	}
	plain := isakmp.AppendPayloads(nil, out)
	m, last := e.seal(p, p.header(isakmp.ExchMain, 0, true), plain, out[0].Type(), p.iv)
	p.iv = last
	p.state = "MAIN_I3"
	p.lastReplyTo = sum
	if ic {
		p.say("generating ID_PROT request 0 [ ID HASH N(INITIAL_CONTACT) ]")
	} else {
		p.say("generating ID_PROT request 0 [ ID HASH ]")
	}
	p.say("sending packet: from %v to %v (%d bytes)", p.local, p.peer, len(m))
	e.send(p, m)
	e.arm(p, 0)
}

// mainI4: MM6 received (ID, HASH_R): phase 1 is up.
func (e *Engine) mainI4(p *p1, h isakmp.Header, msg []byte, sum [32]byte) {
	plain, last, err := e.open(p, msg, p.iv)
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
	id, ok1 := find[*isakmp.ID](ps)
	hash, ok2 := find[*isakmp.Hash](ps)
	if !ok1 || !ok2 {
		e.Stats.Malformed.Add(1)
		e.warn("MM6 without ID and HASH", "peer", p.peer)
		return
	}
	idBody := rawBody(raws, isakmp.PayloadID)
	want := ikecrypto.HashR(p.suite.Hash, p.keys.SKEYID, p.gxi, p.gxr, p.icky[:], p.rcky[:], p.saiBody, idBody)
	if !hashEqual(want, hash.Data) {
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
	p.iv = last
	p.lastRecv = sum
	p.lastSent = nil
	p.stopTimer()
	e.established(p)
}

func hasPayload(ps []isakmp.Payload, t isakmp.PayloadType) bool {
	for _, p := range ps {
		if p.Type() == t {
			return true
		}
	}
	return false
}

func rawBody(raws []isakmp.RawPayload, t isakmp.PayloadType) []byte {
	for _, r := range raws {
		if r.Type == t {
			return r.Body
		}
	}
	return nil
}

// established records phase 1 as up and starts the waiting Quick Modes.
func (e *Engine) established(p *p1) {
	if p.initiator {
		p.state = "MAIN_I4"
	} else {
		p.state = "MAIN_R3"
	}
	p.estTime = e.cfg.Clock.Now()
	p.estSeq = e.nextSeq()
	e.Stats.Established.Add(1)
	e.dropHalfOpen(p)
	e.classify(p)
	nat := ""
	if p.natt {
		nat = fmt.Sprintf(", NAT-T on port %d", e.cfg.NATTPort)
	}
	e.observe(ExchangeEvent{Peer: p.peer.Addr(), Conn: p.conn.Name, Kind: "main", Result: "established", Latency: p.estTime.Sub(p.created)})
	e.log.Info("ISAKMP SA established", "conn", p.conn.Name, "peer", p.peer, "peer_id", p.peerID, "state", p.state,
		"suite", p.suite.String(), "cookies", p.cookieString(), "natt", p.natt)
	p.say("IKE_SA %s[%s] established between %v[%s]...%v[%s] (%s%s)", p.conn.Name, p.cookieString(),
		p.local.Addr(), localIDString(p.conn), p.peer.Addr(), p.peerID, p.suite, nat)
	if p.weBehindNAT && p.natt {
		e.startKeepalive(p)
	}
	e.startDPD(p)
	if p.suite.Life > 0 {
		// The ISAKMP SA ends with its lifetime; IPsec SAs under it live
		// on, and the next rekey negotiates a new one.
		p.expire = e.cfg.Clock.AfterFunc(p.suite.Life, func() {
			e.post(func() {
				if e.sas[p.key()] == p {
					e.log.Info("ISAKMP SA lifetime expired", "conn", p.conn.Name, "cookies", p.cookieString())
					e.sendDeleteISAKMP(p)
					e.forget(p)
				}
			})
		})
		e.armReauth(p)
	}
	if p.initiator {
		ws := p.waiters
		p.waiters = nil
		if len(ws) == 0 && !p.reauthOnly {
			e.startQuick(p, nil)
		}
		for _, w := range ws {
			e.startQuick(p, w)
		}
		e.startFollowers(p)
	}
}

// startKeepalive sends NAT-T keepalives (one octet 0xFF, RFC 3948 2.3)
// every 20 s while we are behind a NAT.
func (e *Engine) startKeepalive(p *p1) {
	ka, ok := e.cfg.Transport.(interface{ SendKeepalive(netip.AddrPort) error })
	if !ok {
		return
	}
	var tick func()
	tick = func() {
		e.post(func() {
			if e.sas[p.key()] != p {
				return
			}
			ka.SendKeepalive(p.peer)
			p.keepalive = e.cfg.Clock.AfterFunc(20*time.Second, tick)
		})
	}
	p.keepalive = e.cfg.Clock.AfterFunc(20*time.Second, tick)
}

// maxSAIBody bounds the SA payload of a first Main Mode message that
// the responder keeps for HASH_I. The transform cap (isakmp.MaxSATransforms)
// allows about 20 KB of ordinary transforms; what a real peer sends is a
// few hundred octets (strongSwan's longest default offer about 5 KB).
const maxSAIBody = 32 << 10

// halfOpenEntryBytes is what one half-open responder SA costs besides
// the SA payload it keeps, checked by TestHalfOpenBytes (1.6 KB measured
// on amd64): the p1 struct (864 octets), its MM2 for retransmission
// (about 120), its empty Quick Mode map, its half-open timer, and its
// entries in sas, classes, halfOpen and perPeer. At the default
// MaxHalfOpen of 8192 entries that is at most 8192 x 2 KB = 16 MB, plus
// at most MaxHalfOpenBytes (4 MB) of SA payloads: 20 MB in all, whatever
// the peers send (each entry used to pin its whole first message, up to
// 64 KB: 512 MB). Entries past MM3 (at most MaxHalfOpenPerPeer per
// address) also hold their 3 Diffie-Hellman values and keys, about 2 KB
// more.
const halfOpenEntryBytes = 2048

// respondMM1 handles a first Main Mode message: find the conn, choose a
// proposal, answer with MM2. Nothing expensive happens here: the SA
// payload is parsed once (bounded by isakmp's caps), matched against
// every conn without formatting, refusals are logged at a limited rate,
// and half-open SAs are bounded in number and in octets.
func (e *Engine) respondMM1(h isakmp.Header, msg []byte, from, to netip.AddrPort, natt bool) {
	// A retransmitted MM1 for an SA we already answered (a map lookup:
	// this runs for every message of a flood), or one replayed later.
	if q := e.responders[respKey{h.ICookie, from.Addr()}]; q != nil {
		e.Stats.Duplicate.Add(1)
		if q.state == "MAIN_R1" && q.peer == from && q.lastSent != nil {
			e.transmit(q, q.lastSent)
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
			if ep, ok := err.(*errNoProposal); ok && ep.msg != "" {
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
	p := &p1{e: e, conn: conn, state: "MAIN_R1", icky: h.ICookie, peer: from, local: local, natt: natt,
		created: e.cfg.Clock.Now(), createdSeq: e.nextSeq(), suite: suite, qms: map[uint32]*qm{}}
	copy(p.rcky[:], e.random(8))
	// A copy: a subslice would keep the whole message (up to 64 KB).
	p.saiBody = append([]byte(nil), saiBody...)
	p.noteVendorIDs(ps)
	e.admitHalfOpen(p)
	e.sas[p.key()] = p
	e.responders[respKey{p.icky, from.Addr()}] = p
	e.classify(p)
	out := []isakmp.Payload{&isakmp.SA{DOI: doiIPsec, Situation: sitIDOnly, Proposals: []isakmp.Proposal{chosen}}}
	if p.peerNATT != 0 {
		out = append(out, &isakmp.VendorID{Data: isakmp.VendorNATT})
	}
	out = append(out, &isakmp.VendorID{Data: isakmp.VendorDPD})
	p.lastRecv = sha256Sum(msg)
	p.lastReplyTo = p.lastRecv
	e.log.Debug("Main Mode responder", "conn", conn.Name, "peer", from, "suite", suite.String())
	e.send(p, isakmp.Encode(p.header(isakmp.ExchMain, 0, false), out))
	e.armHalfOpen(p)
}

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

// hashEqual compares a received hash with the expected one in constant
// time.
func hashEqual(want, got []byte) bool { return subtle.ConstantTimeCompare(want, got) == 1 }

// admitHalfOpen bounds the responder SAs that are still negotiating.
func (e *Engine) admitHalfOpen(p *p1) {
	if e.perPeer[p.peer.Addr()] >= e.cfg.MaxHalfOpenPerPeer {
		e.evictHalfOpen(func(q *p1) bool { return q.peer.Addr() == p.peer.Addr() })
	}
	for len(e.halfOpen) > 0 && (len(e.halfOpen) >= e.cfg.MaxHalfOpen || e.halfOpenBytes+len(p.saiBody) > e.cfg.MaxHalfOpenBytes) {
		e.evictHalfOpen(func(*p1) bool { return true })
	}
	e.halfOpen = append(e.halfOpen, p)
	e.halfOpenBytes += len(p.saiBody)
	e.Stats.HalfOpen.Add(1)
	e.perPeer[p.peer.Addr()]++
}

// evictHalfOpen forgets the oldest half-open SA that match selects,
// preferring those that never got past MM1 (MAIN_R1).
func (e *Engine) evictHalfOpen(match func(*p1) bool) {
	victim := -1
	for i, q := range e.halfOpen {
		if !match(q) {
			continue
		}
		if q.state == "MAIN_R1" {
			victim = i
			break
		}
		if victim < 0 {
			victim = i
		}
	}
	if victim < 0 {
		return
	}
	e.Stats.HalfOpenEvicted.Add(1)
	e.forget(e.halfOpen[victim])
}

// armHalfOpen forgets a responder negotiation that stalls.
func (e *Engine) armHalfOpen(p *p1) {
	p.timerGen++
	gen := p.timerGen
	p.timer = e.cfg.Clock.AfterFunc(e.cfg.HalfOpenTimeout, func() {
		e.post(func() {
			if p.timerGen == gen && e.sas[p.key()] == p && !p.established() {
				e.log.Info("half-open ISAKMP SA timed out", "peer", p.peer, "state", p.state)
				e.forget(p)
			}
		})
	})
}

// mainR2: MM3 received (KE, Ni, NAT-D): the Diffie-Hellman work runs
// on a crypto worker (a reachable source needs no key to send MM3), then
// mainR2Keyed sends MM4.
func (e *Engine) mainR2(p *p1, h isakmp.Header, msg []byte, sum [32]byte) {
	if p.computing {
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
	p.computing = true
	queued := e.offload(p.peer.Addr(), func() func() {
		dh, genErr := ikecrypto.GenerateDH(group, rnd)
		var gxy []byte
		var keErr error
		if genErr == nil {
			gxy, keErr = dh.SharedSecret(gxi)
		}
		return func() { e.mainR2Keyed(p, ps, gxi, nonce.Data, sum, dh, gxy, genErr, keErr) }
	})
	if !queued {
		p.computing = false
		e.warn("MM3 dropped: the Diffie-Hellman workers are busy (the peer retransmits)", "peer", p.peer)
	}
}

// mainR2Keyed finishes MM3 once its Diffie-Hellman work is done.
func (e *Engine) mainR2Keyed(p *p1, ps []isakmp.Payload, gxi, ni []byte, sum [32]byte, dh *ikecrypto.DH, gxy []byte, genErr, keErr error) {
	p.computing = false
	if e.sas[p.key()] != p || p.state != "MAIN_R1" {
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
	// The private value is not needed past this point: not kept.
	p.gxi, p.ni, p.gxr, p.nr = gxi, ni, dh.Public(), e.random(32)
	e.checkNATD(p, ps)
	if err := e.deriveKeys(p, gxy); err != nil {
		e.warn("Main Mode responder", "conn", p.conn.Name, "peer", p.peer, "err", err)
		e.forget(p)
		return
	}
	out := []isakmp.Payload{&isakmp.KE{Data: p.gxr}, &isakmp.Nonce{Data: p.nr}}
	out = append(out, e.natdPayloads(p)...)
	p.state = "MAIN_R2"
	p.lastRecv = sum
	p.lastReplyTo = sum
	e.send(p, isakmp.Encode(p.header(isakmp.ExchMain, 0, false), out))
}

// mainR3: MM5 received (ID, HASH_I); send MM6.
func (e *Engine) mainR3(p *p1, h isakmp.Header, msg []byte, sum [32]byte) {
	plain, last, err := e.open(p, msg, p.iv)
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
	id, ok1 := find[*isakmp.ID](ps)
	hash, ok2 := find[*isakmp.Hash](ps)
	if !ok1 || !ok2 {
		e.Stats.Malformed.Add(1)
		e.warn("MM5 without ID and HASH", "peer", p.peer)
		return
	}
	idBody := rawBody(raws, isakmp.PayloadID)
	want := ikecrypto.HashI(p.suite.Hash, p.keys.SKEYID, p.gxi, p.gxr, p.icky[:], p.rcky[:], p.saiBody, idBody)
	if !hashEqual(want, hash.Data) {
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
	p.iv = last
	for _, n := range findAll[*isakmp.Notify](ps) {
		if uint16(n.Kind) == notifyInitialContact {
			e.initialContact(p)
		}
	}
	hashR := ikecrypto.HashR(p.suite.Hash, p.keys.SKEYID, p.gxi, p.gxr, p.icky[:], p.rcky[:], p.saiBody, isakmp.EncodeBody(myID))
	out := []isakmp.Payload{myID, &isakmp.Hash{Data: hashR}}
	m, lastOut := e.seal(p, p.header(isakmp.ExchMain, 0, true), isakmp.AppendPayloads(nil, out), out[0].Type(), p.iv)
	p.iv = lastOut
	p.lastRecv = sum
	p.lastReplyTo = sum
	e.send(p, m)
	p.stopTimer()
	e.established(p)
}

// sendPlainNotify answers with an unprotected Informational exchange
// carrying one Notify (before keys exist, or when they cannot be trusted).
func (e *Engine) sendPlainNotify(icky, rcky [8]byte, to netip.AddrPort, natt bool, typ uint16) {
	e.sendPlainNotifyFrom(netip.Addr{}, icky, rcky, to, natt, typ)
}

// sendPlainNotifyFrom is sendPlainNotify from local address src (the
// address the peer's message was sent to; invalid: the kernel chooses).
func (e *Engine) sendPlainNotifyFrom(src netip.Addr, icky, rcky [8]byte, to netip.AddrPort, natt bool, typ uint16) {
	h := isakmp.Header{ICookie: icky, RCookie: rcky, Version: 0x10, Exchange: isakmp.ExchInfo, MessageID: be32u(e.random(4))}
	n := &isakmp.Notify{DOI: doiIPsec, Protocol: isakmp.ProtoISAKMP, Kind: isakmp.NotifyType(typ)}
	msg := isakmp.Encode(h, []isakmp.Payload{n})
	e.Stats.Sent.Add(1)
	if err := e.sendFrom(src, msg, to, natt); err != nil {
		e.warn("IKE send failed", "peer", to, "err", err)
	}
}
