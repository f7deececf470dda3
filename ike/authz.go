package ike

import (
	"crypto/sha256"
	"crypto/subtle"
	"strings"

	"github.com/gosec-ipsec/gosec/ike/isakmp"
)

// idKey renders a phase-1 ID as a comparable key: its type and its data,
// names case-folded (RFC 2407 4.6.2.1 FQDNs compare case-insensitively).
func idKey(id *isakmp.ID) string {
	d := string(id.Data)
	if id.IDType == idFQDN || id.IDType == idUserFQDN {
		d = strings.ToLower(d)
	}
	return string([]byte{id.IDType}) + d
}

// identity is the pair of authenticated identities of an ISAKMP SA; SAs
// made under it belong to it.
func (p *p1) identity() string { return p.localIDKey + "\x00" + p.peerIDKey }

// authorizes reports whether ISAKMP SA p may negotiate IPsec SAs for conn
// c: the same endpoints, the peer's authenticated ID matches c's rightid,
// our ID under p is c's leftid, and c's pre-shared key is the one that
// authenticated p. A Quick Mode may switch conns (as Pluto does) only
// within what the Main Mode authenticated.
func (e *Engine) authorizes(p *p1, c *Conn) bool {
	if c == p.conn {
		return true
	}
	if len(c.IKE) == 0 || !p.established() || p.peerIDPay == nil {
		return false
	}
	return e.sameAuth(p, c)
}

// sameAuth is authorizes without the state checks: endpoints, IDs and
// pre-shared key of c against what p authenticated.
func (e *Engine) sameAuth(p *p1, c *Conn) bool {
	if c.Remote.IsValid() && c.Remote != p.peer.Addr() {
		return false
	}
	if c.Local.IsValid() && p.local.Addr().IsValid() && !p.local.Addr().IsUnspecified() && c.Local != p.local.Addr() {
		return false
	}
	if !idMatches(c.RemoteID, p.peer.Addr(), p.peerIDPay) {
		return false
	}
	if idKey(idPayload(c.LocalID, p.local.Addr())) != p.localIDKey {
		return false
	}
	k, err := e.pskFor(c, p.peer.Addr())
	if err != nil {
		return false
	}
	if p.auth == nil {
		return false
	}
	sum, bound := sha256.Sum256(k), p.auth.binding()
	return subtle.ConstantTimeCompare(sum[:], bound[:]) == 1
}

// refineConn finds, for a responder SA whose peer ID does not match its
// conn's rightid, another conn the authenticated ID and key fit.
func (e *Engine) refineConn(p *p1) *Conn {
	for _, n := range e.order {
		c := e.conns[n]
		if c == p.conn || len(c.IKE) == 0 {
			continue
		}
		if e.sameAuth(p, c) {
			return c
		}
	}
	return nil
}

func (e *Engine) nextSeq() uint64 {
	e.seq++
	return e.seq
}

// wantInitialContact decides whether our MM5 carries INITIAL-CONTACT: as
// strongSwan does (ikev1/tasks/main_mode.c add_initial_contact), only
// when rightid names one identity (no wildcard) and no established ISAKMP
// SA with that pair of identities exists: a second conn between the same
// two gateways must not make the peer drop the first one's SAs.
func (e *Engine) wantInitialContact(p *p1) bool {
	c := p.conn
	if c.RemoteID == "%any" || (c.RemoteID == "" && !c.Remote.IsValid()) {
		return false
	}
	peer := idKey(idPayload(c.RemoteID, c.Remote))
	for _, q := range e.sas {
		if q != p && q.established() && q.localIDKey == p.localIDKey && q.peerIDKey == peer {
			return false
		}
	}
	return true
}
