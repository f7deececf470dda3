package main

import (
	"encoding/binary"
	"net"
	"testing"
)

// TestFill: unknown-spi packets get consecutive SPIs, bad-icv packets the
// one SA's SPI; both get consecutive sequence numbers, never 0, and keep
// their random body.
func TestFill(t *testing.T) {
	dst := &net.IPAddr{IP: net.IPv4(192, 0, 2, 2)}
	for _, tc := range []struct {
		mode     Mode
		spi, seq uint32
		k        uint64
		wantSPI  []uint32
		wantSeq  []uint32
	}{
		{UnknownSPI, 0xf1000000, 0x80000000, 0, []uint32{0xf1000000, 0xf1000001, 0xf1000002}, []uint32{0x80000000, 0x80000001, 0x80000002}},
		{UnknownSPI, 0xf1000000, 1, 64, []uint32{0xf1000040, 0xf1000041, 0xf1000042}, []uint32{65, 66, 67}},
		{BadICV, 0x2001, 0xfffffffe, 0, []uint32{0x2001, 0x2001, 0x2001}, []uint32{0xfffffffe, 0xffffffff, 1}},
	} {
		b, err := newBatch(3, 124, dst)
		if err != nil {
			t.Fatal(err)
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
