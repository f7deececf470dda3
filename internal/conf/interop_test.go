package conf

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// interopAllowedWarnings are the keywords of the peers' configs that gosec
// knowingly ignores (a warning, not an error).
var interopAllowedWarnings = []string{
	"uniqueids", // config setup: strongSwan's duplicate-IKE_SA policy
}

// TestInteropConfigs loads, unchanged, the ipsec.conf/ipsec.secrets pairs
// the strongSwan and Linux-kernel peer harnesses use
// (testdata/conf/interop holds copies of /work/shared/interop/conf and
// /work/shared/kernel-peer/ike/conf), and checks that every conn finds its
// pre-shared key.
func TestInteropConfigs(t *testing.T) {
	root := filepath.Join(corpusDir(t), "interop")
	confs, err := filepath.Glob(filepath.Join(root, "*", "*", "ipsec.conf"))
	if err != nil {
		t.Fatal(err)
	}
	if len(confs) < 20 {
		t.Fatalf("%d interop configs, want the 20 of the two harnesses", len(confs))
	}
	for _, path := range confs {
		rel, _ := filepath.Rel(root, path)
		t.Run(filepath.Dir(rel), func(t *testing.T) {
			cfg, err := Load(path, testOptions())
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			for _, d := range cfg.Diags {
				ok := false
				for _, kw := range interopAllowedWarnings {
					if d.Warning && strings.HasPrefix(d.Msg, kw+" ") {
						ok = true
					}
				}
				if !ok {
					t.Errorf("unexpected diagnostic: %s", d)
				}
			}
			if len(cfg.Conns) != 1 {
				t.Fatalf("%d conns, want 1", len(cfg.Conns))
			}
			c := cfg.Conns[0]
			if c.Auto != "add" || c.AuthBy != "secret" || c.KeyExchange != "ikev1" || c.Manual {
				t.Errorf("conn %s: auto=%s authby=%s keyexchange=%s manual=%v", c.Name, c.Auto, c.AuthBy, c.KeyExchange, c.Manual)
			}
			if !c.IKE.Strict || (!c.ESP.Strict && !c.AH.Strict) {
				t.Errorf("conn %s: the harness's proposals are strict (!)", c.Name)
			}

			// The secrets file, with the mode an administrator gives it
			// (git and the shared copy do not keep 0600).
			data, err := os.ReadFile(filepath.Join(filepath.Dir(path), "ipsec.secrets"))
			if err != nil {
				t.Fatal(err)
			}
			sp := filepath.Join(t.TempDir(), "ipsec.secrets")
			if err := os.WriteFile(sp, data, 0o600); err != nil {
				t.Fatal(err)
			}
			sec, err := LoadSecrets(sp)
			if err != nil {
				t.Fatalf("LoadSecrets: %v", err)
			}
			// The IDs the IKE engine looks the key up with: leftid or
			// the address; for a %any peer, the address it comes from
			// (192.0.2.1 in the NAT scenario).
			local, remote := c.Left.ID, c.Right.ID
			if local == "" {
				local = c.Left.Addr.String()
			}
			if remote == "" {
				remote = "192.0.2.1"
				if c.Right.Addr.IsValid() {
					remote = c.Right.Addr.String()
				}
			}
			psk, ok := sec.FindPSK(local, remote)
			if !ok || psk.Value != "gosec-interop-psk" {
				t.Errorf("FindPSK(%s, %s) = %q, %v; want gosec-interop-psk", local, remote, psk.Value, ok)
			}
		})
	}
}

// TestInteropCopiesCurrent checks the copies against the harnesses' own
// files when those are on this machine.
func TestInteropCopiesCurrent(t *testing.T) {
	sources := map[string]string{
		"/work/shared/interop/conf":         "strongswan-",
		"/work/shared/kernel-peer/ike/conf": "kernel-",
	}
	root := filepath.Join(corpusDir(t), "interop")
	found := 0
	for src, prefix := range sources {
		files, _ := filepath.Glob(filepath.Join(src, "*", "*", "ipsec.*"))
		for _, f := range files {
			rel, _ := filepath.Rel(src, f)
			copyPath := filepath.Join(root, prefix+rel)
			want, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			got, err := os.ReadFile(copyPath)
			if err != nil {
				t.Errorf("%s has no copy in testdata/conf/interop: %v", f, err)
				continue
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from %s: copy it again", copyPath, f)
			}
			found++
		}
	}
	if found == 0 {
		t.Skip("the harnesses' configs (/work/shared) are not on this machine")
	}
}
