package nettest

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/testutil"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func TestPairPingAndDo(t *testing.T) {
	testutil.NeedRoot(t)
	p := NewPair(t, "gnio-nt", netip.MustParsePrefix("10.231.1.0/24"))
	out := MustExec(t, p.A.NS, "ping", "-c", "1", "-W", "2", p.BAddr.String())
	if !strings.Contains(out, "1 received") {
		t.Fatalf("ping across the pair: %s", out)
	}
	// Code run by Do sees the namespace's links, and the calling thread
	// comes back to the original namespace.
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	MustDo(t, p.B.NS, func() error {
		if _, err := net.InterfaceByName(p.B.Name); err != nil {
			t.Errorf("in %s: %v", p.B.NS, err)
		}
		if _, err := net.InterfaceByName(p.A.Name); err == nil {
			t.Errorf("in %s: %s visible, want only in %s", p.B.NS, p.A.Name, p.A.NS)
		}
		return nil
	})
	// A netlink handle bound to A sees A's end.
	h := Handle(t, p.A.NS)
	l, err := h.LinkByName(p.A.Name)
	if err != nil {
		t.Fatalf("handle in A: %v", err)
	}
	if l.Attrs().OperState == netlink.OperDown {
		t.Errorf("%s is down", p.A.Name)
	}
	if _, err := Exec(p.A.NS, "false"); err == nil {
		t.Error("Exec of a failing command returned no error")
	}
}

func TestCleanupRemovesNamespace(t *testing.T) {
	testutil.NeedRoot(t)
	t.Run("inner", func(t *testing.T) {
		NewNS(t, "gnio-ntc")
	})
	if _, err := netns.GetFromName("gnio-ntc"); err == nil {
		t.Fatal("namespace gnio-ntc still exists after its test ended")
	}
}
