package netio

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
)

// RingConfig configures an RxRing.
type RingConfig struct {
	// Protos are the IP protocols received: 50 (ESP), 51 (AH) or both.
	// One ring for both, not one each: the kernel's reassembly for
	// fanout groups (PACKET_FANOUT_FLAG_DEFRAG) is one set of queues per
	// namespace, shared by every such group, so with two groups the
	// first to see a datagram's last fragment gets it whole and the other
	// never does (fragmented ESP went to the AH ring's group and was
	// dropped by its filter: e2e TestManualMatrix's 3000-octet pings,
	// TestRingFragmentsBothProtocols).
	Protos []int
	// Size is the ring's memory in bytes (default 4 MB): how much the
	// kernel can hold while the reader is busy. Packets that find the ring
	// full are dropped by the kernel and counted (RingStats.KernelDrops).
	Size int
}

// RingStats counts what an RxRing saw.
type RingStats struct {
	// Packets were passed to Recv's caller.
	Packets uint64 `json:"packets"`
	// NotLocal were ESP/AH to an address that is not this host's (being
	// forwarded; the raw socket would never have seen them): skipped.
	NotLocal uint64 `json:"not_local"`
	// BadHeader had an IPv4 header the kernel's input path would have
	// dropped (checksum, lengths): skipped.
	BadHeader uint64 `json:"bad_header"`
	// Copied were larger than a ring frame and read from the socket queue.
	Copied uint64 `json:"copied"`
	// Truncated were larger than a frame when the socket queue was full:
	// passed on with Msg.Trunc set.
	Truncated uint64 `json:"truncated"`
	// KernelDrops were dropped by the kernel because the ring was full.
	KernelDrops uint64 `json:"kernel_drops"`
}

// Ring geometry: frames of ringFrameSize bytes in blocks of ringBlockSize.
// A frame holds the TPACKET_V2 header, the sockaddr_ll and an IPv4 packet
// of up to ringFrameSize-48 bytes (2000: a 1500-byte MTU and then some);
// a larger packet (a reassembled one, a jumbo frame) is truncated in the
// ring and its whole copy queued on the socket (PACKET_COPY_THRESH), which
// Recv reads in its place.
const (
	ringFrameSize   = 2048
	ringBlockSize   = 1 << 16
	ringDefaultSize = 4 << 20
	// ringCopyBuffer is the socket receive buffer for those copies.
	ringCopyBuffer = 4 << 20
)

// RxRing receives ESP and/or AH through an AF_PACKET TPACKET_V2 receive ring
// instead of a raw IPv4 socket: the kernel copies each packet into a frame
// of memory shared with gosec, so receiving costs no system call per batch,
// no queued socket buffer and no copy out of the kernel. TPACKET_V2 and
// not V3: a V3 ring wakes its reader only when a block fills or its
// retire timer fires (1 ms per lone packet, BenchmarkESPRecvLatency), V2
// on every packet; those wakeups cost about what the ring saves, and end
// to end it measured slower than the raw socket (NOTES.md), so the daemon
// uses it only when asked (gosec start --rxring).
//
// The socket is bound to IPv4 on every interface with a classic BPF filter
// that accepts only Protos, unfragmented, addressed to this host's link
// address (PACKET_HOST, or PACKET_OTHERHOST with ringMark: what an
// IngressBypass handed over). It joins a fanout group of its own with
// PACKET_FANOUT_FLAG_DEFRAG, so the kernel reassembles fragmented IPv4
// before the filter sees it: Recv returns whole packets as RawConn does.
// Those reassembly queues are shared by every DEFRAG fanout group of the
// namespace (see RingConfig.Protos): open one ring per namespace, and
// expect fragmented packets to go missing if another program (an IDS
// reading AF_PACKET with defragmentation, say) has such a group too.
//
// The ring sits before the IP stack, so what the kernel's input path did
// for the raw socket is done here or not at all:
//
//   - Recv passes on only packets to one of this host's local addresses
//     (the kernel's local routing table, kept current from netlink route
//     events); ESP/AH being forwarded through this host is skipped, not
//     counted as a drop of the data plane.
//   - Recv checks the IPv4 header (version, lengths, checksum) as ip_rcv
//     does, and trims link-layer padding to the IPv4 total length.
//   - Netfilter INPUT (and so the kernel SPI gate, spigate.go) and
//     reverse-path filtering no longer stand before the data plane: a packet
//     they would have dropped reaches it, and unknown SPIs are dropped there
//     (counted, no allocation).
//   - IP options are as they arrived (the raw socket saw Record Route and
//     Timestamp filled in by this host; AH treats both as mutable).
//
// The IP stack still processes every packet; the caller keeps a raw socket
// for each protocol open with RawConfig.NoRecv, so that the kernel does not
// answer it with ICMP protocol-unreachable.
//
// Recv is safe for concurrent use (callers take turns); Close unblocks it.
type RxRing struct {
	protos    []int
	f         *os.File
	rc        syscall.RawConn
	fd        int
	mem       []byte
	frames    int
	frameSize int
	local     *localAddrs

	mu   sync.Mutex // one reader at a time; Close waits for it
	head int
	// State of the Recv in progress, for the RawConn callback.
	ms    []Msg
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool

	closed atomic.Bool

	packets, notLocal, badHeader, copied, truncated atomic.Uint64
	statsMu                                         sync.Mutex
	kernelDrops                                     uint64
}

// skfAdPkttype is SKF_AD_OFF + SKF_AD_PKTTYPE: a classic BPF load from it
// gives the packet type (PACKET_HOST, ...); skfAdMark, SKF_AD_OFF +
// SKF_AD_MARK, the packet's mark.
const (
	skfAdPkttype = 0xfffff000 + 4
	skfAdMark    = 0xfffff000 + 8
)

// ringMark is the mark of a packet an IngressBypass handed to the ring:
// it made the packet PACKET_OTHERHOST, so that the IP stack drops it at
// once, and marked it so that the ring still takes it.
const ringMark = 0x5ec1

// ringFilter accepts IPv4 packets of the protocols that are not fragments
// (after the fanout's reassembly) and were addressed to this host's link
// address. Offsets are relative to the IPv4 header (SOCK_DGRAM).
func ringFilter(protos []int) []unix.SockFilter {
	f := []unix.SockFilter{
		{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: uint32(iphdr.OffProtocol)}, // A = protocol
	}
	for i, p := range protos {
		// Match: on to the fragment test after the last comparison. No
		// match: the next comparison; after the last one, drop (the last
		// instruction, 8 after the fragment test's first).
		left := uint8(len(protos) - 1 - i)
		jf := uint8(0)
		if left == 0 {
			jf = 8
		}
		f = append(f, unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: left, Jf: jf, K: uint32(p)})
	}
	return append(f,
		unix.SockFilter{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: uint32(iphdr.OffFlagsFrag)}, // A = flags, offset
		unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, Jt: 6, K: 0x3fff},            // MF or offset: drop
		unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: skfAdPkttype},               // A = packet type
		unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 3, K: unix.PACKET_HOST},   // to us: accept
		unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 3, K: unix.PACKET_OTHERHOST},
		unix.SockFilter{Code: unix.BPF_LD | unix.BPF_W | unix.BPF_ABS, K: skfAdMark},        // A = mark
		unix.SockFilter{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 1, K: ringMark}, // not handed over: drop
		unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: 0x40000},                        // accept all of it
		unix.SockFilter{Code: unix.BPF_RET | unix.BPF_K, K: 0},                              // drop
	)
}

// attachRingFilter makes ringFilter(protos) fd's socket filter (replacing
// any other, the SPI filter's too).
func attachRingFilter(fd int, protos []int) error {
	filter := ringFilter(protos)
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	return unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog)
}

// ListenRing opens an RxRing for cfg.Protos in the calling thread's
// network namespace. It fails where AF_PACKET rings are not available (no
// CAP_NET_RAW, an old kernel); callers then receive on the raw socket.
func ListenRing(cfg RingConfig) (*RxRing, error) {
	if len(cfg.Protos) == 0 || len(cfg.Protos) > 4 {
		return nil, fmt.Errorf("netio: receive ring: %d protocols, want 1 to 4", len(cfg.Protos))
	}
	for _, p := range cfg.Protos {
		if p <= 0 || p > 255 {
			return nil, fmt.Errorf("netio: receive ring: bad protocol %d", p)
		}
	}
	if cfg.Size <= 0 {
		cfg.Size = ringDefaultSize
	}
	blocks := max(1, (cfg.Size+ringBlockSize-1)/ringBlockSize)
	// Protocol 0: nothing is received until bind, after filter and ring.
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netio: receive ring %v: AF_PACKET socket: %w", cfg.Protos, err)
	}
	fail := func(what string, err error) (*RxRing, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("netio: receive ring %v: %s: %w", cfg.Protos, what, err)
	}
	if err := attachRingFilter(fd, cfg.Protos); err != nil {
		return fail("BPF filter", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2); err != nil {
		return fail("TPACKET_V2", err)
	}
	// Packets larger than a frame: a whole copy on the socket queue.
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_COPY_THRESH, 1); err != nil {
		return fail("PACKET_COPY_THRESH", err)
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, ringCopyBuffer) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, ringCopyBuffer)
	}
	req := unix.TpacketReq{Block_size: ringBlockSize, Block_nr: uint32(blocks), Frame_size: ringFrameSize,
		Frame_nr: uint32(blocks * (ringBlockSize / ringFrameSize))}
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_RX_RING, &req); err != nil {
		return fail("PACKET_RX_RING", err)
	}
	mem, err := unix.Mmap(fd, 0, int(req.Block_size*req.Block_nr), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("mmap", err)
	}
	failMapped := func(what string, err error) (*RxRing, error) {
		unix.Munmap(mem)
		return fail(what, err)
	}
	// The local addresses before the first packet.
	local, err := newLocalAddrs()
	if err != nil {
		return failMapped("local addresses", err)
	}
	failLocal := func(what string, err error) (*RxRing, error) {
		local.close()
		return failMapped(what, err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP)}); err != nil {
		return failLocal("bind", err)
	}
	// A fanout group of one, for its reassembly: a fragment is dropped by
	// the filter until the fanout joins, which is a moment from now.
	// UNIQUEID has the kernel choose a group id not in use in this
	// namespace (each ring and each daemon its own group). The group's
	// hook sees every IPv4 packet the host receives (the filter runs
	// after it), so its demultiplexing should cost nothing: CPU (the
	// receiving CPU's number modulo one) rather than HASH, which would
	// run the flow dissector on every packet that has no hash yet (veth,
	// TUN). A group of several sockets would want HASH, to keep each
	// flow on one of them.
	fanout := (unix.PACKET_FANOUT_CPU | unix.PACKET_FANOUT_FLAG_DEFRAG | unix.PACKET_FANOUT_FLAG_UNIQUEID) << 16
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_FANOUT, fanout); err != nil {
		return failLocal("PACKET_FANOUT with defragmentation", err)
	}
	f := os.NewFile(uintptr(fd), fmt.Sprintf("ring-%v", cfg.Protos))
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		unix.Munmap(mem)
		local.close()
		return nil, fmt.Errorf("netio: receive ring %v: %w", cfg.Protos, err)
	}
	r := &RxRing{protos: append([]int(nil), cfg.Protos...), f: f, rc: rc, fd: fd, mem: mem, frames: int(req.Frame_nr), frameSize: ringFrameSize, local: local}
	r.fn = r.drain
	return r, nil
}

// htons converts a 16-bit value to network byte order.
func htons(v uint16) uint16 { return v<<8 | v>>8 }

// Protos returns the IP protocols the ring receives.
func (r *RxRing) Protos() []int { return append([]int(nil), r.protos...) }

// Recv copies up to len(ms) (at most MaxBatch) packets from the ring into
// ms, blocking until at least one is there, as RawConn.Recv does: ms[i].N
// bytes of ms[i].Buf hold the whole IPv4 packet (exactly its total length),
// ms[i].From its source address, ms[i].Trunc says it did not fit.
func (r *RxRing) Recv(ms []Msg) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	if len(ms) > MaxBatch {
		ms = ms[:MaxBatch]
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed.Load() {
		return 0, fmt.Errorf("netio: receive ring: %w", ErrClosed)
	}
	r.ms, r.n, r.errno = ms, 0, 0
	err := r.rc.Read(r.fn)
	n := r.n
	r.ms = nil
	if n > 0 {
		r.packets.Add(uint64(n))
		return n, nil
	}
	if err != nil {
		if r.closed.Load() {
			return 0, fmt.Errorf("netio: receive ring: %w", ErrClosed)
		}
		return 0, fmt.Errorf("netio: receive ring: %w", err)
	}
	return 0, fmt.Errorf("netio: receive ring: %w", r.errno)
}

// drain is the RawConn.Read callback: it takes every ready frame (up to
// len(r.ms) packets) and reports done when it has at least one packet,
// else the netpoller waits for the next.
func (r *RxRing) drain(fd uintptr) bool {
	for r.n < len(r.ms) {
		frame := r.mem[r.head*r.frameSize:][:r.frameSize]
		h := (*unix.Tpacket2Hdr)(unsafe.Pointer(&frame[0]))
		st := atomic.LoadUint32(&h.Status)
		if st&unix.TP_STATUS_USER == 0 {
			break
		}
		ok := r.take(int(fd), frame, h, st, &r.ms[r.n])
		atomic.StoreUint32(&h.Status, unix.TP_STATUS_KERNEL)
		r.head++
		if r.head == r.frames {
			r.head = 0
		}
		if ok {
			r.n++
		}
		if r.errno != 0 {
			return true
		}
	}
	return r.n > 0
}

// take checks the packet in frame and copies it into m; false: skipped.
func (r *RxRing) take(fd int, frame []byte, h *unix.Tpacket2Hdr, st uint32, m *Msg) bool {
	off, snap := int(h.Net), int(h.Snaplen)
	if off+snap > len(frame) {
		r.badHeader.Add(1)
		return false
	}
	pkt := frame[off : off+snap]
	full := int(h.Len)
	trunc := false
	if st&unix.TP_STATUS_COPY != 0 {
		// The whole packet is next on the socket queue.
		n, _, e := unix.Syscall6(unix.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(unsafe.SliceData(m.Buf))), uintptr(len(m.Buf)),
			unix.MSG_DONTWAIT|unix.MSG_TRUNC, 0, 0)
		if e != 0 {
			if e != unix.EAGAIN && e != unix.EINTR {
				r.errno = e
			}
			r.truncated.Add(1)
			return false
		}
		r.copied.Add(1)
		full = int(n)
		pkt = m.Buf[:min(full, len(m.Buf))]
		trunc = full > len(m.Buf)
	} else if snap < full {
		trunc = true
	}
	// ip_rcv's checks on what it can see of the header.
	if len(pkt) < iphdr.IPv4MinLen || pkt[0]>>4 != 4 {
		r.badHeader.Add(1)
		return false
	}
	hl := int(pkt[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(pkt[iphdr.OffTotalLen:]))
	if hl < iphdr.IPv4MinLen || hl > len(pkt) || total < hl || total > full || iphdr.Checksum(pkt[:hl]) != 0 {
		r.badHeader.Add(1)
		return false
	}
	if !r.local.has([4]byte(pkt[iphdr.OffDst : iphdr.OffDst+4])) {
		r.notLocal.Add(1)
		return false
	}
	m.From = netip.AddrPortFrom(netip.AddrFrom4([4]byte(pkt[iphdr.OffSrc:iphdr.OffSrc+4])), 0)
	m.GSOSize = 0
	if st&unix.TP_STATUS_COPY != 0 {
		m.N = min(total, len(m.Buf))
		m.Trunc = trunc
		return true
	}
	if total <= len(pkt) {
		pkt = pkt[:total] // link-layer padding off
		trunc = false
	} else {
		trunc = true // the ring kept less than the packet
	}
	m.N = copy(m.Buf, pkt)
	m.Trunc = trunc || m.N < len(pkt)
	if m.Trunc {
		r.truncated.Add(1)
	}
	return true
}

// Stats returns the ring's counters.
func (r *RxRing) Stats() RingStats {
	r.statsMu.Lock()
	defer r.statsMu.Unlock()
	if !r.closed.Load() {
		// Clear on read in the kernel: accumulate.
		var st unix.TpacketStats
		if err := r.rc.Control(func(fd uintptr) {
			if s, err := unix.GetsockoptTpacketStats(int(fd), unix.SOL_PACKET, unix.PACKET_STATISTICS); err == nil {
				st = *s
			}
		}); err == nil {
			r.kernelDrops += uint64(st.Drops)
		}
	}
	return RingStats{Packets: r.packets.Load(), NotLocal: r.notLocal.Load(), BadHeader: r.badHeader.Load(),
		Copied: r.copied.Load(), Truncated: r.truncated.Load(), KernelDrops: r.kernelDrops}
}

// Close closes the socket, waits for a blocked Recv to return (with an
// error wrapping os.ErrClosed) and releases the ring.
func (r *RxRing) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	err := r.f.Close() // wakes Recv and waits for it to leave the fd
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := unix.Munmap(r.mem); err == nil {
		err = e
	}
	r.mem = nil
	r.local.close()
	return err
}
