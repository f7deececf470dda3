// Package ratelog limits how often the data plane logs about dropped
// packets: at most Burst lines per key in each Interval, and when lines
// were suppressed the next line that gets through says how many.
package ratelog

import (
	"log/slog"
	"sync"
	"time"

	"github.com/gosec-ipsec/gosec/internal/clock"
)

// Limiter decides which log lines get through. It is safe for concurrent
// use; the hot path calls Allow only for packets it already drops.
type Limiter struct {
	Log      *slog.Logger
	Clock    clock.Clock
	Interval time.Duration // default 1s
	Burst    int           // default 5

	mu   sync.Mutex
	keys map[string]*bucket
}

type bucket struct {
	start      time.Time
	n          int
	suppressed int
}

// Warn logs msg with args under key unless key has used up its lines for
// the current interval. Suppressed lines are counted and reported with the
// next line that gets through.
func (l *Limiter) Warn(key, msg string, args ...any) {
	if l == nil || l.Log == nil {
		return
	}
	ok, suppressed := l.allow(key)
	if !ok {
		return
	}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	l.Log.Warn(msg, args...)
}

func (l *Limiter) allow(key string) (bool, int) {
	interval, burst := l.Interval, l.Burst
	if interval <= 0 {
		interval = time.Second
	}
	if burst <= 0 {
		burst = 5
	}
	var now time.Time
	if l.Clock != nil {
		now = l.Clock.Now()
	} else {
		now = time.Now()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.keys == nil {
		l.keys = make(map[string]*bucket)
	}
	b := l.keys[key]
	if b == nil {
		if len(l.keys) > 4096 { // bound memory under hostile variety of keys
			clear(l.keys)
		}
		b = &bucket{start: now}
		l.keys[key] = b
	}
	if now.Sub(b.start) >= interval {
		b.start, b.n = now, 0
	}
	if b.n >= burst {
		b.suppressed++
		return false, 0
	}
	b.n++
	s := b.suppressed
	b.suppressed = 0
	return true, s
}
