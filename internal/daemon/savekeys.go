package daemon

import (
	"fmt"

	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/internal/savekeys"
)

// saveKeysDir is where key export writes, from `gosec start --save-keys`
// or else `savekeys=` in config setup; "" when key export is off.
func (d *Daemon) saveKeysDir(cfg *Config) string {
	if d.opts.SaveKeysDir != "" {
		return d.opts.SaveKeysDir
	}
	if cfg != nil {
		return cfg.Setup["savekeys"]
	}
	return ""
}

// keyExportWarning is what the log and statusall say while key export
// is on.
func keyExportWarning(dir string) string {
	return fmt.Sprintf("KEY EXPORT IS ON: the keys of every IKE and ESP SA are written to %s "+
		"(Wireshark tables %s and %s); whoever reads them can decrypt this host's IPsec traffic. "+
		"Turn it off (no --save-keys, no savekeys=) outside of debugging", dir, savekeys.IKEv1File, savekeys.ESPFile)
}

// openSaveKeys turns key export on when it is configured.
func (d *Daemon) openSaveKeys(cfg *Config) error {
	dir := d.saveKeysDir(cfg)
	if dir == "" {
		return nil
	}
	w, err := savekeys.Open(dir)
	if err != nil {
		return fmt.Errorf("daemon: key export: %w", err)
	}
	d.keys = w
	d.warnings = append(d.warnings, keyExportWarning(dir))
	d.log.Warn(keyExportWarning(dir))
	return nil
}

// saveIKEKeys is the key manager's hook for phase-1 keys; nil when key
// export is off.
func (d *Daemon) saveIKEKeys() func(icookie [8]byte, encKey []byte) {
	if d.keys == nil {
		return nil
	}
	return func(icookie [8]byte, encKey []byte) {
		if err := d.keys.IKEv1(icookie, encKey); err != nil {
			d.log.Warn("key export", "err", err)
		}
	}
}

// saveChildKeys writes both ESP SAs of a negotiated child to esp_sa.
// Wireshark's table has no AH entries (it does not check AH ICVs).
func (d *Daemon) saveChildKeys(ch *ike.ChildSA) {
	if d.keys == nil || ch.Proto != ike.ProtoESP {
		return
	}
	in, err := childESP(ch, ch.In)
	if err == nil {
		err = d.keys.ESP(ch.Remote, ch.Local, ch.InSPI, in)
	}
	if err != nil {
		d.log.Warn("key export", "conn", ch.Conn, "spi", fmt.Sprintf("%08x", ch.InSPI), "err", err)
	}
	out, err := childESP(ch, ch.Out)
	if err == nil {
		err = d.keys.ESP(ch.Local, ch.Remote, ch.OutSPI, out)
	}
	if err != nil {
		d.log.Warn("key export", "conn", ch.Conn, "spi", fmt.Sprintf("%08x", ch.OutSPI), "err", err)
	}
}
