package daemon

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"reflect"
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
	// The specs take copies of the manual keys: the parsed ones go now.
	defer wipeParsedKeys(cfg)
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

// wipeParsedKeys zeroes the manual keys of every conn conf.Load decoded.
func wipeParsedKeys(cfg *conf.Config) {
	if cfg == nil {
		return
	}
	for _, c := range cfg.Conns {
		c.WipeKeys()
	}
}

// resolveConns maps the configuration's conns to the daemon's view (the
// specs hold copies of the manual keys).
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
		m.InAH = ah.Config{Integ: alg, Key: bytes.Clone(local.AHKey), ESN: c.ESN, Align8: c.AHAlign == 8}
		m.OutAH = ah.Config{Integ: alg, Key: bytes.Clone(remote.AHKey), ESN: c.ESN, Align8: c.AHAlign == 8}
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
		m.InESP = esp.Config{Cipher: cipher, EncKey: bytes.Clone(local.ESPEncKey), Integ: alg, AuthKey: bytes.Clone(local.ESPAuthKey), ESN: c.ESN}
		m.OutESP = esp.Config{Cipher: cipher, EncKey: bytes.Clone(remote.ESPEncKey), Integ: alg, AuthKey: bytes.Clone(remote.ESPAuthKey), ESN: c.ESN}
	}
	m.KeyDigest = m.keyDigest()
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

// keyDigestKey keys the digests of manual keys (Manual.KeyDigest). It is
// random and never leaves the process, so a digest is no help to anyone
// trying to guess a key.
var keyDigestKey = func() []byte {
	k := make([]byte, 32)
	if _, err := rand.Read(k); err != nil {
		panic(fmt.Sprintf("daemon: no randomness for the key digests: %v", err))
	}
	return k
}()

// keys returns the six key slices of m (some may be empty).
func (m *Manual) keys() [][]byte {
	return [][]byte{m.InESP.EncKey, m.InESP.AuthKey, m.OutESP.EncKey, m.OutESP.AuthKey, m.InAH.Key, m.OutAH.Key}
}

// keyDigest is the HMAC-SHA-256 of m's keys, each preceded by its length.
func (m *Manual) keyDigest() [32]byte {
	h := hmac.New(sha256.New, keyDigestKey)
	for _, k := range m.keys() {
		var n [4]byte
		binary.BigEndian.PutUint32(n[:], uint32(len(k)))
		h.Write(n[:])
		h.Write(k)
	}
	var d [32]byte
	copy(d[:], h.Sum(nil))
	return d
}

// wipe zeroes m's keys and marks it wiped.
func (m *Manual) wipe() {
	for _, k := range m.keys() {
		clear(k)
	}
	m.Wiped = true
}

// cloneKeys returns a copy of m whose keys are its own (conns that share
// an also= template share its key slices).
func (m *Manual) cloneKeys() *Manual {
	c := *m
	c.InESP.EncKey, c.InESP.AuthKey = bytes.Clone(m.InESP.EncKey), bytes.Clone(m.InESP.AuthKey)
	c.OutESP.EncKey, c.OutESP.AuthKey = bytes.Clone(m.OutESP.EncKey), bytes.Clone(m.OutESP.AuthKey)
	c.InAH.Key, c.OutAH.Key = bytes.Clone(m.InAH.Key), bytes.Clone(m.OutAH.Key)
	return &c
}

// sameSpec reports whether a and b define the same conn: manual keys
// are compared by their digests, so that a conn whose keys were wiped
// equals the same conn read again from an unchanged ipsec.conf.
func sameSpec(a, b *ConnSpec) bool {
	if a == nil || b == nil {
		return a == b
	}
	ac, bc := *a, *b
	ac.Manual, bc.Manual = keyless(a.Manual), keyless(b.Manual)
	return reflect.DeepEqual(&ac, &bc)
}

// keyless is m without its keys (its digest stays) and its wiped mark.
func keyless(m *Manual) *Manual {
	if m == nil {
		return nil
	}
	k := *m
	k.InESP.EncKey, k.InESP.AuthKey, k.OutESP.EncKey, k.OutESP.AuthKey, k.InAH.Key, k.OutAH.Key = nil, nil, nil, nil, nil, nil
	k.Wiped = false
	return &k
}

// wipeConfigKeys zeroes the manual keys of every conn of cfg (the specs'
// copies; loadConfig wiped conf.Load's own right after resolving).
func wipeConfigKeys(cfg *Config) {
	if cfg == nil {
		return
	}
	for _, c := range cfg.Conns {
		if c.Manual != nil {
			c.Manual.wipe()
		}
	}
}

// wipeManualKeys zeroes the manual keys of the loaded configuration. The
// daemon calls it once the conns are installed (at start, after a
// reload, after gosec up) and at stop: the installed SAs hold their own
// copies (esp.NewSuite and ah.NewSuite copy or expand the keys), and
// gosec up of a conn whose keys were wiped reads them again from
// ipsec.conf (manualKeysFromFile).
func (d *Daemon) wipeManualKeys() {
	d.mu.Lock()
	defer d.mu.Unlock()
	wipeConfigKeys(d.conns)
}

// manualKeysFromFile reads ipsec.conf again for gosec up of c, a manual
// conn whose keys were wiped, and returns c with the keys of the file,
// provided the file still defines c exactly as it was loaded (same keys
// by their digest); otherwise the administrator reloads first. Every
// other key read from the file is wiped at once.
func (d *Daemon) manualKeysFromFile(c *ConnSpec) (*ConnSpec, error) {
	cfg, err := d.loadConfig()
	defer wipeConfigKeys(cfg)
	if err != nil {
		return nil, fmt.Errorf("conn %s: its keys were wiped once installed and ipsec.conf cannot be read again: %w", c.Name, err)
	}
	nc, ok := cfg.Conns[c.Name]
	if !ok || nc.Manual == nil || !sameSpec(nc, c) {
		return nil, fmt.Errorf("conn %s: ipsec.conf changed since it was loaded (gosec up reads the keys again from it): run gosec reload", c.Name)
	}
	fresh := *nc
	fresh.Manual = nc.Manual.cloneKeys()
	return &fresh, nil
}
