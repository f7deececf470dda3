package netio

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// RawConfig configures a raw IPv4 socket for one IP protocol.
type RawConfig struct {
	// Proto is the IP protocol received: 50 (ESP) or 51 (AH).
	Proto int
	// Mark is the firewall mark (SO_MARK) put on every packet sent, so that
	// policy routing sends the daemon's own outer packets past its TUN.
	// 0 leaves packets unmarked.
	Mark uint32
	// Buffer, if non-zero, sets SO_RCVBUF/SO_SNDBUF (forced when privileged).
	Buffer int
	// NoRecv attaches a drop-all filter: the socket sends, and holds the
	// protocol so that the kernel does not answer it with ICMP
	// protocol-unreachable, but queues nothing (an RxRing receives).
	// Recv then blocks until Close.
	NoRecv bool
}

// RawConn is a raw IPv4 socket for ESP or AH.
//
// Receive: each datagram is a whole IPv4 packet of the socket's protocol,
// IP header included (AH needs it), as the kernel accepted it: reassembled if
// it arrived fragmented, with total length in network byte order covering the
// whole packet (Linux, unlike BSD, does not rewrite it), and with Record
// Route / Timestamp options already filled in by the receiving kernel.
// While any raw socket holds a protocol, the kernel no longer answers that
// protocol with ICMP protocol-unreachable.
//
// Send (IP_HDRINCL): the caller builds the whole IPv4 header. Linux
// (net/ipv4/raw.c raw_send_hdrinc) then always rewrites total length to the
// size actually sent and recomputes the header checksum, fills the source
// address if it is 0.0.0.0 and picks an IP ID if the ID field is 0 and DF
// is clear (a DF packet with ID 0 leaves with ID 0, as RFC 6864 allows;
// measured on 6.18 by TestRawBatchExchange); every other field (TOS, DF, TTL, protocol, options) goes out as built. A packet
// larger than the route's MTU is refused with EMSGSIZE, never fragmented.
// The IP ID is NOT a mutable field for AH (RFC 4302 3.3.3.1.1.1 zeroes only
// TOS, flags, fragment offset, TTL and checksum), so AH must put a non-zero
// ID into the header before computing its ICV, or the kernel's choice would
// break it.
type RawConn struct {
	s     *sock
	proto int
}

// ListenRaw opens a raw IPv4 socket receiving cfg.Proto and sending whole
// IPv4 packets with IP_HDRINCL, with cfg.Mark as its firewall mark.
func ListenRaw(cfg RawConfig) (*RawConn, error) {
	if cfg.Proto <= 0 || cfg.Proto > 255 || cfg.Proto == unix.IPPROTO_RAW {
		return nil, fmt.Errorf("netio: raw socket: bad protocol %d", cfg.Proto)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, cfg.Proto)
	if err != nil {
		return nil, fmt.Errorf("netio: raw socket proto %d: %w", cfg.Proto, err)
	}
	if err := unix.SetsockoptInt(fd, unix.IPPROTO_IP, unix.IP_HDRINCL, 1); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netio: raw socket proto %d: IP_HDRINCL: %w", cfg.Proto, err)
	}
	if err := setMark(fd, cfg.Mark); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netio: raw socket proto %d: %w", cfg.Proto, err)
	}
	if cfg.NoRecv {
		if err := dropAll(fd); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("netio: raw socket proto %d: %w", cfg.Proto, err)
		}
	}
	setBuffers(fd, cfg.Buffer)
	s, err := newSock(fd, fmt.Sprintf("raw-%d", cfg.Proto), 0, 0)
	if err != nil {
		return nil, err
	}
	return &RawConn{s: s, proto: cfg.Proto}, nil
}

// Proto returns the IP protocol the socket receives.
func (c *RawConn) Proto() int { return c.proto }

// Recv reads up to len(ms) packets (at most MaxBatch) with one recvmmsg,
// blocking until at least one arrives. ms[i].N bytes of ms[i].Buf hold the
// whole IPv4 packet and ms[i].From its source address (port 0).
func (c *RawConn) Recv(ms []Msg) (int, error) { return c.s.recv(ms) }

// Send sends prebuilt IPv4 packets with sendmmsg. A zero ms[i].To means the
// destination in the packet's IPv4 header. It returns how many were sent;
// on error, ms[n] is the packet the kernel refused (EMSGSIZE when larger than
// the route MTU, for example) and the caller may go on with ms[n+1:].
//
// Recv and Send are safe for concurrent use: calls in the same direction
// take turns on the socket (one syscall at a time), the two directions run
// in parallel.
func (c *RawConn) Send(ms []Msg) (int, error) { return c.s.send(ms, true) }

// Close closes the socket; a blocked Recv or Send returns an error wrapping
// os.ErrClosed.
func (c *RawConn) Close() error { return c.s.close() }

// dropAll attaches a classic BPF filter that drops every packet to fd and
// discards what was queued before it.
func dropAll(fd int) error {
	filter := []unix.SockFilter{{Code: unix.BPF_RET | unix.BPF_K, K: 0}}
	prog := unix.SockFprog{Len: 1, Filter: &filter[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
		return fmt.Errorf("drop-all filter: %w", err)
	}
	var b [1]byte
	for {
		if _, _, err := unix.Recvfrom(fd, b[:], unix.MSG_DONTWAIT|unix.MSG_TRUNC); err != nil {
			return nil
		}
	}
}
