package ike

import (
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/clock"
)

// FuzzEngine drives two engines, synchronously on the fuzzing goroutine,
// through sequences of network events chosen by the input: deliver,
// drop, duplicate, corrupt, truncate or replay the next message, let
// time pass, start or end negotiations. After every step neither side
// may have an SA installed twice or an installed outbound SA it does not
// know; at the end, once both sides terminate, nothing may be left.

// fuzzMsg is one message on the fuzz wire.
type fuzzMsg struct {
	b        []byte
	from, to netip.AddrPort
	natt     bool
}

type fuzzWire struct {
	pending, delivered []fuzzMsg
}

type fuzzTransport struct {
	w     *fuzzWire
	local netip.Addr
}

func (t *fuzzTransport) Send(msg []byte, to netip.AddrPort, natt bool) error {
	port := uint16(500)
	if natt {
		port = 4500
	}
	if len(t.w.pending) < 64 {
		t.w.pending = append(t.w.pending, fuzzMsg{append([]byte(nil), msg...), netip.AddrPortFrom(t.local, port), to, natt})
	}
	return nil
}

type fuzzSide struct {
	e    *Engine
	inst *fakeInstaller
}

func FuzzEngine(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 40)) // deliver everything: a complete exchange
	f.Add([]byte{1, 0, 0, 6, 3, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 5, 2, 0, 0})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 1, 5, 3, 5, 5, 6, 200, 7, 3, 0, 0, 0, 0})
	f.Add([]byte{3, 17, 0, 4, 40, 0, 6, 30, 0, 0, 0, 0, 0, 0, 0, 7, 1, 0, 0, 0, 0, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, ops []byte) {
		if len(ops) > 256 {
			ops = ops[:256]
		}
		fc := clock.NewFake(time.Unix(1e9, 0))
		w := &fuzzWire{}
		ca, cb := pairConns("c", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 19)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
		ca.DPDDelay, ca.DPDTimeout, ca.DPDAction = 30*time.Second, 90*time.Second, "clear"
		ca.Rekey, ca.RekeyMargin, ca.Lifetime, cb.Lifetime = true, time.Minute, 5*time.Minute, 5*time.Minute
		seed := uint64(len(ops))
		mk := func(local netip.Addr, inst *fakeInstaller, c *Conn, s uint64) fuzzSide {
			e := New(Config{Transport: &fuzzTransport{w: w, local: local}, Installer: inst,
				PSK: func(string, string) ([]byte, bool) { return []byte("secret"), true }, Clock: fc,
				Log: slog.New(slog.DiscardHandler), Rand: rand.NewChaCha8([32]byte{byte(s), byte(seed)}),
				RetransmitTimeout: time.Second, Retransmits: 3, HalfOpenTimeout: 10 * time.Second})
			e.inline = true
			e.conns, e.order = map[string]*Conn{c.Name: c}, []string{c.Name}
			return fuzzSide{e, inst}
		}
		a, b := mk(addrA, newInstaller(0x1000), ca, 1), mk(addrB, newInstaller(0x2000), cb, 2)
		side := map[netip.Addr]fuzzSide{addrA: a, addrB: b}
		pump := func() {
			a.e.pump()
			b.e.pump()
		}
		deliver := func(m fuzzMsg) {
			if s, ok := side[m.to.Addr()]; ok {
				s.e.HandleMessage(m.b, m.from, m.to, m.natt)
				w.delivered = append(w.delivered, m)
				if len(w.delivered) > 64 {
					w.delivered = w.delivered[1:]
				}
			}
		}
		a.e.initiate("c", nil)
		for i := 0; i < len(ops); i++ {
			op := ops[i] % 8
			arg := 0
			if i+1 < len(ops) && op >= 3 {
				i++
				arg = int(ops[i])
			}
			var m fuzzMsg
			if op <= 4 && len(w.pending) > 0 {
				m = w.pending[0]
				w.pending = w.pending[1:]
			} else if op <= 4 {
				op = 6 // nothing in flight: let time pass
				arg = 10
			}
			switch op {
			case 0:
				deliver(m)
			case 1: // lost
			case 2:
				deliver(m)
				w.pending = append(w.pending, m)
			case 3:
				c := fuzzMsg{append([]byte(nil), m.b...), m.from, m.to, m.natt}
				c.b[arg%len(c.b)] ^= byte(1 + arg>>3)
				deliver(c)
			case 4:
				deliver(fuzzMsg{m.b[:max(1, arg%len(m.b))], m.from, m.to, m.natt})
			case 5:
				if len(w.delivered) > 0 {
					deliver(w.delivered[arg%len(w.delivered)])
				}
			case 6:
				fc.Advance(time.Duration(arg) * 100 * time.Millisecond)
			case 7:
				s := a
				if arg&1 == 1 {
					s = b
				}
				if arg&2 == 0 {
					s.e.initiate("c", nil)
				} else {
					s.e.terminate("c", arg&4 != 0)
				}
			}
			pump()
			checkConsistent(t, "A", a)
			checkConsistent(t, "B", b)
		}
		// The end: both sides terminate; nothing may be left behind.
		for _, s := range []fuzzSide{a, b} {
			s.e.shutdown()
		}
		for _, s := range []fuzzSide{a, b} {
			s.inst.mu.Lock()
			in, out := len(s.inst.inbound), len(s.inst.outbound)
			s.inst.mu.Unlock()
			if in+out != 0 || leftovers(s.inst) != 0 || len(s.e.sas) != 0 {
				t.Fatalf("after shutdown: %d inbound, %d outbound SAs, %d SPIs unaccounted, %d ISAKMP SAs", in, out, leftovers(s.inst), len(s.e.sas))
			}
		}
	})
}

func checkConsistent(t *testing.T, name string, s fuzzSide) {
	t.Helper()
	s.inst.mu.Lock()
	defer s.inst.mu.Unlock()
	for spi, n := range s.inst.installs {
		if n > 1 {
			t.Fatalf("%s: SA %08x installed %d times", name, spi, n)
		}
	}
	known := map[uint32]bool{}
	for _, list := range s.e.children {
		for _, c := range list {
			known[c.sa.InSPI] = true
			if s.inst.inbound[c.sa.InSPI] == nil || s.inst.outbound[c.sa.InSPI] == nil {
				t.Fatalf("%s: the engine's child %08x is not installed", name, c.sa.InSPI)
			}
		}
	}
	for spi := range s.inst.outbound {
		if !known[spi] {
			t.Fatalf("%s: outbound SA %08x installed, unknown to the engine", name, spi)
		}
	}
}
