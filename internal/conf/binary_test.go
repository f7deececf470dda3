package conf

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
)

// TestConfCheckBinary builds cmd/gosec and runs `gosec conf check` on a
// good and a bad corpus file: the exit status, and stdout/stderr against
// the same goldens TestGolden checks the package against.
func TestConfCheckBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds cmd/gosec")
	}
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "gosec")
	if runtime.GOOS == "windows" {
		bin += ".exe"
	}
	build := exec.Command("go", "build", "-o", bin, "./cmd/gosec")
	build.Dir = filepath.Join("..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/gosec: %v\n%s", err, out)
	}
	// An empty secrets file with the mode gosec demands: no conn of these
	// files has a secret to find, and a missing one would be an error for
	// the PSK conns of the bad file.
	secrets := filepath.Join(tmp, "ipsec.secrets")
	if err := os.WriteFile(secrets, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(secrets, 0o600); err != nil {
		t.Fatal(err)
	}
	dir := corpusDir(t)
	golden := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	// The binary runs on copies of the corpus files with the mode an
	// administrator gives files holding manual keys: a checkout gives them
	// 0644, which gosec refuses (TestManualKeyFiles).
	work := filepath.Join(tmp, "corpus")
	if err := os.Mkdir(work, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, name := range corpusFiles(t) {
		if err := os.WriteFile(filepath.Join(work, name), []byte(golden(name)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	run := func(args ...string) (stdout, stderr string, code int) {
		cmd := exec.Command(bin, args...)
		cmd.Dir = work
		var o, e bytes.Buffer
		cmd.Stdout, cmd.Stderr = &o, &e
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
		case errors.As(err, &ee):
			code = ee.ExitCode()
		default:
			t.Fatalf("running gosec: %v", err)
		}
		return o.String(), e.String(), code
	}

	tests := []struct {
		file     string
		dump     bool
		wantCode int
		verdict  string // the last line of stderr on success
	}{
		{"11-manual-esp.conf", true, 0, "11-manual-esp.conf: 1 conns, configuration OK\n"},
		{"11-manual-esp.conf", false, 0, "11-manual-esp.conf: 1 conns, configuration OK\n"},
		{"13-manual-ah-3des.conf", true, 0, "13-manual-ah-3des.conf: 2 conns, configuration OK\n"},
		{"17-unsupported-warnings.conf", true, 3, "17-unsupported-warnings.conf: 0 conns loaded, 1 skipped: Mode Config (warned)\n"},
		{"10-rsasig-cert.conf", false, 3, "10-rsasig-cert.conf: 0 conns loaded, 2 skipped: public-key authentication (raw-rsa, certs)\n"},
		{"32-err-mixed.conf", true, 1, "32-err-mixed.conf: 8 errors; gosec start would refuse this configuration\n"},
		{"32-err-mixed.conf", false, 1, "32-err-mixed.conf: 8 errors; gosec start would refuse this configuration\n"},
		{"26-err-manual.conf", true, 1, "26-err-manual.conf: 15 errors; gosec start would refuse this configuration\n"},
	}
	for _, tt := range tests {
		name := tt.file
		if tt.dump {
			name += " --dump"
		}
		t.Run(name, func(t *testing.T) {
			args := []string{"conf", "check", "--config", tt.file, "--secrets", secrets}
			if tt.dump {
				args = append(args, "--dump")
			}
			stdout, stderr, code := run(args...)
			if code != tt.wantCode {
				t.Errorf("exit status %d, want %d\nstderr:\n%s", code, tt.wantCode, stderr)
			}
			base := strings.TrimSuffix(tt.file, ".conf")
			wantOut := ""
			if tt.dump {
				wantOut = golden(base + ".dump")
			}
			if stdout != wantOut {
				t.Errorf("stdout differs from %s.dump\n--- got\n%s--- want\n%s", base, stdout, wantOut)
			}
			if wantErr := golden(base+".err") + tt.verdict; stderr != wantErr {
				t.Errorf("stderr differs from %s.err\n--- got\n%s--- want\n%s", base, stderr, wantErr)
			}
		})
	}

	// Exit status on a missing file and on a bad secrets file.
	if _, stderr, code := run("conf", "check", "--config", "no-such.conf", "--secrets", secrets); code == 0 || !strings.Contains(stderr, "no-such.conf: cannot read") {
		t.Errorf("missing config: exit %d, stderr %q", code, stderr)
	}
	open := filepath.Join(tmp, "open.secrets")
	if err := os.WriteFile(open, []byte(": PSK \"k\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := run("conf", "check", "--config", "01-minimal-psk.conf", "--secrets", open); code == 0 || !strings.Contains(stderr, "others may read") {
		t.Errorf("world-readable secrets: exit %d, stderr %q", code, stderr)
	}
}
