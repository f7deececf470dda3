package main

import (
	"encoding/binary"
	"net"
	"net/netip"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
)

// TestFill: unknown-spi packets get consecutive SPIs, bad-icv packets the
// one SA's SPI; both get consecutive sequence numbers, never 0, and keep
// their random body.
func TestFill(t *testing.T) {
	for _, tc := range []struct {
		mode     Mode
		spi, seq uint32
		k        uint64
		head     int
		wantSPI  []uint32
		wantSeq  []uint32
	}{
		{UnknownSPI, 0xf1000000, 0x80000000, 0, 0, []uint32{0xf1000000, 0xf1000001, 0xf1000002}, []uint32{0x80000000, 0x80000001, 0x80000002}},
		{UnknownSPI, 0xf1000000, 1, 64, 0, []uint32{0xf1000040, 0xf1000041, 0xf1000042}, []uint32{65, 66, 67}},
		{BadICV, 0x2001, 0xfffffffe, 0, 0, []uint32{0x2001, 0x2001, 0x2001}, []uint32{0xfffffffe, 0xffffffff, 1}},
		{BadICV, 0x2001, 7, 0, ethIPHeaders, []uint32{0x2001, 0x2001, 0x2001}, []uint32{7, 8, 9}},
	} {
		b, whole, err := newBatch(3, 124, tc.head)
		if err != nil {
			t.Fatal(err)
		}
		for i := range whole {
			if len(whole[i]) != tc.head+8+124 || &whole[i][tc.head] != &b.bufs[i][0] {
				t.Fatalf("head %d: packet %d does not end its frame of %d bytes", tc.head, i, len(whole[i]))
			}
		}
		body := append([]byte(nil), b.bufs[1][8:]...)
		b.fill(tc.mode, tc.spi, tc.seq, tc.k)
		for i, buf := range b.bufs {
			if len(buf) != 8+124 {
				t.Fatalf("%s: packet %d is %d bytes", tc.mode, i, len(buf))
			}
			if spi := binary.BigEndian.Uint32(buf); spi != tc.wantSPI[i] {
				t.Errorf("%s k=%d: packet %d SPI %#x, want %#x", tc.mode, tc.k, i, spi, tc.wantSPI[i])
			}
			if seq := binary.BigEndian.Uint32(buf[4:]); seq != tc.wantSeq[i] {
				t.Errorf("%s k=%d: packet %d seq %#x, want %#x", tc.mode, tc.k, i, seq, tc.wantSeq[i])
			}
		}
		if string(b.bufs[1][8:]) != string(body) {
			t.Errorf("%s: fill changed the body", tc.mode)
		}
	}
}

// TestParseSPI: SPIs are hex as gosec status prints them (a leading 0 is
// not octal).
func TestParseSPI(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"00002001", 0x2001, true}, {"0x2001", 0x2001, true}, {"0XF1000000", 0xf1000000, true},
		{"", 0, false}, {"0x", 0, false}, {"100000000", 0, false}, {"12g", 0, false},
	} {
		got, err := parseSPI(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseSPI(%q) = %#x, %v; want %#x, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

// TestPutHeaders: an AF_PACKET frame carries the Ethernet addresses and
// type, and an IPv4 header for ESP with the right length and a checksum
// that verifies.
func TestPutHeaders(t *testing.T) {
	dstMAC, _ := net.ParseMAC("02:00:5e:00:00:99")
	srcMAC, _ := net.ParseMAC("02:00:5e:00:00:01")
	src, dst := netip.MustParseAddr("198.51.100.2"), netip.MustParseAddr("192.0.2.2")
	for _, size := range []int{16, 124, 1400} {
		f := make([]byte, ethIPHeaders+8+size)
		putHeaders(f, dstMAC, srcMAC, src, dst)
		ip := f[14:ethIPHeaders]
		switch {
		case string(f[0:6]) != string(dstMAC) || string(f[6:12]) != string(srcMAC):
			t.Errorf("size %d: MACs % x", size, f[0:12])
		case binary.BigEndian.Uint16(f[12:]) != 0x0800:
			t.Errorf("size %d: ethertype %#x", size, binary.BigEndian.Uint16(f[12:]))
		case ip[0] != 0x45 || ip[9] != 50 || ip[8] != 64:
			t.Errorf("size %d: version/IHL %#x, protocol %d, TTL %d", size, ip[0], ip[9], ip[8])
		case int(binary.BigEndian.Uint16(ip[2:])) != 20+8+size:
			t.Errorf("size %d: total length %d", size, binary.BigEndian.Uint16(ip[2:]))
		case netip.AddrFrom4([4]byte(ip[12:16])) != src || netip.AddrFrom4([4]byte(ip[16:20])) != dst:
			t.Errorf("size %d: addresses % x", size, ip[12:20])
		case iphdr.Checksum(ip) != 0:
			t.Errorf("size %d: header checksum does not verify (%#x)", size, iphdr.Checksum(ip))
		}
	}
}
