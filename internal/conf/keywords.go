package conf

import (
	"encoding/hex"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// handler applies one keyword's value to a conn.
type handler func(c *Conn, v string, r *resolver) error

// endHandler applies a left*/right* keyword to one end.
type endHandler func(c *Conn, e *End, v string, r *resolver) error

var connKeywords = map[string]handler{}

// endKeywords are the keywords that exist as left<kw> and right<kw>.
var endKeywords = map[string]endHandler{
	"":          setHost,
	"subnet":    setSubnets,
	"subnets":   setSubnets, // Libreswan: leftsubnets={a b}
	"id":        func(_ *Conn, e *End, v string, _ *resolver) error { e.ID = v; return nil },
	"protoport": setProtoPort,
	"nexthop":   setNextHop,
	"rsasigkey": func(_ *Conn, e *End, v string, _ *resolver) error { e.RSASigKey = v; return nil },
	"cert":      func(_ *Conn, e *End, v string, _ *resolver) error { e.Cert = v; return nil },
	"spi":       setSPI,
	"espenckey": func(c *Conn, e *End, v string, _ *resolver) error { return setKey(c, &e.ESPEncKey, v) },
	"espauthkey": func(c *Conn, e *End, v string, _ *resolver) error {
		return setKey(c, &e.ESPAuthKey, v)
	},
	"ahkey": func(c *Conn, e *End, v string, _ *resolver) error { return setKey(c, &e.AHKey, v) },
}

// setupSupported are the config setup keywords gosec implements (the
// daemon reads them from Config.Setup).
var setupSupported = map[string]string{
	"savekeys": "directory for key export to Wireshark (ikev1_decryption_table, esp_sa)",
	"metrics":  "address of the Prometheus endpoint, e.g. 127.0.0.1:9569",
}

// setupUnsupported are the config setup keywords of strongSwan, Libreswan
// and FreeS/WAN; gosec implements none of them, and a warning names each.
var setupUnsupported = map[string]string{
	"charondebug": "use gosec start --debug", "plutodebug": "use gosec start --debug", "uniqueids": "",
	"strictcrlpolicy": "", "cachecrls": "", "charonstart": "", "plutostart": "", "protostack": "gosec is its own stack",
	"interfaces": "gosec listens on all addresses", "virtual_private": "", "nat_traversal": "NAT-T is always on",
	"nhelpers": "", "plutostderrlog": "", "logfile": "use gosec start --log", "dumpdir": "", "klipsdebug": "",
	"keep_alive": "", "myid": "", "oe": "", "crlcheckinterval": "", "listen": "", "ikev1-policy": "",
}

// knownUnsupported are strongSwan / Libreswan / FreeS/WAN conn keywords
// that gosec knowingly ignores: a warning names them.
var knownUnsupported = map[string]string{
	"compress": "IPComp is not implemented", "mobike": "IKEv2 only", "leftfirewall": "", "rightfirewall": "",
	"leftupdown": "", "rightupdown": "", "leftsourceip": "", "rightsourceip": "", "leftdns": "", "rightdns": "",
	"leftsendcert": "", "rightsendcert": "", "leftauth": "", "rightauth": "", "leftauth2": "", "rightauth2": "",
	"leftca": "", "rightca": "", "leftgroups": "", "rightgroups": "", "lefthostaccess": "", "righthostaccess": "",
	"leftallowany": "", "rightallowany": "", "leftikeport": "", "rightikeport": "", "leftsigkey": "", "rightsigkey": "",
	"leftxauthserver": "", "rightxauthserver": "", "leftxauthclient": "", "rightxauthclient": "",
	"leftmodecfgserver": "", "rightmodecfgserver": "", "leftmodecfgclient": "", "rightmodecfgclient": "",
	"leftvti": "", "rightvti": "", "leftcert2": "", "rightcert2": "",
	"eap_identity": "", "aaa_identity": "", "xauth": "", "xauth_identity": "", "reauth": "", "closeaction": "",
	"inactivity": "", "mark": "", "mark_in": "", "mark_out": "", "reqid": "", "installpolicy": "", "fragmentation": "",
	"ikedscp": "", "tfc": "", "modeconfig": "", "narrowing": "", "sha256_96": "", "margintime_ike": "",
	"ikelifetime_bytes": "", "lifebytes": "", "lifepackets": "", "marginbytes": "", "marginpackets": "", "me_peerid": "",
	"mediated_by": "", "mediation": "", "hw_offload": "", "replay_window_ike": "", "sequence": "", "sha2-truncbug": "",
	"dpdactionike": "", "ikepad": "", "nat-keepalive": "", "initial-contact": "", "cisco-unity": "", "remote-peer-type": "",
	"nm-configured": "", "salifetime_bytes": "", "nic-offload": "", "vti-interface": "", "vti-routing": "",
	"vti-shared": "", "priority": "", "metric": "", "mtu": "", "tcp-remoteport": "", "enable-tcp": "", "overlapip": "",
	"ms-dh-downgrade": "", "ignore-peer-dns": "", "sendca": "", "modecfgpull": "", "modecfgdns": "", "modecfgbanner": "",
	"policy-label": "", "nflog-group": "", "decap-dscp": "", "nopmtudisc": "", "authby2": "", "ipsec-interface": "",
	"failureshunt": "", "negotiationshunt": "", "connaddrfamily": "", "hostaddrfamily": "", "clientaddrfamily": "",
}

func init() {
	// Plain conn keywords (strongSwan and Libreswan spellings).
	for k, h := range map[string]handler{
		"keyexchange": setKeyExchange,
		"ikev2":       setLibreswanIKEv2,
		"authby":      setAuthBy,
		"aggressive":  func(c *Conn, v string, _ *resolver) error { return setBool(&c.Aggressive, v) },
		"aggrmode":    func(c *Conn, v string, _ *resolver) error { return setBool(&c.Aggressive, v) },
		"ike":         func(c *Conn, v string, _ *resolver) error { return setProposals(&c.IKE, v, kindIKE) },
		"esp":         func(c *Conn, v string, _ *resolver) error { return setProposals(&c.ESP, v, kindESP) },
		"phase2alg":   func(c *Conn, v string, _ *resolver) error { return setPhase2Alg(c, v) },
		"ah":          func(c *Conn, v string, _ *resolver) error { return setProposals(&c.AH, v, kindAH) },
		"phase2":      setPhase2,
		"pfs":         func(c *Conn, v string, _ *resolver) error { return setBool(&c.PFS, v) },
		"pfsgroup":    setPFSGroup,
		"ikelifetime": func(c *Conn, v string, _ *resolver) error { return setDuration(&c.IKELifetime, v) },
		"keylife":     func(c *Conn, v string, _ *resolver) error { return setDuration(&c.KeyLife, v) },
		"lifetime":    func(c *Conn, v string, _ *resolver) error { return setDuration(&c.KeyLife, v) },
		"salifetime":  func(c *Conn, v string, _ *resolver) error { return setDuration(&c.KeyLife, v) },
		"rekey":       func(c *Conn, v string, _ *resolver) error { return setBool(&c.Rekey, v) },
		"rekeymargin": func(c *Conn, v string, _ *resolver) error { return setDuration(&c.RekeyMargin, v) },
		"margintime":  func(c *Conn, v string, _ *resolver) error { return setDuration(&c.RekeyMargin, v) },
		"rekeyfuzz":   setFuzz,
		"keyingtries": setKeyingTries,
		"dpddelay":    func(c *Conn, v string, _ *resolver) error { return setDuration(&c.DPDDelay, v) },
		"dpdtimeout":  func(c *Conn, v string, _ *resolver) error { return setDuration(&c.DPDTimeout, v) },
		"dpdaction": func(c *Conn, v string, _ *resolver) error {
			return setEnum(&c.DPDAction, v, map[string]string{"none": "none", "clear": "clear", "hold": "hold", "restart": "restart"})
		},
		"forceencaps":   func(c *Conn, v string, _ *resolver) error { return setBool(&c.ForceEncaps, v) },
		"encapsulation": setEncapsulation,
		"type": func(c *Conn, v string, _ *resolver) error {
			return setEnum(&c.Type, v, map[string]string{"tunnel": "tunnel", "transport": "transport", "passthrough": "passthrough", "pass": "passthrough", "drop": "drop", "reject": "drop"})
		},
		"auto": func(c *Conn, v string, _ *resolver) error {
			return setEnum(&c.Auto, v, map[string]string{"add": "add", "start": "start", "route": "route", "ignore": "ignore", "ondemand": "route", "up": "start"})
		},
		"replay_window": setReplayWindow,
		"replay-window": setReplayWindow,
		"esn":           func(c *Conn, v string, _ *resolver) error { return setBool(&c.ESN, v) },
		"ah_align":      setAHAlign,
		"encapsport":    setEncapPort,
		"also":          nil, // resolved before interpretation
	} {
		connKeywords[k] = h
	}
}

// lookupKeyword finds the handler for key. For left*/right* keywords it
// returns the end handler and which side.
func lookupKeyword(key string) (h handler, eh endHandler, left bool, ok bool) {
	if h, ok := connKeywords[key]; ok {
		return h, nil, false, true
	}
	for _, side := range []string{"left", "right"} {
		if strings.HasPrefix(key, side) {
			if eh, ok := endKeywords[strings.TrimPrefix(key, side)]; ok {
				return nil, eh, side == "left", true
			}
		}
	}
	return nil, nil, false, false
}

var (
	keywordListOnce sync.Once
	keywordList     []string
)

// allKeywords lists every conn keyword name, for suggestions (built once).
func allKeywords() []string {
	keywordListOnce.Do(func() { keywordList = buildKeywordList() })
	return keywordList
}

func buildKeywordList() []string {
	var out []string
	for k := range connKeywords {
		out = append(out, k)
	}
	for k := range endKeywords {
		out = append(out, "left"+k, "right"+k)
	}
	for k := range knownUnsupported {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// isConnKeyword reports whether key is a conn keyword, implemented or not.
func isConnKeyword(key string) bool {
	if _, _, _, ok := lookupKeyword(key); ok {
		return true
	}
	_, ok := knownUnsupported[key]
	return ok
}

// setupKeywords lists the config setup keywords, for suggestions.
func setupKeywords() []string {
	var out []string
	for k := range setupUnsupported {
		out = append(out, k)
	}
	for k := range setupSupported {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// suggest returns the keyword of the section (conn keywords, or config
// setup ones when setup is set) nearest to key, if it is close.
func suggest(key string, setup bool) string {
	best, bestD := "", 3
	switch {
	case len(key) <= 4:
		bestD = 2
	case len(key) > 8:
		bestD = 4
	}
	names := allKeywords()
	if setup {
		names = setupKeywords()
	}
	for _, k := range names {
		if d := editDistance(key, k); d < bestD {
			best, bestD = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 99
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func setHost(_ *Conn, e *End, v string, r *resolver) error {
	e.Host = v
	switch v {
	case "%any", "%any4", "0.0.0.0":
		e.Any = true
		return nil
	case "%defaultroute":
		e.DefaultRoute = true
		a, err := r.defaultRoute()
		if err != nil {
			return fmt.Errorf("%%defaultroute: %v", err)
		}
		e.Addr = a
		return nil
	case "%any6", "::":
		return fmt.Errorf("IPv6 is not supported yet")
	}
	if strings.HasPrefix(v, "%") {
		if v == "%opportunistic" || v == "%group" || v == "%oppo" {
			return fmt.Errorf("%s (opportunistic encryption) is not supported", v)
		}
		if len(v) > 1 && v[1] != '%' && !strings.ContainsAny(v[1:], "%") && (strings.Contains(v, ".") || strings.Contains(v, ":")) {
			return fmt.Errorf("the %% prefix (strongSwan's %sallowany=yes: accept the peer from any address) is not supported; write %s, or %%any", "left/right", v[1:])
		}
		return fmt.Errorf("unknown special value %q", v)
	}
	if a, err := netip.ParseAddr(strings.TrimPrefix(v, "%")); err == nil {
		if !a.Is4() {
			return fmt.Errorf("%s: IPv6 is not supported yet", v)
		}
		e.Addr = a
		return nil
	}
	a, err := r.lookup(v)
	if err != nil {
		return fmt.Errorf("cannot resolve %q: %v", v, err)
	}
	e.Addr = a
	return nil
}

func setSubnets(_ *Conn, e *End, v string, _ *resolver) error {
	v = strings.Trim(strings.TrimSpace(v), "{}")
	e.Subnets = nil
	if v == "%dynamic" {
		return nil // strongSwan: the end's own address, as with no subnet
	}
	for _, s := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		if i := strings.IndexByte(s, '['); i >= 0 {
			return fmt.Errorf("subnet %q: protocol/port selectors inside subnets are not supported (use leftprotoport)", s)
		}
		var p netip.Prefix
		var err error
		if strings.Contains(s, "/") {
			p, err = netip.ParsePrefix(s)
		} else {
			var a netip.Addr
			a, err = netip.ParseAddr(s)
			p = netip.PrefixFrom(a, a.BitLen())
		}
		if err != nil {
			return fmt.Errorf("bad subnet %q", s)
		}
		if !p.Addr().Is4() {
			return fmt.Errorf("subnet %s: IPv6 is not supported yet", s)
		}
		if p.Masked() != p {
			return fmt.Errorf("subnet %s has host bits set (did you mean %s?)", s, p.Masked())
		}
		e.Subnets = append(e.Subnets, p)
	}
	if len(e.Subnets) == 0 {
		return fmt.Errorf("empty subnet list")
	}
	return nil
}

var protoNames = map[string]uint8{"icmp": 1, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "sctp": 132, "%any": 0, "any": 0}

func setProtoPort(_ *Conn, e *End, v string, _ *resolver) error {
	proto, port, hasPort := strings.Cut(v, "/")
	if n, ok := protoNames[strings.ToLower(proto)]; ok {
		e.Proto = n
	} else if n, err := strconv.ParseUint(proto, 10, 8); err == nil {
		e.Proto = uint8(n)
	} else {
		return fmt.Errorf("unknown protocol %q", proto)
	}
	e.Port = 0
	if hasPort && port != "%any" && port != "" {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			return fmt.Errorf("bad port %q (a number or %%any)", port)
		}
		e.Port = uint16(n)
	}
	return nil
}

func setNextHop(_ *Conn, e *End, v string, _ *resolver) error {
	if v == "%direct" || v == "%defaultroute" {
		return nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil || !a.Is4() {
		return fmt.Errorf("bad next hop %q", v)
	}
	e.NextHop = a
	return nil
}

func setSPI(c *Conn, e *End, v string, _ *resolver) error {
	c.Manual = true
	n, err := strconv.ParseUint(v, 0, 32)
	if err != nil {
		return fmt.Errorf("bad SPI %q (write it as 0x...)", v)
	}
	if n < 256 {
		return fmt.Errorf("SPI %s is reserved (SPIs 0-255 are, RFC 4303 2.1)", v)
	}
	e.SPI = uint32(n)
	return nil
}

func setKey(c *Conn, dst *[]byte, v string) error {
	c.Manual = true
	s := strings.ReplaceAll(v, "_", "")
	if !strings.HasPrefix(s, "0x") && !strings.HasPrefix(s, "0X") {
		return fmt.Errorf("keys are hexadecimal with a 0x prefix")
	}
	b, err := hex.DecodeString(s[2:])
	if err != nil {
		return fmt.Errorf("bad hexadecimal key")
	}
	*dst = b
	return nil
}

func setKeyExchange(c *Conn, v string, _ *resolver) error {
	switch v {
	case "ikev1":
		c.KeyExchange = "ikev1"
	case "ikev2":
		return fmt.Errorf("keyexchange=ikev2 is not supported: gosec speaks IKEv1 only")
	case "ike":
		return fmt.Errorf("keyexchange=ike means IKEv2 in strongSwan, which gosec does not speak; write keyexchange=ikev1")
	default:
		return fmt.Errorf("unknown key exchange %q (ikev1)", v)
	}
	return nil
}

func setLibreswanIKEv2(c *Conn, v string, _ *resolver) error {
	switch v {
	case "no", "never", "permit":
		c.KeyExchange = "ikev1"
		return nil
	case "yes", "insist", "propose":
		return fmt.Errorf("ikev2=%s is not supported: gosec speaks IKEv1 only (ikev2=no)", v)
	}
	return fmt.Errorf("bad ikev2 value %q", v)
}

func setAuthBy(c *Conn, v string, _ *resolver) error {
	switch v {
	case "secret", "psk":
		c.AuthBy = "secret"
	case "rsasig", "pubkey", "rsa":
		c.AuthBy = "pubkey"
	case "never", "null":
		c.AuthBy = "never"
	case "xauthpsk", "xauthrsasig", "ecdsasig", "rsa-sha2":
		return fmt.Errorf("authby=%s is not supported (secret, psk, rsasig, pubkey are)", v)
	default:
		return fmt.Errorf("unknown authby %q (secret, psk, rsasig, pubkey)", v)
	}
	return nil
}

func setProposals(dst *Proposals, v string, kind proposalKind) error {
	ps, err := parseProposals(v, kind)
	if err != nil {
		return err
	}
	*dst = ps
	return nil
}

func setPhase2(c *Conn, v string, _ *resolver) error {
	switch v {
	case "esp":
		return nil
	case "ah":
		if len(c.AH.List) == 0 {
			// Libreswan: phase2=ah with phase2alg=sha1 — the algorithms
			// come from phase2alg, which set ESP; move them.
			for _, p := range c.ESP.List {
				if len(p.Ciphers) == 0 {
					c.AH.List = append(c.AH.List, p)
				}
			}
		}
		if len(c.AH.List) == 0 {
			// phase2=ah alone: the default AH integrity, the one
			// of the default esp= (aes128-sha256).
			c.AH, _ = parseProposals("sha256", kindAH)
		}
		c.ESP = Proposals{}
		c.set["ah"] = c.set["phase2"]
		return nil
	}
	return fmt.Errorf("phase2 must be esp or ah")
}

// setPhase2Alg is Libreswan's phase2alg: ESP algorithms, or AH ones
// (integrity only) for phase2=ah.
func setPhase2Alg(c *Conn, v string) error {
	if ps, err := parseProposals(v, kindESP); err == nil {
		c.ESP = ps
		return nil
	}
	ps, err := parseProposals(v, kindAH)
	if err != nil {
		return err
	}
	c.ESP = ps
	return nil
}

func setPFSGroup(c *Conn, v string, _ *resolver) error {
	g, ok := dhNames[v]
	if !ok || !g.Supported() {
		return fmt.Errorf("unknown or unsupported DH group %q", v)
	}
	for i := range c.ESP.List {
		c.ESP.List[i].DH = []DHGroup{g}
	}
	c.PFS = true
	return nil
}

func setBool(dst *bool, v string) error {
	switch strings.ToLower(v) {
	case "yes", "true", "on", "1":
		*dst = true
	case "no", "false", "off", "0":
		*dst = false
	default:
		return fmt.Errorf("expected yes or no, got %q", v)
	}
	return nil
}

func setEncapsulation(c *Conn, v string, _ *resolver) error {
	switch v {
	case "yes":
		c.ForceEncaps = true
	case "no", "auto":
		c.ForceEncaps = false
	default:
		return fmt.Errorf("expected yes, no or auto, got %q", v)
	}
	return nil
}

// parseDuration reads strongSwan durations: a number with an optional
// s, m, h or d suffix (seconds when none).
func parseDuration(v string) (time.Duration, error) {
	if v == "" {
		return 0, fmt.Errorf("empty duration")
	}
	unit := time.Second
	num := v
	switch v[len(v)-1] {
	case 's':
		num = v[:len(v)-1]
	case 'm':
		unit, num = time.Minute, v[:len(v)-1]
	case 'h':
		unit, num = time.Hour, v[:len(v)-1]
	case 'd':
		unit, num = 24*time.Hour, v[:len(v)-1]
	}
	n, err := strconv.ParseUint(num, 10, 32)
	if err != nil {
		return 0, fmt.Errorf("bad duration %q (a number with s, m, h or d)", v)
	}
	return time.Duration(n) * unit, nil
}

func setDuration(dst *time.Duration, v string) error {
	d, err := parseDuration(v)
	if err != nil {
		return err
	}
	*dst = d
	return nil
}

func setFuzz(c *Conn, v string, _ *resolver) error {
	n, err := strconv.ParseUint(strings.TrimSuffix(v, "%"), 10, 16)
	if err != nil {
		return fmt.Errorf("bad percentage %q", v)
	}
	c.RekeyFuzz = int(n)
	return nil
}

func setKeyingTries(c *Conn, v string, _ *resolver) error {
	if v == "%forever" || v == "0" {
		c.KeyingTries = 0
		return nil
	}
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil {
		return fmt.Errorf("bad keyingtries %q (a number or %%forever)", v)
	}
	c.KeyingTries = int(n)
	return nil
}

func setEnum(dst *string, v string, allowed map[string]string) error {
	if m, ok := allowed[v]; ok {
		*dst = m
		return nil
	}
	var names []string
	for k := range allowed {
		names = append(names, k)
	}
	sort.Strings(names)
	return fmt.Errorf("bad value %q (one of %s)", v, strings.Join(names, ", "))
}

func setReplayWindow(c *Conn, v string, _ *resolver) error {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil || n > 65536 {
		return fmt.Errorf("bad replay window %q (0 to 65536 packets; 0 turns the check off)", v)
	}
	c.ReplayWindow = int(n)
	return nil
}

func setAHAlign(c *Conn, v string, _ *resolver) error {
	switch v {
	case "4":
		c.AHAlign = 4
	case "8":
		c.AHAlign = 8
	default:
		return fmt.Errorf("ah_align must be 4 (RFC 4302) or 8 (Linux peers without align4)")
	}
	return nil
}

func setEncapPort(c *Conn, v string, _ *resolver) error {
	n, err := strconv.ParseUint(v, 10, 16)
	if err != nil || n == 0 {
		return fmt.Errorf("bad port %q", v)
	}
	c.EncapPort = uint16(n)
	return nil
}
