package ike

import (
	"strings"
	"testing"
	"time"
)

func TestParseImpairments(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want []Impairment
		bad  bool
	}{
		{in: "drop:MM3", want: []Impairment{{Action: "drop", Message: "MM3"}}},
		{in: "replay:qm1:2s@home, duplicate:MM6", want: []Impairment{{Action: "replay", Message: "QM1", Delay: 2 * time.Second, Conn: "home"}, {Action: "duplicate", Message: "MM6"}}},
		{in: "delay:MM5", bad: true},
		{in: "lose:MM1", bad: true},
		{in: "drop:MM7", bad: true},
		{in: "drop", bad: true},
		{in: "delay:QM2:-1s", bad: true},
	} {
		got, err := ParseImpairments(tc.in)
		if tc.bad {
			if err == nil {
				t.Errorf("%q: accepted", tc.in)
			}
			continue
		}
		if err != nil || len(got) != len(tc.want) {
			t.Fatalf("%q: %v %v", tc.in, got, err)
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("%q: %+v, want %+v", tc.in, got[i], tc.want[i])
			}
		}
	}
}

// TestImpairOwnMessages: the engine's own impairments act on the message
// they name, once, and the exchange still completes with one SA pair.
func TestImpairOwnMessages(t *testing.T) {
	for _, tc := range []struct{ a, b string }{
		{a: "drop:MM3"}, {a: "drop:MM5"}, {b: "drop:MM2"}, {b: "drop:MM6"}, {a: "drop:QM1"}, {b: "drop:QM2"},
		{a: "duplicate:MM1"}, {b: "duplicate:MM4"}, {a: "duplicate:QM3"}, {b: "duplicate:QM2"},
		{a: "delay:MM5:300ms"}, {b: "delay:QM2:300ms"},
		{a: "replay:QM1:300ms"}, {a: "replay:QM3:300ms"}, {b: "replay:MM6:300ms"},
	} {
		t.Run(tc.a+tc.b, func(t *testing.T) {
			ia, _ := ParseImpairments(tc.a)
			ib, _ := ParseImpairments(tc.b)
			a, b := pairConns("im", []Suite{suite(EncrAESCBC, 128, IntegSHA1, 14)}, []Suite{suite(EncrAESCBC, 128, IntegSHA1, 0)}, ModeTunnel)
			r := newRig(t, "k", "k", []*Conn{a}, []*Conn{b}, func(c *Config) {
				if c.Transport.(*fakeTransport).local == addrA {
					c.Impair = ia
				} else {
					c.Impair = ib
				}
			})
			if _, err := r.up(r.a, "im"); err != nil {
				t.Fatal(err)
			}
			waitFor(t, func() bool { return len(r.ib.children()) == 1 })
			time.Sleep(500 * time.Millisecond) // replays and delayed copies arrive
			checkPair(t, r.ia, r.ib, 1)
			if !logHas(r, "IMPAIR:") {
				t.Fatal("the impairment never acted")
			}
			for _, inst := range []*fakeInstaller{r.ia, r.ib} {
				inst.mu.Lock()
				for spi, n := range inst.installs {
					if n != 1 {
						t.Errorf("SA %08x installed %d times", spi, n)
					}
				}
				inst.mu.Unlock()
			}
		})
	}
}

func logHas(r *rig, s string) bool {
	return strings.Contains(r.logText(), s)
}
