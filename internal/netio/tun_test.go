package netio

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// echoRequest builds an IPv4 ICMP echo request src->dst into b[off:].
func echoRequest(b []byte, src, dst netip.Addr, id, seq uint16, payload []byte) int {
	p := b
	n := 20 + 8 + len(payload)
	iphdr.PutIPv4(p, &iphdr.Outer{Src: src.As4(), Dst: dst.As4(), ID: seq}, iphdr.ProtoICMP, n)
	icmp := p[20:n]
	icmp[0], icmp[1] = 8, 0
	icmp[2], icmp[3] = 0, 0
	binary.BigEndian.PutUint16(icmp[4:], id)
	binary.BigEndian.PutUint16(icmp[6:], seq)
	copy(icmp[8:], payload)
	binary.BigEndian.PutUint16(icmp[2:], iphdr.Checksum(icmp))
	return n
}

func TestTUNEchoRoundTrip(t *testing.T) {
	testutil.NeedRoot(t)
	for _, tc := range []struct {
		name      string
		noOffload bool
	}{{"offload", false}, {"plain", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ns := "gnio-te" + tc.name[:1]
			nettest.NewNS(t, ns)
			local := netip.MustParseAddr("10.231.5.1")
			remote := netip.MustParseAddr("10.231.5.2")
			var tn *TUN
			before := runtime.NumGoroutine()
			nettest.MustDo(t, ns, func() (err error) {
				tn, err = OpenTUN(TUNConfig{Name: "gnio-tun0", MTU: 1400, Addrs: []netip.Prefix{netip.PrefixFrom(local, 24)}, NoOffload: tc.noOffload})
				return err
			})
			defer tn.Close()
			// The device is unmonitored: no link-event listeners of
			// wireguard's (a thread in ppoll, a goroutine writing to the
			// device every second) and nothing draining their events.
			if n := settledGoroutines(before); n > before {
				t.Errorf("an open TUN runs %d goroutines of its own, want none", n-before)
			}
			if tn.Offload() == tc.noOffload {
				t.Fatalf("Offload() = %v with NoOffload %v", tn.Offload(), tc.noOffload)
			}
			if mtu, err := tn.MTU(); err != nil || mtu != 1400 {
				t.Fatalf("MTU = %d, %v", mtu, err)
			}
			if err := tn.SetMTU(1380); err != nil {
				t.Fatal(err)
			}
			if mtu, _ := tn.MTU(); mtu != 1380 {
				t.Fatalf("after SetMTU(1380): %d", mtu)
			}
			payload := []byte("gosec tun round trip 0123456789")
			buf := make([]byte, Headroom+2048)
			n := echoRequest(buf[Headroom:], remote, local, 0x4242, 7, payload)
			if _, err := tn.Write([][]byte{buf[:Headroom+n]}, Headroom); err != nil {
				t.Fatal(err)
			}
			bufs := make([][]byte, tn.BatchSize())
			for i := range bufs {
				bufs[i] = make([]byte, Headroom+2048)
			}
			sizes := make([]int, len(bufs))
			deadline := time.AfterFunc(5*time.Second, func() { tn.Close() })
			defer deadline.Stop()
			for {
				k, err := tn.Read(bufs, sizes, Headroom)
				if err != nil {
					t.Fatalf("no echo reply: %v", err)
				}
				for i := 0; i < k; i++ {
					p := bufs[i][Headroom : Headroom+sizes[i]]
					if len(p) < 28 || p[9] != iphdr.ProtoICMP || p[20] != 0 {
						continue // IPv6 router solicitations etc.
					}
					if !bytes.Equal(p[12:16], local.AsSlice()) || !bytes.Equal(p[16:20], remote.AsSlice()) {
						t.Fatalf("reply addresses %v -> %v", p[12:16], p[16:20])
					}
					if binary.BigEndian.Uint16(p[24:]) != 0x4242 || binary.BigEndian.Uint16(p[26:]) != 7 || !bytes.Equal(p[28:], payload) {
						t.Fatalf("reply does not echo the request: % x", p)
					}
					if iphdr.Checksum(p[20:]) != 0 || iphdr.Checksum(p[:20]) != 0 {
						t.Fatal("reply checksums invalid")
					}
					tn.Close()
					if _, err := tn.Read(bufs, sizes, Headroom); !errors.Is(err, ErrClosed) {
						t.Errorf("Read after Close: %v, want ErrClosed", err)
					}
					return
				}
			}
		})
	}
}

// tunPair is two namespaces, each with a TUN, routed to each other's
// subnet; forward() copies batches between the TUNs like a data plane with
// null crypto.
type tunPair struct {
	a, b         *TUN
	nsA, nsB     string
	addrA, addrB netip.Addr
}

func newTUNPair(t testing.TB, prefix string, noOffload bool) *tunPair {
	p := &tunPair{nsA: prefix + "a", nsB: prefix + "b",
		addrA: netip.MustParseAddr("10.231.7.1"), addrB: netip.MustParseAddr("10.231.8.1")}
	nettest.NewNS(t, p.nsA)
	nettest.NewNS(t, p.nsB)
	nettest.MustDo(t, p.nsA, func() (err error) {
		p.a, err = OpenTUN(TUNConfig{Name: prefix + "t", MTU: 1400, Addrs: []netip.Prefix{netip.PrefixFrom(p.addrA, 24)}, NoOffload: noOffload})
		return err
	})
	t.Cleanup(func() { p.a.Close() })
	nettest.MustDo(t, p.nsB, func() (err error) {
		p.b, err = OpenTUN(TUNConfig{Name: prefix + "t", MTU: 1400, Addrs: []netip.Prefix{netip.PrefixFrom(p.addrB, 24)}, NoOffload: noOffload})
		return err
	})
	t.Cleanup(func() { p.b.Close() })
	nettest.MustExec(t, p.nsA, "ip", "route", "add", "10.231.8.0/24", "dev", prefix+"t")
	nettest.MustExec(t, p.nsB, "ip", "route", "add", "10.231.7.0/24", "dev", prefix+"t")
	return p
}

type fwdStats struct{ reads, pkts, writes atomic.Int64 }

// forward copies packets from src to dst until src fails (closed).
func forward(src, dst *TUN, st *fwdStats) {
	bs := src.BatchSize()
	bufs := make([][]byte, bs)
	w := make([][]byte, bs)
	for i := range bufs {
		bufs[i] = make([]byte, Headroom+65536)
	}
	sizes := make([]int, bs)
	for {
		n, err := src.Read(bufs, sizes, Headroom)
		if err != nil {
			return
		}
		st.reads.Add(1)
		st.pkts.Add(int64(n))
		for i := 0; i < n; i++ {
			w[i] = bufs[i][:Headroom+sizes[i]]
		}
		if _, err := dst.Write(w[:n], Headroom); err != nil && errors.Is(err, ErrClosed) {
			return
		}
		st.writes.Add(1)
	}
}

// tcpTransfer sends size random bytes from A to B over TCP and returns the
// duration; it fails the test when the SHA-256 differs.
func tcpTransfer(t testing.TB, p *tunPair, size int) time.Duration {
	var ln net.Listener
	nettest.MustDo(t, p.nsB, func() (err error) {
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(p.addrB, 5001).String())
		return err
	})
	defer ln.Close()
	var wg sync.WaitGroup
	var gotSum [32]byte
	var gotN int64
	var srvErr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			srvErr = err
			return
		}
		defer c.Close()
		h := sha256.New()
		gotN, srvErr = io.Copy(h, c)
		copy(gotSum[:], h.Sum(nil))
	}()
	data := make([]byte, size)
	rand.Read(data)
	want := sha256.Sum256(data)
	var c net.Conn
	start := time.Now()
	nettest.MustDo(t, p.nsA, func() (err error) {
		c, err = net.DialTimeout("tcp4", netip.AddrPortFrom(p.addrB, 5001).String(), 5*time.Second)
		return err
	})
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Write(data); err != nil {
		t.Fatalf("tcp write: %v", err)
	}
	c.Close()
	wg.Wait()
	d := time.Since(start)
	if srvErr != nil || gotN != int64(size) || gotSum != want {
		t.Fatalf("tcp through the TUNs: %d of %d bytes, err %v, checksum match %v", gotN, size, srvErr, gotSum == want)
	}
	return d
}

func TestTUNTCPOffload(t *testing.T) {
	testutil.NeedRoot(t)
	for _, tc := range []struct {
		name      string
		noOffload bool
	}{{"offload", false}, {"plain", true}} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTUNPair(t, "gnio-tt"+tc.name[:1], tc.noOffload)
			var ab, ba fwdStats
			go forward(p.a, p.b, &ab)
			go forward(p.b, p.a, &ba)
			const size = 32 << 20
			d := tcpTransfer(t, p, size)
			perRead := float64(ab.pkts.Load()) / float64(ab.reads.Load())
			t.Logf("%s: %d MB in %v (%.0f Mbit/s), A->B %d packets in %d reads (%.1f per read)",
				tc.name, size>>20, d, float64(size)*8/d.Seconds()/1e6, ab.pkts.Load(), ab.reads.Load(), perRead)
			if !tc.noOffload && perRead < 2 {
				t.Errorf("with offloads, reads returned only %.1f packets on average; TSO not in effect", perRead)
			}
			if tc.noOffload && perRead != 1 {
				t.Errorf("without offloads, %.1f packets per read", perRead)
			}
		})
	}
}

// TestTUNNoIPv6 checks that a fresh TUN carries nothing of the kernel's
// IPv6 (router solicitations, MLD reports): gosec is IPv4-only and the
// data plane would count and log each such packet as malformed.
func TestTUNNoIPv6(t *testing.T) {
	testutil.NeedRoot(t)
	ns := "gnio-t6"
	nettest.NewNS(t, ns)
	var tn *TUN
	nettest.MustDo(t, ns, func() (err error) {
		tn, err = OpenTUN(TUNConfig{Name: "gnio-tun6", MTU: 1400, Addrs: []netip.Prefix{netip.MustParsePrefix("10.231.6.1/24")}})
		return err
	})
	closed := make(chan struct{})
	timer := time.AfterFunc(2500*time.Millisecond, func() { tn.Close(); close(closed) })
	defer func() {
		timer.Stop()
		select {
		case <-closed:
		default:
			tn.Close()
		}
	}()
	bufs := make([][]byte, tn.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, Headroom+65535)
	}
	sizes := make([]int, len(bufs))
	for {
		n, err := tn.Read(bufs, sizes, Headroom)
		if err != nil {
			break // closed: 2.5 s without a packet
		}
		for i := 0; i < n; i++ {
			pkt := bufs[i][Headroom : Headroom+sizes[i]]
			t.Errorf("the kernel sent a packet into a fresh TUN: version %d, %d octets: % x", iphdr.Version(pkt), len(pkt), pkt[:min(len(pkt), 48)])
		}
	}
}

// settledGoroutines waits up to two seconds for the number of goroutines
// to come down to want (goroutines that were ending may still be counted)
// and returns the last count.
func settledGoroutines(want int) int {
	n := runtime.NumGoroutine()
	for deadline := time.Now().Add(2 * time.Second); n > want && time.Now().Before(deadline); n = runtime.NumGoroutine() {
		time.Sleep(10 * time.Millisecond)
	}
	return n
}
