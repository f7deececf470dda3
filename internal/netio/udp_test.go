package netio

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

func TestClassify(t *testing.T) {
	for _, tc := range []struct {
		name string
		b    []byte
		want Kind
	}{
		{"keepalive", []byte{0xff}, KindKeepalive},
		{"one other byte", []byte{0x00}, KindInvalid},
		{"empty", nil, KindInvalid},
		{"two bytes", []byte{0xff, 0xff}, KindInvalid},
		{"marker only", []byte{0, 0, 0, 0}, KindInvalid},
		{"ike", []byte{0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8}, KindIKE},
		{"esp minimal", []byte{0, 0, 1, 0, 0, 0, 0, 1}, KindESP},
		{"esp short", []byte{0, 0, 1, 0, 0, 0, 1}, KindInvalid},
		{"esp", append([]byte{0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 1}, make([]byte, 40)...), KindESP},
	} {
		if got := Classify(tc.b); got != tc.want {
			t.Errorf("%s: Classify(% x) = %v, want %v", tc.name, tc.b, got, tc.want)
		}
	}
}

func FuzzClassify(f *testing.F) {
	f.Add([]byte{0xff}, uint16(0))
	f.Add([]byte{0, 0, 0, 0, 1}, uint16(3))
	f.Add([]byte{1, 2, 3, 4, 5, 6, 7, 8, 9}, uint16(4))
	f.Fuzz(func(t *testing.T, b []byte, seg uint16) {
		k := Classify(b)
		if k == KindIKE && len(b) <= NonESPMarker {
			t.Fatal("IKE without payload")
		}
		total := 0
		Segments(b, int(seg), func(p []byte) bool { total += len(p); return true })
		if total != len(b) {
			t.Fatalf("segments cover %d of %d bytes", total, len(b))
		}
		_, _ = parseControl(b)
	})
}

func TestSegments(t *testing.T) {
	for _, tc := range []struct {
		n, seg int
		want   []int
	}{{10, 0, []int{10}}, {10, 4, []int{4, 4, 2}}, {8, 4, []int{4, 4}}, {3, 4, []int{3}}, {0, 4, []int{0}}} {
		var got []int
		Segments(make([]byte, tc.n), tc.seg, func(p []byte) bool { got = append(got, len(p)); return true })
		if len(got) != len(tc.want) {
			t.Errorf("Segments(%d, %d) = %v, want %v", tc.n, tc.seg, got, tc.want)
			continue
		}
		for i := range got {
			if got[i] != tc.want[i] {
				t.Errorf("Segments(%d, %d) = %v, want %v", tc.n, tc.seg, got, tc.want)
			}
		}
	}
}

func espDatagram(spi, seq uint32, size int) []byte {
	b := make([]byte, size)
	binary.BigEndian.PutUint32(b, spi)
	binary.BigEndian.PutUint32(b[4:], seq)
	for i := 8; i < size; i++ {
		b[i] = byte(seq) ^ byte(i)
	}
	return b
}

func TestNATTDemux(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gnio-u", netip.MustParsePrefix("10.231.10.0/24"))
	for _, gro := range []bool{false, true} {
		name := map[bool]string{false: "plain", true: "gro"}[gro]
		t.Run(name, func(t *testing.T) {
			var rx, tx *UDPConn
			nettest.MustDo(t, p.B.NS, func() (err error) {
				rx, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(p.BAddr, 4500), GRO: gro, Buffer: 4 << 20})
				return err
			})
			defer rx.Close()
			nettest.MustDo(t, p.A.NS, func() (err error) {
				tx, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(p.AAddr, 4500), Mark: testMark})
				return err
			})
			defer tx.Close()
			var mu sync.Mutex
			var ikeGot [][]byte
			d := &NATT{Conn: rx, IKE: func(msg []byte, from, to netip.AddrPort) {
				mu.Lock()
				defer mu.Unlock()
				if from != tx.LocalAddr() {
					t.Errorf("IKE from %v, want %v", from, tx.LocalAddr())
				}
				if to.IsValid() {
					t.Errorf("IKE to %v without RecvDst, want the zero value", to)
				}
				ikeGot = append(ikeGot, append([]byte(nil), msg...))
			}}
			to := rx.LocalAddr()
			ike := []byte("isakmp message: 28 bytes...")
			var ms []Msg
			ms = append(ms, Msg{Buf: []byte{0xff}, To: to})
			ms = append(ms, Msg{Buf: append([]byte{0, 0, 0, 0}, ike...), To: to})
			ms = append(ms, Msg{Buf: []byte{0, 0, 0, 0}, To: to})    // invalid
			ms = append(ms, Msg{Buf: []byte{1, 2, 3, 4, 5}, To: to}) // invalid: short ESP
			const plain = 20
			for i := 0; i < plain; i++ {
				ms = append(ms, Msg{Buf: espDatagram(0x100, uint32(i), 100+i), To: to})
			}
			// One GSO message: 30 ESP datagrams of 1000 bytes, last 500.
			const gsoN, seg = 30, 1000
			var big []byte
			for i := 0; i < gsoN; i++ {
				size := seg
				if i == gsoN-1 {
					size = 500
				}
				big = append(big, espDatagram(0x200, uint32(i), size)...)
			}
			ms = append(ms, Msg{Buf: big, To: to, GSOSize: seg})
			if n, err := tx.Send(ms); err != nil || n != len(ms) {
				t.Fatalf("sent %d of %d: %v", n, len(ms), err)
			}
			timer := time.AfterFunc(5*time.Second, func() { rx.Close() })
			defer timer.Stop()
			rms := make([]Msg, 16)
			for i := range rms {
				rms[i].Buf = make([]byte, 65536)
			}
			out := make([]Packet, 16*64)
			seen := map[uint32]int{}
			for len(seen) < plain+gsoN {
				n, err := d.ReadESP(rms, out)
				if err != nil {
					t.Fatalf("after %d ESP packets: %v", len(seen), err)
				}
				for _, pk := range out[:n] {
					spi := binary.BigEndian.Uint32(pk.B)
					seq := binary.BigEndian.Uint32(pk.B[4:])
					want := 100 + int(seq)
					if spi == 0x200 {
						want = seg
						if seq == gsoN-1 {
							want = 500
						}
					}
					if !bytes.Equal(pk.B, espDatagram(spi, seq, want)) {
						t.Fatalf("ESP spi %#x seq %d: %d bytes, content differs", spi, seq, len(pk.B))
					}
					seen[spi<<16|seq]++
				}
			}
			// The control datagrams were sent first; by now they are in.
			if d.Keepalives.Load() != 1 || d.IKEMsgs.Load() != 1 || d.Invalid.Load() != 2 || d.Overflow.Load() != 0 {
				t.Errorf("counters: keepalive %d ike %d invalid %d overflow %d, want 1 1 2 0",
					d.Keepalives.Load(), d.IKEMsgs.Load(), d.Invalid.Load(), d.Overflow.Load())
			}
			mu.Lock()
			if len(ikeGot) != 1 || !bytes.Equal(ikeGot[0], ike) {
				t.Errorf("IKE callback got %q, want %q without marker", ikeGot, ike)
			}
			mu.Unlock()
			t.Logf("%s: coalesced receive buffers: %d", name, d.GROBuffers.Load())
			if gro != (d.GROBuffers.Load() > 0) {
				t.Errorf("GRO %v but %d coalesced buffers", gro, d.GROBuffers.Load())
			}
		})
	}
}

func TestNATTWriteIKEAndListenIKE(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gnio-i", netip.MustParsePrefix("10.231.11.0/24"))
	var rx *UDPConn
	nettest.MustDo(t, p.B.NS, func() (err error) {
		rx, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(p.BAddr, 0)})
		return err
	})
	defer rx.Close()
	var tx *UDPConn
	nettest.MustDo(t, p.A.NS, func() (err error) {
		tx, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(p.AAddr, 0)})
		return err
	})
	defer tx.Close()
	d := &NATT{Conn: tx}
	if err := d.WriteIKE([]byte("hello"), rx.LocalAddr()); err != nil {
		t.Fatal(err)
	}
	ms := []Msg{{Buf: make([]byte, 100)}}
	timer := time.AfterFunc(5*time.Second, func() { rx.Close() })
	defer timer.Stop()
	if n, err := rx.Recv(ms); err != nil || n != 1 {
		t.Fatalf("recv: %d %v", n, err)
	}
	if got := ms[0].Buf[:ms[0].N]; !bytes.Equal(got, []byte{0, 0, 0, 0, 'h', 'e', 'l', 'l', 'o'}) {
		t.Fatalf("WriteIKE sent % x", got)
	}
	nettest.MustDo(t, p.A.NS, func() error {
		c, err := ListenIKE(context.Background(), netip.AddrPortFrom(p.AAddr, 500), testMark)
		if err != nil {
			return err
		}
		defer c.Close()
		if _, err := c.WriteToUDPAddrPort([]byte("ike"), rx.LocalAddr()); err != nil {
			return err
		}
		return nil
	})
	if n, err := rx.Recv(ms); err != nil || n != 1 || string(ms[0].Buf[:ms[0].N]) != "ike" || ms[0].From.Port() != 500 {
		t.Fatalf("from ListenIKE socket: %d %v %q from %v", n, err, ms[0].Buf[:ms[0].N], ms[0].From)
	}
}

func TestListenUDPReusePort(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	a, err := ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(lo, 0), ReusePort: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := ListenUDP(UDPConfig{Addr: a.LocalAddr(), ReusePort: true})
	if err != nil {
		t.Fatalf("second SO_REUSEPORT socket on %v: %v", a.LocalAddr(), err)
	}
	b.Close()
	if c, err := ListenUDP(UDPConfig{Addr: a.LocalAddr()}); err == nil {
		c.Close()
		t.Fatalf("a socket without SO_REUSEPORT could bind %v too", a.LocalAddr())
	}
	if _, err := ListenUDP(UDPConfig{Addr: netip.MustParseAddrPort("[::1]:4500")}); err == nil {
		t.Fatal("IPv6 address accepted")
	}
}

// TestNATTRecvDst: a NAT-T socket bound to the unspecified address with
// RecvDst reports the address each datagram was sent to, IKE (to the
// callback) and ESP (Msg.To) alike, also with UDP_GRO's control message
// beside it; without RecvDst, To stays zero.
func TestNATTRecvDst(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gnio-d", netip.MustParsePrefix("10.231.14.0/24"))
	second := netip.MustParseAddr("10.231.14.12")
	nettest.MustExec(t, p.B.NS, "ip", "addr", "add", second.String()+"/24", "dev", p.B.Name)
	for _, tc := range []struct {
		name         string
		recvDst, gro bool
	}{{"pktinfo", true, false}, {"pktinfo+gro", true, true}, {"none", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			var rx, tx *UDPConn
			nettest.MustDo(t, p.B.NS, func() (err error) {
				rx, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), 0), GRO: tc.gro, RecvDst: tc.recvDst})
				return err
			})
			defer rx.Close()
			nettest.MustDo(t, p.A.NS, func() (err error) {
				tx, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(p.AAddr, 0)})
				return err
			})
			defer tx.Close()
			port := rx.LocalAddr().Port()
			type ikeMsg struct{ msg, to string }
			var got []ikeMsg
			d := &NATT{Conn: rx, IKE: func(msg []byte, from, to netip.AddrPort) {
				got = append(got, ikeMsg{string(msg), to.String()})
			}}
			dsts := []netip.Addr{p.BAddr, second}
			for i, dst := range dsts {
				ike := append(make([]byte, NonESPMarker), fmt.Sprintf("ike-%d", i)...)
				ms := []Msg{{Buf: ike, To: netip.AddrPortFrom(dst, port)}}
				if n, err := tx.Send(ms); err != nil || n != 1 {
					t.Fatalf("send IKE to %v: %d %v", dst, n, err)
				}
				timer := time.AfterFunc(5*time.Second, func() { rx.Close() })
				buf := []Msg{{Buf: make([]byte, 65535)}}
				if _, err := d.ReadESP(buf, make([]Packet, 64)); err != nil {
					t.Fatalf("ReadESP: %v", err)
				}
				// and an ESP datagram: Msg.To on the plain receive
				if n, err := tx.Send([]Msg{{Buf: espDatagram(0x300, uint32(i), 200), To: netip.AddrPortFrom(dst, port)}}); err != nil || n != 1 {
					t.Fatalf("send ESP to %v: %d %v", dst, n, err)
				}
				if n, err := rx.Recv(buf); err != nil || n != 1 {
					t.Fatalf("recv ESP: %d %v", n, err)
				}
				timer.Stop()
				want := netip.AddrPort{}
				if tc.recvDst {
					want = netip.AddrPortFrom(dst, port)
				}
				if buf[0].To != want {
					t.Errorf("ESP sent to %v: Msg.To %v, want %v", dst, buf[0].To, want)
				}
				if len(got) != i+1 || got[i].msg != fmt.Sprintf("ike-%d", i) || got[i].to != want.String() {
					t.Fatalf("IKE sent to %v: callback got %v, want message ike-%d to %v", dst, got, i, want)
				}
			}
		})
	}
}

// TestNATTWriteIKEFrom: a NAT-T socket bound to the unspecified address
// answers from the address named (a second address on the link), where
// the kernel alone would choose the link's primary address.
func TestNATTWriteIKEFrom(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gnio-f", netip.MustParsePrefix("10.231.13.0/24"))
	second := netip.MustParseAddr("10.231.13.11")
	nettest.MustExec(t, p.A.NS, "ip", "addr", "add", second.String()+"/24", "dev", p.A.Name)
	var rx *UDPConn
	nettest.MustDo(t, p.B.NS, func() (err error) {
		rx, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(p.BAddr, 0)})
		return err
	})
	defer rx.Close()
	var tx *UDPConn
	nettest.MustDo(t, p.A.NS, func() (err error) {
		tx, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), 0)})
		return err
	})
	defer tx.Close()
	d := &NATT{Conn: tx}
	timer := time.AfterFunc(5*time.Second, func() { rx.Close() })
	defer timer.Stop()
	ms := []Msg{{Buf: make([]byte, 100)}}
	cases := []struct {
		name string
		send func() error
		from netip.Addr
	}{
		{"kernel chooses", func() error { return d.WriteIKE([]byte("a"), rx.LocalAddr()) }, p.AAddr},
		{"second address", func() error { return d.WriteIKEFrom([]byte("b"), second, rx.LocalAddr()) }, second},
		{"primary address", func() error { return d.WriteIKEFrom([]byte("c"), p.AAddr, rx.LocalAddr()) }, p.AAddr},
	}
	for _, tc := range cases {
		if err := tc.send(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if n, err := rx.Recv(ms); err != nil || n != 1 {
			t.Fatalf("%s: recv: %d %v", tc.name, n, err)
		}
		if got := ms[0].From; got.Addr() != tc.from || got.Port() != tx.LocalAddr().Port() {
			t.Errorf("%s: arrived from %v, want %v port %d", tc.name, got, tc.from, tx.LocalAddr().Port())
		}
		if b := ms[0].Buf[:ms[0].N]; len(b) != NonESPMarker+1 || !bytes.Equal(b[:NonESPMarker], make([]byte, NonESPMarker)) {
			t.Errorf("%s: sent % x, want the non-ESP marker and one octet", tc.name, b)
		}
	}
	// The data plane's ESP-in-UDP: a run of equal datagrams (one
	// UDP_SEGMENT message) from the second address, then one from the
	// primary, then one where the kernel chooses.
	src2, src1 := netip.AddrPortFrom(second, 0), netip.AddrPortFrom(p.AAddr, 0)
	run := []Msg{
		{Buf: bytes.Repeat([]byte{1}, 100), To: rx.LocalAddr(), From: src2},
		{Buf: bytes.Repeat([]byte{2}, 100), To: rx.LocalAddr(), From: src2},
		{Buf: bytes.Repeat([]byte{3}, 100), To: rx.LocalAddr(), From: src2},
		{Buf: bytes.Repeat([]byte{4}, 100), To: rx.LocalAddr(), From: src1},
		{Buf: bytes.Repeat([]byte{5}, 100), To: rx.LocalAddr()},
	}
	if n, err := tx.SendCoalesced(run); err != nil || n != len(run) {
		t.Fatalf("SendCoalesced: %d %v", n, err)
	}
	want := []netip.Addr{second, second, second, p.AAddr, p.AAddr}
	got := make([]Msg, len(run))
	for i := range got {
		got[i].Buf = make([]byte, 200)
	}
	for k := 0; k < len(run); {
		n, err := rx.Recv(got[k:])
		if err != nil {
			t.Fatalf("recv: %v", err)
		}
		k += n
	}
	for i, m := range got {
		if m.From.Addr() != want[i] || m.N != 100 || m.Buf[0] != byte(i+1) {
			t.Errorf("datagram %d: %d octets starting %d from %v, want 100 starting %d from %v", i, m.N, m.Buf[0], m.From, i+1, want[i])
		}
	}
	if tx.GSOMessages.Load() == 0 {
		t.Error("the run of three was not sent as one UDP_SEGMENT message")
	}
	if err := d.WriteIKEFrom([]byte("x"), netip.MustParseAddr("10.231.99.1"), rx.LocalAddr()); err == nil {
		t.Error("sending from an address the host does not have succeeded")
	}
}

// TestRawSendByProcs: a socket made while the process runs with one Go
// proc sends through the raw system call, one made with more through the
// scheduler's, and both deliver a batch whole.
func TestRawSendByProcs(t *testing.T) {
	lo := netip.MustParseAddr("127.0.0.1")
	for _, procs := range []int{1, 2} {
		t.Run(fmt.Sprintf("procs=%d", procs), func(t *testing.T) {
			defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(procs))
			rx, err := ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(lo, 0)})
			if err != nil {
				t.Fatal(err)
			}
			defer rx.Close()
			tx, err := ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(lo, 0)})
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Close()
			if want := procs == 1; tx.s.rawSend != want {
				t.Fatalf("rawSend %v with %d procs, want %v", tx.s.rawSend, procs, want)
			}
			out := make([]Msg, 8)
			for i := range out {
				out[i] = Msg{Buf: []byte{byte(i), 1, 2, 3}, To: rx.LocalAddr()}
			}
			if n, err := tx.Send(out); n != len(out) || err != nil {
				t.Fatalf("sent %d of %d: %v", n, len(out), err)
			}
			for i := range out {
				if b := next(t, rx.s); len(b) != 4 || b[0] != byte(i) {
					t.Fatalf("datagram %d: %v", i, b)
				}
			}
		})
	}
}
