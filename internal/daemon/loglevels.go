package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"sort"

	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/internal/conf"
	"github.com/gosec-ipsec/gosec/internal/loglevel"
)

// LogLevels is what status shows of the log levels: the global one and
// the conns that have their own.
type LogLevels struct {
	Global string            `json:"global"`
	Conns  map[string]string `json:"conns,omitempty"`
}

func (d *Daemon) logLevels() LogLevels {
	l := d.opts.Levels
	if l == nil {
		return LogLevels{}
	}
	out := LogLevels{Global: loglevel.Name(l.Global())}
	for name, lv := range l.Conns() {
		if out.Conns == nil {
			out.Conns = map[string]string{}
		}
		out.Conns[name] = loglevel.Name(lv)
	}
	return out
}

// applyLogLevels sets the levels the configuration asks for (at start and
// on every reload, replacing what `gosec debug` set): the global one from
// charondebug=/plutodebug= unless gosec start --debug forces debug, and
// each conn's debug=.
func (d *Daemon) applyLogLevels(cfg *Config) {
	if d.opts.Levels == nil {
		return
	}
	global := slog.LevelInfo
	if name, ok := (&conf.Config{Setup: cfg.Setup}).SetupLogLevel(); ok {
		global, _ = loglevel.Parse(name)
	}
	if d.opts.Debug {
		global = slog.LevelDebug
	}
	conns := map[string]slog.Level{}
	for name, v := range cfg.ConnDebug {
		if lv, err := loglevel.Parse(v); err == nil {
			conns[name] = lv
		}
	}
	before := d.opts.Levels.Describe()
	d.opts.Levels.Set(global, conns)
	if after := d.opts.Levels.Describe(); after != before {
		d.log.Info("log levels", "levels", after)
	}
}

// setDebug serves `gosec debug [CONN] [LEVEL]`: no arguments shows the
// levels; LEVEL sets the global one; CONN LEVEL the conn's own, and
// CONN default removes it. The change lasts until the next reload.
func (d *Daemon) setDebug(args []string) (any, error) {
	l := d.opts.Levels
	if l == nil {
		return nil, fmt.Errorf("this daemon's log levels cannot change")
	}
	switch len(args) {
	case 0:
	case 1:
		lv, err := loglevel.ParseStrict(args[0])
		if err != nil {
			d.mu.Lock()
			_, isConn := d.conns.Conns[args[0]]
			d.mu.Unlock()
			if isConn {
				return nil, fmt.Errorf("give the level too: debug %s LEVEL", args[0])
			}
			return nil, err
		}
		l.SetGlobal(lv)
		d.log.Info("global log level changed", "level", loglevel.Name(lv))
	case 2:
		name := args[0]
		d.mu.Lock()
		_, known := d.conns.Conns[name]
		d.mu.Unlock()
		if !known {
			return nil, fmt.Errorf("no connection named %q", name)
		}
		if args[1] == "default" {
			l.ResetConn(name)
			d.log.Info("conn log level reset to the global one", "for_conn", name)
			break
		}
		lv, err := loglevel.ParseStrict(args[1])
		if err != nil {
			return nil, err
		}
		l.SetConn(name, lv)
		// Not under "conn": the global level decides, as for the reset.
		d.log.Info("conn log level changed", "for_conn", name, "level", loglevel.Name(lv))
	default:
		return nil, fmt.Errorf("usage: debug [CONN] [LEVEL]")
	}
	return d.logLevels(), nil
}

// debugDrops tells the data plane whether a dropped packet of conn ("":
// no SA) is logged one by one at debug level.
func (d *Daemon) debugDrops(conn string) bool {
	return d.opts.Levels != nil && d.opts.Levels.Enabled(conn, slog.LevelDebug)
}

// exchangeLogger logs every finished IKE exchange at debug level with its
// conn (so that the conn's level decides), then passes it on.
type exchangeLogger struct {
	log  *slog.Logger
	next ike.Observer
}

func (o exchangeLogger) Exchange(ev ike.ExchangeEvent) {
	if o.log.Enabled(context.Background(), slog.LevelDebug) {
		args := []any{"conn", ev.Conn, "peer", ev.Peer, "exchange", ev.Kind, "result", ev.Result}
		if ev.Latency > 0 {
			args = append(args, "latency", ev.Latency)
		}
		o.log.Debug("IKE exchange", args...)
	}
	if o.next != nil {
		o.next.Exchange(ev)
	}
}

// String is the levels as `gosec debug` prints them.
func (l LogLevels) String() string {
	s := "global: " + l.Global
	names := make([]string, 0, len(l.Conns))
	for n := range l.Conns {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		s += fmt.Sprintf("\nconn %s: %s", n, l.Conns[n])
	}
	return s
}

// Text is the levels in one line ("info; vpn1 debug").
func (l LogLevels) Text() string {
	names := make([]string, 0, len(l.Conns))
	for n := range l.Conns {
		names = append(names, n)
	}
	sort.Strings(names)
	s := l.Global
	for i, n := range names {
		sep := ", "
		if i == 0 {
			sep = "; "
		}
		s += sep + n + " " + l.Conns[n]
	}
	return s
}
