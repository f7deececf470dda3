package netio

import (
	"encoding/binary"
	"net"
	"net/netip"
	"runtime"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// The benchmarks in this file compare ways of moving 1400-octet raw ESP
// packets over a veth between two namespaces (see NOTES.md for results):
//
//   - BenchmarkESPSend: the sender's cost with a raw IPv4 socket (sendmmsg,
//     the kernel's IP output path) against AF_PACKET (sendmmsg of frames
//     with their Ethernet header, with and without PACKET_QDISC_BYPASS, and
//     a TPACKET_V2 TX ring). The receiver is a raw socket in every case.
//   - BenchmarkESPRecv: the receiver's cost with a raw socket (recvmmsg)
//     against a TPACKET_V3 RX ring with a classic BPF filter. The sender is
//     a raw socket in every case.
//
// Both report packets/s and CPU nanoseconds per packet of the measured
// thread (getrusage RUSAGE_THREAD on a locked OS thread), plus the whole
// process's CPU per packet (on veth the receiving namespace's softirq work
// runs in the sending thread's context, so the split is indicative).

// threadCPU returns the calling thread's user+system CPU time.
func threadCPU() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_THREAD, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func procCPU() time.Duration {
	var ru unix.Rusage
	_ = unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchPacketSock opens an AF_PACKET SOCK_RAW socket for sending only
// (protocol 0: it receives nothing) in the calling thread's namespace.
func benchPacketSock(tb testing.TB, bypass bool) int {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	if bypass {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
			tb.Fatal(err)
		}
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 8<<20)
	return fd
}

// pktSender sends ms with sendmmsg over an AF_PACKET socket, each message
// being [eth header, IPv4 packet] as two iovecs.
type pktSender struct {
	fd   int
	eth  [14]byte
	sa   unix.RawSockaddrLinklayer
	hdrs []unix.Mmsghdr
	iovs []unix.Iovec
}

func newPktSender(fd, ifindex int, src, dst net.HardwareAddr) *pktSender {
	s := &pktSender{fd: fd, hdrs: make([]unix.Mmsghdr, MaxBatch), iovs: make([]unix.Iovec, 2*MaxBatch)}
	copy(s.eth[0:6], dst)
	copy(s.eth[6:12], src)
	binary.BigEndian.PutUint16(s.eth[12:], unix.ETH_P_IP)
	s.sa = unix.RawSockaddrLinklayer{Family: unix.AF_PACKET, Protocol: htons(unix.ETH_P_IP), Ifindex: int32(ifindex)}
	return s
}

func (s *pktSender) send(ms []Msg) (int, error) {
	for i := range ms {
		s.iovs[2*i].Base = &s.eth[0]
		s.iovs[2*i].SetLen(14)
		s.iovs[2*i+1].Base = &ms[i].Buf[0]
		s.iovs[2*i+1].SetLen(len(ms[i].Buf))
		h := &s.hdrs[i]
		h.Hdr.Name = (*byte)(unsafe.Pointer(&s.sa))
		h.Hdr.Namelen = unix.SizeofSockaddrLinklayer
		h.Hdr.Iov = &s.iovs[2*i]
		h.Hdr.Iovlen = 2
	}
	n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(s.fd), uintptr(unsafe.Pointer(&s.hdrs[0])), uintptr(len(ms)), 0, 0, 0)
	if e != 0 {
		return int(n), e
	}
	return int(n), nil
}

// benchTxRing is a TPACKET_V2 TX ring over an AF_PACKET SOCK_RAW socket.
type benchTxRing struct {
	fd        int
	mem       []byte
	frameSize int
	frames    int
	next      int
	eth       [14]byte
	sa        unix.RawSockaddrLinklayer
}

func newBenchTxRing(tb testing.TB, fd, ifindex int, src, dst net.HardwareAddr) *benchTxRing {
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2); err != nil {
		tb.Fatal(err)
	}
	req := unix.TpacketReq{Block_size: 1 << 16, Block_nr: 16, Frame_size: 2048, Frame_nr: 16 * 32}
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_TX_RING, &req); err != nil {
		tb.Fatal(err)
	}
	mem, err := unix.Mmap(fd, 0, int(req.Block_size*req.Block_nr), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		tb.Fatal(err)
	}
	r := &benchTxRing{fd: fd, mem: mem, frameSize: int(req.Frame_size), frames: int(req.Frame_nr)}
	copy(r.eth[0:6], dst)
	copy(r.eth[6:12], src)
	binary.BigEndian.PutUint16(r.eth[12:], unix.ETH_P_IP)
	r.sa = unix.RawSockaddrLinklayer{Family: unix.AF_PACKET, Protocol: htons(unix.ETH_P_IP), Ifindex: int32(ifindex)}
	return r
}

// send copies ms into free frames, then kicks the kernel with one sendto.
func (r *benchTxRing) send(ms []Msg) (int, error) {
	const dataOff = unix.SizeofTpacket2Hdr // TPACKET2_HDRLEN - sizeof(sockaddr_ll)
	queued := 0
	for i := range ms {
		f := r.mem[r.next*r.frameSize : (r.next+1)*r.frameSize]
		h := (*unix.Tpacket2Hdr)(unsafe.Pointer(&f[0]))
		for atomic.LoadUint32(&h.Status) != unix.TP_STATUS_AVAILABLE {
			// Frame still owned by the kernel: flush and wait.
			if err := r.kick(); err != nil {
				return queued, err
			}
			runtime.Gosched()
		}
		copy(f[dataOff:], r.eth[:])
		n := copy(f[dataOff+14:], ms[i].Buf)
		h.Len = uint32(14 + n)
		atomic.StoreUint32(&h.Status, unix.TP_STATUS_SEND_REQUEST)
		r.next = (r.next + 1) % r.frames
		queued++
	}
	return queued, r.kick()
}

func (r *benchTxRing) kick() error {
	_, _, e := unix.Syscall6(unix.SYS_SENDTO, uintptr(r.fd), 0, 0, 0, uintptr(unsafe.Pointer(&r.sa)), unix.SizeofSockaddrLinklayer)
	if e != 0 && e != unix.EAGAIN {
		return e
	}
	return nil
}

// linkInfo returns ifindex and MAC of name in ns.
func linkInfo(tb testing.TB, ns, name string) (int, net.HardwareAddr) {
	h := nettest.Handle(tb, ns)
	l, err := h.LinkByName(name)
	if err != nil {
		tb.Fatal(err)
	}
	return l.Attrs().Index, l.Attrs().HardwareAddr
}

// measureSend runs send in batches of batch on a locked thread until b.N
// packets went out, with recv counting in the background, and reports
// rates and CPU per packet.
func measureSend(b *testing.B, batch int, out []Msg, send func([]Msg) (int, error), recv func([]Msg) (int, error), stop func()) {
	var got, lastRx atomic.Int64
	done := make(chan struct{})
	in := recvMsgs(MaxBatch, 2048)
	go func() {
		defer close(done)
		for {
			n, err := recv(in)
			if err != nil {
				return
			}
			got.Add(int64(n))
			lastRx.Store(time.Now().UnixNano())
		}
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	b.ReportAllocs()
	b.ResetTimer()
	start, cpu0, p0 := time.Now(), threadCPU(), procCPU()
	for sent := 0; sent < b.N; {
		k := min(batch, b.N-sent)
		n, err := send(out[:k])
		if err != nil && err != syscall.ENOBUFS {
			b.Fatal(err)
		}
		sent += n
	}
	cpu := threadCPU() - cpu0
	b.StopTimer()
	sendDur := time.Since(start)
	for time.Since(time.Unix(0, lastRx.Load())) < 100*time.Millisecond {
		time.Sleep(20 * time.Millisecond)
	}
	pcpu := procCPU() - p0
	r := got.Load()
	b.ReportMetric(float64(b.N)/sendDur.Seconds(), "tx-pps")
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "tx-cpu-ns/pkt")
	b.ReportMetric(float64(pcpu.Nanoseconds())/float64(b.N), "all-cpu-ns/pkt")
	b.ReportMetric(100*float64(int64(b.N)-r)/float64(b.N), "loss%")
	stop()
	<-done
}

func BenchmarkESPSend(b *testing.B) {
	testutil.NeedRoot(b)
	p := nettest.NewPair(b, "grg-bs", netip.MustParsePrefix("10.231.61.0/24"))
	aIdx, aMAC := linkInfo(b, p.A.NS, p.A.Name)
	_, bMAC := linkInfo(b, p.B.NS, p.B.Name)
	const batch = 32
	out := espPackets(p, batch, 1400)
	for _, tc := range []string{"raw-sendmmsg", "packet-sendmmsg", "packet-sendmmsg-bypass", "packet-txring-bypass", "PacketConn"} {
		b.Run(tc, func(b *testing.B) {
			tx, rx := rawPair(b, p)
			var send func([]Msg) (int, error)
			switch tc {
			case "raw-sendmmsg":
				send = tx.Send
			case "PacketConn":
				var pc *PacketConn
				nettest.MustDo(b, p.A.NS, func() (err error) {
					pc, err = ListenPacket(PacketConfig{RawConfig: RawConfig{Proto: 50, Mark: testMark, Buffer: 8 << 20}})
					return err
				})
				defer pc.Close()
				// Resolve the neighbour: one packet through the raw socket,
				// then wait for the cache.
				if _, err := pc.Send(out[:1]); err != nil {
					b.Fatal(err)
				}
				for deadline := time.Now().Add(3 * time.Second); pc.hops.lookup(p.BAddr) == nil; time.Sleep(10 * time.Millisecond) {
					if time.Now().After(deadline) {
						b.Fatal("no AF_PACKET next hop")
					}
				}
				send = pc.Send
			default:
				var fd int
				nettest.MustDo(b, p.A.NS, func() error {
					fd = benchPacketSock(b, tc != "packet-sendmmsg")
					return nil
				})
				defer unix.Close(fd)
				if tc == "packet-txring-bypass" {
					r := newBenchTxRing(b, fd, aIdx, aMAC, bMAC)
					defer unix.Munmap(r.mem)
					send = r.send
				} else {
					send = newPktSender(fd, aIdx, aMAC, bMAC).send
				}
			}
			measureSend(b, batch, out, send, rx.Recv, func() { rx.Close() })
		})
	}
}

// rxRing is a TPACKET_V3 RX ring on an AF_PACKET SOCK_DGRAM socket with a
// classic BPF filter for unfragmented IPv4 ESP/AH to one address.
type rxRing struct {
	fd        int
	mem       []byte
	blockSize int
	blocks    int
	cur       int
}

// espFilter accepts unfragmented IPv4 packets of protocol 50 or 51 to dst
// (offsets relative to the IPv4 header: SOCK_DGRAM).
func espFilter(dst netip.Addr) []unix.SockFilter {
	d := binary.BigEndian.Uint32(dst.AsSlice())
	return []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 9},               // 0: A = proto
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 1, K: 50},      // 1
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 5, K: 51},      // 2
		{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: 16},              // 3: A = dst
		{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 3, K: d},       // 4
		{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 6},               // 5: A = flags/frag
		{Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, Jt: 1, K: 0x3fff}, // 6: MF or offset
		{Code: unix.BPF_RET | unix.BPF_K, K: 0xffff},                        // 7 accept
		{Code: unix.BPF_RET | unix.BPF_K, K: 0},                             // 8 drop
	}
}

func attachFilter(tb testing.TB, fd int, f []unix.SockFilter) {
	prog := unix.SockFprog{Len: uint16(len(f)), Filter: &f[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
		tb.Fatal(err)
	}
}

func newRxRing(tb testing.TB, ifindex int, dst netip.Addr) *rxRing {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		tb.Fatal(err)
	}
	attachFilter(tb, fd, espFilter(dst))
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V3); err != nil {
		tb.Fatal(err)
	}
	req := unix.TpacketReq3{Block_size: 1 << 20, Block_nr: 16, Frame_size: 2048, Frame_nr: 16 << 9, Retire_blk_tov: 1}
	if err := unix.SetsockoptTpacketReq3(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		tb.Fatal(err)
	}
	mem, err := unix.Mmap(fd, 0, int(req.Block_size*req.Block_nr), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		tb.Fatal(err)
	}
	sa := unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifindex}
	if err := unix.Bind(fd, &sa); err != nil {
		tb.Fatal(err)
	}
	return &rxRing{fd: fd, mem: mem, blockSize: int(req.Block_size), blocks: int(req.Block_nr)}
}

// recv copies packets of the next ready block into ms (a block not fitting
// in ms is consumed anyway in this benchmark: counts matter, not contents).
func (r *rxRing) recv(ms []Msg) (int, error) {
	for {
		blk := r.mem[r.cur*r.blockSize : (r.cur+1)*r.blockSize]
		hdr := (*unix.TpacketHdrV1)(unsafe.Pointer(&blk[8]))
		if atomic.LoadUint32(&hdr.Block_status)&unix.TP_STATUS_USER == 0 {
			fds := []unix.PollFd{{Fd: int32(r.fd), Events: unix.POLLIN}}
			k, err := unix.Poll(fds, 100)
			if err != nil && err != unix.EINTR {
				return 0, err
			}
			if fds[0].Revents&(unix.POLLERR|unix.POLLNVAL) != 0 {
				return 0, ErrClosed
			}
			if k == 0 {
				return 0, nil
			}
			continue
		}
		n := int(hdr.Num_pkts)
		off := int(hdr.Offset_to_first_pkt)
		k := 0
		for i := 0; i < n; i++ {
			ph := (*unix.Tpacket3Hdr)(unsafe.Pointer(&blk[off]))
			if k < len(ms) {
				data := blk[off+int(ph.Net):][:ph.Snaplen]
				ms[k].N = copy(ms[k].Buf, data)
				k++
			}
			off += int(ph.Next_offset)
		}
		atomic.StoreUint32(&hdr.Block_status, unix.TP_STATUS_KERNEL)
		r.cur = (r.cur + 1) % r.blocks
		return n, nil
	}
}

func BenchmarkESPRecv(b *testing.B) {
	testutil.NeedRoot(b)
	p := nettest.NewPair(b, "grg-br", netip.MustParsePrefix("10.231.62.0/24"))
	bIdx, _ := linkInfo(b, p.B.NS, p.B.Name)
	const batch = 32
	out := espPackets(p, batch, 1400)
	for _, tc := range []string{"raw-recvmmsg", "tpacket-v3-ring", "RxRing-v2"} {
		b.Run(tc, func(b *testing.B) {
			tx, rx := rawPair(b, p)
			recv := rx.Recv
			stop := func() { rx.Close() }
			if tc == "RxRing-v2" {
				attachFilter(b, rx.s.fd, []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}})
				var r *RxRing
				nettest.MustDo(b, p.B.NS, func() (err error) {
					r, err = ListenRing(RingConfig{Protos: []int{50}})
					return err
				})
				defer r.Close()
				recv = r.Recv
				stop = func() { rx.Close(); r.Close() } // unblocks Recv after losses
			}
			if tc == "tpacket-v3-ring" {
				// The raw socket stays open (no ICMP protocol-unreachable)
				// but takes nothing: drop-all filter.
				attachFilter(b, rx.s.fd, []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}})
				var r *rxRing
				nettest.MustDo(b, p.B.NS, func() error {
					r = newRxRing(b, bIdx, p.BAddr)
					return nil
				})
				defer unix.Munmap(r.mem)
				recv = r.recv
				defer unix.Close(r.fd)
			}
			measureRecv(b, batch, out, tx.Send, recv, stop)
		})
	}
}

// measureRecv sends b.N packets from a background goroutine and receives on
// a locked thread, reporting the receiving thread's CPU per packet.
func measureRecv(b *testing.B, batch int, out []Msg, send func([]Msg) (int, error), recv func([]Msg) (int, error), stop func()) {
	in := recvMsgs(MaxBatch, 2048)
	var sendDone atomic.Bool
	b.ReportAllocs()
	b.ResetTimer()
	go func() {
		for sent := 0; sent < b.N; {
			n, err := send(out[:min(batch, b.N-sent)])
			if err != nil {
				break
			}
			sent += n
		}
		sendDone.Store(true)
		time.Sleep(300 * time.Millisecond)
		stop()
	}()
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	start, cpu0, p0 := time.Now(), threadCPU(), procCPU()
	got := 0
	last := time.Now()
	var cpuAtLast time.Duration
	for got < b.N {
		if sendDone.Load() && time.Since(last) > 200*time.Millisecond {
			break
		}
		n, err := recv(in)
		if err != nil {
			if sendDone.Load() {
				break
			}
			b.Fatal(err)
		}
		if n > 0 {
			got += n
			last = time.Now()
			cpuAtLast = threadCPU()
		}
	}
	b.StopTimer()
	if got == 0 {
		b.Fatal("nothing received")
	}
	dur := last.Sub(start)
	b.ReportMetric(float64(got)/dur.Seconds(), "rx-pps")
	b.ReportMetric(float64((cpuAtLast-cpu0).Nanoseconds())/float64(got), "rx-cpu-ns/pkt")
	b.ReportMetric(float64((procCPU()-p0).Nanoseconds())/float64(got), "all-cpu-ns/pkt")
	b.ReportMetric(100*float64(b.N-got)/float64(b.N), "loss%")
	for !sendDone.Load() {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(350 * time.Millisecond)
}

// BenchmarkESPRecvLatency measures one packet at a time: send one
// 200-octet ESP packet through a raw socket, wait until the receiver has
// it. ns/op is the send system call, the veth and IP input in softirq, and
// the receiver's wakeup: a raw socket (recvmmsg), the TPACKET_V2 RxRing
// (woken per frame) and the TPACKET_V3 ring above (woken when its block is
// retired, retire_blk_tov 1 ms).
func BenchmarkESPRecvLatency(b *testing.B) {
	testutil.NeedRoot(b)
	p := nettest.NewPair(b, "grx-bl", netip.MustParsePrefix("10.231.178.0/24"))
	bIdx, _ := linkInfo(b, p.B.NS, p.B.Name)
	out := espPackets(p, 1, 200)
	for _, tc := range []string{"raw-socket", "RxRing-v2", "tpacket-v3-ring"} {
		b.Run(tc, func(b *testing.B) {
			tx, rx := rawPair(b, p)
			recv := rx.Recv
			switch tc {
			case "RxRing-v2":
				attachFilter(b, rx.s.fd, []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}})
				var r *RxRing
				nettest.MustDo(b, p.B.NS, func() (err error) {
					r, err = ListenRing(RingConfig{Protos: []int{50}})
					return err
				})
				defer r.Close()
				recv = r.Recv
			case "tpacket-v3-ring":
				attachFilter(b, rx.s.fd, []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}})
				var r *rxRing
				nettest.MustDo(b, p.B.NS, func() error {
					r = newRxRing(b, bIdx, p.BAddr)
					return nil
				})
				defer unix.Close(r.fd)
				defer unix.Munmap(r.mem)
				recv = r.recv
			}
			in := recvMsgs(8, 2048)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := tx.Send(out); err != nil {
					b.Fatal(err)
				}
				for got := 0; got == 0; {
					n, err := recv(in)
					if err != nil {
						b.Fatal(err)
					}
					got += n
				}
			}
		})
	}
}
