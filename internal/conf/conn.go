package conf

import (
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// End is one side (left or right) of a conn.
type End struct {
	// Host is the address as written: an IP address, %any,
	// %defaultroute or a DNS name; Addr is what it resolved to (invalid
	// for %any).
	Host         string
	Addr         netip.Addr
	Any          bool
	DefaultRoute bool
	Subnets      []netip.Prefix
	ID           string
	Proto        uint8  // from leftprotoport; 0 = any
	Port         uint16 // 0 = any
	NextHop      netip.Addr
	RSASigKey    string
	Cert         string
	UpDown       string // leftupdown: shell command run as SAs come and go

	// Manual keying: the SA whose destination is this side.
	SPI        uint32
	ESPEncKey  []byte
	ESPAuthKey []byte
	AHKey      []byte
}

// Conn is one resolved connection (after %default and also=).
type Conn struct {
	Name string
	File string
	Line int

	Left, Right End

	KeyExchange string // "ikev1"
	AuthBy      string // "secret" (psk), "rsasig" (pubkey), "never"
	Aggressive  bool
	IKE         Proposals
	ESP         Proposals // empty when AH is used
	AH          Proposals
	// PFS is pfs= (Libreswan); unset it is no, and strongSwan's way, a
	// DH group in esp=, turns PFS on by itself.
	PFS         bool
	IKELifetime time.Duration
	KeyLife     time.Duration
	Rekey       bool
	RekeyMargin time.Duration
	RekeyFuzz   int // percent
	// LifeBytes/LifePackets limit each IPsec SA's volume (0: none);
	// MarginBytes/MarginPackets start the rekey that much before.
	LifeBytes, LifePackets     uint64
	MarginBytes, MarginPackets uint64
	KeyingTries                int // 0 = forever
	DPDDelay                   time.Duration
	DPDTimeout                 time.Duration
	DPDAction                  string // none, clear, hold, restart
	ForceEncaps                bool
	EncapPort                  uint16 // NAT-T port for manual ESP-in-UDP (4500)
	Type                       string // tunnel, transport, passthrough, drop
	Auto                       string // add, start, route, ignore
	// ReplayWindow is the anti-replay window in packets; 0 turns it off.
	ReplayWindow int
	ESN          bool
	// AHAlign is 4 (RFC 4302 IPv4) or 8 (Linux without align4).
	AHAlign int
	// Debug is the conn's own log level (debug=): "error", "warn",
	// "info" or "debug"; empty: the global level applies.
	Debug string

	// Manual is set for manually keyed conns (any *spi= or key keyword).
	Manual bool

	// ikev2 is Libreswan's ikev2= ("no", "propose", "yes") and ikev2Raw
	// its value as written; resolveIKEVersion weighs it against
	// keyexchange=.
	ikev2, ikev2Raw string

	// set records which keywords were given, with where (for messages).
	set map[string]pos
	// bad records the keywords given with a value that was refused, so
	// that their absence is not reported again.
	bad map[string]bool
}

// Set reports whether keyword k was given for the conn (directly, through
// also= or conn %default).
func (c *Conn) Set(k string) bool { _, ok := c.set[k]; return ok }

// Proto returns "ah" for an AH conn, else "esp".
func (c *Conn) Proto() string {
	if len(c.AH.List) > 0 {
		return "ah"
	}
	return "esp"
}

// ManualSuite is the single suite of a manually keyed conn.
func (c *Conn) ManualSuite() Suite {
	ps := c.ESP
	if c.Proto() == "ah" {
		ps = c.AH
	}
	if len(ps.List) == 0 {
		return Suite{}
	}
	s := ps.List[0].Suites()
	if len(s) == 0 {
		return Suite{}
	}
	return s[0]
}

// WipeKeys zeroes the manual keys decoded from the conn's keywords
// (espenckey=, espauthkey=, ahkey= of both sides), for a caller that
// copied what it needs.
func (c *Conn) WipeKeys() {
	for _, e := range []*End{&c.Left, &c.Right} {
		clear(e.ESPEncKey)
		clear(e.ESPAuthKey)
		clear(e.AHKey)
	}
}

// Config is a loaded ipsec.conf.
type Config struct {
	// Conns are the conns that loaded, in file order (templates with
	// auto=ignore included); conns that need a feature gosec lacks are in
	// Skipped instead.
	Conns   []*Conn
	Skipped []Skipped
	Setup   map[string]string
	Diags   Diags
}

// Skipped is a conn left out because it needs something gosec lacks.
type Skipped struct {
	Name string
	File string // where the conn starts
	Line int
	// Feature is what is missing ("IPv6", "XAUTH", ...).
	Feature string
	// Msg says which keyword needs it, and why.
	Msg string
	// at is the line of that keyword (Where).
	at pos
}

// Where returns the file and line of the keyword that needs the feature.
func (s Skipped) Where() (string, int) { return s.at.file, s.at.line }

// Conn returns the conn named name, or nil.
func (c *Config) Conn(name string) *Conn {
	for _, cn := range c.Conns {
		if cn.Name == name {
			return cn
		}
	}
	return nil
}

// defaults are strongSwan's documented defaults for what gosec uses,
// with the IKEv1 flavour gosec speaks.
func defaultConn() *Conn {
	ike, _ := parseProposals("aes128-sha256-modp3072", kindIKE)
	esp, _ := parseProposals("aes128-sha256", kindESP)
	return &Conn{
		KeyExchange: "ikev1", AuthBy: "pubkey", IKE: ike, ESP: esp,
		IKELifetime: 3 * time.Hour, KeyLife: time.Hour, Rekey: true, RekeyMargin: 9 * time.Minute,
		RekeyFuzz: 100, KeyingTries: 3, DPDDelay: 30 * time.Second, DPDTimeout: 150 * time.Second,
		DPDAction: "none", Type: "tunnel", Auto: "ignore", ReplayWindow: 64, AHAlign: 4,
		EncapPort: 4500, set: map[string]pos{}, bad: map[string]bool{},
	}
}

// Summary is the verdict gosec conf check prints after the diagnostics of
// the configuration named name, and its exit status: 0 when every conn
// loads, 1 when there are errors, 3 when the configuration is valid but
// some conns were skipped for a feature gosec lacks (grouped by it).
func (c *Config) Summary(name string, extraErrors int) (string, int) {
	if errs := len(c.Diags.Errors()) + extraErrors; errs > 0 {
		return fmt.Sprintf("%s: %d errors; gosec start would refuse this configuration", name, errs), 1
	}
	if len(c.Skipped) == 0 {
		return fmt.Sprintf("%s: %d conns, configuration OK", name, len(c.Conns)), 0
	}
	var order []string
	names := map[string][]string{}
	for _, s := range c.Skipped {
		if _, ok := names[s.Feature]; !ok {
			order = append(order, s.Feature)
		}
		names[s.Feature] = append(names[s.Feature], s.Name)
	}
	parts := make([]string, len(order))
	for i, f := range order {
		parts[i] = fmt.Sprintf("%s (%s)", f, strings.Join(names[f], ", "))
	}
	return fmt.Sprintf("%s: %d conns loaded, %d skipped: %s", name, len(c.Conns), len(c.Skipped), strings.Join(parts, "; ")), 3
}
