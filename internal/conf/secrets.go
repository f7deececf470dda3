package conf

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Secret is one entry of ipsec.secrets.
type Secret struct {
	IDs  []string // selectors; empty means ": PSK" (any)
	Type string   // "PSK" or "RSA"
	// Value is the PSK itself, or the RSA key file (never printed).
	Value      string
	Passphrase string
	File       string
	Line       int
}

// Secrets is a loaded ipsec.secrets.
type Secrets struct {
	List  []Secret
	Diags Diags
}

// LoadSecrets reads an ipsec.secrets file (and its includes). A file that
// group or other may read or write is refused: it holds keys.
func LoadSecrets(path string) (*Secrets, error) {
	p := &secretsParser{}
	p.read(path, pos{file: path}, nil)
	sortDiags(p.diags, nil)
	s := &Secrets{List: p.list, Diags: p.diags}
	return s, s.Diags.Err()
}

type secretsParser struct {
	list  []Secret
	diags Diags
	files int
	// openFiles skips the mode and owner checks: for the tests of
	// checked-out upstream files only.
	openFiles bool
}

func (p *secretsParser) errorf(at pos, format string, args ...any) {
	if len(p.diags) < MaxDiagnostics {
		p.diags = append(p.diags, Diag{File: at.file, Line: at.line, Msg: fmt.Sprintf(format, args...)})
	}
}

func (p *secretsParser) warnf(at pos, format string, args ...any) {
	if len(p.diags) < MaxDiagnostics {
		p.diags = append(p.diags, Diag{File: at.file, Line: at.line, Msg: fmt.Sprintf(format, args...), Warning: true})
	}
}

// openSecrets opens a secrets file once and checks it on the open
// descriptor (fstat: what is checked is what is read, with no window
// between a stat and the open): a regular file, owned by root or by the
// user gosec runs as, that neither group nor others may read or write.
// The null device is an empty secrets file (--secrets /dev/null: no
// secrets). It returns nil data and no error for the null device.
func openSecrets(path string, top, openFiles bool) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cannot read: %v", unwrapPath(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cannot read: %v", err)
	}
	if top && isNullDevice(fi) {
		return nil, nil
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file")
	}
	if err := checkKeyFileOwner(fi, path); err != nil && !openFiles {
		return nil, fmt.Errorf("refusing a secrets file: %v", err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 && !openFiles {
		return nil, fmt.Errorf("refusing a secrets file that %s (mode %04o): it holds keys; run: chmod 600 %s", accessWho(perm), perm, path)
	}
	if fi.Size() > MaxFileSize {
		return nil, fmt.Errorf("file larger than %d bytes", MaxFileSize)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(&limitReader{f, MaxFileSize + 1}); err != nil {
		return nil, fmt.Errorf("cannot read: %v", err)
	}
	if buf.Len() > MaxFileSize {
		return nil, fmt.Errorf("file larger than %d bytes", MaxFileSize)
	}
	return buf.Bytes(), nil
}

func (p *secretsParser) read(path string, from pos, stack []string) {
	abs, _ := filepath.Abs(path)
	for _, f := range stack {
		if f == abs {
			p.errorf(from, "include loop: %s includes itself", path)
			return
		}
	}
	if len(stack) >= MaxIncludeDepth {
		p.errorf(from, "includes nested deeper than %d", MaxIncludeDepth)
		return
	}
	if p.files++; p.files > MaxFiles {
		p.errorf(from, "more than %d files included", MaxFiles)
		return
	}
	data, err := openSecrets(path, len(stack) == 0, p.openFiles)
	if err != nil {
		p.errorf(pos{file: path}, "%v", err)
		return
	}
	stack = append(stack, abs)
	for _, e := range secretEntries(data) {
		at := pos{file: path, line: e.line}
		text := e.text
		if f := strings.Fields(text); f[0] == "include" && !e.continued {
			if len(f) != 2 {
				p.errorf(at, "include takes exactly one file name or pattern")
				continue
			}
			pattern := unquote(f[1])
			if !filepath.IsAbs(pattern) {
				pattern = filepath.Join(filepath.Dir(path), pattern)
			}
			matches, _ := filepath.Glob(pattern)
			if len(matches) == 0 && !strings.ContainsAny(pattern, "*?[") {
				p.errorf(at, "include: %s does not exist", pattern)
			}
			sort.Strings(matches)
			for _, m := range matches {
				p.read(m, at, stack)
			}
			continue
		}
		p.entry(text, at, path)
	}
}

// secretEntry is one entry of ipsec.secrets: its first line and its text
// with the continuation lines joined.
type secretEntry struct {
	text      string
	line      int
	continued bool
}

// secretEntries splits a secrets file into entries. As ipsec.secrets(5)
// of FreeS/WAN, Openswan and Libreswan say, an entry may continue on the
// following lines if they start with white space; a FreeS/WAN RSA key
// ": RSA {" runs to its closing brace however the lines inside are
// indented.
func secretEntries(data []byte) []secretEntry {
	var out []secretEntry
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), MaxFileSize)
	line, depth := 0, 0
	for sc.Scan() {
		line++
		raw := stripComment(sc.Text())
		text := strings.TrimSpace(raw)
		if text == "" {
			continue
		}
		indented := raw[0] == ' ' || raw[0] == '\t'
		if (indented || depth > 0) && len(out) > 0 {
			last := &out[len(out)-1]
			last.text += " " + text
			last.continued = true
		} else {
			out = append(out, secretEntry{text: text, line: line})
		}
		depth += strings.Count(text, "{") - strings.Count(text, "}")
		if depth < 0 {
			depth = 0
		}
	}
	return out
}

// secretTypes are the entry types of the upstream ipsec.secrets(5):
// strongSwan's PSK, RSA, ECDSA, BLISS, PKCS8, P12, EAP, NTLM, XAUTH, PIN,
// PPK; Libreswan's PSK, RSA, XAUTH, PPK, NULL.
var secretTypes = map[string]bool{
	"PSK": true, "RSA": true, "ECDSA": true, "BLISS": true, "PKCS8": true, "P12": true, "EAP": true,
	"NTLM": true, "XAUTH": true, "PIN": true, "PPK": true, "NULL": true, "PRIVATE": true,
}

// secretSeparator finds the ':' between the selectors and the secret: a
// colon with white space (or the line's start or end) on both sides, so
// that IPv6 addresses in the selectors ("2001:db8::2 : PSK ...") stay
// whole; as a fallback, a colon written against the type (":PSK").
func secretSeparator(s string) int {
	space := func(i int) bool { return i < 0 || i >= len(s) || s[i] == ' ' || s[i] == '\t' }
	inQuote := byte(0)
	fallback := -1
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQuote != 0:
			if c == inQuote {
				inQuote = 0
			}
		case c == '"' || c == '\'':
			inQuote = c
		case c == ':' && space(i-1):
			if space(i + 1) {
				return i
			}
			if fallback < 0 {
				rest := s[i+1:]
				if j := strings.IndexAny(rest, " \t"); j >= 0 {
					rest = rest[:j]
				}
				if secretTypes[strings.ToUpper(rest)] {
					fallback = i
				}
			}
		}
	}
	return fallback
}

// entry reads one "[selectors] : TYPE value" entry.
func (p *secretsParser) entry(text string, at pos, path string) {
	colon := secretSeparator(text)
	if colon < 0 {
		p.errorf(at, "expected [ID ...] : TYPE value (the colon with white space around it)")
		return
	}
	ids := strings.Fields(text[:colon])
	for i := range ids {
		ids[i] = unquote(ids[i])
	}
	rest := strings.TrimSpace(text[colon+1:])
	typ, val := rest, ""
	if i := strings.IndexAny(rest, " \t"); i >= 0 {
		typ, val = rest[:i], strings.TrimSpace(rest[i:])
	}
	s := Secret{IDs: ids, Type: strings.ToUpper(typ), File: path, Line: at.line}
	switch s.Type {
	case "PSK":
		v, err := secretValue(val)
		if err != nil {
			p.errorf(at, "PSK: %v", err)
			return
		}
		s.Value = v
	case "RSA":
		if strings.HasPrefix(val, "{") {
			p.warnf(at, "RSA key block skipped: RSA authentication is not implemented (gosec uses the PSK entries)")
			return
		}
		f := strings.Fields(val)
		if len(f) == 0 || len(f) > 2 {
			p.errorf(at, "RSA takes a key file and an optional passphrase")
			return
		}
		s.Value = unquote(f[0])
		if len(f) == 2 {
			s.Passphrase = unquote(f[1])
		}
	case "":
		p.errorf(at, "no secret type after the colon (PSK, RSA...)")
		return
	default:
		if secretTypes[s.Type] {
			p.warnf(at, "%s entry skipped: gosec does not use %s secrets (it uses PSK entries)", s.Type, s.Type)
		} else {
			p.warnf(at, "entry of unknown type %q skipped (gosec uses PSK entries)", typ)
		}
		return
	}
	p.list = append(p.list, s)
}

// accessWho says who other than the owner may read or write a file of
// mode perm, e.g. "group may read, others may read and write".
func accessWho(perm os.FileMode) string {
	var parts []string
	for _, w := range []struct {
		who   string
		shift uint
	}{{"group", 3}, {"others", 0}} {
		var can []string
		if perm>>w.shift&4 != 0 {
			can = append(can, "read")
		}
		if perm>>w.shift&2 != 0 {
			can = append(can, "write")
		}
		if perm>>w.shift&1 != 0 {
			can = append(can, "execute")
		}
		if len(can) > 0 {
			parts = append(parts, w.who+" may "+strings.Join(can, " and "))
		}
	}
	return strings.Join(parts, ", ")
}

// secretValue reads a secret as strongSwan's extract_secret does: text
// between single or double quotes is taken as it is; an unquoted value
// starting with 0x is hexadecimal and one starting with 0s is base64, and
// the bytes they encode are the secret; any other unquoted word is taken
// as it is.
func secretValue(v string) (string, error) {
	if v == "" {
		return "", fmt.Errorf("empty secret")
	}
	if v[0] == '"' || v[0] == '\'' {
		q := v[0]
		end := strings.IndexByte(v[1:], q)
		if end < 0 {
			return "", fmt.Errorf("unterminated quote")
		}
		if rest := strings.TrimSpace(v[end+2:]); rest != "" {
			return "", fmt.Errorf("text %q after the closing quote", rest)
		}
		return v[1 : end+1], nil
	}
	if strings.ContainsAny(v, " \t") {
		return "", fmt.Errorf("unquoted secret with white space")
	}
	if len(v) > 2 && v[0] == '0' {
		switch v[1] {
		case 'x', 'X':
			b, err := hex.DecodeString(v[2:])
			if err != nil {
				return "", fmt.Errorf("bad hexadecimal after 0x")
			}
			return string(b), nil
		case 's', 'S':
			b, err := base64.StdEncoding.DecodeString(v[2:])
			if err != nil {
				return "", fmt.Errorf("bad base64 after 0s")
			}
			return string(b), nil
		}
	}
	return v, nil
}

// FindPSK returns the pre-shared key for the pair of IDs the way
// strongSwan chooses among ipsec.secrets entries (stroke_cred.c builds the
// owners, mem_cred.c scores them, credential_manager.c picks):
//   - an entry's owners are its selectors without %any; none left means
//     the single owner %any (": PSK" is "%any");
//   - each side scores "perfect" when an owner is that ID, "any" when an
//     owner is %any, else nothing; an entry needs a score on at least one
//     side;
//   - the best entry has the best remote score, then the best local score;
//     the first in the file wins among equals.
//
// IDs compare as strongSwan's identities do: "@host" and "host" are the
// same FQDN, FQDNs and user@fqdn compare without case, addresses as
// addresses.
func (s *Secrets) FindPSK(local, remote string) (Secret, bool) {
	var best Secret
	bestLocal, bestRemote, found := idMatchNone, idMatchNone, false
	l, r := canonicalID(local), canonicalID(remote)
	for _, sec := range s.List {
		if sec.Type != "PSK" {
			continue
		}
		owners := secretOwners(sec.IDs)
		ml, mr := ownerMatch(owners, l), ownerMatch(owners, r)
		if ml == idMatchNone && mr == idMatchNone {
			continue
		}
		if !found || mr > bestRemote || mr == bestRemote && ml > bestLocal {
			best, bestLocal, bestRemote, found = sec, ml, mr, true
		}
	}
	return best, found
}

// strongSwan's id_match_t ranks, as far as gosec's IDs need them.
const (
	idMatchNone    = 0
	idMatchAny     = 1
	idMatchPerfect = 20
)

// anyID is the canonical form of strongSwan's ID_ANY.
const anyID = "%any"

// canonicalID renders an ID the way strongSwan's
// identification_create_from_string classifies it, so that equal
// identities compare equal as strings.
func canonicalID(id string) string {
	id = strings.TrimSpace(unquote(strings.TrimSpace(id)))
	switch id {
	case "", "%any", "%any6", "0.0.0.0", "*", "::", "0::0":
		return anyID
	}
	if strings.Contains(id, "=") {
		return "dn:" + id
	}
	if strings.HasPrefix(id, "@#") {
		return "keyid:" + strings.ToLower(id[2:])
	}
	if strings.HasPrefix(id, "@@") {
		return "user_fqdn:" + strings.ToLower(id[2:])
	}
	if strings.HasPrefix(id, "@") {
		return "fqdn:" + strings.ToLower(id[1:])
	}
	if strings.Contains(id, "@") {
		return "user_fqdn:" + strings.ToLower(id)
	}
	if a, err := netip.ParseAddr(id); err == nil {
		return "addr:" + a.Unmap().String()
	}
	return "fqdn:" + strings.ToLower(id)
}

// secretOwners turns an entry's selectors into strongSwan's owner list.
func secretOwners(ids []string) []string {
	var out []string
	for _, id := range ids {
		if c := canonicalID(id); c != anyID {
			out = append(out, c)
		}
	}
	if len(out) == 0 {
		out = []string{anyID}
	}
	return out
}

// ownerMatch is mem_cred.c's has_owner: the best match of id among the
// owners.
func ownerMatch(owners []string, id string) int {
	best := idMatchNone
	for _, o := range owners {
		switch {
		case o == anyID:
			best = max(best, idMatchAny)
		case o == id:
			return idMatchPerfect
		}
	}
	return best
}
