package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestQuickModeAuthorization is issue 10's road-warrior takeover through
// the real daemons: a gateway has two right=%any conns, alice (@alice,
// 10.10.0.0/24) and bob (@bob, 10.20.0.0/24). A client authenticated as
// @alice that proposes bob's subnet in Quick Mode is refused and nothing
// is installed; proposing its own subnet works (so the refusal is the
// authorization, not a broken setup).
func TestQuickModeAuthorization(t *testing.T) {
	tp := newTopo(t, "gsz-")
	const gw = `conn %default
	left=192.0.2.2
	leftid=@gw2
	leftsubnet=10.2.0.0/24
	right=%any
	authby=secret
	keyexchange=ikev1
	ike=aes128-sha256-modp2048!
	esp=aes128gcm16!
	keyingtries=1
	auto=add

conn alice
	rightid=@alice
	rightsubnet=10.10.0.0/24

conn bob
	rightid=@bob
	rightsubnet=10.20.0.0/24
`
	// Main Mode with pre-shared keys chooses the key before it sees the
	// peer's ID, so a responder with %any peers uses one key for both.
	const secrets = ": PSK \"road-warriors\"\n"
	client := func(name, subnet string) string {
		return "conn " + name + `
	left=192.0.2.1
	leftid=@alice
	leftsubnet=` + subnet + `
	right=192.0.2.2
	rightid=@gw2
	rightsubnet=10.2.0.0/24
	authby=secret
	keyexchange=ikev1
	ike=aes128-sha256-modp2048!
	esp=aes128gcm16!
	keyingtries=1
	auto=add
`
	}
	gw2 := tp.startDaemon(tp.ns("gw2"), gw, secrets)
	gw1 := tp.startDaemon(tp.ns("gw1"), client("steal", "10.20.0.0/24")+"\n"+client("own", "10.10.0.0/24"), secrets)

	out, err := gw1.ctl(60*time.Second, "up", "steal")
	if err == nil {
		t.Fatalf("@alice was given bob's subnet:\n%s\ngw2:\n%s", out, gw2.mustCtl("statusall"))
	}
	if !strings.Contains(out, "INVALID_ID_INFORMATION") && !strings.Contains(out, "NO_PROPOSAL_CHOSEN") {
		t.Errorf("refusal without the expected notify:\n%s", out)
	}
	for _, conn := range []string{"alice", "bob"} {
		if st := statusOf(t, gw2, conn); len(st.SAs) != 0 {
			t.Fatalf("gw2 installed SAs under %s for @alice's proposal of 10.20.0.0/24: %+v", conn, st)
		}
	}
	if routes := tp.must(tp.ns("gw2"), "ip", "route", "show", "table", "all"); strings.Contains(routes, "10.10.0.0/24") || strings.Contains(routes, "10.20.0.0/24") {
		t.Fatalf("gw2 routes a road warrior's subnet after the refusal:\n%s", routes)
	}

	// The same client, proposing its own subnet: accepted under alice.
	gw1.mustCtl("up", "own")
	if st := statusOf(t, gw2, "alice"); len(st.SAs) == 0 {
		t.Fatalf("alice's own subnet was not accepted: %+v\n%s", st, tail(gw2.log(), 20))
	}
	if st := statusOf(t, gw2, "bob"); len(st.SAs) != 0 {
		t.Fatalf("bob has SAs: %+v", st)
	}
}

// TestTwoConnsSameGateways: two conns between the same two gateways (two
// subnet pairs, a common setup). Bringing up the second must not remove the
// first (issue 10: INITIAL-CONTACT from the second Main Mode used to clear
// every SA of the peer's address).
func TestTwoConnsSameGateways(t *testing.T) {
	tp := newTopo(t, "gsx-")
	conn := func(name, rsub string) string {
		return "conn " + name + `
	left=192.0.2.1
	right=192.0.2.2
	leftsubnet=10.1.0.0/24
	rightsubnet=` + rsub + `
	authby=secret
	keyexchange=ikev1
	ike=aes128-sha256-modp2048!
	esp=aes128gcm16!
	keyingtries=1
	auto=add
`
	}
	// Both gateways load the same file; each takes the side whose
	// address it has.
	conf := conn("first", "10.2.0.0/24") + "\n" + conn("second", "10.2.9.0/24")
	const secrets = "192.0.2.1 192.0.2.2 : PSK \"two-conns\"\n"
	gw1 := tp.startDaemon(tp.ns("gw1"), conf, secrets)
	gw2 := tp.startDaemon(tp.ns("gw2"), conf, secrets)
	gw1.mustCtl("up", "first")
	before := statusOf(t, gw2, "first")
	if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 3); err != nil {
		t.Fatalf("first conn carries no traffic: %v", err)
	}
	gw1.mustCtl("up", "second")
	time.Sleep(2 * time.Second)
	if s := statusOf(t, gw2, "second"); len(s.SAs) == 0 {
		t.Fatalf("the second conn is not up on gw2: %+v", s)
	}
	after := statusOf(t, gw2, "first")
	if len(after.SAs) == 0 || after.in.SPI != before.in.SPI {
		t.Fatalf("bringing up the second conn removed or replaced the first's SAs on gw2: before %+v after %+v\n%s", before, after, tail(gw2.log(), 20))
	}
	if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 3); err != nil {
		t.Fatalf("the first conn stopped carrying traffic after the second came up: %v\n%s", err, tail(gw2.log(), 20))
	}
}
