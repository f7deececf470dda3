package netio

import (
	"errors"
	"sync"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Watching an unowned table.
//
// Where the daemon cannot own its table (before Linux 6.9, or over a
// stale table of an older gosec; nftown.go), a ruleset flush deletes it
// while the daemon runs, and with it the cleartext drops, the guards and
// the SPI gate. Restoring it is not done; the watch makes the loss known
// at once (the daemon logs it and its status says so) instead of leaving
// it to be found when a conn fails to come up.
//
// The watch listens to the nftables events of the namespace
// (NFNLGRP_NFTABLES). A listener that falls behind loses events (the
// kernel says ENOBUFS and google/nftables' monitor ends): the watch then
// looks the table up and listens again.

// tableWatch calls gone once when table inet name is deleted by someone
// else than its Filter.
type tableWatch struct {
	name string
	ns   netns.NsHandle // the namespace (not owned: the Filter's)
	gone func()

	mu     sync.Mutex
	mon    *nftables.Monitor
	closed bool
	done   chan struct{}
}

// watchTable starts watching table inet name in namespace ns.
func watchTable(ns netns.NsHandle, name string, gone func()) (*tableWatch, error) {
	w := &tableWatch{name: name, ns: ns, gone: gone, done: make(chan struct{})}
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

// run reads events until the watch is closed, reporting the table's
// deletion once. It keeps reading after that: a monitor nobody reads
// blocks in its send.
func (w *tableWatch) run(events chan *nftables.MonitorEvent) {
	defer close(w.done)
	reported := false
	report := func() {
		if !reported {
			reported = true
			w.gone()
		}
	}
	for {
		lost := false
		for ev := range events {
			switch {
			case ev.Error != nil:
				lost = true // the monitor ends after this
			case ev.Type == nftables.MonitorEventTypeDelTable:
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
		if !reported && !w.exists() {
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
