package conf

import (
	"errors"
	"net/netip"
	"strings"
	"testing"
)

// TestUnresolvableHostSkipsConn: a host name that does not resolve skips
// its conn, reported once at the keyword's line with the real cause, and
// the other conns load (Libreswan's addconn loads the others too; gosec
// retries the name at gosec reload). The resolver is injected: no network.
func TestUnresolvableHostSkipsConn(t *testing.T) {
	cases := []struct {
		name, keyword string
		line          int
	}{
		{"right", "right=vpn.example.org", 4},
		{"left", "left=vpn.example.org", 4},
		{"nexthop (ttoaddr in Libreswan's confread.c looks names up)", "leftnexthop=vpn.example.org", 4},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ends := "\tleft=192.0.2.1\n\tright=192.0.2.2\n"
			key := strings.SplitN(tc.keyword, "=", 2)[0]
			var kept []string
			for _, l := range strings.Split(strings.TrimSuffix(ends, "\n"), "\n") {
				if !strings.HasPrefix(l, "\t"+key+"=") {
					kept = append(kept, l)
				}
			}
			text := "conn %default\n\tauthby=secret\nconn bad\n\t" + tc.keyword + "\n" + strings.Join(kept, "\n") +
				"\n\tauto=add\nconn twin\n\t" + tc.keyword + "\n" + strings.Join(kept, "\n") +
				"\n\tauto=add\nconn good\n\tleft=192.0.2.1\n\tright=192.0.2.3\n\tauto=add\n"
			lookups := 0
			opts := Options{NoInclude: true, LookupHost: func(name string) ([]netip.Addr, error) {
				lookups++
				return nil, errors.New("no such host")
			}}
			cfg, err := Parse("t.conf", []byte(text), opts)
			if err != nil {
				t.Fatalf("the file is rejected: %v", err)
			}
			if cfg.Conn("good") == nil || len(cfg.Conns) != 1 {
				t.Fatalf("conns loaded: %d, good present: %v", len(cfg.Conns), cfg.Conn("good") != nil)
			}
			if len(cfg.Skipped) != 2 {
				t.Fatalf("skipped %d conns, want 2 (bad, twin): %+v", len(cfg.Skipped), cfg.Skipped)
			}
			if f, l := cfg.Skipped[0].Where(); f != "t.conf" || l != tc.line {
				t.Errorf("reported at %s:%d, want t.conf:%d", f, l, tc.line)
			}
			if lookups != 1 {
				t.Errorf("the name was looked up %d times in one load, want 1", lookups)
			}
			var reports []string
			for _, d := range cfg.Diags {
				reports = append(reports, d.String())
			}
			want := `t.conf:4: conn bad skipped: ` + tc.keyword + `: cannot resolve "vpn.example.org": no such host; tried again at gosec reload`
			if len(reports) != 2 || reports[0] != want {
				t.Errorf("diagnostics:\n%s\nwant first:\n%s", strings.Join(reports, "\n"), want)
			}
			for _, r := range reports {
				if strings.Contains(r, "not supported") {
					t.Errorf("wording of a missing feature for a name that does not resolve: %s", r)
				}
			}
			sum, code := cfg.Summary("t.conf", 0)
			if code != 3 || !strings.Contains(sum, "1 conns loaded, 2 skipped: host names that do not resolve (bad, twin)") {
				t.Errorf("summary %q, exit %d; want exit 3 naming the cause", sum, code)
			}
		})
	}
}

// TestHostValueErrors: values that cannot be a host name stay errors (a
// typo is not a name to look up).
func TestHostValueErrors(t *testing.T) {
	for _, tc := range []struct{ value, want string }{
		{"192.0.2.256", `bad IPv4 address "192.0.2.256"`},
		{"10.1.0.0/16", `bad address "10.1.0.0/16"`},
	} {
		text := "conn c\n\tleft=" + tc.value + "\n\tright=192.0.2.2\n\tauthby=secret\n\tauto=add\n"
		opts := Options{NoInclude: true, LookupHost: func(name string) ([]netip.Addr, error) {
			t.Errorf("%q looked up", name)
			return nil, errors.New("no")
		}}
		cfg, err := Parse("t.conf", []byte(text), opts)
		if err == nil || !strings.Contains(cfg.Diags.Errors()[0].String(), tc.want) {
			t.Errorf("left=%s: err %v, want %q", tc.value, err, tc.want)
		}
	}
}
