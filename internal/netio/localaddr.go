package netio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// localAddrs is the set of IPv4 addresses this host delivers locally: the
// destinations of the kernel's local routing table (table 255, type
// local), which is what ip_route_input consults before a packet reaches a
// raw socket. One route per address the host has, plus whatever else was
// made local (`ip route add local 10.9.0.0/16 dev lo`, AnyIP).
//
// Lookups read an immutable snapshot through an atomic pointer (no lock, no
// allocation). A goroutine listens to the kernel's IPv4 route events on a
// netlink socket opened in the caller's namespace and reads the local
// table again whenever a local route comes or goes (and when the event
// socket overflowed), so the set follows address changes within a netlink
// round trip; a packet to an address added a moment ago may be skipped
// in between.
type localAddrs struct {
	set  atomic.Pointer[localSet]
	h    *netlink.Handle
	ev   *os.File
	done chan struct{} // closed by close
	gone chan struct{} // closed when follow has returned

	// watchMu orders the snapshots given to watcher (setWatcher).
	watchMu sync.Mutex
	watcher func(*localSet)
}

// localSet is one snapshot: single addresses in a map, wider local
// prefixes (127.0.0.0/8, AnyIP routes) in a short list.
type localSet struct {
	hosts map[[4]byte]struct{}
	nets  []localNet
	// links are the interfaces (by index) that hold the single addresses.
	links map[int]struct{}
}

type localNet struct{ addr, mask uint32 }

// has reports whether a is a local address.
func (l *localAddrs) has(a [4]byte) bool {
	s := l.set.Load()
	if _, ok := s.hosts[a]; ok {
		return true
	}
	v := binary.BigEndian.Uint32(a[:])
	for _, n := range s.nets {
		if v&n.mask == n.addr {
			return true
		}
	}
	return false
}

// newLocalAddrs reads the local table of the calling thread's namespace
// and keeps it current until close.
func newLocalAddrs() (*localAddrs, error) {
	h, err := netlinkHere()
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	ev, err := routeEventsHere()
	if err != nil {
		h.Close()
		return nil, err
	}
	l := &localAddrs{h: h, ev: ev, done: make(chan struct{}), gone: make(chan struct{})}
	// Subscribed first, then read: no change falls in between.
	if err := l.reload(); err != nil {
		ev.Close()
		h.Close()
		return nil, err
	}
	go l.follow()
	return l, nil
}

// routeEventsHere opens a netlink socket subscribed to IPv4 route events
// in the calling thread's namespace.
func routeEventsHere() (*os.File, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, fmt.Errorf("netlink route events: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: unix.RTMGRP_IPV4_ROUTE}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("netlink route events: bind: %w", err)
	}
	return os.NewFile(uintptr(fd), "netlink-route-events"), nil
}

// reload reads the local table into a new snapshot.
func (l *localAddrs) reload() error {
	var (
		routes []netlink.Route
		err    error
	)
	for try := 0; try < 5; try++ {
		routes, err = l.h.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: unix.RT_TABLE_LOCAL, Type: unix.RTN_LOCAL},
			netlink.RT_FILTER_TABLE|netlink.RT_FILTER_TYPE)
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("local routes: %w", err)
	}
	s := &localSet{hosts: make(map[[4]byte]struct{}, len(routes)), links: make(map[int]struct{})}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		ip4 := r.Dst.IP.To4()
		ones, bits := r.Dst.Mask.Size()
		if ip4 == nil || bits != 32 {
			continue
		}
		if ones == 32 {
			s.hosts[[4]byte(ip4)] = struct{}{}
			s.links[r.LinkIndex] = struct{}{}
			continue
		}
		mask := ^uint32(0) << (32 - ones)
		if ones == 0 {
			mask = 0
		}
		s.nets = append(s.nets, localNet{addr: binary.BigEndian.Uint32(ip4) & mask, mask: mask})
	}
	l.watchMu.Lock()
	defer l.watchMu.Unlock()
	l.set.Store(s)
	if l.watcher != nil {
		l.watcher(s)
	}
	return nil
}

// setWatcher has fn called with the current snapshot now and with every
// new one after it is in place, in order, until setWatcher(nil); fn must
// not call back into l.
func (l *localAddrs) setWatcher(fn func(*localSet)) {
	l.watchMu.Lock()
	defer l.watchMu.Unlock()
	l.watcher = fn
	if fn != nil {
		fn(l.set.Load())
	}
}

// follow reloads the set on local route events until close.
func (l *localAddrs) follow() {
	defer close(l.gone)
	buf := make([]byte, 64<<10)
	for {
		n, err := l.ev.Read(buf)
		select {
		case <-l.done:
			return
		default:
		}
		switch {
		case errors.Is(err, unix.ENOBUFS):
			// Events were lost: read the whole table again.
		case err != nil:
			return // closed
		case !localRouteEvent(buf[:n]):
			continue
		}
		// On failure the previous snapshot stays; the next event retries.
		_ = l.reload()
	}
}

// localRouteEvent reports whether the netlink messages in b add or
// delete a route of type local.
func localRouteEvent(b []byte) bool {
	for len(b) >= unix.SizeofNlMsghdr {
		h := (*unix.NlMsghdr)(unsafe.Pointer(&b[0]))
		l := int(h.Len)
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return true // cannot tell: reload
		}
		if (h.Type == unix.RTM_NEWROUTE || h.Type == unix.RTM_DELROUTE) && l >= unix.SizeofNlMsghdr+unix.SizeofRtMsg {
			rt := b[unix.SizeofNlMsghdr:]
			if rt[0] == unix.AF_INET && rt[7] == unix.RTN_LOCAL { // rtm_family, rtm_type
				return true
			}
		}
		b = b[min(len(b), (l+unix.NLMSG_ALIGNTO-1)&^(unix.NLMSG_ALIGNTO-1)):]
	}
	return false
}

func (l *localAddrs) close() {
	select {
	case <-l.done:
		return
	default:
	}
	close(l.done)
	l.ev.Close() // ends follow's Read
	<-l.gone
	l.h.Close()
}
