package ike

import (
	"context"
	"crypto/rand"
	"sync"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/ike/ikecrypto"
)

func zeroed(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func randBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

// TestKeymatForgets: each secret of the phase-1 key material (the
// keymat's, and what Main Mode keeps for its proofs) is zeroed in place
// at the step after which nothing needs it.
func TestKeymatForgets(t *testing.T) {
	dh, err := ikecrypto.GenerateDH(14, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k := &keymat{hash: ikecrypto.HashSHA1}
	p := &p1{}
	copy(p.icky[:], randBytes(t, 8))
	copy(p.rcky[:], randBytes(t, 8))
	mm := &mainMode{p: p, dh: dh, gxi: randBytes(t, 256), gxr: randBytes(t, 256), ni: randBytes(t, 32), nr: randBytes(t, 32),
		saiBody: randBytes(t, 40)}
	ni, nr := mm.ni, mm.nr
	gxy := randBytes(t, 256)
	var exported, logged []byte
	err = k.derive(newPSKAuth([]byte("secret")), mm.authInput(), mm.ni, mm.nr, gxy, ikecrypto.CipherAES, 16,
		func(key []byte) { exported = key }, func(_, _, _, e, key, _ []byte) { logged = e; _ = key })
	if err != nil {
		t.Fatal(err)
	}
	if !zeroed(gxy) {
		t.Fatal("g^xy survives derive")
	}
	if !zeroed(logged) {
		t.Fatal("SKEYID_e survives derive")
	}
	if zeroed(exported) || len(exported) != 16 {
		t.Fatal("the exported encryption key is not a copy of it")
	}
	skeyid, d, a := k.skeyid, k.d, k.a
	for name, b := range map[string][]byte{"SKEYID": skeyid, "SKEYID_d": d, "SKEYID_a": a, "Ni": ni, "Nr": nr} {
		if len(b) == 0 || zeroed(b) {
			t.Fatalf("%s missing after derive", name)
		}
	}
	mm.forgetDH()
	if mm.dh != nil {
		t.Fatal("DH pair kept after forgetDH")
	}
	if _, err := dh.SharedSecret(mm.gxr); err == nil {
		t.Fatal("the private value still works after forgetDH")
	}
	k.authenticated()
	mm.forget()
	for name, b := range map[string][]byte{"SKEYID": skeyid, "Ni": ni, "Nr": nr} {
		if !zeroed(b) {
			t.Fatalf("%s not zeroed once authenticated", name)
		}
	}
	if k.skeyid != nil || mm.ni != nil || mm.nr != nil || mm.gxi != nil || mm.gxr != nil || mm.saiBody != nil {
		t.Fatal("proof material still referenced once authenticated")
	}
	if zeroed(d) || zeroed(a) || k.cbc == nil {
		t.Fatal("SKEYID_d, SKEYID_a or the cipher lost while the SA lives")
	}
	k.wipe()
	if !zeroed(d) || !zeroed(a) || k.cbc != nil || k.iv != nil {
		t.Fatal("SKEYID_d or SKEYID_a survive wipe")
	}
}

// TestEngineForgetsSecrets: after a Main Mode and a Quick Mode with PFS,
// both engines hold no DH private value, SKEYID, nonce or g^xy, and the
// KEYMAT they handed to the data plane is zeroed in place; once the
// ISAKMP SA is gone, SKEYID_d and SKEYID_a are zeroed too.
func TestEngineForgetsSecrets(t *testing.T) {
	a, b := pairConns("w", []Suite{suite(EncrAESCBC, 128, IntegSHA256, 14)},
		[]Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, ModeTunnel)
	r := newRig(t, "k", "k", []*Conn{a}, []*Conn{b}, nil)
	if _, err := r.up(r.a, "w"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(r.ib.children()) == 1 })
	checkPair(t, r.ia, r.ib, 1)
	type held struct{ d, a [][]byte }
	inspect := func(e *Engine, side string) held {
		var h held
		var qms int
		e.call(context.Background(), func() {
			for _, p := range e.sas {
				if !p.established() {
					continue
				}
				mm := p.phase1.(*mainMode)
				if mm.dh != nil || p.km.skeyid != nil || mm.ni != nil || mm.nr != nil || mm.saiBody != nil {
					t.Errorf("%s: established ISAKMP SA keeps DH pair, SKEYID, nonces or SA payload", side)
				}
				h.d, h.a = append(h.d, p.km.d), append(h.a, p.km.a)
				for _, q := range p.qms {
					qms++
					if q.dh != nil || q.gqm != nil || q.ni != nil || q.nr != nil {
						t.Errorf("%s: finished Quick Mode %d keeps its PFS pair, g^xy or nonces", side, q.x.msgID)
					}
					if len(q.inKeys) == 0 || !zeroed(q.inKeys) || !zeroed(q.outKeys) {
						t.Errorf("%s: Quick Mode %d KEYMAT not zeroed after installation", side, q.x.msgID)
					}
				}
			}
		})
		if len(h.d) != 1 || qms != 1 {
			t.Fatalf("%s: %d ISAKMP SAs, %d Quick Modes", side, len(h.d), qms)
		}
		return h
	}
	ha, hb := inspect(r.a, "A"), inspect(r.b, "B")
	if _, err := r.a.Terminate(context.Background(), "w"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool {
		ok := true
		r.b.call(context.Background(), func() { ok = len(r.b.sas) == 0 })
		return ok
	})
	for _, h := range []held{ha, hb} {
		for i := range h.d {
			if !zeroed(h.d[i]) || !zeroed(h.a[i]) {
				t.Fatal("SKEYID_d or SKEYID_a survive the ISAKMP SA")
			}
		}
	}
}

// gateReader is a random source whose reads of at least big octets (a
// Diffie-Hellman private value) wait until the gate opens.
type gateReader struct {
	big     int
	blocked chan struct{}
	open    chan struct{}
}

func (g *gateReader) Read(b []byte) (int, error) {
	if len(b) >= g.big {
		select {
		case g.blocked <- struct{}{}:
		default:
		}
		<-g.open
	}
	return rand.Read(b)
}

// TestInitiatorDHOffEngine: the initiator's Diffie-Hellman work (Main
// Mode and PFS) runs on the crypto workers: while it is held, the engine
// still answers commands; released, the negotiation completes.
func TestInitiatorDHOffEngine(t *testing.T) {
	a, b := pairConns("g", []Suite{suite(EncrAESCBC, 128, IntegSHA256, 14)},
		[]Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, ModeTunnel)
	gate := &gateReader{big: 200, blocked: make(chan struct{}, 1), open: make(chan struct{})}
	r := newRig(t, "k", "k", []*Conn{a}, []*Conn{b}, func(c *Config) {
		if c.Transport.(*fakeTransport).local == addrA {
			c.Rand = gate
		}
	})
	var once sync.Once
	release := func() { once.Do(func() { close(gate.open) }) }
	t.Cleanup(release) // runs before the rig's: a failing test leaves no engine blocked
	done := make(chan error, 1)
	go func() { _, err := r.up(r.a, "g"); done <- err }()
	for i := 0; i < 2; i++ { // MM3's key pair, then QM1's PFS key pair
		select {
		case <-gate.blocked:
		case <-time.After(10 * time.Second):
			t.Fatalf("Diffie-Hellman step %d never ran", i+1)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, _, err := r.a.Status(ctx)
		cancel()
		if err != nil {
			t.Fatalf("step %d: the engine does not answer while a Diffie-Hellman computation runs: %v", i+1, err)
		}
		gate.open <- struct{}{}
	}
	release()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
