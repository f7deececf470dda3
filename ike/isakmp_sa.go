package ike

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	"github.com/gosec-ipsec/gosec/ike/ikecrypto"
	"github.com/gosec-ipsec/gosec/ike/isakmp"
	"github.com/gosec-ipsec/gosec/internal/clock"
)

// The ISAKMP SA (phase 1): its state, keys, half-open bookkeeping and
// the encryption of its messages. Its exchanges are tasks
// (taskmanager.go): Main Mode (main_mode.go), Quick Mode
// (quick_mode.go), Informational (informational.go).

// p1 is one ISAKMP SA (phase 1) and the Quick Modes under it.
type p1 struct {
	e         *Engine
	conn      *Conn
	initiator bool
	// phase1 is the exchange that establishes the SA (Main Mode), its
	// task for message ID 0; it stays, done, once the SA is up (it
	// answers a duplicate of the peer's last message).
	phase1 phase1Task
	icky   [8]byte
	rcky   [8]byte
	// peer is where messages go (its port changes on the NAT-T float).
	peer  netip.AddrPort
	local netip.AddrPort
	natt  bool // floated to the NAT-T port

	peerNATT      int // 0 none, 1 RFC 3947, 2 drafts
	peerDPD       bool
	weBehindNAT   bool
	peerBehindNAT bool

	suite p1Suite
	// km is the key material; auth the method that authenticates the
	// SA (its binding identifies the credential).
	km     keymat
	auth   authenticator
	peerID string
	// peerIDPay is the peer's authenticated phase-1 ID; localIDKey and
	// peerIDKey identify the pair of identities (idKey form). A Quick
	// Mode, Delete or INITIAL-CONTACT under this SA acts only within
	// what these and auth authorize.
	peerIDPay             *isakmp.ID
	localIDKey, peerIDKey string
	// infoIDs are the message IDs of the last authenticated protected
	// Informationals (replay protection, info.go).
	infoIDs []uint32
	// floatTo is where the message being handled came from, over NAT-T;
	// it becomes peer only once that message authenticates (authentic).
	floatTo netip.AddrPort

	// halfOpenCost is what the SA counts against MaxHalfOpenBytes while
	// it is a half-open responder SA (its task's copy of the SA payload).
	halfOpenCost int

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

func (p *p1) established() bool { return p.phase1.done() }

func (p *p1) cookieString() string {
	return hex.EncodeToString(p.icky[:]) + "_i:" + hex.EncodeToString(p.rcky[:]) + "_r"
}

// stopTimers stops the phase-1 exchange's timer and the SA's own
// (keepalive, lifetime, reauthentication, DPD).
func (p *p1) stopTimers() {
	p.phase1.flight().stop()
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

// failP1 ends a phase-1 negotiation; a timeout of an SA we initiate is
// retried while keyingtries allow.
func (e *Engine) failP1(p *p1, err error, timeout bool) {
	e.Stats.Failed.Add(1)
	name := "?"
	if p.conn != nil {
		name = p.conn.Name
	}
	e.log.Warn("ISAKMP SA failed", "conn", name, "peer", p.peer, "state", p.phase1.String(), "err", err)
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
			np := e.startPhase1(p.conn, nil, p.attempt+1)
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

func bytesEq(a, b []byte) bool { return string(a) == string(b) }

func (p *p1) header(x isakmp.ExchangeType, msgID uint32, enc bool) isakmp.Header {
	h := isakmp.Header{ICookie: p.icky, RCookie: p.rcky, Version: 0x10, Exchange: x, MessageID: msgID}
	if enc {
		h.Flags = isakmp.FlagEncryption
	}
	return h
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

// deriveKeys computes SKEYID and friends after the KE exchange of p's
// phase-1 task (in: cookies and public values; ni, nr: the nonces), with
// the pre-shared key of p's conn; gxy is wiped.
func (e *Engine) deriveKeys(p *p1, in authInput, ni, nr, gxy []byte) error {
	psk, err := e.psk(p)
	if err != nil {
		wipe(gxy)
		return err
	}
	keyLen, err := p.suite.Cipher.KeyLen(p.suite.KeyBits)
	if err != nil {
		wipe(gxy)
		return err
	}
	p.auth = newPSKAuth(psk)
	p.km.hash = p.suite.Hash
	var export func([]byte)
	if e.cfg.SaveKeys != nil {
		icky := p.icky
		export = func(key []byte) { e.cfg.SaveKeys(icky, key) }
	}
	var logKeys keyLogger
	if e.cfg.LogKeys {
		logKeys = func(skeyid, d, a, ke, key, iv []byte) {
			e.log.Debug("phase-1 keys", hexKeys(skeyid, d, a, ke, key, iv)...)
		}
	}
	return p.km.derive(p.auth, in, ni, nr, gxy, p.suite.Cipher, keyLen, export, logKeys)
}

// seal encrypts a payload chain under p's key with iv and returns the
// message and the last ciphertext block (the next IV).
func (e *Engine) seal(p *p1, h isakmp.Header, payloads []byte, first isakmp.PayloadType, iv []byte) ([]byte, []byte) {
	bs := p.km.cbc.BlockSize()
	body := ikecrypto.Pad(payloads, bs)
	h.Next = first
	h.Flags |= isakmp.FlagEncryption
	h.Length = uint32(isakmp.HeaderLen + len(body))
	msg := make([]byte, isakmp.HeaderLen+len(body))
	h.Put(msg)
	copy(msg[isakmp.HeaderLen:], body)
	p.km.cbc.Encrypt(iv, msg[isakmp.HeaderLen:])
	last := append([]byte(nil), msg[len(msg)-bs:]...)
	return msg, last
}

// open decrypts the body of msg with iv; it returns the plaintext and the
// last ciphertext block.
func (e *Engine) open(p *p1, msg []byte, iv []byte) ([]byte, []byte, error) {
	if p.km.cbc == nil {
		return nil, nil, errors.New("encrypted message before keys exist")
	}
	bs := p.km.cbc.BlockSize()
	body := msg[isakmp.HeaderLen:]
	if len(body) == 0 || len(body)%bs != 0 {
		return nil, nil, fmt.Errorf("encrypted body of %d octets is not a multiple of the %d-octet block", len(body), bs)
	}
	last := append([]byte(nil), body[len(body)-bs:]...)
	plain := append([]byte(nil), body...)
	if err := p.km.cbc.Decrypt(iv, plain); err != nil {
		return nil, nil, err
	}
	return plain, last, nil
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
	p.phase1.complete()
	p.estTime = e.cfg.Clock.Now()
	p.estSeq = e.nextSeq()
	e.Stats.Established.Add(1)
	e.dropHalfOpen(p)
	// The phase-1 exchange is over: SKEYID served only its proofs (and
	// the task forgot its nonces, public values and SA payload).
	p.km.authenticated()
	p.phase1.forget()
	e.classify(p)
	nat := ""
	if p.natt {
		nat = fmt.Sprintf(", NAT-T on port %d", e.cfg.NATTPort)
	}
	e.observe(ExchangeEvent{Peer: p.peer.Addr(), Conn: p.conn.Name, Kind: "main", Result: "established", Latency: p.estTime.Sub(p.created)})
	e.log.Info("ISAKMP SA established", "conn", p.conn.Name, "peer", p.peer, "peer_id", p.peerID, "state", p.phase1.String(),
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

// halfOpenEntryBytes is what one half-open responder SA costs besides
// the SA payload it keeps, checked by TestHalfOpenBytes (about 1.9 KB
// measured on amd64 with the SA payload, 1965 octets at 04:40 UTC on
// 2026-12-03, 1893 before Main Mode became a task of its own): the p1
// struct (712 octets) and its Main Mode task (296), its MM2 for retransmission
// (about 120), its empty Quick Mode map, its half-open timer, and its
// entries in sas, classes, halfOpen and perPeer. At the default
// MaxHalfOpen of 8192 entries that is at most 8192 x 2 KB = 16 MB, plus
// at most MaxHalfOpenBytes (4 MB) of SA payloads: 20 MB in all, whatever
// the peers send (each entry used to pin its whole first message, up to
// 64 KB: 512 MB). Entries past MM3 (at most MaxHalfOpenPerPeer per
// address) also hold their 3 Diffie-Hellman values and keys, about 2 KB
// more.
const halfOpenEntryBytes = 2048

func sha256Sum(b []byte) [32]byte { return sha256.Sum256(b) }

// hashEqual compares a received hash with the expected one in constant
// time.
func hashEqual(want, got []byte) bool { return subtle.ConstantTimeCompare(want, got) == 1 }

// admitHalfOpen bounds the responder SAs that are still negotiating;
// cost is what p keeps of the peer's first message.
func (e *Engine) admitHalfOpen(p *p1, cost int) {
	if e.perPeer[p.peer.Addr()] >= e.cfg.MaxHalfOpenPerPeer {
		e.evictHalfOpen(func(q *p1) bool { return q.peer.Addr() == p.peer.Addr() })
	}
	for len(e.halfOpen) > 0 && (len(e.halfOpen) >= e.cfg.MaxHalfOpen || e.halfOpenBytes+cost > e.cfg.MaxHalfOpenBytes) {
		e.evictHalfOpen(func(*p1) bool { return true })
	}
	e.halfOpen = append(e.halfOpen, p)
	p.halfOpenCost = cost
	e.halfOpenBytes += cost
	e.Stats.HalfOpen.Add(1)
	e.perPeer[p.peer.Addr()]++
}

// evictHalfOpen forgets the oldest half-open SA that match selects,
// preferring those that answered only the peer's first message.
func (e *Engine) evictHalfOpen(match func(*p1) bool) {
	victim := -1
	for i, q := range e.halfOpen {
		if !match(q) {
			continue
		}
		if q.phase1.answeredFirst() {
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

func (e *Engine) sortedSAs() []*p1 {
	out := make([]*p1, 0, len(e.sas))
	for _, p := range e.sas {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].created.Before(out[j].created) })
	return out
}

// forget drops a phase-1 SA and its timers.
func (e *Engine) forget(p *p1) {
	p.stopTimers()
	p.km.wipe()
	p.phase1.forget()
	e.dropQuickBacklog(p)
	if fs := p.followers; len(fs) > 0 {
		p.followers = nil
		e.releaseFollowers(fs, errors.New("ISAKMP SA deleted"), true)
	}
	for _, q := range p.qms {
		q.x.stop()
		q.wipeAll()
		switch {
		case q.inSPI != 0 && !q.installed:
			e.releaseSPI(q)
		case q.installed && q.state == quickR1 && q.child != nil,
			q.outPending() && q.child != nil:
			// A responder's inbound SA, installed at QM1, whose QM3
			// never came, or an initiator's waiting for its outbound SA
			// (Config.OutboundDelay): no child owns it.
			e.cfg.Installer.Remove(q.child)
		}
	}
	if e.sas[p.key()] == p {
		delete(e.sas, p.key())
		e.unclassify(p)
	}
	if k := (respKey{p.icky, p.peer.Addr()}); !p.initiator && e.responders[k] == p {
		delete(e.responders, k)
	}
	e.dropHalfOpen(p)
}

// dropHalfOpen takes p off the half-open list.
func (e *Engine) dropHalfOpen(p *p1) {
	for i, h := range e.halfOpen {
		if h == p {
			e.halfOpen = append(e.halfOpen[:i], e.halfOpen[i+1:]...)
			e.halfOpenBytes -= p.halfOpenCost
			e.Stats.HalfOpen.Add(-1)
			if e.perPeer[p.peer.Addr()]--; e.perPeer[p.peer.Addr()] <= 0 {
				delete(e.perPeer, p.peer.Addr())
			}
			return
		}
	}
}

func (e *Engine) transmit(p *p1, msg []byte) {
	e.Stats.Sent.Add(1)
	if err := e.sendFrom(p.local.Addr(), msg, p.peer, p.natt); err != nil {
		e.warn("IKE send failed", "peer", p.peer, "err", err)
	}
}

// authentic is called once the message being handled has authenticated
// (its HASH verified): only then may it change what we know of the peer.
func (e *Engine) authentic(p *p1) {
	if p.floatTo.IsValid() {
		p.natt = true
		p.peer = p.floatTo
		p.local = netip.AddrPortFrom(p.local.Addr(), e.cfg.NATTPort)
		p.floatTo = netip.AddrPort{}
	}
}

func (e *Engine) randomMsgID(p *p1) uint32 {
	for {
		id := be32u(e.random(4))
		if _, used := p.qms[id]; id != 0 && !used {
			return id
		}
	}
}
