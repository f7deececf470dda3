package netio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
	"golang.org/x/sys/unix"
)

// icmpUnreach counts ICMP dest-unreachable/protocol-unreachable messages
// quoting protocol proto that a raw ICMP socket receives within d.
func icmpUnreach(t *testing.T, c *RawConn, d time.Duration) map[int]int {
	t.Helper()
	got := map[int]int{}
	timer := time.AfterFunc(d, func() { c.Close() })
	defer timer.Stop()
	ms := make([]Msg, 8)
	for i := range ms {
		ms[i].Buf = make([]byte, 1500)
	}
	for {
		n, err := c.Recv(ms)
		if err != nil {
			return got
		}
		for _, m := range ms[:n] {
			b := m.Buf[:m.N]
			hl := int(b[0]&0xf) * 4
			if len(b) >= hl+8+20 && b[hl] == 3 && b[hl+1] == 2 {
				got[int(b[hl+8+9])]++
			}
		}
	}
}

func TestFilterICMPProtoUnreachable(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gnio-fi", netip.MustParsePrefix("10.231.15.0/24"))
	var tx *RawConn
	nettest.MustDo(t, p.A.NS, func() (err error) { tx, err = ListenRaw(RawConfig{Proto: 253}); return err })
	defer tx.Close()
	send := func(protos ...uint8) {
		var ms []Msg
		for _, pr := range protos {
			b := make([]byte, 40)
			iphdr.PutIPv4(b, &iphdr.Outer{Src: p.AAddr.As4(), Dst: p.BAddr.As4(), ID: 77}, pr, 40)
			binary.BigEndian.PutUint32(b[20:], 0x1234)
			ms = append(ms, Msg{Buf: b})
		}
		if _, err := tx.Send(ms); err != nil {
			t.Fatal(err)
		}
	}
	listen := func() *RawConn {
		var c *RawConn
		nettest.MustDo(t, p.A.NS, func() (err error) { c, err = ListenRaw(RawConfig{Proto: unix.IPPROTO_ICMP}); return err })
		return c
	}
	// Without the filter, B's kernel (no ESP/AH, nobody listening) answers
	// every protocol with ICMP protocol-unreachable. The kernel rate-limits
	// ICMP errors (icmp_ratelimit, per destination), so send one each.
	nettest.MustExec(t, p.B.NS, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/icmp_ratelimit")
	c := listen()
	send(iphdr.ProtoESP, iphdr.ProtoAH, 253)
	before := icmpUnreach(t, c, 500*time.Millisecond)
	if before[iphdr.ProtoESP] != 1 || before[iphdr.ProtoAH] != 1 || before[253] != 1 {
		t.Fatalf("without filter: unreachables by quoted protocol %v, want one each for 50, 51, 253", before)
	}
	var f *Filter
	nettest.MustDo(t, p.B.NS, func() (err error) { f, err = NewFilter(FilterConfig{TUN: "gnio-none"}); return err })
	c = listen()
	send(iphdr.ProtoESP, iphdr.ProtoAH, 253)
	after := icmpUnreach(t, c, 500*time.Millisecond)
	if after[iphdr.ProtoESP] != 0 || after[iphdr.ProtoAH] != 0 || after[253] != 1 {
		t.Fatalf("with filter: unreachables %v, want none for 50/51 and one for 253", after)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if out := nettest.MustExec(t, p.B.NS, "nft", "list", "tables"); strings.Contains(out, "gosec") {
		t.Errorf("table left after Close: %s", out)
	}
}

func TestFilterCleartext(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gnio-fc", netip.MustParsePrefix("10.231.16.0/24"))
	var tn *TUN
	var udp *net.UDPConn
	nettest.MustDo(t, p.A.NS, func() (err error) {
		tn, err = OpenTUN(TUNConfig{Name: "gnio-fctun", MTU: 1400, Addrs: []netip.Prefix{netip.MustParsePrefix("10.231.17.1/24")}})
		if err != nil {
			return err
		}
		udp, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 7000})
		return err
	})
	defer tn.Close()
	defer udp.Close()
	// A stale table from a "crashed" daemon with a rule that drops all.
	nettest.MustExec(t, p.A.NS, "nft", "add table inet gnio-f; add chain inet gnio-f c { type filter hook prerouting priority 0; policy drop; }")
	var f *Filter
	nettest.MustDo(t, p.A.NS, func() (err error) {
		f, err = NewFilter(FilterConfig{Table: "gnio-f", TUN: "gnio-fctun"})
		return err
	})
	defer f.Close()
	if out := nettest.MustExec(t, p.A.NS, "nft", "list", "table", "inet", "gnio-f"); strings.Contains(out, "policy drop") {
		t.Fatalf("stale table not replaced:\n%s", out)
	}
	if err := f.AddConn("peer", []netip.Prefix{netip.PrefixFrom(p.BAddr, 32)}); err != nil {
		t.Fatal(err)
	}
	if err := f.AddConn("other", []netip.Prefix{netip.MustParsePrefix("10.231.200.0/24")}); err != nil {
		t.Fatal(err)
	}
	t.Log(nettest.MustExec(t, p.A.NS, "nft", "list", "table", "inet", "gnio-f"))

	received := func() []string {
		var got []string
		buf := make([]byte, 100)
		udp.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			n, _, err := udp.ReadFromUDPAddrPort(buf)
			if err != nil {
				return got
			}
			got = append(got, string(buf[:n]))
		}
	}
	// Cleartext from B over the veth: a hand-built UDP packet (checksum 0,
	// allowed for IPv4) from a raw socket in B.
	var braw *RawConn
	nettest.MustDo(t, p.B.NS, func() (err error) { braw, err = ListenRaw(RawConfig{Proto: 253}); return err })
	defer braw.Close()
	udpPkt := func(dst netip.Addr, port uint16, msg string) []byte {
		b := make([]byte, 28+len(msg))
		iphdr.PutIPv4(b, &iphdr.Outer{Src: p.BAddr.As4(), Dst: dst.As4(), ID: 5}, iphdr.ProtoUDP, len(b))
		binary.BigEndian.PutUint16(b[20:], 40000)
		binary.BigEndian.PutUint16(b[22:], port)
		binary.BigEndian.PutUint16(b[24:], uint16(8+len(msg)))
		copy(b[28:], msg)
		return b
	}
	if _, err := braw.Send([]Msg{{Buf: udpPkt(p.AAddr, 7000, "veth")}}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, Headroom+200)
	n := copy(buf[Headroom:], udpPkt(netip.MustParseAddr("10.231.17.1"), 7000, "tun"))
	if _, err := tn.Write([][]byte{buf[:Headroom+n]}, Headroom); err != nil {
		t.Fatal(err)
	}
	if got := received(); len(got) != 1 || got[0] != "tun" {
		t.Fatalf("with conn filter: received %q, want only the packet through the TUN", got)
	}
	if d, err := f.Dropped("peer"); err != nil || d != 1 {
		t.Errorf("Dropped(peer) = %d, %v; want 1", d, err)
	}
	if all, err := f.Counts(); err != nil || all["peer"].Dropped != 1 {
		t.Errorf("Counts() = %v, %v; want peer's Dropped 1", all, err)
	}
	if err := f.RemoveConn("peer"); err != nil {
		t.Fatal(err)
	}
	if _, err := braw.Send([]Msg{{Buf: udpPkt(p.AAddr, 7000, "veth2")}}); err != nil {
		t.Fatal(err)
	}
	if got := received(); len(got) != 1 || got[0] != "veth2" {
		t.Fatalf("after RemoveConn: received %q, want the cleartext packet", got)
	}
	out := nettest.MustExec(t, p.A.NS, "nft", "list", "table", "inet", "gnio-f")
	if !strings.Contains(out, "10.231.200.0/24") || strings.Contains(out, p.BAddr.String()) {
		t.Errorf("after RemoveConn(peer) the table is:\n%s", out)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	nettest.MustDo(t, p.A.NS, func() error { return RemoveFilterTable("gnio-f") })
	if out := nettest.MustExec(t, p.A.NS, "nft", "list", "tables"); strings.Contains(out, "gnio-f") {
		t.Errorf("table left after Close: %s", out)
	}
}

// TestFilterGuard checks the outbound guard: cleartext to a protected
// prefix that does not leave through the TUN is dropped and counted, the
// daemon's marked packets pass, and the guard survives a "crash" (a table
// left behind) into the next daemon's table for the conns it keeps.
func TestFilterGuard(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gnio-fg", netip.MustParsePrefix("10.231.18.0/24"))
	const mark = 0x77
	var rx *net.UDPConn
	nettest.MustDo(t, p.B.NS, func() (err error) {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 7001})
		return err
	})
	defer rx.Close()
	// send sends one datagram from A to B, with SO_MARK m when non-zero,
	// and reports whether B received it.
	send := func(m uint32, msg string) bool {
		t.Helper()
		nettest.MustDo(t, p.A.NS, func() error {
			c, err := ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), 0), Mark: m})
			if err != nil {
				return err
			}
			defer c.Close()
			// A drop in the output path answers the local sender EPERM.
			if _, err = c.Send([]Msg{{Buf: []byte(msg), To: netip.AddrPortFrom(p.BAddr, 7001)}}); errors.Is(err, unix.EPERM) {
				err = nil
			}
			return err
		})
		buf := make([]byte, 100)
		rx.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			n, _, err := rx.ReadFromUDPAddrPort(buf)
			if err != nil {
				return false
			}
			if string(buf[:n]) == msg {
				return true
			}
		}
	}
	peer := []netip.Prefix{netip.PrefixFrom(p.BAddr, 32)}
	newFilter := func(cfg FilterConfig) *Filter {
		t.Helper()
		cfg.Table, cfg.TUN, cfg.Mark = "gnio-g", "gnio-gdtun", mark
		var f *Filter
		nettest.MustDo(t, p.A.NS, func() (err error) { f, err = NewFilter(cfg); return err })
		return f
	}
	f := newFilter(FilterConfig{})
	if !send(0, "before") {
		t.Fatal("no guard yet, but the datagram did not arrive")
	}
	if err := f.AddConn("peer", peer); err != nil {
		t.Fatal(err)
	}
	if send(0, "guarded") {
		t.Fatal("cleartext to a protected prefix left through the veth")
	}
	if n, err := f.Guarded("peer"); err != nil || n != 1 {
		t.Errorf("Guarded(peer) = %d, %v; want 1", n, err)
	}
	if all, err := f.Counts(); err != nil || all["peer"].Guarded != 1 {
		t.Errorf("Counts() = %v, %v; want peer's Guarded 1", all, err)
	}
	if !send(mark, "marked") {
		t.Error("the daemon's marked packet was dropped by the guard")
	}
	// A crash: the table stays. The next daemon keeps the conn's guard.
	f.crash()
	f2 := newFilter(FilterConfig{KeepStale: func(c string) bool { return c == "peer" }})
	if got := f2.Kept(); len(got["peer"]) != 1 || got["peer"][0] != peer[0] {
		t.Errorf("Kept() = %v, want peer: %v", got, peer)
	}
	if send(0, "after restart") {
		t.Fatal("cleartext left after the restart: the stale guard was not kept")
	}
	// Taking the conn down lifts it.
	if err := f2.RemoveConn("peer"); err != nil {
		t.Fatal(err)
	}
	if !send(0, "down") {
		t.Fatal("guard still dropping after RemoveConn")
	}
	// Initial guards are in place from the first transaction; a stale
	// guard of a conn the daemon does not keep is gone.
	if err := f2.AddConn("peer", peer); err != nil {
		t.Fatal(err)
	}
	f2.crash()
	f3 := newFilter(FilterConfig{KeepStale: func(string) bool { return false }})
	if !send(0, "not kept") {
		t.Fatal("a stale guard the daemon did not keep still drops")
	}
	f3.crash()
	f4 := newFilter(FilterConfig{Guards: map[string][]netip.Prefix{"routed": peer}})
	if send(0, "initial") {
		t.Fatal("initial guard missing")
	}
	_ = f3
	if err := f4.Close(); err != nil {
		t.Fatal(err)
	}
	if !send(0, "closed") {
		t.Fatal("guard left after Close")
	}
}

// TestFilterAddConns: AddConns writes many conns in a few transactions
// with the same result as AddConn one by one: every conn's inbound drops
// and guard, a conn written again (or kept from a crashed daemon) with
// its old rules replaced, not doubled, and a bad conn refused alone.
func TestFilterAddConns(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "hs-fac", netip.MustParsePrefix("10.231.19.0/24"))
	var rx *net.UDPConn
	nettest.MustDo(t, p.B.NS, func() (err error) {
		rx, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 7002})
		return err
	})
	defer rx.Close()
	send := func(msg string) bool {
		t.Helper()
		nettest.MustDo(t, p.A.NS, func() error {
			c, err := ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), 0)})
			if err != nil {
				return err
			}
			defer c.Close()
			if _, err = c.Send([]Msg{{Buf: []byte(msg), To: netip.AddrPortFrom(p.BAddr, 7002)}}); errors.Is(err, unix.EPERM) {
				err = nil
			}
			return err
		})
		buf := make([]byte, 100)
		rx.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
		for {
			n, _, err := rx.ReadFromUDPAddrPort(buf)
			if err != nil {
				return false
			}
			if string(buf[:n]) == msg {
				return true
			}
		}
	}
	newFilter := func(cfg FilterConfig) *Filter {
		t.Helper()
		cfg.Table, cfg.TUN, cfg.Mark = "hs-fac", "hs-factun", 0x77
		var f *Filter
		nettest.MustDo(t, p.A.NS, func() (err error) { f, err = NewFilter(cfg); return err })
		return f
	}
	peer := netip.PrefixFrom(p.BAddr, 32)
	const n = 2*addConnsChunk + 500 // several transactions
	conns := []ConnPrefixes{{Name: "peer", Remotes: []netip.Prefix{peer}}}
	for i := 1; i < n; i++ {
		conns = append(conns, ConnPrefixes{Name: fmt.Sprintf("c%d", i),
			Remotes: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 200, byte(i >> 6), byte(i << 2)}), 30)}})
	}
	check := func(f *Filter, what string) {
		t.Helper()
		st := readFilterSets(t, f)
		for _, cp := range conns {
			if got := st.owners[cp.Name]; !slices.Equal(got, uniquePrefixes(cp.Remotes)) {
				t.Fatalf("%s: conn %s has guards %v in guard-conns, want %v", what, cp.Name, got, cp.Remotes)
			}
			if e := f.conns[cp.Name]; e == nil || !e.inbound {
				t.Fatalf("%s: conn %s has no inbound entry: %+v", what, cp.Name, e)
			}
		}
		if len(st.owners) != len(conns) || len(f.conns) != len(conns) {
			t.Fatalf("%s: guards of %d conns, %d entries; want %d", what, len(st.owners), len(f.conns), len(conns))
		}
		st.matchModel(t, f, what)
	}

	f := newFilter(FilterConfig{})
	if !send("before") {
		t.Fatal("no guard yet, but the datagram did not arrive")
	}
	if errs := f.AddConns(conns); errs != nil {
		t.Fatal(errs)
	}
	check(f, "first write")
	if send("guarded") {
		t.Fatal("cleartext to a protected prefix left after AddConns")
	}
	// Written again, one conn with a second prefix: replaced, not doubled.
	conns[1].Remotes = append(conns[1].Remotes, netip.MustParsePrefix("10.201.0.0/24"))
	if errs := f.AddConns(conns); errs != nil {
		t.Fatal(errs)
	}
	check(f, "second write")
	if send("guarded again") {
		t.Fatal("cleartext to a protected prefix left after AddConns replaced the rules")
	}
	// A crash: the next daemon keeps peer's guard and writes the conns.
	f.crash()
	f2 := newFilter(FilterConfig{KeepStale: func(c string) bool { return c == "peer" }})
	if send("after restart") {
		t.Fatal("cleartext left after the restart")
	}
	bad := ConnPrefixes{Name: "v6", Remotes: []netip.Prefix{netip.MustParsePrefix("2001:db8::/64")}}
	errs := f2.AddConns(append(conns, bad))
	if len(errs) != 1 || errs["v6"] == nil {
		t.Fatalf("AddConns with one IPv6 conn: errors %v, want one for v6", errs)
	}
	check(f2, "after restart")
	if len(f2.Kept()) != 0 {
		t.Errorf("Kept() = %v after peer was written again, want none", f2.Kept())
	}
	if send("restarted and written") {
		t.Fatal("cleartext left after the kept guard was replaced")
	}
	if f.chunkRetries != 0 || f2.chunkRetries != 0 {
		t.Errorf("%d and %d batches were refused and retried conn by conn", f.chunkRetries, f2.chunkRetries)
	}
	if err := f2.RemoveConn("peer"); err != nil {
		t.Fatal(err)
	}
	if !send("down") {
		t.Fatal("guard still dropping after RemoveConn")
	}
	if err := f2.Close(); err != nil {
		t.Fatal(err)
	}
}

// filterSets is what the kernel's sets of a Filter hold.
type filterSets struct {
	protected, guarded []span
	owners             map[string][]netip.Prefix
}

// readFilterSets lists f's sets in the kernel.
func readFilterSets(t *testing.T, f *Filter) filterSets {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	spans := func(s *nftables.Set) []span {
		elems, err := f.sess.c.GetSetElements(s)
		if err != nil {
			t.Fatal(err)
		}
		slices.SortFunc(elems, func(a, b nftables.SetElement) int {
			if c := strings.Compare(string(a.Key), string(b.Key)); c != 0 {
				return c
			}
			// An end before a start at the same address (adjacent).
			if a.IntervalEnd == b.IntervalEnd {
				return 0
			} else if a.IntervalEnd {
				return -1
			}
			return 1
		})
		var out []span
		for i, e := range elems {
			if e.IntervalEnd {
				continue
			}
			s := span{lo: binary.BigEndian.Uint32(e.Key), hi: ^uint32(0)}
			if i+1 < len(elems) && elems[i+1].IntervalEnd {
				s.hi = binary.BigEndian.Uint32(elems[i+1].Key) - 1
			}
			out = append(out, s)
		}
		return out
	}
	st := filterSets{protected: spans(f.protected), guarded: spans(f.guarded), owners: map[string][]netip.Prefix{}}
	elems, err := f.sess.c.GetSetElements(f.guardConns)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range elems {
		name, p, ok := decodeGuardConn(e)
		if !ok {
			t.Fatalf("guard-conns element %x %q unreadable", e.Key, e.Comment)
		}
		st.owners[name] = append(st.owners[name], p)
	}
	for name := range st.owners {
		st.owners[name] = uniquePrefixes(st.owners[name])
	}
	return st
}

// matchModel checks that the kernel's sets hold what f's model says.
func (st filterSets) matchModel(t *testing.T, f *Filter, what string) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if !slices.Equal(st.protected, f.in.spans) && len(st.protected)+len(f.in.spans) > 0 {
		t.Fatalf("%s: the kernel's protected set holds %d spans, the model %d", what, len(st.protected), len(f.in.spans))
	}
	if !slices.Equal(st.guarded, f.out.spans) && len(st.guarded)+len(f.out.spans) > 0 {
		t.Fatalf("%s: the kernel's guarded set holds %d spans, the model %d", what, len(st.guarded), len(f.out.spans))
	}
}

// guardProbe sends UDP datagrams from p.A to addr:port on p.B (a listener
// there) and reports whether they arrived: the guard in A decides.
type guardProbe struct {
	t  *testing.T
	p  *nettest.Pair
	rx *net.UDPConn
}

func newGuardProbe(t *testing.T, p *nettest.Pair, port int) *guardProbe {
	g := &guardProbe{t: t, p: p}
	nettest.MustDo(t, p.B.NS, func() (err error) {
		g.rx, err = net.ListenUDP("udp4", &net.UDPAddr{Port: port})
		return err
	})
	t.Cleanup(func() { g.rx.Close() })
	return g
}

func (g *guardProbe) send(msg string) bool {
	g.t.Helper()
	nettest.MustDo(g.t, g.p.A.NS, func() error {
		c, err := ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), 0)})
		if err != nil {
			return err
		}
		defer c.Close()
		to := netip.AddrPortFrom(g.p.BAddr, uint16(g.rx.LocalAddr().(*net.UDPAddr).Port))
		if _, err = c.Send([]Msg{{Buf: []byte(msg), To: to}}); errors.Is(err, unix.EPERM) {
			err = nil // the guard's drop, answered to the local sender
		}
		return err
	})
	buf := make([]byte, 100)
	g.rx.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	for {
		n, _, err := g.rx.ReadFromUDPAddrPort(buf)
		if err != nil {
			return false
		}
		if string(buf[:n]) == msg {
			return true
		}
	}
}

// TestFilterSharedPrefixes: conns whose prefixes are equal or nested
// share the set's elements; removing one never lifts what another still
// protects, and each conn's counters count the packets to any address it
// protects, without going back when the elements are cut anew.
func TestFilterSharedPrefixes(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gns-fs", netip.MustParsePrefix("10.231.20.0/24"))
	g := newGuardProbe(t, p, 7003)
	var f *Filter
	nettest.MustDo(t, p.A.NS, func() (err error) { f, err = NewFilter(FilterConfig{Table: "gns-fs", TUN: "gns-fstun"}); return err })
	defer f.Close()
	host := netip.PrefixFrom(p.BAddr, 32)
	subnet := netip.MustParsePrefix("10.231.20.0/24")
	wide := netip.MustParsePrefix("10.231.0.0/16")
	steps := []struct {
		what   string
		do     func() error
		passes bool
		counts map[string]uint64 // Guarded, cumulative
	}{
		{"no conn", func() error { return nil }, true, map[string]uint64{}},
		{"host", func() error { return f.AddConn("host", []netip.Prefix{host}) }, false,
			map[string]uint64{"host": 1}},
		{"same host", func() error { return f.AddConn("same", []netip.Prefix{host}) }, false,
			map[string]uint64{"host": 2, "same": 1}},
		{"subnet around it", func() error { return f.AddConn("subnet", []netip.Prefix{subnet}) }, false,
			map[string]uint64{"host": 3, "same": 2, "subnet": 1}},
		{"host removed", func() error { return f.RemoveConn("host") }, false,
			map[string]uint64{"same": 3, "subnet": 2}},
		{"wider one with two prefixes", func() error { return f.AddConn("wide", []netip.Prefix{wide, subnet}) }, false,
			map[string]uint64{"same": 4, "subnet": 3, "wide": 1}},
		{"subnet removed", func() error { return f.RemoveConn("subnet") }, false,
			map[string]uint64{"same": 5, "wide": 2}},
		{"same removed", func() error { return f.RemoveConn("same") }, false,
			map[string]uint64{"wide": 3}},
		{"wide rewritten without the host", func() error { return f.AddConn("wide", []netip.Prefix{netip.MustParsePrefix("10.232.0.0/16")}) }, true,
			map[string]uint64{"wide": 3}},
	}
	for i, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		if got := g.send(fmt.Sprintf("probe %d", i)); got != s.passes {
			t.Fatalf("%s: the datagram arrived: %v, want %v\n%s", s.what, got, s.passes,
				nettest.MustExec(t, p.A.NS, "nft", "list", "table", "inet", "gns-fs"))
		}
		all, err := f.Counts()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]uint64{}
		for name, fc := range all {
			got[name] = fc.Guarded
		}
		if !maps.Equal(got, s.counts) {
			t.Errorf("%s: Guarded by conn %v, want %v", s.what, got, s.counts)
		}
		readFilterSets(t, f).matchModel(t, f, s.what)
		// The single-element get (banking) reads what the listing does.
		f.mu.Lock()
		listed, err := setCounters(f.sess.c, f.guarded)
		if err != nil {
			t.Fatal(err)
		}
		got2, err := f.get.counters(f.table.Name, guardedSet, slices.Sorted(maps.Keys(listed)))
		f.mu.Unlock()
		if err != nil || !maps.Equal(got2, listed) {
			t.Errorf("%s: element get %v, %v; the listing %v", s.what, got2, err, listed)
		}
	}
}

// TestFilterInboundCounts: the inbound drops count by conn too, a packet
// from an address two conns protect for both.
func TestFilterInboundCounts(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gns-fi", netip.MustParsePrefix("10.231.21.0/24"))
	var udp *net.UDPConn
	nettest.MustDo(t, p.A.NS, func() (err error) {
		udp, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 7004})
		return err
	})
	defer udp.Close()
	var f *Filter
	nettest.MustDo(t, p.A.NS, func() (err error) { f, err = NewFilter(FilterConfig{Table: "gns-fi", TUN: "gns-fitun"}); return err })
	defer f.Close()
	if errs := f.AddConns([]ConnPrefixes{
		{Name: "host", Remotes: []netip.Prefix{netip.PrefixFrom(p.BAddr, 32)}},
		{Name: "subnet", Remotes: []netip.Prefix{netip.MustParsePrefix("10.231.21.0/24")}},
		{Name: "other", Remotes: []netip.Prefix{netip.MustParsePrefix("10.231.22.0/24")}},
	}); errs != nil {
		t.Fatal(errs)
	}
	nettest.MustDo(t, p.B.NS, func() error {
		c, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: p.AAddr.AsSlice(), Port: 7004})
		if err != nil {
			return err
		}
		defer c.Close()
		for range 3 {
			if _, err := c.Write([]byte("clear")); err != nil {
				return err
			}
		}
		return nil
	})
	udp.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
	if n, _, err := udp.ReadFromUDPAddrPort(make([]byte, 100)); err == nil {
		t.Fatalf("cleartext from a protected address arrived (%d octets)", n)
	}
	all, err := f.Counts()
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]FilterCounts{"host": {Dropped: 3}, "subnet": {Dropped: 3}, "other": {}}
	if !maps.Equal(all, want) {
		t.Errorf("Counts() = %v, want %v", all, want)
	}
	if d, err := f.Dropped("subnet"); err != nil || d != 3 {
		t.Errorf("Dropped(subnet) = %d, %v; want 3", d, err)
	}
}

// TestFilterInitialGuardsRecorded: a conn guarded from the start (Guards)
// and then written (AddConn) has its prefixes once, and rewriting it with
// other prefixes lifts the initial ones; a queued change that is thrown
// away (discardQueued) never reaches the kernel.
// crash closes f's socket and nothing else, as the death of its process
// would: the table stays (persistent), unowned.
func (f *Filter) crash() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sess.close()
	f.sess = nil
}

func TestFilterInitialGuardsRecorded(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gns-fr", netip.MustParsePrefix("10.231.23.0/24"))
	g := newGuardProbe(t, p, 7005)
	host := netip.PrefixFrom(p.BAddr, 32)
	var f *Filter
	nettest.MustDo(t, p.A.NS, func() (err error) {
		f, err = NewFilter(FilterConfig{Table: "gns-fr", TUN: "gns-frtun", Guards: map[string][]netip.Prefix{"routed": {host}}})
		return err
	})
	defer f.Close()
	if g.send("initial") {
		t.Fatal("the initial guard is missing")
	}
	st := readFilterSets(t, f)
	if len(st.protected) != 0 || len(st.guarded) != 1 || !slices.Equal(st.owners["routed"], []netip.Prefix{host}) {
		t.Fatalf("initial sets: %+v", st)
	}
	if err := f.AddConn("routed", []netip.Prefix{host}); err != nil {
		t.Fatal(err)
	}
	st = readFilterSets(t, f)
	if len(st.protected) != 1 || len(st.guarded) != 1 || !slices.Equal(st.owners["routed"], []netip.Prefix{host}) {
		t.Fatalf("after AddConn: %+v", st)
	}
	other := netip.MustParsePrefix("10.231.99.0/24")
	if err := f.AddConn("routed", []netip.Prefix{other}); err != nil {
		t.Fatal(err)
	}
	if !g.send("rewritten") {
		t.Fatal("the conn's old prefix is still guarded after it was rewritten")
	}
	st = readFilterSets(t, f)
	if !slices.Equal(st.owners["routed"], []netip.Prefix{other}) {
		t.Fatalf("after the rewrite guard-conns holds %v", st.owners)
	}
	// Thrown away: a guard queued and discarded is not in the kernel,
	// not even after the next transaction.
	f.mu.Lock()
	if err := f.sess.c.SetAddElements(f.guarded, spanElems([]span{prefixSpan(host)})); err != nil {
		t.Fatal(err)
	}
	discardQueued(f.sess.c)
	f.mu.Unlock()
	if err := f.AddConn("another", []netip.Prefix{netip.MustParsePrefix("10.231.98.0/24")}); err != nil {
		t.Fatal(err)
	}
	if !g.send("discarded") {
		t.Fatal("a discarded guard reached the kernel")
	}
	readFilterSets(t, f).matchModel(t, f, "after discard")
}

// TestFilterCarryOverProcess: a daemon that exits without Close (kill -9)
// leaves its table; the next one keeps the guards of the conns it wants,
// from the guard-conns set, and writing such a conn again replaces its
// kept guard without doubling it.
func TestFilterCarryOverProcess(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gns-fk", netip.MustParsePrefix("10.231.24.0/24"))
	g := newGuardProbe(t, p, 7006)
	host := netip.PrefixFrom(p.BAddr, 32)
	// The child process writes the conns and kills itself.
	cmd := exec.Command("ip", "netns", "exec", p.A.NS, os.Args[0], "-test.run", "^TestFilterCarryOverProcess$")
	cmd.Env = append(os.Environ(), "GOSEC_TEST_FILTER_CRASH="+host.String())
	out, err := cmd.CombinedOutput()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("child: %v, want killed by SIGKILL: %s", err, out)
	}
	if g.send("after the crash") {
		t.Fatal("cleartext left after the daemon died")
	}
	var f *Filter
	nettest.MustDo(t, p.A.NS, func() (err error) {
		f, err = NewFilter(FilterConfig{Table: "gns-fk", TUN: "gns-fktun", KeepStale: func(c string) bool { return c != "dropped" }})
		return err
	})
	defer f.Close()
	kept := f.Kept()
	want := map[string][]netip.Prefix{"peer": {host}, "subnets": {netip.MustParsePrefix("10.9.0.0/16"), netip.MustParsePrefix("10.9.1.0/24")}}
	if !maps.EqualFunc(kept, want, func(a, b []netip.Prefix) bool { return slices.Equal(uniquePrefixes(a), b) }) {
		t.Fatalf("Kept() = %v, want %v", kept, want)
	}
	if g.send("restarted") {
		t.Fatal("cleartext left after the restart: the stale guard was not kept")
	}
	if err := f.AddConn("peer", []netip.Prefix{host}); err != nil {
		t.Fatal(err)
	}
	st := readFilterSets(t, f)
	if !slices.Equal(st.owners["peer"], []netip.Prefix{host}) || len(st.owners) != 2 {
		t.Fatalf("after AddConn of a kept conn guard-conns holds %v", st.owners)
	}
	if _, ok := f.Kept()["peer"]; ok {
		t.Error("peer still reported kept after it was written")
	}
	if err := f.RemoveConn("peer"); err != nil {
		t.Fatal(err)
	}
	if !g.send("removed") {
		t.Fatal("guard still dropping after RemoveConn")
	}
}

// filterCrashChild is the child of TestFilterCarryOverProcess: it runs
// in the test's namespace, writes three conns and dies by SIGKILL.
func filterCrashChild(host string) {
	f, err := NewFilter(FilterConfig{Table: "gns-fk", TUN: "gns-fktun"})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	if errs := f.AddConns([]ConnPrefixes{
		{Name: "peer", Remotes: []netip.Prefix{netip.MustParsePrefix(host)}},
		{Name: "subnets", Remotes: []netip.Prefix{netip.MustParsePrefix("10.9.0.0/16"), netip.MustParsePrefix("10.9.1.0/24")}},
		{Name: "dropped", Remotes: []netip.Prefix{netip.MustParsePrefix("10.8.0.0/16")}},
	}); errs != nil {
		fmt.Fprintln(os.Stderr, errs)
		os.Exit(2)
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	select {}
}
