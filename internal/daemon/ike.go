package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/internal/conf"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

// ikeChild is one IPsec SA pair that IKE negotiated, as installed.
type ikeChild struct {
	ch       *ike.ChildSA
	reqid    uint32
	in, out  *sad.SA
	policies []uint64
	routes   []netio.Route
}

// ikeConn maps a resolved conf conn to the key manager's view.
func ikeConn(c *conf.Conn, s *ConnSpec, local, remote *conf.End) *ike.Conn {
	ic := &ike.Conn{
		Name: c.Name, Local: s.Local, Remote: s.Remote, LocalID: local.ID, RemoteID: remote.ID,
		Mode: s.Mode, LocalSubnets: s.LocalSubnets, RemoteSubnets: s.RemoteSubnets,
		Proto: s.Proto, LocalPort: s.LocalPort, RemotePort: s.RemotePort,
		IKELifetime: c.IKELifetime, Lifetime: c.KeyLife, KeyingTries: c.KeyingTries,
		Rekey: c.Rekey, RekeyMargin: c.RekeyMargin,
		DPDDelay: c.DPDDelay, DPDTimeout: c.DPDTimeout, DPDAction: c.DPDAction,
		ForceEncaps: c.ForceEncaps, ReplayWindow: c.ReplayWindow, AHAlign8: c.AHAlign == 8,
	}
	if remote.Any {
		ic.Remote = netip.Addr{}
	}
	for _, p := range c.IKE.List {
		ic.IKE = append(ic.IKE, p.Suites()...)
	}
	if c.Proto() == "ah" {
		for _, p := range c.AH.List {
			ic.AH = append(ic.AH, p.Suites()...)
		}
	} else {
		for _, p := range c.ESP.List {
			ic.ESP = append(ic.ESP, p.Suites()...)
		}
	}
	// strongSwan turns PFS on with a DH group in esp=; Libreswan with
	// pfs=yes (the phase-1 group then).
	ic.PFS = c.Set("pfs") && c.PFS
	return ic
}

// ikeUnsupported says why gosec cannot negotiate conn c, or "".
func ikeUnsupported(c *conf.Conn) string {
	switch {
	case c.KeyExchange != "" && c.KeyExchange != "ikev1":
		return fmt.Sprintf("keyexchange=%s is not supported (gosec speaks IKEv1)", c.KeyExchange)
	case c.AuthBy != "secret" && c.AuthBy != "psk":
		return fmt.Sprintf("authby=%s is not supported yet: gosec authenticates with pre-shared keys (authby=secret or psk)", c.AuthBy)
	case c.Aggressive:
		return "aggressive=yes is not supported yet: gosec negotiates Main Mode"
	}
	return ""
}

// ikeTransport sends IKE messages on UDP 500 or the NAT-T port.
type ikeTransport struct{ d *Daemon }

func (t ikeTransport) Send(msg []byte, to netip.AddrPort, natt bool) error {
	if natt {
		return t.d.natt.WriteIKE(msg, to)
	}
	_, err := t.d.ikeSock.WriteToUDPAddrPort(msg, to)
	return err
}

func (t ikeTransport) SendKeepalive(to netip.AddrPort) error {
	m := [1]netio.Msg{{Buf: []byte{0xff}, To: to}}
	_, err := t.d.natt.Conn.Send(m[:])
	return err
}

// startIKE opens UDP 500 and runs the key manager.
func (d *Daemon) startIKE(ctx context.Context) error {
	sock, err := netio.ListenIKE(ctx, netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(d.opts.IKEPort)), d.opts.Mark)
	if err != nil {
		return fmt.Errorf("daemon: %w", err)
	}
	d.ikeSock = sock
	d.ike = ike.New(ike.Config{
		Transport: ikeTransport{d}, Installer: ikeInstaller{d}, PSK: d.findPSK,
		Clock: d.opts.Clock, Log: d.log.With("room", "ike"), NATTPort: uint16(d.opts.NATTPort), LogKeys: d.opts.Debug && d.opts.LogKeys,
		SaveKeys: d.saveIKEKeys(), Observer: d.opts.Observer,
	})
	d.natt.IKE = func(msg []byte, from netip.AddrPort) {
		d.ike.HandleMessage(msg, from, netip.AddrPort{}, true)
	}
	ikeCtx, cancel := context.WithCancel(context.Background())
	d.ikeStop = cancel
	d.ikeDone = make(chan struct{})
	go func() {
		d.ike.Run(ikeCtx)
		close(d.ikeDone)
	}()
	go d.readIKE(sock)
	return d.ike.SetConns(ctx, d.ikeConns())
}

// stopIKE deletes every negotiated SA (telling peers) and stops the key
// manager; the sockets must still be open.
func (d *Daemon) stopIKE() {
	if d.ikeStop == nil {
		return
	}
	d.ikeStop()
	select {
	case <-d.ikeDone:
	case <-time.After(5 * time.Second):
		d.log.Warn("IKE engine did not stop in time")
	}
	d.ikeStop = nil
	if d.ikeSock != nil {
		d.ikeSock.Close()
	}
}

// readIKE feeds UDP 500 into the key manager, with the local address
// each message was sent to.
func (d *Daemon) readIKE(sock *net.UDPConn) {
	pc := ipv4.NewPacketConn(sock)
	_ = pc.SetControlMessage(ipv4.FlagDst, true)
	buf := make([]byte, 65536)
	local := sock.LocalAddr().(*net.UDPAddr)
	for {
		n, cm, src, err := pc.ReadFrom(buf)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			d.log.Warn("IKE socket", "err", err)
			continue
		}
		ua, ok := src.(*net.UDPAddr)
		if !ok {
			continue
		}
		from := ua.AddrPort()
		from = netip.AddrPortFrom(from.Addr().Unmap(), from.Port())
		to := netip.AddrPortFrom(netip.IPv4Unspecified(), uint16(local.Port))
		if cm != nil && cm.Dst != nil {
			if a, ok := netip.AddrFromSlice(cm.Dst.To4()); ok {
				to = netip.AddrPortFrom(a, uint16(local.Port))
			}
		}
		d.ike.HandleMessage(buf[:n], from, to, false)
	}
}

// findPSK looks up ipsec.secrets the way strongSwan does.
func (d *Daemon) findPSK(localID, remoteID string) ([]byte, bool) {
	d.mu.Lock()
	s := d.secrets
	d.mu.Unlock()
	if s == nil {
		return nil, false
	}
	sec, ok := s.FindPSK(localID, remoteID)
	if !ok {
		return nil, false
	}
	return []byte(sec.Value), true
}

// ikeConns lists the conns the key manager negotiates.
func (d *Daemon) ikeConns() []*ike.Conn {
	var out []*ike.Conn
	for _, name := range d.conns.Order {
		if c := d.conns.Conns[name]; c.IKE != nil && c.IKEUnsupported == "" {
			out = append(out, c.IKE)
		}
	}
	return out
}

// ikeInstaller puts negotiated SAs into the SAD, SPD, routes and filter.
type ikeInstaller struct{ d *Daemon }

func (i ikeInstaller) AllocSPI(proto sad.Proto) (uint32, error) { return i.d.sad.AllocSPI(proto) }

func (i ikeInstaller) ReleaseSPI(proto sad.Proto, spi uint32) { i.d.sad.ReleaseSPI(spi, proto) }

func childKey(ch *ike.ChildSA) string { return fmt.Sprintf("%s/%08x", ch.Conn, ch.InSPI) }

func (i ikeInstaller) InstallInbound(ch *ike.ChildSA) error {
	d := i.d
	d.mu.Lock()
	defer d.mu.Unlock()
	d.reqid++
	k := &ikeChild{ch: ch, reqid: d.reqid}
	d.saveChildKeys(ch)
	in := &sad.SA{SPI: ch.InSPI, Proto: ch.Proto, Mode: ch.Mode, Src: ch.Remote, Dst: ch.Local, ReqID: k.reqid,
		Dir: sad.Inbound, Conn: ch.Conn, Hard: sad.Lifetime{Time: ch.Lifetime, Bytes: ch.LifeBytes}}
	if ch.Encap != nil {
		in.Encap = &sad.Encap{SrcPort: ch.Encap.DstPort, DstPort: ch.Encap.SrcPort}
	}
	var err error
	if in.Replay, err = sad.NewWindow(ch.ReplayWindow, false); err != nil {
		return err
	}
	if ch.Proto == sad.AH {
		in.AH, err = ah.NewSuite(ch.InAH)
	} else {
		in.ESP, err = esp.NewSuite(ch.InESP)
	}
	if err != nil {
		return fmt.Errorf("inbound suite: %w", err)
	}
	if err := d.sad.Add(in); err != nil {
		return err
	}
	k.in = in
	d.ikeChildren[childKey(ch)] = k
	return nil
}

func (i ikeInstaller) InstallOutbound(ch *ike.ChildSA) error {
	d := i.d
	d.mu.Lock()
	defer d.mu.Unlock()
	k := d.ikeChildren[childKey(ch)]
	if k == nil {
		return errors.New("outbound SA before inbound SA")
	}
	spec := d.conns.Conns[ch.Conn]
	out := &sad.SA{SPI: ch.OutSPI, Proto: ch.Proto, Mode: ch.Mode, Src: ch.Local, Dst: ch.Remote, ReqID: k.reqid,
		Dir: sad.Outbound, Conn: ch.Conn, Encap: ch.Encap, Hard: sad.Lifetime{Time: ch.Lifetime, Bytes: ch.LifeBytes}}
	var err error
	if ch.Proto == sad.AH {
		out.AH, err = ah.NewSuite(ch.OutAH)
	} else {
		out.ESP, err = esp.NewSuite(ch.OutESP)
	}
	if err != nil {
		return fmt.Errorf("outbound suite: %w", err)
	}
	tmplProto := uint8(50)
	if ch.Proto == sad.AH {
		tmplProto = 51
	}
	mode := spd.TemplateTransport
	if ch.Mode == sad.Tunnel {
		mode = spd.TemplateTunnel
	}
	fail := func(err error) error {
		d.removeChildLocked(k)
		return err
	}
	for _, dir := range []spd.Direction{spd.Out, spd.In} {
		tsrc, tdst := ch.Local, ch.Remote
		if dir == spd.In {
			tsrc, tdst = ch.Remote, ch.Local
		}
		id, err := d.spd.Add(&spd.Policy{Name: ch.Conn, Dir: dir, Action: spd.Protect, ReqID: k.reqid,
			Sel: spd.Selector{Local: ch.LocalTS, Remote: ch.RemoteTS, Proto: ch.Proto8,
				LocalPorts: portRange(ch.LocalPort), RemotePorts: portRange(ch.RemotePort)},
			Templates: []spd.Template{{Proto: tmplProto, Mode: mode, TunnelSrc: tsrc, TunnelDst: tdst}}})
		if err != nil {
			return fail(fmt.Errorf("policy: %w", err))
		}
		k.policies = append(k.policies, id)
	}
	if err := d.sad.Add(out); err != nil {
		return fail(fmt.Errorf("outbound SA: %w", err))
	}
	k.out = out
	rt := netio.Route{Dst: ch.RemoteTS.Masked(), Src: ch.Local}
	if ch.Mode == sad.Tunnel {
		rt.Src = localAddrIn([]netip.Prefix{ch.LocalTS})
	}
	if err := d.router.AddRoute(rt); err != nil {
		return fail(fmt.Errorf("route %v: %w", rt.Dst, err))
	}
	k.routes = append(k.routes, rt)
	a := d.active[ch.Conn]
	if a == nil && spec != nil {
		a = &activeConn{spec: spec, reqid: k.reqid, since: d.opts.Clock.Now().Format("2006-01-02 15:04:05")}
		d.active[ch.Conn] = a
	}
	if a != nil {
		a.children = append(a.children, k)
		if err := d.filter.AddConn(ch.Conn, childRemotes(a)); err != nil {
			d.log.Warn("filter", "conn", ch.Conn, "err", err)
		}
	}
	return nil
}

func childRemotes(a *activeConn) []netip.Prefix {
	var out []netip.Prefix
	for _, k := range a.children {
		out = append(out, k.ch.RemoteTS)
	}
	return out
}

func (i ikeInstaller) Remove(ch *ike.ChildSA) {
	d := i.d
	d.mu.Lock()
	defer d.mu.Unlock()
	if k := d.ikeChildren[childKey(ch)]; k != nil {
		d.removeChildLocked(k)
	}
}

// removeChildLocked removes a negotiated SA pair: routes, outbound SA,
// policies, inbound SA.
func (d *Daemon) removeChildLocked(k *ikeChild) {
	for _, rt := range k.routes {
		if err := d.router.DelRoute(rt.Dst); err != nil {
			d.log.Warn("remove route", "conn", k.ch.Conn, "dst", rt.Dst, "err", err)
		}
	}
	k.routes = nil
	if k.out != nil {
		d.sad.Delete(k.out.SPI, k.out.Proto, k.out.Dst)
	}
	for _, id := range k.policies {
		d.spd.Delete(id)
	}
	k.policies = nil
	if k.in != nil {
		d.sad.Delete(k.in.SPI, k.in.Proto, k.in.Dst)
	}
	delete(d.ikeChildren, childKey(k.ch))
	if a := d.active[k.ch.Conn]; a != nil {
		kept := a.children[:0]
		for _, c := range a.children {
			if c != k {
				kept = append(kept, c)
			}
		}
		a.children = kept
		if len(a.children) == 0 && a.in == nil {
			d.filter.RemoveConn(k.ch.Conn)
			delete(d.active, k.ch.Conn)
		} else {
			d.filter.AddConn(k.ch.Conn, childRemotes(a))
		}
	}
	if d.plane != nil {
		d.plane.ClearTrap(k.reqid)
	}
}

// upIKE negotiates an IKE conn; d.mu must NOT be held (the key manager
// calls back into the daemon to install the SAs).
func (d *Daemon) upIKE(ctx context.Context, c *ConnSpec, progress func(string)) error {
	if c.IKEUnsupported != "" {
		return fmt.Errorf("conn %s: %s", c.Name, c.IKEUnsupported)
	}
	if d.ike == nil {
		return errors.New("the IKE daemon is not running")
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	err := d.ike.Initiate(ctx, c.Name, progress)
	d.mu.Lock()
	if err != nil {
		d.ikeErr[c.Name] = err.Error()
	} else {
		delete(d.ikeErr, c.Name)
	}
	d.mu.Unlock()
	return err
}

// downIKE deletes an IKE conn's SAs, telling the peer; d.mu must not be
// held.
func (d *Daemon) downIKE(ctx context.Context, name string) (bool, error) {
	if d.ike == nil {
		return false, nil
	}
	return d.ike.Terminate(ctx, name)
}
