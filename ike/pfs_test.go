package ike

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/ike/ikecrypto"
	"github.com/gosec-ipsec/gosec/ike/isakmp"
)

// TestResponderPFS: as Quick Mode responder a conn that does not ask for
// PFS also takes an offer with PFS in one of its phase-1 groups (as
// Libreswan's pfs=no does), and no other group; a conn that asks for PFS
// refuses an offer without it.
func TestResponderPFS(t *testing.T) {
	esp := suite(EncrAESCBC, 128, IntegSHA1, 0)
	noPFS := &Conn{Name: "c", IKE: []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14), suite(EncrAESCBC, 128, IntegSHA256, 19)},
		ESP: []Suite{esp}, Mode: ModeTunnel, Lifetime: time.Hour}
	pfs := *noPFS
	pfs.PFS = true
	groupInESP := *noPFS
	groupInESP.ESP = []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}
	for _, tc := range []struct {
		name  string
		conn  *Conn
		offer ikecrypto.Group
		want  ikecrypto.Group // the chosen suite's group
		ok    bool
	}{
		{"no PFS asked, none offered", noPFS, 0, 0, true},
		{"no PFS asked, the first phase-1 group offered", noPFS, 14, 14, true},
		{"no PFS asked, the second phase-1 group offered", noPFS, 19, 19, true},
		{"no PFS asked, a group outside phase 1 offered", noPFS, 5, 0, false},
		{"pfs=yes, none offered", &pfs, 0, 0, false},
		{"pfs=yes, the phase-1 group offered", &pfs, 14, 14, true},
		{"group in esp=, none offered", &groupInESP, 0, 0, false},
		{"group in esp=, another phase-1 group offered", &groupInESP, 19, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			offer := p2Suite{Proto: ProtoESP, Encr: EncrAESCBC, KeyBits: 128, Integ: IntegSHA1, Group: tc.offer, Life: time.Hour}
			sa := &isakmp.SA{DOI: 1, Situation: 1, Proposals: []isakmp.Proposal{{Num: 1, Protocol: isakmp.ProtoESP, SPI: be32(0x1234),
				Transforms: []isakmp.Transform{offer.transform(1, encapTunnel)}}}}
			_, got, _, _, err := selectP2(p2ResponderSuites(tc.conn), ModeTunnel, sa)
			if (err == nil) != tc.ok {
				t.Fatalf("selectP2: %v, want accepted %v", err, tc.ok)
			}
			if err == nil && got.Group != tc.want {
				t.Fatalf("chosen group %v, want %v", got.Group, tc.want)
			}
		})
	}
	// the initiator's own offer is unchanged: no PFS unless asked for
	for _, s := range p2Suites(noPFS) {
		if s.Group != 0 {
			t.Fatalf("a conn without PFS offers %v", s)
		}
	}
}

// TestResponderTakesInitiatorsPFS: an initiator with pfs=yes (Libreswan's
// default) and a responder written without pfs= negotiate a child with
// PFS in the phase-1 group, installed on both sides; the other way round
// (the initiator without PFS, the responder asking for it) is refused.
func TestResponderTakesInitiatorsPFS(t *testing.T) {
	ca, cb := pairConns("c", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
	ca.PFS = true
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	if _, err := r.up(r.a, "c"); err != nil {
		t.Fatalf("initiator with PFS, responder without pfs=: %v\n%s", err, r.logText())
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 }) // the responder installs on QM3
	checkPair(t, r.ia, r.ib, 1)
	for name, e := range map[string]*Engine{"initiator": r.a, "responder": r.b} {
		_, children, _ := e.Status(context.Background())
		if len(children) != 1 || children[0].PFS != ikecrypto.Group(14).String() {
			t.Fatalf("%s's child: %+v, want one with PFS %s", name, children, ikecrypto.Group(14))
		}
	}

	ca, cb = pairConns("c", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
	cb.PFS = true
	r = newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, nil)
	if _, err := r.up(r.a, "c"); err == nil {
		t.Fatal("a responder that asks for PFS took an offer without it")
	}
	if !strings.Contains(r.logText(), "NO_PROPOSAL_CHOSEN") {
		t.Fatalf("no NO_PROPOSAL_CHOSEN in the logs:\n%s", r.logText())
	}
}
