package dataplane

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/loglevel"
)

// TestDropLogPerConn: a dropped packet of an SA carries its conn's name;
// with that conn at debug level each drop is logged at debug, while drops
// of other conns and of no SA keep the rate-limited warning.
func TestDropLogPerConn(t *testing.T) {
	_, b, _, unknownSPI, badICV := forged(t)
	b.in.Conn = "vpn1"
	var buf bytes.Buffer
	levels := loglevel.New(slog.LevelInfo)
	log := slog.New(loglevel.NewHandler(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}), levels))
	b.p.log, b.p.rl.Log = log, log
	b.p.cfg.DebugDrops = func(conn string) bool { return levels.Enabled(conn, slog.LevelDebug) }
	feed := func(pkt []byte) string {
		buf.Reset()
		p := append([]byte(nil), pkt...)
		if b.p.inboundRaw(p) != nil {
			t.Fatal("forged packet accepted")
		}
		return buf.String()
	}
	for _, tc := range []struct {
		name  string
		set   func()
		pkt   []byte
		want  string
		avoid string
	}{
		{"conn at info", func() {}, badICV, `level=WARN msg="dropped packet" conn=vpn1 reason=`, "level=DEBUG"},
		{"conn at debug", func() { levels.SetConn("vpn1", slog.LevelDebug) }, badICV, `level=DEBUG msg=drop conn=vpn1 reason=`, "level=WARN"},
		{"no SA: global level", func() {}, unknownSPI, `level=WARN msg="dropped packet" conn="" reason=`, "level=DEBUG"},
		{"conn at error", func() { levels.SetConn("vpn1", slog.LevelError) }, badICV, "", "conn=vpn1"},
	} {
		tc.set()
		out := feed(tc.pkt)
		if tc.want != "" && !strings.Contains(out, tc.want) {
			t.Errorf("%s: want %q in:\n%s", tc.name, tc.want, out)
		}
		if strings.Contains(out, tc.avoid) {
			t.Errorf("%s: %q in:\n%s", tc.name, tc.avoid, out)
		}
	}
}
