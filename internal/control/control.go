// Package control is the daemon's control socket: a Unix stream socket that
// only root (more exactly: the daemon's own user) may use, carrying one JSON
// request per connection and a stream of JSON replies: progress lines, then
// one final result.
package control

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where the daemon listens unless told otherwise.
const DefaultSocket = "/run/gosec/gosec.ctl"

// maxRequest bounds the size of one request.
const maxRequest = 64 << 10

// Request is one command to the daemon.
type Request struct {
	Cmd  string   `json:"cmd"`            // "up", "down", "status", "statusall", "reload", "stop", "ping"
	Args []string `json:"args,omitempty"` // e.g. the conn name
}

// Reply is one message from the daemon: either a progress line or, last,
// the result.
type Reply struct {
	Progress string          `json:"progress,omitempty"`
	Done     bool            `json:"done,omitempty"`
	Error    string          `json:"error,omitempty"`
	Result   json.RawMessage `json:"result,omitempty"`
}

// Handler carries out requests. progress may be called any number of times
// before Handle returns; the returned value is marshalled as the result.
type Handler interface {
	Handle(ctx context.Context, req Request, progress func(string)) (any, error)
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, req Request, progress func(string)) (any, error)

// Handle calls f.
func (f HandlerFunc) Handle(ctx context.Context, req Request, progress func(string)) (any, error) {
	return f(ctx, req, progress)
}

// Listen creates the control socket at path: its directory is created with
// mode 0700, a stale socket file left by a dead daemon is removed, a live
// one is an error, and the socket itself gets mode 0600.
func Listen(path string) (*net.UnixListener, error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("control: create %s: %w", dir, err)
	}
	if _, err := os.Lstat(path); err == nil {
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("control: a daemon is already listening on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("control: remove stale socket %s: %w", path, err)
		}
	}
	// Create the socket with no access for group and other from the start.
	old := syscall.Umask(0o177)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("control: listen on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("control: chmod %s: %w", path, err)
	}
	return l, nil
}

// Server serves a Handler on a listener.
type Server struct {
	Handler Handler
	Log     *slog.Logger

	wg sync.WaitGroup
}

// Serve accepts connections until l is closed or ctx ends. Each connection
// is checked with SO_PEERCRED: only the daemon's own user (root) is served.
func (s *Server) Serve(ctx context.Context, l *net.UnixListener) error {
	log := s.Log
	if log == nil {
		log = slog.Default()
	}
	go func() {
		<-ctx.Done()
		l.Close()
	}()
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				s.wg.Wait()
				return nil
			}
			return fmt.Errorf("control: accept: %w", err)
		}
		if err := checkPeer(c); err != nil {
			log.Warn("control: refused a client", "err", err)
			writeReply(c, Reply{Done: true, Error: err.Error()})
			c.Close()
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer c.Close()
			s.serveConn(ctx, c)
		}()
	}
}

func checkPeer(c *net.UnixConn) error {
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return fmt.Errorf("control: peer credentials: %w", cerr)
	}
	if uid := uint32(os.Geteuid()); cred.Uid != uid && cred.Uid != 0 {
		return fmt.Errorf("control: uid %d may not use the control socket", cred.Uid)
	}
	return nil
}

func (s *Server) serveConn(ctx context.Context, c *net.UnixConn) {
	var req Request
	dec := json.NewDecoder(io.LimitReader(c, maxRequest))
	if err := dec.Decode(&req); err != nil {
		writeReply(c, Reply{Done: true, Error: fmt.Sprintf("control: bad request: %v", err)})
		return
	}
	var mu sync.Mutex
	progress := func(line string) {
		mu.Lock()
		defer mu.Unlock()
		writeReply(c, Reply{Progress: line})
	}
	res, err := s.Handler.Handle(ctx, req, progress)
	mu.Lock()
	defer mu.Unlock()
	if err != nil {
		writeReply(c, Reply{Done: true, Error: err.Error()})
		return
	}
	raw, merr := json.Marshal(res)
	if merr != nil {
		writeReply(c, Reply{Done: true, Error: fmt.Sprintf("control: encode result: %v", merr)})
		return
	}
	writeReply(c, Reply{Done: true, Result: raw})
}

func writeReply(w io.Writer, r Reply) {
	b, _ := json.Marshal(r)
	b = append(b, '\n')
	w.Write(b)
}

// ErrNoDaemon means nothing listens on the control socket.
var ErrNoDaemon = errors.New("no gosec daemon is running (control socket not found)")

// Call sends req to the daemon at path, passes progress lines to progress
// (which may be nil) and returns the raw result. An error reported by the
// daemon is returned as an error.
func Call(ctx context.Context, path string, req Request, progress func(string)) (json.RawMessage, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) {
			return nil, fmt.Errorf("%w: %s", ErrNoDaemon, path)
		}
		return nil, fmt.Errorf("control: connect to %s: %w", path, err)
	}
	defer c.Close()
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	go func() {
		<-ctx.Done()
		c.SetDeadline(time.Now())
	}()
	b, _ := json.Marshal(req)
	if _, err := c.Write(append(b, '\n')); err != nil {
		return nil, fmt.Errorf("control: send: %w", err)
	}
	sc := bufio.NewScanner(c)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		var r Reply
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return nil, fmt.Errorf("control: bad reply: %w", err)
		}
		if !r.Done {
			if progress != nil {
				progress(r.Progress)
			}
			continue
		}
		if r.Error != "" {
			return nil, errors.New(r.Error)
		}
		return r.Result, nil
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("control: read: %w", err)
	}
	return nil, errors.New("control: the daemon closed the connection without a result")
}
