package main

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// TestPacketSenderDelivers floods a veth peer with AF_PACKET frames: to the
// peer's own MAC address they arrive as ESP from the sender's address with
// the flood's SPIs in order (a raw ESP socket there receives them), to
// another MAC address (bench-flood's control) the peer's kernel discards
// them before IP and nothing arrives. Root (namespaces gef-a, gef-b).
func TestPacketSenderDelivers(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gef-", netip.MustParsePrefix("10.99.77.0/24"))
	var peerMAC net.HardwareAddr
	var rx net.PacketConn
	nettest.MustDo(t, p.B.NS, func() (err error) {
		ifi, err := net.InterfaceByName(p.B.Name)
		if err != nil {
			return err
		}
		peerMAC = ifi.HardwareAddr
		rx, err = net.ListenPacket("ip4:50", p.BAddr.String())
		return err
	})
	t.Cleanup(func() { rx.Close() })
	other, _ := net.ParseMAC("02:00:5e:00:00:99")

	for _, tc := range []struct {
		name   string
		mac    net.HardwareAddr
		arrive bool
	}{{"peer's MAC", peerMAC, true}, {"another MAC", other, false}} {
		cfg := Config{Dst: p.BAddr, Dev: p.A.Name, DstMAC: tc.mac, Mode: UnknownSPI, SPI: 0xf1000000, Seq: 1,
			Size: 124, Batch: 8, PPS: 400, Duration: 100 * time.Millisecond}
		var res Result
		nettest.MustDo(t, p.A.NS, func() (err error) {
			res, err = Flood(context.Background(), cfg)
			return err
		})
		if res.Sent < 8 || res.Errors != 0 {
			t.Fatalf("%s: sent %d, %d errors", tc.name, res.Sent, res.Errors)
		}
		got := 0
		buf := make([]byte, 2048)
		for {
			_ = rx.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			n, from, err := rx.ReadFrom(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				t.Fatalf("%s: receive: %v", tc.name, err)
			}
			// The raw socket hands over the ESP packet (no IP header).
			if from.String() != p.AAddr.String() || n != 8+cfg.Size {
				t.Errorf("%s: %d octets from %v, want %d from %v", tc.name, n, from, 8+cfg.Size, p.AAddr)
			}
			if spi := binary.BigEndian.Uint32(buf); spi != cfg.SPI+uint32(got) {
				t.Errorf("%s: packet %d has SPI %#x, want %#x", tc.name, got, spi, cfg.SPI+uint32(got))
			}
			got++
		}
		switch {
		case tc.arrive && uint64(got) != res.Sent:
			t.Errorf("%s: %d of %d packets arrived", tc.name, got, res.Sent)
		case !tc.arrive && got != 0:
			t.Errorf("%s: %d of %d packets arrived, want none", tc.name, got, res.Sent)
		}
	}
}
