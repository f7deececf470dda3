package savekeys

import (
	"bytes"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/internal/integ"
)

func TestLines(t *testing.T) {
	src, dst := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	tests := []struct {
		name string
		cfg  esp.Config
		want string
		err  bool
	}{
		{"aes-cbc-sha1", esp.Config{Cipher: esp.CipherAESCBC, EncKey: []byte{1, 2}, Integ: integ.HMACSHA1_96, AuthKey: []byte{0xab}},
			`"IPv4","192.0.2.1","192.0.2.2","0x0000abcd","AES-CBC [RFC3602]","0x0102","HMAC-SHA-1-96 [RFC2404]","0xab"` + "\n", false},
		{"gcm", esp.Config{Cipher: esp.CipherAESGCM16, EncKey: []byte{0xff}},
			`"IPv4","192.0.2.1","192.0.2.2","0x0000abcd","AES-GCM with 16 octet ICV [RFC4106]","0xff","NULL","0x"` + "\n", false},
		{"3des-md5", esp.Config{Cipher: esp.Cipher3DESCBC, EncKey: []byte{7}, Integ: integ.HMACMD5_96, AuthKey: []byte{8}},
			`"IPv4","192.0.2.1","192.0.2.2","0x0000abcd","TripleDES-CBC [RFC2451]","0x07","HMAC-MD5-96 [RFC2403]","0x08"` + "\n", false},
		{"null-sha512", esp.Config{Cipher: esp.CipherNull, Integ: integ.HMACSHA512_256, AuthKey: []byte{9}},
			`"IPv4","192.0.2.1","192.0.2.2","0x0000abcd","NULL","0x","HMAC-SHA-512-256 [RFC4868]","0x09"` + "\n", false},
		{"chacha", esp.Config{Cipher: esp.CipherChaCha20Poly1305, EncKey: make([]byte, 36)}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ESPLine(src, dst, 0xabcd, tt.cfg)
			if (err != nil) != tt.err {
				t.Fatalf("err = %v", err)
			}
			if got != tt.want {
				t.Fatalf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
	if got := IKEv1Line([8]byte{0x95, 0x2b, 0xd8, 0x4c, 0x1d, 0x2f, 0x30, 0x4d}, []byte{0x6f, 0x2b}); got != "952bd84c1d2f304d,6f2b\n" {
		t.Fatalf("IKEv1Line = %q", got)
	}
}

func TestFilesAreMode0600(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "keys")
	// A pre-existing world-readable table is tightened.
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ESPFile), []byte("# old\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	w, err := Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.IKEv1([8]byte{1}, []byte{2}); err != nil {
		t.Fatal(err)
	}
	if err := w.ESP(netip.MustParseAddr("10.0.0.1"), netip.MustParseAddr("10.0.0.2"), 1, esp.Config{Cipher: esp.CipherChaCha20Poly1305}); err == nil {
		t.Fatal("ChaCha20 SA: no error")
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{IKEv1File, ESPFile} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: mode %v", name, fi.Mode())
		}
	}
	data, _ := os.ReadFile(filepath.Join(dir, ESPFile))
	if !bytes.HasPrefix(data, []byte("# old\n# SPI 0x00000001: ")) {
		t.Fatalf("esp_sa:\n%s", data)
	}
	data, _ = os.ReadFile(filepath.Join(dir, IKEv1File))
	if string(data) != "0100000000000000,02\n" {
		t.Fatalf("ikev1_decryption_table: %q", data)
	}
}

func TestRefusesNonRegular(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, IKEv1File), 0o700); err != nil {
		t.Fatal(err)
	}
	_, err := Open(dir)
	if err == nil || !strings.Contains(err.Error(), IKEv1File) {
		t.Fatalf("Open over a directory: %v", err)
	}
}
