package netio

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RouteProto is the routing protocol number (RTPROT_*) gosec tags its routes
// and rules with, so that Cleanup recognises them after a crash. 0xa5 is
// not assigned in /etc/iproute2/rt_protos.
const RouteProto = 0xa5

// Default routing parameters.
const (
	DefaultTable    = 0x5ec  // 1516
	DefaultPriority = 0x5ec  // rule priority, before main (32766)
	DefaultMark     = 0x5ec0 // SO_MARK of the daemon's own sockets
)

// RouteConfig says where the daemon's routes and rules go.
type RouteConfig struct {
	// Table is the dedicated routing table for routes into the TUN.
	Table int
	// Mark is the firewall mark of the daemon's own sockets. Packets that
	// carry it skip Table, so outer ESP/AH/UDP packets to a peer whose
	// address is itself routed into the TUN (transport mode) go out on the
	// wire instead of looping back.
	Mark uint32
	// Priority is the priority of the rule `not fwmark Mark lookup Table`.
	// With SuppressMain, the rule `lookup main suppress_prefixlength 0` goes
	// at Priority-1.
	Priority int
	// SuppressMain adds the wg-quick rule that lets main's specific routes
	// (everything but default routes) win over Table, for when Table holds
	// a default route (a conn protecting 0.0.0.0/0) and the local networks
	// must stay reachable. Off by default, because it also lets main's
	// connected route to a transport-mode peer win over the TUN route.
	SuppressMain bool
	// TUNIndex is the interface index of the TUN device.
	TUNIndex int
	// SrcValidMark sets net.ipv4.conf.all.src_valid_mark=1 (restored on
	// Close), so the reverse-path filter looks routes up with the packet's
	// mark; see FilterConfig.InboundMark for why strict rp_filter needs it.
	SrcValidMark bool
}

func (c *RouteConfig) defaults() {
	if c.Table == 0 {
		c.Table = DefaultTable
	}
	if c.Priority == 0 {
		c.Priority = DefaultPriority
	}
	if c.Mark == 0 {
		c.Mark = DefaultMark
	}
}

// Route is one destination routed into the TUN.
type Route struct {
	// Dst is a remote subnet (tunnel mode) or the remote host as /32
	// (transport mode).
	Dst netip.Prefix
	// Src, if valid, is the preferred source address for packets that take
	// this route (the local host address in transport mode, a local-subnet
	// address for tunnel mode traffic originating on the gateway).
	Src netip.Addr
	// MTU, if non-zero, is the route's MTU.
	MTU int
}

// Router installs and removes the daemon's policy routing in the network
// namespace it was created in. It is safe for concurrent use.
type Router struct {
	cfg RouteConfig
	nl  *netlink.Handle
	mu  sync.Mutex
	// routes installed, for Close.
	routes map[netip.Prefix]Route
	rules  []*netlink.Rule
	// oldSVM is the src_valid_mark value to restore ("" if untouched), in
	// namespace svmNS.
	oldSVM string
	svmNS  netns.NsHandle
}

const srcValidMarkPath = "/proc/sys/net/ipv4/conf/all/src_valid_mark"

// NewRouter removes stale state (CleanupRoutes) and installs the rules: after it,
// unmarked packets consult cfg.Table first. The Router is bound to the
// calling thread's network namespace.
func NewRouter(cfg RouteConfig) (*Router, error) {
	cfg.defaults()
	if cfg.TUNIndex <= 0 {
		return nil, errors.New("netio: router: no TUN interface index")
	}
	nl, err := netlinkHere()
	if err != nil {
		return nil, fmt.Errorf("netio: router: netlink: %w", err)
	}
	r := &Router{cfg: cfg, nl: nl, routes: map[netip.Prefix]Route{}, svmNS: -1}
	if err := cleanup(nl, cfg); err != nil {
		nl.Close()
		return nil, err
	}
	mask := uint32(0xffffffff)
	not := netlink.NewRule()
	not.Family = unix.AF_INET
	not.Priority = cfg.Priority
	not.Table = cfg.Table
	not.Mark = cfg.Mark
	not.Mask = &mask
	not.Invert = true
	not.Protocol = RouteProto
	r.rules = append(r.rules, not)
	if cfg.SuppressMain {
		sup := netlink.NewRule()
		sup.Family = unix.AF_INET
		sup.Priority = cfg.Priority - 1
		sup.Table = unix.RT_TABLE_MAIN
		sup.SuppressPrefixlen = 0
		sup.Protocol = RouteProto
		r.rules = append(r.rules, sup)
	}
	for _, rule := range r.rules {
		if err := nl.RuleAdd(rule); err != nil {
			r.Close()
			return nil, fmt.Errorf("netio: router: add rule prio %d: %w", rule.Priority, err)
		}
	}
	if cfg.SrcValidMark {
		// /proc/sys/net is per network namespace of the calling thread.
		old, err := os.ReadFile(srcValidMarkPath)
		if err == nil {
			err = os.WriteFile(srcValidMarkPath, []byte("1\n"), 0o644)
		}
		if err != nil {
			r.Close()
			return nil, fmt.Errorf("netio: router: src_valid_mark: %w", err)
		}
		r.oldSVM = strings.TrimSpace(string(old))
		r.svmNS, _ = netns.Get()
	}
	return r, nil
}

func (r *Router) nlRoute(rt Route) *netlink.Route {
	nr := &netlink.Route{
		LinkIndex: r.cfg.TUNIndex,
		Dst:       prefixNet(rt.Dst),
		Table:     r.cfg.Table,
		Scope:     netlink.SCOPE_LINK,
		Protocol:  RouteProto,
		MTU:       rt.MTU,
	}
	if rt.Src.IsValid() {
		nr.Src = net.IP(rt.Src.AsSlice())
	}
	return nr
}

// AddRoute routes rt.Dst into the TUN in the dedicated table (replacing a
// route to the same destination there).
func (r *Router) AddRoute(rt Route) error {
	if !rt.Dst.Addr().Is4() {
		return fmt.Errorf("netio: route %v: only IPv4", rt.Dst)
	}
	rt.Dst = rt.Dst.Masked()
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.nl.RouteReplace(r.nlRoute(rt)); err != nil {
		return fmt.Errorf("netio: route %v table %d: %w", rt.Dst, r.cfg.Table, err)
	}
	r.routes[rt.Dst] = rt
	return nil
}

// DelRoute removes the route to dst from the dedicated table.
func (r *Router) DelRoute(dst netip.Prefix) error {
	dst = dst.Masked()
	r.mu.Lock()
	defer r.mu.Unlock()
	rt, ok := r.routes[dst]
	if !ok {
		rt = Route{Dst: dst}
	}
	delete(r.routes, dst)
	if err := r.nl.RouteDel(r.nlRoute(rt)); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("netio: delete route %v table %d: %w", dst, r.cfg.Table, err)
	}
	return nil
}

// Close removes every route and rule the Router installed.
func (r *Router) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	for dst, rt := range r.routes {
		if err := r.nl.RouteDel(r.nlRoute(rt)); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("netio: delete route %v: %w", dst, err))
		}
		delete(r.routes, dst)
	}
	for _, rule := range r.rules {
		if err := r.nl.RuleDel(rule); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("netio: delete rule prio %d: %w", rule.Priority, err))
		}
	}
	r.rules = nil
	if r.oldSVM != "" && r.oldSVM != "1" {
		if err := restoreSysctl(r.svmNS, srcValidMarkPath, r.oldSVM); err != nil {
			errs = append(errs, err)
		}
	}
	if r.svmNS.IsOpen() {
		r.svmNS.Close()
	}
	r.oldSVM = ""
	r.nl.Close()
	return errors.Join(errs...)
}

// CleanupRoutes removes, in the calling thread's namespace, state a crashed
// daemon with this configuration left: IPv4 rules tagged RouteProto at
// cfg.Priority or cfg.Priority-1, and routes tagged RouteProto in cfg.Table.
// Rules and routes of anyone else are left alone.
func CleanupRoutes(cfg RouteConfig) error {
	cfg.defaults()
	nl, err := netlinkHere()
	if err != nil {
		return fmt.Errorf("netio: cleanup: netlink: %w", err)
	}
	defer nl.Close()
	return cleanup(nl, cfg)
}

func cleanup(nl *netlink.Handle, cfg RouteConfig) error {
	var errs []error
	rules, err := nl.RuleList(unix.AF_INET)
	if err != nil {
		return fmt.Errorf("netio: cleanup: list rules: %w", err)
	}
	for i := range rules {
		rule := &rules[i]
		if rule.Protocol != RouteProto || (rule.Priority != cfg.Priority && rule.Priority != cfg.Priority-1) {
			continue
		}
		if err := nl.RuleDel(rule); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, fmt.Errorf("netio: cleanup: delete rule prio %d: %w", rule.Priority, err))
		}
	}
	routes, err := nl.RouteListFiltered(unix.AF_INET, &netlink.Route{Table: cfg.Table, Protocol: RouteProto},
		netlink.RT_FILTER_TABLE|netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("netio: cleanup: list table %d: %w", cfg.Table, err))...)
	}
	for i := range routes {
		if err := nl.RouteDel(&routes[i]); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("netio: cleanup: delete route %v: %w", routes[i].Dst, err))
		}
	}
	return errors.Join(errs...)
}

// restoreSysctl writes val to the /proc/sys file path as seen from network
// namespace ns. It works on a goroutine of its own, locked to its thread, so
// that if the thread cannot be switched back the runtime discards it with
// the goroutine instead of leaving the caller in another namespace.
func restoreSysctl(ns netns.NsHandle, path, val string) error {
	res := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			res <- fmt.Errorf("netio: restore %s: %w", path, err)
			return // the locked thread ends with this goroutine
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			res <- fmt.Errorf("netio: restore %s: %w", path, err)
			return
		}
		werr := os.WriteFile(path, []byte(val+"\n"), 0o644)
		if err := netns.Set(orig); err != nil {
			res <- errors.Join(werr, fmt.Errorf("netio: restore %s: back to own namespace: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		if werr != nil {
			werr = fmt.Errorf("netio: restore %s: %w", path, werr)
		}
		res <- werr
	}()
	return <-res
}
