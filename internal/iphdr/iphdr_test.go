package iphdr

import (
	"encoding/hex"
	"testing"
)

func TestChecksumKnown(t *testing.T) {
	// A classic IPv4 header whose checksum is 0xb861.
	h, _ := hex.DecodeString("450000730000400040110000c0a80001c0a800c7")
	SetChecksum(h)
	if got := uint16(h[10])<<8 | uint16(h[11]); got != 0xb861 {
		t.Fatalf("checksum %#04x, want 0xb861", got)
	}
	if Checksum(h) != 0 {
		t.Fatal("a header with a valid checksum must sum to zero")
	}
}

func TestHeaderLen(t *testing.T) {
	good, _ := hex.DecodeString("450000140000400040110000c0a80001c0a800c7")
	tests := []struct {
		name string
		pkt  []byte
		err  error
	}{
		{"good", good, nil},
		{"short", good[:19], ErrTruncated},
		{"v6", append([]byte{0x60}, good[1:]...), ErrVersion},
		{"ihl4", append([]byte{0x44}, good[1:]...), ErrIHL},
		{"ihl-too-big", append([]byte{0x46}, good[1:]...), ErrIHL},
		{"total-too-big", append(append([]byte{}, good[:2]...), append([]byte{0, 0x30}, good[4:]...)...), ErrTotalLen},
	}
	for _, tc := range tests {
		_, _, err := HeaderLen(tc.pkt)
		if err != tc.err {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.err)
		}
	}
}
