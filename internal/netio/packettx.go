package netio

import (
	"encoding/binary"
	"fmt"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The PacketConn's TX ring (PACKET_TX_RING, TPACKET_V2): frames of
// txFrameSize octets, txFrames of them (2 MB, mapped into the process).
const (
	txFrameSize = 2048
	txFrames    = 1024
	txBlockSize = 64 << 10
	// txDataOff is where a frame's data (the Ethernet header, then the
	// packet) begins without PACKET_TX_HAS_OFF: TPACKET2_HDRLEN less
	// the sockaddr_ll, that is TPACKET_ALIGN(sizeof(struct tpacket2_hdr)).
	txDataOff = 32
	// txVnetLen is the virtio_net_hdr in front of each frame
	// (PACKET_VNET_HDR): its hdr_len, the whole frame, has the kernel copy
	// the frame into the socket buffer's linear part.
	txVnetLen = 10
	// txMaxFrame is the largest frame (Ethernet header included) a slot
	// holds.
	txMaxFrame = txFrameSize - txDataOff - txVnetLen
)

// Frame status words of a TX ring (include/uapi/linux/if_packet.h).
const (
	tpStatusAvailable   = 0
	tpStatusSendRequest = 1
	tpStatusWrongFormat = 4
)

// txRing is an AF_PACKET TX ring: Send writes each frame (the next hop's
// Ethernet header, then the packet) into the next free slot and marks it
// for sending, then one sendto(2) without data has the kernel send every
// marked slot in order (tpacket_snd). Against sendmmsg this takes away
// the per-message work of the system call: copying and checking the
// message header, its two iovecs and its address. The kernel copies each
// slot into a socket buffer, linear (a virtio_net_hdr in front of the
// frame says so: by default it would hang the slot's page on the buffer
// as a fragment, which measured a quarter slower end to end, NOTES.md),
// and gives the slot back (status available) when that buffer is freed,
// after the device sent it (on veth: after the peer's input took it).
//
// One sender at a time (PacketConn.mu). The kernel touches the slots only
// within that sender's sendto and in the buffer's destructor, which
// only makes a sent slot available again.
type txRing struct {
	mem []byte
	// cur is the next slot to write: the kernel's head too, between
	// sends, since it sends the marked slots in order from there.
	cur int
}

// openTxRing opens an AF_PACKET socket (SOCK_RAW, protocol 0: it receives
// nothing) with a mapped TX ring. The ring needs a socket of its own: one
// with a ring sends what is marked in it on every sendmsg, whatever the
// message holds (packet_sendmsg), so the PacketConn keeps its other
// socket for sendmmsg.
func openTxRing(cfg PacketConfig) (*txRing, *sock, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("netio: AF_PACKET TX ring: socket: %w", err)
	}
	setSendBuffer(fd, cfg.Buffer)
	mem, err := mapTxRing(fd)
	if err != nil {
		unix.Close(fd)
		return nil, nil, err
	}
	s, err := newSock(fd, fmt.Sprintf("packet-tx-%d", cfg.Proto), 0, 0)
	if err != nil {
		unix.Munmap(mem)
		return nil, nil, err
	}
	return &txRing{mem: mem}, s, nil
}

// mapTxRing sets up the ring on fd and maps it.
func mapTxRing(fd int) ([]byte, error) {
	// PACKET_VNET_HDR only before the ring (EBUSY after).
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
		return nil, fmt.Errorf("netio: AF_PACKET TX ring: PACKET_VNET_HDR: %w", err)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VERSION, unix.TPACKET_V2); err != nil {
		return nil, fmt.Errorf("netio: AF_PACKET TX ring: TPACKET_V2: %w", err)
	}
	req := unix.TpacketReq{Block_size: txBlockSize, Block_nr: txFrames * txFrameSize / txBlockSize,
		Frame_size: txFrameSize, Frame_nr: txFrames}
	if err := unix.SetsockoptTpacketReq(fd, unix.SOL_PACKET, unix.PACKET_TX_RING, &req); err != nil {
		return nil, fmt.Errorf("netio: AF_PACKET TX ring: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, txFrames*txFrameSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("netio: AF_PACKET TX ring: mmap: %w", err)
	}
	return mem, nil
}

// status is slot i's tp_status word.
func (r *txRing) status(i int) *uint32 {
	return (*uint32)(unsafe.Pointer(&r.mem[i*txFrameSize]))
}

// slot returns the k-th slot after cur, or -1 if the kernel still holds
// it (the buffer made from it not freed yet: the ring is full there).
func (r *txRing) slot(k int) int {
	i := (r.cur + k) % txFrames
	if atomic.LoadUint32(r.status(i)) != tpStatusAvailable {
		return -1
	}
	return i
}

// put writes a frame (eth, then pkt) into slot i and marks it for sending;
// len(eth)+len(pkt) <= txMaxFrame.
func (r *txRing) put(i int, eth, pkt []byte) {
	f := r.mem[i*txFrameSize : (i+1)*txFrameSize]
	v := f[txDataOff : txDataOff+txVnetLen]
	n := copy(f[txDataOff+txVnetLen:], eth)
	n += copy(f[txDataOff+txVnetLen+n:], pkt)
	clear(v)
	binary.LittleEndian.PutUint16(v[2:], uint16(n))           // hdr_len: all of it linear
	*(*uint32)(unsafe.Pointer(&f[4])) = uint32(txVnetLen + n) // tp_len
	// The status last (an atomic store orders the writes before it).
	atomic.StoreUint32(r.status(i), tpStatusSendRequest)
}

func (r *txRing) close() error {
	if r.mem == nil {
		return nil
	}
	err := unix.Munmap(r.mem)
	r.mem = nil
	return err
}

// sendtoRing is sendto(2) without data, flags MSG_DONTWAIT, to the
// link-layer address sa: for a socket with a TX ring, "send what is
// marked". raw as for sendmmsg.
func sendtoRing(fd uintptr, sa *unix.RawSockaddrLinklayer, raw bool) unix.Errno {
	if raw {
		_, _, e := unix.RawSyscall6(unix.SYS_SENDTO, fd, 0, 0, unix.MSG_DONTWAIT,
			uintptr(unsafe.Pointer(sa)), unix.SizeofSockaddrLinklayer)
		return e
	}
	_, _, e := unix.Syscall6(unix.SYS_SENDTO, fd, 0, 0, unix.MSG_DONTWAIT,
		uintptr(unsafe.Pointer(sa)), unix.SizeofSockaddrLinklayer)
	return e
}

// taken is how many of the k slots from cur the kernel took (the leading
// ones no longer marked for sending nor refused), given that it took the
// first from of them.
func (r *txRing) taken(from, k int) int {
	n := from
	for n < k {
		s := atomic.LoadUint32(r.status((r.cur + n) % txFrames))
		if s == tpStatusSendRequest || s == tpStatusWrongFormat {
			break
		}
		n++
	}
	return n
}

// release gives the slots taken..k-1 after cur back (the kernel did not
// send them; its head is at the first of them) and moves cur past the
// taken ones.
func (r *txRing) release(taken, k int) {
	for j := taken; j < k; j++ {
		atomic.StoreUint32(r.status((r.cur+j)%txFrames), tpStatusAvailable)
	}
	r.cur = (r.cur + taken) % txFrames
}
