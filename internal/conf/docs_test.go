package conf

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKeywordDocsComplete: every implemented keyword is documented exactly
// once, and nothing documented is unknown to the parser.
func TestKeywordDocsComplete(t *testing.T) {
	seen := map[string]int{}
	for _, d := range connDocs {
		for _, n := range d.Names {
			seen[n]++
			if _, ok := connKeywords[n]; ok {
				continue
			}
			if _, ok := endName(n); ok {
				continue
			}
			t.Errorf("documented conn keyword %q is not implemented", n)
		}
	}
	for k := range connKeywords {
		if seen[k] != 1 {
			t.Errorf("conn keyword %q documented %d times", k, seen[k])
		}
	}
	for kw := range endKeywords {
		if seen["left"+kw] != 1 {
			t.Errorf("end keyword left%s documented %d times", kw, seen["left"+kw])
		}
	}
	setup := map[string]int{}
	for _, d := range setupDocs {
		for _, n := range d.Names {
			setup[n]++
			if _, ok := setupSupported[n]; !ok {
				t.Errorf("documented config setup keyword %q is not implemented", n)
			}
		}
	}
	for k := range setupSupported {
		if setup[k] != 1 {
			t.Errorf("config setup keyword %q documented %d times", k, setup[k])
		}
	}
}

// TestManPageCurrent: dist/gosec.conf.5 is what WriteManPage writes now
// (run go generate ./internal/conf, or make man, after changing a table).
func TestManPageCurrent(t *testing.T) {
	var buf bytes.Buffer
	WriteManPage(&buf)
	path := filepath.Join("..", "..", "dist", "gosec.conf.5")
	if *update {
		if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	have, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(have, buf.Bytes()) {
		t.Fatalf("dist/gosec.conf.5 is stale: run make man (go generate ./internal/conf)")
	}
	for _, want := range []string{"charondebug", "plutodebug", "leftupdown, rightupdown", "ACCEPTED AND IGNORED", "mobike"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("the manual page lacks %q", want)
		}
	}
}
