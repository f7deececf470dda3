package dataplane

import (
	"bytes"
	"encoding/binary"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/google/gopacket"
	"github.com/google/gopacket/ip4defrag"
	"github.com/google/gopacket/layers"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
)

// datagram builds an IPv4/UDP datagram of size bytes.
func datagram(size int, id uint16) []byte {
	p := make([]byte, size)
	p[0] = 0x45
	binary.BigEndian.PutUint16(p[2:], uint16(size))
	binary.BigEndian.PutUint16(p[4:], id)
	p[8], p[9] = 64, 17
	copy(p[12:], []byte{192, 0, 2, 1, 192, 0, 2, 2})
	r := rand.NewChaCha8([32]byte{byte(size)})
	r.Read(p[20:])
	iphdr.SetChecksum(p[:20])
	return p
}

// TestFragmentOuterAgainstGopacket: gopacket's ip4defrag (an independent
// reassembler) puts gosec's outer fragments back together byte for byte.
func TestFragmentOuterAgainstGopacket(t *testing.T) {
	for _, size := range []int{1600, 3000, 8000, 65000} { // gopacket refuses last fragments under 8 bytes
		orig := datagram(size, 0x1234)
		frags := fragmentOuter(orig, 1500, make([]byte, 256<<10), nil)
		if len(frags) < 2 {
			t.Fatalf("%d bytes: %d fragments", size, len(frags))
		}
		d := ip4defrag.NewIPv4Defragmenter()
		var whole *layers.IPv4
		for _, f := range frags {
			if len(f) > 1500 {
				t.Fatalf("fragment of %d bytes", len(f))
			}
			pkt := gopacket.NewPacket(f, layers.LayerTypeIPv4, gopacket.Default)
			ip := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
			out, err := d.DefragIPv4(ip)
			if err != nil {
				t.Fatal(err)
			}
			if out != nil {
				whole = out
			}
		}
		if whole == nil {
			t.Fatalf("%d bytes: gopacket did not reassemble", size)
		}
		if !bytes.Equal(whole.Payload, orig[20:]) {
			t.Fatalf("%d bytes: payload differs after gopacket's reassembly", size)
		}
	}
}

// TestReassembler: fragments in order, reversed and shuffled come back as
// the original datagram; overlaps and inconsistencies are refused.
func TestReassembler(t *testing.T) {
	now := time.Unix(1e9, 0)
	r := newReassembler(func() time.Time { return now })
	for _, order := range []string{"in order", "reversed", "shuffled"} {
		orig := datagram(4000, 77)
		frags := fragmentOuter(orig, 1400, make([]byte, 64<<10), nil)
		switch order {
		case "reversed":
			for i, j := 0, len(frags)-1; i < j; i, j = i+1, j-1 {
				frags[i], frags[j] = frags[j], frags[i]
			}
		case "shuffled":
			frags[0], frags[1] = frags[1], frags[0]
		}
		var got []byte
		for i, f := range frags {
			buf, off, n, ok, bad := r.add(f)
			if bad {
				t.Fatalf("%s: fragment %d refused", order, i)
			}
			if ok {
				if i != len(frags)-1 {
					t.Fatalf("%s: complete after %d of %d fragments", order, i+1, len(frags))
				}
				got = buf[off : off+n]
				if off < 64 {
					t.Fatalf("only %d bytes of headroom", off)
				}
			}
		}
		if !bytes.Equal(got[20:], orig[20:]) || binary.BigEndian.Uint16(got[2:]) != 4000 || binary.BigEndian.Uint16(got[6:]) != 0 {
			t.Fatalf("%s: reassembled datagram differs", order)
		}
		if iphdr.Checksum(got[:20]) != 0 {
			t.Fatalf("%s: bad header checksum", order)
		}
		r.release()
	}
	// Overlap: the same fragment twice.
	frags := fragmentOuter(datagram(3000, 78), 1400, make([]byte, 64<<10), nil)
	r.add(frags[0])
	if _, _, _, _, bad := r.add(frags[0]); !bad {
		t.Fatal("overlapping fragment accepted")
	}
	// A lost fragment times out and frees its slot.
	for i := 0; i < reasmSlots; i++ {
		f := fragmentOuter(datagram(3000, uint16(100+i)), 1400, make([]byte, 64<<10), nil)
		if _, _, _, _, bad := r.add(f[0]); bad {
			t.Fatalf("slot %d refused", i)
		}
	}
	f := fragmentOuter(datagram(3000, 999), 1400, make([]byte, 64<<10), nil)
	if _, _, _, _, bad := r.add(f[0]); !bad {
		t.Fatal("a 17th pending datagram got a slot")
	}
	now = now.Add(reasmTimeout + time.Second)
	if _, _, _, _, bad := r.add(f[0]); bad {
		t.Fatal("expired slots were not reused")
	}
}
