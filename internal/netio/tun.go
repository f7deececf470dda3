package netio

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"sync"

	"github.com/vishvananda/netlink"
	nlattr "github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
	"golang.zx2c4.com/wireguard/tun"
)

// TUNHeadroom is the least offset the caller must leave at the front of
// every buffer handed to TUN.Write: the kernel's virtio-net header is
// written there when offloads are on. Reads accept any offset; the data
// plane reads with a larger offset so that the outer IPv4 header, the UDP
// header (ESP-in-UDP) and the ESP/AH header fit in front of the packet and
// can be prepended in place (see Headroom).
const TUNHeadroom = 10

// Headroom is the offset the data plane should read TUN packets at: room for
// an outer IPv4 header with options (60), a UDP header (8), and the largest
// ESP header plus IV or AH header (8+16 / 12+32), rounded up. It is at least
// TUNHeadroom, so the same buffers can be written back into the TUN.
const Headroom = 128

// TUNConfig describes the TUN device to create.
type TUNConfig struct {
	// Name of the interface, e.g. "gosec0".
	Name string
	// MTU of the interface: the usable inner MTU after ESP overhead.
	MTU int
	// Addrs are assigned to the interface (optional).
	Addrs []netip.Prefix
	// NoOffload opens the device without IFF_VNET_HDR: one packet per read
	// and write, no TSO/USO/GRO. For comparison and for old kernels.
	NoOffload bool
	// Queues above 1 open a multi-queue device (IFF_MULTI_QUEUE) with
	// that many queues, each read by its own reader, and steer packets to
	// queues by destination prefix (Steer). When the kernel refuses the
	// steering program (no eBPF), the device keeps one queue: the kernel's
	// own per-flow choice would reorder an SA's packets.
	Queues int
}

// TUN is an up-and-running TUN device. Read and Write move batches: with
// offloads, the kernel hands over TCP/UDP super-packets of up to 64 KB which
// Read splits into MTU-sized packets (computing the checksums the kernel left
// partial), and Write coalesces consecutive segments of a flow back into
// super-packets (GRO) when the buffers have the capacity.
type TUN struct {
	dev tun.Device // queue 0
	// queues are all the device's queues, queues[0] == dev.
	queues  []tun.Device
	steer   *steering
	steerMu sync.Mutex
	// steerErr is why a multi-queue device fell back to one queue.
	steerErr error
	name     string
	index    int
	offload  bool
	done     chan struct{}
	once     sync.Once
	// nl is bound to the namespace the device was created in, so that
	// MTU and SetMTU work from any goroutine.
	nl *netlink.Handle
}

// OpenTUN creates the device in the calling thread's network namespace, sets
// its MTU and addresses and brings it up.
func OpenTUN(cfg TUNConfig) (*TUN, error) {
	if cfg.MTU < 576 || cfg.MTU > 65535 {
		return nil, fmt.Errorf("netio: tun %s: MTU %d out of range", cfg.Name, cfg.MTU)
	}
	var dev tun.Device
	var err error
	switch {
	case cfg.Queues > 1:
		dev, err = openQueue(cfg.Name, !cfg.NoOffload)
	case cfg.NoOffload:
		dev, err = openTUNFile(cfg.Name, unix.IFF_TUN|unix.IFF_NO_PI)
	default:
		dev, err = openTUNFile(cfg.Name, unix.IFF_TUN|unix.IFF_NO_PI|unix.IFF_VNET_HDR)
	}
	if err != nil {
		return nil, fmt.Errorf("netio: create tun %s: %w", cfg.Name, err)
	}
	t := &TUN{dev: dev, queues: []tun.Device{dev}, name: cfg.Name, offload: dev.BatchSize() > 1, done: make(chan struct{})}
	if name, err := dev.Name(); err == nil {
		t.name = name
	}
	if cfg.Queues > 1 {
		if err := t.addQueues(cfg.Queues, !cfg.NoOffload); err != nil {
			t.Close()
			return nil, fmt.Errorf("netio: tun %s: %w", t.name, err)
		}
	}
	t.nl, err = netlinkHere()
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("netio: tun %s: netlink: %w", t.name, err)
	}
	link, err := t.nl.LinkByName(t.name)
	if err != nil {
		t.Close()
		return nil, fmt.Errorf("netio: tun %s: %w", t.name, err)
	}
	t.index = link.Attrs().Index
	if err := t.nl.LinkSetMTU(link, cfg.MTU); err != nil {
		t.Close()
		return nil, fmt.Errorf("netio: tun %s: set MTU %d: %w", t.name, cfg.MTU, err)
	}
	for _, p := range cfg.Addrs {
		a := &netlink.Addr{IPNet: prefixToIPNet(p)}
		if err := t.nl.AddrAdd(link, a); err != nil && !errors.Is(err, unix.EEXIST) {
			t.Close()
			return nil, fmt.Errorf("netio: tun %s: add address %v: %w", t.name, p, err)
		}
	}
	disableIPv6(t.nl, link)
	if err := t.nl.LinkSetUp(link); err != nil {
		t.Close()
		return nil, fmt.Errorf("netio: tun %s: set up: %w", t.name, err)
	}
	return t, nil
}

// disableIPv6 turns IPv6 off on the device before it goes up: the data
// plane is IPv4-only, and otherwise the kernel sends its router
// solicitations and MLD reports into the TUN, where each would be counted
// and logged as a malformed packet. Where /proc/sys is read-only (the
// packaged unit's ProtectKernelTunables=, some containers) the device
// gets no IPv6 address instead (addr_gen_mode none, over netlink), which
// keeps the kernel from sending anything IPv6 into it just as well.
// Best effort: without IPv6 in the kernel there is nothing to turn off.
// It must run on the thread that is in the device's network namespace, as
// OpenTUN does.
func disableIPv6(nl *netlink.Handle, link netlink.Link) {
	err := os.WriteFile("/proc/sys/net/ipv6/conf/"+link.Attrs().Name+"/disable_ipv6", []byte("1\n"), 0o644)
	if err == nil || errors.Is(err, os.ErrNotExist) {
		return
	}
	_ = nl.LinkSetIP6AddrGenMode(link, nlattr.IN6_ADDR_GEN_MODE_NONE)
}

// addQueues attaches the steering program and then queues 1..n-1 to a
// multi-queue device. Without eBPF (an old kernel, a seccomp profile, no
// CAP_BPF) it attaches no more queues: the device works with one, and
// SteerErr says why.
func (t *TUN) addQueues(n int, offload bool) error {
	s, err := loadSteering(n)
	if err == nil {
		err = withFD(t.dev, s.attach)
		if err != nil {
			s.close()
		}
	}
	if err != nil {
		t.steerErr = err
		return nil
	}
	t.steer = s
	for i := 1; i < n; i++ {
		q, err := openQueue(t.name, offload)
		if err != nil {
			return fmt.Errorf("queue %d: %w", i, err)
		}
		t.queues = append(t.queues, q)
	}
	return nil
}

// withFD runs f with dev's descriptor.
func withFD(dev tun.Device, f func(fd int) error) error {
	sc, err := dev.File().SyscallConn()
	if err != nil {
		return err
	}
	var ferr error
	if err := sc.Control(func(fd uintptr) { ferr = f(int(fd)) }); err != nil {
		return err
	}
	return ferr
}

// openQueue creates the multi-queue device name or attaches one more
// queue to it.
func openQueue(name string, offload bool) (tun.Device, error) {
	flags := uint16(unix.IFF_TUN | unix.IFF_NO_PI | unix.IFF_MULTI_QUEUE)
	if offload {
		flags |= unix.IFF_VNET_HDR
	}
	return openTUNFile(name, flags)
}

// Queues returns the number of queues the device has (1 unless it was
// opened with Queues above 1 and the kernel took the steering program).
func (t *TUN) Queues() int { return len(t.queues) }

// SteerErr tells why a device asked for several queues has one.
func (t *TUN) SteerErr() error { return t.steerErr }

// Queue returns queue i (0 <= i < Queues) for a reader of its own. A
// packet can be written into any queue.
func (t *TUN) Queue(i int) *TUNQueue { return &TUNQueue{t: t, dev: t.queues[i]} }

// Steer sets which queue reads the packets for each destination: dsts
// are the destination prefixes of the outbound policies; nested ones
// share their outermost prefix's queue, every group keeps its queue as
// long as it is in dsts, new groups go to the least used queue (the last
// of equals, so that a single tunnel is not read where unsteered packets
// are). Packets no prefix covers go to queue 0. A no-op on a one-queue
// device.
func (t *TUN) Steer(dsts []netip.Prefix) error {
	t.steerMu.Lock()
	defer t.steerMu.Unlock()
	if t.steer == nil {
		return nil
	}
	if err := t.steer.set(dsts); err != nil {
		return fmt.Errorf("netio: tun %s: steering: %w", t.name, err)
	}
	return nil
}

// QueueOf returns the queue that reads packets to dst.
func (t *TUN) QueueOf(dst netip.Addr) int {
	t.steerMu.Lock()
	defer t.steerMu.Unlock()
	if t.steer == nil || !dst.Is4() {
		return 0
	}
	return t.steer.queueOf(dst)
}

// TUNQueue is one queue of a TUN: its own reads, writes into the same
// device.
type TUNQueue struct {
	t   *TUN
	dev tun.Device
}

// BatchSize is as TUN.BatchSize.
func (q *TUNQueue) BatchSize() int { return q.dev.BatchSize() }

// MTU is the device's MTU.
func (q *TUNQueue) MTU() (int, error) { return q.t.MTU() }

// Read is as TUN.Read, from this queue.
func (q *TUNQueue) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return q.t.read(q.dev, bufs, sizes, offset)
}

// Write is as TUN.Write, through this queue.
func (q *TUNQueue) Write(bufs [][]byte, offset int) (int, error) {
	return q.t.write(q.dev, bufs, offset)
}

// openTUNFile opens /dev/net/tun and attaches it to device name with
// flags (TUNSETIFF: creating the device or, with IFF_MULTI_QUEUE, adding a
// queue), then hands it to wireguard's tun package, which makes it
// non-blocking before Go's poller sees it and turns offloads on when flags
// ask for the virtio-net header. The device is unmonitored: wireguard's
// CreateTUN would also start, per queue, a netlink listener blocked in
// ppoll on a thread of its own and a goroutine that writes to the device
// every second to learn whether it is up, for link events gosec has no
// use for. That write was a system call every second from an otherwise
// idle daemon, and every system call made while Go's sysmon thread sleeps
// waiting for work wakes it (a futex wake, tens of microseconds on our
// VMs) and resets its polling to 20 us (NOTES.md, "Latency of sparse
// packets"; this alone did not move a ping's latency measurably). The
// MTU is set over netlink (OpenTUN).
func openTUNFile(name string, flags uint16) (tun.Device, error) {
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	ifr, err := unix.NewIfreq(name)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	ifr.SetUint16(flags)
	if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	// From here the descriptor belongs to the *os.File the package wraps
	// it in: on an error that file's finalizer closes it.
	dev, _, err := tun.CreateUnmonitoredTUNFromFD(fd)
	return dev, err
}

// Name returns the interface name.
func (t *TUN) Name() string { return t.name }

// Index returns the interface index.
func (t *TUN) Index() int { return t.index }

// Offload reports whether the device runs with virtio-net offloads.
func (t *TUN) Offload() bool { return t.offload }

// BatchSize is the number of buffers Read may fill and Write should be given
// at once (128 with offloads, 1 without).
func (t *TUN) BatchSize() int { return t.dev.BatchSize() }

// Read reads one or more packets into bufs[i][offset:], setting sizes[i],
// and returns the number of packets. len(sizes) >= len(bufs); with offloads
// each buffer must hold an MTU-sized packet after offset and len(bufs)
// should be BatchSize, since a super-packet can split into that many.
func (t *TUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	return t.read(t.dev, bufs, sizes, offset)
}

// read reads from one of the device's queues.
func (t *TUN) read(dev tun.Device, bufs [][]byte, sizes []int, offset int) (int, error) {
	n, err := dev.Read(bufs, sizes, offset)
	if err != nil {
		return n, t.ioErr("read", err)
	}
	return n, nil
}

// Write writes the packets bufs[i][offset:] into the kernel. offset must be
// at least TUNHeadroom. With offloads, segments of the same TCP or UDP flow
// are coalesced into the first buffer of the flow when its capacity allows
// (give buffers of 64 KB capacity to get GRO), so the contents of bufs are
// clobbered. It returns the number of bytes written (as the device counts).
func (t *TUN) Write(bufs [][]byte, offset int) (int, error) {
	return t.write(t.dev, bufs, offset)
}

// write writes through one of the device's queues.
func (t *TUN) write(dev tun.Device, bufs [][]byte, offset int) (int, error) {
	if offset < TUNHeadroom {
		return 0, fmt.Errorf("netio: tun write: offset %d below TUNHeadroom %d", offset, TUNHeadroom)
	}
	n, err := dev.Write(bufs, offset)
	if err != nil {
		return n, t.ioErr("write", err)
	}
	return n, nil
}

// MTU returns the device's current MTU.
func (t *TUN) MTU() (int, error) {
	link, err := t.nl.LinkByIndex(t.index)
	if err != nil {
		return 0, fmt.Errorf("netio: tun %s: %w", t.name, err)
	}
	return link.Attrs().MTU, nil
}

// SetMTU changes the device's MTU.
func (t *TUN) SetMTU(mtu int) error {
	link, err := t.nl.LinkByIndex(t.index)
	if err != nil {
		return fmt.Errorf("netio: tun %s: %w", t.name, err)
	}
	if err := t.nl.LinkSetMTU(link, mtu); err != nil {
		return fmt.Errorf("netio: tun %s: set MTU %d: %w", t.name, mtu, err)
	}
	return nil
}

// ioErr wraps a device error; once Close was called it is ErrClosed,
// whatever the closed file reported.
func (t *TUN) ioErr(op string, err error) error {
	select {
	case <-t.done:
		return fmt.Errorf("netio: tun %s: %w", op, ErrClosed)
	default:
		return fmt.Errorf("netio: tun %s: %w", op, err)
	}
}

// Close removes the device (a TUN disappears when its last file closes).
func (t *TUN) Close() error {
	var err error
	t.once.Do(func() {
		close(t.done) // first, so that failing Reads see ErrClosed
		var errs []error
		for i := len(t.queues) - 1; i >= 0; i-- {
			errs = append(errs, t.queues[i].Close())
		}
		t.steerMu.Lock()
		if t.steer != nil {
			errs = append(errs, t.steer.close())
			t.steer = nil
		}
		t.steerMu.Unlock()
		err = errors.Join(errs...)
		if t.nl != nil {
			t.nl.Close()
		}
	})
	return err
}
