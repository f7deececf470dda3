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
	l := newIngressLab(t, "grx-i", netip.MustParsePrefix("10.231.180.0/24"), false)
	p, ing, spis, gate, esp, ah := l.p, l.ing, l.spis, l.gate, l.esp, l.ah
	const admitted, unknown = ingressAdmitted, 0x200
	wide := netip.MustParseAddr("10.231.181.5")  // local through a /24 local route
	later := netip.MustParseAddr("10.231.182.7") // added after the bypass
	nettest.MustExec(t, p.B.NS, "ip", "route", "add", "local", "10.231.181.0/24", "dev", "lo")
	for _, dst := range []string{"10.231.181.0/24", "10.231.182.0/24"} {
		nettest.MustExec(t, p.A.NS, "ip", "route", "add", dst, "via", p.BAddr.String())
	}
	send, rawNext, ringNext, counts := l.send, l.rawNext, l.ringNext, l.counts
	bMAC, aIndex := l.bMAC, l.aIndex

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

// ingressAdmitted is the SPI an ingressLab's gate admits.
const ingressAdmitted = 0x100

// ingressLab is a namespace pair whose B end receives ESP and AH through a
// ring with its SPI filter, the gate's prerouting chain and an ingress
// bypass; A sends through a raw socket.
type ingressLab struct {
	t       *testing.T
	p       *nettest.Pair
	ring    *RxRing
	f       *Filter
	gate    *SPIGate
	spis    *RingSPIs
	ing     *IngressBypass
	esp, ah *RawConn
	tx      *RawConn
	// attached is the interface holding B's address; bMAC its address.
	attached string
	bMAC     net.HardwareAddr
	aIndex   int
	// interfaces are those the bypass should be on (counts).
	interfaces []string
}

// newIngressLab makes the pair; bridged puts B's end in a bridge that
// holds its address instead.
func newIngressLab(t *testing.T, prefix string, subnet netip.Prefix, bridged bool) *ingressLab {
	p := nettest.NewPair(t, prefix, subnet)
	l := &ingressLab{t: t, p: p, attached: p.B.Name}
	if bridged {
		l.attached = "gbr0"
		addr := p.B.Addr.String()
		for _, argv := range [][]string{
			{"ip", "link", "add", l.attached, "type", "bridge"},
			{"ip", "link", "set", p.B.Name, "master", l.attached},
			{"ip", "addr", "del", addr, "dev", p.B.Name},
			{"ip", "addr", "add", addr, "dev", l.attached},
			{"ip", "link", "set", l.attached, "up"},
		} {
			nettest.MustExec(t, p.B.NS, argv...)
		}
	}
	l.interfaces = []string{l.attached}
	l.ring = openRing(t, p.B.NS, iphdr.ProtoESP, iphdr.ProtoAH)
	nettest.MustDo(t, p.B.NS, func() (err error) {
		if l.f, err = NewFilter(FilterConfig{TUN: "hf-none"}); err != nil {
			return err
		}
		if l.gate, err = NewSPIGate(SPIGateConfig{Filter: l.f}); err != nil {
			return err
		}
		if err := l.gate.Admit(ingressAdmitted, p.AAddr); err != nil {
			return err
		}
		if l.spis, err = l.ring.FilterSPIs(); err != nil {
			return err
		}
		if err := l.gate.MirrorTo(l.spis); err != nil {
			return err
		}
		if err := l.gate.BypassRing(); err != nil {
			return err
		}
		if l.ing, err = l.spis.BypassIngress(); err != nil {
			return err
		}
		if l.esp, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP}); err != nil {
			return err
		}
		if l.ah, err = ListenRaw(RawConfig{Proto: iphdr.ProtoAH}); err != nil {
			return err
		}
		ifi, err := net.InterfaceByName(l.attached)
		if err == nil {
			l.bMAC = ifi.HardwareAddr
		}
		return err
	})
	nettest.MustDo(t, p.A.NS, func() (err error) {
		if l.tx, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP, Buffer: 1 << 20}); err != nil {
			return err
		}
		ifi, err := net.InterfaceByName(p.A.Name)
		if err == nil {
			l.aIndex = ifi.Index
		}
		return err
	})
	t.Cleanup(func() {
		for _, c := range []interface{ Close() error }{l.esp, l.ah, l.tx, l.spis, l.gate, l.f} {
			c.Close()
		}
	})
	return l
}

// send sends an ESP or AH packet from A to dst, whole or fragmented.
func (l *ingressLab) send(dst netip.Addr, proto uint8, spi uint32, i, size int, fragmented bool) {
	l.t.Helper()
	sendPacket(l.t, l.tx, spiPacket(l.p.AAddr, dst, proto, spi, i, size), fragmented)
}

// rawNext: the raw socket's next packet has size octets.
func (l *ingressLab) rawNext(c *RawConn, what string, size int) {
	l.t.Helper()
	b := next(l.t, c.s)
	if len(b) != size {
		l.t.Fatalf("%s: the raw socket's next packet has %d octets, want %d (a dropped packet reached the stack, or none came)", what, len(b), size)
	}
}

// ringNext: the ring's next packets have these sizes.
func (l *ingressLab) ringNext(what string, sizes ...int) {
	l.t.Helper()
	got := ringRecvN(l.t, l.ring, len(sizes), len(sizes), 3*time.Second)
	for i, m := range got {
		if m.N != sizes[i] {
			l.t.Fatalf("%s: ring packet %d has %d octets, want %d", what, i, m.N, sizes[i])
		}
	}
}

// counts checks the ingress counters and the prerouting chain's.
func (l *ingressLab) counts(what string, bypassed, gateESP, gateAH, prerouting uint64) {
	l.t.Helper()
	ic, err := l.ing.Counts()
	if err != nil {
		l.t.Fatalf("%s: ingress counts: %v", what, err)
	}
	gc, err := l.gate.Counts()
	if err != nil {
		l.t.Fatalf("%s: gate counts: %v", what, err)
	}
	if ic.Bypassed != bypassed || ic.ESP != gateESP || ic.AH != gateAH || gc.RingBypass != prerouting || gc.ESP != 0 || gc.AH != 0 {
		l.t.Fatalf("%s: ingress %+v, gate %+v; want ingress %d bypassed, %d ESP and %d AH of unknown SPIs, %d bypassed at prerouting, none gated there",
			what, ic, gc, bypassed, gateESP, gateAH, prerouting)
	}
	if !slices.Equal(ic.Interfaces, l.interfaces) || len(ic.NotAttached) > 0 {
		l.t.Fatalf("%s: attached to %v, not to %v; want %v", what, ic.Interfaces, ic.NotAttached, l.interfaces)
	}
}

// waitAttached waits until the bypass is on l.interfaces and no others.
func (l *ingressLab) waitAttached(what string) {
	l.t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		ic, err := l.ing.Counts()
		if err != nil {
			l.t.Fatalf("%s: ingress counts: %v", what, err)
		}
		if slices.Equal(ic.Interfaces, l.interfaces) {
			return
		}
		if time.Now().After(deadline) {
			l.t.Fatalf("%s: after 3 s attached to %v, not to %v; want %v", what, ic.Interfaces, ic.NotAttached, l.interfaces)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestIngressBypassLateInterface: an interface that gets its first
// address after the bypass was made (a WAN address from DHCP, a link made
// later) gets the bypass too, from the netlink watch, on the interface of
// the bypass's namespace whatever thread the watch runs on; one that goes
// away takes its attachment with it, and made again it is attached again.
func TestIngressBypassLateInterface(t *testing.T) {
	testutil.NeedRoot(t)
	l := newIngressLab(t, "grx-k", netip.MustParsePrefix("10.231.184.0/24"), false)
	second := netip.MustParseAddr("10.231.185.2")
	a := nettest.End{Name: "grx-kla", NS: l.p.A.NS, Addr: netip.MustParsePrefix("10.231.185.1/24")}
	b := nettest.End{Name: "grx-klb", NS: l.p.B.NS, Addr: netip.PrefixFrom(second, 24)}
	for round, bypassed := range []uint64{1, 2} {
		nettest.Veth(t, a, b)
		l.interfaces = []string{b.Name, l.p.B.Name}
		l.waitAttached("a link made after the bypass")
		l.send(second, iphdr.ProtoESP, ingressAdmitted, 3*round+1, 300, false)
		l.send(second, iphdr.ProtoESP, 0x200, 3*round+2, 310, false)
		l.send(second, iphdr.ProtoESP, ingressAdmitted, 3*round+3, 1800, true)
		l.rawNext(l.esp, "ESP to the later link: an admitted and an unknown SPI, then a fragmented admitted one", 1800)
		l.ringNext("ESP to the later link", 300, 1800)
		l.counts("ESP to the later link", bypassed, bypassed, 0, 0)

		nettest.MustExec(t, b.NS, "ip", "link", "del", b.Name)
		l.interfaces = []string{l.p.B.Name}
		l.waitAttached("the later link deleted")
	}
}

// TestIngressBypassBridge: with the address on a bridge, the bypass is on
// the bridge (its port has no address) and the ring sees each packet once
// (bound to IPv4 it sees the bridge's copy only; a tap of every protocol
// would see the port's as well). Without it, where br_netfilter runs the
// IPv4 prerouting hooks on the bridge's port, the prerouting chain must
// leave the packet alone there (its address is not the port's) so that it
// reaches the ring on the bridge; the IP stack then processes it too.
func TestIngressBypassBridge(t *testing.T) {
	testutil.NeedRoot(t)
	l := newIngressLab(t, "grx-j", netip.MustParsePrefix("10.231.183.0/24"), true)
	b := l.p.BAddr
	l.send(b, iphdr.ProtoESP, ingressAdmitted, 1, 300, false)
	l.send(b, iphdr.ProtoESP, 0x200, 2, 310, false)
	l.send(b, iphdr.ProtoESP, ingressAdmitted, 3, 1800, true)
	l.rawNext(l.esp, "ESP of an admitted then an unknown SPI, then a fragmented admitted one", 1800)
	l.ringNext("ESP through a bridge", 300, 1800)
	l.counts("ESP through a bridge", 1, 1, 0, 0)

	if err := l.ing.Close(); err != nil {
		t.Fatal(err)
	}
	l.send(b, iphdr.ProtoESP, ingressAdmitted, 4, 320, false)
	l.rawNext(l.esp, "ESP through a bridge without the ingress bypass", 320)
	l.ringNext("ESP through a bridge without the ingress bypass", 320)
}
