package conf

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
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
	sortDiags(p.diags)
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
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		p.errorf(pos{file: path}, "refusing a secrets file that group or other may access (mode %04o); run: chmod 600 %s", perm, path)
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
// strongSwan ranks ipsec.secrets entries: an entry's selectors are its
// owners (none means "%any %any"; a single one means "ID %any"); each side
// scores 5 when a selector equals its ID and 1 when a selector is %any; an
// entry needs a match on both sides, and the highest sum wins, the first in
// the file among equals. So "a b : PSK" beats "b : PSK", which beats
// ": PSK".
func (s *Secrets) FindPSK(local, remote string) (Secret, bool) {
	best, bestScore := Secret{}, 0
	for _, sec := range s.List {
		if sec.Type != "PSK" {
			continue
		}
		if score := matchScore(sec.IDs, local, remote); score > bestScore {
			best, bestScore = sec, score
		}
	}
	return best, bestScore > 0
}

func matchScore(ids []string, local, remote string) int {
	switch len(ids) {
	case 0:
		ids = []string{"%any", "%any"}
	case 1:
		ids = []string{ids[0], "%any"}
	}
	side := func(id string) int {
		m := 0
		for _, sel := range ids {
			switch {
			case sel == id && id != "":
				return 5
			case sel == "%any" || sel == "%any4":
				m = 1
			}
		}
		return m
	}
	l, r := side(local), side(remote)
	if l == 0 || r == 0 {
		return 0
	}
	return l + r
}
