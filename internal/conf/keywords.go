package conf

import (
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// needError says that a keyword's value needs a feature gosec lacks: the
// conn is skipped (reported once, at that keyword's line), and the other
// conns still load.
type needError struct {
	// Feature names what is missing ("IPv6", "XAUTH", ...); the summary of
	// gosec conf check groups skipped conns by it.
	Feature string
	// Detail says more, when the feature's name alone does not.
	Detail string
	// Msg, when set, is the whole message: for a conn skipped for
	// another cause than a feature gosec lacks (a host name that does
	// not resolve).
	Msg string
}

func (e *needError) Error() string {
	if e.Msg != "" {
		return e.Msg
	}
	msg := e.Feature + " is not supported by gosec"
	if e.Detail != "" {
		msg += " (" + e.Detail + ")"
	}
	return msg
}

// need returns a *needError.
func need(feature, detail string, args ...any) error {
	if len(args) > 0 {
		detail = fmt.Sprintf(detail, args...)
	}
	return &needError{Feature: feature, Detail: detail}
}

// handler applies one keyword's value to a conn.
type handler func(c *Conn, v string, r *resolver) error

// endHandler applies a left*/right* keyword to one end.
type endHandler func(c *Conn, e *End, v string, r *resolver) error

var connKeywords = map[string]handler{}

// endKeywords are the keywords that exist as left<kw> and right<kw>.
var endKeywords = map[string]endHandler{
	"":        setHost,
	"subnet":  setSubnets,
	"subnets": setSubnets, // Libreswan: leftsubnets={a b}
	"id":      func(_ *Conn, e *End, v string, _ *resolver) error { e.ID = v; return nil },
	// FreeS/WAN's manual keying: leftespspi/leftahspi are the SPI of
	// the SA towards left (ipsec.conf(5) of FreeS/WAN 2.04).
	"espspi":    setSPI,
	"ahspi":     setSPI,
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
	// ipsec.conf(5): the updown script of this end, a shell command line
	// run with the PLUTO_* environment as SAs come and go.
	"updown": func(_ *Conn, e *End, v string, _ *resolver) error { e.UpDown = v; return nil },
}

// setupSupported are the config setup keywords gosec implements (the
// daemon reads them from Config.Setup).
var setupSupported = map[string]string{
	"savekeys": "directory for key export to Wireshark (ikev1_decryption_table, esp_sa)",
	"metrics":  "address of the Prometheus endpoint, e.g. 127.0.0.1:9569",
	// debug.go checks the values of these two.
	"charondebug": "log level, strongSwan's way: \"ike 2, knl 1\" (the highest level given applies to every conn without debug=)",
	"plutodebug":  "log level, Libreswan's way: none (info) or debug classes such as all, base, control (debug)",
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
		// strongSwan ipsec.conf(5): volume lifetimes of each IPsec SA and
		// how long before them the rekey starts.
		"lifebytes":     func(c *Conn, v string, _ *resolver) error { return setCount(&c.LifeBytes, "lifebytes", v) },
		"lifepackets":   func(c *Conn, v string, _ *resolver) error { return setCount(&c.LifePackets, "lifepackets", v) },
		"marginbytes":   func(c *Conn, v string, _ *resolver) error { return setCount(&c.MarginBytes, "marginbytes", v) },
		"marginpackets": func(c *Conn, v string, _ *resolver) error { return setCount(&c.MarginPackets, "marginpackets", v) },
		"keyingtries":   setKeyingTries,
		"dpddelay":      func(c *Conn, v string, _ *resolver) error { return setDuration(&c.DPDDelay, v) },
		"dpdtimeout":    func(c *Conn, v string, _ *resolver) error { return setDuration(&c.DPDTimeout, v) },
		"dpdaction": func(c *Conn, v string, _ *resolver) error {
			// strongSwan 5 adds trap (as hold: the policy stays and
			// traffic renegotiates).
			return setEnum(&c.DPDAction, v, map[string]string{"none": "none", "clear": "clear", "hold": "hold", "restart": "restart", "trap": "hold"})
		},
		"forceencaps":   func(c *Conn, v string, _ *resolver) error { return setBool(&c.ForceEncaps, v) },
		"encapsulation": setEncapsulation,
		"type": func(c *Conn, v string, _ *resolver) error {
			return setEnum(&c.Type, v, map[string]string{"tunnel": "tunnel", "transport": "transport", "passthrough": "passthrough", "pass": "passthrough", "drop": "drop", "reject": "drop"})
		},
		"auto": func(c *Conn, v string, _ *resolver) error {
			return setEnum(&c.Auto, v, map[string]string{"add": "add", "start": "start", "route": "route", "ignore": "ignore", "ondemand": "route", "up": "start", "keep": "start", "manual": "start"})
		},
		"replay_window": setReplayWindow,
		// FreeS/WAN 2.04 ipsec.conf(5): auth=esp|ah, whether
		// authentication is done by ESP or by a separate AH.
		"auth": func(c *Conn, v string, r *resolver) error {
			if v == "esp" {
				return nil
			}
			if v == "ah" {
				return setPhase2(c, v, r)
			}
			return fmt.Errorf("auth must be esp or ah")
		},
		// Libreswan aliases (lib/libswan/ipsecconf/conn.c, A(...)):
		// ipsec-lifetime is the name of keylife/lifetime/salifetime
		// since 5.0, ikev1-dpdtimeout the old dpdtimeout.
		"ipsec-lifetime":   func(c *Conn, v string, _ *resolver) error { return setDuration(&c.KeyLife, v) },
		"ikev1-dpdtimeout": func(c *Conn, v string, _ *resolver) error { return setDuration(&c.DPDTimeout, v) },
		// FreeS/WAN manual keying: spi= and the keys without left/right
		// are used for both directions unless leftspi= etc. say otherwise.
		"spi": func(c *Conn, v string, r *resolver) error {
			for _, e := range []*End{&c.Left, &c.Right} {
				if err := setSPI(c, e, v, r); err != nil {
					return err
				}
			}
			return nil
		},
		"espenckey":     bothKeys(func(e *End) *[]byte { return &e.ESPEncKey }),
		"espauthkey":    bothKeys(func(e *End) *[]byte { return &e.ESPAuthKey }),
		"ahkey":         bothKeys(func(e *End) *[]byte { return &e.AHKey }),
		"replay-window": setReplayWindow,
		"esn": func(c *Conn, v string, _ *resolver) error {
			// Libreswan: esn=either lets the peer choose; gosec
			// then proposes none.
			if v == "either" {
				c.ESN = false
				return nil
			}
			return setBool(&c.ESN, v)
		},
		"ah_align":   setAHAlign,
		"encapsport": setEncapPort,
		"also":       nil, // resolved before interpretation
		"alsoflip":   nil, // as also=, left and right swapped
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
	for k := range ignoredConn {
		out = append(out, k)
	}
	for k := range featureKeywords {
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
	if _, ok := featureKeywords[key]; ok {
		return true
	}
	_, ok := ignoredConn[key]
	return ok
}

// setupKeywords lists the config setup keywords, for suggestions.
func setupKeywords() []string {
	var out []string
	for k := range ignoredSetup {
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
		// Among equally near keywords, a missing letter ("authy" for
		// authby) is likelier than an extra one ("leftsubnett" for
		// leftsubnet), and both than a wrong one.
		if d := editDistance(key, k); d < bestD || d == bestD && best != "" && weightedDistance(key, k) < weightedDistance(key, best) {
			best, bestD = k, d
		}
	}
	return best
}

// weightedDistance is editDistance with a letter missing from a costing
// 2, a letter too many 3 and a wrong letter 4.
func weightedDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 999
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = 2 * j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = 3 * i
		for j := 1; j <= len(b); j++ {
			cost := 4
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+3, cur[j-1]+2, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
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
	case "%any6", "::", "%defaultroute6":
		return need("IPv6", "%s is IPv6", v)
	case "%opportunistic", "%opportunisticgroup", "%group", "%oppo", "%oe", "%oppohere", "%oppothere":
		return need("opportunistic encryption", "%s", v)
	}
	if strings.HasPrefix(v, "%") {
		if len(v) > 1 && v[1] != '%' && !strings.ContainsAny(v[1:], "%") && (strings.Contains(v, ".") || strings.Contains(v, ":")) {
			return need("a peer allowed at any address (%host)", "strongSwan's %%name is %s with rightallowany=yes; write %s, or %%any", v[1:], v[1:])
		}
		return fmt.Errorf("unknown special value %q", v)
	}
	if a, err := netip.ParseAddr(strings.TrimPrefix(v, "%")); err == nil {
		if !a.Is4() {
			return need("IPv6", "%s is an IPv6 address", v)
		}
		e.Addr = a
		return nil
	}
	if strings.Trim(v, "0123456789.") == "" {
		return fmt.Errorf("bad IPv4 address %q", v)
	}
	if !isHostName(v) {
		return fmt.Errorf("bad address %q (an IPv4 address, a host name, %%any or %%defaultroute)", v)
	}
	a, err := r.lookup(v)
	if err != nil {
		return cannotResolve(v, err)
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
	if strings.HasPrefix(v, "vhost:") || strings.HasPrefix(v, "vnet:") {
		return need("virtual subnets", "%s: the peer's subnet chosen behind its NAT, of FreeS/WAN/Openswan NAT traversal", v)
	}
	if v == "%opportunisticgroup" || v == "%opportunistic" || v == "%group" {
		return need("opportunistic encryption", "%s", v)
	}
	for _, s := range strings.FieldsFunc(v, func(r rune) bool { return r == ',' || r == ' ' || r == '\t' }) {
		if s == "%no" || s == "%priv" || s == "%all" {
			return need("virtual subnets", "%s in a subnet list", s)
		}
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
			return need("IPv6", "subnet %s is IPv6", s)
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

var protoNames = map[string]uint8{"icmp": 1, "igmp": 2, "ipip": 4, "ipencap": 4, "tcp": 6, "udp": 17, "gre": 47, "esp": 50, "ah": 51, "ospf": 89, "sctp": 132, "udplite": 136, "%any": 0, "any": 0}

// serviceNames are the well-known services (IANA service name registry,
// as /etc/services spells them) that leftprotoport= may name instead of
// a port number: strongSwan and Libreswan look the name up with
// getservbyname(3) (ipsec.conf(5): "leftprotoport=tcp/http"); gosec keeps
// a table of its own so that a configuration means the same on every host.
var serviceNames = map[string]uint16{
	"ftp-data": 20, "ftp": 21, "ssh": 22, "telnet": 23, "smtp": 25, "domain": 53, "dns": 53,
	"bootps": 67, "bootpc": 68, "tftp": 69, "gopher": 70, "finger": 79, "http": 80, "www": 80,
	"kerberos": 88, "pop3": 110, "sunrpc": 111, "ident": 113, "auth": 113, "nntp": 119, "ntp": 123,
	"netbios-ns": 137, "netbios-dgm": 138, "netbios-ssn": 139, "imap": 143, "imap2": 143, "snmp": 161,
	"snmp-trap": 162, "bgp": 179, "irc": 194, "ldap": 389, "https": 443, "microsoft-ds": 445,
	"isakmp": 500, "syslog": 514, "submission": 587, "ldaps": 636, "rsync": 873, "imaps": 993,
	"pop3s": 995, "socks": 1080, "openvpn": 1194, "ms-sql-s": 1433, "l2tp": 1701, "l2f": 1701,
	"pptp": 1723, "radius": 1812, "radius-acct": 1813, "nfs": 2049, "mysql": 3306, "ms-wbt-server": 3389,
	"ipsec-nat-t": 4500, "sip": 5060, "sips": 5061, "postgresql": 5432, "x11": 6000, "http-alt": 8080,
}

func setProtoPort(_ *Conn, e *End, v string, _ *resolver) error {
	proto, port, hasPort := strings.Cut(v, "/")
	if n, ok := protoNames[strings.ToLower(proto)]; ok {
		e.Proto = n
	} else if n, err := strconv.ParseUint(proto, 10, 8); err == nil {
		e.Proto = uint8(n)
	} else if p := strings.ToLower(proto); p == "ipv6-icmp" || p == "icmpv6" || p == "icmp6" || p == "58" {
		return need("IPv6", "protocol %s is ICMPv6", proto)
	} else {
		return fmt.Errorf("unknown protocol %q (tcp, udp, icmp, a number...)", proto)
	}
	e.Port = 0
	if hasPort && port != "%any" && port != "" {
		if n, ok := serviceNames[strings.ToLower(port)]; ok {
			e.Port = n
			return nil
		}
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil {
			if strings.ContainsAny(port, "-:") {
				return fmt.Errorf("port range %q: gosec's selectors take one port or %%any", port)
			}
			return fmt.Errorf("bad port %q (a number, a service name such as ssh, or %%any)", port)
		}
		e.Port = uint16(n)
	}
	return nil
}

func setNextHop(_ *Conn, e *End, v string, r *resolver) error {
	if v == "%direct" || v == "%defaultroute" {
		return nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		if strings.HasPrefix(v, "%") || !isHostName(v) {
			return fmt.Errorf("bad next hop %q (an IPv4 address, a host name, %%direct or %%defaultroute)", v)
		}
		// A name, as Libreswan's and Openswan's confread.c allow: they
		// read the next hop with ttoaddr(), which looks names up.
		if a, err = r.lookup(v); err != nil {
			return cannotResolve(v, err)
		}
	}
	if !a.Is4() {
		return need("IPv6", "the next hop %s is IPv6", v)
	}
	e.NextHop = a
	return nil
}

// isHostName reports whether v can be a DNS name (letters, digits,
// hyphens and dots).
func isHostName(v string) bool {
	if v == "" || len(v) > 253 {
		return false
	}
	for _, r := range v {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '.' || r == '_') {
			return false
		}
	}
	return true
}

// FeatureUnresolved is the Skipped.Feature of a conn skipped because a
// host name in it did not resolve.
const FeatureUnresolved = "host names that do not resolve"

// cannotResolve skips the conn of a host name that does not resolve: the
// file still loads (Libreswan's addconn too loads the other conns, and
// Pluto retries the name); gosec tries again at the next gosec reload.
func cannotResolve(name string, err error) error {
	return &needError{Feature: FeatureUnresolved,
		Msg: fmt.Sprintf("cannot resolve %q: %v; tried again at gosec reload", name, err)}
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

// setKeyExchange is keyexchange=: strongSwan's ikev1, ikev2 and ike
// (ipsec.conf(5): ike means IKEv2 when initiating, either when responding)
// and Libreswan's ikev1 and ikev2. Which of keyexchange= and ikev2= wins is
// decided in resolveIKEVersion.
func setKeyExchange(c *Conn, v string, _ *resolver) error {
	switch strings.ToLower(v) {
	case "ikev1":
		c.KeyExchange = "ikev1"
	case "ikev2":
		c.KeyExchange = "ikev2"
	case "ike":
		c.KeyExchange = "ike"
	default:
		return fmt.Errorf("unknown key exchange %q (ikev1, ikev2 or ike)", v)
	}
	return nil
}

// setLibreswanIKEv2 is Libreswan's ikev2=. Its values, as
// configs/d.ipsec.conf/ikev2.xml (v3.32) and keywords.c's kw_fourvalued
// list define them: never/no (IKEv1 only), permit (IKEv1 by us, either
// from the peer; "interpreted as no" since 3.28), propose/yes (IKEv2,
// falling back to IKEv1 before 3.28; "interpreted as yes" since),
// insist/always (IKEv2 only).
func setLibreswanIKEv2(c *Conn, v string, _ *resolver) error {
	switch strings.ToLower(v) {
	case "no", "never", "permit":
		c.ikev2, c.ikev2Raw = "no", v
	case "propose":
		c.ikev2, c.ikev2Raw = "propose", v
	case "yes", "insist", "always":
		c.ikev2, c.ikev2Raw = "yes", v
	default:
		return fmt.Errorf("bad ikev2 value %q (no, never, permit, propose, yes, insist)", v)
	}
	return nil
}

// setAuthBy is authby=: one method, or Libreswan's list of them
// ("secret|rsasig", "rsasig,secret"). gosec authenticates with pre-shared
// keys; a list that offers one is used with it alone.
func setAuthBy(c *Conn, v string, _ *resolver) error {
	methods := strings.FieldsFunc(strings.ToLower(v), func(r rune) bool { return r == '|' || r == ',' || r == ' ' })
	if len(methods) == 0 {
		return fmt.Errorf("empty authby")
	}
	var missing error
	for _, m := range methods {
		switch m {
		case "secret", "psk":
			c.AuthBy = "secret"
			return nil
		case "never", "null":
			if len(methods) == 1 {
				c.AuthBy = "never"
				return nil
			}
		case "rsasig", "pubkey", "rsa", "rsa-sha1", "rsa-sha2", "rsa-sha2_256", "rsa-sha2_384", "rsa-sha2_512",
			"ecdsa", "ecdsasig", "ecdsa-sha2", "ecdsa-sha2_256", "ecdsa-sha2_384", "ecdsa-sha2_512", "eddsa":
			if missing == nil {
				missing = need("public-key authentication", "RSA/ECDSA signatures and certificates; gosec authenticates with pre-shared keys, authby=secret")
			}
		case "xauthpsk", "xauthrsasig", "hybridinitrsa", "hybridrespsa", "hybridinitrsasig", "hybridrespsig":
			if missing == nil {
				missing = need("XAUTH", "an extended authentication round after phase 1")
			}
		default:
			return fmt.Errorf("unknown authby %q (secret, psk, rsasig, pubkey, never)", m)
		}
	}
	return missing
}

// resolveIKEVersion applies Libreswan's precedence (programs/pluto/
// extract.c, v5.4, extract_ike_version): keyexchange= wins over ikev2=,
// whose value counts only when keyexchange= is absent.
func (p *parser) resolveIKEVersion(c *Conn) (error, pos, string) {
	kx, hasKX := c.set["keyexchange"]
	iv, hasIV := c.set["ikev2"]
	if hasKX && hasIV {
		if (c.KeyExchange == "ikev1" && c.ikev2 == "yes") || (c.KeyExchange == "ikev2" && c.ikev2 == "no") {
			p.warnf(iv, "ikev2= is ignored: keyexchange=%s (line %d) wins, as in Libreswan", c.KeyExchange, kx.line)
		}
	} else if hasIV {
		switch c.ikev2 {
		case "no":
			c.KeyExchange = "ikev1"
		case "propose":
			// Before Libreswan 3.28 propose fell back to IKEv1.
			p.warnf(iv, "ikev2=propose: gosec uses IKEv1, the fallback Libreswan before 3.28 allowed (since 3.28 it means ikev2=yes)")
			c.KeyExchange = "ikev1"
		case "yes":
			c.KeyExchange = "ikev2"
			return need("IKEv2", "gosec speaks IKEv1: ikev2=no"), iv, "ikev2=" + c.ikev2Raw
		}
	}
	switch c.KeyExchange {
	case "ikev2":
		return need("IKEv2", "gosec speaks IKEv1: keyexchange=ikev1"), kx, "keyexchange=ikev2"
	case "ike":
		return need("IKEv2", "keyexchange=ike is IKEv2 in strongSwan; gosec speaks IKEv1: keyexchange=ikev1"), kx, "keyexchange=ike"
	}
	return nil, pos{}, ""
}

// bothKeys is FreeS/WAN's espenckey=/espauthkey=/ahkey= without
// left/right: the key of both directions, unless leftespenckey= etc.
// (applied after it) say otherwise.
func bothKeys(field func(*End) *[]byte) handler {
	return func(c *Conn, v string, _ *resolver) error {
		for _, e := range []*End{&c.Left, &c.Right} {
			if err := setKey(c, field(e), v); err != nil {
				return err
			}
		}
		return nil
	}
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
	ps, err := parseProposals(v, kindESP)
	if err == nil {
		c.ESP = ps
		return nil
	}
	var ne *needError
	if errors.As(err, &ne) {
		return err
	}
	ps, err = parseProposals(v, kindAH)
	if err != nil {
		return err
	}
	c.ESP = ps
	return nil
}

func setPFSGroup(c *Conn, v string, _ *resolver) error {
	v = strings.ToLower(v)
	g, ok := dhNames[v]
	if ok && !g.Supported() || !ok && isUnsupportedAlg(v) {
		return need("DH group "+v, "gosec implements modp1024 and up, ecp256/384/521")
	}
	if !ok {
		return fmt.Errorf("unknown DH group %q", v)
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

// setCount parses a non-negative count (bytes or packets; 0: no limit).
func setCount(dst *uint64, kw, v string) error {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return fmt.Errorf("bad %s %q (a whole number; 0 for no limit)", kw, v)
	}
	*dst = n
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
