package conf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"
)

// Options change how a configuration is loaded.
type Options struct {
	// LookupHost resolves DNS names in left=/right= (default: the system
	// resolver with a 5 s time-out). Tests inject their own.
	LookupHost func(name string) ([]netip.Addr, error)
	// DefaultRoute returns this host's address on its default route, for
	// %defaultroute (default: asks the kernel's routing).
	DefaultRoute func() (netip.Addr, error)
	// NoInclude makes every include line an error instead of reading
	// files: for Parse of text that must not reach the file system.
	NoInclude bool
	// Root, when set, is where absolute include patterns are looked up,
	// as in a chroot: to check a configuration written for another
	// host's file system (the upstream test suites include
	// /testing/baseconfigs/...).
	Root string
	// OpenKeyFiles accepts manual keys in files that group or others may
	// read or write, or that someone else than root, the gosec user or
	// this user owns (refused otherwise). For tests of checked-out files:
	// gosec never sets it.
	OpenKeyFiles bool
}

type resolver struct {
	opts  Options
	cache map[string]netip.Addr
	// failed remembers names that did not resolve, so that conns sharing
	// a name wait for the resolver's time-out once per load.
	failed map[string]error
}

func (r *resolver) lookup(name string) (netip.Addr, error) {
	if a, ok := r.cache[name]; ok {
		return a, nil
	}
	if err, ok := r.failed[name]; ok {
		return netip.Addr{}, err
	}
	a, err := r.resolve(name)
	if err != nil {
		if r.failed == nil {
			r.failed = map[string]error{}
		}
		r.failed[name] = err
	}
	return a, err
}

func (r *resolver) resolve(name string) (netip.Addr, error) {
	look := r.opts.LookupHost
	if look == nil {
		look = systemLookup
	}
	addrs, err := look(name)
	if err != nil {
		return netip.Addr{}, err
	}
	for _, a := range addrs {
		if a.Unmap().Is4() {
			if r.cache == nil {
				r.cache = map[string]netip.Addr{}
			}
			r.cache[name] = a.Unmap()
			return a.Unmap(), nil
		}
	}
	return netip.Addr{}, errors.New("no IPv4 address")
}

func systemLookup(name string) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return net.DefaultResolver.LookupNetIP(ctx, "ip4", name)
}

func (r *resolver) defaultRoute() (netip.Addr, error) {
	if r.opts.DefaultRoute != nil {
		return r.opts.DefaultRoute()
	}
	// The source address the kernel would pick towards a public address;
	// connecting a UDP socket sends nothing.
	c, err := net.Dial("udp4", "192.0.2.255:9")
	if err != nil {
		return netip.Addr{}, fmt.Errorf("no default route: %v", err)
	}
	defer c.Close()
	ap, err := netip.ParseAddrPort(c.LocalAddr().String())
	if err != nil {
		return netip.Addr{}, err
	}
	return ap.Addr(), nil
}

// Load reads the ipsec.conf at path (and what it includes). The returned
// Config holds every diagnostic; the error is non-nil when any of them is
// an error (a *DiagError listing all of them).
func Load(path string, opts Options) (*Config, error) {
	p := &parser{noInclude: opts.NoInclude, root: opts.Root}
	p.readFile(path, pos{file: path})
	return p.finish(opts)
}

// Parse is Load for text already in memory (name labels the messages).
func Parse(name string, data []byte, opts Options) (*Config, error) {
	p := &parser{noInclude: opts.NoInclude, root: opts.Root, order: []string{name}}
	if len(data) > MaxFileSize {
		p.errorf(pos{file: name}, "file larger than %d bytes", MaxFileSize)
	} else {
		p.parse(name, data)
	}
	return p.finish(opts)
}

func (p *parser) finish(opts Options) (*Config, error) {
	cfg := &Config{Setup: map[string]string{}}
	r := &resolver{opts: opts}
	var defaults []kv
	conns := map[string]*section{}
	var order []*section
	for _, s := range p.sections {
		if s == nil {
			continue
		}
		switch s.kind {
		case "config":
			for _, k := range s.kvs {
				if isUserParam(k.key) {
					continue
				}
				if _, ok := setupSupported[k.key]; ok {
					if check := setupChecks[k.key]; check != nil {
						if err := check(k.value); err != nil {
							p.errorf(k.pos, "%v", err)
						}
					}
					continue
				}
				if why, ok := ignoredSetup[k.key]; ok {
					p.warnUnsupported(k, why)
					continue
				}
				if isConnKeyword(k.key) {
					p.errorf(k.pos, "%s is a conn keyword; it is not allowed in config setup", k.raw())
					continue
				}
				p.errorf(k.pos, "unknown config setup keyword %q%s", k.raw(), p.hint(k.key, true))
			}
			for _, k := range s.kvs {
				cfg.Setup[k.key] = k.value
			}
		case "ca":
			p.warnf(s.pos, "ca sections are not supported (certificate authentication is not implemented); ca %q ignored", s.name)
			for _, k := range s.kvs {
				if _, ok := caKeywords[k.key]; !ok && !isUserParam(k.key) {
					p.errorf(k.pos, "unknown ca keyword %q (strongSwan's ca sections take cacert, crluri, ocspuri, certuribase, ldaphost, ldapbase, auto, also)", k.raw())
				}
			}
		case "conn":
			if s.name == "%default" {
				own := map[string]int{}
				for _, k := range s.kvs {
					if first, dup := own[k.key]; dup {
						p.errorf(k.pos, "%s is set twice in conn %%default (first at line %d)", k.key, first)
						continue
					}
					own[k.key] = k.line
					defaults = append(defaults, k)
				}
				continue
			}
			if s.name == "%oedefault" {
				// FreeS/WAN and Openswan: the defaults of the implicit
				// opportunistic-encryption conns.
				p.warnf(s.pos, "conn %%oedefault is ignored: it holds the defaults of opportunistic encryption, which gosec does not implement")
				continue
			}
			if strings.HasPrefix(s.name, "%") {
				p.errorf(s.pos, "conn %s: names starting with %% are reserved", s.name)
				continue
			}
			if prev, dup := conns[s.name]; dup {
				// strongSwan 5 merges the sections of one name, a
				// keyword set again taking the later value
				// (src/starter/parser/conf_parser.c, add_section and
				// add_setting); Libreswan's tests rely on it (their
				// ikev2-oe.conf redefines the OE conns).
				p.warnf(s.pos, "conn %s is defined again (first at %s:%d): the two are merged, the keywords here winning (as strongSwan does)", s.name, prev.file, prev.line)
				again := map[string]bool{}
				for _, k := range s.kvs {
					if k.key != "also" && k.key != "alsoflip" {
						again[k.key] = true
					}
				}
				var kept []kv
				first := map[string]kv{}
				for _, k := range prev.kvs {
					if f, dup := first[k.key]; dup && k.key != "also" && k.key != "alsoflip" {
						// Reported here, as the merge drops it.
						p.errorf(k.pos, "%s is set twice in conn %s (first at line %d)", k.key, prev.name, f.line)
					}
					if _, ok := first[k.key]; !ok {
						first[k.key] = k
					}
					if !again[k.key] {
						kept = append(kept, k)
					}
				}
				prev.kvs = append(kept, s.kvs...)
				continue
			}
			conns[s.name] = s
			order = append(order, s)
		}
	}
	// Conns named by also=: with auto=ignore they are templates, whose
	// needs are reported through the conns that use them.
	referenced := map[string]bool{}
	for _, s := range order {
		for _, k := range s.kvs {
			if k.key == "also" || k.key == "alsoflip" {
				referenced[k.value] = true
			}
		}
	}
	var interpreted []*Conn // loaded and skipped: checkKeyFiles
	for _, s := range order {
		if p.work > MaxResolveWork {
			p.errorf(s.pos, "configuration too large to resolve: more than %d keyword settings merged through conn %%default and also=; conn %s and those after it are not checked", MaxResolveWork, s.name)
			break
		}
		kvs, missing := p.flatten(s, conns, defaults)
		c, skip := p.interpret(s, kvs, r)
		if len(missing) > 0 {
			// A conn naming a conn that does not exist cannot be
			// resolved. If it is to be loaded that is an error; an
			// auto=ignore conn is never loaded by itself (FreeS/WAN and
			// Libreswan resolve also= when a conn is added), so it is
			// only left out.
			for _, a := range missing {
				if c.Auto == "ignore" {
					p.warnf(a.pos, "%s=%s: no conn named %q; conn %s (auto=ignore) is left out", a.key, a.value, a.value, c.Name)
				} else {
					p.errorf(a.pos, "%s=%s: no conn named %q", a.key, a.value, a.value)
				}
			}
			continue
		}
		interpreted = append(interpreted, c)
		if skip == nil {
			cfg.Conns = append(cfg.Conns, c)
			continue
		}
		if referenced[c.Name] && c.Auto == "ignore" {
			continue // a template: the conns using it say what they need
		}
		skip.Name, skip.File, skip.Line = c.Name, c.File, c.Line
		cfg.Skipped = append(cfg.Skipped, *skip)
		p.add(Diag{File: skip.at.file, Line: skip.at.line, Skip: true, Warning: true,
			Msg: fmt.Sprintf("conn %s skipped: %s", c.Name, skip.Msg)})
	}
	if !opts.OpenKeyFiles {
		p.checkKeyFiles(interpreted)
	}
	if len(p.diags.Errors()) == 0 {
		p.checkAmbiguous(cfg.Conns) // a refused configuration needs no more advice
	}
	cfg.Diags = p.diags
	sortDiags(cfg.Diags, p.order)
	return cfg, cfg.Diags.Err()
}

// manualKeyKeywords hold keys in ipsec.conf.
var manualKeyKeywords = []string{"espenckey", "espauthkey", "ahkey", "leftespenckey", "leftespauthkey",
	"leftahkey", "rightespenckey", "rightespauthkey", "rightahkey"}

// checkKeyFiles gives the files that hold manual keys the check of
// ipsec.secrets (issue 13): owned by root, the gosec user or the user
// gosec runs as, and neither group nor others may read or write them. It
// judges the mode and owner fstat saw on the descriptor the file was read
// from (no stat-then-open window), and reports an error at the first key
// keyword of each file: the whole configuration is refused, as a secrets
// file would be. Every conn counts, loaded or skipped: its keys are in
// the file either way.
func (p *parser) checkKeyFiles(conns []*Conn) {
	first := map[string]pos{} // each file's first key keyword
	var files []string
	for _, c := range conns {
		for _, kw := range manualKeyKeywords {
			at, ok := c.set[kw]
			if !ok {
				continue
			}
			if f, seen := first[at.file]; !seen {
				files = append(files, at.file)
				first[at.file] = at
			} else if at.line < f.line {
				first[at.file] = at
			}
		}
	}
	for _, file := range files {
		at := first[file]
		fi := p.infos[file]
		if fi == nil {
			continue // parsed from memory
		}
		if err := checkKeyFileOwner(fi, file); err != nil {
			p.errorf(at, "refusing manual keys in this file: %v", err)
			continue
		}
		if perm := fi.Mode().Perm(); perm&0o077 != 0 {
			p.errorf(at, "refusing manual keys in a file that %s (mode %04o), as a secrets file would be refused; run: chmod 600 %s", accessWho(perm), perm, file)
		}
	}
}

// sortDiags orders diagnostics by file (in the order the files were
// read, then in the order first seen) and line.
func sortDiags(ds Diags, order []string) {
	rank := map[string]int{}
	for _, f := range order {
		if _, ok := rank[f]; !ok {
			rank[f] = len(rank)
		}
	}
	for _, d := range ds {
		if _, ok := rank[d.File]; !ok {
			rank[d.File] = len(rank)
		}
	}
	sort.SliceStable(ds, func(i, j int) bool {
		if ds[i].File != ds[j].File {
			return rank[ds[i].File] < rank[ds[j].File]
		}
		return ds[i].Line < ds[j].Line
	})
}

func (p *parser) warnUnsupported(k kv, why string) {
	msg := fmt.Sprintf("%s is not supported by gosec and is ignored", k.raw())
	if why != "" {
		msg += " (" + why + ")"
	}
	p.warnf(k.pos, "%s", msg)
}

// hint is the " (did you mean X?)" of an unknown keyword. Suggestions
// cost an edit distance against every keyword, so they are remembered,
// and not computed once the diagnostics are full.
func (p *parser) hint(key string, setup bool) string {
	if len(p.diags) >= MaxDiagnostics {
		return ""
	}
	ck := key
	if setup {
		ck = "setup " + key
	}
	if h, ok := p.hints[ck]; ok {
		return h
	}
	h := ""
	if s := suggest(key, setup); s != "" {
		h = fmt.Sprintf(" (did you mean %s?)", s)
	}
	if p.hints == nil {
		p.hints = map[string]string{}
	}
	p.hints[ck] = h
	return h
}

// flatten merges a conn's own keywords, those of the conns it includes
// with also= (in order, recursively; the first setting of a keyword wins)
// and those of conn %default.
func (p *parser) flatten(s *section, conns map[string]*section, defaults []kv) (out []kv, missing []kv) {
	seen := map[string]bool{}
	// visited: a section reached a second time (a diamond of also=) adds
	// nothing, as every keyword it sets is already set; without this a
	// chain of conns each naming the next two times would be walked
	// 2^depth times.
	visited := map[*section]bool{}
	// flip is FreeS/WAN's alsoflip= (ipsec.conf(5) of FreeS/WAN 2.04 and
	// Openswan): the conn's keywords with left and right swapped.
	var visit func(sec *section, chain []string, depth int, flip bool)
	visit = func(sec *section, chain []string, depth int, flip bool) {
		visited[sec] = true
		p.work += len(sec.kvs)
		own := map[string]pos{}
		var alsos []kv
		for _, k := range sec.kvs {
			if k.key == "also" || k.key == "alsoflip" {
				alsos = append(alsos, k)
				continue
			}
			if prev, dup := own[k.key]; dup {
				p.errorf(k.pos, "%s is set twice in conn %s (first at line %d)", k.key, sec.name, prev.line)
				continue
			}
			own[k.key] = k.pos
			if flip {
				k.key = flipSide(k.key)
			}
			if !seen[k.key] {
				seen[k.key] = true
				out = append(out, k)
			}
		}
		for _, a := range alsos {
			target, ok := conns[a.value]
			if !ok {
				missing = append(missing, a)
				continue
			}
			for _, c := range chain {
				if c == a.value {
					p.errorf(a.pos, "%s=%s makes a loop: %s -> %s", a.key, a.value, strings.Join(chain, " -> "), a.value)
					return
				}
			}
			if visited[target] {
				continue
			}
			if depth >= MaxAlsoDepth {
				p.errorf(a.pos, "also= chain deeper than %d", MaxAlsoDepth)
				return
			}
			visit(target, append(chain, a.value), depth+1, flip != (a.key == "alsoflip"))
		}
	}
	visit(s, []string{s.name}, 0, false)
	p.work += len(defaults)
	for _, k := range defaults {
		if k.key == "also" || k.key == "alsoflip" {
			p.errorf(k.pos, "%s= is not allowed in conn %%default", k.key)
			continue
		}
		if !seen[k.key] {
			seen[k.key] = true
			out = append(out, k)
		}
	}
	return out, missing
}

// flipSide swaps left and right in a keyword (alsoflip=).
func flipSide(key string) string {
	switch {
	case strings.HasPrefix(key, "left"):
		return "right" + key[len("left"):]
	case strings.HasPrefix(key, "right"):
		return "left" + key[len("right"):]
	}
	return key
}

// order in which keywords are applied: algorithms before what modifies
// them (pfsgroup, phase2), manual keys after the algorithms, and the keys
// of one end after FreeS/WAN's keys of both.
func applyRank(key string) int {
	switch key {
	case "esp", "ah", "phase2alg", "ike":
		return 0
	case "phase2", "pfsgroup", "auth":
		return 1
	}
	for _, side := range []string{"left", "right"} {
		switch strings.TrimPrefix(key, side) {
		case "spi", "espspi", "ahspi", "espenckey", "espauthkey", "ahkey":
			if strings.HasPrefix(key, side) {
				return 3
			}
		}
	}
	return 2
}

// interpret turns the flattened keywords of a conn into a Conn. A conn
// that needs a feature gosec lacks comes back with a *Skipped saying
// which, at the line of the first keyword that needs it.
func (p *parser) interpret(s *section, kvs []kv, r *resolver) (*Conn, *Skipped) {
	c := defaultConn()
	c.Name, c.File, c.Line = s.name, s.file, s.line
	var skip *Skipped
	needs := func(err error, at pos, what string) bool {
		var ne *needError
		if !errors.As(err, &ne) {
			return false
		}
		if skip == nil {
			skip = &Skipped{Feature: ne.Feature, at: at, Msg: what + ": " + ne.Error()}
		}
		return true
	}
	for rank := 0; rank <= 3; rank++ {
		for _, k := range kvs {
			if applyRank(k.key) != rank {
				continue
			}
			if k.bad {
				c.bad[k.key] = true
				continue
			}
			if isUserParam(k.key) {
				continue // FreeS/WAN: x- and x_ are the user's own
			}
			if k.value == "" {
				// An empty value is the keyword left out (and hides a
				// value of conn %default or of an also= conn).
				continue
			}
			h, eh, left, ok := lookupKeyword(k.key)
			if !ok {
				if f, isFeature := featureKeywords[k.key]; isFeature {
					if err := f(k.value); err != nil {
						needs(err, k.pos, k.raw()+"="+k.value)
					} else if k.key == "leftauth" || k.key == "rightauth" {
						// strongSwan's per-end authby: psk is what gosec does.
						c.AuthBy = "secret"
						c.set[k.key] = k.pos
					} else {
						p.warnUnsupported(k, "")
					}
					continue
				}
				if why, known := ignoredConn[k.key]; known {
					p.warnUnsupported(k, why)
					continue
				}
				_, ignoredInSetup := ignoredSetup[k.key]
				if _, setup := setupSupported[k.key]; setup || ignoredInSetup {
					p.errorf(k.pos, "%s is a config setup keyword; it is not allowed in a conn section", k.raw())
					continue
				}
				p.errorf(k.pos, "unknown keyword %q%s", k.raw(), p.hint(k.key, false))
				continue
			}
			var err error
			switch {
			case eh != nil:
				e := &c.Right
				if left {
					e = &c.Left
				}
				err = eh(c, e, k.value, r)
			case h != nil:
				err = h(c, k.value, r)
			}
			if err != nil {
				c.bad[k.key] = true
				if !needs(err, k.pos, k.key+"="+k.value) {
					p.errorf(k.pos, "%s=%s: %v", k.raw(), k.value, err)
				}
				continue
			}
			c.set[k.key] = k.pos
		}
	}
	if skip == nil {
		if err, at, what := p.resolveIKEVersion(c); err != nil {
			needs(err, at, what)
		}
	}
	if skip == nil && len(c.AH.List) > 0 && c.Set("esp") {
		at := c.set["ah"]
		needs(need("AH+ESP bundles", "gosec negotiates ESP or AH per conn"), at, "esp= with ah=")
	}
	if skip != nil {
		return c, skip
	}
	errs := len(p.diags)
	p.validate(c)
	if len(p.diags) == errs {
		if err := c.needAuth(); err != nil {
			if at, ok := c.set["authby"]; ok {
				needs(err, at, "authby="+c.AuthBy)
			} else {
				needs(err, pos{file: c.File, line: c.Line}, "no authby= (RSA signatures)")
			}
			return c, skip
		}
	}
	return c, nil
}

// needAuth reports a conn negotiated by IKE with no authby=: every
// upstream defaults to signatures (strongSwan's ipsec.conf(5): authby
// "defaults to pubkey"; Libreswan/Openswan/FreeS/WAN: rsasig), which gosec
// does not implement.
func (c *Conn) needAuth() error {
	if c.Manual || c.bad["authby"] || (c.Type != "tunnel" && c.Type != "transport") {
		return nil
	}
	if c.Set("authby") {
		if c.AuthBy == "never" {
			// Libreswan: authby=never is for shunts; authby=null is
			// RFC 7619 NULL authentication (IKEv2, opportunistic).
			return need("NULL authentication", "authby=never/null on a negotiated conn; gosec authenticates with pre-shared keys, authby=secret")
		}
		return nil
	}
	for _, side := range []string{"leftauth", "rightauth"} {
		if c.Set(side) {
			return nil
		}
	}
	return need("public-key authentication", "the upstream default; write authby=secret for pre-shared keys")
}

// where is the line of the first of the keywords that is set, else the
// conn's header: every error points at the line that causes it.
func (c *Conn) where(keys ...string) pos {
	for _, k := range keys {
		if at, ok := c.set[k]; ok {
			return at
		}
	}
	return pos{file: c.File, line: c.Line}
}

// validate checks a conn as a whole.
func (p *parser) validate(c *Conn) {
	at := pos{file: c.File, line: c.Line}
	if c.Auto == "ignore" && (!c.Set("left") || !c.Set("right")) {
		return // a template for also=, which may well set only one end
	}
	if !c.Set("left") || !c.Set("right") {
		var miss []string
		if !c.Set("left") && !c.bad["left"] {
			miss = append(miss, "left")
		}
		if !c.Set("right") && !c.bad["right"] {
			miss = append(miss, "right")
		}
		if len(miss) > 0 {
			p.errorf(at, "conn %s has no %s", c.Name, strings.Join(miss, " and no "))
		}
		return
	}
	if c.Left.Any && c.Right.Any {
		p.errorf(c.where("right"), "conn %s: left and right cannot both be %%any", c.Name)
	}
	if len(c.AH.List) > 0 && !c.Set("esp") && !c.Set("phase2alg") {
		c.ESP = Proposals{}
	}
	if c.Proto() == "esp" {
		for _, pr := range c.ESP.List {
			if len(pr.Ciphers) == 0 {
				p.errorf(c.where("phase2alg", "esp"), "conn %s: phase2alg names no encryption algorithm for ESP (for AH, write phase2=ah)", c.Name)
				break
			}
		}
	}
	if c.Type == "transport" && (len(c.Left.Subnets) > 0 || len(c.Right.Subnets) > 0) {
		for i, e := range []*End{&c.Left, &c.Right} {
			side := [...]string{"left", "right"}[i]
			for _, s := range e.Subnets {
				if e.Addr.IsValid() && (s.Bits() != 32 || s.Addr() != e.Addr) {
					p.errorf(c.where(side+"subnet", side+"subnets"), "conn %s: type=transport protects the hosts themselves; subnet %s differs from the host %s", c.Name, s, e.Addr)
				}
			}
		}
	}
	if c.Manual {
		p.validateManual(c, at)
	}
}

// validateManual checks a manually keyed conn: both SPIs, one suite, and
// keys of the right length on both sides.
func (p *parser) validateManual(c *Conn, at pos) {
	for _, side := range []struct {
		name string
		e    *End
	}{{"left", &c.Left}, {"right", &c.Right}} {
		if side.e.SPI == 0 && !c.bad[side.name+"spi"] {
			p.errorf(at, "manually keyed conn %s needs %sspi= (the SPI of the SA towards %s)", c.Name, side.name, side.name)
		}
		if side.e.Any || side.e.DefaultRoute && !side.e.Addr.IsValid() {
			p.errorf(c.where(side.name), "manually keyed conn %s needs a fixed %s= address", c.Name, side.name)
		}
	}
	ps := c.ESP
	proto := "esp"
	if len(c.AH.List) > 0 {
		ps, proto = c.AH, "ah"
	}
	if !c.Set(proto) && !(proto == "esp" && c.Set("phase2alg")) {
		p.errorf(at, "manually keyed conn %s needs esp= or ah= with exactly one suite", c.Name)
		return
	}
	suites := []Suite{}
	for _, pr := range ps.List {
		suites = append(suites, pr.Suites()...)
	}
	if len(suites) != 1 {
		p.errorf(c.where(proto, "phase2alg"), "manually keyed conn %s: %s= must name exactly one suite, not %d", c.Name, proto, len(suites))
		return
	}
	s := suites[0]
	if s.DH != 0 {
		p.errorf(c.where(proto, "phase2alg", "pfsgroup"), "manually keyed conn %s: a DH group makes no sense without IKE", c.Name)
	}
	c.ESN = c.ESN || s.ESN
	check := func(kw string, got []byte, want int) {
		if want == 0 {
			if len(got) != 0 {
				where := at
				if kp, ok := c.set[kw]; ok {
					where = kp
				}
				p.errorf(where, "conn %s: %s given, but %s needs no such key", c.Name, kw, s.Name())
			}
			return
		}
		if got == nil {
			if c.bad[kw] {
				return // its value was refused already
			}
			p.errorf(at, "manually keyed conn %s needs %s (%d bytes for %s)", c.Name, kw, want, s.Name())
			return
		}
		if len(got) != want {
			// At the line of the keyword holding the key (leftespenckey=,
			// or FreeS/WAN's espenckey= for both ends).
			where := at
			if kp, ok := c.set[kw]; ok {
				where = kp
			} else if kp, ok := c.set[strings.TrimPrefix(strings.TrimPrefix(kw, "left"), "right")]; ok {
				where = kp
			}
			p.errorf(where, "conn %s: %s is %d bytes; %s needs %d", c.Name, kw, len(got), s.Name(), want)
		}
	}
	for _, side := range []struct {
		name string
		e    *End
	}{{"left", &c.Left}, {"right", &c.Right}} {
		if proto == "ah" {
			check(side.name+"ahkey", side.e.AHKey, s.Integ.KeyLen())
			continue
		}
		check(side.name+"espenckey", side.e.ESPEncKey, s.Cipher.KeyLen())
		if s.Cipher.Encr.AEAD() {
			check(side.name+"espauthkey", side.e.ESPAuthKey, 0)
		} else {
			check(side.name+"espauthkey", side.e.ESPAuthKey, s.Integ.KeyLen())
		}
	}
}
