package netio

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// openRing opens, in ns, a receive ring for proto and the raw socket that
// holds proto without receiving (as the daemon does).
func openRing(t testing.TB, ns string, protos ...int) *RxRing {
	t.Helper()
	var r *RxRing
	var raws []*RawConn
	nettest.MustDo(t, ns, func() (err error) {
		if r, err = ListenRing(RingConfig{Protos: protos, Size: 1 << 20}); err != nil {
			return err
		}
		for _, p := range protos {
			raw, err := ListenRaw(RawConfig{Proto: p, NoRecv: true})
			if err != nil {
				return err
			}
			raws = append(raws, raw)
		}
		return nil
	})
	t.Cleanup(func() {
		for _, raw := range raws {
			raw.Close()
		}
		r.Close()
	})
	return r
}

// ringRecvN reads from r until want packets arrived or timeout passed
// (then it closes r and fails).
func ringRecvN(t *testing.T, r *RxRing, want, batch int, timeout time.Duration) []Msg {
	t.Helper()
	timer := time.AfterFunc(timeout, func() { r.Close() })
	defer timer.Stop()
	ms := recvMsgs(batch, 65536)
	var got []Msg
	for len(got) < want {
		n, err := r.Recv(ms)
		if err != nil {
			t.Fatalf("after %d of %d packets: %v", len(got), want, err)
		}
		if n == 0 || n > batch {
			t.Fatalf("Recv returned %d for a batch of %d", n, batch)
		}
		for _, m := range ms[:n] {
			c := m
			c.Buf = append([]byte(nil), m.Buf[:m.N]...)
			got = append(got, c)
		}
	}
	return got
}

// numbered returns an IPv4 packet of proto from src to dst of size octets
// with i at offset 24 and a pattern after it.
func numbered(src, dst netip.Addr, proto uint8, i, size int) []byte {
	b := make([]byte, size)
	iphdr.PutIPv4(b, &iphdr.Outer{Src: src.As4(), Dst: dst.As4(), ID: uint16(i + 1)}, proto, size)
	binary.BigEndian.PutUint32(b[20:], 0x100)
	binary.BigEndian.PutUint32(b[24:], uint32(i))
	for j := 28; j < size; j++ {
		b[j] = byte(i + j)
	}
	return b
}

// TestRingOrderAndBatch: packets of many sizes (from below Ethernet's
// minimum frame, which pads them, to a full MTU), ESP and AH mixed, arrive
// whole, in order, in batches no larger than asked; another protocol does
// not arrive.
func TestRingOrderAndBatch(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "grx-o", netip.MustParsePrefix("10.231.170.0/24"))
	r := openRing(t, p.B.NS, iphdr.ProtoESP, iphdr.ProtoAH)
	var tx *RawConn
	nettest.MustDo(t, p.A.NS, func() (err error) {
		tx, err = ListenRaw(RawConfig{Proto: 253, Buffer: 1 << 20})
		return err
	})
	defer tx.Close()
	const count = 300
	var ms []Msg
	var want [][]byte
	for i := 0; i < count; i++ {
		proto := uint8(iphdr.ProtoESP)
		if i%5 == 3 {
			proto = iphdr.ProtoAH
		}
		b := numbered(p.AAddr, p.BAddr, proto, i, 28+(i*37)%1473)
		ms = append(ms, Msg{Buf: b})
		want = append(want, b)
		if i%50 == 7 {
			ms = append(ms, Msg{Buf: numbered(p.AAddr, p.BAddr, 253, 1000+i, 100)})
		}
	}
	if n, err := tx.Send(ms); err != nil || n != len(ms) {
		t.Fatalf("send: %d of %d, %v", n, len(ms), err)
	}
	got := ringRecvN(t, r, count, 7, 5*time.Second)
	for k, m := range got {
		w := want[k]
		if m.N != len(w) || m.Trunc || m.From != netip.AddrPortFrom(p.AAddr, 0) {
			t.Fatalf("packet %d: N %d (want %d) trunc %v from %v", k, m.N, len(w), m.Trunc, m.From)
		}
		if i := binary.BigEndian.Uint32(m.Buf[24:]); int(i) != k {
			t.Fatalf("packet %d arrived as number %d", k, i)
		}
		if m.Buf[iphdr.OffProtocol] != w[iphdr.OffProtocol] {
			t.Fatalf("packet %d: protocol %d, want %d", k, m.Buf[iphdr.OffProtocol], w[iphdr.OffProtocol])
		}
		for j := 28; j < len(w); j++ {
			if m.Buf[j] != w[j] {
				t.Fatalf("packet %d: payload differs at %d", k, j)
			}
		}
	}
	if st := r.Stats(); st.Packets != count || st.NotLocal != 0 || st.BadHeader != 0 || st.KernelDrops != 0 {
		t.Errorf("ring stats %+v", st)
	}
}

// TestRingSkipsWhatIPWouldNot: a packet with a bad header checksum (sent
// through AF_PACKET, the raw socket would fix it) and ESP to an address
// that is not B's (B is its next hop) are skipped and counted; an address
// added to B after the ring opened is received.
func TestRingSkipsWhatIPWouldNot(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "grx-s", netip.MustParsePrefix("10.231.171.0/24"))
	r := openRing(t, p.B.NS, iphdr.ProtoESP)
	aIdx, aMAC := linkInfo(t, p.A.NS, p.A.Name)
	_, bMAC := linkInfo(t, p.B.NS, p.B.Name)
	var fd int
	nettest.MustDo(t, p.A.NS, func() error { fd = benchPacketSock(t, false); return nil })
	tx := newPktSender(fd, aIdx, aMAC, bMAC)
	elsewhere := netip.MustParseAddr("10.231.172.9")
	added := netip.MustParseAddr("10.231.173.2")

	bad := numbered(p.AAddr, p.BAddr, iphdr.ProtoESP, 1, 100)
	bad[iphdr.OffChecksum] ^= 0x5a
	out := []Msg{
		{Buf: bad},
		{Buf: numbered(p.AAddr, elsewhere, iphdr.ProtoESP, 2, 100)},
		{Buf: numbered(p.AAddr, p.BAddr, iphdr.ProtoESP, 3, 100)},
	}
	if n, err := tx.send(out); err != nil || n != len(out) {
		t.Fatalf("send: %d %v", n, err)
	}
	got := ringRecvN(t, r, 1, 8, 3*time.Second)
	if i := binary.BigEndian.Uint32(got[0].Buf[24:]); i != 3 {
		t.Fatalf("first packet passed is number %d, want 3", i)
	}
	if st := r.Stats(); st.BadHeader != 1 || st.NotLocal != 1 || st.Packets != 1 {
		t.Errorf("stats %+v, want 1 bad header, 1 not local, 1 passed", st)
	}

	nettest.MustExec(t, p.B.NS, "ip", "addr", "add", added.String()+"/32", "dev", p.B.Name)
	deadline := time.Now().Add(3 * time.Second)
	for !r.local.has(added.As4()) {
		if time.Now().After(deadline) {
			t.Fatalf("%v added to B is not in the ring's local set", added)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := tx.send([]Msg{{Buf: numbered(p.AAddr, added, iphdr.ProtoESP, 4, 100)}}); err != nil {
		t.Fatal(err)
	}
	got = ringRecvN(t, r, 1, 8, 3*time.Second)
	if i := binary.BigEndian.Uint32(got[0].Buf[24:]); i != 4 {
		t.Fatalf("packet to the added address: number %d", i)
	}
	nettest.MustExec(t, p.B.NS, "ip", "addr", "del", added.String()+"/32", "dev", p.B.Name)
	deadline = time.Now().Add(3 * time.Second)
	for r.local.has(added.As4()) {
		if time.Now().After(deadline) {
			t.Fatalf("%v removed from B is still in the ring's local set", added)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// fragments splits the IPv4 packet pkt (20-octet header) into fragments
// with at most size octets of payload each (a multiple of 8).
func fragments(pkt []byte, size int) [][]byte {
	var out [][]byte
	payload := pkt[20:]
	for off := 0; off < len(payload); off += size {
		end := min(off+size, len(payload))
		f := make([]byte, 20+end-off)
		copy(f, pkt[:20])
		copy(f[20:], payload[off:end])
		binary.BigEndian.PutUint16(f[iphdr.OffTotalLen:], uint16(len(f)))
		ff := uint16(off / 8)
		if end < len(payload) {
			ff |= 0x2000 // MF
		}
		binary.BigEndian.PutUint16(f[iphdr.OffFlagsFrag:], ff)
		iphdr.SetChecksum(f[:20])
		out = append(out, f)
	}
	return out
}

// TestRingFragmentsReassembled: ESP and AH that arrive in fragments are
// reassembled by the fanout group before the ring takes them, including
// packets larger than a ring frame (read from the socket queue) and
// fragments sent last-first.
func TestRingFragmentsReassembled(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "grx-f", netip.MustParsePrefix("10.231.174.0/24"))
	r := openRing(t, p.B.NS, iphdr.ProtoESP, iphdr.ProtoAH)
	var tx *RawConn
	nettest.MustDo(t, p.A.NS, func() (err error) {
		tx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP, Buffer: 1 << 20})
		return err
	})
	defer tx.Close()
	sizes := []int{1400, 3000, 9000, 200, 3000}
	var want [][]byte
	for i, size := range sizes {
		proto := uint8(iphdr.ProtoESP)
		if i == 4 {
			proto = iphdr.ProtoAH
		}
		pkt := numbered(p.AAddr, p.BAddr, proto, i, size)
		want = append(want, pkt)
		frags := fragments(pkt, 1200)
		if i == 3 {
			frags = fragments(pkt, 64)
			for a, b := 0, len(frags)-1; a < b; a, b = a+1, b-1 {
				frags[a], frags[b] = frags[b], frags[a]
			}
		}
		var ms []Msg
		for _, f := range frags {
			ms = append(ms, Msg{Buf: f})
		}
		if n, err := tx.Send(ms); err != nil || n != len(ms) {
			t.Fatalf("packet %d: sent %d of %d fragments: %v", i, n, len(ms), err)
		}
		// One at a time: reassembly order is completion order.
		got := ringRecvN(t, r, 1, 4, 3*time.Second)
		m := got[0]
		if m.N != size || m.Trunc {
			t.Fatalf("packet %d (%d octets in %d fragments): N %d trunc %v", i, size, len(frags), m.N, m.Trunc)
		}
		if ff := binary.BigEndian.Uint16(m.Buf[iphdr.OffFlagsFrag:]); ff&0x3fff != 0 {
			t.Errorf("packet %d: flags/offset %#x after reassembly", i, ff)
		}
		if iphdr.Checksum(m.Buf[:20]) != 0 {
			t.Errorf("packet %d: header checksum", i)
		}
		for j := 20; j < size; j++ {
			if m.Buf[j] != pkt[j] {
				t.Fatalf("packet %d: differs at %d", i, j)
			}
		}
	}
	if st := r.Stats(); st.Copied != 3 || st.Truncated != 0 {
		t.Errorf("stats %+v: want the 3000 and 9000-octet packets copied from the socket queue", st)
	}
	// A buffer smaller than the packet: Trunc, N capped, as RawConn.
	if _, err := tx.Send([]Msg{{Buf: numbered(p.AAddr, p.BAddr, iphdr.ProtoESP, 9, 300)}}); err != nil {
		t.Fatal(err)
	}
	small := []Msg{{Buf: make([]byte, 64)}}
	if n, err := r.Recv(small); err != nil || n != 1 || !small[0].Trunc || small[0].N != 64 {
		t.Fatalf("short buffer: n=%d err=%v trunc=%v N=%d", n, err, small[0].Trunc, small[0].N)
	}
}

// TestRingCloseUnblocks: Close ends a blocked Recv with ErrClosed, and
// Recv after Close fails at once.
func TestRingCloseUnblocks(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "grx-c", netip.MustParsePrefix("10.231.175.0/24"))
	r := openRing(t, p.B.NS, iphdr.ProtoESP)
	errc := make(chan error, 1)
	go func() {
		_, err := r.Recv(recvMsgs(4, 2048))
		errc <- err
	}()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-errc:
		t.Fatalf("Recv returned before Close: %v", err)
	default:
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, ErrClosed) {
			t.Errorf("blocked Recv: %v, want ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock Recv")
	}
	if _, err := r.Recv(recvMsgs(1, 100)); !errors.Is(err, ErrClosed) {
		t.Errorf("Recv after Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestRingICMPProtoUnreachable: with the ring receiving and the raw socket
// holding the protocol with its drop-all filter (and no nftables table),
// the kernel answers ESP with no ICMP protocol-unreachable, while it still
// answers a protocol nobody holds.
func TestRingICMPProtoUnreachable(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "grx-i", netip.MustParsePrefix("10.231.176.0/24"))
	r := openRing(t, p.B.NS, iphdr.ProtoESP)
	nettest.MustExec(t, p.B.NS, "sh", "-c", "echo 0 > /proc/sys/net/ipv4/icmp_ratelimit")
	var tx, icmp *RawConn
	nettest.MustDo(t, p.A.NS, func() (err error) {
		if tx, err = ListenRaw(RawConfig{Proto: 253}); err != nil {
			return err
		}
		icmp, err = ListenRaw(RawConfig{Proto: 1})
		return err
	})
	defer tx.Close()
	var ms []Msg
	for _, pr := range []uint8{iphdr.ProtoESP, 253, iphdr.ProtoESP} {
		ms = append(ms, Msg{Buf: numbered(p.AAddr, p.BAddr, pr, len(ms), 60)})
	}
	if _, err := tx.Send(ms); err != nil {
		t.Fatal(err)
	}
	got := ringRecvN(t, r, 2, 4, 3*time.Second)
	if len(got) != 2 || got[0].Buf[iphdr.OffProtocol] != iphdr.ProtoESP {
		t.Fatalf("ring got %d packets", len(got))
	}
	un := icmpUnreach(t, icmp, 500*time.Millisecond)
	if un[iphdr.ProtoESP] != 0 || un[253] != 1 {
		t.Fatalf("unreachables by quoted protocol %v, want none for 50 and one for 253", un)
	}
}

// TestRingAllocs: no allocation per batch in steady state.
func TestRingAllocs(t *testing.T) {
	testutil.NeedRoot(t)
	if testutil.RaceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	p := nettest.NewPair(t, "grx-a", netip.MustParsePrefix("10.231.177.0/24"))
	r := openRing(t, p.B.NS, iphdr.ProtoESP)
	var tx *RawConn
	nettest.MustDo(t, p.A.NS, func() (err error) {
		tx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP, Buffer: 1 << 20})
		return err
	})
	defer tx.Close()
	out := espPackets(p, 32, 1400)
	in := recvMsgs(16, 4096)
	allocs := testing.AllocsPerRun(50, func() {
		if _, err := tx.Send(out); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < 32; {
			n, err := r.Recv(in)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Errorf("%v allocs per 32-packet receive", allocs)
	}
}
