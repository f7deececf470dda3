package netio

import (
	"bytes"
	"context"
	"encoding/binary"
	"net/netip"
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
		_ = parseGRO(b)
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
			d := &NATT{Conn: rx, IKE: func(msg []byte, from netip.AddrPort) {
				mu.Lock()
				defer mu.Unlock()
				if from != tx.LocalAddr() {
					t.Errorf("IKE from %v, want %v", from, tx.LocalAddr())
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
