package netio

import (
	"errors"
	"fmt"
	"os"
	"runtime"

	"github.com/google/nftables"
	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// The netlink sockets below are opened in the calling thread's network
// namespace by opening them on that thread (locked while it happens), not
// by entering the namespace with setns: setns needs CAP_SYS_ADMIN, which
// gosec does not have when it runs as an unprivileged user with
// CAP_NET_ADMIN alone (systemd's ambient capabilities, or after
// internal/privs dropped the rest).

// netlinkHere opens a netlink handle in the calling thread's namespace.
func netlinkHere() (*netlink.Handle, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return netlink.NewHandle()
}

// nftRecvBuffer is the receive buffer of the nftables socket: the kernel
// acknowledges every message of a transaction, and the one that creates
// the table carries a guard rule per conn routed at start (thousands); with
// the default buffer (rmem_default, 208 KB) the acknowledgements of a few
// hundred rules overflow it (ENOBUFS) and gosec cannot start. The kernel
// takes only the memory the queued messages use.
const nftRecvBuffer = 64 << 20

// nftSendBuffer is the send buffer of the nftables socket: a transaction
// goes to the kernel in one sendmsg, which fails with EMSGSIZE when it is
// larger than the buffer (wmem_default, 208 KB); the one that creates the
// table holds the guard elements of every conn routed at start (about
// 200 octets each).
const nftSendBuffer = 64 << 20

// nftablesHere opens a lasting nftables connection in the calling
// thread's namespace, and returns the netlink socket under it too (for
// the messages the library cannot send: nftown.go).
func nftablesHere() (*nftables.Conn, *mdnetlink.Conn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var raw *mdnetlink.Conn
	c, err := nftables.New(nftables.AsLasting(), nftables.WithSockOptions(func(c *mdnetlink.Conn) error {
		raw = c
		rc, err := c.SyscallConn()
		if err != nil {
			return err
		}
		var serr error
		if err := rc.Control(func(fd uintptr) {
			// SO_RCVBUFFORCE passes rmem_max (CAP_NET_ADMIN, which gosec
			// keeps); without it, SO_RCVBUF up to rmem_max.
			if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, nftRecvBuffer); serr != nil {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, nftRecvBuffer)
			}
			if serr == nil {
				if serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, nftSendBuffer); serr != nil {
					serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_SNDBUF, nftSendBuffer)
				}
			}
		}); err != nil {
			return err
		}
		return serr
	}))
	if err != nil {
		return nil, nil, err
	}
	if raw == nil {
		c.CloseLasting()
		return nil, nil, errors.New("nftables: no lasting socket")
	}
	return c, raw, nil
}

// threadNetNS is the calling thread's network namespace file.
const threadNetNS = "/proc/thread-self/ns/net"

// openThreadNetNS opens the calling thread's network namespace, for
// inNetNS.
func openThreadNetNS() (*os.File, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	f, err := os.Open(threadNetNS)
	if err != nil {
		return nil, fmt.Errorf("network namespace: %w", err)
	}
	return f, nil
}

// inNetNS runs fn on a thread in the network namespace ns: the calling
// goroutine's thread, locked to it while fn runs. A thread already in ns
// (every thread of a daemon, which runs in one namespace) runs fn as it
// is; any other enters ns with setns for fn and leaves it again after
// (CAP_SYS_ADMIN; tests whose goroutines move between threads of
// different namespaces). A thread that cannot go back stays locked, so
// that it ends with its goroutine rather than run others in ns.
func inNetNS(ns *os.File, fn func() error) error {
	runtime.LockOSThread()
	var want, here unix.Stat_t
	if err := unix.Fstat(int(ns.Fd()), &want); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("network namespace: %w", err)
	}
	if err := unix.Stat(threadNetNS, &here); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("network namespace: %w", err)
	}
	if want.Dev == here.Dev && want.Ino == here.Ino {
		defer runtime.UnlockOSThread()
		return fn()
	}
	back, err := os.Open(threadNetNS)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("network namespace: %w", err)
	}
	defer back.Close()
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("network namespace: enter: %w", err)
	}
	ferr := fn()
	if err := unix.Setns(int(back.Fd()), unix.CLONE_NEWNET); err != nil {
		return errors.Join(ferr, fmt.Errorf("network namespace: leave: %w", err))
	}
	runtime.UnlockOSThread()
	return ferr
}
