package control

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func startServer(t *testing.T, h Handler) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "run", "gosec.ctl")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		(&Server{Handler: h}).Serve(ctx, l)
		close(done)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return path
}

func TestCallProgressAndResult(t *testing.T) {
	path := startServer(t, HandlerFunc(func(ctx context.Context, req Request, progress func(string)) (any, error) {
		switch req.Cmd {
		case "up":
			progress("step 1 " + req.Args[0])
			progress("step 2")
			return map[string]string{"conn": req.Args[0]}, nil
		case "fail":
			return nil, errors.New("no such conn \"x\"")
		}
		return nil, errors.New("unknown command")
	}))
	var lines []string
	res, err := Call(context.Background(), path, Request{Cmd: "up", Args: []string{"net"}}, func(s string) { lines = append(lines, s) })
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(lines, "|") != "step 1 net|step 2" {
		t.Fatalf("progress %q", lines)
	}
	var m map[string]string
	if err := json.Unmarshal(res, &m); err != nil || m["conn"] != "net" {
		t.Fatalf("result %s, %v", res, err)
	}
	if _, err := Call(context.Background(), path, Request{Cmd: "fail"}, nil); err == nil || err.Error() != "no such conn \"x\"" {
		t.Fatalf("error %v", err)
	}
}

func TestSocketModes(t *testing.T) {
	path := startServer(t, HandlerFunc(func(context.Context, Request, func(string)) (any, error) { return nil, nil }))
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	di, err := os.Stat(filepath.Dir(path))
	if err != nil {
		t.Fatal(err)
	}
	if di.Mode().Perm() != 0o700 {
		t.Fatalf("directory mode %v, want 0700", di.Mode().Perm())
	}
	// A second daemon on the same socket is refused.
	if _, err := Listen(path); err == nil || !strings.Contains(err.Error(), "already listening") {
		t.Fatalf("second Listen: %v", err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "gosec.ctl")
	l, err := Listen(path)
	if err != nil {
		t.Fatal(err)
	}
	// Simulate a crash: the file stays, nobody listens.
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(path); err != nil {
		t.Fatalf("stale socket should still exist: %v", err)
	}
	l2, err := Listen(path)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l2.Close()
}

func TestNoDaemon(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_, err := Call(ctx, filepath.Join(t.TempDir(), "none.ctl"), Request{Cmd: "status"}, nil)
	if !errors.Is(err, ErrNoDaemon) {
		t.Fatalf("err = %v, want ErrNoDaemon", err)
	}
}

func TestBadRequest(t *testing.T) {
	path := startServer(t, HandlerFunc(func(context.Context, Request, func(string)) (any, error) { return "ok", nil }))
	c, err := dialUnix(path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("{not json\n"))
	buf := make([]byte, 4096)
	n, _ := c.Read(buf)
	if !strings.Contains(string(buf[:n]), "bad request") {
		t.Fatalf("reply %q", buf[:n])
	}
}
