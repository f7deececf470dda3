package netio

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

func TestSPIRefs(t *testing.T) {
	r := spiRefs{}
	steps := []struct {
		op        string
		spi       uint32
		want      bool // first hold (add) / last hold (del)
		wantCount int
	}{
		{"add", 0x1001, true, 1},
		{"add", 0x1001, false, 1},
		{"add", 0x2002, true, 2},
		{"del", 0x1001, false, 2},
		{"del", 0x1001, true, 1},
		{"del", 0x1001, false, 1}, // no hold left: nothing to remove
		{"del", 0x3003, false, 1}, // never held
		{"del", 0x2002, true, 0},
		{"add", 0x2002, true, 1},
	}
	for i, s := range steps {
		var got bool
		if s.op == "add" {
			got = r.add(s.spi)
		} else {
			got = r.del(s.spi)
		}
		if got != s.want || r.len() != s.wantCount {
			t.Fatalf("step %d: %s %08x = %v with %d SPIs held, want %v with %d", i, s.op, s.spi, got, r.len(), s.want, s.wantCount)
		}
	}
}

// gateRig is namespace B with a Filter, an SPIGate and the sockets gosec
// has (raw ESP, raw AH, UDP 4500), and namespace A sending at it.
type gateRig struct {
	t           *testing.T
	p           *nettest.Pair
	gate        *SPIGate
	esp, ah     *RawConn
	natt, other *UDPConn
	tx          *RawConn
	utx         *UDPConn
}

const gateNATT = 4500

func newGateRig(t *testing.T) *gateRig {
	testutil.NeedRoot(t)
	r := &gateRig{t: t, p: nettest.NewPair(t, "hf-sg", netip.MustParsePrefix("10.231.77.0/24"))}
	var f *Filter
	nettest.MustDo(t, r.p.B.NS, func() (err error) {
		if f, err = NewFilter(FilterConfig{TUN: "hf-none"}); err != nil {
			return err
		}
		// A second gate replaces the first one's chain and set.
		g, err := NewSPIGate(SPIGateConfig{Filter: f, NATTPort: gateNATT})
		if err != nil {
			return err
		}
		if err := g.Admit(0x7777, r.p.AAddr); err != nil {
			return err
		}
		// Abandoned, not closed: its chain and set stay.
		if r.gate, err = NewSPIGate(SPIGateConfig{Filter: f, NATTPort: gateNATT}); err != nil {
			return err
		}
		if r.esp, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP}); err != nil {
			return err
		}
		if r.ah, err = ListenRaw(RawConfig{Proto: iphdr.ProtoAH}); err != nil {
			return err
		}
		if r.natt, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), gateNATT)}); err != nil {
			return err
		}
		r.other, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(netip.IPv4Unspecified(), gateNATT+1)})
		return err
	})
	nettest.MustDo(t, r.p.A.NS, func() (err error) {
		if r.tx, err = ListenRaw(RawConfig{Proto: 253}); err != nil {
			return err
		}
		r.utx, err = ListenUDP(UDPConfig{Addr: netip.AddrPortFrom(r.p.AAddr, 0)})
		return err
	})
	t.Cleanup(func() {
		for _, c := range []interface{ Close() error }{r.esp, r.ah, r.natt, r.other, r.tx, r.utx, r.gate, f} {
			c.Close()
		}
	})
	return r
}

// sendIP sends an IPv4 packet of protocol proto from A to B whose
// payload starts with spi at offset off (ESP 0, AH 4).
func (r *gateRig) sendIP(proto uint8, spi uint32) {
	r.t.Helper()
	b := make([]byte, 20+48)
	iphdr.PutIPv4(b, &iphdr.Outer{Src: r.p.AAddr.As4(), Dst: r.p.BAddr.As4(), TTL: 64, ID: 1}, proto, len(b))
	if proto == iphdr.ProtoAH {
		b[20], b[21] = 4, 4 // next header, payload length
		binary.BigEndian.PutUint32(b[24:], spi)
	} else {
		binary.BigEndian.PutUint32(b[20:], spi)
	}
	if _, err := r.tx.Send([]Msg{{Buf: b}}); err != nil {
		r.t.Fatal(err)
	}
}

// sendUDP sends payload from A to B's port.
func (r *gateRig) sendUDP(port uint16, payload []byte) {
	r.t.Helper()
	if _, err := r.utx.Send([]Msg{{Buf: payload, To: netip.AddrPortFrom(r.p.BAddr, port)}}); err != nil {
		r.t.Fatal(err)
	}
}

func espUDP(spi uint32) []byte { return binary.BigEndian.AppendUint32(make([]byte, 0, 40), spi)[:40] }

// next returns the next datagram s receives within 2 s (nil if none).
func next(t *testing.T, s *sock) []byte {
	t.Helper()
	if err := s.f.SetReadDeadline(time.Now().Add(2 * time.Second)); err != nil {
		t.Fatal(err)
	}
	ms := []Msg{{Buf: make([]byte, 2048)}}
	n, err := s.recv(ms)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return nil
	}
	if err != nil || n != 1 {
		t.Fatalf("recv: %d, %v", n, err)
	}
	return ms[0].Buf[:ms[0].N]
}

// spiAt reads the SPI of a received packet for kind ("esp", "ah": whole
// IPv4 packets; "udp": the UDP payload).
func spiAt(kind string, b []byte) uint32 {
	switch kind {
	case "esp":
		return binary.BigEndian.Uint32(b[20:])
	case "ah":
		return binary.BigEndian.Uint32(b[24:])
	}
	return binary.BigEndian.Uint32(b)
}

// TestSPIGate shows that B's kernel drops ESP, AH and ESP-in-UDP with an
// SPI that was not admitted before its sockets see them (each dropped
// packet is followed by an admitted one, which must be the next one the
// socket receives), that admitted SPIs, IKE's non-ESP marker, NAT-T
// keepalives and other UDP ports pass, that the counters count the drops,
// and that admissions are counted per hold.
func TestSPIGate(t *testing.T) {
	r := newGateRig(t)
	const good, bad = 0x1001, 0xdead0001
	other := netip.MustParseAddr("192.0.2.99") // an SA's peer that is not A
	if err := r.gate.Admit(good, other); err != nil {
		t.Fatal(err)
	}
	kinds := []struct {
		kind string
		sock *sock
		send func(spi uint32)
	}{
		{"esp", r.esp.s, func(spi uint32) { r.sendIP(iphdr.ProtoESP, spi) }},
		{"ah", r.ah.s, func(spi uint32) { r.sendIP(iphdr.ProtoAH, spi) }},
		{"udp", r.natt.s, func(spi uint32) { r.sendUDP(gateNATT, espUDP(spi)) }},
	}
	// expect sends spi (which must be dropped when dropped is set) and
	// then the admitted SPI, and checks what the socket sees first.
	expect := func(k int, spi uint32, dropped bool) {
		t.Helper()
		kd := kinds[k]
		kd.send(spi)
		kd.send(good)
		want := []uint32{spi, good}
		if dropped {
			want = want[1:]
		}
		for _, w := range want {
			b := next(t, kd.sock)
			if b == nil {
				t.Fatalf("%s: SPI %08x did not arrive", kd.kind, w)
			}
			if got := spiAt(kd.kind, b); got != w {
				t.Fatalf("%s: received SPI %08x, want %08x (dropped=%v for %08x)", kd.kind, got, w, dropped, spi)
			}
		}
	}
	for k := range kinds {
		expect(k, bad, true)
		expect(k, good, false)
		expect(k, bad+1, true)
	}
	c, err := r.gate.Counts()
	if err != nil {
		t.Fatal(err)
	}
	if c.ESP != 2 || c.AH != 2 || c.UDP != 2 || c.Total() != 6 || c.Admitted != 1 || c.Open {
		t.Fatalf("counts %+v, want 2 ESP, 2 AH, 2 UDP drops and 1 SPI admitted", c)
	}

	// What must pass on the NAT-T port whatever the set holds: IKE (the
	// non-ESP marker, four zero octets) and keepalives (one octet 0xff);
	// and ESP-looking payloads on another port are none of the gate's
	// business.
	ike := make([]byte, 40)
	ike[4] = 0x42
	for _, c := range []struct {
		name    string
		port    uint16
		payload []byte
		sock    *sock
	}{
		{"IKE with non-ESP marker", gateNATT, ike, r.natt.s},
		{"NAT-T keepalive", gateNATT, []byte{0xff}, r.natt.s},
		{"short datagram", gateNATT, []byte{1, 2, 3}, r.natt.s},
		{"unknown SPI to another port", gateNATT + 1, espUDP(bad), r.other.s},
	} {
		r.sendUDP(c.port, c.payload)
		b := next(t, c.sock)
		if string(b) != string(c.payload) {
			t.Fatalf("%s: received %x, want %x", c.name, b, c.payload)
		}
	}

	// Once A is an SA's peer, its ESP-in-UDP is the daemon's to judge
	// (a GRO train is judged by its first SPI, which a spoofer could
	// forge): an unknown SPI from A passes on UDP, not as raw ESP. When
	// the SA goes, the gate judges A's datagrams again.
	if err := r.gate.Admit(0x3003, r.p.AAddr); err != nil {
		t.Fatal(err)
	}
	expect(2, bad+2, false)
	expect(0, bad+2, true)
	if err := r.gate.Revoke(0x3003, r.p.AAddr); err != nil {
		t.Fatal(err)
	}
	expect(2, bad+3, true)

	// Holds: a second admission of the same SPI survives one revocation;
	// the last revocation closes the gate to it.
	if err := r.gate.Admit(good, other); err != nil {
		t.Fatal(err)
	}
	if err := r.gate.Revoke(good, other); err != nil {
		t.Fatal(err)
	}
	expect(0, good, false)
	if err := r.gate.Revoke(good, other); err != nil {
		t.Fatal(err)
	}
	if err := r.gate.Admit(0x2002, other); err != nil { // the sentinel from now on
		t.Fatal(err)
	}
	r.sendIP(iphdr.ProtoESP, good)
	r.sendIP(iphdr.ProtoESP, 0x2002)
	if b := next(t, r.esp.s); b == nil || spiAt("esp", b) != 0x2002 {
		t.Fatalf("after the last revocation of %08x: received %x, want only the packet of SPI 00002002", good, b)
	}
	if c, err := r.gate.Counts(); err != nil || c.ESP != 4 || c.UDP != 3 || c.Admitted != 1 {
		t.Fatalf("counts %+v, %v: want 4 ESP and 3 UDP drops, 1 SPI admitted", c, err)
	}
}
