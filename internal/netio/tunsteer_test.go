package netio

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

func prefixes(ss ...string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

func TestOutermost(t *testing.T) {
	for _, tc := range []struct {
		name string
		in   []netip.Prefix
		want []netip.Prefix
	}{
		{"empty", nil, nil},
		{"disjoint", prefixes("10.2.0.0/24", "10.1.0.0/24"), prefixes("10.1.0.0/24", "10.2.0.0/24")},
		{"nested", prefixes("10.2.5.0/24", "10.2.0.0/16", "10.2.5.128/25"), prefixes("10.2.0.0/16")},
		{"nested and disjoint", prefixes("10.2.5.0/24", "10.3.0.0/16", "10.2.0.0/16", "10.3.1.1/32", "192.0.2.0/24"),
			prefixes("10.2.0.0/16", "10.3.0.0/16", "192.0.2.0/24")},
		{"duplicates", prefixes("10.2.0.0/24", "10.2.0.0/24"), prefixes("10.2.0.0/24")},
		{"unmasked", prefixes("10.2.0.7/24"), prefixes("10.2.0.0/24")},
		{"default route takes all", prefixes("10.2.0.0/24", "0.0.0.0/0", "10.9.0.0/16"), prefixes("0.0.0.0/0")},
		{"IPv6 left out", prefixes("2001:db8::/32", "10.2.0.0/24"), prefixes("10.2.0.0/24")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := outermost(tc.in); !slices.Equal(got, tc.want) {
				t.Fatalf("outermost(%v) = %v, want %v", tc.in, got, tc.want)
			}
		})
	}
}

// steerPacket is what BPF_PROG_TEST_RUN hands a socket filter: an
// Ethernet header (the kernel pulls it, so the program sees the IP header
// first, as on a TUN) and an IPv4 header to dst.
func steerPacket(dst netip.Addr, version byte) []byte {
	b := make([]byte, 14+40)
	b[12], b[13] = 0x08, 0x00
	iphdr.PutIPv4(b[14:], &iphdr.Outer{Src: [4]byte{10, 1, 0, 2}, Dst: dst.As4()}, iphdr.ProtoUDP, 40)
	b[14] = version<<4 | 5
	return b
}

func runSteer(t *testing.T, s *steering, pkt []byte) int {
	t.Helper()
	ret, err := s.prog.Run(&ebpf.RunOptions{Data: pkt})
	if err != nil {
		t.Fatalf("test run: %v", err)
	}
	return int(ret) % s.queues
}

// TestSteeringProgram runs the loaded program on packets: nested
// prefixes go where their outermost group goes, groups stay on their
// queues while others come and go, and anything unknown or not IPv4 goes
// to queue 0.
func TestSteeringProgram(t *testing.T) {
	testutil.NeedRoot(t)
	s, err := newSteering(3)
	if err != nil {
		t.Fatal(err)
	}
	defer s.close()
	a := netip.MustParseAddr
	if err := s.set(prefixes("10.2.0.0/16", "10.2.5.0/24", "10.3.0.0/24", "10.4.0.0/24")); err != nil {
		t.Fatal(err)
	}
	check := func(dst string, want int) {
		t.Helper()
		if got := runSteer(t, s, steerPacket(a(dst), 4)); got != want {
			t.Errorf("program: %s -> queue %d, want %d", dst, got, want)
		}
		if got := s.queueOf(a(dst)); got != want {
			t.Errorf("queueOf(%s) = %d, want %d", dst, got, want)
		}
	}
	// Three groups on three queues, least loaded first.
	q2, q3, q4 := s.group[keyOf(netip.MustParsePrefix("10.2.0.0/16"))], s.group[keyOf(netip.MustParsePrefix("10.3.0.0/24"))], s.group[keyOf(netip.MustParsePrefix("10.4.0.0/24"))]
	if got := []uint32{q2, q3, q4}; !slices.Equal(slices.Sorted(slices.Values(got)), []uint32{0, 1, 2}) {
		t.Fatalf("groups got queues %v, want one each", got)
	}
	// Ties go to the last queue: queue 0 also reads what no group covers.
	if q2 != 2 {
		t.Errorf("the first group went to queue %d, want the last (2)", q2)
	}
	check("10.2.0.9", int(q2))
	check("10.2.5.9", int(q2)) // nested: same queue as its group
	check("10.2.200.1", int(q2))
	check("10.3.0.77", int(q3))
	check("10.4.0.1", int(q4))
	check("10.5.0.1", 0) // no group
	if got := runSteer(t, s, steerPacket(a("10.3.0.77"), 6)); got != 0 {
		t.Errorf("a non-IPv4 packet went to queue %d, want 0", got)
	}
	if got := runSteer(t, s, make([]byte, 14+10)); got != 0 {
		t.Errorf("a runt packet went to queue %d, want 0", got)
	}

	// 10.3.0.0/24 goes, 10.6.0.0/24 comes: it takes the freed queue, and
	// the others keep theirs.
	if err := s.set(prefixes("10.2.0.0/16", "10.2.5.0/24", "10.6.0.0/24", "10.4.0.0/24")); err != nil {
		t.Fatal(err)
	}
	check("10.2.5.9", int(q2))
	check("10.4.0.1", int(q4))
	check("10.6.0.1", int(q3))
	check("10.3.0.77", 0)
	// A prefix that swallows a group: the merged group is one entry.
	if err := s.set(prefixes("10.2.0.0/16", "10.4.0.0/24", "10.6.0.0/15")); err != nil {
		t.Fatal(err)
	}
	if len(s.group) != 3 {
		t.Fatalf("groups %v, want 3", s.group)
	}
	q6 := s.group[keyOf(netip.MustParsePrefix("10.6.0.0/15"))]
	check("10.6.0.1", int(q6))
	check("10.7.0.1", int(q6))
	if err := s.set(nil); err != nil {
		t.Fatal(err)
	}
	check("10.2.5.9", 0)
	if len(s.group) != 0 || slices.Max(s.load) != 0 {
		t.Fatalf("after removing all: groups %v, load %v", s.group, s.load)
	}
}

// TestTUNQueuesSteered sends many UDP flows from a namespace through a
// two-queue TUN and reads both queues: every packet arrives on the queue
// its destination's group has, all flows to one group on one queue
// whatever their ports (the kernel's own choice hashes each flow), and
// both queues are used.
func TestTUNQueuesSteered(t *testing.T) {
	testutil.NeedRoot(t)
	const ns = "gnio-tq"
	nettest.NewNS(t, ns)
	var tn *TUN
	nettest.MustDo(t, ns, func() (err error) {
		tn, err = OpenTUN(TUNConfig{Name: "gnio-tq0", MTU: 1400, Queues: 2,
			Addrs: []netip.Prefix{netip.MustParsePrefix("10.232.0.1/24")}})
		return err
	})
	defer tn.Close()
	if tn.Queues() != 2 {
		t.Fatalf("Queues() = %d (%v), want 2", tn.Queues(), tn.SteerErr())
	}
	nettest.MustExec(t, ns, "ip", "route", "add", "10.233.0.0/16", "dev", "gnio-tq0")
	groups := prefixes("10.233.1.0/24", "10.233.2.0/24", "10.233.2.128/25")
	if err := tn.Steer(groups); err != nil {
		t.Fatal(err)
	}
	d1, d2 := netip.MustParseAddr("10.233.1.5"), netip.MustParseAddr("10.233.2.200")
	steered := map[netip.Addr]int{d1: tn.QueueOf(d1), d2: tn.QueueOf(d2)}
	if steered[d1] == steered[d2] {
		t.Fatalf("both groups on queue %d", steered[d1])
	}

	var mu sync.Mutex
	got := map[int]map[netip.Addr]int{0: {}, 1: {}}
	var wg sync.WaitGroup
	for i := 0; i < tn.Queues(); i++ {
		q := tn.Queue(i)
		wg.Add(1)
		go func() {
			defer wg.Done()
			bufs := make([][]byte, q.BatchSize())
			for k := range bufs {
				bufs[k] = make([]byte, Headroom+65536)
			}
			sizes := make([]int, len(bufs))
			for {
				n, err := q.Read(bufs, sizes, Headroom)
				if err != nil {
					return
				}
				mu.Lock()
				for k := 0; k < n; k++ {
					dst := netip.AddrFrom4([4]byte(bufs[k][Headroom+16 : Headroom+20]))
					got[i][dst]++
				}
				mu.Unlock()
			}
		}()
	}
	const flows = 16
	nettest.MustDo(t, ns, func() error {
		for _, dst := range []netip.Addr{d1, d2} {
			for f := 0; f < flows; f++ {
				c, err := net.DialUDP("udp4", &net.UDPAddr{IP: net.IPv4(10, 232, 0, 1), Port: 20000 + f}, net.UDPAddrFromAddrPort(netip.AddrPortFrom(dst, uint16(30000+f))))
				if err != nil {
					return err
				}
				for k := 0; k < 4; k++ {
					if _, err := c.Write([]byte(fmt.Sprintf("flow %d packet %d", f, k))); err != nil {
						c.Close()
						return err
					}
				}
				c.Close()
			}
		}
		return nil
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		mu.Lock()
		total := 0
		for _, m := range got {
			for _, n := range m {
				total += n
			}
		}
		mu.Unlock()
		if total >= 2*flows*4 || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	tn.Close()
	wg.Wait()
	t.Logf("read per queue: %v; steered: %v", got, steered)
	for _, dst := range []netip.Addr{d1, d2} {
		want := steered[dst]
		if n := got[want][dst]; n != flows*4 {
			t.Errorf("queue %d read %d packets to %v, want %d", want, n, dst, flows*4)
		}
		if n := got[1-want][dst]; n != 0 {
			t.Errorf("queue %d read %d packets to %v, which is steered to queue %d", 1-want, n, dst, want)
		}
	}
}

// TestTUNQueuesWithoutEBPF: when the steering program cannot be loaded,
// a device asked for two queues has one (never unsteered queues), says
// why, and works.
func TestTUNQueuesWithoutEBPF(t *testing.T) {
	testutil.NeedRoot(t)
	defer func(f func(int) (*steering, error)) { loadSteering = f }(loadSteering)
	loadSteering = func(int) (*steering, error) { return nil, errors.New("eBPF refused (test)") }
	const ns = "gnio-tqn"
	nettest.NewNS(t, ns)
	var tn *TUN
	nettest.MustDo(t, ns, func() (err error) {
		tn, err = OpenTUN(TUNConfig{Name: "gnio-tqn0", MTU: 1400, Queues: 2,
			Addrs: []netip.Prefix{netip.MustParsePrefix("10.234.0.1/24")}})
		return err
	})
	defer tn.Close()
	if tn.Queues() != 1 || tn.SteerErr() == nil {
		t.Fatalf("Queues() = %d, SteerErr() = %v; want 1 and the reason", tn.Queues(), tn.SteerErr())
	}
	if err := tn.Steer(prefixes("10.235.0.0/24")); err != nil {
		t.Fatalf("Steer on a one-queue device: %v", err)
	}
	nettest.MustExec(t, ns, "ip", "route", "add", "10.235.0.0/24", "dev", "gnio-tqn0")
	nettest.MustDo(t, ns, func() error {
		c, err := net.Dial("udp4", "10.235.0.9:9")
		if err != nil {
			return err
		}
		defer c.Close()
		_, err = c.Write([]byte("one queue"))
		return err
	})
	bufs := make([][]byte, tn.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, Headroom+65536)
	}
	sizes := make([]int, len(bufs))
	deadline := time.AfterFunc(5*time.Second, func() { tn.Close() })
	defer deadline.Stop()
	n, err := tn.Queue(0).Read(bufs, sizes, Headroom)
	if err != nil || n != 1 || netip.AddrFrom4([4]byte(bufs[0][Headroom+16:Headroom+20])) != netip.MustParseAddr("10.235.0.9") {
		t.Fatalf("read %d packets, %v", n, err)
	}
}
