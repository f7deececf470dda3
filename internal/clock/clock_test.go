package clock

import (
	"testing"
	"time"
)

func TestFakeOrderAndStop(t *testing.T) {
	start := time.Unix(1000, 0)
	c := NewFake(start)
	var got []string
	c.AfterFunc(3*time.Second, func() { got = append(got, "3s") })
	c.AfterFunc(1*time.Second, func() {
		got = append(got, "1s")
		c.AfterFunc(1*time.Second, func() { got = append(got, "2s-chained") })
	})
	stopped := c.AfterFunc(2500*time.Millisecond, func() { got = append(got, "stopped") })
	if !stopped.Stop() {
		t.Fatal("Stop of a pending timer returned false")
	}
	c.Advance(2 * time.Second)
	if want := []string{"1s", "2s-chained"}; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Fatalf("after 2s: %v", got)
	}
	if !c.Now().Equal(start.Add(2 * time.Second)) {
		t.Fatalf("now = %v", c.Now())
	}
	if c.Pending() != 1 {
		t.Fatalf("pending = %d, want 1", c.Pending())
	}
	c.Advance(time.Second)
	if len(got) != 3 || got[2] != "3s" {
		t.Fatalf("after 3s: %v", got)
	}
	if stopped.Stop() {
		t.Fatal("second Stop returned true")
	}
}
