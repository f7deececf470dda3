package dataplane

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/internal/testutil"
	"github.com/gosec-ipsec/gosec/sad"
)

// forged returns a sealed ESP packet from a to b, and copies of it with
// an unknown SPI and with a broken ICV.
func forged(t testing.TB) (a, b *side, good, unknownSPI, badICV []byte) {
	spec := specs()[1]
	a = newSide(t, gw1, gw2, lan1, lan2, sad.Tunnel, spec, 0x1001, 0x2001, false)
	b = newSide(t, gw2, gw1, lan2, lan1, sad.Tunnel, spec, 0x2001, 0x1001, false)
	src, n := icmpPacket(t, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2"), 1000)
	icmp := make([]byte, netio.TUNHeadroom+netio.FragNeededMax)
	out, _, _ := a.p.outbound(&a.outState, src, netio.Headroom, n, icmp)
	good = append([]byte(nil), out...)
	unknownSPI = append([]byte(nil), out...)
	binary.BigEndian.PutUint32(unknownSPI[20:], 0xdeadbeef)
	badICV = append([]byte(nil), out...)
	badICV[len(badICV)-1] ^= 1
	return a, b, good, unknownSPI, badICV
}

// forgedSmall returns, for b's inbound SA, packets a flood would send that
// the reader must drop before any cryptography (replayed: the sealed
// packet a second time, once b accepted it; short: too short for the
// suite) and a flood-sized (100-octet inner packet) one with a broken ICV.
func forgedSmall(t testing.TB) (b *side, replayed, short, badICVSmall []byte) {
	spec := specs()[1]
	a := newSide(t, gw1, gw2, lan1, lan2, sad.Tunnel, spec, 0x1001, 0x2001, false)
	b = newSide(t, gw2, gw1, lan2, lan1, sad.Tunnel, spec, 0x2001, 0x1001, false)
	seal := func(payload int) []byte {
		src, n := icmpPacket(t, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2"), payload)
		icmp := make([]byte, netio.TUNHeadroom+netio.FragNeededMax)
		out, _, _ := a.p.outbound(&a.outState, src, netio.Headroom, n, icmp)
		return append([]byte(nil), out...)
	}
	replayed = seal(1000)
	if b.p.inboundRaw(append([]byte(nil), replayed...)) == nil {
		t.Fatal("the sealed packet was not accepted the first time")
	}
	badICVSmall = seal(72)
	badICVSmall[len(badICVSmall)-1] ^= 1
	short = append([]byte(nil), badICVSmall[:20+8+8+10]...) // SPI, seq, IV, 10 octets: no room for the ICV
	binary.BigEndian.PutUint16(short[2:], uint16(len(short)))
	return b, replayed, short, badICVSmall
}

// TestEarlyDrops: replayed and short packets are dropped by the reader
// (rawPrepare), before the hand-off to the workers, with their reason.
func TestEarlyDrops(t *testing.T) {
	b, replayed, short, _ := forgedSmall(t)
	for _, tc := range []struct {
		name   string
		pkt    []byte
		reason drop.Reason
	}{{"replayed", replayed, drop.Replay}, {"short", short, drop.Malformed}} {
		before := b.p.Stats().Drops[tc.reason.String()]
		var e inElem
		if b.p.rawPrepare(append([]byte(nil), tc.pkt...), &e) {
			t.Errorf("%s: passed the reader's checks", tc.name)
		}
		if got := b.p.Stats().Drops[tc.reason.String()] - before; got != 1 {
			t.Errorf("%s: %d drops counted as %v, want 1", tc.name, got, tc.reason)
		}
	}
}

// TestDropAllocs: a flood of forged packets (unknown SPI, bad ICV) costs no
// allocation per dropped packet, logged or not, and each is counted.
func TestDropAllocs(t *testing.T) {
	if testutil.RaceEnabled {
		t.Skip("allocation counts are meaningless under -race")
	}
	_, b, _, unknownSPI, badICV := forged(t)
	buf := make([]byte, len(badICV))
	for _, tc := range []struct {
		name   string
		pkt    []byte
		reason drop.Reason
	}{{"unknown-spi", unknownSPI, drop.UnknownSPI}, {"icv", badICV, drop.ICV}} {
		run := func() {
			copy(buf, tc.pkt)
			if b.p.inboundRaw(buf[:len(tc.pkt)]) != nil {
				t.Fatal("forged packet accepted")
			}
		}
		before := b.p.Stats().Drops[tc.reason.String()]
		if allocs := testing.AllocsPerRun(1000, run); allocs != 0 {
			t.Errorf("%s: %v allocations per dropped packet", tc.name, allocs)
		}
		if got := b.p.Stats().Drops[tc.reason.String()] - before; got != 1001 {
			t.Errorf("%s: %d drops counted, want 1001", tc.name, got)
		}
	}
}

// TestLogGate: at most dropLogBurst lines per interval; the first line of
// the next interval reports how many were suppressed.
func TestLogGate(t *testing.T) {
	var g logGate
	now := int64(1e12)
	logged := 0
	for i := 0; i < 100; i++ {
		if _, ok := g.allow(now); ok {
			logged++
		}
	}
	if logged != dropLogBurst {
		t.Fatalf("%d lines in one interval, want %d", logged, dropLogBurst)
	}
	sup, ok := g.allow(now + dropLogInterval)
	if !ok || sup != 100-dropLogBurst {
		t.Fatalf("next interval: ok %v, suppressed %d; want %d", ok, sup, 100-dropLogBurst)
	}
}

// BenchmarkDrop measures the cost of dropping forged packets (the flood
// case of issue 12): allocations must stay 0. bad-icv is a 1 KB packet,
// bad-icv-small one of the flood's size (bench-flood sends 132 octets);
// replayed and short never reach the cryptography.
func BenchmarkDrop(b *testing.B) {
	_, big, good, unknownSPI, badICV := forged(b)
	_ = good
	small, replayed, short, badICVSmall := forgedSmall(b)
	for _, bc := range []struct {
		name string
		s    *side
		pkt  []byte
	}{{"unknown-spi", big, unknownSPI}, {"bad-icv", big, badICV}, {"bad-icv-small", small, badICVSmall},
		{"replayed", small, replayed}, {"short", small, short}} {
		b.Run(bc.name, func(b *testing.B) {
			buf := make([]byte, len(bc.pkt))
			b.SetBytes(int64(len(bc.pkt)))
			b.ReportAllocs()
			for i := 0; i < b.N; i++ {
				copy(buf, bc.pkt)
				bc.s.p.inboundRaw(buf)
			}
		})
	}
}
