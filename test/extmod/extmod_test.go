// Package extmod checks that gosec's public data-plane packages (esp,
// ah, sad, spd) are usable from another Go module: every type their API
// needs has a public name (README: "Public Go API").
package extmod

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const program = `package main

import (
	"errors"
	"fmt"

	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

func main() {
	s, err := esp.NewSuite(esp.Config{Cipher: esp.CipherAESCBC, EncKey: make([]byte, 16), Integ: esp.IntegSHA1_96, AuthKey: make([]byte, 20)})
	if s == nil || err != nil {
		panic(err)
	}
	if _, err := ah.NewSuite(ah.Config{Integ: ah.IntegSHA256128, Key: make([]byte, 32)}); err != nil {
		panic(err)
	}
	if sad.New(sad.RealClock{}, nil) == nil {
		panic("sad.New")
	}
	var e *esp.Error
	_ = esp.Outer{TTL: 64}
	fmt.Println(errors.As(fmt.Errorf("x: %w", esp.ErrICV), &e), esp.ReasonOf(esp.ErrICV), spd.ReasonOf(spd.ErrTuple))
}
`

func TestUsableFromAnotherModule(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mod := "module example.com/extuser\n\ngo 1.26.0\n\nrequire github.com/gosec-ipsec/gosec v0.0.0\n\nreplace github.com/gosec-ipsec/gosec => " + root + "\n"
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"go.mod": mod, "go.sum": string(sum), "main.go": program} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "run", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("another module cannot use the public packages: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "true icv malformed" {
		t.Fatalf("output %q", got)
	}
}
