package loglevel

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want slog.Level
		bad  bool
	}{
		{in: "debug", want: slog.LevelDebug},
		{in: "INFO", want: slog.LevelInfo},
		{in: "warn", want: slog.LevelWarn},
		{in: "error", want: slog.LevelError},
		{in: "-1", want: slog.LevelError},
		{in: "0", want: slog.LevelWarn},
		{in: "1", want: slog.LevelInfo},
		{in: "2", want: slog.LevelDebug},
		{in: "4", want: slog.LevelDebug},
		{in: "5", bad: true},
		{in: "none", want: slog.LevelInfo},
		{in: "all", want: slog.LevelDebug},
		{in: "control crypt", want: slog.LevelDebug},
		{in: "all,private", want: slog.LevelDebug},
		{in: "loud!", bad: true},
	} {
		got, err := Parse(tc.in)
		if (err != nil) != tc.bad {
			t.Errorf("Parse(%q): err %v, want error %v", tc.in, err, tc.bad)
			continue
		}
		if !tc.bad && got != tc.want {
			t.Errorf("Parse(%q) = %v, want %v", tc.in, got, tc.want)
		}
	}
}

func TestParseStrict(t *testing.T) {
	for in, want := range map[string]slog.Level{"debug": slog.LevelDebug, "all": slog.LevelDebug, "none": slog.LevelInfo, "3": slog.LevelDebug, "0": slog.LevelWarn} {
		if got, err := ParseStrict(in); err != nil || got != want {
			t.Errorf("ParseStrict(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"vpn1", "control", "9", ""} {
		if _, err := ParseStrict(in); err == nil {
			t.Errorf("ParseStrict(%q) accepted", in)
		}
	}
}

func TestParseCharon(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want slog.Level
		ok   bool
		bad  bool
	}{
		{in: "ike 2, knl 1, cfg 0", want: slog.LevelDebug, ok: true},
		{in: "ike 1", want: slog.LevelInfo, ok: true},
		{in: "ike 0, knl -1", want: slog.LevelWarn, ok: true},
		{in: "", ok: false},
		{in: "ike two", bad: true},
		{in: "ike 7", bad: true},
		{in: "all", bad: true},
	} {
		got, ok, err := ParseCharon(tc.in)
		if (err != nil) != tc.bad {
			t.Errorf("ParseCharon(%q): err %v, want error %v", tc.in, err, tc.bad)
			continue
		}
		if tc.bad {
			continue
		}
		if ok != tc.ok || (ok && got != tc.want) {
			t.Errorf("ParseCharon(%q) = %v, %v; want %v, %v", tc.in, got, ok, tc.want, tc.ok)
		}
	}
}

// TestHandlerFilters: a conn's own level decides for its records (given
// in the record or with Logger.With), the global level for the others,
// and a "conn" attribute inside a group is not the record's conn.
func TestHandlerFilters(t *testing.T) {
	var buf bytes.Buffer
	levels := New(slog.LevelInfo)
	log := slog.New(NewHandler(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}), levels))
	emit := func() string {
		buf.Reset()
		log.Debug("d-global")
		log.Info("i-global")
		log.Debug("d-vpn1", "conn", "vpn1")
		log.Info("i-vpn1", "conn", "vpn1")
		log.With("conn", "vpn1").Debug("d-with-vpn1")
		log.Debug("d-vpn2", "conn", "vpn2")
		log.WithGroup("g").Debug("d-group-vpn1", "conn", "vpn1")
		return buf.String()
	}
	for _, tc := range []struct {
		name    string
		set     func()
		want    []string
		notWant []string
	}{
		{"global info", func() {}, []string{"i-global", "i-vpn1"}, []string{"d-global", "d-vpn1", "d-with-vpn1", "d-vpn2", "d-group-vpn1"}},
		{"vpn1 debug", func() { levels.SetConn("vpn1", slog.LevelDebug) }, []string{"i-global", "d-vpn1", "d-with-vpn1", "i-vpn1"}, []string{"d-global", "d-vpn2", "d-group-vpn1"}},
		{"global debug, vpn1 warn", func() { levels.SetGlobal(slog.LevelDebug); levels.SetConn("vpn1", slog.LevelWarn) }, []string{"d-global", "d-vpn2", "d-group-vpn1"}, []string{"d-vpn1", "i-vpn1", "d-with-vpn1"}},
		{"reset", func() { levels.Set(slog.LevelInfo, nil) }, []string{"i-global", "i-vpn1"}, []string{"d-global", "d-vpn1", "d-vpn2"}},
	} {
		tc.set()
		out := emit()
		for _, w := range tc.want {
			if !strings.Contains(out, "msg="+w+" ") && !strings.Contains(out, "msg="+w+"\n") {
				t.Errorf("%s: %s missing:\n%s", tc.name, w, out)
			}
		}
		for _, w := range tc.notWant {
			if strings.Contains(out, "msg="+w+" ") || strings.Contains(out, "msg="+w+"\n") {
				t.Errorf("%s: %s logged:\n%s", tc.name, w, out)
			}
		}
	}
	if levels.Enabled("", slog.LevelDebug) || !levels.Enabled("", slog.LevelInfo) {
		t.Errorf("Enabled after reset is wrong")
	}
	if log.Handler().Enabled(context.Background(), slog.LevelDebug) {
		t.Errorf("handler enabled for debug with every level at info")
	}
}

func TestDescribe(t *testing.T) {
	l := New(slog.LevelWarn)
	l.SetConn("b", slog.LevelDebug)
	l.SetConn("a", slog.LevelInfo)
	if got, want := l.Describe(), "warn; a info, b debug"; got != want {
		t.Fatalf("Describe = %q, want %q", got, want)
	}
	l.ResetConn("a")
	l.ResetConn("b")
	if got := l.Describe(); got != "warn" {
		t.Fatalf("Describe = %q", got)
	}
}

// BenchmarkEnabledConn is the data plane's question per dropped packet.
func BenchmarkEnabledConn(b *testing.B) {
	l := New(slog.LevelInfo)
	l.SetConn("vpn1", slog.LevelDebug)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		l.Enabled("vpn2", slog.LevelDebug)
	}
}
