package netio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/gosec-ipsec/gosec/internal/clock"
)

// hop is where a packet to one destination leaves: the outgoing Ethernet
// interface and the frame header to put in front of the IPv4 packet. A hop
// is immutable once published except for its two flags.
type hop struct {
	ifindex int
	eth     [14]byte // destination MAC, source MAC, EtherType IPv4
	mtu     int      // route MTU (or the link's): larger packets go to the raw socket
	// ok is false for a destination that cannot be sent by AF_PACKET now
	// (no route, a local or multipath route, a link that is not Ethernet,
	// an unresolved neighbour): its packets go through the raw socket,
	// which makes the kernel resolve the neighbour.
	ok bool
	// probe asks for one packet through the raw socket: the kernel's
	// neighbour entry is stale, and only traffic the kernel itself sends
	// makes it verify the neighbour (DELAY, PROBE) before it goes on.
	probe atomic.Bool
	// used is set when a packet took this hop since the last refresh.
	used atomic.Bool
}

// hopResolver finds the next hop for a destination: route lookup with the
// daemon's firewall mark, then the kernel's neighbour entry.
type hopResolver interface {
	resolve(dst netip.Addr) (h *hop, stale bool, err error)
}

// nextHops caches hops per destination for the send path. Lookups read an
// immutable map through an atomic pointer (no lock); a miss records the
// destination under a mutex and wakes the refresher. A timer on the
// injectable clock refreshes every destination used since the last round
// and forgets the others.
type nextHops struct {
	res      hopResolver
	clk      clock.Clock
	interval time.Duration
	tab      atomic.Pointer[map[netip.Addr]*hop]

	mu      sync.Mutex
	wanted  map[netip.Addr]struct{} // misses since the last refresh
	timer   clock.Timer
	closed  bool
	kick    chan struct{}
	done    chan struct{}
	refresh sync.Mutex // one refresh at a time
	// changed, if set, is called by the refresher when a destination's
	// hop appears, changes or becomes unusable (old or h may be nil).
	changed func(dst netip.Addr, old, h *hop)
}

func newNextHops(res hopResolver, clk clock.Clock, interval time.Duration) *nextHops {
	n := &nextHops{res: res, clk: clk, interval: interval, wanted: map[netip.Addr]struct{}{},
		kick: make(chan struct{}, 1), done: make(chan struct{})}
	empty := map[netip.Addr]*hop{}
	n.tab.Store(&empty)
	return n
}

// start runs the refresher: immediately after a miss, and every interval.
func (n *nextHops) start() {
	go func() {
		for {
			select {
			case <-n.done:
				return
			case <-n.kick:
				n.update()
			}
		}
	}()
	n.arm()
}

func (n *nextHops) arm() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.timer = n.clk.AfterFunc(n.interval, func() {
		n.wake()
		n.arm()
	})
}

func (n *nextHops) wake() {
	select {
	case n.kick <- struct{}{}:
	default:
	}
}

func (n *nextHops) stop() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.closed = true
	if n.timer != nil {
		n.timer.Stop()
	}
	close(n.done)
}

// lookup returns the hop for dst, or nil when the packet must go through
// the raw socket (unknown yet, not sendable, or this is the one packet of
// the round that lets the kernel verify a stale neighbour).
func (n *nextHops) lookup(dst netip.Addr) *hop {
	h := (*n.tab.Load())[dst]
	if h == nil {
		n.miss(dst)
		return nil
	}
	if !h.used.Load() {
		h.used.Store(true)
	}
	if !h.ok {
		return nil
	}
	if h.probe.Load() && h.probe.CompareAndSwap(true, false) {
		return nil
	}
	return h
}

func (n *nextHops) miss(dst netip.Addr) {
	n.mu.Lock()
	_, seen := n.wanted[dst]
	if !seen && len(n.wanted) < maxWanted {
		n.wanted[dst] = struct{}{}
	}
	n.mu.Unlock()
	if !seen {
		n.wake()
	}
}

// maxWanted bounds the destinations a burst of misses can queue for one
// refresh (a spoofed-destination flood cannot grow it without bound; the
// others are seen again on the next miss).
const maxWanted = 4096

// update resolves every destination used since the last round and every
// new miss, and publishes the new table. Resolution errors make negative
// entries (raw socket) that the next round retries.
func (n *nextHops) update() {
	n.refresh.Lock()
	defer n.refresh.Unlock()
	n.mu.Lock()
	dsts := n.wanted
	n.wanted = make(map[netip.Addr]struct{}, len(dsts))
	n.mu.Unlock()
	for d, h := range *n.tab.Load() {
		if h.used.Load() {
			dsts[d] = struct{}{}
		}
	}
	old := *n.tab.Load()
	tab := make(map[netip.Addr]*hop, len(dsts))
	for d := range dsts {
		h, stale, err := n.res.resolve(d)
		if err != nil || h == nil {
			h = &hop{}
		}
		h.probe.Store(stale)
		tab[d] = h
		if o := old[d]; n.changed != nil && (o == nil && h.ok || o != nil && (o.ok != h.ok || o.eth != h.eth || o.ifindex != h.ifindex)) {
			n.changed(d, o, h)
		}
	}
	n.tab.Store(&tab)
}

// netlinkResolver resolves hops with the kernel's routing table (as the
// marked raw socket would be routed) and neighbour table.
type netlinkResolver struct {
	h    *netlink.Handle
	mark uint32
}

var errNoHop = errors.New("no AF_PACKET next hop")

func (r *netlinkResolver) resolve(dst netip.Addr) (*hop, bool, error) {
	if !dst.Is4() {
		return nil, false, errNoHop
	}
	routes, err := r.h.RouteGetWithOptions(net.IP(dst.AsSlice()), &netlink.RouteGetOptions{Mark: r.mark})
	if err != nil {
		return nil, false, fmt.Errorf("route to %v: %w", dst, err)
	}
	if len(routes) != 1 {
		return nil, false, errNoHop
	}
	rt := routes[0]
	if rt.Type != unix.RTN_UNICAST || len(rt.MultiPath) > 0 || rt.LinkIndex <= 0 {
		return nil, false, errNoHop // local, broadcast, multipath...
	}
	link, err := r.h.LinkByIndex(rt.LinkIndex)
	if err != nil {
		return nil, false, fmt.Errorf("link %d: %w", rt.LinkIndex, err)
	}
	a := link.Attrs()
	if a.EncapType != "ether" || len(a.HardwareAddr) != 6 || a.Flags&net.FlagUp == 0 || a.Flags&net.FlagLoopback != 0 {
		return nil, false, errNoHop
	}
	nh := dst
	if gw, ok := netip.AddrFromSlice(rt.Gw); ok && gw.Unmap().IsValid() && !gw.Unmap().IsUnspecified() {
		nh = gw.Unmap()
	}
	neighs, err := r.h.NeighList(rt.LinkIndex, unix.AF_INET)
	if err != nil {
		return nil, false, fmt.Errorf("neighbours on %s: %w", a.Name, err)
	}
	for _, ne := range neighs {
		ip, ok := netip.AddrFromSlice(ne.IP)
		if !ok || ip.Unmap() != nh || len(ne.HardwareAddr) != 6 {
			continue
		}
		const usable = netlink.NUD_REACHABLE | netlink.NUD_STALE | netlink.NUD_DELAY | netlink.NUD_PROBE | netlink.NUD_PERMANENT | netlink.NUD_NOARP
		if ne.State&usable == 0 {
			return nil, false, errNoHop // incomplete or failed: the kernel resolves
		}
		h := &hop{ifindex: rt.LinkIndex, ok: true, mtu: a.MTU}
		if rt.MTU > 0 && rt.MTU < h.mtu {
			h.mtu = rt.MTU
		}
		copy(h.eth[0:6], ne.HardwareAddr)
		copy(h.eth[6:12], a.HardwareAddr)
		binary.BigEndian.PutUint16(h.eth[12:], unix.ETH_P_IP)
		return h, ne.State&netlink.NUD_STALE != 0, nil
	}
	return nil, false, errNoHop
}
