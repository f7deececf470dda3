package netio

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

const testMark = 0x5ec0

// markedPair makes namespaces prefix{a,b} on subnet 10.231.n.0/24 where B
// also owns 10.231.(n+100).2, which A reaches ONLY with the test mark
// (main table: blackhole; fwmark rule: table 7331 via the veth). A packet
// that arrives at that address therefore proves the sender's SO_MARK.
func markedPair(t *testing.T, prefix string, n int) (p *nettest.Pair, marked netip.Addr) {
	t.Helper()
	p = nettest.NewPair(t, prefix, netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 231, byte(n), 0}), 24))
	marked = netip.AddrFrom4([4]byte{10, 231, byte(n + 100), 2})
	nettest.MustExec(t, p.B.NS, "ip", "addr", "add", marked.String()+"/32", "dev", "lo")
	nettest.MustExec(t, p.A.NS, "ip", "route", "add", "blackhole", marked.String()+"/32")
	nettest.MustExec(t, p.A.NS, "ip", "route", "add", marked.String()+"/32", "via", p.BAddr.String(), "dev", p.A.Name, "table", "7331")
	nettest.MustExec(t, p.A.NS, "ip", "rule", "add", "fwmark", "0x5ec0", "table", "7331", "priority", "100")
	return p, marked
}

// recvN reads from c until want packets arrived or the timeout passed.
func recvN(t *testing.T, c *RawConn, want int, timeout time.Duration) [][]byte {
	t.Helper()
	timer := time.AfterFunc(timeout, func() { c.Close() })
	defer timer.Stop()
	ms := make([]Msg, 64)
	for i := range ms {
		ms[i].Buf = make([]byte, 2048)
	}
	var got [][]byte
	for len(got) < want {
		n, err := c.Recv(ms)
		if err != nil {
			t.Fatalf("after %d of %d packets: %v", len(got), want, err)
		}
		for _, m := range ms[:n] {
			got = append(got, append([]byte(nil), m.Buf[:m.N]...))
		}
	}
	return got
}

func TestRawBatchExchange(t *testing.T) {
	testutil.NeedRoot(t)
	p, dst := markedPair(t, "gnio-r", 2)
	var rx50, rx51, tx *RawConn
	nettest.MustDo(t, p.B.NS, func() (err error) {
		if rx50, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP}); err != nil {
			return err
		}
		rx51, err = ListenRaw(RawConfig{Proto: iphdr.ProtoAH})
		return err
	})
	defer rx50.Close()
	defer rx51.Close()
	nettest.MustDo(t, p.A.NS, func() (err error) {
		tx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP, Mark: testMark, Buffer: 1 << 20})
		return err
	})
	defer tx.Close()

	for _, proto := range []uint8{iphdr.ProtoESP, iphdr.ProtoAH} {
		const count = 40
		ms := make([]Msg, count)
		for i := range ms {
			size := 60 + i*17
			b := make([]byte, size)
			o := iphdr.Outer{Dst: dst.As4(), ID: uint16(1000 + i), DF: i%2 == 0}
			if i%4 == 0 {
				o.Src = p.AAddr.As4()
			}
			iphdr.PutIPv4(b, &o, proto, size)
			binary.BigEndian.PutUint32(b[20:], 0x1000+uint32(i)) // SPI (ESP) / next hdr.. (AH)
			binary.BigEndian.PutUint32(b[24:], uint32(i))
			for j := 28; j < size; j++ {
				b[j] = byte(i + j)
			}
			switch i % 3 {
			case 1: // kernel must fill: total length, checksum, ID (non-DF)
				binary.BigEndian.PutUint16(b[iphdr.OffTotalLen:], 0)
				b[iphdr.OffChecksum], b[iphdr.OffChecksum+1] = 0, 0
				b[iphdr.OffID], b[iphdr.OffID+1] = 0, 0
			case 2: // wrong checksum on purpose
				b[iphdr.OffChecksum] ^= 0xff
			}
			ms[i].Buf = b
		}
		n, err := tx.Send(ms)
		if err != nil || n != count {
			t.Fatalf("proto %d: sent %d of %d: %v", proto, n, count, err)
		}
		rx := rx50
		if proto == iphdr.ProtoAH {
			rx = rx51
		}
		got := recvN(t, rx, count, 5*time.Second)
		for k, pkt := range got {
			hl, total, err := iphdr.HeaderLen(pkt)
			if err != nil {
				t.Fatalf("packet %d: %v", k, err)
			}
			i := int(binary.BigEndian.Uint32(pkt[hl+4:]))
			if i >= count || len(pkt) != 60+i*17 || total != len(pkt) {
				t.Fatalf("packet %d: index %d len %d total %d", k, i, len(pkt), total)
			}
			if pkt[iphdr.OffProtocol] != proto {
				t.Errorf("packet %d: protocol %d, want %d", i, pkt[iphdr.OffProtocol], proto)
			}
			if iphdr.Checksum(pkt[:hl]) != 0 {
				t.Errorf("packet %d: header checksum not valid on arrival", i)
			}
			if src := netip.AddrFrom4([4]byte(pkt[12:16])); src != p.AAddr {
				t.Errorf("packet %d: source %v, want %v (kernel fills 0.0.0.0)", i, src, p.AAddr)
			}
			id := binary.BigEndian.Uint16(pkt[iphdr.OffID:])
			df := pkt[iphdr.OffFlagsFrag]&0x40 != 0
			switch {
			case i%3 != 1 && id != uint16(1000+i):
				t.Errorf("packet %d: ID %d, want ours %d", i, id, 1000+i)
			case i%3 == 1:
				t.Logf("packet %d: sent ID 0 DF=%v, kernel put ID %d", i, df, id)
				if !df && id == 0 {
					t.Errorf("packet %d: kernel left ID 0 on a non-DF packet", i)
				}
			}
			for j := 28; j < len(pkt); j++ {
				if pkt[j] != byte(i+j) {
					t.Fatalf("packet %d: payload differs at %d", i, j)
				}
			}
		}
	}
}

func TestRawConcurrentAndTrunc(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gnio-rc", netip.MustParsePrefix("10.231.24.0/24"))
	tx, rx := rawPair(t, p)
	const senders, per = 2, 300
	var mu sync.Mutex
	seen := map[uint32]bool{}
	// The senders keep at most inFlight packets ahead of the receivers:
	// under load (CI runs -race packages in parallel) a burst of 600 can
	// outrun the kernel's queues between the veth ends, and lost packets
	// are not what this test is about.
	const inFlight = 100
	var sent atomic.Int64
	caughtUp := func() bool {
		mu.Lock()
		defer mu.Unlock()
		return int64(len(seen)) >= sent.Load()-inFlight
	}
	var wg sync.WaitGroup
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func(s int) {
			defer wg.Done()
			ms := espPackets(p, per, 100)
			for i := range ms {
				binary.BigEndian.PutUint32(ms[i].Buf[24:], uint32(s*per+i))
			}
			for off := 0; off < per; off += 25 {
				for deadline := time.Now().Add(5 * time.Second); !caughtUp() && time.Now().Before(deadline); {
					time.Sleep(time.Millisecond)
				}
				sent.Add(25)
				if _, err := tx.Send(ms[off : off+25]); err != nil {
					t.Error(err)
					return
				}
			}
		}(s)
	}
	timer := time.AfterFunc(5*time.Second, func() { rx.Close() })
	defer timer.Stop()
	var rwg sync.WaitGroup
	for r := 0; r < 2; r++ {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			in := recvMsgs(16, 2048)
			for {
				n, err := rx.Recv(in)
				if err != nil {
					return
				}
				mu.Lock()
				for _, m := range in[:n] {
					seen[binary.BigEndian.Uint32(m.Buf[24:])] = true
				}
				done := len(seen) == senders*per
				mu.Unlock()
				if done {
					rx.Close()
					return
				}
			}
		}()
	}
	wg.Wait()
	rwg.Wait()
	if len(seen) != senders*per {
		t.Fatalf("received %d distinct packets, want %d", len(seen), senders*per)
	}

	// A buffer smaller than the packet: Trunc, N capped.
	tx2, rx2 := rawPair(t, p)
	if _, err := tx2.Send(espPackets(p, 1, 300)); err != nil {
		t.Fatal(err)
	}
	small := []Msg{{Buf: make([]byte, 64)}}
	timer2 := time.AfterFunc(3*time.Second, func() { rx2.Close() })
	defer timer2.Stop()
	if n, err := rx2.Recv(small); err != nil || n != 1 || !small[0].Trunc || small[0].N != 64 {
		t.Fatalf("short buffer: n=%d err=%v trunc=%v N=%d", n, err, small[0].Trunc, small[0].N)
	}
	if small[0].From.Addr() != p.AAddr {
		t.Errorf("From = %v, want %v", small[0].From, p.AAddr)
	}
	// A data plane loop ends on ErrClosed.
	rx2.Close()
	if _, err := rx2.Recv(small); !errors.Is(err, ErrClosed) {
		t.Errorf("Recv after Close: %v, want ErrClosed", err)
	}
	if _, err := tx2.Send(espPackets(p, 1, 100)); err != nil {
		t.Errorf("Send on the other socket: %v", err)
	}
	tx2.Close()
	if _, err := tx2.Send(espPackets(p, 1, 100)); !errors.Is(err, ErrClosed) {
		t.Errorf("Send after Close: %v, want ErrClosed", err)
	}
}
