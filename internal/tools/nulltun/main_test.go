package main

import (
	"bytes"
	"context"
	"net"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// seqpacketDev is one end of a SOCK_SEQPACKET pair as the relay's TUN:
// one packet per read and write, as a TUN without offloads, and no root
// needed.
type seqpacketDev struct{ f *os.File }

func (d seqpacketDev) BatchSize() int { return 1 }
func (d seqpacketDev) Close() error   { return d.f.Close() }

func (d seqpacketDev) Read(bufs [][]byte, sizes []int, off int) (int, error) {
	n, err := d.f.Read(bufs[0][off:])
	if err != nil {
		return 0, err
	}
	sizes[0] = n
	return 1, nil
}

func (d seqpacketDev) Write(bufs [][]byte, off int) (int, error) {
	for _, b := range bufs {
		if _, err := d.f.Write(b[off:]); err != nil {
			return 0, err
		}
	}
	return len(bufs), nil
}

// TestRun: what the device gives goes to the peer, what the peer sends
// goes into the device, a datagram from anyone else (the peer's address
// on another port) is counted and dropped, and run ends when its context
// does.
func TestRun(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, fd := range fds {
		if err := unix.SetNonblock(fd, true); err != nil {
			t.Fatal(err)
		}
	}
	dev := os.NewFile(uintptr(fds[0]), "dev")       // the relay's "TUN"
	kernel := os.NewFile(uintptr(fds[1]), "kernel") // the kernel's side of it
	defer kernel.Close()

	listen := func() *net.UDPConn {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	relay, peer, stranger := listen(), listen(), listen()
	defer peer.Close()
	defer stranger.Close()
	peerAddr := peer.LocalAddr().(*net.UDPAddr).AddrPort()
	relayAddr := net.UDPAddrFromAddrPort(relay.LocalAddr().(*net.UDPAddr).AddrPort())

	ctx, cancel := context.WithCancel(context.Background())
	var c counters
	done := make(chan struct{})
	go func() {
		run(ctx, seqpacketDev{dev}, relay, netip.AddrPortFrom(peerAddr.Addr(), peerAddr.Port()), time.Millisecond, &c)
		close(done)
	}()

	buf := make([]byte, 2048)
	for _, pkt := range [][]byte{[]byte("first packet"), bytes.Repeat([]byte{0x45}, 1400)} {
		if _, err := kernel.Write(pkt); err != nil {
			t.Fatal(err)
		}
		peer.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, _, err := peer.ReadFromUDPAddrPort(buf)
		if err != nil {
			t.Fatalf("device -> peer: %v", err)
		}
		if !bytes.Equal(buf[:n], pkt) {
			t.Fatalf("device -> peer: got %d octets, want %d", n, len(pkt))
		}
	}

	if _, err := stranger.WriteToUDP([]byte("not from the peer"), relayAddr); err != nil {
		t.Fatal(err)
	}
	want := []byte("from the peer")
	if _, err := peer.WriteToUDP(want, relayAddr); err != nil {
		t.Fatal(err)
	}
	kernel.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := kernel.Read(buf)
	if err != nil {
		t.Fatalf("peer -> device: %v", err)
	}
	if !bytes.Equal(buf[:n], want) {
		t.Fatalf("peer -> device: got %q, want %q (the stranger's datagram must not get through)", buf[:n], want)
	}

	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("run did not end with its context")
	}
	got := c.snapshot()
	if got.ToPeer != 2 || got.ToPeerBytes != uint64(len("first packet")+1400) || got.FromPeer != 1 || got.FromBytes != uint64(len(want)) || got.Failed != 1 {
		t.Errorf("counts %+v, want 2 packets (%d octets) to the peer, 1 (%d) from it, 1 failed (the stranger's)", got, len("first packet")+1400, len(want))
	}
}
