package netio

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sync"

	"github.com/google/nftables"
	mdnetlink "github.com/mdlayher/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Watching and restoring an unowned table.
//
// Where the daemon cannot own its table (before Linux 6.9, or over a
// stale table of an older gosec; nftown.go), a ruleset flush deletes it
// while the daemon runs, and with it the cleartext drops, the guards and
// the SPI gate. The watch sees it at once and the Filter restores the
// table from its model (Restore), then the gate its part: the guards are
// missing from the flush until then, a few milliseconds. The daemon
// logs each such deletion (FilterConfig.OnGone) and its status counts
// them.
//
// The watch listens to the nftables events of the namespace
// (NFNLGRP_NFTABLES). A listener that falls behind loses events (the
// kernel says ENOBUFS and google/nftables' monitor ends): the watch then
// looks the table up and listens again.

// tableWatch calls gone when table inet name is deleted by someone else
// than its Filter.
type tableWatch struct {
	name string
	ns   netns.NsHandle // the namespace (not owned: the Filter's)
	gone func()
	// own is the netlink port of the Filter's socket: the events of its
	// own transactions carry it, and are not reports.
	own uint32

	mu     sync.Mutex
	mon    *nftables.Monitor
	closed bool
	done   chan struct{}
}

// watchTable starts watching table inet name in namespace ns; own is the
// netlink port whose deletions are the Filter's own.
func watchTable(ns netns.NsHandle, name string, own uint32, gone func()) (*tableWatch, error) {
	w := &tableWatch{name: name, ns: ns, gone: gone, own: own, done: make(chan struct{})}
	events, err := w.listen()
	if err != nil {
		return nil, err
	}
	go w.run(events)
	return w, nil
}

// listen subscribes anew (w.mu not held).
func (w *tableWatch) listen() (chan *nftables.MonitorEvent, error) {
	c, err := nftables.New(nftables.WithNetNSFd(int(w.ns)))
	if err != nil {
		return nil, err
	}
	mon := nftables.NewMonitor(nftables.WithMonitorObject(nftables.MonitorObjectTables))
	events, err := c.AddMonitor(mon)
	if err != nil {
		return nil, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		mon.Close()
		return nil, ErrClosed
	}
	w.mon = mon
	return events, nil
}

// run reads events until the watch is closed, reporting every deletion
// of the table. (It must read on until then: a monitor nobody reads
// blocks in its send.)
func (w *tableWatch) run(events chan *nftables.MonitorEvent) {
	defer close(w.done)
	// Each deletion is reported, on a goroutine of its own: what gone
	// does (Filter.lost restores the table) must not hold up close.
	report := func() { go w.gone() }
	for {
		lost := false
		for ev := range events {
			switch {
			case ev.Error != nil:
				lost = true // the monitor ends after this
			case ev.Type == nftables.MonitorEventTypeDelTable && ev.Header.PID != w.own:
				if t, ok := ev.Data.(*nftables.Table); ok && t.Name == w.name && t.Family == nftables.TableFamilyINet {
					report()
				}
			}
		}
		if !lost {
			return // closed
		}
		// Events were lost: listen again, then look the table up, so
		// that a deletion in between is not missed.
		var err error
		if events, err = w.listen(); err != nil {
			return
		}
		if !w.exists() {
			report()
		}
	}
}

// exists looks the table up; an error other than ENOENT counts as there.
func (w *tableWatch) exists() bool {
	c, err := nftables.New(nftables.WithNetNSFd(int(w.ns)))
	if err != nil {
		return true
	}
	_, err = c.ListTableOfFamily(w.name, nftables.TableFamilyINet)
	return !errors.Is(err, unix.ENOENT)
}

// close stops the watch and waits for it (before the Filter deletes the
// table itself).
func (w *tableWatch) close() {
	w.mu.Lock()
	w.closed = true
	if w.mon != nil {
		w.mon.Close()
	}
	w.mu.Unlock()
	<-w.done
}

// Restore installs the table again, from the Filter's model, after
// another process deleted it (Gone): the guards and inbound drops of
// every conn, kept guards included, in one transaction after the table
// itself. On a kernel that
// can own it (the deleted table was a stale unowned one) the new table is
// owned and persistent. The counters start again from the values Counts
// last read. The SPI gate restores its own part (SPIGate.Restore).
func (f *Filter) Restore() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	c, err := f.conn()
	if err != nil {
		return err
	}
	f.sess.mu.Lock()
	defer f.sess.mu.Unlock()
	in, out, conns, kept := f.in, f.out, f.conns, f.kept
	back := func() { f.in, f.out, f.conns, f.kept = in, out, conns, kept }
	f.in, f.out, f.conns, f.kept = newPrefixUnion(), newPrefixUnion(), map[string]*filterConn{}, maps.Clone(kept)
	x := f.begin()
	for _, name := range sortedKeys(conns) {
		x.set(name, conns[name])
	}
	owned := false
	switch err := f.sess.ownTable(f.cfg.Table); {
	case err == nil:
		owned = true
		if err := f.sess.clearTable(f.table); err != nil {
			back()
			return fmt.Errorf("netio: filter: restore table inet %s: %w", f.cfg.Table, err)
		}
	case errors.Is(err, unix.EOPNOTSUPP):
		// Created anew (the table is gone), not added, deleted and added
		// as NewFilter does: that would notify a deletion of the table.
		c.AddTable(f.table)
	default:
		back()
		return fmt.Errorf("netio: filter: restore table inet %s: %w", f.cfg.Table, err)
	}
	if err := f.queueTable(c, x); err != nil {
		discardQueued(c)
		back()
		return fmt.Errorf("netio: filter: restore table inet %s: %w", f.cfg.Table, err)
	}
	if err := c.Flush(); err != nil {
		back()
		return fmt.Errorf("netio: filter: restore table inet %s: %w", f.cfg.Table, err)
	}
	x.undo = nil
	f.banked = map[string]bankedCounts{}
	for name := range f.conns {
		f.banked[name] = f.lastCounts[name]
	}
	f.owned = f.owned || owned
	f.restores++
	f.gone.Store(false)
	return nil
}

// Restores reports how many times the table was restored.
func (f *Filter) Restores() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.restores
}

// Restore installs the gate again after another process deleted its
// table and the Filter restored the table (Filter.Restore): its sets with
// every SPI and peer it holds, its drop rules (unless it had opened) and
// the ring bypass if it had one, in one transaction.
func (g *SPIGate) Restore() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.nl == nil {
		return nil // closed: nothing of it to restore
	}
	defer g.lockNL()()
	for _, set := range []*nftables.Set{g.set, g.peerSet} {
		if err := g.nl.AddSet(set, nil); err != nil {
			discardQueued(g.nl)
			return fmt.Errorf("netio: spi gate: restore set %s: %w", set.Name, err)
		}
	}
	var spis, peers []nftables.SetElement
	for _, spi := range slices.Sorted(maps.Keys(g.refs)) {
		spis = append(spis, nftables.SetElement{Key: spiKey(spi)})
	}
	for _, p := range slices.SortedFunc(maps.Keys(g.peers), netip.Addr.Compare) {
		if p.Is4() {
			peers = append(peers, nftables.SetElement{Key: p.AsSlice()})
		}
	}
	if err := queueElements(g.nl, g.set, spis, true); err != nil {
		discardQueued(g.nl)
		return fmt.Errorf("netio: spi gate: restore: %w", err)
	}
	if err := queueElements(g.nl, g.peerSet, peers, true); err != nil {
		discardQueued(g.nl)
		return fmt.Errorf("netio: spi gate: restore: %w", err)
	}
	g.nl.AddChain(g.chain)
	if !g.open {
		g.queueGateRules()
	}
	if g.bypass != nil {
		g.nl.AddChain(g.bypass)
		g.queueBypassRules(g.bypass, g.open)
	}
	if err := g.nl.Flush(); err != nil {
		return fmt.Errorf("netio: spi gate: restore in table inet %s: %w", g.table.Name, err)
	}
	return nil
}

// lost is the watch's report: the table was deleted by another process.
// It restores the table and then what others keep in it (the SPI gate),
// and tells FilterConfig.OnGone how that went.
func (f *Filter) lost() {
	f.gone.Store(true)
	err := f.Restore()
	if err == nil {
		f.mu.Lock()
		hooks := slices.Clone(f.restoreHooks)
		f.mu.Unlock()
		for _, h := range hooks {
			err = errors.Join(err, h())
		}
	}
	if f.cfg.OnGone != nil {
		f.cfg.OnGone(err)
	}
}

// onRestore registers h to run after each Restore the watch makes (the
// SPI gate's own part of the table).
func (f *Filter) onRestore(h func() error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restoreHooks = append(f.restoreHooks, h)
}

// portID is the netlink port (address) of c, 0 if it cannot be read.
func portID(c *mdnetlink.Conn) uint32 {
	rc, err := c.SyscallConn()
	if err != nil {
		return 0
	}
	var pid uint32
	_ = rc.Control(func(fd uintptr) {
		if sa, err := unix.Getsockname(int(fd)); err == nil {
			if nl, ok := sa.(*unix.SockaddrNetlink); ok {
				pid = nl.Pid
			}
		}
	})
	return pid
}
