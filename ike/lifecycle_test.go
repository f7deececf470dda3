package ike

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/conf"
	"github.com/gosec-ipsec/gosec/sad"
)

var (
	testIKE = []conf.Suite{suite(conf.EncrAESCBC, 128, conf.IntegSHA1, 14)}
	testESP = []conf.Suite{suite(conf.EncrAESCBC, 128, conf.IntegSHA1, 0)}
)

func pfx(s string) []netip.Prefix { return []netip.Prefix{netip.MustParsePrefix(s)} }

// pskTable gives each engine (by its address) a pre-shared key per pair
// of IDs, "*" standing for any remote ID.
func pskTable(keys map[netip.Addr]map[[2]string]string) func(*Config) {
	return func(c *Config) {
		local := c.Transport.(*fakeTransport).local
		tab := keys[local]
		c.PSK = func(l, r string) ([]byte, bool) {
			if k, ok := tab[[2]string{l, r}]; ok {
				return []byte(k), true
			}
			if k, ok := tab[[2]string{l, "*"}]; ok {
				return []byte(k), true
			}
			return nil, false
		}
	}
}

// TestQuickModeAuthorization: a road warrior authenticated as @alice
// cannot use bob's conn (and so bob's subnet) in Quick Mode, although
// both conns are right=%any and bob's selectors cover what it proposes.
func TestQuickModeAuthorization(t *testing.T) {
	gwAlice := &Conn{Name: "alice", Local: addrB, LocalID: "@gw", RemoteID: "@alice", IKE: testIKE, ESP: testESP, Mode: sad.Tunnel,
		LocalSubnets: pfx("10.0.0.0/24"), RemoteSubnets: pfx("10.10.0.0/24"), Lifetime: time.Hour, IKELifetime: time.Hour, KeyingTries: 1}
	gwBob := *gwAlice
	gwBob.Name, gwBob.RemoteID, gwBob.RemoteSubnets = "bob", "@bob", pfx("10.20.0.0/24")
	mine := &Conn{Name: "alice", Local: addrA, Remote: addrB, LocalID: "@alice", RemoteID: "@gw", IKE: testIKE, ESP: testESP, Mode: sad.Tunnel,
		LocalSubnets: pfx("10.10.0.0/24"), RemoteSubnets: pfx("10.0.0.0/24"), Lifetime: time.Hour, IKELifetime: time.Hour, KeyingTries: 1}
	steal := *mine
	steal.Name, steal.LocalSubnets = "steal", pfx("10.20.0.0/24")
	keys := pskTable(map[netip.Addr]map[[2]string]string{
		addrA: {{"@alice", "*"}: "alice-key"},
		addrB: {{"@gw", "@alice"}: "alice-key", {"@gw", "@bob"}: "bob-key"},
	})
	for _, sameSA := range []bool{false, true} {
		t.Run(map[bool]string{false: "new-isakmp-sa", true: "same-isakmp-sa"}[sameSA], func(t *testing.T) {
			r := newRig(t, "", "", []*Conn{mine, &steal}, []*Conn{gwAlice, &gwBob}, keys)
			if _, err := r.up(r.a, "alice"); err != nil {
				t.Fatalf("alice's own conn: %v\n%s", err, r.logText())
			}
			waitFor(t, func() bool { return len(r.ib.children()) == 1 })
			if sameSA {
				// Under alice's ISAKMP SA, as an attacker would.
				var err error
				done := make(chan error, 1)
				r.a.call(context.Background(), func() {
					for _, p := range r.a.sortedSAs() {
						if p.established() {
							r.a.quickI1(p, &steal, steal.LocalSubnets[0], steal.RemoteSubnets[0], func(err error) { done <- err }, nil)
							return
						}
					}
					done <- nil
				})
				select {
				case err = <-done:
				case <-time.After(10 * time.Second):
					t.Fatal("no answer to the Quick Mode")
				}
				if err == nil || !strings.Contains(err.Error(), "INVALID_ID_INFORMATION") {
					t.Fatalf("Quick Mode for bob's subnet under alice's ISAKMP SA: err = %v", err)
				}
			} else {
				_, err := r.up(r.a, "steal")
				if err == nil || !strings.Contains(err.Error(), "INVALID_ID_INFORMATION") {
					t.Fatalf("up steal: err = %v\n%s", err, r.logText())
				}
			}
			time.Sleep(50 * time.Millisecond)
			for _, c := range r.ib.children() {
				if c.Conn != "alice" || c.RemoteTS != netip.MustParsePrefix("10.10.0.0/24") {
					t.Fatalf("gateway installed %s %v === %v", c.Conn, c.LocalTS, c.RemoteTS)
				}
			}
			r.ib.mu.Lock()
			n := len(r.ib.inbound)
			r.ib.mu.Unlock()
			if n > 1 || (sameSA && n != 1) {
				t.Fatalf("gateway has %d inbound SAs, want alice's only", n)
			}
			if !strings.Contains(r.logText(), "authorizes") {
				t.Fatalf("no log line says why:\n%s", r.logText())
			}
		})
	}
}

// TestQuickModeProtoPorts: the responder accepts the protocol and ports
// of IDci/IDcr only within its leftprotoport/rightprotoport, and what it
// accepted is what both sides install.
func TestQuickModeProtoPorts(t *testing.T) {
	type pp struct {
		proto        uint8
		lport, rport uint16
	}
	cases := []struct {
		name   string
		a, b   pp // A initiates; B responds
		wantOK bool
	}{
		{name: "exact", a: pp{17, 0, 1701}, b: pp{17, 1701, 0}, wantOK: true},
		{name: "narrower", a: pp{6, 0, 80}, b: pp{0, 0, 0}, wantOK: true},
		{name: "narrower-port", a: pp{17, 5000, 1701}, b: pp{17, 1701, 0}, wantOK: true},
		{name: "wider-proto", a: pp{0, 0, 0}, b: pp{17, 1701, 0}},
		{name: "other-proto", a: pp{6, 0, 1701}, b: pp{17, 1701, 0}},
		{name: "other-port", a: pp{17, 0, 1702}, b: pp{17, 1701, 0}},
		{name: "wider-port", a: pp{17, 0, 0}, b: pp{17, 1701, 0}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ca, cb := pairConns("c", testIKE, testESP, sad.Tunnel)
			ca.Proto, ca.LocalPort, ca.RemotePort = c.a.proto, c.a.lport, c.a.rport
			cb.Proto, cb.LocalPort, cb.RemotePort = c.b.proto, c.b.lport, c.b.rport
			r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
			_, err := r.up(r.a, "c")
			if !c.wantOK {
				if err == nil || !strings.Contains(err.Error(), "INVALID_ID_INFORMATION") {
					t.Fatalf("err = %v, want INVALID_ID_INFORMATION", err)
				}
				time.Sleep(30 * time.Millisecond)
				if n := len(r.ia.children()) + len(r.ib.children()); n != 0 {
					t.Fatalf("%d SAs installed", n)
				}
				return
			}
			if err != nil {
				t.Fatalf("up: %v\n%s", err, r.logText())
			}
			waitFor(t, func() bool { return len(r.ib.children()) == 1 })
			x, y := r.ia.children()[0], r.ib.children()[0]
			if x.Proto8 != c.a.proto || x.LocalPort != c.a.lport || x.RemotePort != c.a.rport {
				t.Fatalf("A installed proto %d ports %d/%d, want %+v", x.Proto8, x.LocalPort, x.RemotePort, c.a)
			}
			if y.Proto8 != c.a.proto || y.LocalPort != c.a.rport || y.RemotePort != c.a.lport {
				t.Fatalf("B installed proto %d ports %d/%d, want the negotiated %d %d/%d", y.Proto8, y.LocalPort, y.RemotePort, c.a.proto, c.a.rport, c.a.lport)
			}
		})
	}
}
