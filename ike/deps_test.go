package ike

import (
	"os/exec"
	"strings"
	"testing"
)

// TestNoDataPlaneImports: the key manager speaks its own types and is
// mapped to gosec's configuration and data plane by the daemon, so
// neither ike nor its tests may depend on those packages (directly or
// through another package).
func TestNoDataPlaneImports(t *testing.T) {
	const mod = "github.com/gosec-ipsec/gosec/"
	forbidden := []string{"sad", "esp", "ah", "spd", "internal/conf", "internal/integ", "internal/drop",
		"internal/daemon", "internal/dataplane", "internal/netio"}
	out, err := exec.Command("go", "list", "-deps", "-test", ".").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	deps := map[string]bool{}
	for _, pkg := range strings.Fields(string(out)) {
		deps[pkg] = true
	}
	if !deps[mod+"ike/isakmp"] {
		t.Fatalf("go list -deps names no ike/isakmp; is its output what this test expects?\n%s", out)
	}
	for _, f := range forbidden {
		if deps[mod+f] {
			t.Errorf("ike depends on %s%s (go list -deps -test .)", mod, f)
		}
	}
}
