package kernelpeer

import (
	"bufio"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"testing"
)

// fakeGuest answers the control protocol as guest-init.sh's ctl_loop does:
// it checks the length, "runs" the command with run, and damages the
// first `damage` requests (as a lost read on the serial line would).
func fakeGuest(t *testing.T, damage int, run func(cmd string) (string, int)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ctl.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		r := bufio.NewReader(c)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			line = strings.TrimSuffix(line, "\n")
			if damage > 0 {
				damage--
				line = line[:len(line)-1] // a byte lost
			}
			if !strings.HasPrefix(line, "@@") {
				fmt.Fprintln(c, "__KP_BAD_LINE")
				continue
			}
			f := strings.SplitN(line[2:], "@@", 3)
			if len(f) != 3 {
				fmt.Fprintln(c, "__KP_BAD_LINE")
				continue
			}
			nonce, n, cmd := f[0], f[1], f[2]
			if fmt.Sprint(len(cmd)) != n {
				fmt.Fprintf(c, "__KP_FRAMING_ERROR got %d want %s\n__KP_RC=254@@%s\n", len(cmd), n, nonce)
				continue
			}
			out, rc := run(cmd)
			fmt.Fprintf(c, "%s__KP_RC=%d@@%s\n", out, rc, nonce)
		}
	}()
	return path
}

func TestCtlRun(t *testing.T) {
	tests := []struct {
		name   string
		damage int
		cmd    string
		out    string
		rc     int
		want   string
	}{
		{"output", 0, "uname -r", "6.1.0-56-amd64\n", 0, "6.1.0-56-amd64"},
		{"status", 0, "false", "", 1, ""},
		{"no final newline", 0, "printf x", "x", 0, "x"},
		{"multi-line", 0, "ip xfrm state", "a\nb\n", 0, "a\nb"},
		{"stray marker in output", 0, "echo", "__KP_RC=0@@old.1\nok\n", 0, "ok"},
		{"framing error resent", 2, "cat /proc/net/xfrm_stat", "XfrmInError 0\n", 0, "XfrmInError 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var runs int
			path := fakeGuest(t, tc.damage, func(cmd string) (string, int) {
				runs++
				if cmd != tc.cmd {
					return "wrong command " + cmd + "\n", 127
				}
				return tc.out, tc.rc
			})
			c, err := DialCtl(path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			rc, out, err := c.Run(tc.cmd)
			if err != nil {
				t.Fatal(err)
			}
			if rc != tc.rc || out != tc.want || runs != 1 {
				t.Fatalf("Run = %d %q (ran %d times), want %d %q (once)", rc, out, runs, tc.rc, tc.want)
			}
		})
	}
}

func TestCtlTooDamaged(t *testing.T) {
	path := fakeGuest(t, 10, func(string) (string, int) { return "", 0 })
	c, err := DialCtl(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rc, _, err := c.Run("true")
	if err != nil {
		t.Fatal(err)
	}
	if rc != framingRC {
		t.Fatalf("rc %d after four damaged requests, want %d", rc, framingRC)
	}
	if _, err := c.Check("true"); err == nil {
		t.Fatal("Check succeeded on a damaged channel")
	}
}

func TestFrameRequest(t *testing.T) {
	b, err := FrameRequest("n.1", "ip -s xfrm state")
	if err != nil || string(b) != "@@n.1@@16@@ip -s xfrm state\n" {
		t.Fatalf("FrameRequest = %q, %v", b, err)
	}
	for _, bad := range [][2]string{{"n", "a\nb"}, {"n", "a\r"}, {"", "x"}, {"a@@b", "x"}} {
		if _, err := FrameRequest(bad[0], bad[1]); err == nil {
			t.Errorf("FrameRequest(%q, %q) = nil error", bad[0], bad[1])
		}
	}
}

func FuzzParseStatusLine(f *testing.F) {
	f.Add("__KP_RC=0@@abc.1", "abc.1")
	f.Add("x__KP_RC=254@@abc.2", "abc.2")
	f.Add("__KP_RC=@@n", "n")
	f.Fuzz(func(t *testing.T, line, nonce string) {
		head, rc, ok := ParseStatusLine(line, nonce)
		if !ok {
			return
		}
		if rc < 0 || rc > 255 || !strings.HasPrefix(line, head) || !strings.HasSuffix(line, "@@"+nonce) {
			t.Fatalf("ParseStatusLine(%q, %q) = %q, %d", line, nonce, head, rc)
		}
	})
}
