// Command nulltun is a userspace tunnel that does nothing but carry
// packets: what a TUN device gives it goes out of a UDP socket to the
// peer, what the UDP socket receives goes into the TUN, with no
// encryption, no policy and no batching. It is the control for the ping
// goal of issue 12 (scripts/bench-e2e.sh, path "null"): its round trip
// above plain routing is what a gateway that moves each packet through a
// Go process costs on the machine, wake-ups and system calls included, so
// gosec's latency is judged against it as well as against plain routing.
//
//	nulltun -tun null0 -local 192.0.2.1:4790 -peer 192.0.2.2:4790 [-mtu 1400] [-keep-warm 1ms] [-procs 1]
//
// It creates the TUN device with gosec's own TUN layer (netio.OpenTUN:
// one queue, virtio-net offloads, IPv6 off, up) at -mtu; the caller
// routes into it. One goroutine reads the TUN and sends each packet, one
// receives and writes each into the TUN, both through Go's netpoller as
// gosec's loops are. A TCP super-packet the TUN hands over is split into
// its segments (wireguard's tun does that), each sent as one datagram.
// -procs sets GOMAXPROCS (default: what gosec start gives its daemon,
// daemon.AutoProcs); -keep-warm
// wakes the process at that interval, as gosec's default --keep-warm=1ms
// does while traffic flows (0: off). It runs until SIGINT or SIGTERM and
// then prints one JSON object with the packets and bytes it carried each
// way and the packets it could not deliver or did not take (datagrams
// from any address and port but -peer are dropped).
//
// Root only (TUN). Use it only between namespaces you made.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gosec-ipsec/gosec/internal/daemon"
	"github.com/gosec-ipsec/gosec/internal/netio"
)

// Config is one tunnel end.
type Config struct {
	TUN      string         // device name
	MTU      int            // the device's MTU
	Local    netip.AddrPort // UDP address to bind
	Peer     netip.AddrPort // the other end's UDP address
	KeepWarm time.Duration  // 0: no keep-warm wake-ups
}

// Counts is what a tunnel end carried.
type Counts struct {
	ToPeer      uint64 `json:"to_peer_packets"`
	ToPeerBytes uint64 `json:"to_peer_bytes"`
	FromPeer    uint64 `json:"from_peer_packets"`
	FromBytes   uint64 `json:"from_peer_bytes"`
	Failed      uint64 `json:"failed_packets"` // send or TUN write errors, datagrams not from the peer
	WarmTicks   uint64 `json:"keep_warm_ticks"`
}

// counters are Counts while the loops run.
type counters struct {
	toPeer, toPeerBytes, fromPeer, fromBytes, failed, ticks atomic.Uint64
}

func (c *counters) snapshot() Counts {
	return Counts{
		ToPeer: c.toPeer.Load(), ToPeerBytes: c.toPeerBytes.Load(),
		FromPeer: c.fromPeer.Load(), FromBytes: c.fromBytes.Load(),
		Failed: c.failed.Load(), WarmTicks: c.ticks.Load(),
	}
}

// device is the TUN as run uses it (netio.TUN; a fake in the tests).
type device interface {
	BatchSize() int
	Read(bufs [][]byte, sizes []int, offset int) (int, error)
	Write(bufs [][]byte, offset int) (int, error)
	Close() error
}

// run carries packets between dev and conn until ctx ends.
func run(ctx context.Context, dev device, conn *net.UDPConn, peer netip.AddrPort, keepWarm time.Duration, c *counters) {
	const off = netio.TUNHeadroom
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { // TUN -> peer
		defer wg.Done()
		bufs := make([][]byte, max(dev.BatchSize(), 1))
		sizes := make([]int, len(bufs))
		for i := range bufs {
			bufs[i] = make([]byte, off+65536)
		}
		for {
			n, err := dev.Read(bufs, sizes, off)
			if err != nil {
				return
			}
			for i := range n {
				if _, err := conn.WriteToUDPAddrPort(bufs[i][off:off+sizes[i]], peer); err != nil {
					c.failed.Add(1)
					continue
				}
				c.toPeer.Add(1)
				c.toPeerBytes.Add(uint64(sizes[i]))
			}
		}
	}()
	go func() { // peer -> TUN
		defer wg.Done()
		buf := make([]byte, off+65536)
		one := [][]byte{nil}
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf[off:])
			if err != nil {
				if errors.Is(err, net.ErrClosed) {
					return
				}
				continue
			}
			if netip.AddrPortFrom(from.Addr().Unmap(), from.Port()) != peer {
				c.failed.Add(1)
				continue
			}
			one[0] = buf[:off+n]
			if _, err := dev.Write(one, off); err != nil {
				c.failed.Add(1)
				continue
			}
			c.fromPeer.Add(1)
			c.fromBytes.Add(uint64(n))
		}
	}()
	if keepWarm > 0 {
		t := time.NewTicker(keepWarm)
		defer t.Stop()
	warm:
		for {
			select {
			case <-ctx.Done():
				break warm
			case <-t.C:
				c.ticks.Add(1)
			}
		}
	} else {
		<-ctx.Done()
	}
	dev.Close()
	conn.Close()
	wg.Wait()
}

func main() {
	var (
		cfg          Config
		local, peer  string
		procs        int
		flagsFailure = func(format string, a ...any) {
			fmt.Fprintf(os.Stderr, "nulltun: "+format+"\n", a...)
			os.Exit(2)
		}
	)
	flag.StringVar(&cfg.TUN, "tun", "null0", "TUN device to create")
	flag.IntVar(&cfg.MTU, "mtu", 1400, "the TUN's MTU (a relayed packet is 28 octets longer on the wire)")
	flag.StringVar(&local, "local", "", "local UDP address:port (required)")
	flag.StringVar(&peer, "peer", "", "the peer's UDP address:port (required)")
	flag.DurationVar(&cfg.KeepWarm, "keep-warm", time.Millisecond, "wake-up interval that keeps the process warm (0: off)")
	flag.IntVar(&procs, "procs", 0, "GOMAXPROCS (0: what gosec start gives its daemon on this machine)")
	flag.Parse()
	var err error
	if cfg.Local, err = netip.ParseAddrPort(local); err != nil || !cfg.Local.Addr().Is4() {
		flagsFailure("-local: want IPv4 address:port, got %q", local)
	}
	if cfg.Peer, err = netip.ParseAddrPort(peer); err != nil || !cfg.Peer.Addr().Is4() {
		flagsFailure("-peer: want IPv4 address:port, got %q", peer)
	}
	if procs < 0 || cfg.KeepWarm < 0 {
		flagsFailure("-procs >= 0, -keep-warm >= 0")
	}
	if procs == 0 {
		procs = daemon.AutoProcs(runtime.NumCPU())
	}
	if procs > 0 {
		runtime.GOMAXPROCS(procs)
	}

	tun, err := netio.OpenTUN(netio.TUNConfig{Name: cfg.TUN, MTU: cfg.MTU})
	if err != nil {
		fmt.Fprintf(os.Stderr, "nulltun: %v\n", err)
		os.Exit(1)
	}
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(cfg.Local))
	if err != nil {
		fmt.Fprintf(os.Stderr, "nulltun: %v\n", err)
		os.Exit(1)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	var c counters
	run(ctx, tun, conn, cfg.Peer, cfg.KeepWarm, &c)
	_ = json.NewEncoder(os.Stdout).Encode(c.snapshot())
}
