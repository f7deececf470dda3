// Package netio is the I/O layer of gosec's userspace data plane: everything
// that touches the kernel and none of the IPsec crypto. It opens the TUN
// device that carries plaintext (with the virtio-net offloads that make one
// read return many packets), raw IPv4 sockets for ESP (50) and AH (51),
// the RFC 3948 ESP-in-UDP socket shared with IKE on port 4500, installs the
// policy routes that steer protected traffic into the TUN without looping the
// daemon's own packets back, the nftables filters, and builds ICMP
// fragmentation-needed replies for path MTU discovery.
//
// Sockets move packets in batches with recvmmsg/sendmmsg over preallocated
// message headers, driven by Go's netpoller through syscall.RawConn, so the
// steady state allocates nothing per packet.
package netio

import (
	"fmt"
	"net/netip"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// MaxBatch is the largest number of messages one Recv or Send hands the
// kernel in a single system call.
const MaxBatch = 128

// Msg is one datagram in a batch.
//
// On receive, Buf is the caller's buffer (its length is the space offered),
// and N, From, Trunc and GSOSize are filled in. On send, Buf is the datagram
// (or, with GSOSize set on a UDP socket, several datagrams of GSOSize bytes
// back to back, the last possibly shorter) and To its destination.
type Msg struct {
	Buf []byte
	// N is the number of bytes received into Buf.
	N int
	// From is the sender (receive). On a UDP send, a valid From address
	// is the local address to send from (an IP_PKTINFO control message),
	// for a socket bound to the unspecified address on a host with several
	// addresses; its port is ignored. Zero: the kernel chooses.
	From netip.AddrPort
	// To is the destination (send). For raw sockets only the address is
	// used; if it is the zero value the IPv4 header's destination is used.
	// On receive it is the address the datagram was sent to, with the
	// socket's port, on a UDP socket opened with UDPConfig.RecvDst (zero
	// otherwise).
	To netip.AddrPort
	// Trunc reports that the datagram was longer than Buf (receive).
	Trunc bool
	// GSOSize is the UDP segment size: on send it asks for UDP_SEGMENT
	// segmentation offload, on receive (UDP_GRO) it says that Buf holds
	// several coalesced datagrams of this size, the last possibly shorter.
	GSOSize int
}

// cmsgSpace16 / cmsgSpaceInt are the ancillary buffer sizes for a
// UDP_SEGMENT (uint16) and a UDP_GRO (int) control message.
var (
	cmsgSpace16  = unix.CmsgSpace(2)
	cmsgSpaceInt = unix.CmsgSpace(4)
	// cmsgSpacePktinfo is the space of an IP_PKTINFO control message
	// (a UDP send's source address).
	cmsgSpacePktinfo = unix.CmsgSpace(unix.SizeofInet4Pktinfo)
)

// sendSource is the source address m asks for on send (Msg.From), or the
// zero Addr: the kernel chooses.
func sendSource(m *Msg) netip.Addr {
	if a := m.From.Addr(); a.Is4() && !a.IsUnspecified() {
		return a
	}
	return netip.Addr{}
}

// putControl writes a send's control messages into oob (UDP_SEGMENT when
// seg > 0, IP_PKTINFO when src is valid) and returns their length.
func putControl(oob []byte, seg int, src netip.Addr) int {
	n := 0
	if seg > 0 {
		ch := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		ch.Level = unix.SOL_UDP
		ch.Type = unix.UDP_SEGMENT
		ch.SetLen(unix.CmsgLen(2))
		*(*uint16)(unsafe.Pointer(&oob[unix.CmsgLen(0)])) = uint16(seg)
		n = cmsgSpace16
	}
	if src.IsValid() {
		ch := (*unix.Cmsghdr)(unsafe.Pointer(&oob[n]))
		ch.Level = unix.IPPROTO_IP
		ch.Type = unix.IP_PKTINFO
		ch.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
		pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&oob[n+unix.CmsgLen(0)]))
		pi.Ifindex = 0
		pi.Addr = [4]byte{}
		pi.Spec_dst = src.As4()
		n += cmsgSpacePktinfo
	}
	return n
}

// batch is a preallocated set of kernel message headers for one direction.
type batch struct {
	mu    sync.Mutex
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrInet4
	oob   []byte // oobLen bytes per slot
	grp   []int  // datagrams per header (coalesced sends)
	// Results of the last syscall, written by the RawConn callback.
	count int
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
}

func newBatch(oobLen int) *batch {
	b := &batch{
		hdrs:  make([]unix.Mmsghdr, MaxBatch),
		iovs:  make([]unix.Iovec, MaxBatch),
		names: make([]unix.RawSockaddrInet4, MaxBatch),
		grp:   make([]int, MaxBatch),
		oob:   make([]byte, MaxBatch*oobLen),
	}
	return b
}

// sock is a non-blocking datagram socket integrated with the netpoller.
type sock struct {
	f      *os.File
	rc     syscall.RawConn
	fd     int
	rx, tx *batch
	// oob space per slot on receive (GRO, IP_PKTINFO) and send (GSO,
	// IP_PKTINFO).
	rxOOB, txOOB int
	// dstPort is the port of Msg.To on receive (UDP with RecvDst).
	dstPort uint16
	closed  atomic.Bool
	// rawSend: sendmmsg without the scheduler (see sendmmsg), chosen when
	// the socket is made: the process ran with one Go proc.
	rawSend bool
}

// newSock wraps fd (already non-blocking) for batch I/O.
func newSock(fd int, name string, rxOOB, txOOB int) (*sock, error) {
	f := os.NewFile(uintptr(fd), name)
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("netio: %s: %w", name, err)
	}
	s := &sock{f: f, rc: rc, fd: fd, rx: newBatch(rxOOB), tx: newBatch(txOOB), rxOOB: rxOOB, txOOB: txOOB,
		rawSend: runtime.GOMAXPROCS(0) == 1}
	s.rx.fn = s.recvFn
	s.tx.fn = s.sendFn
	return s, nil
}

func (s *sock) close() error {
	s.closed.Store(true)
	return s.f.Close()
}

// ioErr wraps an error from the RawConn; after close it is ErrClosed
// (RawConn reports "use of closed file" without wrapping os.ErrClosed).
func (s *sock) ioErr(op string, err error) error {
	if s.closed.Load() {
		return fmt.Errorf("netio: %s: %w", op, ErrClosed)
	}
	return fmt.Errorf("netio: %s: %w", op, err)
}

// sendmmsg is one sendmmsg(2) of n messages from hdrs. With raw (the
// process runs with one Go proc) it is a raw system call, without the Go
// scheduler's entersyscall and exitsyscall. Every socket of this package
// is non-blocking, so a send never sleeps in the kernel (a full buffer
// answers EAGAIN and RawConn.Write waits on the poller), but it can run
// long: the kernel does the packets' whole output path in the calling
// thread, and on veth (or any device that delivers inline) the receiver's
// input as well, often for longer than the 20 us after which Go's sysmon
// takes the P from a thread in a system call and wakes another thread to
// run it. With a single P on busy cores that hand-off buys no parallelism,
// only thread wake-ups and context switches (and sysmon polling every
// 20 us). Measured on 2 vCPUs with one Go proc (the daemon's default
// there): raw ESP AES-GCM 12-34 % faster through AF_PACKET and 22-45 %
// through raw sockets. With two Go procs on the same machine the raw call
// was about 10 % slower, so with several the scheduler keeps its hand-off
// (internal/netio/NOTES.md, "The send as a raw system call"). The cost
// with one: the daemon's other goroutines wait for the call, microseconds
// to a few hundred, as they wait for a GC stop-the-world.
func sendmmsg(fd uintptr, hdrs unsafe.Pointer, n int, raw bool) (int, unix.Errno) {
	if raw {
		r, _, e := unix.RawSyscall6(unix.SYS_SENDMMSG, fd, uintptr(hdrs), uintptr(n), 0, 0, 0)
		return int(r), e
	}
	r, _, e := unix.Syscall6(unix.SYS_SENDMMSG, fd, uintptr(hdrs), uintptr(n), 0, 0, 0)
	return int(r), e
}

// recvFn is the RawConn.Read callback: one recvmmsg over the prepared slots.
func (s *sock) recvFn(fd uintptr) bool {
	b := s.rx
	n, _, e := unix.Syscall6(unix.SYS_RECVMMSG, fd, uintptr(unsafe.Pointer(&b.hdrs[0])), uintptr(b.count), 0, 0, 0)
	if e == unix.EAGAIN {
		return false
	}
	if e == unix.EINTR {
		return false
	}
	b.n, b.errno = int(n), e
	return true
}

// sendFn is the RawConn.Write callback: one sendmmsg over the prepared slots.
func (s *sock) sendFn(fd uintptr) bool {
	b := s.tx
	n, e := sendmmsg(fd, unsafe.Pointer(&b.hdrs[0]), b.count, s.rawSend)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	b.n, b.errno = n, e
	return true
}

// ErrClosed is returned by I/O on a closed socket or device.
var ErrClosed = os.ErrClosed

// recv reads up to len(ms) (at most MaxBatch) datagrams with one recvmmsg,
// blocking until at least one is available. Safe for concurrent use; callers
// that read in parallel get disjoint datagrams.
func (s *sock) recv(ms []Msg) (int, error) {
	if len(ms) == 0 {
		return 0, nil
	}
	if len(ms) > MaxBatch {
		ms = ms[:MaxBatch]
	}
	b := s.rx
	b.mu.Lock()
	defer b.mu.Unlock()
	for i := range ms {
		buf := ms[i].Buf
		h := &b.hdrs[i]
		h.Len = 0
		h.Hdr.Name = (*byte)(unsafe.Pointer(&b.names[i]))
		h.Hdr.Namelen = unix.SizeofSockaddrInet4
		if len(buf) > 0 {
			b.iovs[i].Base = &buf[0]
		} else {
			b.iovs[i].Base = nil
		}
		b.iovs[i].SetLen(len(buf))
		h.Hdr.Iov = &b.iovs[i]
		h.Hdr.Iovlen = 1
		h.Hdr.Flags = 0
		if s.rxOOB > 0 {
			oob := b.oob[i*s.rxOOB : (i+1)*s.rxOOB]
			h.Hdr.Control = &oob[0]
			h.Hdr.SetControllen(s.rxOOB)
		} else {
			h.Hdr.Control = nil
			h.Hdr.Controllen = 0
		}
	}
	b.count = len(ms)
	b.n, b.errno = 0, 0
	if err := s.rc.Read(b.fn); err != nil {
		return 0, s.ioErr("recvmmsg", err)
	}
	if b.errno != 0 {
		return 0, fmt.Errorf("netio: recvmmsg: %w", b.errno)
	}
	for i := 0; i < b.n; i++ {
		h := &b.hdrs[i]
		m := &ms[i]
		m.N = int(h.Len)
		m.Trunc = h.Hdr.Flags&unix.MSG_TRUNC != 0
		if m.N > len(m.Buf) {
			m.N = len(m.Buf)
		}
		sa := &b.names[i]
		if h.Hdr.Namelen >= unix.SizeofSockaddrInet4 && sa.Family == unix.AF_INET {
			port := uint16(sa.Port>>8) | uint16(sa.Port<<8)
			m.From = netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), port)
		} else {
			m.From = netip.AddrPort{}
		}
		m.GSOSize, m.To = 0, netip.AddrPort{}
		if s.rxOOB > 0 {
			var dst netip.Addr
			m.GSOSize, dst = parseControl(b.oob[i*s.rxOOB:][:h.Hdr.Controllen])
			if dst.IsValid() {
				m.To = netip.AddrPortFrom(dst, s.dstPort)
			}
		}
	}
	return b.n, nil
}

// parseControl walks a received control message buffer for SOL_UDP/UDP_GRO
// (the segment size, or 0) and IPPROTO_IP/IP_PKTINFO (the address the
// datagram was sent to, or the zero Addr).
func parseControl(oob []byte) (gso int, dst netip.Addr) {
	for len(oob) >= unix.SizeofCmsghdr {
		h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
		l := int(h.Len)
		if l < unix.SizeofCmsghdr || l > len(oob) {
			return gso, dst
		}
		switch {
		case h.Level == unix.SOL_UDP && h.Type == unix.UDP_GRO && l >= unix.CmsgLen(4):
			gso = int(*(*int32)(unsafe.Pointer(&oob[unix.CmsgLen(0)])))
		case h.Level == unix.IPPROTO_IP && h.Type == unix.IP_PKTINFO && l >= unix.CmsgLen(unix.SizeofInet4Pktinfo):
			pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&oob[unix.CmsgLen(0)]))
			dst = netip.AddrFrom4(pi.Addr) // the header's destination
		}
		next := unix.CmsgSpace(l - unix.CmsgLen(0))
		if next > len(oob) {
			return gso, dst
		}
		oob = oob[next:]
	}
	return gso, dst
}

// send writes ms with as few sendmmsg calls as the kernel allows, blocking
// while the socket buffer is full. It returns the number of messages sent;
// on error, ms[n] is the message that failed. dstFromIP makes a zero To use
// the IPv4 header's destination (raw sockets).
func (s *sock) send(ms []Msg, dstFromIP bool) (int, error) {
	b := s.tx
	b.mu.Lock()
	defer b.mu.Unlock()
	sent := 0
	for sent < len(ms) {
		chunk := ms[sent:]
		if len(chunk) > MaxBatch {
			chunk = chunk[:MaxBatch]
		}
		for i := range chunk {
			m := &chunk[i]
			h := &b.hdrs[i]
			h.Len = 0
			sa := &b.names[i]
			sa.Family = unix.AF_INET
			to := m.To
			if !to.IsValid() && dstFromIP {
				if len(m.Buf) < 20 {
					return sent, fmt.Errorf("netio: send: %d-byte packet has no IPv4 header", len(m.Buf))
				}
				to = netip.AddrPortFrom(netip.AddrFrom4([4]byte(m.Buf[16:20])), 0)
			}
			if !to.Addr().Is4() {
				return sent + i, fmt.Errorf("netio: send: destination %v is not IPv4", to)
			}
			sa.Addr = to.Addr().As4()
			p := to.Port()
			sa.Port = p>>8 | p<<8
			h.Hdr.Name = (*byte)(unsafe.Pointer(sa))
			h.Hdr.Namelen = unix.SizeofSockaddrInet4
			if len(m.Buf) > 0 {
				b.iovs[i].Base = &m.Buf[0]
			} else {
				b.iovs[i].Base = nil
			}
			b.iovs[i].SetLen(len(m.Buf))
			h.Hdr.Iov = &b.iovs[i]
			h.Hdr.Iovlen = 1
			h.Hdr.Control = nil
			h.Hdr.Controllen = 0
			seg, src := 0, netip.Addr{}
			if m.GSOSize > 0 && s.txOOB >= cmsgSpace16 {
				seg = m.GSOSize
			}
			if s.txOOB >= cmsgSpace16+cmsgSpacePktinfo {
				src = sendSource(m)
			}
			if seg > 0 || src.IsValid() {
				oob := b.oob[i*s.txOOB : (i+1)*s.txOOB]
				h.Hdr.Control = &oob[0]
				h.Hdr.SetControllen(putControl(oob, seg, src))
			}
		}
		b.count = len(chunk)
		b.n, b.errno = 0, 0
		if err := s.rc.Write(b.fn); err != nil {
			return sent, s.ioErr("sendmmsg", err)
		}
		if b.errno != 0 {
			return sent, fmt.Errorf("netio: sendmmsg to %v: %w", ms[sent].To, b.errno)
		}
		sent += b.n
	}
	return sent, nil
}

// setMark sets SO_MARK (needs CAP_NET_ADMIN) when mark is non-zero.
func setMark(fd int, mark uint32) error {
	if mark == 0 {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
		return fmt.Errorf("SO_MARK %#x: %w", mark, err)
	}
	return nil
}

// setBuffers raises the socket buffers, trying the privileged *FORCE
// variants first (they ignore net.core.[rw]mem_max).
func setBuffers(fd, size int) {
	if size <= 0 {
		return
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, size) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, size)
	}
	setSendBuffer(fd, size)
}

// setSendBuffer raises the send buffer alone, as setBuffers does.
func setSendBuffer(fd, size int) {
	if size <= 0 {
		return
	}
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, size) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, size)
	}
}
