// Package kernelpeer tests gosec's data plane against the Linux kernel's own
// ESP/AH (XFRM) in a QEMU guest (see kpeer.sh). This file is the client of
// the guest's control channel (its second serial port, a unix socket on the
// host): one shell command per request, answered by the command's output
// and its exit status.
package kernelpeer

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// rcMark starts the status line that ends every answer.
const rcMark = "__KP_RC="

// framingRC is the status of a request whose line arrived damaged in the
// guest (the command did not run).
const framingRC = 254

// Ctl is a connection to the guest's control channel. It is safe for
// concurrent use; requests are serialised.
type Ctl struct {
	mu      sync.Mutex
	conn    net.Conn
	r       *bufio.Reader
	tag     string
	n       int
	Timeout time.Duration // per request; 0 means 120 s
}

// DialCtl connects to the control socket at path.
func DialCtl(path string) (*Ctl, error) {
	c, err := net.Dial("unix", path)
	if err != nil {
		return nil, fmt.Errorf("kernelpeer: control channel: %w", err)
	}
	return &Ctl{conn: c, r: bufio.NewReaderSize(c, 64<<10),
		tag: fmt.Sprintf("%x%x", os.Getpid(), time.Now().UnixNano()&0xffffff)}, nil
}

// Close closes the connection.
func (c *Ctl) Close() error { return c.conn.Close() }

// FrameRequest returns the request line for cmd with the given nonce:
// @@nonce@@len(cmd)@@cmd and a newline.
func FrameRequest(nonce, cmd string) ([]byte, error) {
	if strings.ContainsAny(cmd, "\r\n") {
		return nil, errors.New("kernelpeer: command contains a line break")
	}
	if strings.Contains(nonce, "@@") || nonce == "" {
		return nil, errors.New("kernelpeer: bad nonce")
	}
	return []byte("@@" + nonce + "@@" + strconv.Itoa(len(cmd)) + "@@" + cmd + "\n"), nil
}

// ParseStatusLine reports whether line ends the answer to the request with
// this nonce; if so it returns the output that precedes the marker on the
// same line (a command whose output had no final newline) and the status.
func ParseStatusLine(line, nonce string) (head string, rc int, ok bool) {
	end := "@@" + nonce
	if !strings.HasSuffix(line, end) {
		return "", 0, false
	}
	i := strings.LastIndex(line[:len(line)-len(end)], rcMark)
	if i < 0 {
		return "", 0, false
	}
	rc, err := strconv.Atoi(line[i+len(rcMark) : len(line)-len(end)])
	if err != nil || rc < 0 || rc > 255 {
		return "", 0, false
	}
	return line[:i], rc, true
}

// Run runs cmd (one line of busybox ash) in the guest and returns its exit
// status and combined output. A request damaged on the serial line is
// resent up to three times.
func (c *Ctl) Run(cmd string) (int, string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	timeout := c.Timeout
	if timeout == 0 {
		timeout = 120 * time.Second
	}
	var (
		rc  int
		out []string
	)
	for try := 0; try < 4; try++ {
		c.n++
		nonce := fmt.Sprintf("%s.%d", c.tag, c.n)
		req, err := FrameRequest(nonce, cmd)
		if err != nil {
			return 0, "", err
		}
		if err := c.conn.SetDeadline(time.Now().Add(timeout)); err != nil {
			return 0, "", err
		}
		if _, err := c.conn.Write(req); err != nil {
			return 0, "", fmt.Errorf("kernelpeer: control channel write: %w", err)
		}
		out = out[:0]
		framing := false
		for {
			line, err := c.r.ReadString('\n')
			if err != nil {
				return 0, "", fmt.Errorf("kernelpeer: control channel read (command %q): %w", cmd, err)
			}
			line = strings.TrimRight(line, "\r\n")
			head, st, ok := ParseStatusLine(line, nonce)
			if ok {
				if head != "" {
					out = append(out, head)
				}
				rc = st
				break
			}
			// lines of earlier, abandoned requests and stray markers
			if line == "__KP_BAD_LINE" || (strings.Contains(line, rcMark) && strings.Contains(line, "@@")) {
				continue
			}
			if strings.HasPrefix(line, "__KP_FRAMING_ERROR") {
				framing = true
				continue
			}
			out = append(out, line)
		}
		if rc == framingRC && framing {
			continue
		}
		break
	}
	return rc, strings.Join(out, "\n"), nil
}

// Check runs cmd and fails unless its status is 0.
func (c *Ctl) Check(cmd string) (string, error) {
	rc, out, err := c.Run(cmd)
	if err != nil {
		return out, err
	}
	if rc != 0 {
		return out, fmt.Errorf("guest command failed (rc=%d): %s\n%s", rc, cmd, out)
	}
	return out, nil
}
