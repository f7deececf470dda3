package daemon

import (
	"net"
	"net/netip"
	"testing"
	"time"
)

// TestIKESendFrom: the reply leaves from the local address it is told,
// not from the one the kernel would pick (127.0.0.1 for a peer on
// 127.0.0.1; the request went to 127.0.0.2).
func TestIKESendFrom(t *testing.T) {
	sock, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4zero})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	peer, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer peer.Close()
	d := &Daemon{ikeSock: sock}
	to := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	src := netip.MustParseAddr("127.0.0.2")
	if err := (ikeTransport{d}).SendFrom([]byte("isakmp"), src, to, false); err != nil {
		t.Fatal(err)
	}
	peer.SetReadDeadline(time.Now().Add(2 * time.Second))
	buf := make([]byte, 64)
	n, from, err := peer.ReadFromUDPAddrPort(buf)
	if err != nil {
		t.Fatal(err)
	}
	if string(buf[:n]) != "isakmp" || from.Addr() != src {
		t.Fatalf("got %q from %v, want it from %v", buf[:n], from, src)
	}
}
