package conf

import (
	"strings"
	"testing"
)

// TestAmbiguousConns: conns a responder cannot tell apart (same ends,
// IDs, selectors, type and proposals) draw a warning at the later one
// naming the first; conns that differ in anything the peer's negotiation
// shows, and conns that are not negotiated, do not.
func TestAmbiguousConns(t *testing.T) {
	const a = "conn a\n" + ends + "\tleftsubnet=10.1.0.0/24\n\trightsubnet=10.2.0.0/24\n\tauto=add\n"
	tests := []struct {
		name, b string
		warn    bool
	}{
		{"identical", "conn b\n" + ends + "\tleftsubnet=10.1.0.0/24\n\trightsubnet=10.2.0.0/24\n\tauto=start\n\tdpddelay=30s\n", true},
		{"ends swapped", "conn b\n\tleft=192.0.2.2\n\tright=192.0.2.1\n\tauthby=secret\n\tleftsubnet=10.2.0.0/24\n\trightsubnet=10.1.0.0/24\n", true},
		{"other subnet", "conn b\n" + ends + "\tleftsubnet=10.1.0.0/24\n\trightsubnet=10.3.0.0/24\n", false},
		{"other protoport", "conn b\n" + ends + "\tleftsubnet=10.1.0.0/24\n\trightsubnet=10.2.0.0/24\n\tleftprotoport=tcp\n\trightprotoport=tcp\n", false},
		{"other rightid", "conn b\n" + ends + "\tleftsubnet=10.1.0.0/24\n\trightsubnet=10.2.0.0/24\n\trightid=@peer\n", false},
		{"other esp", "conn b\n" + ends + "\tleftsubnet=10.1.0.0/24\n\trightsubnet=10.2.0.0/24\n\tesp=aes256-sha256\n", false},
		{"transport", "conn b\n" + ends + "\tleftsubnet=10.1.0.0/24\n\trightsubnet=10.2.0.0/24\n\ttype=transport\n", false},
		{"passthrough", "conn b\n" + ends + "\tleftsubnet=10.1.0.0/24\n\trightsubnet=10.2.0.0/24\n\ttype=passthrough\n", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := loadText(t, a+tc.b)
			var got []string
			for _, d := range cfg.Diags {
				if strings.Contains(d.Msg, "same endpoints") {
					got = append(got, d.String())
				}
			}
			if !tc.warn {
				if len(got) != 0 {
					t.Fatalf("unexpected warning: %v", got)
				}
				return
			}
			if len(got) != 1 || !strings.HasPrefix(got[0], "t.conf:8: warning: conn b ") || !strings.Contains(got[0], "as conn a (t.conf:1)") {
				t.Fatalf("want one warning at conn b naming conn a, got %v (all: %v)", got, cfg.Diags)
			}
		})
	}
}
