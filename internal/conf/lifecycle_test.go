package conf

import (
	"strings"
	"testing"
)

// TestLifecycleKeywords: the volume lifetimes and updown scripts of
// strongSwan's ipsec.conf(5) ("lifebytes", "lifepackets", "marginbytes",
// "marginpackets", "leftupdown") and Libreswan's ("leftupdown").
func TestLifecycleKeywords(t *testing.T) {
	tests := []struct {
		name, body string
		check      func(*Conn) bool
		err        string
	}{
		{"lifebytes", "lifebytes=1000000\n\tmarginbytes=100000", func(c *Conn) bool { return c.LifeBytes == 1000000 && c.MarginBytes == 100000 }, ""},
		{"lifepackets", "lifepackets=5000\n\tmarginpackets=500", func(c *Conn) bool { return c.LifePackets == 5000 && c.MarginPackets == 500 }, ""},
		{"bad", "lifebytes=1M", nil, `bad lifebytes "1M"`},
		{"negative", "marginpackets=-1", nil, `bad marginpackets "-1"`},
		{"updown", "leftupdown=/etc/gosec/updown.sh --verbose", func(c *Conn) bool { return c.Left.UpDown == "/etc/gosec/updown.sh --verbose" }, ""},
		{"rightupdown", "rightupdown=\"logger up\"", func(c *Conn) bool { return c.Right.UpDown == "logger up" }, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			src := "conn c\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tauthby=secret\n\tauto=add\n\t" + tc.body + "\n"
			cfg, err := Parse("t.conf", []byte(src), testOptions())
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "t.conf:6") {
					t.Fatalf("err %v, want %q at t.conf:6", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(cfg.Conns) != 1 || !tc.check(cfg.Conns[0]) {
				t.Fatalf("conns %+v", cfg.Conns)
			}
		})
	}
}
