package ike

import (
	"crypto/sha256"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/ike/isakmp"
)

// Fault injection over the fake network, in the spirit of Libreswan's
// impair= options: every message of Main Mode and Quick Mode, sent by
// the initiator or the responder, is dropped, duplicated, delayed past a
// retransmission, reordered, replayed after completion, or lost for
// good, and each run must end as expected with no SA installed twice and
// none left behind.

type fault int

const (
	faultDrop      fault = iota // the first copy is lost
	faultDuplicate              // delivered twice
	faultDelay                  // delivered after a retransmission of it
	faultReorder                // delivered after the next message
	faultReplay                 // delivered again after the exchange completed
	faultBlackhole              // every copy is lost
)

func (f fault) String() string {
	return [...]string{"drop", "duplicate", "delay", "reorder", "replay", "blackhole"}[f]
}

// msgKind names a message by exchange and position: "MM3", "QM2".
func msgKind(x isakmp.ExchangeType, n int) string {
	if x == isakmp.ExchMain {
		return fmt.Sprintf("MM%d", n)
	}
	return fmt.Sprintf("QM%d", n)
}

// impairer applies one fault to one kind of message on a fakeNet.
type impairer struct {
	mu       sync.Mutex
	r        *rig
	target   string
	fault    fault
	seen     map[[32]byte]string // every message so far, by content: its kind
	count    map[isakmp.ExchangeType]int
	held     *heldMsg // reorder: waits for the next message
	recorded *heldMsg // replay: the target's first copy
	hits     int
}

type heldMsg struct {
	msg      []byte
	from, to netip.AddrPort
	dst      *Engine
}

func (h *heldMsg) deliver() { h.dst.HandleMessage(h.msg, h.from, h.to, false) }

// hook is the fakeNet drop function; it runs with the net's lock held.
func (im *impairer) hook(from, to netip.AddrPort, msg []byte) bool {
	im.mu.Lock()
	defer im.mu.Unlock()
	x := isakmp.ExchangeType(msg[18])
	if x != isakmp.ExchMain && x != isakmp.ExchQuick {
		return false
	}
	sum := sha256.Sum256(msg)
	kind, retransmit := im.seen[sum]
	if !retransmit {
		im.count[x]++
		kind = msgKind(x, im.count[x])
		im.seen[sum] = kind
	}
	cur := &heldMsg{msg: append([]byte(nil), msg...), from: from, to: to, dst: im.r.net.engines[to.Addr()]}
	if h := im.held; h != nil && !(kind == im.target && !retransmit) {
		// Reorder: the held message follows this one.
		im.held = nil
		go func() { cur.deliver(); h.deliver() }()
		return true
	}
	if kind != im.target {
		return false
	}
	im.hits++
	switch im.fault {
	case faultBlackhole:
		return true
	case faultDrop:
		return im.hits == 1
	case faultDuplicate:
		if im.hits == 1 {
			go cur.deliver()
		}
	case faultDelay:
		if im.hits == 1 {
			time.AfterFunc(3*im.r.a.cfg.RetransmitTimeout, cur.deliver)
			return true
		}
	case faultReorder:
		if im.hits == 1 {
			im.held = cur
			return true
		}
	case faultReplay:
		if im.hits == 1 {
			im.recorded = cur
		}
	}
	return false
}

// outcome is what a faulted run must end with.
type outcome struct {
	initiatorFails bool // `up` fails with "no response"
	childrenI      int  // SA pairs left installed at the initiator
	childrenR      int  // ... and at the responder
}

func expected(target string, f fault) outcome {
	if f != faultBlackhole {
		return outcome{childrenI: 1, childrenR: 1}
	}
	if target == "QM3" {
		// The initiator is done once it sends QM3; the responder, which
		// never hears it, gives its Quick Mode up and removes its
		// inbound SA (IKEv1 has no acknowledgement for QM3).
		return outcome{childrenI: 1, childrenR: 0}
	}
	return outcome{initiatorFails: true}
}

func TestFaultInjection(t *testing.T) {
	kinds := []string{"MM1", "MM2", "MM3", "MM4", "MM5", "MM6", "QM1", "QM2", "QM3"}
	faults := []fault{faultDrop, faultDuplicate, faultDelay, faultReorder, faultReplay, faultBlackhole}
	for _, bInitiates := range []bool{false, true} {
		for _, kind := range kinds {
			for _, f := range faults {
				name := fmt.Sprintf("init=%s/%s/%s", map[bool]string{false: "A", true: "B"}[bInitiates], kind, f)
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					runFault(t, kind, f, bInitiates)
				})
			}
		}
	}
}

func runFault(t *testing.T, kind string, f fault, bInitiates bool) {
	ca, cb := basicConns()
	r := newRig(t, "secret", "secret", []*Conn{ca}, []*Conn{cb}, func(c *Config) {
		c.RetransmitTimeout, c.Retransmits, c.HalfOpenTimeout = 150*time.Millisecond, 3, 2*time.Second
	})
	im := &impairer{r: r, target: kind, fault: f, seen: map[[32]byte]string{}, count: map[isakmp.ExchangeType]int{}}
	r.net.mu.Lock()
	r.net.drop = im.hook
	r.net.mu.Unlock()
	ie, re, ii, ir := r.a, r.b, r.ia, r.ib
	if bInitiates {
		ie, re, ii, ir = r.b, r.a, r.ib, r.ia
	}
	want := expected(kind, f)
	lines, err := r.up(ie, "c")
	if want.initiatorFails {
		if err == nil || !strings.Contains(err.Error(), "no response") {
			t.Fatalf("up: %v, want a failure for no response\n%s", err, strings.Join(lines, "\n"))
		}
	} else if err != nil {
		t.Fatalf("up: %v\n%s\n%s", err, strings.Join(lines, "\n"), r.logText())
	}
	if f == faultReplay {
		waitFor(t, func() bool { return len(ir.children()) == 1 })
		im.mu.Lock()
		rec := im.recorded
		im.mu.Unlock()
		if rec == nil {
			t.Fatalf("%s never passed", kind)
		}
		rec.deliver()
		time.Sleep(100 * time.Millisecond)
	}
	// Let every retransmission and timeout run out.
	deadline := time.Now().Add(8 * time.Second)
	for {
		if len(ii.children()) == want.childrenI && len(ir.children()) == want.childrenR &&
			leftovers(ii) == 0 && leftovers(ir) == 0 && re.Stats.HalfOpen.Load() == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s of %s: initiator %d SA pairs (%d SPIs unaccounted), responder %d (%d); want %d and %d\n%s",
				f, kind, len(ii.children()), leftovers(ii), len(ir.children()), leftovers(ir), want.childrenI, want.childrenR, r.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
	im.mu.Lock()
	hits := im.hits
	im.mu.Unlock()
	if hits == 0 {
		t.Fatalf("no %s was ever sent", kind)
	}
	for _, inst := range []*fakeInstaller{ii, ir} {
		inst.mu.Lock()
		for spi, n := range inst.installs {
			if n > 1 {
				t.Errorf("SA %08x installed %d times", spi, n)
			}
		}
		inst.mu.Unlock()
	}
	if want.childrenI == 1 && want.childrenR == 1 {
		checkPair(t, ii, ir, 1)
	}
}

// leftovers counts SPIs that were allocated but are neither installed
// nor released: state left behind.
func leftovers(f *fakeInstaller) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	base := f.next &^ 0xfff // newInstaller's base
	n := 0
	for spi := base + 1; spi <= f.next; spi++ {
		if _, in := f.inbound[spi]; in {
			continue
		}
		released := false
		for _, r := range append(append([]uint32(nil), f.released...), f.removed...) {
			if r == spi {
				released = true
			}
		}
		if !released {
			n++
		}
	}
	return n
}
