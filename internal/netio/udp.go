package netio

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// UDPConfig configures a batched UDP socket.
type UDPConfig struct {
	// Addr is the local address, e.g. 0.0.0.0:4500.
	Addr netip.AddrPort
	// Mark is the firewall mark (SO_MARK) of the socket's packets; 0 for none.
	Mark uint32
	// GRO turns on UDP_GRO: the kernel may hand over several datagrams of
	// one flow coalesced in one buffer (Msg.GSOSize says the segment size).
	// Receive buffers should then be 64 KB.
	GRO bool
	// Buffer, if non-zero, sets SO_RCVBUF/SO_SNDBUF (forced when privileged).
	Buffer int
	// ReusePort sets SO_REUSEPORT, so that several sockets (one per core)
	// can bind the same port; the kernel spreads flows across them by hash.
	// (Raw sockets cannot do this: every raw socket gets a copy of every
	// packet, so raw receive parallelises by several goroutines calling
	// Recv on one socket.)
	ReusePort bool
	// RecvDst turns on IP_PKTINFO on receive: Msg.To is then the address
	// each datagram was sent to (with the socket's port), which a socket
	// bound to the unspecified address needs to answer from that address
	// on a host with several.
	RecvDst bool
}

// UDPConn is an IPv4 UDP socket with batched receive (recvmmsg, optional
// UDP_GRO) and batched send (sendmmsg, optional UDP_SEGMENT GSO per message).
type UDPConn struct {
	s     *sock
	local netip.AddrPort
	gro   bool
	noGSO atomic.Bool
	// GSOMessages counts messages sent with UDP_SEGMENT by SendCoalesced.
	GSOMessages atomic.Uint64
}

// ListenUDP opens and binds a UDP socket as cfg says. It sets no
// SO_REUSEADDR (for UDP that would let a second daemon silently share the
// port); binding a port already in use fails with EADDRINUSE.
func ListenUDP(cfg UDPConfig) (*UDPConn, error) {
	if !cfg.Addr.Addr().Is4() {
		return nil, fmt.Errorf("netio: udp: %v is not an IPv4 address", cfg.Addr)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.IPPROTO_UDP)
	if err != nil {
		return nil, fmt.Errorf("netio: udp socket: %w", err)
	}
	fail := func(what string, err error) (*UDPConn, error) {
		unix.Close(fd)
		return nil, fmt.Errorf("netio: udp %v: %s: %w", cfg.Addr, what, err)
	}
	if err := setMark(fd, cfg.Mark); err != nil {
		return fail("mark", err)
	}
	if cfg.ReusePort {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
			return fail("SO_REUSEPORT", err)
		}
	}
	if cfg.GRO {
		if err := unix.SetsockoptInt(fd, unix.SOL_UDP, unix.UDP_GRO, 1); err != nil {
			return fail("UDP_GRO", err)
		}
	}
	if cfg.RecvDst {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_PKTINFO, 1); err != nil {
			return fail("IP_PKTINFO", err)
		}
	}
	setBuffers(fd, cfg.Buffer)
	if err := unix.Bind(fd, &unix.SockaddrInet4{Port: int(cfg.Addr.Port()), Addr: cfg.Addr.Addr().As4()}); err != nil {
		return fail("bind", err)
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return fail("getsockname", err)
	}
	local := cfg.Addr
	if sa4, ok := sa.(*unix.SockaddrInet4); ok {
		local = netip.AddrPortFrom(netip.AddrFrom4(sa4.Addr), uint16(sa4.Port))
	}
	rxOOB := 0
	if cfg.GRO {
		rxOOB += cmsgSpaceInt
	}
	if cfg.RecvDst {
		rxOOB += cmsgSpacePktinfo
	}
	s, err := newSock(fd, "udp-"+local.String(), rxOOB, cmsgSpace16+cmsgSpacePktinfo)
	if err != nil {
		return nil, err
	}
	s.dstPort = local.Port()
	return &UDPConn{s: s, local: local, gro: cfg.GRO}, nil
}

// LocalAddr returns the bound address (with the port the kernel chose for 0).
func (c *UDPConn) LocalAddr() netip.AddrPort { return c.local }

// Recv reads up to len(ms) (at most MaxBatch) datagrams with one recvmmsg.
// With GRO, ms[i].GSOSize > 0 means ms[i].Buf[:N] holds several datagrams
// of that size (Segments splits them).
func (c *UDPConn) Recv(ms []Msg) (int, error) { return c.s.recv(ms) }

// Send sends ms with sendmmsg. ms[i].GSOSize > 0 makes the kernel split
// ms[i].Buf into datagrams of that size (UDP_SEGMENT, at most 64 segments
// and 64 KB per message) to ms[i].To: one message, many packets on the wire.
func (c *UDPConn) Send(ms []Msg) (int, error) { return c.s.send(ms, false) }

// Close closes the socket.
func (c *UDPConn) Close() error { return c.s.close() }

// MaxGSOSegments is the most datagrams SendCoalesced puts in one UDP_SEGMENT
// message (the kernel's UDP_MAX_SEGMENTS is 64 on older kernels).
const MaxGSOSegments = 64

// maxGSOBytes is the largest UDP payload of one GSO message (IPv4 total
// length limit minus IPv4 and UDP headers).
const maxGSOBytes = 65535 - 20 - 8

// SendCoalesced sends the datagrams ms[i].Buf to ms[i].To in order, like
// Send, but joins each run of consecutive datagrams to the same peer whose
// sizes are equal (the last of a run may be shorter) into one UDP_SEGMENT
// message, without copying: the run's buffers become the iovecs of one
// message and the kernel cuts it back into datagrams (in the NIC, or late in
// the stack, or not at all when the receiver uses UDP_GRO). ms[i].GSOSize
// is ignored. It returns the number of datagrams sent. If the kernel refuses
// segmentation offload (EIO), it falls back to one datagram per message for
// the rest of the socket's life.
func (c *UDPConn) SendCoalesced(ms []Msg) (int, error) {
	if c.noGSO.Load() {
		return c.Send(ms)
	}
	s := c.s
	b := s.tx
	b.mu.Lock()
	defer b.mu.Unlock()
	sent := 0
	for sent < len(ms) {
		nh, ni, i := 0, 0, sent
		for i < len(ms) && nh < MaxBatch && ni < MaxBatch {
			to, from := ms[i].To, sendSource(&ms[i])
			if !to.Addr().Is4() {
				if nh == 0 {
					return sent, fmt.Errorf("netio: send: destination %v is not IPv4", to)
				}
				break
			}
			seg := len(ms[i].Buf)
			j, total := i+1, seg
			for j < len(ms) && j-i < MaxGSOSegments && ni+(j-i) < MaxBatch && seg > 0 {
				l := len(ms[j].Buf)
				if ms[j].To != to || sendSource(&ms[j]) != from || l > seg || l == 0 || total+l > maxGSOBytes {
					break
				}
				total += l
				j++
				if l < seg {
					break
				}
			}
			h := &b.hdrs[nh]
			h.Len = 0
			sa := &b.names[nh]
			sa.Family = unix.AF_INET
			sa.Addr = to.Addr().As4()
			p := to.Port()
			sa.Port = p>>8 | p<<8
			h.Hdr.Name = (*byte)(unsafe.Pointer(sa))
			h.Hdr.Namelen = unix.SizeofSockaddrInet4
			for k := i; k < j; k++ {
				iov := &b.iovs[ni+k-i]
				if len(ms[k].Buf) > 0 {
					iov.Base = &ms[k].Buf[0]
				} else {
					iov.Base = nil
				}
				iov.SetLen(len(ms[k].Buf))
			}
			h.Hdr.Iov = &b.iovs[ni]
			h.Hdr.SetIovlen(j - i)
			h.Hdr.Control = nil
			h.Hdr.Controllen = 0
			if gso := j-i > 1; gso || from.IsValid() {
				oob := b.oob[nh*s.txOOB : (nh+1)*s.txOOB]
				gseg := 0
				if gso {
					gseg = seg
				}
				h.Hdr.Control = &oob[0]
				h.Hdr.SetControllen(putControl(oob, gseg, from))
			}
			b.grp[nh] = j - i
			nh++
			ni += j - i
			i = j
		}
		b.count = nh
		b.n, b.errno = 0, 0
		if err := s.rc.Write(b.fn); err != nil {
			return sent, s.ioErr("sendmmsg", err)
		}
		for k := 0; k < b.n; k++ {
			sent += b.grp[k]
			if b.grp[k] > 1 {
				c.GSOMessages.Add(1)
			}
		}
		if b.errno != 0 {
			if b.errno == unix.EIO && b.n < nh && b.grp[b.n] > 1 {
				c.noGSO.Store(true)
				b.mu.Unlock()
				n, err := c.Send(ms[sent:])
				b.mu.Lock()
				return sent + n, err
			}
			return sent, fmt.Errorf("netio: sendmmsg to %v: %w", ms[sent].To, b.errno)
		}
	}
	return sent, nil
}

// Segments calls fn for each datagram in buf (seg bytes each, the last
// possibly shorter), or once for all of buf when seg is 0. It stops early
// when fn returns false.
func Segments(buf []byte, seg int, fn func([]byte) bool) {
	if seg <= 0 || seg >= len(buf) {
		fn(buf)
		return
	}
	for len(buf) > 0 {
		n := min(seg, len(buf))
		if !fn(buf[:n]) {
			return
		}
		buf = buf[n:]
	}
}

// Kind is what an RFC 3948 port-4500 datagram carries.
type Kind uint8

// Datagram kinds on the NAT-T port.
const (
	// KindInvalid is a datagram that is none of the below (dropped).
	KindInvalid Kind = iota
	// KindESP starts with a non-zero SPI: ESP for the data plane.
	KindESP
	// KindIKE starts with the four-zero-octet non-ESP marker: IKE.
	KindIKE
	// KindKeepalive is the one-octet 0xFF NAT-keepalive (RFC 3948 2.3).
	KindKeepalive
)

// String names the kind.
func (k Kind) String() string {
	switch k {
	case KindESP:
		return "esp"
	case KindIKE:
		return "ike"
	case KindKeepalive:
		return "keepalive"
	}
	return "invalid"
}

// MinESP is the smallest ESP packet worth handing on: SPI and sequence
// number (RFC 4303 2).
const MinESP = 8

// NonESPMarker is the length of the zero marker in front of IKE on port 4500.
const NonESPMarker = 4

// Classify tells what a datagram received on the NAT-T port carries
// (RFC 3948 2.2, 2.3). For KindIKE the IKE message is b[NonESPMarker:].
func Classify(b []byte) Kind {
	switch {
	case len(b) == 1 && b[0] == 0xff:
		return KindKeepalive
	case len(b) < NonESPMarker:
		return KindInvalid
	case binary.BigEndian.Uint32(b) == 0:
		if len(b) == NonESPMarker {
			return KindInvalid
		}
		return KindIKE
	case len(b) < MinESP:
		return KindInvalid
	}
	return KindESP
}

// Packet is a view of one datagram inside a receive buffer.
type Packet struct {
	B    []byte
	From netip.AddrPort
}

// NATT is the RFC 3948 port-4500 socket shared by the data plane and IKE:
// ReadESP returns only the ESP packets, hands IKE messages (marker
// stripped) to the IKE callback, and counts keepalives and invalid datagrams.
type NATT struct {
	Conn *UDPConn
	// IKE is called from ReadESP's goroutine for each IKE message; msg is
	// valid only during the call (copy it to keep it). to is the address
	// the message was sent to when the socket has RecvDst, else zero. Nil
	// drops IKE.
	IKE func(msg []byte, from, to netip.AddrPort)

	Keepalives atomic.Uint64
	IKEMsgs    atomic.Uint64
	Invalid    atomic.Uint64
	// Overflow counts ESP packets dropped because out was full.
	Overflow atomic.Uint64
	// GROBuffers counts receive buffers that held coalesced datagrams.
	GROBuffers atomic.Uint64
}

// ReadESP reads one batch into ms and puts views of its ESP packets into
// out (splitting GRO super-buffers), returning how many. It may return 0
// when the batch held only IKE, keepalives or junk. With GRO on, out should
// have 64 entries per entry of ms; packets that do not fit are counted in
// Overflow and dropped.
func (d *NATT) ReadESP(ms []Msg, out []Packet) (int, error) {
	n, err := d.Conn.Recv(ms)
	if err != nil {
		return 0, err
	}
	k := 0
	for i := 0; i < n; i++ {
		m := &ms[i]
		if m.Trunc {
			d.Invalid.Add(1)
			continue
		}
		buf := m.Buf[:m.N]
		if len(buf) == 0 {
			d.Invalid.Add(1)
			continue
		}
		seg := m.GSOSize
		if seg <= 0 || seg >= len(buf) {
			seg = len(buf)
		} else {
			d.GROBuffers.Add(1)
		}
		for len(buf) > 0 {
			p := buf[:min(seg, len(buf))]
			buf = buf[len(p):]
			switch Classify(p) {
			case KindESP:
				if k < len(out) {
					out[k] = Packet{B: p, From: m.From}
					k++
				} else {
					d.Overflow.Add(1)
				}
			case KindIKE:
				d.IKEMsgs.Add(1)
				if d.IKE != nil {
					d.IKE(p[NonESPMarker:], m.From, m.To)
				}
			case KindKeepalive:
				d.Keepalives.Add(1)
			default:
				d.Invalid.Add(1)
			}
		}
	}
	return k, nil
}

// SendCoalesced sends ESP packets on the NAT-T socket, runs coalesced
// (UDPConn.SendCoalesced).
func (d *NATT) SendCoalesced(ms []Msg) (int, error) { return d.Conn.SendCoalesced(ms) }

// LocalAddr is the NAT-T socket's local address.
func (d *NATT) LocalAddr() netip.AddrPort { return d.Conn.LocalAddr() }

// WriteIKE sends an IKE message from the NAT-T port with the non-ESP marker
// in front (RFC 3948 2.2). It allocates; IKE is not the hot path.
func (d *NATT) WriteIKE(msg []byte, to netip.AddrPort) error {
	m := [1]Msg{{Buf: withNonESPMarker(msg), To: to}}
	_, err := d.Conn.Send(m[:])
	return err
}

// withNonESPMarker returns a copy of msg behind the non-ESP marker.
func withNonESPMarker(msg []byte) []byte {
	b := make([]byte, NonESPMarker+len(msg))
	copy(b[NonESPMarker:], msg)
	return b
}

// ListenIKE opens the plain IKE socket (UDP 500 by default) as a
// *net.UDPConn with the firewall mark mark (0: none).
func ListenIKE(ctx context.Context, addr netip.AddrPort, mark uint32) (*net.UDPConn, error) {
	lc := net.ListenConfig{Control: func(network, address string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = setMark(int(fd), mark)
		})
		return errors.Join(err, serr)
	}}
	pc, err := lc.ListenPacket(ctx, "udp4", addr.String())
	if err != nil {
		return nil, fmt.Errorf("netio: ike socket %v: %w", addr, err)
	}
	return pc.(*net.UDPConn), nil
}

// SendFrom sends one datagram b to to from local address src (an
// IP_PKTINFO control message), on a socket bound to the unspecified
// address: a reply then leaves from the address the request was sent
// to, which on a host with several addresses on one link need not be
// the one the kernel would choose. The kernel refuses a src that is not
// one of the host's addresses (EINVAL). It allocates; it is meant for
// IKE, not for the packet path.
func (c *UDPConn) SendFrom(b []byte, src netip.Addr, to netip.AddrPort) error {
	if !src.Is4() || !to.Addr().Is4() {
		return fmt.Errorf("netio: send from %v to %v: not IPv4", src, to)
	}
	oob := make([]byte, unix.CmsgSpace(unix.SizeofInet4Pktinfo))
	h := (*unix.Cmsghdr)(unsafe.Pointer(&oob[0]))
	h.Level, h.Type = unix.IPPROTO_IP, unix.IP_PKTINFO
	h.SetLen(unix.CmsgLen(unix.SizeofInet4Pktinfo))
	pi := (*unix.Inet4Pktinfo)(unsafe.Pointer(&oob[unix.CmsgLen(0)]))
	pi.Spec_dst = src.As4()
	sa := &unix.SockaddrInet4{Port: int(to.Port()), Addr: to.Addr().As4()}
	var serr error
	err := c.s.rc.Write(func(fd uintptr) bool {
		_, serr = unix.SendmsgN(int(fd), b, oob, sa, 0)
		return serr != unix.EAGAIN && serr != unix.EINTR
	})
	if err != nil {
		return c.s.ioErr("sendmsg", err)
	}
	if serr != nil {
		return fmt.Errorf("netio: send from %v to %v: %w", src, to, serr)
	}
	return nil
}

// WriteIKEFrom is WriteIKE from local address src (UDPConn.SendFrom).
func (d *NATT) WriteIKEFrom(msg []byte, src netip.Addr, to netip.AddrPort) error {
	return d.Conn.SendFrom(withNonESPMarker(msg), src, to)
}
