package dataplane

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/clock"
	"github.com/gosec-ipsec/gosec/sad"
)

// TestWarmer follows the keep-warm timer through traffic, quiet and
// traffic again: it ticks every interval while packets flowed within
// warmFor, then only looks for traffic every idleCheck (and does not
// count those looks), and warms up again at the first look that finds
// new packets.
func TestWarmer(t *testing.T) {
	const interval, warmFor = time.Millisecond, 50 * time.Millisecond
	type step struct {
		name      string
		packets   uint64        // added to the activity before advancing
		advance   time.Duration // then the clock moves by this much
		wantTicks uint64        // warm ticks counted in this step
	}
	steps := []step{
		{"a new plane is warm", 0, 10 * time.Millisecond, 10},
		{"traffic keeps it warm", 5, 40 * time.Millisecond, 40},
		// The packets were seen at 11 ms: warm until 61 ms, then quiet.
		{"it cools warmFor after the last packet", 0, 100 * time.Millisecond, 10},
		{"cold: one look per idleCheck, none counted", 0, 3 * idleCheck, 0},
		// The looks were at 161, 261 and 361 ms; the one at 461 ms finds
		// the packet and counts as the first warm tick.
		{"the first look that finds packets warms it", 1, 30 * time.Millisecond, 20},
		{"warm until warmFor after that look", 0, time.Second, 30},
		{"then cold again", 0, time.Second, 0},
	}
	clk := clock.NewFake(time.Unix(1000, 0))
	var activity atomic.Uint64
	var ticks uint64
	w := newWarmer(clk, interval, warmFor, activity.Load, func() { ticks++ })
	w.start()
	for _, s := range steps {
		before := ticks
		activity.Add(s.packets)
		clk.Advance(s.advance)
		if got := ticks - before; got != s.wantTicks {
			t.Fatalf("%s: %d warm ticks, want %d", s.name, got, s.wantTicks)
		}
		if n := clk.Pending(); n != 1 {
			t.Fatalf("%s: %d timers pending, want 1", s.name, n)
		}
	}
	w.stop()
	if n := clk.Pending(); n != 0 {
		t.Fatalf("after stop: %d timers pending", n)
	}
	clk.Advance(time.Second)
	if n := clk.Pending(); n != 0 {
		t.Fatalf("a stopped warmer armed a timer")
	}
}

// TestPlaneKeepWarm: Config.KeepWarm runs the warmer on the plane's
// clock, its ticks show in Stats, it stops with Run, and without
// KeepWarm there is no timer.
func TestPlaneKeepWarm(t *testing.T) {
	for _, tc := range []struct {
		name      string
		keepWarm  time.Duration
		wantTicks uint64
		wantTimer int
	}{
		{"off", 0, 0, 0},
		{"1ms for 2s", time.Millisecond, 100, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := newSide(t, gw1, gw2, lan1, lan2, sad.Tunnel, specs()[0], 0x1001, 0x2001, false)
			clk := clock.NewFake(time.Unix(1000, 0))
			tun := newFakeTUN(1, 1500)
			idle := newFakeWire(1)
			p, err := New(Config{TUN: tun, ESP: &fakeRaw{tx: idle, rx: idle}, SAD: a.sad, SPD: a.spd,
				Log: discardLog, KeepWarm: tc.keepWarm, Clock: clk})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			errc := make(chan error, 1)
			go func() { errc <- p.Run(ctx) }()
			<-tun.ready
			clk.Advance(100 * time.Millisecond)
			if got := p.Stats().KeepWarmTicks; got != tc.wantTicks {
				t.Errorf("keep-warm ticks %d, want %d", got, tc.wantTicks)
			}
			if n := clk.Pending(); n != tc.wantTimer {
				t.Errorf("%d timers pending while running, want %d", n, tc.wantTimer)
			}
			cancel()
			if err := <-errc; err != nil {
				t.Fatal(err)
			}
			tun.Close()
			idle.Close()
			if n := clk.Pending(); n != 0 {
				t.Errorf("%d timers pending after Run returned", n)
			}
		})
	}
}
