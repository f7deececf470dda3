package conf

import (
	"bytes"
	"errors"
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files of testdata/conf")

// corpusDir is the project's ipsec.conf corpus.
func corpusDir(t testing.TB) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "testdata", "conf"))
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// testOptions resolves names from a fixed table and puts the default
// route on 192.0.2.100, so that the goldens do not depend on the host.
func testOptions() Options {
	hosts := map[string]string{
		"localhost":       "127.0.0.1",
		"vpn.example.net": "198.51.100.7",
	}
	return Options{
		LookupHost: func(name string) ([]netip.Addr, error) {
			if a, ok := hosts[name]; ok {
				return []netip.Addr{netip.MustParseAddr(a)}, nil
			}
			return nil, errors.New("no such host (test resolver)")
		},
		DefaultRoute: func() (netip.Addr, error) { return netip.MustParseAddr("192.0.2.100"), nil },
		// A checkout gives the corpus mode 0644; TestManualKeyFiles checks
		// the refusal.
		OpenKeyFiles: true,
	}
}

// renderDump is what `gosec conf check --dump` prints on stdout for a
// config without secrets: every resolved conn, each followed by an empty
// line.
func renderDump(cfg *Config) string {
	var b bytes.Buffer
	for _, c := range cfg.Conns {
		c.Dump(&b)
		b.WriteString("\n")
	}
	return b.String()
}

// renderDiags is what `gosec conf check` prints on stderr before its
// verdict: one "file:line: message" per problem.
func renderDiags(ds Diags) string {
	var b strings.Builder
	for _, d := range ds {
		b.WriteString(d.String())
		b.WriteString("\n")
	}
	return b.String()
}

// corpusFiles lists the corpus (top-level *.conf; inc/ holds included
// files and interop/ the peers' configs).
func corpusFiles(t testing.TB) []string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(corpusDir(t), "*.conf"))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, f := range files {
		names = append(names, filepath.Base(f))
	}
	return names
}

func checkGolden(t *testing.T, path, got string) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test ./internal/conf -run TestGolden -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("%s differs\n--- got\n%s--- want\n%s", filepath.Base(path), got, want)
	}
}

// TestGolden loads every corpus file and compares the resolved conns and
// the diagnostics with NAME.dump and NAME.err. Paths in the goldens are
// relative to testdata/conf.
func TestGolden(t *testing.T) {
	dir := corpusDir(t)
	files := corpusFiles(t)
	if len(files) < 30 {
		t.Fatalf("corpus has %d files, want at least 30", len(files))
	}
	t.Chdir(dir)
	for _, name := range files {
		t.Run(name, func(t *testing.T) {
			cfg, err := Load(name, testOptions())
			if cfg == nil {
				t.Fatalf("Load returned no config (err %v)", err)
			}
			if hasErr := len(cfg.Diags.Errors()) > 0; hasErr != (err != nil) {
				t.Errorf("Load error %v, but %d error diagnostics", err, len(cfg.Diags.Errors()))
			}
			var de *DiagError
			if err != nil && !errors.As(err, &de) {
				t.Errorf("Load error is %T, want *DiagError", err)
			}
			base := strings.TrimSuffix(name, ".conf")
			checkGolden(t, base+".dump", renderDump(cfg))
			checkGolden(t, base+".err", renderDiags(cfg.Diags))
			// Loading is deterministic: the same text twice.
			cfg2, _ := Load(name, testOptions())
			if renderDump(cfg2) != renderDump(cfg) || renderDiags(cfg2.Diags) != renderDiags(cfg.Diags) {
				t.Errorf("a second load differs from the first")
			}
		})
	}
}
