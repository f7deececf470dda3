package netio

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// rawPair opens a marked ESP sender in A and an ESP receiver in B.
func rawPair(t testing.TB, p *nettest.Pair) (tx, rx *RawConn) {
	nettest.MustDo(t, p.B.NS, func() (err error) {
		rx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP, Buffer: 8 << 20})
		return err
	})
	t.Cleanup(func() { rx.Close() })
	nettest.MustDo(t, p.A.NS, func() (err error) {
		tx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP, Mark: testMark, Buffer: 8 << 20})
		return err
	})
	t.Cleanup(func() { tx.Close() })
	return tx, rx
}

func espPackets(p *nettest.Pair, n, size int) []Msg {
	ms := make([]Msg, n)
	for i := range ms {
		b := make([]byte, size)
		iphdr.PutIPv4(b, &iphdr.Outer{Src: p.AAddr.As4(), Dst: p.BAddr.As4(), ID: uint16(i + 1), DF: true}, iphdr.ProtoESP, size)
		binary.BigEndian.PutUint32(b[20:], 0x100)
		ms[i].Buf = b
	}
	return ms
}

func recvMsgs(n, size int) []Msg {
	ms := make([]Msg, n)
	for i := range ms {
		ms[i].Buf = make([]byte, size)
	}
	return ms
}

// TestSocketAllocs proves zero allocations per batch (and so per packet) in
// steady state for raw and UDP Send/Recv and the NAT-T demux.
func TestSocketAllocs(t *testing.T) {
	testutil.NeedRoot(t)
	if testutil.RaceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	p := nettest.NewPair(t, "gnio-al", netip.MustParsePrefix("10.231.20.0/24"))
	tx, rx := rawPair(t, p)
	out := espPackets(p, 32, 1400)
	in := recvMsgs(32, 2048)
	allocs := testing.AllocsPerRun(50, func() {
		if _, err := tx.Send(out); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < len(out); {
			n, err := rx.Recv(in)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Errorf("raw: %v allocs per 32-packet send+receive", allocs)
	}

	var utx, urx *UDPConn
	nettest.MustDo(t, p.B.NS, func() (err error) {
		urx, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(p.BAddr, 4500), GRO: true, Buffer: 8 << 20})
		return err
	})
	defer urx.Close()
	nettest.MustDo(t, p.A.NS, func() (err error) {
		utx, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(p.AAddr, 4500), Mark: testMark})
		return err
	})
	defer utx.Close()
	to := urx.LocalAddr()
	uout := make([]Msg, 8)
	for i := range uout {
		uout[i] = Msg{Buf: make([]byte, 1400), To: to}
		binary.BigEndian.PutUint32(uout[i].Buf, 0x100)
	}
	uout = append(uout, Msg{Buf: make([]byte, 10*1400), To: to, GSOSize: 1400})
	binary.BigEndian.PutUint32(uout[8].Buf, 0x100)
	for i := 1; i < 10; i++ {
		binary.BigEndian.PutUint32(uout[8].Buf[i*1400:], 0x100)
	}
	d := &NATT{Conn: urx}
	uin := recvMsgs(16, 65536)
	pkts := make([]Packet, 16*64)
	allocs = testing.AllocsPerRun(50, func() {
		if _, err := utx.Send(uout); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < 18; {
			n, err := d.ReadESP(uin, pkts)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Errorf("udp: %v allocs per send+demux of 18 datagrams", allocs)
	}
	allocs = testing.AllocsPerRun(50, func() {
		if _, err := utx.SendCoalesced(uout[:8]); err != nil {
			t.Fatal(err)
		}
		for got := 0; got < 8; {
			n, err := d.ReadESP(uin, pkts)
			if err != nil {
				t.Fatal(err)
			}
			got += n
		}
	})
	if allocs != 0 {
		t.Errorf("udp: %v allocs per coalesced send+demux of 8 datagrams", allocs)
	}
}

// BenchmarkRaw measures ESP packets/s over a veth between namespaces, by
// batch size (1 = one syscall per packet). One op is one packet sent; the
// receiver's rate is reported as rx-pps.
func BenchmarkRaw(b *testing.B) {
	testutil.NeedRoot(b)
	p := nettest.NewPair(b, "gnio-br", netip.MustParsePrefix("10.231.21.0/24"))
	for _, batch := range []int{1, 8, 32, 128} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			tx, rx := rawPair(b, p)
			benchPipe(b, batch, espPackets(p, batch, 1400), tx.Send, recvMsgs(batch, 2048), rx.Recv, rx.Close)
		})
	}
}

// benchPipe sends b.N packets in batches and counts what the receiver gets
// until the sender is done and the receiver has been idle for 100 ms.
func benchPipe(b *testing.B, batch int, out []Msg, send func([]Msg) (int, error), in []Msg, recv func([]Msg) (int, error), stop func() error) {
	var got atomic.Int64
	var lastRx atomic.Int64
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			n, err := recv(in)
			if err != nil {
				return
			}
			got.Add(int64(n))
			lastRx.Store(time.Now().UnixNano())
		}
	}()
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	for sent := 0; sent < b.N; {
		k := min(batch, b.N-sent)
		n, err := send(out[:k])
		if err != nil {
			b.Fatal(err)
		}
		sent += n
	}
	b.StopTimer()
	sendDur := time.Since(start)
	for {
		l := lastRx.Load()
		if time.Since(time.Unix(0, l)) > 100*time.Millisecond {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	rxDur := time.Duration(lastRx.Load() - start.UnixNano())
	if rxDur <= 0 {
		rxDur = sendDur
	}
	r := got.Load()
	b.ReportMetric(float64(b.N)/sendDur.Seconds(), "tx-pps")
	b.ReportMetric(float64(r)/rxDur.Seconds(), "rx-pps")
	b.ReportMetric(100*float64(int64(b.N)-r)/float64(b.N), "loss%")
	stop()
	<-done
}

// BenchmarkUDP compares ESP-in-UDP sending of 1400-byte datagrams to one
// peer: sendmmsg of single datagrams (batches of 128), sendmmsg of
// UDP_SEGMENT (GSO) messages of 44 datagrams in one contiguous buffer, and
// SendCoalesced (GSO over 128 separate buffers as iovecs); with the
// receiver's UDP_GRO on or off. One op is one datagram.
func BenchmarkUDP(b *testing.B) {
	testutil.NeedRoot(b)
	p := nettest.NewPair(b, "gnio-bu", netip.MustParsePrefix("10.231.22.0/24"))
	const seg, perGSO = 1400, 44
	for _, tc := range []struct {
		name      string
		gso       bool
		gro       bool
		coalesced bool
	}{
		{"sendmmsg", false, false, false}, {"sendmmsg+gro", false, true, false},
		{"gso", true, false, false}, {"gso+gro", true, true, false},
		{"coalesced", false, false, true}, {"coalesced+gro", false, true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			var tx, rx *UDPConn
			nettest.MustDo(b, p.B.NS, func() (err error) {
				rx, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(p.BAddr, 4500), GRO: tc.gro, Buffer: 8 << 20})
				return err
			})
			defer rx.Close()
			nettest.MustDo(b, p.A.NS, func() (err error) {
				tx, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(p.AAddr, 4500), Mark: testMark, Buffer: 8 << 20})
				return err
			})
			defer tx.Close()
			to := rx.LocalAddr()
			d := &NATT{Conn: rx}
			var out []Msg
			unit := 1 // datagrams per Msg
			if tc.gso {
				unit = perGSO
				for i := 0; i < 4; i++ {
					buf := make([]byte, seg*perGSO)
					for j := 0; j < perGSO; j++ {
						binary.BigEndian.PutUint32(buf[j*seg:], 0x100)
					}
					out = append(out, Msg{Buf: buf, To: to, GSOSize: seg})
				}
			} else {
				for i := 0; i < MaxBatch; i++ {
					buf := make([]byte, seg)
					binary.BigEndian.PutUint32(buf, 0x100)
					out = append(out, Msg{Buf: buf, To: to})
				}
			}
			in := recvMsgs(64, 65536)
			pk := make([]Packet, 64*64)
			var got, lastRx atomic.Int64
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					n, err := d.ReadESP(in, pk)
					if err != nil {
						return
					}
					got.Add(int64(n))
					lastRx.Store(time.Now().UnixNano())
				}
			}()
			b.ReportAllocs()
			b.ResetTimer()
			start := time.Now()
			for sent := 0; sent < b.N; {
				k := min(len(out), (b.N-sent+unit-1)/unit)
				send := tx.Send
				if tc.coalesced {
					send = tx.SendCoalesced
				}
				n, err := send(out[:k])
				if err != nil {
					b.Fatal(err)
				}
				sent += n * unit
			}
			b.StopTimer()
			sendDur := time.Since(start)
			for time.Since(time.Unix(0, lastRx.Load())) < 100*time.Millisecond {
				time.Sleep(20 * time.Millisecond)
			}
			rxDur := time.Duration(lastRx.Load() - start.UnixNano())
			rx.Close()
			wg.Wait()
			b.ReportMetric(float64(b.N)/sendDur.Seconds(), "tx-pps")
			if rxDur > 0 {
				b.ReportMetric(float64(got.Load())/rxDur.Seconds(), "rx-pps")
			}
			b.ReportMetric(float64(d.GROBuffers.Load()), "gro-bufs")
		})
	}
}

// BenchmarkTUNForward moves TCP through two TUNs and a userspace forwarder
// (the data plane with null crypto), with and without offloads. One op is
// one MB of TCP payload.
func BenchmarkTUNForward(b *testing.B) {
	testutil.NeedRoot(b)
	for _, tc := range []struct {
		name      string
		noOffload bool
	}{{"offload", false}, {"plain", true}} {
		b.Run(tc.name, func(b *testing.B) {
			p := newTUNPair(b, "gnio-bt"+tc.name[:1], tc.noOffload)
			var ab, ba fwdStats
			go forward(p.a, p.b, &ab)
			go forward(p.b, p.a, &ba)
			var ln net.Listener
			nettest.MustDo(b, p.nsB, func() (err error) {
				ln, err = net.Listen("tcp4", netip.AddrPortFrom(p.addrB, 5002).String())
				return err
			})
			defer ln.Close()
			total := make(chan int64, 1)
			go func() {
				c, err := ln.Accept()
				if err != nil {
					total <- -1
					return
				}
				defer c.Close()
				buf := make([]byte, 256<<10)
				var n int64
				for {
					k, err := c.Read(buf)
					n += int64(k)
					if err != nil {
						total <- n
						return
					}
				}
			}()
			var c net.Conn
			nettest.MustDo(b, p.nsA, func() (err error) {
				c, err = net.Dial("tcp4", netip.AddrPortFrom(p.addrB, 5002).String())
				return err
			})
			chunk := make([]byte, 1<<20)
			b.SetBytes(int64(len(chunk)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := c.Write(chunk); err != nil {
					b.Fatal(err)
				}
			}
			c.Close()
			if n := <-total; n != int64(b.N)*int64(len(chunk)) {
				b.Fatalf("received %d of %d bytes", n, b.N*len(chunk))
			}
			b.StopTimer()
			b.ReportMetric(float64(ab.pkts.Load())/float64(max(ab.reads.Load(), 1)), "pkts/read")
		})
	}
}
