package daemon

import (
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/conf"
)

// TestReloadKeepsConnWhoseNameStopsResolving: at reload, a conn whose host
// name resolved at the previous load keeps its addresses when the name
// does not resolve now; a conn never loaded, or skipped for a missing
// feature, is reported as skipped. The names are resolved by an injected
// resolver (no network).
func TestReloadKeepsConnWhoseNameStopsResolving(t *testing.T) {
	text := `conn %default
	authby=secret
	auto=add
conn peer
	left=192.0.2.1
	right=vpn.example.org
conn newpeer
	left=192.0.2.1
	right=new.example.org
conn v6
	left=192.0.2.1
	right=2001:db8::1
`
	load := func(resolves bool) *Config {
		t.Helper()
		cfg, err := conf.Parse("ipsec.conf", []byte(text), conf.Options{NoInclude: true,
			LookupHost: func(name string) ([]netip.Addr, error) {
				if resolves && name == "vpn.example.org" {
					return []netip.Addr{netip.MustParseAddr("198.51.100.7")}, nil
				}
				return nil, errors.New("no such host")
			}})
		if err != nil {
			t.Fatal(err)
		}
		out, err := resolveConns(cfg, "", func(a netip.Addr) bool { return a == netip.MustParseAddr("192.0.2.1") })
		if err != nil {
			t.Fatal(err)
		}
		out.Skipped = cfg.Skipped
		return out
	}
	old := load(true)
	if old.Conns["peer"] == nil || old.Conns["peer"].Remote != netip.MustParseAddr("198.51.100.7") {
		t.Fatalf("first load: peer = %+v", old.Conns["peer"])
	}
	cfg := load(false)
	if cfg.Conns["peer"] != nil {
		t.Fatal("peer loaded although its name does not resolve")
	}
	var said []string
	keepUnresolved(old, cfg, func(s string) { said = append(said, s) })
	if cfg.Conns["peer"] != old.Conns["peer"] || !contains(cfg.Order, "peer") {
		t.Errorf("peer not carried over: %+v order %v", cfg.Conns["peer"], cfg.Order)
	}
	if cfg.Conns["newpeer"] != nil || cfg.Conns["v6"] != nil {
		t.Errorf("a conn never loaded appeared: %v", cfg.Order)
	}
	all := strings.Join(said, "\n")
	for _, want := range []string{
		`ipsec.conf:6: conn 'peer': right=vpn.example.org: cannot resolve "vpn.example.org": no such host; tried again at gosec reload; it keeps the addresses of the previous load (192.0.2.1, 198.51.100.7)`,
		`ipsec.conf:9: conn 'newpeer' skipped: right=new.example.org: cannot resolve "new.example.org"`,
		`ipsec.conf:12: conn 'v6' skipped: right=2001:db8::1: IPv6 is not supported by gosec`,
	} {
		if !strings.Contains(all, want) {
			t.Errorf("reload said:\n%s\nwant a line with:\n%s", all, want)
		}
	}
}
