package conf

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeSecrets writes files (name -> text) into a fresh directory with
// mode 0600 and returns the directory.
func writeSecrets(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const rankedSecrets = `# strongSwan's selection rules, one entry per rule
: PSK "default"
192.0.2.2 : PSK "remote-only"
192.0.2.1 192.0.2.2 : PSK "pair"
192.0.2.2 192.0.2.1 : PSK "pair-again"
@gw.example.org @alice.example.org %any : PSK 0x616c696365
@left.example.org : PSK 0sbGVmdA==
@bob.example.org	@carol.example.org @gw2.example.org :	PSK 'several'
"user@example.org" : PSK "quoted id"
include secrets.d/*.secrets
: RSA /etc/ipsec.d/private/gw.pem secret123
`

func TestFindPSK(t *testing.T) {
	dir := writeSecrets(t, map[string]string{
		"ipsec.secrets":             rankedSecrets,
		"secrets.d/extra.secrets":   "10.0.0.1 10.0.0.2 : PSK \"included\"\n",
		"secrets.d/ignored.private": "10.0.0.1 10.0.0.2 : PSK \"not included: the glob wants *.secrets\"\n",
	})
	s, err := LoadSecrets(filepath.Join(dir, "ipsec.secrets"))
	if err != nil {
		t.Fatalf("LoadSecrets: %v", err)
	}
	tests := []struct {
		name          string
		local, remote string
		want          string // "" = no secret
	}{
		// Both IDs are owners: the best match on both sides.
		{"exact pair", "192.0.2.1", "192.0.2.2", "pair"},
		// The owners are a set: order on the line does not matter, and
		// the first of equals in the file wins.
		{"exact pair reversed", "192.0.2.2", "192.0.2.1", "pair"},
		// Only the remote matches: "192.0.2.2" (remote perfect) beats
		// ": PSK" (remote any); "remote-only" is first among the entries
		// with a perfect remote and no local match.
		{"remote side only", "192.0.2.9", "192.0.2.2", "remote-only"},
		// Only the local side matches a specific entry: strongSwan ranks
		// the remote match first, so ": PSK" (remote any) wins over
		// "192.0.2.1 192.0.2.2" (remote none).
		{"local side only loses to default", "192.0.2.1", "192.0.2.99", "default"},
		{"nothing specific", "198.51.100.1", "198.51.100.2", "default"},
		{"FQDN pair, %any dropped, hex secret", "@gw.example.org", "@alice.example.org", "alice"},
		{"FQDN without @ and in other case", "gw.example.org", "ALICE.example.org", "alice"},
		{"single owner as remote, base64 secret", "@x.example.org", "@left.example.org", "left"},
		{"single owner as local", "@left.example.org", "@x.example.org", "default"},
		{"several IDs on a line, tabs", "@gw2.example.org", "@carol.example.org", "several"},
		{"user@fqdn, quoted selector", "192.0.2.1", "USER@example.org", "quoted id"},
		{"user@fqdn with @@", "192.0.2.1", "@@user@example.org", "quoted id"},
		{"from an included file", "10.0.0.1", "10.0.0.2", "included"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sec, ok := s.FindPSK(tt.local, tt.remote)
			if tt.want == "" {
				if ok {
					t.Fatalf("FindPSK(%s, %s) = %q, want none", tt.local, tt.remote, sec.Value)
				}
				return
			}
			if !ok {
				t.Fatalf("FindPSK(%s, %s): none, want %q", tt.local, tt.remote, tt.want)
			}
			if sec.Value != tt.want {
				t.Errorf("FindPSK(%s, %s) = %q (line %d), want %q", tt.local, tt.remote, sec.Value, sec.Line, tt.want)
			}
		})
	}

	var rsa *Secret
	for i := range s.List {
		if s.List[i].Type == "RSA" {
			rsa = &s.List[i]
		}
		if strings.HasSuffix(s.List[i].File, ".private") {
			t.Errorf("%s was included, but the glob names *.secrets", s.List[i].File)
		}
	}
	if rsa == nil || rsa.Value != "/etc/ipsec.d/private/gw.pem" || rsa.Passphrase != "secret123" || len(rsa.IDs) != 0 {
		t.Errorf("RSA entry = %+v, want key file /etc/ipsec.d/private/gw.pem with passphrase secret123", rsa)
	}
	if len(s.List) != 10 {
		t.Errorf("%d secrets, want 10", len(s.List))
	}
}

func TestFindPSKWithoutDefault(t *testing.T) {
	dir := writeSecrets(t, map[string]string{"s": "192.0.2.1 192.0.2.2 : PSK \"pair\"\n: RSA key.pem\n"})
	s, err := LoadSecrets(filepath.Join(dir, "s"))
	if err != nil {
		t.Fatal(err)
	}
	if sec, ok := s.FindPSK("198.51.100.1", "198.51.100.2"); ok {
		t.Errorf("found %q for unrelated IDs", sec.Value)
	}
	// One matching side is enough when nothing better exists (mem_cred.c
	// accepts an entry that matches either ID).
	if sec, ok := s.FindPSK("192.0.2.1", "198.51.100.2"); !ok || sec.Value != "pair" {
		t.Errorf("FindPSK with the local ID only = %q, %v; want pair", sec.Value, ok)
	}
	// An RSA entry is never a PSK.
	if sec, ok := (&Secrets{List: []Secret{{Type: "RSA", Value: "k"}}}).FindPSK("a", "b"); ok {
		t.Errorf("RSA entry returned as PSK %q", sec.Value)
	}
}

func TestSecretValues(t *testing.T) {
	tests := []struct {
		line, want string
	}{
		{`: PSK "with spaces and # hash"`, "with spaces and # hash"},
		{`: PSK 'single quoted'`, "single quoted"},
		{`: PSK "it's"`, "it's"},
		{`: PSK unquoted-word`, "unquoted-word"},
		{`: PSK 0x00ff10`, "\x00\xff\x10"},
		{`: PSK 0X4142`, "AB"},
		{`: PSK 0sQUJD`, "ABC"},
		{`: psk "lower-case type"`, "lower-case type"},
		{":\tPSK\t\"tabs\"", "tabs"},
	}
	for _, tt := range tests {
		t.Run(tt.line, func(t *testing.T) {
			dir := writeSecrets(t, map[string]string{"s": tt.line + "\n"})
			s, err := LoadSecrets(filepath.Join(dir, "s"))
			if err != nil {
				t.Fatalf("LoadSecrets: %v", err)
			}
			if len(s.List) != 1 || s.List[0].Value != tt.want || s.List[0].Type != "PSK" {
				t.Fatalf("secrets %+v, want one PSK %q", s.List, tt.want)
			}
		})
	}
}

func TestSecretsErrors(t *testing.T) {
	text := `# every line below is wrong, and all are reported
: PSK "unterminated
: PSK 0xzz
: PSK 0s!!!
: PSK two words
: PSK
: XAUTH "x"
: FOO bar
no colon here
: RSA a b c
: PSK "a" trailing
include missing.secrets
include loop.secrets
`
	dir := writeSecrets(t, map[string]string{
		"s":            text,
		"loop.secrets": "include s\n",
	})
	t.Chdir(dir)
	s, err := LoadSecrets("s")
	if err == nil {
		t.Fatal("LoadSecrets succeeded")
	}
	want := []string{
		`s:2: PSK: unterminated quote`,
		`s:3: PSK: bad hexadecimal after 0x`,
		`s:4: PSK: bad base64 after 0s`,
		`s:5: PSK: unquoted secret with white space`,
		`s:6: PSK: empty secret`,
		`s:7: warning: XAUTH entry skipped: gosec does not use XAUTH secrets (it uses PSK entries)`,
		`s:8: warning: entry of unknown type "FOO" skipped (gosec uses PSK entries)`,
		`s:9: expected [ID ...] : TYPE value (the colon with white space around it)`,
		`s:10: RSA takes a key file and an optional passphrase`,
		`s:11: PSK: text "trailing" after the closing quote`,
		`s:12: include: missing.secrets does not exist`,
		`loop.secrets:1: include loop: s includes itself`,
	}
	var got []string
	for _, d := range s.Diags {
		got = append(got, d.String())
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("diagnostics\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if len(s.List) != 0 {
		t.Errorf("bad lines gave secrets: %+v", s.List)
	}
}

// TestSecretsPermissions: a secrets file that anyone but its owner may
// read or write is refused, with the reason; 0600 and 0400 are fine.
func TestSecretsPermissions(t *testing.T) {
	tests := []struct {
		mode os.FileMode
		want string // "" = accepted
	}{
		{0o600, ""},
		{0o400, ""},
		{0o644, "group may read, others may read (mode 0644)"},
		{0o640, "group may read (mode 0640)"},
		{0o620, "group may write (mode 0620)"},
		{0o602, "others may write (mode 0602)"},
		{0o666, "group may read and write, others may read and write (mode 0666)"},
		{0o604, "others may read (mode 0604)"},
	}
	for _, tt := range tests {
		t.Run(tt.mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "ipsec.secrets")
			if err := os.WriteFile(p, []byte(": PSK \"k\"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(p, tt.mode); err != nil {
				t.Fatal(err)
			}
			s, err := LoadSecrets(p)
			if tt.want == "" {
				if err != nil {
					t.Fatalf("mode %04o refused: %v", tt.mode, err)
				}
				if len(s.List) != 1 {
					t.Fatalf("mode %04o: %d secrets, want 1", tt.mode, len(s.List))
				}
				return
			}
			if err == nil {
				t.Fatalf("mode %04o accepted", tt.mode)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) || !strings.Contains(msg, "chmod 600") {
				t.Errorf("error %q, want it to say %q and how to fix it", msg, tt.want)
			}
			if len(s.List) != 0 {
				t.Errorf("a refused file gave %d secrets", len(s.List))
			}
		})
	}
	// An included file is checked too.
	dir := writeSecrets(t, map[string]string{"main": "include inc\n", "inc": ": PSK \"k\"\n"})
	if err := os.Chmod(filepath.Join(dir, "inc"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSecrets(filepath.Join(dir, "main")); err == nil || !strings.Contains(err.Error(), "others may read") {
		t.Errorf("world-readable included secrets file: err %v", err)
	}
}

// TestSecretsForms checks the entry forms of ipsec.secrets(5) (FreeS/WAN
// 2.04, Openswan 2.6, Libreswan, strongSwan 5): continuation lines,
// FreeS/WAN's RSA key blocks, the colon separator with white space around
// it (IPv6 selectors), and the entry types gosec does not use, each
// skipped with one warning while the PSKs of the file load.
func TestSecretsForms(t *testing.T) {
	text := `# FreeS/WAN ipsec.secrets(5): "entries ... may be continued on
# subsequent lines, indented"
192.0.2.1 192.0.2.2
	: PSK "continued"
# Libreswan/strongSwan: IPv6 selectors; the separator is " : "
2001:db8::1 2001:db8::2 : PSK "six"
192.0.2.3 2001:db8::3 : PSK 'mixed'
# FreeS/WAN's raw RSA key block: one entry, skipped
: RSA	{
	# RSA 2048 bits   host   Mon Jan  1 00:00:00 2001
	Modulus: 0xc8d2
	PublicExponent: 0x03
	PrivateExponent: 0x85
	}
@road : XAUTH "pw"
@ec : ECDSA ec.pem
user : EAP "x"
192.0.2.9 :PSK "glued"
@after : PSK "after the block"
`
	t.Chdir(writeSecrets(t, map[string]string{"s": text}))
	s, err := LoadSecrets("s")
	if err != nil {
		t.Fatalf("LoadSecrets: %v", err)
	}
	want := map[string]string{
		"192.0.2.1 192.0.2.2":     "continued",
		"2001:db8::1 2001:db8::2": "six",
		"192.0.2.3 2001:db8::3":   "mixed",
		"192.0.2.9":               "glued",
		"@after":                  "after the block",
	}
	got := map[string]string{}
	lines := map[string]int{}
	for _, sec := range s.List {
		got[strings.Join(sec.IDs, " ")] = sec.Value
		lines[strings.Join(sec.IDs, " ")] = sec.Line
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("secrets %v, want %v", got, want)
	}
	if lines["192.0.2.1 192.0.2.2"] != 3 || lines["@after"] != 19 {
		t.Errorf("entry lines %v: an entry is at its first line", lines)
	}
	var warns []string
	for _, d := range s.Diags {
		warns = append(warns, d.String())
	}
	wantWarns := []string{
		"s:9: warning: RSA key block skipped: RSA authentication is not implemented (gosec uses the PSK entries)",
		"s:15: warning: XAUTH entry skipped: gosec does not use XAUTH secrets (it uses PSK entries)",
		"s:16: warning: ECDSA entry skipped: gosec does not use ECDSA secrets (it uses PSK entries)",
		"s:17: warning: EAP entry skipped: gosec does not use EAP secrets (it uses PSK entries)",
	}
	if !reflect.DeepEqual(warns, wantWarns) {
		t.Errorf("diagnostics\n%s\nwant\n%s", strings.Join(warns, "\n"), strings.Join(wantWarns, "\n"))
	}
	if sec, ok := s.FindPSK("2001:db8::1", "2001:db8::2"); !ok || sec.Value != "six" {
		t.Errorf("FindPSK over IPv6 selectors: %+v %v", sec, ok)
	}
}

// TestSecretsNullDevice: --secrets /dev/null is no secrets (issue 13).
func TestSecretsNullDevice(t *testing.T) {
	s, err := LoadSecrets(os.DevNull)
	if err != nil || len(s.List) != 0 {
		t.Fatalf("LoadSecrets(%s): %v, %d secrets", os.DevNull, err, len(s.List))
	}
	// Included, it is still refused: an include names a file of keys.
	dir := writeSecrets(t, map[string]string{"s": "include /dev/null\n"})
	if _, err := LoadSecrets(filepath.Join(dir, "s")); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("include /dev/null: %v", err)
	}
}

// TestSecretsOwner: a secrets file owned by someone other than root or
// the user gosec runs as is refused (its owner could change the keys).
func TestSecretsOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a file away")
	}
	dir := writeSecrets(t, map[string]string{"s": ": PSK \"k\"\n"})
	p := filepath.Join(dir, "s")
	if err := os.Chown(p, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSecrets(p); err == nil || !strings.Contains(err.Error(), "refusing a secrets file: the file is owned by uid 4242") {
		t.Errorf("secrets owned by uid 4242: %v", err)
	}
	if err := os.Chown(p, 0, 0); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadSecrets(p); err != nil {
		t.Errorf("secrets owned by root: %v", err)
	}
}

func TestSecretsSpecialFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "d"), 0o700); err != nil {
		t.Fatal(err)
	}
	s, err := LoadSecrets(filepath.Join(dir, "d"))
	if err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("a directory as secrets file: %v", err)
	}
	if len(s.List) != 0 {
		t.Errorf("secrets from a directory: %+v", s.List)
	}
	if _, err := LoadSecrets(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "cannot read") {
		t.Errorf("missing secrets file: %v", err)
	}
}

// FuzzLoadSecrets: any bytes as ipsec.secrets (includes confined to a
// temporary directory) load without panic, every problem has a line, and
// FindPSK only returns PSK entries.
func FuzzLoadSecrets(f *testing.F) {
	f.Add([]byte(rankedSecrets))
	f.Add([]byte(": PSK 0x00\n@a @b : PSK 0sAA==\n\"x y\" : PSK 'z'\ninclude *\n"))
	f.Add([]byte(": RSA k.pem \"p\"\n: PSK \"\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		dir := t.TempDir()
		p := filepath.Join(dir, "ipsec.secrets")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		s, err := LoadSecrets(p)
		if (err != nil) != (len(s.Diags.Errors()) > 0) {
			t.Fatalf("error %v with %d error diagnostics", err, len(s.Diags.Errors()))
		}
		for _, d := range s.Diags {
			if d.Msg == "" || !strings.HasPrefix(d.File, dir) {
				t.Fatalf("diagnostic %+v", d)
			}
		}
		for _, ids := range [][2]string{{"a", "b"}, {"@a", "@b"}, {"192.0.2.1", "%any"}} {
			if sec, ok := s.FindPSK(ids[0], ids[1]); ok && sec.Type != "PSK" {
				t.Fatalf("FindPSK returned a %s entry", sec.Type)
			}
		}
	})
}

// TestManualKeyFiles: an ipsec.conf holding manual keys gets the check of
// ipsec.secrets (issue 13), at the line of the first key, from what fstat
// said of the file read, as a warning until the test harnesses write
// their manual-key files 0600; without keys, any mode is fine.
func TestManualKeyFiles(t *testing.T) {
	manual := "conn m\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tesp=aes128-sha1\n\tleftspi=0x1000\n\trightspi=0x1001\n" +
		"\tleftespenckey=0x00112233445566778899aabbccddeeff\n\trightespenckey=0x00112233445566778899aabbccddeeff\n" +
		"\tleftespauthkey=0x00112233445566778899aabbccddeeff00112233\n\trightespauthkey=0x00112233445566778899aabbccddeeff00112233\n"
	psk := "conn p\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tauthby=secret\n"
	tests := []struct {
		text string
		mode os.FileMode
		want string // "" = loads
	}{
		{manual, 0o600, ""},
		{manual, 0o400, ""},
		{manual, 0o644, "ipsec.conf:7: refusing manual keys in a file that group may read, others may read (mode 0644), as a secrets file would be refused; run: chmod 600 ipsec.conf"},
		{manual, 0o640, "ipsec.conf:7: refusing manual keys in a file that group may read (mode 0640)"},
		{manual, 0o602, "ipsec.conf:7: refusing manual keys in a file that others may write (mode 0602)"},
		{psk, 0o644, ""},
		// A conn gosec skips still has its keys in the file.
		{strings.Replace(manual, "right=192.0.2.2", "right=2001:db8::2", 1), 0o644, "ipsec.conf:7: refusing manual keys"},
		// The first key keyword of the file, whichever conn holds it.
		{psk + "conn z\n\tahkey=0x00\n\tauto=ignore\n" + manual, 0o644, "ipsec.conf:6: refusing manual keys"},
	}
	for _, tt := range tests {
		t.Run(tt.mode.String(), func(t *testing.T) {
			dir := t.TempDir()
			t.Chdir(dir)
			if err := os.WriteFile("ipsec.conf", []byte(tt.text), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod("ipsec.conf", tt.mode); err != nil {
				t.Fatal(err)
			}
			cfg, err := Load("ipsec.conf", Options{})
			got := renderDiags(cfg.Diags)
			if tt.want == "" && (err != nil || got != "") {
				t.Fatalf("mode %04o: %v\n%s", tt.mode, err, got)
			}
			if tt.want != "" && (err == nil || !strings.Contains(got, tt.want)) {
				t.Errorf("mode %04o: error %v, diagnostics %q, want the error %q", tt.mode, err, got, tt.want)
			}
		})
	}
	if os.Geteuid() == 0 {
		dir := t.TempDir()
		p := filepath.Join(dir, "ipsec.conf")
		if err := os.WriteFile(p, []byte(manual), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, 4242, 4242); err != nil {
			t.Fatal(err)
		}
		if cfg, err := Load(p, Options{}); err == nil || !strings.Contains(renderDiags(cfg.Diags), "ipsec.conf:7: refusing manual keys in this file: the file is owned by uid 4242") {
			t.Errorf("manual keys owned by uid 4242: %q", renderDiags(cfg.Diags))
		}
	}
}
