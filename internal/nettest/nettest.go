// Package nettest holds test helpers that build small network topologies out
// of named network namespaces and veth pairs, run commands inside them, and
// run Go code inside them on a locked OS thread. Everything a helper creates is
// removed again with t.Cleanup. The caller chooses every name, so that tests of
// different packages can use disjoint prefixes and run side by side.
//
// The helpers need root; tests call testutil.NeedRoot first.
package nettest

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"runtime"
	"strings"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// run runs an ip(8)-style command and returns its combined output.
func run(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	if err != nil {
		return out.String(), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return out.String(), nil
}

// NewNS creates the named network namespace (as `ip netns add` does, so that
// `ip netns exec` finds it), brings its loopback up, and deletes it when the
// test ends. A stale namespace of the same name, left by a crashed run, is
// deleted first.
func NewNS(t testing.TB, name string) {
	t.Helper()
	if _, err := netns.GetFromName(name); err == nil {
		_, _ = run("ip", "netns", "del", name)
	}
	if _, err := run("ip", "netns", "add", name); err != nil {
		t.Fatalf("nettest: create namespace: %v", err)
	}
	t.Cleanup(func() {
		if _, err := run("ip", "netns", "del", name); err != nil {
			t.Errorf("nettest: delete namespace: %v", err)
		}
	})
	if _, err := run("ip", "-n", name, "link", "set", "lo", "up"); err != nil {
		t.Fatalf("nettest: loopback up in %s: %v", name, err)
	}
}

// End is one side of a veth pair: its interface name, the namespace it lives
// in ("" for the test's own namespace) and an optional address with prefix.
type End struct {
	Name string
	NS   string
	Addr netip.Prefix
}

// Veth creates a veth pair between a and b, moves each end into its
// namespace, sets the addresses and brings both ends up. The pair is removed
// when the test ends (deleting one end removes both; a namespace deleted
// earlier takes its end with it).
func Veth(t testing.TB, a, b End) {
	t.Helper()
	if _, err := run("ip", "link", "add", a.Name, "type", "veth", "peer", "name", b.Name); err != nil {
		t.Fatalf("nettest: create veth: %v", err)
	}
	t.Cleanup(func() {
		// Whichever end still exists: ignore "cannot find device".
		for _, e := range []End{a, b} {
			args := []string{"link", "del", e.Name}
			if e.NS != "" {
				args = append([]string{"-n", e.NS}, args...)
			}
			if _, err := run("ip", args...); err == nil {
				return
			}
		}
	})
	for _, e := range []End{a, b} {
		if e.NS != "" {
			if _, err := run("ip", "link", "set", e.Name, "netns", e.NS); err != nil {
				t.Fatalf("nettest: move %s: %v", e.Name, err)
			}
		}
		pre := []string{}
		if e.NS != "" {
			pre = []string{"-n", e.NS}
		}
		if e.Addr.IsValid() {
			if _, err := run("ip", append(pre, "addr", "add", e.Addr.String(), "dev", e.Name)...); err != nil {
				t.Fatalf("nettest: address %s: %v", e.Name, err)
			}
		}
		if _, err := run("ip", append(pre, "link", "set", e.Name, "up")...); err != nil {
			t.Fatalf("nettest: up %s: %v", e.Name, err)
		}
	}
}

// Exec runs a command inside namespace ns (`ip netns exec ns argv...`) and
// returns its combined output. It does not fail the test; callers decide.
func Exec(ns string, argv ...string) (string, error) {
	return run("ip", append([]string{"netns", "exec", ns}, argv...)...)
}

// MustExec is Exec that fails the test on error.
func MustExec(t testing.TB, ns string, argv ...string) string {
	t.Helper()
	out, err := Exec(ns, argv...)
	if err != nil {
		t.Fatalf("nettest: %v", err)
	}
	return out
}

// Do runs fn on a locked OS thread switched into namespace ns, then switches
// the thread back. Sockets, TUN devices and netlink sockets that fn opens stay
// in ns for their whole life and may be used from any goroutine afterwards;
// goroutines that fn starts do NOT run in ns. If the thread cannot be switched
// back it is left locked, so the runtime discards it instead of reusing it.
func Do(ns string, fn func() error) error {
	target, err := netns.GetFromName(ns)
	if err != nil {
		return fmt.Errorf("nettest: namespace %s: %w", ns, err)
	}
	defer target.Close()

	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("nettest: current namespace: %w", err)
	}
	defer orig.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("nettest: enter %s: %w", ns, err)
	}
	fnErr := fn()
	if err := netns.Set(orig); err != nil {
		// Stay locked: the goroutine's exit will terminate the thread.
		return errors.Join(fnErr, fmt.Errorf("nettest: leave %s: %w", ns, err))
	}
	runtime.UnlockOSThread()
	return fnErr
}

// MustDo is Do that fails the test on error.
func MustDo(t testing.TB, ns string, fn func() error) {
	t.Helper()
	if err := Do(ns, fn); err != nil {
		t.Fatal(err)
	}
}

// Handle returns a netlink handle bound to namespace ns, closed at test end.
func Handle(t testing.TB, ns string) *netlink.Handle {
	t.Helper()
	h, err := netns.GetFromName(ns)
	if err != nil {
		t.Fatalf("nettest: namespace %s: %v", ns, err)
	}
	defer h.Close()
	nh, err := netlink.NewHandleAt(h)
	if err != nil {
		t.Fatalf("nettest: netlink handle in %s: %v", ns, err)
	}
	t.Cleanup(nh.Close)
	return nh
}

// Pair is the common two-namespace topology: namespaces A and B joined by a
// veth pair with one address on each end.
type Pair struct {
	A, B         End
	AAddr, BAddr netip.Addr
}

// NewPair creates namespaces prefix+"a" and prefix+"b" joined by veth
// prefix+"va" / prefix+"vb" carrying 10.x.y.1/24 and 10.x.y.2/24 for the
// given subnet (for example netip.MustParsePrefix("10.99.1.0/24")).
func NewPair(t testing.TB, prefix string, subnet netip.Prefix) *Pair {
	t.Helper()
	base := subnet.Masked().Addr().As4()
	a4, b4 := base, base
	a4[3], b4[3] = 1, 2
	p := &Pair{AAddr: netip.AddrFrom4(a4), BAddr: netip.AddrFrom4(b4)}
	p.A = End{Name: prefix + "va", NS: prefix + "a", Addr: netip.PrefixFrom(p.AAddr, subnet.Bits())}
	p.B = End{Name: prefix + "vb", NS: prefix + "b", Addr: netip.PrefixFrom(p.BAddr, subnet.Bits())}
	NewNS(t, p.A.NS)
	NewNS(t, p.B.NS)
	Veth(t, p.A, p.B)
	return p
}
