package cli

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestStartWait: gosec start reports a daemon that answers, one that
// exits during start-up with what it wrote, and stops one that does not
// answer in time, with SIGKILL when it ignores SIGTERM, so that a failed
// start leaves no process behind. The daemon is played by sh.
func TestStartWait(t *testing.T) {
	if _, err := exec.LookPath("sh"); err != nil {
		t.Skip("no sh")
	}
	cases := []struct {
		name     string
		script   string
		readyAt  int32 // answers from this poll on (0: never)
		want     int
		out, err []string
		signal   syscall.Signal // how the process must have ended (0: not checked)
	}{
		{"answers", "exec sleep 30", 3, 0, []string{"gosec started (pid "}, nil, 0},
		{"exits during start-up", "echo 'gosec: config: line 3: bad' >&2; exit 1", 0, 1, nil,
			[]string{"the daemon exited during start-up", "line 3: bad"}, 0},
		{"does not answer, stops on SIGTERM", "exec sleep 30", 0, 1, nil,
			[]string{"did not answer on ", "within 300ms: stopping it", "the daemon stopped"}, syscall.SIGTERM},
		{"does not answer, ignores SIGTERM", "trap '' TERM; exec sleep 30", 0, 1, nil,
			[]string{"stopping it", "did not stop within 200ms of SIGTERM and was killed"}, syscall.SIGKILL},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			startErr := filepath.Join(dir, "start-err")
			f, err := os.Create(startErr)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			cmd := exec.Command("sh", "-c", c.script)
			cmd.Stderr = f
			var polls atomic.Int32
			w := startWait{socket: filepath.Join(dir, "ctl"), logFile: filepath.Join(dir, "log"), timeout: 300 * time.Millisecond, grace: 200 * time.Millisecond,
				ready: func() bool { return c.readyAt > 0 && polls.Add(1) >= c.readyAt }}
			var stdout, stderr bytes.Buffer
			rc := w.run(Env{Stdout: &stdout, Stderr: &stderr}, cmd, startErr)
			if m := regexp.MustCompile(`pid (\d+)`).FindStringSubmatch(stdout.String()); m != nil {
				pid, _ := strconv.Atoi(m[1])
				t.Cleanup(func() { syscall.Kill(pid, syscall.SIGKILL) }) // released by run
			}
			if rc != c.want {
				t.Fatalf("rc %d, want %d; stdout %q, stderr %q", rc, c.want, stdout.String(), stderr.String())
			}
			for _, s := range c.out {
				if !strings.Contains(stdout.String(), s) {
					t.Errorf("stdout %q lacks %q", stdout.String(), s)
				}
			}
			for _, s := range c.err {
				if !strings.Contains(stderr.String(), s) {
					t.Errorf("stderr %q lacks %q", stderr.String(), s)
				}
			}
			if c.signal != 0 {
				ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus)
				if !ok || !ws.Signaled() || ws.Signal() != c.signal {
					t.Errorf("the daemon ended as %v, want killed by %v", cmd.ProcessState, c.signal)
				}
			}
			if c.want != 0 && syscall.Kill(cmd.Process.Pid, 0) == nil {
				t.Errorf("a failed start left process %d running", cmd.Process.Pid)
			}
		})
	}
}
