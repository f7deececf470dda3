package daemon

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/internal/clock"
	"github.com/gosec-ipsec/gosec/internal/conf"
	"github.com/gosec-ipsec/gosec/internal/integ"
)

// TestWipeManualKeys: at stop the manual keys of the configuration (the
// very slices the specs hold) are zeros.
func TestWipeManualKeys(t *testing.T) {
	keys := [][]byte{bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 20), bytes.Repeat([]byte{3}, 16), bytes.Repeat([]byte{4}, 20), bytes.Repeat([]byte{5}, 20), bytes.Repeat([]byte{6}, 20)}
	d := newDaemon(Options{Clock: clock.Real{}})
	d.conns = &Config{Conns: map[string]*ConnSpec{
		"esp": {Manual: &Manual{InESP: esp.Config{EncKey: keys[0], AuthKey: keys[1]}, OutESP: esp.Config{EncKey: keys[2], AuthKey: keys[3]}}},
		"ah":  {Manual: &Manual{InAH: ah.Config{Key: keys[4]}, OutAH: ah.Config{Key: keys[5]}}},
		"ike": {},
	}}
	d.wipeManualKeys()
	for i, k := range keys {
		if !bytes.Equal(k, make([]byte, len(k))) {
			t.Errorf("key %d not wiped: %x", i, k)
		}
	}
}

// manualConf has three manual conns: one up at start, one routed (up at
// start too: manual keys need no negotiation) that takes its keys from
// an also= template, one added only.
const manualConf = `conn %default
	left=192.0.2.1
	right=192.0.2.2
	replay_window=64

conn keys
	esp=aes128-sha1
	leftespenckey=0x0101010101010101010101010101010V
	rightespenckey=0x02020202020202020202020202020202
	leftespauthkey=0x0303030303030303030303030303030303030303
	rightespauthkey=0x0404040404040404040404040404040404040404
	leftspi=0x1000
	rightspi=0x2000
	auto=ignore

conn started
	leftsubnet=10.1.0.0/24
	rightsubnet=10.2.0.0/24
	leftspi=0x1001
	rightspi=0x2001
	also=keys
	auto=start

conn routed
	leftsubnet=10.1.1.0/24
	rightsubnet=10.2.1.0/24
	leftspi=0x1002
	rightspi=0x2002
	also=keys
	auto=route

conn added
	leftsubnet=10.1.2.0/24
	rightsubnet=10.2.2.0/24
	leftspi=0x1003
	rightspi=0x2003
	ah=sha256
	leftahkey=0x0505050505050505050505050505050505050505050505050505050505050505
	rightahkey=0x0606060606060606060606060606060606060606060606060606060606060606
	auto=add
`

// fileDaemon is testDaemon with its configuration loaded from an
// ipsec.conf (keys version v).
func fileDaemon(t *testing.T, v int) (*Daemon, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ipsec.conf")
	writeManualConf(t, path, v)
	d, _, _ := testDaemon(t)
	d.opts.ConfigPath, d.opts.SecretsPath, d.opts.Local = path, filepath.Join(t.TempDir(), "none"), "left"
	cfg, err := d.loadConfig()
	if err != nil {
		t.Fatal(err)
	}
	d.conns = cfg
	return d, path
}

func writeManualConf(t *testing.T, path string, v int) {
	t.Helper()
	if err := os.WriteFile(path, []byte(strings.Replace(manualConf, "0V", fmt.Sprintf("0%d", v), 1)), 0o600); err != nil {
		t.Fatal(err)
	}
}

// checkWiped fails unless every manual key of d's configuration is zeros
// and marked wiped; it returns how many key octets it looked at.
func checkWiped(t *testing.T, d *Daemon) int {
	t.Helper()
	n := 0
	for name, c := range d.conns.Conns {
		if c.Manual == nil {
			continue
		}
		if !c.Manual.Wiped {
			t.Errorf("conn %s: keys not marked wiped", name)
		}
		for i, k := range c.Manual.keys() {
			n += len(k)
			if !bytes.Equal(k, make([]byte, len(k))) {
				t.Errorf("conn %s: key %d not wiped: %x", name, i, k)
			}
		}
	}
	return n
}

// TestWipeAfterInstall: once the conns are installed (start, gosec up,
// reload) the configuration holds no manual key, while the SAs still
// protect traffic with the real keys; gosec up of a conn whose keys were
// wiped reads them again from ipsec.conf, and refuses when the file
// changed meanwhile.
func TestWipeAfterInstall(t *testing.T) {
	d, path := fileDaemon(t, 1)
	if d.conns.Conns["started"].Manual.Wiped || len(d.conns.Conns["started"].Manual.InESP.EncKey) != 16 {
		t.Fatal("keys not loaded")
	}
	d.autoStart()
	if n := checkWiped(t, d); n != 3*72+2*32 { // keys (auto=ignore), started, routed; added (AH)
		t.Fatalf("looked at %d key octets, want %d", n, 3*72+2*32)
	}
	if len(d.active) != 2 {
		t.Fatalf("%d conns up, want 2", len(d.active))
	}
	// The SAs still have the keys: a packet sealed with the configured
	// keys (outbound SA of "started") opens with a suite keyed from the
	// file's values.
	want := esp.Config{Cipher: esp.CipherAESCBC, EncKey: bytes.Repeat([]byte{2}, 16), Integ: integ.HMACSHA1_96, AuthKey: bytes.Repeat([]byte{4}, 20)}
	checkSealsWith(t, d.active["started"].out.ESP, want)

	// gosec up of the added conn reads its keys again, installs them and
	// wipes them at once.
	if err := d.up(context.Background(), "added", func(string) {}); err != nil {
		t.Fatal(err)
	}
	if _, ok := d.active["added"]; !ok {
		t.Fatal("added is not up")
	}
	checkWiped(t, d)
	if d.active["added"].spec.Manual.Wiped != true {
		t.Error("the installed spec's keys are not wiped")
	}

	// Down and up again: the keys come from the file again.
	if err := d.down("started", func(string) {}); err != nil {
		t.Fatal(err)
	}
	if err := d.up(context.Background(), "started", func(string) {}); err != nil {
		t.Fatal(err)
	}
	checkSealsWith(t, d.active["started"].out.ESP, want)
	checkWiped(t, d)

	// The file's keys changed: up refuses (a reload applies them).
	if err := d.down("started", func(string) {}); err != nil {
		t.Fatal(err)
	}
	writeManualConf(t, path, 2)
	err := d.up(context.Background(), "started", func(string) {})
	if err == nil || !strings.Contains(err.Error(), "run gosec reload") {
		t.Fatalf("up after the keys changed: %v", err)
	}

	// Reload: "routed" changed (its inbound key) and is re-established,
	// "added" did not and stays as it was; everything ends wiped.
	addedIn, routedIn := d.active["added"].in, d.active["routed"].in
	if err := d.reload(func(string) {}); err != nil {
		t.Fatal(err)
	}
	checkWiped(t, d)
	if d.active["added"].in != addedIn {
		t.Error("reload re-established an unchanged conn whose keys were wiped")
	}
	if a, ok := d.active["routed"]; !ok || a.in == routedIn {
		t.Error("routed, whose key changed, was not re-established by the reload")
	}
}

// checkSealsWith seals a packet with s and opens it with a suite keyed
// from cfg (what the configuration said).
func checkSealsWith(t *testing.T, s *esp.Suite, cfg esp.Config) {
	t.Helper()
	peer, err := esp.NewSuite(cfg)
	if err != nil {
		t.Fatal(err)
	}
	payload := []byte("after the wipe the SA still has its keys")
	off := s.Headroom()
	buf := make([]byte, off+len(payload), off+len(payload)+64)
	copy(buf[off:], payload)
	pkt, err := s.Seal(buf, off, len(payload), 0x2001, 1, 4)
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := peer.Open(pkt, 1)
	if err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("open with the configured keys: %v %q", err, got)
	}
}

// TestWipeParsedKeys: the conns conf.Load returns lose their key bytes as
// soon as the daemon resolved them; the specs keep copies of their own.
func TestWipeParsedKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ipsec.conf")
	writeManualConf(t, path, 1)
	cfg, err := conf.Load(path, conf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := resolveConns(cfg, "left", func(netip.Addr) bool { return false })
	if err != nil {
		t.Fatal(err)
	}
	wipeParsedKeys(cfg)
	n := 0
	for _, c := range cfg.Conns {
		for _, k := range [][]byte{c.Left.ESPEncKey, c.Left.ESPAuthKey, c.Left.AHKey, c.Right.ESPEncKey, c.Right.ESPAuthKey, c.Right.AHKey} {
			n += len(k)
			if !bytes.Equal(k, make([]byte, len(k))) {
				t.Errorf("conn %s: parsed key not wiped: %x", c.Name, k)
			}
		}
	}
	if n != 3*72+2*32 {
		t.Fatalf("looked at %d parsed key octets", n)
	}
	if k := out.Conns["added"].Manual.InAH.Key; !bytes.Equal(k, bytes.Repeat([]byte{5}, 32)) {
		t.Fatalf("the spec's key went with the parsed one: %x", k)
	}
	if k := out.Conns["started"].Manual.OutESP.AuthKey; !bytes.Equal(k, bytes.Repeat([]byte{4}, 20)) {
		t.Fatalf("the spec's key went with the parsed one: %x", k)
	}
}
