package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"

	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/internal/conf"
	"github.com/gosec-ipsec/gosec/internal/integ"
	"github.com/gosec-ipsec/gosec/sad"
)

// loadConfig reads ipsec.conf (and ipsec.secrets when it exists) and
// resolves every conn for this host. Any configuration error fails the
// whole load, with every problem listed.
func (d *Daemon) loadConfig() (*Config, error) {
	cfg, err := conf.Load(d.opts.ConfigPath, conf.Options{})
	for _, diag := range cfg.Diags {
		if diag.Warning {
			d.log.Warn("configuration", "warning", diag.String())
		}
	}
	if err != nil {
		return nil, fmt.Errorf("configuration errors:\n%w", err)
	}
	var secrets *conf.Secrets
	if _, serr := os.Stat(d.opts.SecretsPath); serr == nil {
		if secrets, err = conf.LoadSecrets(d.opts.SecretsPath); err != nil {
			return nil, fmt.Errorf("secrets errors:\n%w", err)
		}
	}
	out, err := resolveConns(cfg, d.opts.Local, conf.LocalAddrs())
	if out != nil {
		out.Secrets, out.Setup, out.Skipped = secrets, cfg.Setup, cfg.Skipped
	}
	return out, err
}

// resolveConns maps the configuration's conns to the daemon's view.
func resolveConns(cfg *conf.Config, override string, isLocal func(netip.Addr) bool) (*Config, error) {
	out := &Config{Conns: map[string]*ConnSpec{}, ConnDebug: map[string]string{}}
	var errs []error
	for _, c := range cfg.Conns {
		if c.Debug != "" {
			out.ConnDebug[c.Name] = c.Debug
		}
		if c.Auto == "ignore" && !c.Set("auto") && !c.Set("left") {
			continue // a template only used through also=
		}
		spec, err := resolveConn(c, override, isLocal)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: %w", c.File, c.Line, err))
			continue
		}
		out.Conns[c.Name] = spec
		out.Order = append(out.Order, c.Name)
	}
	return out, errors.Join(errs...)
}

func resolveConn(c *conf.Conn, override string, isLocal func(netip.Addr) bool) (*ConnSpec, error) {
	side, err := conf.LocalSide(c, override, isLocal)
	if err != nil {
		return nil, err
	}
	local, remote := &c.Left, &c.Right
	if side == "right" {
		local, remote = remote, local
	}
	s := &ConnSpec{
		Name: c.Name, Auto: c.Auto, Local: local.Addr, Remote: remote.Addr,
		LocalSubnets: local.Subnets, RemoteSubnets: remote.Subnets,
		LocalPort: local.Port, RemotePort: remote.Port, Proposal: c.ESP.String(), Type: c.Type,
		UpDown: local.UpDown,
	}
	if c.Proto() == "ah" {
		s.Proposal = "ah " + c.AH.String()
	}
	s.Proto = local.Proto
	if s.Proto == 0 {
		s.Proto = remote.Proto
	}
	switch c.Type {
	case "transport":
		s.Mode = sad.Transport
	default:
		s.Mode = sad.Tunnel
	}
	if c.ForceEncaps {
		if c.Proto() == "ah" {
			return nil, fmt.Errorf("conn %s: AH cannot be UDP-encapsulated (forceencaps/encapsulation=yes)", c.Name)
		}
		s.Encap = &sad.Encap{SrcPort: c.EncapPort, DstPort: c.EncapPort}
	}
	if !c.Manual {
		if c.Type == "tunnel" || c.Type == "transport" {
			s.IKE = ikeConn(c, s, local, remote)
			s.IKEUnsupported = ikeUnsupported(c)
			s.Proposal = "ike " + c.IKE.String() + ", " + strings.TrimPrefix(s.Proposal, "ah ")
			if c.Proto() == "ah" {
				s.Proposal = "ike " + c.IKE.String() + ", ah " + c.AH.String()
			}
		}
		return s, nil
	}
	suite := c.ManualSuite()
	s.Proposal = suite.Name()
	m := &Manual{InSPI: local.SPI, OutSPI: remote.SPI, ReplayWindow: c.ReplayWindow, ESN: c.ESN}
	if c.Proto() == "ah" {
		m.Proto = sad.AH
		alg, err := integFor(suite.Integ)
		if err != nil {
			return nil, err
		}
		m.InAH = ah.Config{Integ: alg, Key: local.AHKey, ESN: c.ESN, Align8: c.AHAlign == 8}
		m.OutAH = ah.Config{Integ: alg, Key: remote.AHKey, ESN: c.ESN, Align8: c.AHAlign == 8}
		s.Proposal = "ah " + suite.Name()
	} else {
		m.Proto = sad.ESP
		cipher, err := cipherFor(suite.Cipher.Encr)
		if err != nil {
			return nil, err
		}
		alg := integ.None
		if suite.Integ != conf.IntegNone {
			if alg, err = integFor(suite.Integ); err != nil {
				return nil, err
			}
		}
		m.InESP = esp.Config{Cipher: cipher, EncKey: local.ESPEncKey, Integ: alg, AuthKey: local.ESPAuthKey, ESN: c.ESN}
		m.OutESP = esp.Config{Cipher: cipher, EncKey: remote.ESPEncKey, Integ: alg, AuthKey: remote.ESPAuthKey, ESN: c.ESN}
	}
	s.Manual = m
	return s, nil
}

func cipherFor(e conf.Encr) (esp.Cipher, error) { return espCipher(ikeEncr(e)) }

func integFor(i conf.Integ) (integ.Algorithm, error) {
	if a := integAlgorithm(ikeInteg(i)); a != integ.None {
		return a, nil
	}
	return 0, fmt.Errorf("integrity algorithm %d is not supported", i)
}

// wipeManualKeys zeroes the manual keys of the loaded configuration (the
// slices conf.Load read from ipsec.conf, which the specs share) when the
// daemon stops. While the daemon runs they stay: gosec up after gosec
// down and reload's comparison of conns need them.
func (d *Daemon) wipeManualKeys() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conns == nil {
		return
	}
	for _, c := range d.conns.Conns {
		if m := c.Manual; m != nil {
			for _, k := range [][]byte{m.InESP.EncKey, m.InESP.AuthKey, m.OutESP.EncKey, m.OutESP.AuthKey, m.InAH.Key, m.OutAH.Key} {
				clear(k)
			}
		}
	}
}
