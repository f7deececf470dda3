package netio

import (
	"encoding/binary"
	"net/netip"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

func TestSendCoalesced(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gnio-co", netip.MustParsePrefix("10.231.23.0/24"))
	for _, gro := range []bool{false, true} {
		t.Run(map[bool]string{false: "plain", true: "gro"}[gro], func(t *testing.T) {
			var tx, rx1, rx2 *UDPConn
			nettest.MustDo(t, p.B.NS, func() (err error) {
				if rx1, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(p.BAddr, 0), GRO: gro, Buffer: 4 << 20}); err != nil {
					return err
				}
				rx2, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(p.BAddr, 0), GRO: gro})
				return err
			})
			defer rx1.Close()
			defer rx2.Close()
			nettest.MustDo(t, p.A.NS, func() (err error) {
				tx, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(p.AAddr, 0), Buffer: 4 << 20})
				return err
			})
			defer tx.Close()
			var ms []Msg
			want := map[netip.AddrPort][]int{} // sizes in order, per receiver
			add := func(to netip.AddrPort, n, size int) {
				for k := 0; k < n; k++ {
					b := make([]byte, size)
					if size >= 4 {
						binary.BigEndian.PutUint32(b, uint32(len(ms)))
					}
					ms = append(ms, Msg{Buf: b, To: to})
					want[to] = append(want[to], size)
				}
			}
			a1, a2 := rx1.LocalAddr(), rx2.LocalAddr()
			add(a1, 50, 1000)
			add(a1, 1, 700) // ends the run: one message of 51
			add(a1, 70, 1200)
			add(a2, 3, 100)
			add(a1, 1, 0)
			add(a1, 1, 1200)
			add(a1, 1, 1300) // larger: starts a new message
			n, err := tx.SendCoalesced(ms)
			if err != nil || n != len(ms) {
				t.Fatalf("sent %d of %d: %v", n, len(ms), err)
			}
			// Messages: 51, 64+6, 3 with UDP_SEGMENT; 0, 1200, 1300 alone.
			if g := tx.GSOMessages.Load(); g != 4 {
				t.Errorf("GSOMessages = %d, want 4", g)
			}
			for _, rx := range []*UDPConn{rx1, rx2} {
				timer := time.AfterFunc(3*time.Second, func() { rx.Close() })
				var sizes []int
				last := -1
				in := recvMsgs(16, 65536)
				for len(sizes) < len(want[rx.LocalAddr()]) {
					k, err := rx.Recv(in)
					if err != nil {
						t.Fatalf("%v: got %d of %d: %v", rx.LocalAddr(), len(sizes), len(want[rx.LocalAddr()]), err)
					}
					for _, m := range in[:k] {
						Segments(m.Buf[:m.N], m.GSOSize, func(d []byte) bool {
							sizes = append(sizes, len(d))
							if len(d) >= 4 {
								idx := int(binary.BigEndian.Uint32(d))
								if idx <= last {
									t.Errorf("datagram %d after %d: out of order", idx, last)
								}
								last = idx
							}
							return true
						})
					}
				}
				timer.Stop()
				w := want[rx.LocalAddr()]
				for i := range w {
					if sizes[i] != w[i] {
						t.Fatalf("%v: datagram %d is %d bytes, want %d", rx.LocalAddr(), i, sizes[i], w[i])
					}
				}
			}
		})
	}
}
