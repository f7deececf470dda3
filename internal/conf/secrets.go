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
}

func (p *secretsParser) errorf(at pos, format string, args ...any) {
	if len(p.diags) < MaxDiagnostics {
		p.diags = append(p.diags, Diag{File: at.file, Line: at.line, Msg: fmt.Sprintf(format, args...)})
	}
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
	fi, err := os.Stat(path)
	if err != nil {
		p.errorf(pos{file: path}, "cannot read: %v", unwrapPath(err))
		return
	}
	if !fi.Mode().IsRegular() {
		p.errorf(pos{file: path}, "not a regular file")
		return
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		p.errorf(pos{file: path}, "refusing a secrets file that %s (mode %04o): it holds keys; run: chmod 600 %s", accessWho(perm), perm, path)
		return
	}
	data, err := readLimited(path)
	if err != nil {
		p.errorf(pos{file: path}, "%v", err)
		return
	}
	stack = append(stack, abs)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), MaxFileSize)
	line := 0
	for sc.Scan() {
		line++
		at := pos{file: path, line: line}
		text := strings.TrimSpace(stripComment(sc.Text()))
		if text == "" {
			continue
		}
		if f := strings.Fields(text); f[0] == "include" {
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
		colon := strings.Index(text, ":")
		if colon < 0 {
			p.errorf(at, "expected [ID ...] : TYPE value")
			continue
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
		s := Secret{IDs: ids, Type: strings.ToUpper(typ), File: path, Line: line}
		switch s.Type {
		case "PSK":
			v, err := secretValue(val)
			if err != nil {
				p.errorf(at, "PSK: %v", err)
				continue
			}
			s.Value = v
		case "RSA":
			f := strings.Fields(val)
			if len(f) == 0 || len(f) > 2 {
				p.errorf(at, "RSA takes a key file and an optional passphrase")
				continue
			}
			s.Value = unquote(f[0])
			if len(f) == 2 {
				s.Passphrase = unquote(f[1])
			}
		case "XAUTH", "EAP", "NTLM", "ECDSA", "BLISS", "PIN", "P12", "PKCS8":
			p.errorf(at, "%s secrets are not supported by gosec (PSK and RSA are)", s.Type)
			continue
		default:
			p.errorf(at, "unknown secret type %q (PSK or RSA)", typ)
			continue
		}
		p.list = append(p.list, s)
	}
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
