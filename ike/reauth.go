package ike

import "time"

// newestP1 returns the most recently established ISAKMP SA, not past its
// lifetime, that authorizes conn (nil: any conn) and, unless identity is
// empty, has that identity pair.
func (e *Engine) newestP1(identity string, conn *Conn) *p1 {
	now := e.cfg.Clock.Now()
	var best *p1
	for _, p := range e.sas {
		if !p.established() || (identity != "" && p.identity() != identity) {
			continue
		}
		if conn != nil && !e.authorizes(p, conn) {
			continue
		}
		if p.suite.Life > 0 && now.Sub(p.estTime) >= p.suite.Life {
			continue
		}
		if best == nil || p.estSeq > best.estSeq {
			best = p
		}
	}
	return best
}

// p1ForChild is the ISAKMP SA that speaks for child c: the one that made
// it while it lives, else the newest with the same identities (after a
// reauthentication, strongSwan's IKEv1 adopts children the same way).
func (e *Engine) p1ForChild(c *child) *p1 {
	if c.p != nil && c.p.established() && e.sas[c.p.key()] == c.p {
		return c.p
	}
	if c.identity == "" {
		return nil
	}
	return e.newestP1(c.identity, nil)
}

// armReauth schedules the reauthentication of ISAKMP SA p: a new Main
// Mode with the same peer while p still works, at the same point of its
// lifetime as a child's rekey (rekeyTimeFor with ikelifetime; the
// initiating side first), so that a rekey never waits for a Main Mode.
func (e *Engine) armReauth(p *p1) {
	at := e.rekeyTimeFor(p.conn, p.suite.Life, p.initiator)
	if at <= 0 {
		return
	}
	p.reauth = e.cfg.Clock.AfterFunc(at, func() { e.post(func() { e.reauthenticate(p) }) })
}

// reauthenticate starts the Main Mode that replaces p, unless p is gone,
// already replaced (by us or the peer), or no IPsec SA depends on it.
func (e *Engine) reauthenticate(p *p1) {
	if e.sas[p.key()] != p || !p.established() || p.reauthed {
		return
	}
	id := p.identity()
	for _, q := range e.sas {
		if q != p && q.identity() == id && q.estSeq > p.estSeq {
			return // a newer ISAKMP SA exists (the peer reauthenticated)
		}
		if q != p && q.reauthOnly && q.conn == p.conn && !q.established() {
			return // ours is under way
		}
	}
	used := false
	for _, c := range e.allChildren() {
		if c.identity == id && !c.rekeyed {
			used = true
		}
	}
	if !used {
		return
	}
	p.reauthed = true
	left := time.Duration(0)
	if p.suite.Life > 0 {
		left = p.suite.Life - e.cfg.Clock.Now().Sub(p.estTime)
	}
	e.log.Info("reauthenticating ISAKMP SA", "conn", p.conn.Name, "peer", p.peer, "cookies", p.cookieString(), "life_left", left)
	np := e.startPhase1(p.conn, nil, 1)
	np.reauthOnly = true
}
