package ratelog

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/clock"
)

func TestLimiter(t *testing.T) {
	var buf bytes.Buffer
	clk := clock.NewFake(time.Unix(0, 0))
	l := &Limiter{Log: slog.New(slog.NewTextHandler(&buf, nil)), Clock: clk, Interval: time.Second, Burst: 2}
	for i := 0; i < 10; i++ {
		l.Warn("icv", "bad ICV")
	}
	l.Warn("replay", "replayed")
	if got := strings.Count(buf.String(), "bad ICV"); got != 2 {
		t.Fatalf("%d ICV lines in the first second, want 2", got)
	}
	if got := strings.Count(buf.String(), "replayed"); got != 1 {
		t.Fatalf("keys must be limited separately: %q", buf.String())
	}
	clk.Advance(time.Second)
	buf.Reset()
	l.Warn("icv", "bad ICV")
	if !strings.Contains(buf.String(), "suppressed=8") {
		t.Fatalf("the next line must report 8 suppressed: %q", buf.String())
	}
}
