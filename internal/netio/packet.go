package netio

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gosec-ipsec/gosec/internal/clock"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
)

// PacketConfig configures a PacketConn.
type PacketConfig struct {
	RawConfig
	// Clock drives the next-hop refresh; nil is the real clock.
	Clock clock.Clock
	// Log, if set, gets a line when a destination starts or stops going
	// through AF_PACKET, and the counts on Close.
	Log *slog.Logger
	// Refresh is how often the next-hop cache is refreshed from the
	// kernel's routing and neighbour tables; 0 means one second.
	Refresh time.Duration
}

// PacketConn sends ESP and AH packets through an AF_PACKET socket on the
// outgoing Ethernet interface and receives through a raw IPv4 socket.
//
// Sending a whole IPv4 packet through a raw socket runs the kernel's IP
// output path for every packet (route lookup, netfilter, neighbour, qdisc);
// AF_PACKET hands the frame to the device's queue directly, which costs
// the sending thread 25-40 % less per packet (NOTES.md). The routing
// decision the kernel would have made is made here instead, per
// destination, with the kernel's own tables: a route lookup with the
// socket's firewall mark (so policy routing by mark still applies) and the
// kernel's neighbour entry for the next hop, cached and refreshed on a
// timer. A packet goes through the raw socket as before when
//
//   - it is not ESP or AH (bypassed cleartext keeps the kernel's path and
//     the nftables guard chain),
//   - its destination is not cached yet, its route is local, multipath or
//     not on an up Ethernet link, or the next hop's neighbour entry is not
//     resolved (the raw send makes the kernel resolve it; the cache picks
//     the entry up on its next refresh),
//   - it is larger than the route's MTU (the raw socket reports EMSGSIZE),
//   - its source address is 0.0.0.0 (the kernel fills it in), or
//   - it is the one packet per refresh that lets the kernel verify a
//     neighbour entry gone stale (the kernel never sees the AF_PACKET
//     traffic, so only this makes it re-probe a neighbour that moved).
//
// As raw_send_hdrinc does, Send writes the total length and header checksum
// of packets it sends through AF_PACKET, and an IP ID when it is zero with
// DF clear. Packet captures see the frames (the qdisc is not bypassed, so
// the device's taps run). Netfilter's OUTPUT and POSTROUTING hooks do not
// see them.
//
// Recv is the raw socket's: reassembled, filtered by the kernel's input
// path. Holding the raw socket also keeps the kernel from answering ESP/AH
// with ICMP protocol-unreachable.
type PacketConn struct {
	raw  *RawConn
	s    *sock // AF_PACKET SOCK_RAW, protocol 0: sends only
	hops *nextHops
	nl   interface{ Close() }
	log  *slog.Logger

	mu    sync.Mutex // one sender at a time (the batch below)
	hdrs  []unix.Mmsghdr
	iovs  []unix.Iovec
	names []unix.RawSockaddrLinklayer
	off   int
	count int
	n     int
	errno syscall.Errno
	fn    func(fd uintptr) bool
	ipID  uint16

	viaPacket, viaRaw atomic.Uint64
}

// PacketStats counts the packets Send passed to each socket.
type PacketStats struct {
	// Packet went out through AF_PACKET, Raw through the raw socket.
	Packet, Raw uint64
}

// Stats returns the packets sent through each socket so far.
func (c *PacketConn) Stats() PacketStats {
	return PacketStats{Packet: c.viaPacket.Load(), Raw: c.viaRaw.Load()}
}

// ListenPacket opens the raw socket of cfg.Proto and an AF_PACKET socket
// for sending. It fails when AF_PACKET is not available (no CAP_NET_RAW,
// or no netlink): callers fall back to ListenRaw.
func ListenPacket(cfg PacketConfig) (*PacketConn, error) {
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Refresh <= 0 {
		cfg.Refresh = time.Second
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("netio: AF_PACKET socket: %w", err)
	}
	if cfg.Buffer > 0 && unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, cfg.Buffer) != nil {
		_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, cfg.Buffer)
	}
	s, err := newSock(fd, fmt.Sprintf("packet-%d", cfg.Proto), 0, 0)
	if err != nil {
		return nil, err
	}
	nl, err := netlinkHere()
	if err != nil {
		s.close()
		return nil, fmt.Errorf("netio: AF_PACKET next hops: netlink: %w", err)
	}
	raw, err := ListenRaw(cfg.RawConfig)
	if err != nil {
		nl.Close()
		s.close()
		return nil, err
	}
	c := &PacketConn{raw: raw, s: s, nl: nl,
		hops:  newNextHops(&netlinkResolver{h: nl, mark: cfg.Mark}, cfg.Clock, cfg.Refresh),
		hdrs:  make([]unix.Mmsghdr, MaxBatch),
		iovs:  make([]unix.Iovec, 2*MaxBatch),
		names: make([]unix.RawSockaddrLinklayer, MaxBatch),
	}
	c.fn = c.sendFn
	if cfg.Log != nil {
		c.log = cfg.Log.With("proto", cfg.Proto)
		c.hops.changed = func(dst netip.Addr, _, h *hop) {
			if h.ok {
				c.log.Info("sending through AF_PACKET", "dst", dst, "ifindex", h.ifindex, "nexthop_mac", net.HardwareAddr(h.eth[0:6]).String(), "mtu", h.mtu)
			} else {
				c.log.Info("sending through the raw socket (no Ethernet next hop now)", "dst", dst)
			}
		}
	}
	c.hops.start()
	return c, nil
}

// Proto returns the IP protocol the raw socket receives.
func (c *PacketConn) Proto() int { return c.raw.Proto() }

// Recv reads up to len(ms) packets from the raw socket (see RawConn.Recv).
func (c *PacketConn) Recv(ms []Msg) (int, error) { return c.raw.Recv(ms) }

// Close closes both sockets and stops the next-hop refresh.
func (c *PacketConn) Close() error {
	c.hops.stop()
	if c.log != nil {
		st := c.Stats()
		c.log.Info("packets sent", "af_packet", st.Packet, "raw_socket", st.Raw)
	}
	err := c.raw.Close()
	if e := c.s.close(); err == nil {
		err = e
	}
	c.nl.Close()
	return err
}

// Send sends prebuilt IPv4 packets, as RawConn.Send does: a zero ms[i].To
// means the destination in the IPv4 header. Runs of packets with a cached
// Ethernet next hop go out with one sendmmsg on the AF_PACKET socket, the
// others through the raw socket, in order. It returns how many were sent;
// on error ms[n] is the packet refused and the caller may go on with
// ms[n+1:].
func (c *PacketConn) Send(ms []Msg) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	sent := 0
	for sent < len(ms) {
		k, toRaw := c.prepare(ms[sent:])
		if k > 0 {
			n, err := c.flush(k)
			c.viaPacket.Add(uint64(n))
			sent += n
			if err != nil {
				return sent, err
			}
		}
		if !toRaw {
			continue
		}
		// ms[sent] was judged for the raw socket (judging again could
		// give another answer: a stale neighbour's probe is taken once);
		// so are the packets after it up to the next AF_PACKET one.
		j := sent + 1
		for j < len(ms) && j-sent < MaxBatch && c.hopFor(&ms[j]) == nil {
			j++
		}
		n, err := c.raw.Send(ms[sent:j])
		c.viaRaw.Add(uint64(n))
		sent += n
		if err != nil {
			return sent, err
		}
	}
	return sent, nil
}

// hopFor returns the AF_PACKET hop for m, or nil for the raw socket.
func (c *PacketConn) hopFor(m *Msg) *hop {
	b := m.Buf
	if len(b) < iphdr.IPv4MinLen || b[0]>>4 != 4 || int(b[0]&0xf)*4 > len(b) {
		return nil // the raw socket reports it
	}
	if p := b[iphdr.OffProtocol]; p != iphdr.ProtoESP && p != iphdr.ProtoAH {
		return nil
	}
	if [4]byte(b[iphdr.OffSrc:iphdr.OffSrc+4]) == [4]byte{} {
		return nil
	}
	dst := m.To.Addr()
	if !m.To.IsValid() {
		dst = netip.AddrFrom4([4]byte(b[iphdr.OffDst : iphdr.OffDst+4]))
	}
	h := c.hops.lookup(dst)
	if h == nil || len(b) > h.mtu {
		return nil
	}
	return h
}

// prepare fills the batch with the leading run of ms that has AF_PACKET
// hops and returns its length k; toRaw says that ms[k] was judged for the
// raw socket (the run did not end at the batch limit or the end of ms).
func (c *PacketConn) prepare(ms []Msg) (k int, toRaw bool) {
	for k < len(ms) && k < MaxBatch {
		m := &ms[k]
		h := c.hopFor(m)
		if h == nil {
			return k, true
		}
		c.fixHeader(m.Buf)
		c.iovs[2*k].Base = &h.eth[0]
		c.iovs[2*k].SetLen(len(h.eth))
		c.iovs[2*k+1].Base = &m.Buf[0]
		c.iovs[2*k+1].SetLen(len(m.Buf))
		sa := &c.names[k]
		*sa = unix.RawSockaddrLinklayer{Family: unix.AF_PACKET, Protocol: 0x0008, Ifindex: int32(h.ifindex)} // htons(ETH_P_IP)
		hd := &c.hdrs[k]
		*hd = unix.Mmsghdr{}
		hd.Hdr.Name = (*byte)(unsafe.Pointer(sa))
		hd.Hdr.Namelen = unix.SizeofSockaddrLinklayer
		hd.Hdr.Iov = &c.iovs[2*k]
		hd.Hdr.Iovlen = 2
		k++
	}
	return k, false
}

// fixHeader does what raw_send_hdrinc does to a header before sending:
// total length, an IP ID for a zero ID without DF, the checksum.
func (c *PacketConn) fixHeader(b []byte) {
	binary.BigEndian.PutUint16(b[iphdr.OffTotalLen:], uint16(len(b)))
	if b[iphdr.OffID] == 0 && b[iphdr.OffID+1] == 0 && b[iphdr.OffFlagsFrag]&0x40 == 0 {
		c.ipID++
		if c.ipID == 0 {
			c.ipID = 1
		}
		binary.BigEndian.PutUint16(b[iphdr.OffID:], c.ipID)
	}
	iphdr.SetChecksum(b[:int(b[0]&0xf)*4])
}

// flush sends the first k prepared frames, blocking while the socket
// buffer is full.
func (c *PacketConn) flush(k int) (int, error) {
	done := 0
	for done < k {
		c.count = k - done
		c.n, c.errno = 0, 0
		c.off = done
		if err := c.s.rc.Write(c.fn); err != nil {
			return done, c.s.ioErr("AF_PACKET sendmmsg", err)
		}
		if c.errno != 0 {
			return done, fmt.Errorf("netio: AF_PACKET sendmmsg: %w", c.errno)
		}
		done += c.n
	}
	return done, nil
}

// sendFn is the RawConn.Write callback: one sendmmsg of c.count prepared
// frames from c.off (a raw system call with one Go proc: see sendmmsg).
func (c *PacketConn) sendFn(fd uintptr) bool {
	n, e := sendmmsg(fd, unsafe.Pointer(&c.hdrs[c.off]), c.count, c.s.rawSend)
	if e == unix.EAGAIN || e == unix.EINTR {
		return false
	}
	c.n, c.errno = n, e
	return true
}
