package daemon

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

// The life of a negotiated SA pair (see README, "SA lifecycle"):
//
//   - A conn that is routed or up owns its policies, routes and filter
//     entries. They are installed when the conn is routed (auto=start and
//     auto=route at start) or when its first SA is installed, and removed
//     only when the conn is taken down, removed by reload, or the daemon
//     stops. Removing an SA never removes them.
//   - Each selector pair of a conn has one stable reqid (as XFRM and
//     strongSwan have): its Out and In policies stay, the SAs under it
//     change. The data plane sends on the newest usable outbound SA of the
//     reqid, so a rekeyed SA takes the traffic as soon as it exists
//     (make-before-break), and every inbound SA of the reqid passes the
//     inbound policy check, so the old one keeps accepting in-flight
//     packets until the key manager deletes it.
//   - Routes into the TUN are reference-counted across conns, so that two
//     conns to one remote subnet do not take each other's route.
//   - With a policy and no usable SA, the data plane drops the packet
//     (trap policies hold it and ask IKE); the filter's guard drops
//     cleartext to protected prefixes that would leave through another
//     interface, also after a crash.

// routeTable is what the daemon needs of netio.Router.
type routeTable interface {
	AddRoute(netio.Route) error
	DelRoute(netip.Prefix) error
	Close() error
}

// cleartextFilter is what the daemon needs of netio.Filter.
type cleartextFilter interface {
	AddConn(name string, remotes []netip.Prefix) error
	// AddConns is AddConn for many conns in few transactions; it
	// returns the errors by conn.
	AddConns(conns []netio.ConnPrefixes) map[string]error
	RemoveConn(name string) error
	Dropped(name string) (uint64, error)
	Guarded(name string) (uint64, error)
	// Counts returns every conn's counters at once (status).
	Counts() (map[string]netio.FilterCounts, error)
	// Owned reports whether the daemon owns the table (netio/nftown.go).
	Owned() bool
	// Gone reports whether another process deleted the (unowned) table
	// while the daemon ran and it could not be restored; Restores how
	// many times it was restored (netio/nftwatch.go).
	Gone() bool
	Restores() int
	Close() error
}

// selKey identifies one selector pair of a conn; its reqid is stable.
type selKey struct {
	conn          string
	local, remote netip.Prefix
	proto         uint8
	lport, rport  uint16
}

// policyPair is the Out and In protect policies of one selector pair.
type policyPair struct {
	key   selKey
	reqid uint32
	ids   [2]uint64 // Out, In
	tmpl  spd.Template
	trap  bool
}

func childKey(ch *ike.ChildSA) string { return fmt.Sprintf("%s/%08x", ch.Conn, ch.InSPI) }

func childSel(ch *ike.ChildSA) selKey {
	return selKey{conn: ch.Conn, local: ch.LocalTS.Masked(), remote: ch.RemoteTS.Masked(),
		proto: ch.Proto8, lport: ch.LocalPort, rport: ch.RemotePort}
}

// trapConn reports whether conn c's policies trap (negotiate on the first
// packet and hold packets meanwhile) instead of only dropping: auto=route,
// and dpdaction=hold.
func trapConn(c *ConnSpec) bool {
	if c == nil || c.IKE == nil {
		return false
	}
	return c.Auto == "route" || c.IKE.DPDAction == "hold"
}

// routedAtStart reports whether IKE conn c is routed as soon as the daemon
// starts: its traffic is protected (held or dropped) before the first SA.
func routedAtStart(c *ConnSpec) bool {
	return c.IKE != nil && c.IKEUnsupported == "" && (c.Auto == "start" || c.Auto == "route") &&
		c.Remote.IsValid() && !c.Remote.IsUnspecified()
}

// activeLocked returns conn name's installed state, creating it (routed,
// no SAs yet) when missing.
func (d *Daemon) activeLocked(name string) *activeConn {
	if a := d.active[name]; a != nil {
		return a
	}
	delete(d.guardKept, name)
	a := &activeConn{spec: d.conns.Conns[name], since: d.opts.Clock.Now().Format("2006-01-02 15:04:05"),
		pairs: map[selKey]*policyPair{}}
	if a.spec == nil {
		a.spec = &ConnSpec{Name: name}
	}
	d.active[name] = a
	return a
}

// reqidLocked returns the stable reqid of a selector pair.
func (d *Daemon) reqidLocked(k selKey) uint32 {
	if id, ok := d.reqids[k]; ok {
		return id
	}
	d.reqid++
	d.reqids[k] = d.reqid
	d.reqConn[d.reqid] = k.conn
	return d.reqid
}

// pairLocked returns the policies of selector pair k of conn a, installing
// them (Out and In) when missing or when their template changed.
func (d *Daemon) pairLocked(a *activeConn, k selKey, tmpl spd.Template, trap bool) (*policyPair, error) {
	if pp := a.pairs[k]; pp != nil && pp.tmpl == tmpl {
		return pp, nil
	}
	pp := a.pairs[k]
	if pp == nil {
		pp = &policyPair{key: k, reqid: d.reqidLocked(k)}
	}
	for i, dir := range []spd.Direction{spd.Out, spd.In} {
		t := tmpl
		if dir == spd.In {
			t.TunnelSrc, t.TunnelDst = tmpl.TunnelDst, tmpl.TunnelSrc
		}
		pol := &spd.Policy{Name: k.conn, Dir: dir, Action: spd.Protect, ReqID: pp.reqid, Trap: trap && dir == spd.Out,
			Sel: spd.Selector{Local: k.local, Remote: k.remote, Proto: k.proto,
				LocalPorts: portRange(k.lport), RemotePorts: portRange(k.rport)},
			Templates: []spd.Template{t}}
		if pp.ids[i] != 0 {
			if err := d.spd.Replace(pp.ids[i], pol); err != nil {
				return nil, fmt.Errorf("policy: %w", err)
			}
			continue
		}
		id, err := d.spd.Add(pol)
		if err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		}
		pp.ids[i] = id
	}
	pp.tmpl, pp.trap = tmpl, trap
	a.pairs[k] = pp
	if a.reqid == 0 {
		a.reqid = pp.reqid
	}
	return pp, nil
}

func template(proto sad.Proto, mode sad.Mode, local, remote netip.Addr) spd.Template {
	t := spd.Template{Proto: 50, Mode: spd.TemplateTransport, TunnelSrc: local, TunnelDst: remote}
	if proto == sad.AH {
		t.Proto = 51
	}
	if mode == sad.Tunnel {
		t.Mode = spd.TemplateTunnel
	}
	return t
}

// addRouteLocked routes rt into the TUN for conn a (reference-counted
// across conns).
func (d *Daemon) addRouteLocked(a *activeConn, rt netio.Route) error {
	rt.Dst = rt.Dst.Masked()
	for _, have := range a.routes {
		if have.Dst == rt.Dst {
			return nil
		}
	}
	if d.routeRefs[rt.Dst] == 0 {
		if err := d.router.AddRoute(rt); err != nil {
			return err
		}
	}
	d.routeRefs[rt.Dst]++
	a.routes = append(a.routes, rt)
	return nil
}

// delRoutesLocked drops conn a's references to its routes, removing a
// route when no conn needs it any more.
func (d *Daemon) delRoutesLocked(a *activeConn) {
	for _, rt := range a.routes {
		d.routeRefs[rt.Dst]--
		if d.routeRefs[rt.Dst] > 0 {
			continue
		}
		delete(d.routeRefs, rt.Dst)
		if err := d.router.DelRoute(rt.Dst); err != nil {
			d.log.Warn("remove route", "conn", a.spec.Name, "dst", rt.Dst, "err", err)
		}
	}
	a.routes = nil
}

// guardLocked (re)writes conn a's filter entries for every remote prefix
// it protects.
func (d *Daemon) guardLocked(a *activeConn) error {
	seen := map[netip.Prefix]bool{}
	var remotes []netip.Prefix
	add := func(p netip.Prefix) {
		if p = p.Masked(); p.IsValid() && !seen[p] {
			seen[p] = true
			remotes = append(remotes, p)
		}
	}
	for _, p := range a.guarded {
		add(p)
	}
	for _, pp := range a.pairs {
		add(pp.key.remote)
	}
	if len(remotes) == len(a.guarded) && a.filtered {
		return nil
	}
	a.guarded, a.filtered = remotes, true
	if d.guardBatch != nil {
		d.guardBatch.add(a.spec.Name, remotes)
		return nil
	}
	return d.filter.AddConn(a.spec.Name, remotes)
}

// guardBatch collects the filter entries guardLocked writes while many
// conns are routed at once (start, reload), for one Filter.AddConns: one
// nftables transaction per conn rebuilt every chain each time, O(conns^2)
// in all. The entries are written before d.mu is released, so no SA of
// those conns is installed (which takes d.mu) before its guard is there;
// until then the conns' routes and policies already keep their traffic
// in the TUN, as before the batch.
type guardBatch struct {
	conns []netio.ConnPrefixes
	at    map[string]int // index in conns; a conn written again replaces its entry
}

func (b *guardBatch) add(name string, remotes []netip.Prefix) {
	cp := netio.ConnPrefixes{Name: name, Remotes: slices.Clone(remotes)}
	if i, ok := b.at[name]; ok {
		b.conns[i] = cp
		return
	}
	b.at[name] = len(b.conns)
	b.conns = append(b.conns, cp)
}

// batchGuardsLocked starts collecting guardLocked's writes; the returned
// function writes them (with d.mu still held) and logs what failed.
func (d *Daemon) batchGuardsLocked() (flush func()) {
	if d.guardBatch != nil {
		return func() {} // an outer batch writes them
	}
	d.guardBatch = &guardBatch{at: map[string]int{}}
	return func() {
		b := d.guardBatch
		d.guardBatch = nil
		if len(b.conns) == 0 {
			return
		}
		for name, err := range d.filter.AddConns(b.conns) {
			d.log.Error("route conn", "conn", name, "err", fmt.Errorf("filter: %w", err))
		}
	}
}

// routeConnLocked routes IKE conn c: its policies (trapping or dropping),
// routes and filter entries are installed before any SA exists, so that
// its traffic is never sent in the clear while it is negotiated.
func (d *Daemon) routeConnLocked(c *ConnSpec) error {
	a := d.activeLocked(c.Name)
	a.spec = c
	tmpl := template(ikeProto(c), c.Mode, c.Local, c.Remote)
	for _, sel := range selectors(c) {
		k := selKey{conn: c.Name, local: sel[0], remote: sel[1], proto: c.Proto, lport: c.LocalPort, rport: c.RemotePort}
		if _, err := d.pairLocked(a, k, tmpl, trapConn(c)); err != nil {
			return fmt.Errorf("conn %s: %w", c.Name, err)
		}
	}
	for _, rt := range d.routes(c) {
		if err := d.addRouteLocked(a, rt); err != nil {
			return fmt.Errorf("conn %s: route %v: %w", c.Name, rt.Dst, err)
		}
	}
	for _, p := range d.protected(c) {
		a.guarded = append(a.guarded, p)
	}
	a.filtered = false
	if err := d.guardLocked(a); err != nil {
		return fmt.Errorf("conn %s: filter: %w", c.Name, err)
	}
	return nil
}

func ikeProto(c *ConnSpec) sad.Proto {
	if c.IKE != nil && len(c.IKE.AH) > 0 && len(c.IKE.ESP) == 0 {
		return sad.AH
	}
	return sad.ESP
}

// hardLife is a negotiated SA's hard lifetime in the data plane: past it
// the SA fails closed and the key manager removes the pair. The key
// manager's own timer removes it by time; the SAD's time limit is the
// backstop.
func hardLife(ch *ike.ChildSA) sad.Lifetime {
	return sad.Lifetime{Time: ch.Lifetime, Bytes: ch.LifeBytes, Packets: ch.LifePackets}
}

// softLife is where the data plane asks the key manager to rekey (bytes
// and packets; the key manager times rekeys by time itself).
func softLife(ch *ike.ChildSA) sad.Lifetime {
	return sad.Lifetime{Bytes: ch.SoftBytes, Packets: ch.SoftPackets}
}

// onSAEvent hands the SAD's lifetime events of negotiated SAs to the key
// manager: soft (and sequence numbers running out) rekeys, hard removes.
func (d *Daemon) onSAEvent(ev sad.Event) {
	d.log.Info("SA event", "event", ev.Kind.String(), "conn", ev.SA.Conn, "spi", fmt.Sprintf("%08x", ev.SA.SPI))
	d.mu.Lock()
	e := d.ike
	conn, ok := d.conns.Conns[ev.SA.Conn]
	d.mu.Unlock()
	if e == nil || !ok || conn.IKE == nil {
		return
	}
	switch ev.Kind {
	case sad.SoftExpired, sad.SeqExhausted:
		e.SoftExpire(ev.SA.Conn, ev.SA.SPI)
	case sad.HardExpired:
		e.HardExpire(ev.SA.Conn, ev.SA.SPI)
	}
}

// ikeInstaller puts negotiated SAs into the SAD under their conn's stable
// policies.
type ikeInstaller struct{ d *Daemon }

func (i ikeInstaller) AllocSPI(proto ike.Proto) (uint32, error) {
	return i.d.sad.AllocSPI(sadProto(proto))
}

func (i ikeInstaller) ReleaseSPI(proto ike.Proto, spi uint32) {
	i.d.sad.ReleaseSPI(spi, sadProto(proto))
}

// InstallInbound installs the inbound SA (and, if new, the policies of its
// selector pair) first, so the peer's first packets are accepted.
func (i ikeInstaller) InstallInbound(ch *ike.ChildSA) error {
	d := i.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.ikeChildren[childKey(ch)] != nil {
		return fmt.Errorf("conn %s: SA %08x is installed already", ch.Conn, ch.InSPI)
	}
	d.saveChildKeys(ch)
	a := d.activeLocked(ch.Conn)
	pp, err := d.pairLocked(a, childSel(ch), template(sadProto(ch.Proto), sadMode(ch.Mode), ch.Local, ch.Remote), trapConn(a.spec))
	if err != nil {
		return fmt.Errorf("conn %s: %w", ch.Conn, err)
	}
	in := &sad.SA{SPI: ch.InSPI, Proto: sadProto(ch.Proto), Mode: sadMode(ch.Mode), Src: ch.Remote, Dst: ch.Local, ReqID: pp.reqid,
		Dir: sad.Inbound, Conn: ch.Conn, Encap: sadEncap(ch.Encap, true), Hard: hardLife(ch), Soft: softLife(ch)}
	if in.Replay, err = sad.NewWindow(ch.ReplayWindow, false); err != nil {
		return err
	}
	if in.ESP, in.AH, err = childSuites(ch, ch.In); err != nil {
		return fmt.Errorf("inbound suite: %w", err)
	}
	if err := d.addInboundLocked(in); err != nil {
		return err
	}
	ic := &installedChild{ch: ch, in: in, reqid: pp.reqid}
	d.ikeChildren[childKey(ch)] = ic
	a.children = append(a.children, ic)
	// Route and guard now, not only with the outbound SA: the peer may
	// send before our outbound SA exists (a responder installs it at QM3),
	// and the answers must meet the policy (dropped, no SA yet), not the
	// main table's default route.
	if err := d.routeChildLocked(a, ch); err != nil {
		d.log.Warn("conn installed incompletely", "conn", ch.Conn, "err", err)
	}
	return nil
}

// routeChildLocked routes child ch's remote selector into the TUN and
// guards it (idempotent).
func (d *Daemon) routeChildLocked(a *activeConn, ch *ike.ChildSA) error {
	rt := netio.Route{Dst: ch.RemoteTS.Masked(), Src: ch.Local}
	if ch.Mode == ike.ModeTunnel {
		rt.Src = localAddrIn([]netip.Prefix{ch.LocalTS})
	}
	var errs []error
	if err := d.addRouteLocked(a, rt); err != nil {
		errs = append(errs, fmt.Errorf("route %v: %w", rt.Dst, err))
	}
	if err := d.guardLocked(a); err != nil {
		errs = append(errs, fmt.Errorf("filter: %w", err))
	}
	return errors.Join(errs...)
}

// InstallOutbound installs the outbound SA: from then on the data plane
// sends the selector pair's traffic on it (the newest SA of the reqid).
// The conn's route and filter entries are added if they are not there yet,
// and packets held for the reqid are sent.
func (i ikeInstaller) InstallOutbound(ch *ike.ChildSA) error {
	d := i.d
	d.mu.Lock()
	ic := d.ikeChildren[childKey(ch)]
	if ic == nil || ic.ch != ch {
		d.mu.Unlock()
		return errors.New("outbound SA before inbound SA")
	}
	out := &sad.SA{SPI: ch.OutSPI, Proto: sadProto(ch.Proto), Mode: sadMode(ch.Mode), Src: ch.Local, Dst: ch.Remote, ReqID: ic.reqid,
		Dir: sad.Outbound, Conn: ch.Conn, Encap: sadEncap(ch.Encap, false), Hard: hardLife(ch), Soft: softLife(ch)}
	var err error
	if out.ESP, out.AH, err = childSuites(ch, ch.Out); err != nil {
		d.mu.Unlock()
		return fmt.Errorf("outbound suite: %w", err)
	}
	if err := d.sad.Add(out); err != nil {
		d.mu.Unlock()
		return fmt.Errorf("outbound SA: %w", err)
	}
	ic.out = out
	err = d.routeChildLocked(d.activeLocked(ch.Conn), ch)
	d.updownLocked(true, ic)
	reqid := ic.reqid
	plane := d.plane
	d.mu.Unlock()
	if plane != nil {
		plane.ReleaseHeld(reqid)
	}
	if err != nil {
		// The SAs stay: the policies already keep the traffic from leaving
		// in the clear; say what is missing.
		d.log.Warn("conn installed incompletely", "conn", ch.Conn, "err", err)
	}
	return nil
}

// Remove removes one negotiated SA pair: the outbound SA first (traffic
// moves to the reqid's other SAs, or is dropped, never sent in the clear),
// then the inbound SA. The conn's policies, routes and filter entries stay.
func (i ikeInstaller) Remove(ch *ike.ChildSA) {
	d := i.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if ic := d.ikeChildren[childKey(ch)]; ic != nil && ic.ch == ch {
		d.removeChildLocked(ic)
	}
}

func (d *Daemon) removeChildLocked(ic *installedChild) {
	ch := ic.ch
	if ic.out != nil {
		d.updownLocked(false, ic)
		d.sad.Delete(ic.out.SPI, ic.out.Proto, ic.out.Dst)
		ic.out = nil
	}
	if ic.in != nil {
		d.deleteInboundLocked(ic.in)
		ic.in = nil
	}
	delete(d.ikeChildren, childKey(ch))
	if a := d.active[ch.Conn]; a != nil {
		a.children = slices.DeleteFunc(a.children, func(c *installedChild) bool { return c == ic })
	}
	if d.plane != nil && d.sad.Outbound(ic.reqid) == nil {
		// The next packet may ask IKE again (trap policies).
		d.plane.ClearTrap(ic.reqid)
	}
	if a := d.active[ch.Conn]; a != nil && len(a.children) == 0 && !keepRouted(a.spec) {
		d.releaseLocked(a)
	}
}

// keepRouted reports whether conn c keeps its policies and routes when its
// last SA goes: conns routed at start (their traffic is always protected)
// and trapping conns (dpdaction=hold).
func keepRouted(c *ConnSpec) bool { return routedAtStart(c) || trapConn(c) }

// releaseLocked removes the policies and routes of a conn whose last SA
// went (Delete from the peer, expiry, DPD clear), so that another conn may
// carry the same traffic, but keeps its filter guard: until the conn is up
// again or taken down, cleartext to its protected prefixes is dropped.
func (d *Daemon) releaseLocked(a *activeConn) {
	d.dropPoliciesLocked(a)
	delete(d.active, a.spec.Name)
	d.guardKept[a.spec.Name] = true
	d.log.Info("conn has no SA left: policies and routes removed, cleartext to its prefixes stays blocked until it is up again or taken down",
		"conn", a.spec.Name)
}

// dropPoliciesLocked removes conn a's routes (those no other conn needs)
// and the policies of its selector pairs; their reqids stay reserved for
// the pairs.
func (d *Daemon) dropPoliciesLocked(a *activeConn) {
	d.delRoutesLocked(a)
	for _, pp := range a.pairs {
		for _, id := range pp.ids {
			if id != 0 {
				d.spd.Delete(id)
			}
		}
	}
	a.pairs = map[selKey]*policyPair{}
}

// unrouteLocked removes conn a's SAs, policies and routes (those no other
// conn needs); its filter guard stays (forgetGuardLocked lifts it).
func (d *Daemon) unrouteLocked(a *activeConn) {
	for _, k := range slices.Clone(a.children) {
		d.removeChildLocked(k)
	}
	if d.plane != nil {
		for _, pp := range a.pairs {
			d.plane.DropHeld(pp.reqid)
			d.plane.ClearTrap(pp.reqid)
		}
	}
	d.dropPoliciesLocked(a)
	if a.filtered {
		// The guard stays: until the conn is up again, unrouted or
		// removed from the configuration, its traffic is dropped.
		d.guardKept[a.spec.Name] = true
	}
	a.guarded, a.filtered = nil, false
}

// forgetGuardLocked lifts the guard conn name kept after it went down (or
// that a crashed predecessor left): `gosec unroute`, or the conn removed
// from the configuration.
func (d *Daemon) forgetGuardLocked(name string) {
	if !d.guardKept[name] {
		return
	}
	delete(d.guardKept, name)
	if err := d.filter.RemoveConn(name); err != nil {
		d.log.Warn("remove filter", "conn", name, "err", err)
	}
}

// onTrap is the data plane's call when a packet meets a trap policy with no
// SA (it must not block): IKE negotiates the conn; the held packets go out
// when the outbound SA is installed, or are dropped if negotiation fails.
func (d *Daemon) onTrap(reqid uint32) {
	d.mu.Lock()
	name, ok := d.reqConn[reqid]
	if !ok || d.ike == nil || d.negotiating[name] {
		d.mu.Unlock()
		return
	}
	d.negotiating[name] = true
	d.mu.Unlock()
	go func() {
		d.log.Info("on-demand: negotiating for the first packet", "conn", name, "reqid", reqid)
		ctx, cancel := context.WithTimeout(context.Background(), onDemandTimeout)
		err := d.ike.Initiate(ctx, name, func(string) {})
		cancel()
		d.mu.Lock()
		delete(d.negotiating, name)
		if err != nil {
			d.ikeErr[name] = err.Error()
		} else {
			delete(d.ikeErr, name)
		}
		plane := d.plane
		d.mu.Unlock()
		if err != nil {
			d.log.Warn("on-demand negotiation failed; held packets dropped", "conn", name, "err", err)
			if plane != nil {
				plane.DropHeld(reqid)
			}
		}
	}()
}

// onDemandTimeout bounds one on-demand negotiation.
const onDemandTimeout = 30 * time.Second
