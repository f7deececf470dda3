package netio

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// spiPacket returns an ESP (SPI at 20) or AH (SPI at 24, after next
// header and length) packet of size octets from src to dst, numbered i
// (numbered's pattern); below 28 octets it has no room for an SPI.
func spiPacket(src, dst netip.Addr, proto uint8, spi uint32, i, size int) []byte {
	b := numbered(src, dst, proto, i, max(size, 32))[:size]
	binary.BigEndian.PutUint16(b[iphdr.OffTotalLen:], uint16(size))
	switch {
	case size < 28: // no room for an SPI
	case proto == iphdr.ProtoAH:
		b[20], b[21] = 4, 4
		binary.BigEndian.PutUint32(b[24:], spi)
		if size >= 32 {
			binary.BigEndian.PutUint32(b[28:], uint32(i))
		}
	default:
		binary.BigEndian.PutUint32(b[20:], spi)
	}
	iphdr.SetChecksum(b[:20])
	return b
}

// sendPacket sends pkt through tx, whole or in 1200-octet fragments.
func sendPacket(t *testing.T, tx *RawConn, pkt []byte, fragmented bool) {
	t.Helper()
	ms := []Msg{{Buf: pkt}}
	if fragmented {
		ms = ms[:0]
		for _, fr := range fragments(pkt, 1200) {
			ms = append(ms, Msg{Buf: fr})
		}
	}
	if n, err := tx.Send(ms); err != nil || n != len(ms) {
		t.Fatalf("sent %d of %d: %v", n, len(ms), err)
	}
}

// TestRingBypass shows what SPIGate.BypassRing keeps from the IP stack:
// whole ESP and AH packets of admitted SPIs reach the ring and no longer
// the raw sockets (the stack dropped them at prerouting, and counted
// them); fragments of them are still reassembled by the stack (the raw
// socket gets them) while the ring gets its own reassembled copy; unknown
// SPIs are still judged by the gate at INPUT; after RemoveBypass the stack
// processes everything again. Each packet the stack must not deliver is
// followed by one it must, which has to be the raw socket's next.
func TestRingBypass(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "grx-b", netip.MustParsePrefix("10.231.175.0/24"))
	ring := openRing(t, p.B.NS, iphdr.ProtoESP, iphdr.ProtoAH)
	const admitted, unknown = 0x100, 0x200
	var (
		f       *Filter
		gate    *SPIGate
		esp, ah *RawConn
		tx      *RawConn
	)
	nettest.MustDo(t, p.B.NS, func() (err error) {
		if f, err = NewFilter(FilterConfig{TUN: "hf-none"}); err != nil {
			return err
		}
		if gate, err = NewSPIGate(SPIGateConfig{Filter: f}); err != nil {
			return err
		}
		if err := gate.Admit(admitted, p.AAddr); err != nil {
			return err
		}
		if err := gate.BypassRing(); err != nil {
			return err
		}
		if err := gate.BypassRing(); err != nil { // a second call changes nothing
			return err
		}
		if esp, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP}); err != nil {
			return err
		}
		ah, err = ListenRaw(RawConfig{Proto: iphdr.ProtoAH})
		return err
	})
	nettest.MustDo(t, p.A.NS, func() (err error) {
		tx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP, Buffer: 1 << 20})
		return err
	})
	t.Cleanup(func() {
		for _, c := range []interface{ Close() error }{esp, ah, tx, gate, f} {
			c.Close()
		}
	})

	packet := func(proto uint8, spi uint32, i, size int) []byte {
		return spiPacket(p.AAddr, p.BAddr, proto, spi, i, size)
	}
	send := func(pkt []byte, fragmented bool) {
		t.Helper()
		sendPacket(t, tx, pkt, fragmented)
	}
	// rawNext: the raw socket's next packet has size octets.
	rawNext := func(c *RawConn, what string, size int) {
		t.Helper()
		b := next(t, c.s)
		if len(b) != size {
			t.Fatalf("%s: the raw socket's next packet has %d octets, want %d (a bypassed or gated packet reached it, or none came)", what, len(b), size)
		}
	}
	// ringNext: the ring's next packets have these sizes.
	ringNext := func(what string, sizes ...int) {
		t.Helper()
		got := ringRecvN(t, ring, len(sizes), len(sizes), 3*time.Second)
		for i, m := range got {
			if m.N != sizes[i] {
				t.Fatalf("%s: ring packet %d has %d octets, want %d", what, i, m.N, sizes[i])
			}
		}
	}

	send(packet(iphdr.ProtoESP, admitted, 1, 300), false)
	send(packet(iphdr.ProtoESP, admitted, 2, 1800), true)
	rawNext(esp, "ESP of an admitted SPI, whole then fragmented", 1800)
	ringNext("ESP of an admitted SPI", 300, 1800)

	send(packet(iphdr.ProtoESP, unknown, 3, 400), false)
	send(packet(iphdr.ProtoESP, admitted, 4, 1700), true)
	rawNext(esp, "ESP of an unknown SPI (the gate's), then a fragmented admitted one", 1700)
	ringNext("ESP of an unknown SPI", 400, 1700)

	send(packet(iphdr.ProtoAH, admitted, 5, 320), false)
	send(packet(iphdr.ProtoAH, admitted, 6, 1900), true)
	rawNext(ah, "AH of an admitted SPI, whole then fragmented", 1900)
	ringNext("AH of an admitted SPI", 320, 1900)

	// Unknown SPIs: a whole packet is the gate's in the bypass chain, a
	// fragmented one at INPUT (reassembled); neither reaches the raw
	// socket, the ring (no SPI filter here) takes both.
	send(packet(iphdr.ProtoESP, unknown, 8, 1600), true)
	send(packet(iphdr.ProtoAH, unknown, 9, 330), false)
	send(packet(iphdr.ProtoAH, admitted, 10, 1500), true)
	rawNext(ah, "unknown SPIs (ESP fragmented, AH whole), then a fragmented admitted AH", 1500)
	ringNext("unknown SPIs", 1600, 330, 1500)

	c, err := gate.Counts()
	if err != nil {
		t.Fatal(err)
	}
	if !c.Bypassing || c.RingBypass != 2 || c.ESP != 2 || c.AH != 1 || c.Prerouting != 2 {
		t.Fatalf("counts %+v: want the bypass in place, 2 packets bypassed (ESP and AH whole), 2 unknown ESP SPIs gated and 1 AH, the 2 whole ones at prerouting", c)
	}

	// The gate opening (after a set it could not change) takes its early
	// drops out of the bypass chain and leaves the bypass.
	func() {
		gate.mu.Lock()
		defer gate.mu.Unlock()
		defer gate.lockNL()()
		if err := gate.failOpen(errors.New("test")); !errors.Is(err, ErrGateOpened) {
			t.Fatalf("failOpen: %v", err)
		}
	}()
	send(packet(iphdr.ProtoESP, unknown, 11, 410), false)
	send(packet(iphdr.ProtoESP, admitted, 12, 420), false)
	send(packet(iphdr.ProtoESP, unknown, 13, 430), false)
	rawNext(esp, "ESP of an unknown SPI with the gate open", 410)
	rawNext(esp, "ESP of an unknown SPI with the gate open, after a bypassed one", 430)
	ringNext("ESP with the gate open", 410, 420, 430)
	if c, err := gate.Counts(); err != nil || !c.Open || !c.Bypassing || c.RingBypass != 3 || c.Prerouting != 0 {
		t.Fatalf("with the gate open: counts %+v, %v; want open, bypassing, 3 bypassed and no early drop rule", c, err)
	}

	nettest.MustDo(t, p.B.NS, gate.RemoveBypass)
	send(packet(iphdr.ProtoESP, admitted, 7, 350), false)
	rawNext(esp, "ESP of an admitted SPI after RemoveBypass", 350)
	ringNext("ESP after RemoveBypass", 350)
	if c, err := gate.Counts(); err != nil || c.Bypassing || c.RingBypass != 0 {
		t.Fatalf("after RemoveBypass: counts %+v, %v", c, err)
	}
}

// TestRingSPIs: with the SPI filter mirroring the gate, only ESP and AH
// of admitted SPIs reach the ring (whole or reassembled from fragments;
// SPIs admitted before and after MirrorTo; a revoked SPI no longer), and
// after Open every SPI reaches it again. Each packet that must not arrive
// is followed by one that must, which has to be the ring's next.
func TestRingSPIs(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "grx-s", netip.MustParsePrefix("10.231.176.0/24"))
	ring := openRing(t, p.B.NS, iphdr.ProtoESP, iphdr.ProtoAH)
	var (
		f    *Filter
		gate *SPIGate
		spis *RingSPIs
		tx   *RawConn
	)
	nettest.MustDo(t, p.B.NS, func() (err error) {
		if f, err = NewFilter(FilterConfig{TUN: "hf-none"}); err != nil {
			return err
		}
		if gate, err = NewSPIGate(SPIGateConfig{Filter: f}); err != nil {
			return err
		}
		if err := gate.Admit(0x100, p.AAddr); err != nil {
			return err
		}
		if spis, err = ring.FilterSPIs(); err != nil {
			return err
		}
		if err := gate.MirrorTo(spis); err != nil {
			return err
		}
		return gate.Admit(0x300, p.AAddr)
	})
	nettest.MustDo(t, p.A.NS, func() (err error) {
		tx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP, Buffer: 1 << 20})
		return err
	})
	t.Cleanup(func() {
		for _, c := range []interface{ Close() error }{tx, spis, gate, f} {
			c.Close()
		}
	})
	send := func(proto uint8, spi uint32, size int, fragmented bool) {
		t.Helper()
		sendPacket(t, tx, spiPacket(p.AAddr, p.BAddr, proto, spi, 0, size), fragmented)
	}
	ringNext := func(what string, size int) {
		t.Helper()
		m := ringRecvN(t, ring, 1, 1, 3*time.Second)[0]
		if m.N != size {
			t.Fatalf("%s: the ring's next packet has %d octets, want %d", what, m.N, size)
		}
	}
	steps := []struct {
		what       string
		proto      uint8
		spi        uint32
		size       int
		fragmented bool
		arrives    bool
	}{
		{"ESP, unknown SPI", iphdr.ProtoESP, 0x200, 300, false, false},
		{"ESP, SPI admitted before MirrorTo", iphdr.ProtoESP, 0x100, 310, false, true},
		{"ESP, SPI admitted after MirrorTo", iphdr.ProtoESP, 0x300, 320, false, true},
		{"AH, unknown SPI", iphdr.ProtoAH, 0x200, 330, false, false},
		{"AH, admitted SPI", iphdr.ProtoAH, 0x100, 340, false, true},
		{"ESP, unknown SPI, fragmented", iphdr.ProtoESP, 0x200, 1700, true, false},
		{"ESP, admitted SPI, fragmented", iphdr.ProtoESP, 0x100, 1800, true, true},
		{"ESP too short for an SPI (the data plane counts it as malformed)", iphdr.ProtoESP, 0, 22, false, true},
	}
	for _, s := range steps {
		send(s.proto, s.spi, s.size, s.fragmented)
		if s.arrives {
			ringNext(s.what, s.size)
		}
	}
	nettest.MustDo(t, p.B.NS, func() error { return gate.Revoke(0x300, p.AAddr) })
	send(iphdr.ProtoESP, 0x300, 350, false)
	send(iphdr.ProtoESP, 0x100, 360, false)
	ringNext("ESP of a revoked SPI, then an admitted one", 360)
	if !spis.Filtering() {
		t.Fatal("Filtering() = false before Open")
	}
	if err := spis.Open(); err != nil {
		t.Fatal(err)
	}
	send(iphdr.ProtoESP, 0x200, 370, false)
	ringNext("ESP of an unknown SPI after Open", 370)
}

// failingMirror is an SPIMirror whose Put (and, with openFails, Open)
// fail.
type failingMirror struct {
	openFails bool
	opened    bool
	puts      int
}

func (m *failingMirror) Put(uint32) error {
	m.puts++
	return errors.New("put refused")
}
func (m *failingMirror) Delete(uint32) error { return nil }
func (m *failingMirror) Open() error {
	if m.openFails {
		return errors.New("open refused")
	}
	m.opened = true
	return nil
}

// TestSPIGateMirrorFailure: a mirror that cannot take an SPI is opened
// and the SA may be added (ErrMirrorOpened), the gate itself staying
// shut; if it cannot be opened either, Admit fails with another error
// and holds nothing.
func TestSPIGateMirrorFailure(t *testing.T) {
	testutil.NeedRoot(t)
	const ns = "grx-m"
	nettest.NewNS(t, ns)
	for _, openFails := range []bool{false, true} {
		var f *Filter
		var gate *SPIGate
		m := &failingMirror{openFails: openFails}
		var err error
		nettest.MustDo(t, ns, func() (err error) {
			if f, err = NewFilter(FilterConfig{TUN: "hf-none"}); err != nil {
				return err
			}
			if gate, err = NewSPIGate(SPIGateConfig{Filter: f}); err != nil {
				return err
			}
			if err := gate.MirrorTo(m); err != nil {
				return err
			}
			return nil
		})
		err = gate.Admit(0x1234, netip.MustParseAddr("192.0.2.9"))
		c, cerr := gate.Counts()
		if cerr != nil {
			t.Fatal(cerr)
		}
		if !openFails {
			if !errors.Is(err, ErrMirrorOpened) || !m.opened || c.Open || c.Admitted != 1 {
				t.Errorf("Put fails: err %v, mirror opened %v, counts %+v; want ErrMirrorOpened, the mirror open, the gate shut and the SPI held", err, m.opened, c)
			}
			// Once open, the mirror is left alone: no more puts, no error.
			if err := gate.Admit(0x1235, netip.MustParseAddr("192.0.2.9")); err != nil || m.puts != 1 {
				t.Errorf("an Admit after the mirror opened: %v, %d puts in all; want no error and 1 put", err, m.puts)
			}
		} else if err == nil || errors.Is(err, ErrMirrorOpened) || errors.Is(err, ErrGateOpened) || c.Admitted != 0 {
			t.Errorf("Put and Open fail: err %v, counts %+v; want a plain error and nothing held", err, c)
		}
		gate.Close()
		f.Close()
	}
}
