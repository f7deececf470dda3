// Package loglevel holds the daemon's log levels, one global and one per
// conn, which can change while the daemon runs (`gosec debug`, reload of
// charondebug=, plutodebug= and debug=), and the slog.Handler that applies
// them: a record carrying a "conn" attribute (in the record or attached
// with Logger.With) is filtered by that conn's level when it has one, by
// the global level otherwise.
//
// Reading the levels takes atomic loads and one lookup in an immutable
// map: no lock, no allocation, so the data plane may ask per dropped
// packet.
package loglevel

import (
	"context"
	"fmt"
	"log/slog"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

// ConnKey is the attribute that names a record's conn.
const ConnKey = "conn"

// Levels are the global level and the per-conn ones.
type Levels struct {
	mu     sync.Mutex // serializes writers
	global atomic.Int64
	min    atomic.Int64 // lowest of global and every conn level
	conns  atomic.Pointer[map[string]slog.Level]
}

// New returns levels with global as the global level and no conn levels.
func New(global slog.Level) *Levels {
	l := &Levels{}
	l.Set(global, nil)
	return l
}

// Set replaces every level: global, and conns (nil: none).
func (l *Levels) Set(global slog.Level, conns map[string]slog.Level) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := make(map[string]slog.Level, len(conns))
	for k, v := range conns {
		m[k] = v
	}
	l.store(global, m)
}

// SetGlobal changes the global level.
func (l *Levels) SetGlobal(lv slog.Level) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.store(lv, *l.conns.Load())
}

// SetConn gives conn its own level.
func (l *Levels) SetConn(conn string, lv slog.Level) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := copyMap(*l.conns.Load())
	m[conn] = lv
	l.store(slog.Level(l.global.Load()), m)
}

// ResetConn removes conn's own level: the global one applies again.
func (l *Levels) ResetConn(conn string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	m := copyMap(*l.conns.Load())
	delete(m, conn)
	l.store(slog.Level(l.global.Load()), m)
}

func copyMap(m map[string]slog.Level) map[string]slog.Level {
	out := make(map[string]slog.Level, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	return out
}

// store publishes a new state; the caller holds mu and gives up m.
func (l *Levels) store(global slog.Level, m map[string]slog.Level) {
	low := global
	for _, v := range m {
		if v < low {
			low = v
		}
	}
	l.conns.Store(&m)
	l.global.Store(int64(global))
	l.min.Store(int64(low))
}

// Global is the global level.
func (l *Levels) Global() slog.Level { return slog.Level(l.global.Load()) }

// Conns returns a copy of the per-conn levels.
func (l *Levels) Conns() map[string]slog.Level { return copyMap(*l.conns.Load()) }

// Level is the level that applies to conn's records ("" : the global one).
func (l *Levels) Level(conn string) slog.Level {
	if conn != "" {
		if lv, ok := (*l.conns.Load())[conn]; ok {
			return lv
		}
	}
	return slog.Level(l.global.Load())
}

// Enabled reports whether a record of conn at lv is logged.
func (l *Levels) Enabled(conn string, lv slog.Level) bool {
	if lv < slog.Level(l.min.Load()) {
		return false
	}
	return lv >= l.Level(conn)
}

// Handler applies Levels in front of another handler, which should accept
// every level (its own minimum at or below slog.LevelDebug).
type Handler struct {
	inner  slog.Handler
	levels *Levels
	conn   string // from WithAttrs, outside any group
	group  bool   // WithGroup was called: later attrs are not the conn
}

// NewHandler wraps inner.
func NewHandler(inner slog.Handler, levels *Levels) *Handler {
	return &Handler{inner: inner, levels: levels}
}

// Enabled is true when some conn, or the global level, wants lv.
func (h *Handler) Enabled(_ context.Context, lv slog.Level) bool {
	return lv >= slog.Level(h.levels.min.Load())
}

// Handle passes r on when its conn's level (or the global one) allows it.
func (h *Handler) Handle(ctx context.Context, r slog.Record) error {
	conn := h.conn
	if conn == "" && !h.group {
		r.Attrs(func(a slog.Attr) bool {
			if a.Key == ConnKey {
				conn = a.Value.String()
				return false
			}
			return true
		})
	}
	if !h.levels.Enabled(conn, r.Level) {
		return nil
	}
	return h.inner.Handle(ctx, r)
}

// WithAttrs remembers a "conn" attribute given to Logger.With.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	n := *h
	n.inner = h.inner.WithAttrs(attrs)
	if !h.group {
		for _, a := range attrs {
			if a.Key == ConnKey {
				n.conn = a.Value.String()
			}
		}
	}
	return &n
}

// WithGroup opens a group: attributes inside it do not name the conn.
func (h *Handler) WithGroup(name string) slog.Handler {
	n := *h
	n.inner = h.inner.WithGroup(name)
	if name != "" {
		n.group = true
	}
	return &n
}

// Parse reads a level as `gosec debug` and debug= take it: gosec's names
// (error, warn, info, debug), strongSwan's numbers (-1 to 4, as
// charondebug= and `ipsec stroke loglevel` take them) or Libreswan's
// plutodebug words (none: info; any debug class, e.g. all, base, control,
// crypt, private, tmi: debug).
func Parse(s string) (slog.Level, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	switch v {
	case "error":
		return slog.LevelError, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "info":
		return slog.LevelInfo, nil
	case "debug":
		return slog.LevelDebug, nil
	}
	if n, err := strconv.Atoi(v); err == nil {
		return FromStrongSwan(n)
	}
	return ParsePluto(v)
}

// ParseStrict is Parse limited to gosec's names, strongSwan's numbers
// and Libreswan's none and all: what `gosec debug` takes, where a typo
// must not pass as a debug class.
func ParseStrict(s string) (slog.Level, error) {
	switch v := strings.ToLower(strings.TrimSpace(s)); v {
	case "none":
		return slog.LevelInfo, nil
	case "all":
		return slog.LevelDebug, nil
	default:
		if _, err := strconv.Atoi(v); err == nil {
			return Parse(v)
		}
		switch v {
		case "error", "warn", "warning", "info", "debug":
			return Parse(v)
		}
	}
	return 0, fmt.Errorf("%q is not a log level (error, warn, info, debug, -1..4, none, all)", s)
}

// FromStrongSwan maps a strongSwan level: -1 (silent) to error (gosec
// always logs errors), 0 (audit) to warn, 1 (control, the default) to
// info, 2 to 4 (controlmore, raw, private) to debug. gosec logs no key
// material at any level: level 4 does not add keys.
func FromStrongSwan(n int) (slog.Level, error) {
	switch {
	case n < -1 || n > 4:
		return 0, fmt.Errorf("strongSwan log level %d is out of range -1..4", n)
	case n == -1:
		return slog.LevelError, nil
	case n == 0:
		return slog.LevelWarn, nil
	case n == 1:
		return slog.LevelInfo, nil
	}
	return slog.LevelDebug, nil
}

// ParseCharon reads strongSwan's charondebug= ("ike 2, knl 1, cfg 0"):
// gosec has one level, not one per subsystem, so the highest level given
// to any subsystem applies. ok is false when no level is given.
func ParseCharon(s string) (lv slog.Level, ok bool, err error) {
	best := -2
	for _, part := range strings.Split(s, ",") {
		f := strings.Fields(part)
		switch len(f) {
		case 0:
			continue
		case 2:
			n, err := strconv.Atoi(f[1])
			if err != nil {
				return 0, false, fmt.Errorf("charondebug: %q: the level must be a number from -1 to 4", strings.TrimSpace(part))
			}
			if _, err := FromStrongSwan(n); err != nil {
				return 0, false, fmt.Errorf("charondebug: %q: %w", strings.TrimSpace(part), err)
			}
			if n > best {
				best = n
			}
		default:
			return 0, false, fmt.Errorf("charondebug: %q: want a subsystem and a level, e.g. \"ike 2, knl 1\"", strings.TrimSpace(part))
		}
	}
	if best == -2 {
		return 0, false, nil
	}
	lv, err = FromStrongSwan(best)
	return lv, true, err
}

// ParsePluto reads Libreswan's plutodebug= and debug= (a list of debug
// classes separated by spaces or commas): none, or nothing, is info; any
// class is debug. Class names are not checked against Libreswan's list
// (it changes between versions), but must look like one.
func ParsePluto(s string) (slog.Level, error) {
	words := strings.FieldsFunc(strings.ToLower(s), func(r rune) bool { return r == ',' || r == ' ' || r == '\t' })
	lv := slog.LevelInfo
	for _, w := range words {
		for _, r := range w {
			if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '+') {
				return 0, fmt.Errorf("%q is not a log level (error, warn, info, debug, -1..4, or Libreswan debug classes such as none, all, base)", s)
			}
		}
		if w != "none" && !strings.HasPrefix(w, "no-") {
			lv = slog.LevelDebug
		}
	}
	return lv, nil
}

// Name is gosec's name of lv.
func Name(lv slog.Level) string {
	switch {
	case lv <= slog.LevelDebug:
		return "debug"
	case lv <= slog.LevelInfo:
		return "info"
	case lv <= slog.LevelWarn:
		return "warn"
	}
	return "error"
}

// Describe is the levels in one line ("info; vpn1 debug, vpn2 warn").
func (l *Levels) Describe() string {
	conns := l.Conns()
	names := make([]string, 0, len(conns))
	for k := range conns {
		names = append(names, k)
	}
	sort.Strings(names)
	s := Name(l.Global())
	if len(names) == 0 {
		return s
	}
	parts := make([]string, len(names))
	for i, n := range names {
		parts[i] = n + " " + Name(conns[n])
	}
	return s + "; " + strings.Join(parts, ", ")
}
