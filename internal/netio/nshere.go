package netio

import (
	"runtime"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"
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

// nftablesHere opens a lasting nftables connection in the calling
// thread's namespace.
func nftablesHere() (*nftables.Conn, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	return nftables.New(nftables.AsLasting())
}
