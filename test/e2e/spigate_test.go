package e2e

// The kernel's unknown-SPI filter (netio.SPIGate, issue 12's flood goal)
// with real daemons: forged SPIs die in the kernel, the tunnel's own SPIs
// pass through every rekey.

import (
	"encoding/binary"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/internal/nettest"
)

// gateCounts is the part of `gosec status --json` this test reads.
type gateCounts struct {
	Drops map[string]uint64 `json:"drops"`
	Plane struct {
		Drops map[string]uint64 `json:"drops"`
	} `json:"dataplane"`
	Kernel *struct {
		ESP        uint64  `json:"esp"`
		UDP        uint64  `json:"udp"`
		SPIs       int     `json:"spis"`
		Prerouting *uint64 `json:"prerouting"`
	} `json:"kernel_drops"`
	RawPaths *struct {
		Receive       map[string]string `json:"receive"`
		RingSPIFilter bool              `json:"ring_spi_filter"`
	} `json:"raw_paths"`
}

func gateCountsOf(t *testing.T, d *daemon) gateCounts {
	t.Helper()
	out := d.mustCtl("status", "--json")
	var c gateCounts
	if err := json.Unmarshal([]byte(out), &c); err != nil {
		t.Fatalf("status --json: %v\n%s", err, out)
	}
	if c.Kernel == nil {
		t.Fatalf("status --json has no kernel_drops: the kernel's SPI filter is missing\n%s", out)
	}
	return c
}

// TestSPIGate: while pings cross a tunnel that rekeys every 4 s, gw1's
// namespace sends gw2 ESP and ESP-in-UDP packets with SPIs gw2 has no SA
// for. gw2's kernel must drop every raw ESP one and the ESP-in-UDP ones
// from an address that is not its peer (its filter's counters grow by
// exactly that, and its data plane counts none of them: its sockets never
// saw them; with the AF_PACKET receive ring, the ring took the raw ESP
// ones before netfilter INPUT and the data plane counts exactly those).
// ESP-in-UDP from the peer's address (gw1's, as a spoofer would send it)
// is left to the data plane, which must count each as unknown-spi. No
// ping may be lost across the rekeys: each new inbound SPI is let through
// before the peer uses it and the old one until its SA is gone.
func TestSPIGate(t *testing.T) {
	e := newLC(t, "hf-")
	conf := lcConf("add", "lifetime=8s", "rekeymargin=4s", "rekeyfuzz=0%")
	e.start(conf, conf, false)
	e.ctl(e.gw1, "up", lcConn)
	ping, _ := e.traffic(false)
	before := gateCountsOf(t, e.gw2)

	var raw *netio.RawConn
	var udpPeer, udpOther *netio.UDPConn
	e.tp.must(e.tp.ns("gw1"), "ip", "addr", "add", "192.0.2.77/24", "dev", "wan0")
	nettest.MustDo(t, e.tp.ns("gw1"), func() (err error) {
		if raw, err = netio.ListenRaw(netio.RawConfig{Proto: 253}); err != nil {
			return err
		}
		if udpPeer, err = netio.ListenUDP(netio.UDPConfig{Addr: netip.MustParseAddrPort("192.0.2.1:0")}); err != nil {
			return err
		}
		udpOther, err = netio.ListenUDP(netio.UDPConfig{Addr: netip.MustParseAddrPort("192.0.2.77:0")})
		return err
	})
	defer raw.Close()
	defer udpPeer.Close()
	defer udpOther.Close()
	src, dst := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	// Forged SPIs from 0xf5a00000 up: gosec's are random, so one of 4e9
	// chances per packet that a forged one is real; none of them repeats.
	spi := uint32(0xf5a00000)
	var sentESP, sentUDP, sentUDPPeer uint64
	burst := func() {
		ms := make([]netio.Msg, 0, 40)
		for i := 0; i < 20; i++ {
			b := make([]byte, 20+8+100)
			iphdr.PutIPv4(b, &iphdr.Outer{Src: src.As4(), Dst: dst.As4(), TTL: 64, ID: uint16(i + 1)}, iphdr.ProtoESP, len(b))
			spi++
			binary.BigEndian.PutUint32(b[20:], spi)
			binary.BigEndian.PutUint32(b[24:], 1)
			ms = append(ms, netio.Msg{Buf: b})
		}
		n, err := raw.Send(ms)
		if err != nil {
			t.Fatal(err)
		}
		sentESP += uint64(n)
		for _, c := range []struct {
			conn *netio.UDPConn
			sent *uint64
		}{{udpOther, &sentUDP}, {udpPeer, &sentUDPPeer}} {
			ms = ms[:0]
			for i := 0; i < 5; i++ {
				b := make([]byte, 8+100)
				spi++
				binary.BigEndian.PutUint32(b, spi)
				binary.BigEndian.PutUint32(b[4:], 1)
				ms = append(ms, netio.Msg{Buf: b, To: netip.AddrPortFrom(dst, 4500)})
			}
			if n, err = c.conn.Send(ms); err != nil {
				t.Fatal(err)
			}
			*c.sent += uint64(n)
		}
	}
	const want = 4 // the first inbound SA of gw2 and 3 successors
	var rekeyed bool
	deadline := time.Now().Add(40 * time.Second)
	for time.Now().Before(deadline) {
		burst()
		time.Sleep(50 * time.Millisecond)
		if e.mon.Count("gw2", "in SA ") >= want {
			rekeyed = true
			break
		}
	}
	e.tl.Add("test: %d forged ESP and %d+%d forged ESP-in-UDP packets sent to gw2", sentESP, sentUDP, sentUDPPeer)
	time.Sleep(time.Second) // pings across the last rekey
	pr := ping.Stop()
	after := gateCountsOf(t, e.gw2)
	e.finish()
	if !rekeyed {
		t.Fatalf("gw2 saw %d inbound SAs in 40 s, want %d (3 rekeys)\ntimeline:\n%s", e.mon.Count("gw2", "in SA "), want, e.tl.String())
	}
	e.noLoss(pr, time.Time{}, time.Time{}, "during the rekeys under forged SPIs")
	gotESP, gotUDP := after.Kernel.ESP-before.Kernel.ESP, after.Kernel.UDP-before.Kernel.UDP
	planeUnknown := after.Plane.Drops["unknown-spi"] - before.Plane.Drops["unknown-spi"]
	t.Logf("sent %d ESP, %d ESP-in-UDP from 192.0.2.77 and %d from the peer's address with forged SPIs; gw2's kernel dropped %d and %d, its data plane counted %d unknown SPIs; %d SPIs let through at the end",
		sentESP, sentUDP, sentUDPPeer, gotESP, gotUDP, planeUnknown, after.Kernel.SPIs)
	if gotESP != sentESP || gotUDP != sentUDP {
		t.Errorf("kernel filter dropped %d ESP and %d ESP-in-UDP, want %d and %d", gotESP, gotUDP, sentESP, sentUDP)
	}
	// Through the AF_PACKET receive ring without its SPI filter, raw ESP
	// reaches the data plane before netfilter INPUT, where the gate still
	// drops (and counts) it: the data plane drops the forged SPIs too,
	// and drops by reason count each once. Through the ring's SPI filter
	// (the default, kept in line with the gate's set across the rekeys)
	// or the raw socket the data plane never sees them.
	wantPlane := sentUDPPeer
	if r := after.RawPaths; r != nil && r.Receive["esp"] == "af_packet ring" && !r.RingSPIFilter {
		wantPlane += sentESP
	}
	if planeUnknown != wantPlane {
		t.Errorf("gw2's data plane saw %d packets with unknown SPIs, want %d (receive path %v)", planeUnknown, wantPlane, after.RawPaths)
	}
	if got, want := after.Drops["unknown-spi"]-before.Drops["unknown-spi"], sentESP+sentUDP+sentUDPPeer; got != want {
		t.Errorf("drops by reason count %d unknown-spi, want %d (kernel and data plane together)", got, want)
	}
	// With the ring's bypass chain (the default) the forged ESP, whole
	// packets for gw2, are dropped there, before routing; without it,
	// at INPUT.
	if r := after.RawPaths; r != nil && r.Receive["esp"] == "af_packet ring" {
		if after.Kernel.Prerouting == nil || before.Kernel.Prerouting == nil {
			t.Errorf("gw2 receives through the ring but its status has no kernel_drops.prerouting")
		} else if got := *after.Kernel.Prerouting - *before.Kernel.Prerouting; got != sentESP {
			t.Errorf("gw2's kernel dropped %d forged ESP packets before routing, want all %d", got, sentESP)
		}
	}
	if after.Kernel.SPIs < 1 || after.Kernel.SPIs > 3 {
		t.Errorf("gw2's filter lets %d SPIs through, want the inbound SAs' (1 to 3 around a rekey)", after.Kernel.SPIs)
	}
}
