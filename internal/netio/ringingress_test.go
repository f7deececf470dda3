package netio

import (
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// TestIngressBypass shows what the ingress bypass keeps from the IP stack
// and what it leaves to it. Whole ESP and AH packets of admitted SPIs for
// one of the host's addresses reach the ring and are dropped at tc
// ingress (the prerouting chain never counts them); those of unknown SPIs
// reach neither the ring nor the stack, counted as the gate's at ingress;
// fragments, a destination made local by a wider local route, and
// anything not IPv4 go on as before; an address added later is followed;
// after the SPI filter opens the prerouting chain does the work again.
// Each packet the raw socket must not get is followed by one it must
// (fragmented, so the stack reassembles it), which has to be its next.
func TestIngressBypass(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "grx-i", netip.MustParsePrefix("10.231.180.0/24"))
	wide := netip.MustParseAddr("10.231.181.5")  // local through a /24 local route
	later := netip.MustParseAddr("10.231.182.7") // added after the bypass
	nettest.MustExec(t, p.B.NS, "ip", "route", "add", "local", "10.231.181.0/24", "dev", "lo")
	for _, dst := range []string{"10.231.181.0/24", "10.231.182.0/24"} {
		nettest.MustExec(t, p.A.NS, "ip", "route", "add", dst, "via", p.BAddr.String())
	}
	ring := openRing(t, p.B.NS, iphdr.ProtoESP, iphdr.ProtoAH)
	const admitted, unknown = 0x100, 0x200
	var (
		f       *Filter
		gate    *SPIGate
		spis    *RingSPIs
		ing     *IngressBypass
		esp, ah *RawConn
		tx      *RawConn
		bMAC    net.HardwareAddr
		aIndex  int
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
		if spis, err = ring.FilterSPIs(); err != nil {
			return err
		}
		if err := gate.MirrorTo(spis); err != nil {
			return err
		}
		if err := gate.BypassRing(); err != nil {
			return err
		}
		if ing, err = spis.BypassIngress(); err != nil {
			return err
		}
		if esp, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP}); err != nil {
			return err
		}
		if ah, err = ListenRaw(RawConfig{Proto: iphdr.ProtoAH}); err != nil {
			return err
		}
		ifi, err := net.InterfaceByName(p.B.Name)
		if err == nil {
			bMAC = ifi.HardwareAddr
		}
		return err
	})
	nettest.MustDo(t, p.A.NS, func() (err error) {
		if tx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP, Buffer: 1 << 20}); err != nil {
			return err
		}
		ifi, err := net.InterfaceByName(p.A.Name)
		if err == nil {
			aIndex = ifi.Index
		}
		return err
	})
	t.Cleanup(func() {
		for _, c := range []interface{ Close() error }{esp, ah, tx, spis, gate, f} {
			c.Close()
		}
	})

	send := func(dst netip.Addr, proto uint8, spi uint32, i, size int, fragmented bool) {
		t.Helper()
		sendPacket(t, tx, spiPacket(p.AAddr, dst, proto, spi, i, size), fragmented)
	}
	rawNext := func(c *RawConn, what string, size int) {
		t.Helper()
		b := next(t, c.s)
		if len(b) != size {
			t.Fatalf("%s: the raw socket's next packet has %d octets, want %d (a dropped packet reached the stack, or none came)", what, len(b), size)
		}
	}
	ringNext := func(what string, sizes ...int) {
		t.Helper()
		got := ringRecvN(t, ring, len(sizes), len(sizes), 3*time.Second)
		for i, m := range got {
			if m.N != sizes[i] {
				t.Fatalf("%s: ring packet %d has %d octets, want %d", what, i, m.N, sizes[i])
			}
		}
	}
	// counts checks the ingress counters and the prerouting chain's.
	counts := func(what string, bypassed, gateESP, gateAH, prerouting uint64) {
		t.Helper()
		ic, err := ing.Counts()
		if err != nil {
			t.Fatalf("%s: ingress counts: %v", what, err)
		}
		gc, err := gate.Counts()
		if err != nil {
			t.Fatalf("%s: gate counts: %v", what, err)
		}
		if ic.Bypassed != bypassed || ic.ESP != gateESP || ic.AH != gateAH || gc.RingBypass != prerouting || gc.ESP != 0 || gc.AH != 0 {
			t.Fatalf("%s: ingress %+v, gate %+v; want ingress %d bypassed, %d ESP and %d AH of unknown SPIs, %d bypassed at prerouting, none gated there",
				what, ic, gc, bypassed, gateESP, gateAH, prerouting)
		}
		if want := []string{p.B.Name}; !slices.Equal(ic.Interfaces, want) {
			t.Fatalf("%s: attached to %v, want %v", what, ic.Interfaces, want)
		}
	}

	send(p.BAddr, iphdr.ProtoESP, admitted, 1, 300, false)
	send(p.BAddr, iphdr.ProtoESP, admitted, 2, 1800, true)
	rawNext(esp, "ESP of an admitted SPI, whole then fragmented", 1800)
	ringNext("ESP of an admitted SPI", 300, 1800)
	counts("ESP of an admitted SPI", 1, 0, 0, 0)

	send(p.BAddr, iphdr.ProtoESP, unknown, 3, 400, false)
	send(p.BAddr, iphdr.ProtoESP, admitted, 4, 1700, true)
	rawNext(esp, "ESP of an unknown SPI, then a fragmented admitted one", 1700)
	ringNext("ESP of an unknown SPI", 1700)
	counts("ESP of an unknown SPI", 1, 1, 0, 0)

	send(p.BAddr, iphdr.ProtoAH, admitted, 5, 320, false)
	send(p.BAddr, iphdr.ProtoAH, unknown, 6, 330, false)
	send(p.BAddr, iphdr.ProtoAH, admitted, 7, 1900, true)
	rawNext(ah, "AH of an admitted then an unknown SPI, then a fragmented admitted one", 1900)
	ringNext("AH", 320, 1900)
	counts("AH", 2, 1, 1, 0)

	// A destination local through a wider local route is not in the
	// program's map: the prerouting chain drops it.
	send(wide, iphdr.ProtoESP, admitted, 8, 360, false)
	send(p.BAddr, iphdr.ProtoESP, admitted, 9, 1600, true)
	rawNext(esp, "ESP to an address of a local /24, then a fragmented one", 1600)
	ringNext("ESP to an address of a local /24", 360, 1600)
	counts("ESP to an address of a local /24", 2, 1, 1, 1)

	// Not IPv4, with an IPv4 ESP packet as its payload: not the ring's.
	frame := append(append(append([]byte{}, bMAC...), 2, 0, 0, 0, 0, 1, 0x88, 0xb5),
		spiPacket(p.AAddr, p.BAddr, iphdr.ProtoESP, admitted, 10, 370)...)
	sendFrame := func() {
		t.Helper()
		nettest.MustDo(t, p.A.NS, func() error {
			fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				return err
			}
			defer unix.Close(fd)
			return unix.Sendto(fd, frame, 0, &unix.SockaddrLinklayer{Ifindex: aIndex, Halen: 6, Addr: [8]byte(append(append([]byte{}, bMAC...), 0, 0))})
		})
	}
	sendFrame()
	send(p.BAddr, iphdr.ProtoESP, admitted, 11, 380, false)
	ringNext("an IPv4 packet in a frame of another protocol, then ESP", 380)
	counts("an IPv4 packet in a frame of another protocol", 3, 1, 1, 1)

	// An address added later is followed.
	nettest.MustExec(t, p.B.NS, "ip", "addr", "add", later.String()+"/32", "dev", p.B.Name)
	deadline := time.Now().Add(3 * time.Second)
	for {
		ing.mu.Lock()
		_, ok := ing.inMap[later.As4()]
		ing.mu.Unlock()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v added to %s: not in the program's map after 3 s", later, p.B.Name)
		}
		time.Sleep(10 * time.Millisecond)
	}
	send(later, iphdr.ProtoESP, admitted, 12, 390, false)
	send(later, iphdr.ProtoESP, admitted, 13, 1500, true)
	rawNext(esp, "ESP to an address added later", 1500)
	ringNext("ESP to an address added later", 390, 1500)
	counts("ESP to an address added later", 4, 1, 1, 1)

	// The SPI filter opening ends the bypass: the prerouting chain drops
	// what the ring took, and the gate's early rule the unknown SPIs.
	if err := spis.Open(); err != nil {
		t.Fatal(err)
	}
	if spis.Ingress() != nil {
		t.Fatal("the ingress bypass outlived the SPI filter's opening")
	}
	if _, err := ing.Counts(); err == nil {
		t.Fatal("counts of a closed ingress bypass: no error")
	}
	send(p.BAddr, iphdr.ProtoESP, admitted, 14, 410, false)
	send(p.BAddr, iphdr.ProtoESP, admitted, 15, 1400, true)
	rawNext(esp, "ESP after the SPI filter opened", 1400)
	ringNext("ESP after the SPI filter opened", 410, 1400)
	if c, err := gate.Counts(); err != nil || c.RingBypass != 2 {
		t.Fatalf("after the SPI filter opened: gate counts %+v, %v; want 2 bypassed at prerouting", c, err)
	}
	// The classic filter, back in place, does not take it either.
	sendFrame()
	send(p.BAddr, iphdr.ProtoESP, admitted, 16, 420, false)
	ringNext("an IPv4 packet in a frame of another protocol, then ESP, with the classic filter", 420)
}
