package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"time"

	"golang.org/x/net/ipv4"

	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/internal/conf"
	"github.com/gosec-ipsec/gosec/internal/netio"
)

// ikeConn maps a resolved conf conn to the key manager's view.
// quickModeSettle is how long gosec, as Quick Mode initiator, keeps
// sending on the old outbound SA (or holding an on-demand conn's packets)
// after QM3 before it switches to the new one: an IKEv1 responder
// installs its inbound SA only when QM3 arrives (strongSwan with the
// kernel's XFRM drops what comes earlier on its larval SA). Seen against
// charon in an emulated guest: 5 to 8 packets of a 200 KiB/s stream per
// rekey, about 50 ms; 500 ms leaves a margin for a loaded peer.
const quickModeSettle = 500 * time.Millisecond

func ikeConn(c *conf.Conn, s *ConnSpec, local, remote *conf.End) *ike.Conn {
	ic := &ike.Conn{
		Name: c.Name, Local: s.Local, Remote: s.Remote, LocalID: local.ID, RemoteID: remote.ID,
		Mode: ikeMode(s.Mode), LocalSubnets: s.LocalSubnets, RemoteSubnets: s.RemoteSubnets,
		Proto: s.Proto, LocalPort: s.LocalPort, RemotePort: s.RemotePort,
		IKELifetime: c.IKELifetime, Lifetime: c.KeyLife, KeyingTries: c.KeyingTries,
		Rekey: c.Rekey, RekeyMargin: c.RekeyMargin, RekeyFuzz: c.RekeyFuzz,
		LifeBytes: c.LifeBytes, LifePackets: c.LifePackets, MarginBytes: c.MarginBytes, MarginPackets: c.MarginPackets,
		DPDDelay: c.DPDDelay, DPDTimeout: c.DPDTimeout, DPDAction: c.DPDAction,
		ForceEncaps: c.ForceEncaps, ReplayWindow: c.ReplayWindow, AHAlign8: c.AHAlign == 8,
	}
	if remote.Any {
		ic.Remote = netip.Addr{}
	}
	ic.IKE = ikeSuites(c.IKE.List)
	if c.Proto() == "ah" {
		ic.AH = ikeSuites(c.AH.List)
	} else {
		ic.ESP = ikeSuites(c.ESP.List)
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
		Clock: d.opts.Clock, Log: d.log.With("room", "ike"), NATTPort: uint16(d.opts.NATTPort), LogKeys: d.opts.LogKeys && d.keys != nil,
		SaveKeys: d.saveIKEKeys(), Observer: ikeObserver{exchangeLogger{log: d.log.With("room", "ike"), next: d.opts.Observer}, &d.ikeStats}, OutboundDelay: quickModeSettle,
		Impair: d.opts.Impair,
	})
	// to is the address the message was sent to (IP_PKTINFO, RecvDst), so
	// that a negotiation a peer starts on the NAT-T port to a second
	// address of ours is answered from that address.
	d.natt.IKE = func(msg []byte, from, to netip.AddrPort) {
		d.ike.HandleMessage(msg, from, to, true)
	}
	for _, q := range d.nattQueues {
		q.IKE = d.natt.IKE // a peer's IKE may hash to any NAT-T socket
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
