package netio

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// From scapy (Debian python3-scapy):
//
//	p = IP(src="10.1.2.3", dst="192.0.2.9", id=0x1234, flags="DF", ttl=63)/
//	    TCP(sport=1234, dport=80, flags="A", seq=1, ack=2)/Raw(bytes(range(60)))
//	r = IP(src="192.0.2.1", dst="10.1.2.3", tos=0xc0, ttl=64, id=0, flags=0)/
//	    ICMP(type=3, code=4, nexthopmtu=80)/Raw(raw(p))
const (
	fragInHex  = "45000064123440003f065b530a010203c000020904d2005000000001000000025010200052df0000000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b"
	fragOutHex = "45c00080000000004001abb8c00002010a0102030304cb0f0000005045000064123440003f065b530a010203c000020904d2005000000001000000025010200052df0000000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f202122232425262728292a2b2c2d2e2f303132333435363738393a3b"
)

func TestFragNeededScapyVector(t *testing.T) {
	in, _ := hex.DecodeString(fragInHex)
	want, _ := hex.DecodeString(fragOutHex)
	b := make([]byte, FragNeededMax)
	n, err := FragNeeded(b, in, 80, netip.MustParseAddr("192.0.2.1"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b[:n], want) {
		t.Fatalf("got  %x\nwant %x", b[:n], want)
	}
}

func TestFragNeededDeclines(t *testing.T) {
	base, _ := hex.DecodeString(fragInHex)
	mod := func(f func(p []byte)) []byte {
		p := append([]byte(nil), base...)
		f(p)
		iphdr.SetChecksum(p[:20])
		return p
	}
	big := make([]byte, 1500)
	copy(big, base)
	binary.BigEndian.PutUint16(big[2:], 1500)
	for _, tc := range []struct {
		name string
		pkt  []byte
		mtu  int
		buf  int
		want error
	}{
		{"truncated", base[:19], 80, 576, ErrFragMalformed},
		{"total length lies", mod(func(p []byte) { p[2], p[3] = 0x10, 0 }), 80, 576, ErrFragMalformed},
		{"mtu too small", base, 67, 576, ErrFragMTU},
		{"packet fits", base, 100, 576, ErrFragMTU},
		{"DF clear", mod(func(p []byte) { p[6] = 0 }), 80, 576, ErrFragNotDF},
		{"later fragment", mod(func(p []byte) { p[6], p[7] = 0x40, 0x10 }), 80, 576, ErrFragNoICMP},
		{"multicast dst", mod(func(p []byte) { p[16] = 239 }), 80, 576, ErrFragNoICMP},
		{"broadcast dst", mod(func(p []byte) { copy(p[16:], []byte{255, 255, 255, 255}) }), 80, 576, ErrFragNoICMP},
		{"zero src", mod(func(p []byte) { copy(p[12:], []byte{0, 0, 0, 0}) }), 80, 576, ErrFragNoICMP},
		{"icmp error", mod(func(p []byte) { p[9] = 1; p[20] = 3 }), 80, 576, ErrFragNoICMP},
		{"icmp echo ok", mod(func(p []byte) { p[9] = 1; p[20] = 8 }), 80, 576, nil},
		{"short buffer", base, 80, 127, ErrFragShortBuf},
		{"big packet quotes 548", big, 1400, 576, nil},
	} {
		b := make([]byte, tc.buf)
		n, err := FragNeeded(b, tc.pkt, tc.mtu, netip.Addr{})
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
			continue
		}
		if err != nil {
			continue
		}
		// Independent check of what we wrote: the kernel-style parse.
		hl, total, herr := iphdr.HeaderLen(b[:n])
		if herr != nil || total != n || iphdr.Checksum(b[:hl]) != 0 || iphdr.Checksum(b[hl:n]) != 0 {
			t.Errorf("%s: reply malformed or bad checksums", tc.name)
		}
		if !bytes.Equal(b[12:16], tc.pkt[16:20]) || !bytes.Equal(b[16:20], tc.pkt[12:16]) {
			t.Errorf("%s: addresses not swapped (from unset: pkt dst)", tc.name)
		}
		if q := n - 28; q != min(len(tc.pkt), FragNeededQuote) {
			t.Errorf("%s: quoted %d bytes", tc.name, q)
		}
	}
}

func TestFragNeededAllocs(t *testing.T) {
	if testutil.RaceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	in, _ := hex.DecodeString(fragInHex)
	b := make([]byte, FragNeededMax)
	from := netip.MustParseAddr("192.0.2.1")
	if a := testing.AllocsPerRun(100, func() { FragNeeded(b, in, 80, from) }); a != 0 {
		t.Fatalf("%v allocs per call", a)
	}
	if a := testing.AllocsPerRun(100, func() { FragNeeded(b, in[:10], 80, from) }); a != 0 {
		t.Fatalf("%v allocs per declined call", a)
	}
}

func FuzzFragNeeded(f *testing.F) {
	in, _ := hex.DecodeString(fragInHex)
	f.Add(in, uint16(80))
	f.Add(in[:20], uint16(68))
	f.Fuzz(func(t *testing.T, pkt []byte, mtu uint16) {
		b := make([]byte, FragNeededMax)
		n, err := FragNeeded(b, pkt, int(mtu), netip.Addr{})
		if err == nil && (n < 28 || n > FragNeededMax || iphdr.Checksum(b[20:n]) != 0) {
			t.Fatalf("bad reply of %d bytes", n)
		}
	})
}

// TestFragNeededKernelPMTU writes the reply into a TUN and checks that the
// sending kernel lowers its path MTU (the independent verifier).
func TestFragNeededKernelPMTU(t *testing.T) {
	testutil.NeedRoot(t)
	ns := "gnio-pm"
	nettest.NewNS(t, ns)
	var tn *TUN
	var c net.Conn
	remote := netip.MustParseAddr("10.231.19.5")
	nettest.MustDo(t, ns, func() (err error) {
		if tn, err = OpenTUN(TUNConfig{Name: "gnio-pmtun", MTU: 1500, Addrs: []netip.Prefix{netip.MustParsePrefix("10.231.18.1/24")}}); err != nil {
			return err
		}
		return nil
	})
	defer tn.Close()
	nettest.MustExec(t, ns, "ip", "route", "add", "10.231.19.0/24", "dev", "gnio-pmtun")
	nettest.MustDo(t, ns, func() (err error) {
		c, err = net.Dial("udp4", netip.AddrPortFrom(remote, 9).String())
		return err
	})
	defer c.Close()
	// Connected UDP sockets default to IP_PMTUDISC_WANT: DF set.
	if _, err := c.Write(make([]byte, 1300)); err != nil {
		t.Fatal(err)
	}
	bufs := make([][]byte, tn.BatchSize())
	for i := range bufs {
		bufs[i] = make([]byte, Headroom+65536)
	}
	sizes := make([]int, len(bufs))
	timer := time.AfterFunc(3*time.Second, func() { tn.Close() })
	defer timer.Stop()
	var pkt []byte
	for pkt == nil {
		n, err := tn.Read(bufs, sizes, Headroom)
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < n; i++ {
			p := bufs[i][Headroom : Headroom+sizes[i]]
			if len(p) == 1328 && p[9] == iphdr.ProtoUDP {
				pkt = p
			}
		}
	}
	reply := make([]byte, Headroom+FragNeededMax)
	n, err := FragNeeded(reply[Headroom:], pkt, 1200, netip.MustParseAddr("10.231.18.254"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tn.Write([][]byte{reply[:Headroom+n]}, Headroom); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		out := nettest.MustExec(t, ns, "ip", "route", "get", remote.String())
		if strings.Contains(out, "mtu 1200") {
			t.Logf("kernel took the frag-needed: %s", strings.TrimSpace(out))
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kernel did not lower the path MTU: %s", out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
