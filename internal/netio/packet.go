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
	// NoTxRing sends with sendmmsg only, without the TX ring (see
	// PacketConn).
	NoTxRing bool
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
// Frames go out through a TX ring (PACKET_TX_RING, see txRing) when the
// kernel gives the socket one: the frames of a run for one interface are
// written into its slots and sent with one sendto(2); a frame larger than
// a slot, and the rest of a run when the ring is full (the device still
// holds its buffers), go out with sendmmsg, in order. PacketConfig.NoTxRing
// uses sendmmsg only.
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

	// The TX ring (nil: sendmmsg only) on a socket of its own (txs: a
	// socket with a ring sends only what is in the ring, whatever a
	// sendmsg passes it), and the run being sent through it.
	tx   *txRing
	txs  *sock
	txSA unix.RawSockaddrLinklayer
	txK  int
	// txTaken is how many of the run's txK slots the kernel took so far
	// (kickFn keeps it; flushRing reads it).
	txTaken int
	txFn    func(fd uintptr) bool

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
	setSendBuffer(fd, cfg.Buffer)
	s, err := newSock(fd, fmt.Sprintf("packet-%d", cfg.Proto), 0, 0)
	if err != nil {
		return nil, err
	}
	var (
		tx  *txRing
		txs *sock
	)
	if !cfg.NoTxRing {
		if tx, txs, err = openTxRing(cfg); err != nil && cfg.Log != nil {
			cfg.Log.Warn("AF_PACKET: no TX ring, sending with sendmmsg", "proto", cfg.Proto, "err", err)
		}
	}
	closeTx := func() {
		if tx != nil {
			tx.close()
			txs.close()
		}
	}
	nl, err := netlinkHere()
	if err != nil {
		s.close()
		closeTx()
		return nil, fmt.Errorf("netio: AF_PACKET next hops: netlink: %w", err)
	}
	raw, err := ListenRaw(cfg.RawConfig)
	if err != nil {
		nl.Close()
		s.close()
		closeTx()
		return nil, err
	}
	c := &PacketConn{raw: raw, s: s, nl: nl,
		hops:  newNextHops(&netlinkResolver{h: nl, mark: cfg.Mark}, cfg.Clock, cfg.Refresh),
		hdrs:  make([]unix.Mmsghdr, MaxBatch),
		iovs:  make([]unix.Iovec, 2*MaxBatch),
		names: make([]unix.RawSockaddrLinklayer, MaxBatch),
	}
	c.fn = c.sendFn
	c.tx, c.txs = tx, txs
	c.txFn = c.kickFn
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
	if c.tx == nil {
		return err
	}
	if e := c.txs.close(); err == nil {
		err = e
	}
	// Closing the sockets ended a Send waiting in them; the ring goes
	// after the Send holding it.
	c.mu.Lock()
	if e := c.tx.close(); err == nil {
		err = e
	}
	c.mu.Unlock()
	return err
}

// TxRing reports whether c sends through a TX ring (without taking the
// lock a Send holds while it waits for the socket).
func (c *PacketConn) TxRing() bool { return c.tx != nil }

// Send sends prebuilt IPv4 packets, as RawConn.Send does: a zero ms[i].To
// means the destination in the IPv4 header. Runs of packets with a cached
// Ethernet next hop go out through the TX ring with one sendto, or with
// one sendmmsg on the AF_PACKET socket, the others through the raw
// socket, in order. It returns how many were sent;
// on error ms[n] is the packet refused and the caller may go on with
// ms[n+1:].
func (c *PacketConn) Send(ms []Msg) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tx != nil && c.tx.mem == nil {
		return 0, fmt.Errorf("netio: AF_PACKET send: %w", ErrClosed)
	}
	sent := 0
	for sent < len(ms) {
		toRaw, limit := false, MaxBatch
		if c.tx != nil {
			k, why := c.prepareRing(ms[sent:])
			if k > 0 {
				n, err := c.flushRing(k)
				c.viaPacket.Add(uint64(n))
				sent += n
				if err != nil {
					return sent, err
				}
			}
			switch why {
			case ringNext:
				continue
			case ringRaw:
				toRaw = true
			case ringTooBig:
				limit = 1 // that one through sendmmsg, then the ring again
			}
			// ringFull: the rest of the batch through sendmmsg.
		}
		if !toRaw {
			var k int
			k, toRaw = c.prepare(ms[sent:], limit)
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
// hops, at most limit of them, and returns its length k; toRaw says that
// ms[k] was judged for the raw socket (the run did not end at the limit
// or the end of ms).
func (c *PacketConn) prepare(ms []Msg, limit int) (k int, toRaw bool) {
	for k < len(ms) && k < limit {
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

// Why prepareRing ended its run.
type ringStop int

const (
	// ringNext: the end of ms or of the batch, or the next packet is for
	// another interface: judge again from there.
	ringNext ringStop = iota
	// ringRaw: the next packet was judged for the raw socket.
	ringRaw
	// ringTooBig: the next packet does not fit a slot: sendmmsg.
	ringTooBig
	// ringFull: the next slot is still the kernel's: sendmmsg.
	ringFull
)

// prepareRing writes the leading run of ms that has AF_PACKET hops on one
// interface into the TX ring's slots and returns its length k, and why it
// ended there.
func (c *PacketConn) prepareRing(ms []Msg) (k int, why ringStop) {
	for k < len(ms) && k < MaxBatch {
		m := &ms[k]
		h := c.hopFor(m)
		switch {
		case h == nil:
			return k, ringRaw
		case len(h.eth)+len(m.Buf) > txMaxFrame:
			return k, ringTooBig
		case k > 0 && int32(h.ifindex) != c.txSA.Ifindex:
			return k, ringNext
		}
		i := c.tx.slot(k)
		if i < 0 {
			return k, ringFull
		}
		if k == 0 {
			c.txSA = unix.RawSockaddrLinklayer{Family: unix.AF_PACKET, Protocol: 0x0008, Ifindex: int32(h.ifindex)} // htons(ETH_P_IP)
		}
		c.fixHeader(m.Buf)
		c.tx.put(i, h.eth[:], m.Buf)
		k++
	}
	return k, ringNext
}

// flushRing sends the k slots prepareRing filled, blocking while the
// socket's send buffer is full. On error the packet at the returned index
// was refused (a slot the kernel found malformed, or a buffer the device's
// queue dropped) and the slots after it are given back unsent.
func (c *PacketConn) flushRing(k int) (int, error) {
	c.txK, c.txTaken, c.errno = k, 0, 0
	werr := c.txs.rc.Write(c.txFn)
	c.tx.release(c.txTaken, k)
	n := c.txTaken
	switch {
	case werr != nil:
		return n, c.txs.ioErr("AF_PACKET TX ring", werr)
	case c.errno == unix.ENOBUFS && n > 0:
		// The queue dropped the last one the kernel took.
		return n - 1, fmt.Errorf("netio: AF_PACKET TX ring: %w", c.errno)
	case c.errno != 0:
		return n, fmt.Errorf("netio: AF_PACKET TX ring: %w", c.errno)
	case n < k:
		return n, fmt.Errorf("netio: AF_PACKET TX ring: the kernel sent %d of %d frames", n, k)
	}
	return n, nil
}

// kickFn is the RawConn.Write callback of flushRing: sendto until the
// kernel took all c.txK slots, an error, or EAGAIN (then the netpoller
// waits for room in the send buffer and calls it again).
func (c *PacketConn) kickFn(fd uintptr) bool {
	prev := -1
	for {
		e := sendtoRing(fd, &c.txSA, c.txs.rawSend)
		// A slot once taken is never marked again: count on from there.
		c.txTaken = c.tx.taken(c.txTaken, c.txK)
		taken := c.txTaken
		switch {
		case taken == c.txK:
			return true
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return false
		case e != 0:
			c.errno = e
			return true
		case taken > prev:
			// Some sent, then no buffer for the next (the call
			// reports success): again, until EAGAIN.
			prev = taken
			continue
		default:
			c.errno = unix.EIO
			return true
		}
	}
}
