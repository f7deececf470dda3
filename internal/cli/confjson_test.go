package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestConfCheckJSON(t *testing.T) {
	const key = "0x0123456789abcdef0123456789abcdef"
	tests := []struct {
		name     string
		conf     string
		wantCode int
		check    func(t *testing.T, out confCheckJSON)
	}{
		{
			name: "ok",
			conf: "config setup\n\tmetrics=127.0.0.1:9569\n\nconn m\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tleftspi=0x1001\n\trightspi=0x1002\n\tesp=aes128-sha1\n" +
				"\tleftespenckey=" + key + "\n\trightespenckey=" + key + "\n\tleftespauthkey=0x" + strings.Repeat("ab", 20) + "\n\trightespauthkey=0x" + strings.Repeat("cd", 20) +
				"\n\tcompress=yes\n\tauto=add\n\nconn i\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tauthby=secret\n\tike=aes128-sha256-modp2048!\n\tesp=aes128gcm16!\n\tauto=add\n",
			wantCode: 0,
			check: func(t *testing.T, out confCheckJSON) {
				if !out.OK || len(out.Conns) != 2 || out.Setup["metrics"] != "127.0.0.1:9569" {
					t.Fatalf("%+v", out)
				}
				m := out.Conns[0]
				if m.Name != "m" || m.Keying != "manual" || m.Left.SPI != 0x1001 || m.Left.KeyLength.ESPEnc != 16 || m.Right.KeyLength.ESPAuth != 20 {
					t.Fatalf("manual conn: %+v", m)
				}
				i := out.Conns[1]
				if i.Keying != "ike" || i.IKE == "" || i.ESP == "" || i.Line != 17 {
					t.Fatalf("ike conn: %+v", i)
				}
				if len(out.Diagnostics) != 1 || out.Diagnostics[0].Severity != "warning" || out.Diagnostics[0].Line != 14 || !strings.Contains(out.Diagnostics[0].Message, "compress") {
					t.Fatalf("diagnostics: %+v", out.Diagnostics)
				}
				if len(out.SecretList) != 1 || out.SecretList[0].Type != "PSK" || len(out.SecretList[0].IDs) != 2 {
					t.Fatalf("secrets: %+v", out.SecretList)
				}
			},
		},
		{
			// A conn skipped (IPv6) is listed with the keyword's line, and
			// the exit status is 3 as without --json.
			name:     "skipped",
			conf:     "conn six\n\tleft=192.0.2.1\n\tright=2001:db8::2\n\tauthby=secret\n\tauto=add\n\nconn four\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tauthby=secret\n\tauto=add\n",
			wantCode: 3,
			check: func(t *testing.T, out confCheckJSON) {
				if !out.OK || len(out.Conns) != 1 || len(out.Skipped) != 1 {
					t.Fatalf("%+v", out)
				}
				if s := out.Skipped[0]; s.Name != "six" || s.Line != 3 || s.Feature != "IPv6" || !strings.Contains(s.Message, "right=2001:db8::2") {
					t.Fatalf("skipped: %+v", s)
				}
			},
		},
		{
			name:     "error",
			conf:     "conn bad\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tauthby=secret\n\tbogus=1\n",
			wantCode: 1,
			check: func(t *testing.T, out confCheckJSON) {
				if out.OK || len(out.Diagnostics) == 0 || out.Diagnostics[0].Severity != "error" || out.Diagnostics[0].Line != 5 {
					t.Fatalf("%+v", out)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := filepath.Join(dir, "ipsec.conf")
			// 0600: a config holding manual keys that others may read draws
			// a warning of its own.
			if err := os.WriteFile(cfg, []byte(tt.conf), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, "ipsec.secrets"), []byte("192.0.2.1 192.0.2.2 : PSK \"very-secret-psk\"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			var stdout, stderr bytes.Buffer
			code := ConfCheck(Env{Stdout: &stdout, Stderr: &stderr}, []string{"--config", cfg, "--json"})
			if code != tt.wantCode {
				t.Fatalf("exit %d, want %d; stderr %s", code, tt.wantCode, stderr.String())
			}
			for _, secret := range []string{"very-secret-psk", "0123456789abcdef", strings.Repeat("ab", 20)} {
				if strings.Contains(stdout.String(), secret) {
					t.Fatalf("key material in the JSON:\n%s", stdout.String())
				}
			}
			var out confCheckJSON
			if err := json.Unmarshal(stdout.Bytes(), &out); err != nil {
				t.Fatalf("%v\n%s", err, stdout.String())
			}
			if out.Schema != ConfCheckSchema {
				t.Fatalf("schema %d", out.Schema)
			}
			tt.check(t, out)
		})
	}
}
