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
