package conf

import (
	"net/netip"
	"strings"
	"testing"
)

func TestLocalSide(t *testing.T) {
	addr := netip.MustParseAddr
	mine := func(as ...string) func(netip.Addr) bool {
		return func(a netip.Addr) bool {
			for _, s := range as {
				if addr(s) == a {
					return true
				}
			}
			return false
		}
	}
	end := func(host string) End {
		switch host {
		case "%any":
			return End{Host: host, Any: true}
		case "%defaultroute":
			return End{Host: host, DefaultRoute: true, Addr: addr("198.51.100.9")}
		}
		return End{Host: host, Addr: addr(host)}
	}
	tests := []struct {
		left, right string
		local       []string
		override    string
		want        string // side, or part of the error
	}{
		{"192.0.2.1", "192.0.2.2", []string{"192.0.2.1"}, "", "left"},
		{"192.0.2.1", "192.0.2.2", []string{"192.0.2.2"}, "", "right"},
		{"192.0.2.1", "192.0.2.2", []string{"192.0.2.2"}, "left", "left"},
		{"192.0.2.1", "192.0.2.2", []string{"192.0.2.1", "192.0.2.2"}, "", "both left"},
		{"192.0.2.1", "192.0.2.2", []string{"192.0.2.1", "192.0.2.2"}, "right", "right"},
		{"192.0.2.1", "192.0.2.2", nil, "", "neither left"},
		{"%defaultroute", "192.0.2.2", nil, "", "left"},
		{"192.0.2.2", "%any", nil, "", "right"},
		{"192.0.2.2", "%any", []string{"192.0.2.2"}, "", "left"},
		{"192.0.2.1", "192.0.2.2", nil, "middle", "must be left or right"},
	}
	for _, tt := range tests {
		c := &Conn{Name: "c", Left: end(tt.left), Right: end(tt.right)}
		got, err := LocalSide(c, tt.override, mine(tt.local...))
		if tt.want == "left" || tt.want == "right" {
			if err != nil || got != tt.want {
				t.Errorf("LocalSide(%s, %s, local %v, %q) = %q, %v; want %s", tt.left, tt.right, tt.local, tt.override, got, err, tt.want)
			}
			continue
		}
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("LocalSide(%s, %s, local %v, %q) = %q, %v; want an error with %q", tt.left, tt.right, tt.local, tt.override, got, err, tt.want)
		}
	}
	// The host's own loopback address is found by LocalAddrs.
	if !LocalAddrs()(addr("127.0.0.1")) {
		t.Skip("no loopback address in this network namespace")
	}
}
