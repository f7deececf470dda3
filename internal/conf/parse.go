// Package conf reads ipsec.conf and ipsec.secrets as strongSwan's starter,
// Libreswan and FreeS/WAN write them, into typed connections and secrets.
// Every problem is reported as "file:line: message", and all problems of a
// run are reported together.
package conf

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Limits that keep hostile input bounded.
const (
	MaxFileSize     = 4 << 20 // bytes per file
	MaxIncludeDepth = 10
	MaxFiles        = 256   // files read in one load, includes included
	MaxSections     = 65536 // 10,000 conns and more (make bench-scale), with conn %default and config setup
	MaxAlsoDepth    = 32
	MaxDiagnostics  = 1000
	// MaxResolveWork bounds the keyword settings merged while resolving
	// conns (each conn takes those of conn %default and of the conns it
	// names with also=): a few thousand real conns need far less.
	MaxResolveWork = 1000000
)

// Diag is one problem found in the configuration.
type Diag struct {
	File    string
	Line    int
	Msg     string
	Warning bool
	// Skip marks the report of a conn left out because it needs a
	// feature gosec lacks (Warning is set too: the rest loads).
	Skip bool
}

func (d Diag) String() string {
	loc := d.File
	if d.Line > 0 {
		loc = fmt.Sprintf("%s:%d", d.File, d.Line)
	}
	if d.Skip {
		return loc + ": " + d.Msg
	}
	if d.Warning {
		return loc + ": warning: " + d.Msg
	}
	return loc + ": " + d.Msg
}

// Diags is a list of problems.
type Diags []Diag

// Errors returns only the errors (not the warnings).
func (ds Diags) Errors() Diags {
	var out Diags
	for _, d := range ds {
		if !d.Warning {
			out = append(out, d)
		}
	}
	return out
}

// Err returns the errors as one error, or nil if there are none.
func (ds Diags) Err() error {
	errs := ds.Errors()
	if len(errs) == 0 {
		return nil
	}
	return &DiagError{Diags: errs}
}

// DiagError is the error returned for a configuration with errors.
type DiagError struct{ Diags Diags }

func (e *DiagError) Error() string {
	lines := make([]string, len(e.Diags))
	for i, d := range e.Diags {
		lines[i] = d.String()
	}
	return strings.Join(lines, "\n")
}

// pos is where something was written.
type pos struct {
	file string
	line int
}

// kv is one "key=value" line.
type kv struct {
	// key is the keyword as the tables spell it (normalizeKey), written
	// the keyword as the file does.
	key, value, written string
	pos
	// bad marks a line whose value could not be read (reported already).
	bad bool
}

// section is a "config setup", "conn NAME" or "ca NAME" section.
type section struct {
	kind string // "config", "conn", "ca"
	name string
	kvs  []kv
	pos
}

// parser reads files into sections.
type parser struct {
	diags    Diags
	sections []*section
	files    int
	stack    []string // include chain (absolute paths), for loop detection
	names    []string // the same chain as written, for messages
	order    []string // files in the order they were read, for sorting
	// seen holds the diagnostics already reported: a keyword of conn
	// %default or of a conn reached through also= is interpreted once per
	// conn that uses it, and its problem is reported once.
	seen map[Diag]bool
	// noInclude refuses include lines (Options.NoInclude).
	noInclude bool
	// root is Options.Root.
	root string
	// work counts keyword settings merged by flatten (MaxResolveWork).
	work int
	// hints remembers suggestions for unknown keywords.
	hints map[string]string
	// infos holds what fstat said of each file read, by its name in
	// diagnostics.
	infos map[string]fs.FileInfo
}

func (p *parser) add(d Diag) {
	if len(p.diags) >= MaxDiagnostics || p.seen[d] {
		return
	}
	if p.seen == nil {
		p.seen = map[Diag]bool{}
	}
	p.seen[d] = true
	p.diags = append(p.diags, d)
}

func (p *parser) errorf(at pos, format string, args ...any) {
	if len(p.diags) >= MaxDiagnostics {
		return
	}
	p.add(Diag{File: at.file, Line: at.line, Msg: fmt.Sprintf(format, args...)})
}

func (p *parser) warnf(at pos, format string, args ...any) {
	if len(p.diags) >= MaxDiagnostics {
		return
	}
	p.add(Diag{File: at.file, Line: at.line, Msg: fmt.Sprintf(format, args...), Warning: true})
}

// readFile parses one file (and what it includes).
func (p *parser) readFile(path string, from pos) {
	abs, err := filepath.Abs(path)
	if err != nil {
		abs = path
	}
	for _, f := range p.stack {
		if f == abs {
			p.errorf(from, "include loop: %s includes itself (through %s)", path, strings.Join(p.names, " -> "))
			return
		}
	}
	if len(p.stack) >= MaxIncludeDepth {
		p.errorf(from, "includes nested deeper than %d", MaxIncludeDepth)
		return
	}
	p.files++
	if p.files > MaxFiles {
		if p.files == MaxFiles+1 {
			p.errorf(from, "more than %d files included", MaxFiles)
		}
		return
	}
	if len(p.stack) > 0 {
		// An included file must be a regular file: a glob such as
		// /dev/* would otherwise block on a terminal or a FIFO.
		if fi, err := os.Stat(path); err == nil && !fi.Mode().IsRegular() {
			p.errorf(from, "include: %s is not a regular file", path)
			return
		}
	}
	data, fi, err := readLimited(path)
	if err != nil {
		p.errorf(pos{file: path}, "%v", err)
		return
	}
	if p.infos == nil {
		p.infos = map[string]fs.FileInfo{}
	}
	p.infos[path] = fi
	p.stack = append(p.stack, abs)
	p.names = append(p.names, path)
	p.order = append(p.order, path)
	defer func() {
		p.stack = p.stack[:len(p.stack)-1]
		p.names = p.names[:len(p.names)-1]
	}()
	p.parse(path, data)
}

// readLimited reads a file of at most MaxFileSize bytes, and returns what
// fstat said of the descriptor it read (for the check of files holding
// manual keys).
func readLimited(path string) ([]byte, fs.FileInfo, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot read: %v", unwrapPath(err))
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if fi.IsDir() {
		return nil, nil, fmt.Errorf("is a directory")
	}
	if fi.Size() > MaxFileSize {
		return nil, nil, fmt.Errorf("file larger than %d bytes", MaxFileSize)
	}
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(&limitReader{f, MaxFileSize + 1}); err != nil {
		return nil, nil, err
	}
	if buf.Len() > MaxFileSize {
		return nil, nil, fmt.Errorf("file larger than %d bytes", MaxFileSize)
	}
	return buf.Bytes(), fi, nil
}

type limitReader struct {
	f interface{ Read([]byte) (int, error) }
	n int64
}

func (l *limitReader) Read(b []byte) (int, error) {
	if l.n <= 0 {
		return 0, fmt.Errorf("file too large")
	}
	if int64(len(b)) > l.n {
		b = b[:l.n]
	}
	n, err := l.f.Read(b)
	l.n -= int64(n)
	return n, err
}

func unwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// parse parses the text of one file.
func (p *parser) parse(file string, data []byte) {
	var cur *section
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 64<<10), MaxFileSize)
	line := 0
	for sc.Scan() {
		line++
		at := pos{file: file, line: line}
		raw := sc.Text()
		text := stripComment(raw)
		if strings.TrimSpace(text) == "" {
			continue
		}
		indented := text[0] == ' ' || text[0] == '\t'
		fields := strings.Fields(text)
		if !indented {
			if strings.Contains(fields[0], "=") || len(fields) > 1 && strings.HasPrefix(fields[1], "=") {
				// A keyword line that lost its indentation. The section
				// stays open, so the indented lines after it are not
				// reported again as outside any section.
				p.errorf(at, "keyword line %q must be indented (it belongs to the section above)", strings.TrimSpace(text))
				continue
			}
			cur = nil
			switch fields[0] {
			case "version":
				if len(fields) != 2 || (fields[1] != "2" && fields[1] != "2.0") {
					p.errorf(at, "unsupported version line %q (only \"version 2\" is known)", strings.TrimSpace(text))
				}
			case "include":
				if len(fields) != 2 {
					p.errorf(at, "include takes exactly one file name or pattern")
					continue
				}
				p.include(file, unquote(fields[1]), at)
			case "config":
				if len(fields) != 2 || fields[1] != "setup" {
					p.errorf(at, "expected \"config setup\"")
					continue
				}
				cur = p.newSection("config", "setup", at)
			case "conn", "ca":
				if len(fields) != 2 {
					p.errorf(at, "%s needs exactly one name", fields[0])
					continue
				}
				cur = p.newSection(fields[0], fields[1], at)
			default:
				p.errorf(at, "unknown section type %q (expected config setup, conn NAME, ca NAME, include or version)", fields[0])
			}
			continue
		}
		// An indented line: "key=value" inside a section, or an indented include.
		trimmed := strings.TrimSpace(text)
		if strings.HasPrefix(trimmed, "include ") && !strings.Contains(trimmed, "=") {
			f := strings.Fields(trimmed)
			if len(f) == 2 {
				p.include(file, unquote(f[1]), at)
				continue
			}
		}
		if cur == nil {
			p.errorf(at, "indented line %q outside any section", trimmed)
			continue
		}
		eq := strings.IndexByte(trimmed, '=')
		if eq <= 0 {
			p.errorf(at, "expected keyword=value, got %q", trimmed)
			continue
		}
		key := strings.TrimSpace(trimmed[:eq])
		val, err := parseValue(strings.TrimSpace(trimmed[eq+1:]))
		if strings.ContainsAny(key, " \t") {
			p.errorf(at, "bad keyword %q", key)
			continue
		}
		if err != nil {
			p.errorf(at, "%s: %v", key, err)
			cur.kvs = append(cur.kvs, kv{key: normalizeKey(key), written: key, pos: at, bad: true})
			continue
		}
		cur.kvs = append(cur.kvs, kv{key: normalizeKey(key), written: key, value: val, pos: at})
	}
	if err := sc.Err(); err != nil {
		p.errorf(pos{file: file, line: line + 1}, "cannot read further: %v", err)
	}
}

// raw is the keyword as written.
func (k kv) raw() string {
	if k.written != "" {
		return k.written
	}
	return k.key
}

func (p *parser) newSection(kind, name string, at pos) *section {
	if len(p.sections) >= MaxSections {
		if len(p.sections) == MaxSections {
			p.errorf(at, "more than %d sections", MaxSections)
			p.sections = append(p.sections, nil)
		}
		return &section{}
	}
	s := &section{kind: kind, name: unquote(name), pos: at}
	p.sections = append(p.sections, s)
	return s
}

func (p *parser) include(from, pattern string, at pos) {
	if p.noInclude {
		p.errorf(at, "include is not allowed here (configuration parsed from memory)")
		return
	}
	if !filepath.IsAbs(pattern) {
		pattern = filepath.Join(filepath.Dir(from), pattern)
	} else if p.root != "" {
		pattern = filepath.Join(p.root, pattern)
	}
	matches, err := filepath.Glob(pattern)
	if err != nil {
		p.errorf(at, "bad include pattern %q: %v", pattern, err)
		return
	}
	if len(matches) == 0 && !strings.ContainsAny(pattern, "*?[") {
		p.errorf(at, "include: %s does not exist", pattern)
		return
	}
	sort.Strings(matches)
	for _, m := range matches {
		p.readFile(m, at)
	}
}

// stripComment removes a comment: '#' at the start or after white space,
// outside double quotes.
func stripComment(s string) string {
	inQuote := false
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '"':
			inQuote = !inQuote
		case '#':
			if !inQuote && (i == 0 || s[i-1] == ' ' || s[i-1] == '\t') {
				return s[:i]
			}
		}
	}
	return s
}

// parseValue handles double quotes (a quoted value may hold white space).
func parseValue(v string) (string, error) {
	if strings.HasPrefix(v, "\"") {
		end := strings.LastIndexByte(v, '"')
		if end == 0 {
			return "", fmt.Errorf("unterminated quote")
		}
		if rest := strings.TrimSpace(v[end+1:]); rest != "" {
			return "", fmt.Errorf("text %q after the closing quote", rest)
		}
		return v[1:end], nil
	}
	if strings.ContainsRune(v, '"') {
		return "", fmt.Errorf("stray quote in %q (a quoted value starts with the quote)", v)
	}
	return v, nil
}

func unquote(s string) string {
	if len(s) >= 2 && s[0] == '"' && s[len(s)-1] == '"' {
		return s[1 : len(s)-1]
	}
	return s
}
