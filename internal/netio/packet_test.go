package netio

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gosec-ipsec/gosec/internal/clock"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// fakeResolver answers from a table and counts calls per destination.
type fakeResolver struct {
	mu    sync.Mutex
	hops  map[netip.Addr]*hop
	stale map[netip.Addr]bool
	calls map[netip.Addr]int
}

func (f *fakeResolver) resolve(d netip.Addr) (*hop, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[d]++
	h, ok := f.hops[d]
	if !ok {
		return nil, false, errNoHop
	}
	c := &hop{ifindex: h.ifindex, eth: h.eth, mtu: h.mtu, ok: true}
	return c, f.stale[d], nil
}

func TestNextHops(t *testing.T) {
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	res := &fakeResolver{hops: map[netip.Addr]*hop{a: {ifindex: 7, mtu: 1500}, b: {ifindex: 8, mtu: 1400}},
		stale: map[netip.Addr]bool{b: true}, calls: map[netip.Addr]int{}}
	clk := clock.NewFake(time.Unix(1000, 0))
	n := newNextHops(res, clk, time.Second)

	for _, d := range []netip.Addr{a, b, c} {
		if h := n.lookup(d); h != nil {
			t.Fatalf("%v: hop before any refresh", d)
		}
	}
	n.update()
	if h := n.lookup(a); h == nil || h.ifindex != 7 {
		t.Fatalf("a: got %+v after refresh", h)
	}
	// b's neighbour is stale: exactly one packet per round takes the raw
	// socket so the kernel re-verifies it.
	if h := n.lookup(b); h != nil {
		t.Fatal("b: first packet of a stale neighbour should go to the raw socket")
	}
	if h := n.lookup(b); h == nil || h.ifindex != 8 {
		t.Fatalf("b: second packet: %+v", h)
	}
	// c has no hop: negative entry, no new miss per packet.
	for i := 0; i < 3; i++ {
		if n.lookup(c) != nil {
			t.Fatal("c: unresolvable destination got a hop")
		}
	}
	n.mu.Lock()
	if len(n.wanted) != 0 {
		t.Errorf("negative entry still queues misses: %v", n.wanted)
	}
	n.mu.Unlock()

	// Next round: a and b were used and are refreshed; c too (retry).
	// The round after that, only what was used since survives.
	n.update()
	n.lookup(a)
	n.update()
	tab := *n.tab.Load()
	if _, ok := tab[a]; !ok {
		t.Error("a used, but dropped")
	}
	if _, ok := tab[b]; ok {
		t.Error("b unused for a round, but kept")
	}
	res.mu.Lock()
	if res.calls[a] != 3 || res.calls[c] != 2 {
		t.Errorf("resolver calls: %v", res.calls)
	}
	res.mu.Unlock()
}

// TestNextHopsTimer shows the refresh runs on the injected clock.
func TestNextHopsTimer(t *testing.T) {
	a := netip.MustParseAddr("192.0.2.1")
	res := &fakeResolver{hops: map[netip.Addr]*hop{a: {ifindex: 7, mtu: 1500}}, calls: map[netip.Addr]int{}}
	clk := clock.NewFake(time.Unix(1000, 0))
	n := newNextHops(res, clk, 5*time.Second)
	n.start()
	defer n.stop()
	n.lookup(a) // miss: wakes the refresher at once
	waitFor(t, func() bool { return n.lookup(a) != nil })
	calls := func() int { res.mu.Lock(); defer res.mu.Unlock(); return res.calls[a] }
	before := calls()
	clk.Advance(5 * time.Second)
	waitFor(t, func() bool { return calls() > before })
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 5 s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestPacketConnSend sends ESP through a PacketConn to a destination that
// only the firewall mark routes (via a gateway): the first packets take the
// raw socket (cache miss, kernel resolves ARP), later ones AF_PACKET; what
// arrives is the packet as built with the header fixed as the kernel would.
// Cleartext and oversized packets keep the raw socket's behaviour.
func TestPacketConnSend(t *testing.T) {
	testutil.NeedRoot(t)
	p, marked := markedPair(t, "grg-pk", 64)
	var rx, rx17 *RawConn
	nettest.MustDo(t, p.B.NS, func() (err error) {
		if rx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP, Buffer: 1 << 20}); err != nil {
			return err
		}
		rx17, err = ListenRaw(RawConfig{Proto: 253})
		return err
	})
	defer rx.Close()
	defer rx17.Close()
	var tx *PacketConn
	nettest.MustDo(t, p.A.NS, func() (err error) {
		tx, err = ListenPacket(PacketConfig{RawConfig: RawConfig{Proto: iphdr.ProtoESP, Mark: testMark}, Refresh: 50 * time.Millisecond})
		return err
	})
	defer tx.Close()

	build := func(i int, df bool, id uint16) Msg {
		b := make([]byte, 200)
		iphdr.PutIPv4(b, &iphdr.Outer{Src: p.AAddr.As4(), Dst: marked.As4(), ID: id, DF: df}, iphdr.ProtoESP, 200)
		binary.BigEndian.PutUint32(b[20:], 0x1234)
		binary.BigEndian.PutUint32(b[24:], uint32(i))
		b[2], b[3] = 0, 0 // wrong total length and checksum: fixed on the way out
		return Msg{Buf: b}
	}
	// First packet: miss, raw socket; the kernel resolves the gateway.
	if _, err := tx.Send([]Msg{build(0, true, 1)}); err != nil {
		t.Fatal(err)
	}
	recvN(t, rx, 1, 2*time.Second)
	if s := tx.Stats(); s.Raw != 1 || s.Packet != 0 {
		t.Fatalf("first packet: %+v", s)
	}
	waitFor(t, func() bool { return tx.hops.lookup(marked) != nil })

	ms := make([]Msg, 40)
	for i := range ms {
		ms[i] = build(i+1, i%2 == 0, uint16(100+i))
	}
	ms[5] = build(6, false, 0) // ID 0 without DF: an ID is chosen
	if n, err := tx.Send(ms); n != len(ms) || err != nil {
		t.Fatalf("Send: %d, %v", n, err)
	}
	got := recvN(t, rx, len(ms), 2*time.Second)
	if s := tx.Stats(); s.Packet != uint64(len(ms)) {
		t.Errorf("stats after the batch: %+v, want %d through AF_PACKET", s, len(ms))
	}
	for i, g := range got {
		if len(g) != 200 || binary.BigEndian.Uint16(g[2:]) != 200 || iphdr.Checksum(g[:20]) != 0 {
			t.Fatalf("packet %d: length %d, total %d, checksum bad %v", i, len(g), binary.BigEndian.Uint16(g[2:]), iphdr.Checksum(g[:20]) != 0)
		}
		if seq := binary.BigEndian.Uint32(g[24:]); seq != uint32(i+1) {
			t.Fatalf("packet %d: seq %d (order)", i, seq)
		}
		if !bytes.Equal(g[20:], ms[i].Buf[20:]) || g[8] != 64 && g[8] != 63 {
			t.Fatalf("packet %d: payload or TTL changed", i)
		}
		if id := binary.BigEndian.Uint16(g[4:]); i == 5 && id == 0 || i != 5 && id != uint16(100+i) {
			t.Errorf("packet %d: IP ID %d", i, id)
		}
	}

	if !testutil.RaceEnabled {
		batch := ms[:32]
		in := recvMsgs(64, 2048)
		allocs := testing.AllocsPerRun(20, func() {
			if _, err := tx.Send(batch); err != nil {
				t.Fatal(err)
			}
			for got := 0; got < len(batch); {
				n, err := rx.Recv(in)
				if err != nil {
					t.Fatal(err)
				}
				got += n
			}
		})
		if allocs != 0 {
			t.Errorf("%v allocs per 32-packet AF_PACKET send", allocs)
		}
	}

	// A stale neighbour's probe: exactly one packet of the batch (the
	// first) takes the raw socket, the rest AF_PACKET, all in order.
	before := tx.Stats()
	(*tx.hops.tab.Load())[marked].probe.Store(true)
	if n, err := tx.Send(ms[:10]); n != 10 || err != nil {
		t.Fatalf("Send with probe: %d, %v", n, err)
	}
	for i, g := range recvN(t, rx, 10, 2*time.Second) {
		if seq := binary.BigEndian.Uint32(g[24:]); seq != uint32(i+1) {
			t.Fatalf("probe batch: packet %d has seq %d", i, seq)
		}
	}
	if s := tx.Stats(); s.Raw != before.Raw+1 || s.Packet != before.Packet+9 {
		t.Errorf("probe batch: stats %+v then %+v, want 1 raw and 9 AF_PACKET", before, s)
	}

	// Cleartext (protocol 253) goes through the raw socket.
	c := build(0, true, 9)
	c.Buf[9] = 253
	before = tx.Stats()
	if _, err := tx.Send([]Msg{c}); err != nil {
		t.Fatal(err)
	}
	recvN(t, rx17, 1, 2*time.Second)
	if s := tx.Stats(); s.Raw != before.Raw+1 {
		t.Errorf("cleartext: %+v then %+v", before, s)
	}
	// Larger than the MTU: the raw socket refuses it with EMSGSIZE.
	big := make([]byte, 1600)
	iphdr.PutIPv4(big, &iphdr.Outer{Src: p.AAddr.As4(), Dst: marked.As4(), ID: 5, DF: true}, iphdr.ProtoESP, 1600)
	if n, err := tx.Send([]Msg{{Buf: big}, build(99, true, 7)}); n != 0 || !errors.Is(err, syscall.EMSGSIZE) {
		t.Errorf("oversized: %d, %v", n, err)
	}
}

// TestPacketConnTxRing: the TX ring sends every frame once and in order,
// also around the ring's end, and hands over to sendmmsg (which then
// carries the socket's virtio_net_hdr too) for a packet larger than a
// slot and for the rest of a run when the ring is full; a send the kernel
// refuses (the link down) gives every slot back, and the ring goes on
// after it.
func TestPacketConnTxRing(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "grg-tx", netip.MustParsePrefix("10.231.90.0/24"))
	for _, e := range []nettest.End{p.A, p.B} {
		nettest.MustExec(t, e.NS, "ip", "link", "set", e.Name, "mtu", "2100")
	}
	var rx *RawConn
	nettest.MustDo(t, p.B.NS, func() (err error) {
		rx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP, Buffer: 8 << 20})
		return err
	})
	defer rx.Close()
	var tx *PacketConn
	nettest.MustDo(t, p.A.NS, func() (err error) {
		tx, err = ListenPacket(PacketConfig{RawConfig: RawConfig{Proto: iphdr.ProtoESP}, Refresh: 50 * time.Millisecond})
		return err
	})
	defer tx.Close()
	if !tx.TxRing() {
		t.Fatal("no TX ring")
	}
	seq := uint32(0)
	batch := func(n, size int) []Msg {
		ms := make([]Msg, n)
		for i := range ms {
			seq++
			b := make([]byte, size)
			iphdr.PutIPv4(b, &iphdr.Outer{Src: p.AAddr.As4(), Dst: p.BAddr.As4(), ID: uint16(seq), DF: true}, iphdr.ProtoESP, size)
			binary.BigEndian.PutUint32(b[20:], 0x77)
			binary.BigEndian.PutUint32(b[24:], seq)
			for j := 28; j < size; j++ {
				b[j] = byte(seq) + byte(j)
			}
			ms[i] = Msg{Buf: b}
		}
		return ms
	}
	// expect: rx's next packets are ms, whole and in order; with
	// skipOlder, packets sent before them and not read yet are passed
	// over (otherwise one is a duplicate or late, and fails).
	var pending [][]byte
	skipOlder := false
	expect := func(what string, ms []Msg) {
		t.Helper()
		first := binary.BigEndian.Uint32(ms[0].Buf[24:])
		for i := 0; i < len(ms); {
			if len(pending) == 0 {
				pending = recvN(t, rx, 1, 3*time.Second)
			}
			g := pending[0]
			pending = pending[1:]
			if skipOlder && binary.BigEndian.Uint32(g[24:]) < first {
				continue
			}
			want := ms[i].Buf
			if len(g) != len(want) || !bytes.Equal(g[20:], want[20:]) {
				t.Logf("stats %+v", tx.Stats())
				t.Fatalf("%s: packet %d: %d octets (seq %d), want %d (seq %d)", what, i, len(g),
					binary.BigEndian.Uint32(g[24:]), len(want), binary.BigEndian.Uint32(want[24:]))
			}
			i++
		}
	}
	// send sends ms from one CPU: veth queues what a CPU sends on that
	// CPU's backlog, so should a backlog's processing be put off, the
	// system calls of one Send made from two CPUs could arrive out of
	// order whatever Send does (a precaution; not seen here).
	send := func(what string, ms []Msg) {
		t.Helper()
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		var old, one unix.CPUSet
		if err := unix.SchedGetaffinity(0, &old); err != nil {
			t.Fatal(err)
		}
		for c := range 1024 {
			if old.IsSet(c) {
				one.Set(c)
				break
			}
		}
		if err := unix.SchedSetaffinity(0, &one); err != nil {
			t.Fatal(err)
		}
		defer unix.SchedSetaffinity(0, &old)
		if n, err := tx.Send(ms); n != len(ms) || err != nil {
			t.Fatalf("%s: Send: %d of %d, %v", what, n, len(ms), err)
		}
	}
	// The first through the raw socket: the kernel resolves B.
	first := batch(1, 200)
	send("first", first)
	expect("first", first)
	waitFor(t, func() bool { return tx.hops.lookup(p.BAddr) != nil })

	// Around the ring's end several times, in batches.
	before := tx.Stats()
	var all []Msg
	for range 2*txFrames/MaxBatch + 3 {
		ms := batch(MaxBatch, 1400)
		send("around the ring", ms)
		all = append(all, ms...)
		expect("around the ring", ms)
	}
	if s := tx.Stats(); s.Packet-before.Packet != uint64(len(all)) || s.Raw != before.Raw {
		t.Fatalf("around the ring: stats %+v then %+v, want %d through AF_PACKET", before, s, len(all))
	}
	tx.mu.Lock()
	cur := tx.tx.cur
	tx.mu.Unlock()
	if want := (len(all)) % txFrames; cur != want {
		t.Fatalf("around the ring: the ring's cursor at %d, want %d", cur, want)
	}

	// Larger than a slot (the link's MTU allows it): through sendmmsg,
	// between two through the ring.
	ms := append(append(batch(1, 300), batch(1, 2000)...), batch(1, 310)...)
	send("larger than a slot", ms)
	expect("larger than a slot", ms)
	tx.mu.Lock()
	moved := (tx.tx.cur - cur + txFrames) % txFrames
	cur = tx.tx.cur
	tx.mu.Unlock()
	if moved != 2 {
		t.Fatalf("larger than a slot: %d slots used, want 2", moved)
	}

	// The ring full five slots on: the rest of the run through sendmmsg.
	held := (cur + 5) % txFrames
	atomic.StoreUint32(tx.tx.status(held), 2) // TP_STATUS_SENDING: still the kernel's
	ms = batch(20, 1000)
	send("ring full", ms)
	expect("ring full", ms)
	tx.mu.Lock()
	moved = (tx.tx.cur - cur + txFrames) % txFrames
	tx.mu.Unlock()
	atomic.StoreUint32(tx.tx.status(held), tpStatusAvailable)
	if moved != 5 {
		t.Fatalf("ring full: %d slots used, want 5", moved)
	}

	// The link down: refused, every slot given back, nothing left marked.
	nettest.MustExec(t, p.A.NS, "ip", "link", "set", p.A.Name, "down")
	if n, err := tx.Send(batch(10, 500)); err == nil {
		t.Fatalf("link down: Send: %d, no error", n)
	}
	tx.mu.Lock()
	for i := range txFrames {
		if s := atomic.LoadUint32(tx.tx.status(i)); s == tpStatusSendRequest || s == tpStatusWrongFormat {
			tx.mu.Unlock()
			t.Fatalf("link down: slot %d left with status %d", i, s)
		}
	}
	tx.mu.Unlock()
	nettest.MustExec(t, p.A.NS, "ip", "link", "set", p.A.Name, "up")
	waitFor(t, func() bool {
		_, _ = tx.Send(batch(1, 200)) // through the raw socket: the kernel resolves B again
		time.Sleep(20 * time.Millisecond)
		return tx.hops.lookup(p.BAddr) != nil
	})
	// Those the recovery sent through the raw socket are passed over.
	skipOlder = true
	ms = batch(MaxBatch, 1400)
	send("after the link came back", ms)
	expect("after the link came back", ms)
}
