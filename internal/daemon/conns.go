package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"

	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/internal/conf"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

// Config is the daemon's view of the configuration: every conn resolved
// for this host (which side is local decided, keys decoded).
type Config struct {
	Conns   map[string]*ConnSpec
	Order   []string      // conn names in file order
	Secrets *conf.Secrets // nil when there is no ipsec.secrets
	// Setup holds the config setup keywords (savekeys=, metrics=).
	Setup map[string]string
	// Skipped are the conns the configuration names but gosec left out
	// (a feature it lacks, a host name that did not resolve).
	Skipped []conf.Skipped
	// ConnDebug is each conn's debug= level ("error" .. "debug"); apart
	// from ConnSpec so that changing it does not re-establish the conn.
	ConnDebug map[string]string
}

// ConnSpec is one conn as the daemon runs it.
type ConnSpec struct {
	Name          string
	Auto          string // add, start, route, ignore
	Mode          sad.Mode
	Local, Remote netip.Addr
	LocalSubnets  []netip.Prefix
	RemoteSubnets []netip.Prefix
	// Selector protocol and ports from leftprotoport/rightprotoport.
	Proto                 uint8
	LocalPort, RemotePort uint16
	// Encap sends ESP in UDP (RFC 3948) on these ports.
	Encap *sad.Encap
	// Type is tunnel, transport, passthrough or drop.
	Type string
	// UpDown is this end's updown command (leftupdown/rightupdown).
	UpDown string
	// Proposal is the human-readable algorithm summary for status.
	Proposal string
	// Manual holds the keys of a manually keyed conn; nil for IKE conns.
	Manual *Manual
	// IKE is the key manager's view of an IKE conn; IKEUnsupported says
	// why gosec cannot negotiate it (authby=rsasig, aggressive, ...).
	IKE            *ike.Conn
	IKEUnsupported string
}

// Manual is the keying of a manually keyed conn, seen from this host.
type Manual struct {
	Proto         sad.Proto
	InSPI, OutSPI uint32
	InESP, OutESP esp.Config
	InAH, OutAH   ah.Config
	ReplayWindow  int
	ESN           bool
	// KeyDigest identifies the six keys above (HMAC-SHA-256 under a
	// random key of this process), so that reload and gosec up can tell
	// whether ipsec.conf still holds the same keys once these are wiped.
	KeyDigest [32]byte
	// Wiped: the keys above are zeros. They are wiped as soon as the
	// conns are installed (wipeManualKeys); gosec up reads them again
	// from ipsec.conf.
	Wiped bool
}

// activeConn is what a conn has installed (manual keys, shunt, or IKE:
// routed or up), so that down removes exactly that.
type activeConn struct {
	spec     *ConnSpec
	reqid    uint32 // manual and shunt conns; an IKE conn's first pair
	in, out  *sad.SA
	policies []uint64
	routes   []netio.Route
	since    string
	// IKE conns: the stable policies of each selector pair, the SA pairs
	// negotiated under them, and the prefixes the filter guards.
	pairs    map[selKey]*policyPair
	children []*installedChild
	guarded  []netip.Prefix
	filtered bool // guarded is what the filter holds
}

// installedChild is one negotiated SA pair as the daemon installed it:
// the key manager's ChildSA and what the installer made of it (ike keeps
// no data-plane state). in and out are nil until installed and once
// removed; reqid is the stable request ID of its selector pair.
type installedChild struct {
	ch      *ike.ChildSA
	in, out *sad.SA
	reqid   uint32
}

// autoStart brings up the conns marked auto=start (and, for manually keyed
// conns, auto=route, which needs no negotiation).
func (d *Daemon) autoStart() {
	d.mu.Lock()
	defer d.mu.Unlock()
	defer d.batchGuardsLocked()()
	for _, name := range d.conns.Order {
		c := d.conns.Conns[name]
		if c.IKE != nil {
			if routedAtStart(c) {
				if err := d.routeConnLocked(c); err != nil {
					d.log.Error("route conn", "conn", name, "err", err)
				}
			}
			if c.Auto == "start" && c.IKEUnsupported == "" && d.ike != nil {
				d.ike.Start(name)
			}
			continue
		}
		if c.Auto == "start" || (c.Auto == "route" && c.Manual != nil) {
			if err := d.upLocked(context.Background(), c, func(string) {}); err != nil {
				d.log.Error("auto=start failed", "conn", name, "err", err)
			}
		}
	}
	// The SAs hold their own copies of the manual keys now.
	wipeConfigKeys(d.conns)
}

func (d *Daemon) up(ctx context.Context, name string, progress func(string)) error {
	d.mu.Lock()
	c, ok := d.conns.Conns[name]
	if ok && c.IKE != nil {
		d.mu.Unlock()
		return d.upIKE(ctx, c, progress)
	}
	defer d.mu.Unlock()
	if !ok {
		return fmt.Errorf("no connection named %q (gosec conf check --dump lists them)", name)
	}
	if _, ok := d.active[name]; ok {
		progress(fmt.Sprintf("connection '%s' is already up", name))
		return nil
	}
	if c.Manual == nil || !c.Manual.Wiped {
		defer wipeConfigKeys(d.conns)
		return d.upLocked(ctx, c, progress)
	}
	// The keys were wiped after the last installation: read them again
	// (without d.mu, comparing with a copy of c taken under it).
	loaded := *c
	m := *c.Manual
	loaded.Manual = &m
	d.mu.Unlock()
	fresh, err := d.manualKeysFromFile(&loaded)
	d.mu.Lock()
	if err != nil {
		return err
	}
	defer fresh.Manual.wipe()
	if d.conns.Conns[name] != c {
		return fmt.Errorf("conn %s: the configuration was reloaded meanwhile: try again", name)
	}
	if _, ok := d.active[name]; ok {
		progress(fmt.Sprintf("connection '%s' is already up", name))
		return nil
	}
	return d.upLocked(ctx, fresh, progress)
}

func (d *Daemon) upLocked(ctx context.Context, c *ConnSpec, progress func(string)) error {
	if c.Type == "passthrough" || c.Type == "drop" {
		return d.shuntLocked(c, progress)
	}
	if c.Manual == nil {
		return fmt.Errorf("connection %q needs IKE, which this gosec build does not negotiate yet; only manually keyed conns can be brought up", c.Name)
	}
	m := c.Manual
	d.reqid++
	a := &activeConn{spec: c, reqid: d.reqid}
	progress(fmt.Sprintf("installing manually keyed %s %s SAs for '%s': %v <-> %v", m.Proto, c.Mode, c.Name, c.Local, c.Remote))

	var err error
	a.in, a.out, err = d.manualSAs(c, a.reqid)
	if err != nil {
		return err
	}
	// Install in the order that loses nothing: inbound SA, policies,
	// outbound SA, then the routes that send traffic into the TUN.
	if err := d.addInboundLocked(a.in); err != nil {
		return fmt.Errorf("conn %s: inbound SA: %w", c.Name, err)
	}
	fail := func(err error) error {
		d.remove(a)
		return err
	}
	for _, pol := range d.policies(c, a.reqid) {
		id, err := d.spd.Add(pol)
		if err != nil {
			return fail(fmt.Errorf("conn %s: policy: %w", c.Name, err))
		}
		a.policies = append(a.policies, id)
	}
	if err := d.sad.Add(a.out); err != nil {
		return fail(fmt.Errorf("conn %s: outbound SA: %w", c.Name, err))
	}
	progress(fmt.Sprintf("SAs installed: SPI %08x inbound, %08x outbound, %s", a.in.SPI, a.out.SPI, c.Proposal))
	for _, rt := range d.routes(c) {
		if err := d.addRouteLocked(a, rt); err != nil {
			return fail(fmt.Errorf("conn %s: route %v: %w", c.Name, rt.Dst, err))
		}
	}
	if err := d.filter.AddConn(c.Name, d.protected(c)); err != nil {
		return fail(fmt.Errorf("conn %s: filter: %w", c.Name, err))
	}
	a.since = d.opts.Clock.Now().Format("2006-01-02 15:04:05")
	d.active[c.Name] = a
	progress(fmt.Sprintf("connection '%s' established successfully", c.Name))
	d.log.Info("conn up", "conn", c.Name, "in_spi", fmt.Sprintf("%08x", a.in.SPI), "out_spi", fmt.Sprintf("%08x", a.out.SPI))
	return nil
}

// shuntLocked installs the bypass (type=passthrough) or discard
// (type=drop) policies of a conn: no SAs, no routes.
func (d *Daemon) shuntLocked(c *ConnSpec, progress func(string)) error {
	d.reqid++
	a := &activeConn{spec: c, reqid: d.reqid}
	action := spd.Bypass
	if c.Type == "drop" {
		action = spd.Discard
	}
	for _, pair := range selectors(c) {
		for _, dir := range []spd.Direction{spd.Out, spd.In} {
			id, err := d.spd.Add(&spd.Policy{Name: c.Name, Dir: dir, Action: action,
				Sel: spd.Selector{Local: pair[0], Remote: pair[1], Proto: c.Proto,
					LocalPorts: portRange(c.LocalPort), RemotePorts: portRange(c.RemotePort)}})
			if err != nil {
				d.remove(a)
				return fmt.Errorf("conn %s: policy: %w", c.Name, err)
			}
			a.policies = append(a.policies, id)
		}
	}
	a.since = d.opts.Clock.Now().Format("2006-01-02 15:04:05")
	d.active[c.Name] = a
	progress(fmt.Sprintf("%s policies for '%s' installed", action, c.Name))
	return nil
}

func (d *Daemon) down(name string, progress func(string)) error {
	d.mu.Lock()
	c, ok := d.conns.Conns[name]
	d.mu.Unlock()
	if ok && c.IKE != nil {
		had, err := d.downIKE(context.Background(), name)
		if err != nil {
			return err
		}
		d.mu.Lock()
		_, wasActive := d.active[name]
		d.downLocked(name)
		// As with strongSwan's `ipsec down`, an auto=route conn keeps its
		// trap: the next packet negotiates again.
		retrap := c.Auto == "route" && routedAtStart(c)
		if retrap {
			if err := d.routeConnLocked(c); err != nil {
				d.log.Error("route conn", "conn", name, "err", err)
			}
		}
		d.mu.Unlock()
		switch {
		case had && retrap:
			progress(fmt.Sprintf("connection '%s' closed: Delete sent to the peer, SAs removed; its trap policy stays (auto=route)", name))
		case had:
			progress(fmt.Sprintf("connection '%s' closed: Delete sent to the peer, SAs, policies and routes removed; %s", name, guardNote))
		case wasActive && !retrap:
			progress(fmt.Sprintf("connection '%s' closed: policies and routes removed; %s", name, guardNote))
		default:
			progress(fmt.Sprintf("connection '%s' is not up", name))
		}
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.conns.Conns[name]; !ok {
		if _, ok := d.active[name]; !ok {
			return fmt.Errorf("no connection named %q", name)
		}
	}
	if _, ok := d.active[name]; !ok {
		progress(fmt.Sprintf("connection '%s' is not up", name))
		return nil
	}
	d.downLocked(name)
	progress(fmt.Sprintf("connection '%s' closed: SAs, policies and routes removed; %s", name, guardNote))
	return nil
}

// guardNote tells the administrator what happens to a downed conn's
// traffic.
const guardNote = "its traffic stays blocked until it is up again (gosec unroute lifts the block)"

// unroute takes conn name down, removes its trap (auto=route) and lifts its
// guard: its traffic is routed normally again, in the clear. As strongSwan's
// `ipsec unroute`, this is the administrator's explicit decision.
func (d *Daemon) unroute(name string, progress func(string)) error {
	d.mu.Lock()
	_, known := d.conns.Conns[name]
	_, active := d.active[name]
	guarded := d.guardKept[name]
	d.mu.Unlock()
	if !known && !active && !guarded {
		return fmt.Errorf("no connection named %q", name)
	}
	if d.ike != nil {
		if _, err := d.downIKE(context.Background(), name); err != nil {
			return err
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.downLocked(name)
	d.forgetGuardLocked(name)
	progress(fmt.Sprintf("connection '%s' unrouted: no SAs, policies, routes or guard; its traffic is routed normally, unprotected", name))
	return nil
}

func (d *Daemon) downLocked(name string) {
	a := d.active[name]
	if a == nil {
		return
	}
	d.remove(a)
	delete(d.active, name)
	d.log.Info("conn down", "conn", name)
}

// remove undoes what up installed: routes first, so that no new traffic
// enters the TUN, then the outbound SA, policies and the inbound SA.
func (d *Daemon) remove(a *activeConn) {
	if a.pairs != nil {
		d.unrouteLocked(a)
		return
	}
	d.delRoutesLocked(a)
	if a.in != nil {
		// A keyed conn's guard stays until it is up again, unrouted or
		// removed from the configuration.
		d.guardKept[a.spec.Name] = true
	}
	if a.out != nil {
		d.sad.Delete(a.out.SPI, a.out.Proto, a.out.Dst)
	}
	for _, id := range a.policies {
		d.spd.Delete(id)
	}
	if a.in != nil {
		d.deleteInboundLocked(a.in)
	}
	if d.plane != nil {
		d.plane.ClearTrap(a.reqid)
	}
}

// manualSAs builds the SA pair of a manually keyed conn.
func (d *Daemon) manualSAs(c *ConnSpec, reqid uint32) (in, out *sad.SA, err error) {
	m := c.Manual
	if m.Wiped {
		// Never key an SA with zeros.
		return nil, nil, fmt.Errorf("conn %s: its manual keys were wiped (gosec up reads them again from ipsec.conf)", c.Name)
	}
	in = &sad.SA{SPI: m.InSPI, Proto: m.Proto, Mode: c.Mode, Src: c.Remote, Dst: c.Local, ReqID: reqid, Dir: sad.Inbound, Encap: c.Encap}
	out = &sad.SA{SPI: m.OutSPI, Proto: m.Proto, Mode: c.Mode, Src: c.Local, Dst: c.Remote, ReqID: reqid, Dir: sad.Outbound, Encap: c.Encap}
	if c.Encap != nil {
		// The peer sends to our port from its own: mirror the ports inbound.
		in.Encap = &sad.Encap{SrcPort: c.Encap.DstPort, DstPort: c.Encap.SrcPort}
	}
	// replay_window=0 turns the check off (a window of size 0).
	in.Replay, err = sad.NewWindow(m.ReplayWindow, m.ESN)
	if err != nil {
		return nil, nil, fmt.Errorf("conn %s: %w", c.Name, err)
	}
	in.ESN, out.ESN = m.ESN, m.ESN
	in.Conn, out.Conn = c.Name, c.Name
	switch m.Proto {
	case sad.ESP:
		if in.ESP, err = esp.NewSuite(m.InESP); err != nil {
			return nil, nil, fmt.Errorf("conn %s: inbound ESP: %w", c.Name, err)
		}
		if out.ESP, err = esp.NewSuite(m.OutESP); err != nil {
			return nil, nil, fmt.Errorf("conn %s: outbound ESP: %w", c.Name, err)
		}
	case sad.AH:
		if in.AH, err = ah.NewSuite(m.InAH); err != nil {
			return nil, nil, fmt.Errorf("conn %s: inbound AH: %w", c.Name, err)
		}
		if out.AH, err = ah.NewSuite(m.OutAH); err != nil {
			return nil, nil, fmt.Errorf("conn %s: outbound AH: %w", c.Name, err)
		}
	default:
		return nil, nil, fmt.Errorf("conn %s: unknown protocol %v", c.Name, m.Proto)
	}
	return in, out, nil
}

// selectors returns the conn's (local, remote) prefix pairs.
func selectors(c *ConnSpec) [][2]netip.Prefix {
	locals, remotes := c.LocalSubnets, c.RemoteSubnets
	if c.Mode == sad.Transport || len(locals) == 0 {
		locals = []netip.Prefix{netip.PrefixFrom(c.Local, c.Local.BitLen())}
	}
	if c.Mode == sad.Transport || len(remotes) == 0 {
		remotes = []netip.Prefix{netip.PrefixFrom(c.Remote, c.Remote.BitLen())}
	}
	var out [][2]netip.Prefix
	for _, l := range locals {
		for _, r := range remotes {
			out = append(out, [2]netip.Prefix{l.Masked(), r.Masked()})
		}
	}
	return out
}

// policies are the conn's Out and In protect policies.
func (d *Daemon) policies(c *ConnSpec, reqid uint32) []*spd.Policy {
	var out []*spd.Policy
	tmplProto := uint8(50)
	if c.Manual != nil && c.Manual.Proto == sad.AH {
		tmplProto = 51
	}
	mode := spd.TemplateTransport
	if c.Mode == sad.Tunnel {
		mode = spd.TemplateTunnel
	}
	for _, pair := range selectors(c) {
		for _, dir := range []spd.Direction{spd.Out, spd.In} {
			sel := spd.Selector{Local: pair[0], Remote: pair[1], Proto: c.Proto,
				LocalPorts: portRange(c.LocalPort), RemotePorts: portRange(c.RemotePort)}
			tsrc, tdst := c.Local, c.Remote
			if dir == spd.In {
				tsrc, tdst = c.Remote, c.Local
			}
			out = append(out, &spd.Policy{
				Name: c.Name, Dir: dir, Sel: sel, Action: spd.Protect, ReqID: reqid,
				Templates: []spd.Template{{Proto: tmplProto, Mode: mode, TunnelSrc: tsrc, TunnelDst: tdst}},
			})
		}
	}
	return out
}

func portRange(p uint16) spd.PortRange {
	if p == 0 {
		return spd.AnyPort
	}
	return spd.PortRange{Lo: p, Hi: p}
}

// routes are the routes into the TUN for a conn: its remote subnets with
// a local-subnet source address when this host has one (so that traffic
// the gateway itself originates matches the policy), or the remote host.
func (d *Daemon) routes(c *ConnSpec) []netio.Route {
	if c.Mode == sad.Transport || len(c.RemoteSubnets) == 0 {
		return []netio.Route{{Dst: netip.PrefixFrom(c.Remote, c.Remote.BitLen()), Src: c.Local}}
	}
	src := localAddrIn(c.LocalSubnets)
	var rts []netio.Route
	for _, r := range c.RemoteSubnets {
		rts = append(rts, netio.Route{Dst: r.Masked(), Src: src})
	}
	return rts
}

// protected are the remote prefixes whose cleartext is dropped unless it
// comes out of the TUN.
func (d *Daemon) protected(c *ConnSpec) []netip.Prefix {
	if c.Mode == sad.Transport || len(c.RemoteSubnets) == 0 {
		return []netip.Prefix{netip.PrefixFrom(c.Remote, c.Remote.BitLen())}
	}
	return c.RemoteSubnets
}

// localAddrIn returns an address of this host inside one of the prefixes,
// or the zero Addr.
func localAddrIn(prefixes []netip.Prefix) netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return netip.Addr{}
	}
	for _, a := range addrs {
		ipn, ok := a.(*net.IPNet)
		if !ok {
			continue
		}
		ip, ok := netip.AddrFromSlice(ipn.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		for _, p := range prefixes {
			if p.Contains(ip) {
				return ip
			}
		}
	}
	return netip.Addr{}
}

// reload re-reads the configuration. Conns that are up and whose
// definition changed are re-established, conns that were removed are taken
// down, and new auto=start conns come up; the rest is left alone.
func (d *Daemon) reload(progress func(string)) error {
	cfg, err := d.loadConfig()
	if err != nil {
		wipeConfigKeys(cfg)
		return err
	}
	// Whatever happens below, no manual key outlives the installation.
	defer func() {
		d.mu.Lock()
		wipeConfigKeys(cfg)
		wipeConfigKeys(d.conns)
		d.mu.Unlock()
	}()
	d.mu.Lock()
	old := d.conns
	d.mu.Unlock()
	keepUnresolved(old, cfg, progress)
	// IKE conns that changed or vanished are deleted first (the key
	// manager calls back into the daemon, so without d.mu).
	var restart []string
	for _, name := range old.Order {
		oc := old.Conns[name]
		if oc.IKE == nil {
			continue
		}
		if nc, ok := cfg.Conns[name]; !ok || !sameSpec(nc, oc) {
			if had, _ := d.downIKE(context.Background(), name); had {
				progress(fmt.Sprintf("conn '%s' changed or removed: its SAs were deleted", name))
				if ok && nc.IKE != nil {
					restart = append(restart, name)
				}
			}
		}
	}
	d.applyLogLevels(cfg)
	d.mu.Lock()
	d.conns, d.secrets = cfg, cfg.Secrets
	// The counts (and metric series) of removed conns go with them.
	d.ikeStats.setConns(ikeConnNames(cfg))
	d.rerouteLocked(old, cfg, progress)
	d.mu.Unlock()
	if d.ike != nil {
		if err := d.ike.SetConns(context.Background(), d.ikeConns()); err != nil {
			return err
		}
		for _, name := range cfg.Order {
			c := cfg.Conns[name]
			_, wasThere := old.Conns[name]
			if c.IKE != nil && c.IKEUnsupported == "" && ((c.Auto == "start" && !wasThere) || contains(restart, name)) {
				d.ike.Start(name)
			}
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	names := make([]string, 0, len(d.active))
	for name := range d.active {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		a := d.active[name]
		if a.spec.IKE != nil {
			continue
		}
		nc, ok := cfg.Conns[name]
		switch {
		case !ok:
			d.downLocked(name)
			progress(fmt.Sprintf("conn '%s' removed from the configuration: taken down", name))
		case !sameSpec(nc, a.spec):
			d.downLocked(name)
			if err := d.upLocked(context.Background(), nc, progress); err != nil {
				errs = append(errs, err)
			} else {
				progress(fmt.Sprintf("conn '%s' changed: re-established", name))
			}
		}
	}
	for _, name := range cfg.Order {
		c := cfg.Conns[name]
		_, wasThere := old.Conns[name]
		if _, up := d.active[name]; up || wasThere || c.IKE != nil {
			continue
		}
		if c.Auto == "start" || (c.Auto == "route" && c.Manual != nil) {
			if err := d.upLocked(context.Background(), c, progress); err != nil {
				errs = append(errs, err)
			}
		}
	}
	progress(fmt.Sprintf("configuration reloaded: %d conns", len(cfg.Order)))
	return errors.Join(errs...)
}

// keepUnresolved carries over, at reload, the conns whose host name did
// not resolve this time but did when they were loaded: a passing DNS
// failure must not take a working tunnel down (Pluto too keeps a conn
// whose name it is retrying). Conns skipped for another reason, and
// those never loaded, are reported as skipped.
func keepUnresolved(old, cfg *Config, progress func(string)) {
	for _, s := range cfg.Skipped {
		file, line := s.Where()
		prev, had := old.Conns[s.Name]
		if s.Feature != conf.FeatureUnresolved || !had {
			progress(fmt.Sprintf("%s:%d: conn '%s' skipped: %s", file, line, s.Name, s.Msg))
			continue
		}
		if _, loaded := cfg.Conns[s.Name]; loaded {
			continue
		}
		cfg.Conns[s.Name] = prev
		cfg.Order = append(cfg.Order, s.Name)
		progress(fmt.Sprintf("%s:%d: conn '%s': %s; it keeps the addresses of the previous load (%v, %v)", file, line, s.Name, s.Msg, prev.Local, prev.Remote))
	}
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// rerouteLocked brings the routed state of IKE conns in line with a
// reloaded configuration without a moment in which their traffic could
// leave in the clear: a changed conn's new policies, routes and guard are
// in place before the old ones go (routes are reference-counted, the
// filter replaces a conn's rules in one transaction).
func (d *Daemon) rerouteLocked(old, cfg *Config, progress func(string)) {
	defer d.batchGuardsLocked()()
	for _, name := range old.Order {
		oc := old.Conns[name]
		a := d.active[name]
		if oc.IKE == nil || a == nil || a.pairs == nil {
			continue
		}
		nc, ok := cfg.Conns[name]
		if ok && sameSpec(nc, oc) {
			a.spec = nc
			continue
		}
		delete(d.active, name)
		routed := false
		if ok && routedAtStart(nc) {
			if err := d.routeConnLocked(nc); err != nil {
				d.log.Error("route conn", "conn", name, "err", err)
			} else {
				routed = true
			}
		}
		for _, k := range slices.Clone(a.children) {
			d.removeChildLocked(k)
		}
		d.dropPoliciesLocked(a)
		if !routed {
			d.guardKept[name] = true
			progress(fmt.Sprintf("conn '%s' changed or removed: its policies and routes were removed", name))
		}
	}
	// The guards of conns no longer configured go with them.
	for name := range d.guardKept {
		if _, ok := cfg.Conns[name]; !ok {
			d.forgetGuardLocked(name)
		}
	}
	for _, name := range cfg.Order {
		if c := cfg.Conns[name]; routedAtStart(c) && d.active[name] == nil {
			if err := d.routeConnLocked(c); err != nil {
				d.log.Error("route conn", "conn", name, "err", err)
			}
		}
	}
}
