package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
)

// ethIPHeaders is the room in front of each ESP packet in a frame: an
// Ethernet header and an IPv4 header without options.
const ethIPHeaders = 14 + 20

// openPacketSender opens an AF_PACKET socket on cfg.Dev with the qdisc
// bypassed and builds the batch as whole frames to cfg.DstMAC.
func openPacketSender(cfg Config) (func() (int, error), func() error, *batch, error) {
	ifi, err := net.InterfaceByName(cfg.Dev)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("-dev: %w", err)
	}
	src := cfg.Src
	if !src.IsValid() {
		if src, err = firstIPv4(ifi); err != nil {
			return nil, nil, nil, err
		}
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, nil, nil, fmt.Errorf("-dev %s: not an Ethernet interface", cfg.Dev)
	}
	b, frames, err := newBatch(cfg.Batch, cfg.Size, ethIPHeaders)
	if err != nil {
		return nil, nil, nil, err
	}
	for _, f := range frames {
		putHeaders(f, cfg.DstMAC, ifi.HardwareAddr, src, cfg.Dst)
	}
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("AF_PACKET socket: %w", err)
	}
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, 4<<20)
	if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_QDISC_BYPASS, 1); err != nil {
		unix.Close(fd)
		return nil, nil, nil, fmt.Errorf("PACKET_QDISC_BYPASS: %w", err)
	}
	to := unix.RawSockaddrLinklayer{Family: unix.AF_PACKET, Protocol: htons(unix.ETH_P_IP), Ifindex: int32(ifi.Index), Halen: 6}
	copy(to.Addr[:], cfg.DstMAC)
	hdrs := make([]unix.Mmsghdr, len(frames))
	iovs := make([]unix.Iovec, len(frames))
	for i, f := range frames {
		iovs[i].Base = &f[0]
		iovs[i].SetLen(len(f))
		hdrs[i].Hdr.Name = (*byte)(unsafe.Pointer(&to))
		hdrs[i].Hdr.Namelen = unix.SizeofSockaddrLinklayer
		hdrs[i].Hdr.Iov = &iovs[i]
		hdrs[i].Hdr.Iovlen = 1
	}
	send := func() (int, error) {
		// A blocking socket: a full buffer makes the flooder wait, as it
		// should (the rate it reached is reported).
		n, _, e := unix.Syscall6(unix.SYS_SENDMMSG, uintptr(fd), uintptr(unsafe.Pointer(&hdrs[0])), uintptr(len(hdrs)), 0, 0, 0)
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
	return send, func() error { return unix.Close(fd) }, b, nil
}

// putHeaders writes the Ethernet and IPv4 headers of an ESP frame (DF
// set, ID 0, TTL 64) in front of its ESP packet.
func putHeaders(f []byte, dstMAC, srcMAC net.HardwareAddr, src, dst netip.Addr) {
	copy(f[0:6], dstMAC)
	copy(f[6:12], srcMAC)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IP)
	iphdr.PutIPv4(f[14:ethIPHeaders], &iphdr.Outer{Src: src.As4(), Dst: dst.As4(), DF: true}, iphdr.ProtoESP, len(f)-14)
}

// firstIPv4 returns the interface's first IPv4 address.
func firstIPv4(ifi *net.Interface) (netip.Addr, error) {
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("-dev %s: addresses: %w", ifi.Name, err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP.To4()); ok && n.IP.To4() != nil {
				return ip, nil
			}
		}
	}
	return netip.Addr{}, fmt.Errorf("-dev %s: no IPv4 address (give -src)", ifi.Name)
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }
