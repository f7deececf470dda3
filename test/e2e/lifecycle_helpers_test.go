package e2e

// Instruments of the SA lifecycle tests: a leak watcher on the wire, a
// timeline of events, a ping stream with loss accounting, a TCP stream
// with a checksum, and an SA monitor polling both daemons.

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash"
	"math/rand/v2"
	"os"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// syncBuffer is a bytes.Buffer safe for a writer goroutine and readers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// timeline records what the test did and what the SA monitor saw, so that
// a leaked or lost packet can be tied to the event it followed.
type timeline struct {
	mu sync.Mutex
	ev []event
}

type event struct {
	at   time.Time
	what string
}

func (tl *timeline) add(format string, args ...any) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.ev = append(tl.ev, event{at: time.Now(), what: fmt.Sprintf(format, args...)})
}

// before returns the last event at or before at ("" if none).
func (tl *timeline) before(at time.Time) string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var last *event
	for i := range tl.ev {
		if tl.ev[i].at.After(at) {
			break
		}
		last = &tl.ev[i]
	}
	if last == nil {
		return "(before the first event)"
	}
	return fmt.Sprintf("%q (%.2fs earlier)", last.what, at.Sub(last.at).Seconds())
}

func (tl *timeline) String() string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var b strings.Builder
	for _, e := range tl.ev {
		fmt.Fprintf(&b, "  %s %s\n", e.at.Format("15:04:05.000"), e.what)
	}
	return b.String()
}

// leakFilter matches, on a WAN link, every IPv4 packet from or to a
// protected subnet that is not ESP, AH or IKE (UDP 500/4500), and every
// ICMP error (unreachable, source quench, redirect, time exceeded,
// parameter problem) that quotes a packet from or to a protected subnet:
// both reveal protected traffic on the wire.
const leakFilter = `ip and (` +
	`((net 10.1.0.0/24 or net 10.2.0.0/24) and not (ip proto 50 or ip proto 51 or udp port 500 or udp port 4500))` +
	` or (icmp and (icmp[0] = 3 or icmp[0] = 4 or icmp[0] = 5 or icmp[0] = 11 or icmp[0] = 12) and (` +
	`(icmp[20:4] & 0xffffff00) = 0x0a010000 or (icmp[20:4] & 0xffffff00) = 0x0a020000 or ` +
	`(icmp[24:4] & 0xffffff00) = 0x0a010000 or (icmp[24:4] & 0xffffff00) = 0x0a020000)))`

// leakWatcher runs tcpdump on both gateways' wan0 for the whole test, one
// capture per sending direction, so each leaked packet is attributed to
// the gateway that put it on the wire.
type leakWatcher struct {
	tp      *topo
	caps    []*leakCapture
	once    sync.Once
	leaks   []leak
	stopErr []string
}

type leakCapture struct {
	gw     string
	cmd    *exec.Cmd
	out    syncBuffer
	stderr syncBuffer
}

type leak struct {
	gw   string // the gateway that sent it
	at   time.Time
	line string
}

func (tp *topo) watchLeaks() *leakWatcher {
	tp.t.Helper()
	_, err := exec.LookPath("tcpdump")
	testutil.Need(tp.t, err == nil, "tcpdump is not installed (scripts/deps.sh installs it)")
	w := &leakWatcher{tp: tp}
	for _, gw := range []string{"gw1", "gw2"} {
		c := &leakCapture{gw: gw}
		c.cmd = exec.Command("ip", "netns", "exec", tp.ns(gw), "tcpdump", "-l", "-n", "-tt", "-Q", "out", "-i", "wan0", leakFilter)
		c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.stderr
		if err := c.cmd.Start(); err != nil {
			tp.t.Fatalf("tcpdump on %s: %v", gw, err)
		}
		w.caps = append(w.caps, c)
	}
	tp.t.Cleanup(func() { w.stop() })
	for _, c := range w.caps {
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(c.stderr.String(), "listening on") {
			if time.Now().After(deadline) {
				tp.t.Fatalf("tcpdump on %s did not start: %s", c.gw, c.stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return w
}

var droppedByKernel = regexp.MustCompile(`(\d+) packets? dropped by kernel`)

// stop ends the captures (once) and returns every leaked packet.
func (w *leakWatcher) stop() []leak {
	w.once.Do(func() {
		time.Sleep(200 * time.Millisecond) // let the last packets reach tcpdump
		for _, c := range w.caps {
			c.cmd.Process.Signal(syscall.SIGINT)
			done := make(chan struct{})
			go func() { c.cmd.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(5 * time.Second):
				c.cmd.Process.Kill()
				<-done
			}
			sc := bufio.NewScanner(strings.NewReader(c.out.String()))
			for sc.Scan() {
				line := sc.Text()
				if strings.TrimSpace(line) == "" {
					continue
				}
				l := leak{gw: c.gw, line: line}
				if f, _, ok := strings.Cut(line, " "); ok {
					if ts, err := strconv.ParseFloat(f, 64); err == nil {
						l.at = time.Unix(0, int64(ts*1e9))
					}
				}
				w.leaks = append(w.leaks, l)
			}
			if m := droppedByKernel.FindStringSubmatch(c.stderr.String()); m != nil && m[1] != "0" {
				w.stopErr = append(w.stopErr, fmt.Sprintf("tcpdump on %s: %s leaked packets more were dropped by the kernel before capture", c.gw, m[1]))
			}
		}
		sort.SliceStable(w.leaks, func(i, j int) bool { return w.leaks[i].at.Before(w.leaks[j].at) })
	})
	return w.leaks
}

// check fails t if any packet leaked, listing the packets with the event
// each followed (from the timeline and from the sender's daemon log).
func (w *leakWatcher) check(t *testing.T, tl *timeline, daemons map[string]*daemon) {
	t.Helper()
	leaks := w.stop()
	if len(leaks) == 0 && len(w.stopErr) == 0 {
		t.Logf("leak watcher: no cleartext packet of 10.1.0.0/24 or 10.2.0.0/24 on the wire")
		return
	}
	tl = tl.withLogs(daemons)
	var b strings.Builder
	perGW := map[string]int{}
	perEvent := map[string]int{}
	var eventOrder []string
	for _, l := range leaks {
		perGW[l.gw]++
		ev := tl.before(l.at)
		key := l.gw + " after " + strings.SplitN(ev, " (", 2)[0]
		if perEvent[key] == 0 {
			eventOrder = append(eventOrder, key)
		}
		perEvent[key]++
	}
	fmt.Fprintf(&b, "CLEARTEXT ON THE WIRE: %d packets of protected subnets (gw1 sent %d, gw2 sent %d)\n", len(leaks), perGW["gw1"], perGW["gw2"])
	for _, e := range w.stopErr {
		fmt.Fprintf(&b, "  %s\n", e)
	}
	b.WriteString("by the event they followed:\n")
	for _, k := range eventOrder {
		fmt.Fprintf(&b, "  %4d sent by %s\n", perEvent[k], k)
	}
	b.WriteString("packets (first 30):\n")
	for i, l := range leaks {
		if i == 30 {
			fmt.Fprintf(&b, "  ... %d more\n", len(leaks)-30)
			break
		}
		fmt.Fprintf(&b, "  [%s] %s %s\n      after %s\n", l.gw, l.at.Format("15:04:05.000000"), afterTimestamp(l.line), tl.before(l.at))
		if d := daemons[l.gw]; d != nil {
			if ll := logLineBefore(d, l.at); ll != "" {
				fmt.Fprintf(&b, "      %s log: %s\n", l.gw, ll)
			}
		}
	}
	b.WriteString("timeline:\n")
	b.WriteString(tl.String())
	t.Error(b.String())
}

// withLogs returns a copy of the timeline merged with the daemons'
// INFO-level log lines (SAs established, rekeyed, expired, deleted...),
// which carry exact times where the SA monitor polls.
func (tl *timeline) withLogs(daemons map[string]*daemon) *timeline {
	tl.mu.Lock()
	out := &timeline{ev: append([]event(nil), tl.ev...)}
	tl.mu.Unlock()
	for gw, d := range daemons {
		if d == nil {
			continue
		}
		for _, line := range strings.Split(d.log(), "\n") {
			m := logTime.FindStringSubmatch(line)
			if m == nil || !strings.Contains(line, "level=INFO") {
				continue
			}
			ts, err := time.Parse(time.RFC3339Nano, m[1])
			if err != nil {
				continue
			}
			what := strings.TrimSpace(strings.Replace(line[len(m[0]):], "level=INFO ", "", 1))
			what = strings.Replace(what, " room=ike", "", 1)
			if len(what) > 160 {
				what = what[:160] + "..."
			}
			out.ev = append(out.ev, event{at: ts, what: gw + " log: " + what})
		}
	}
	sort.SliceStable(out.ev, func(i, j int) bool { return out.ev[i].at.Before(out.ev[j].at) })
	return out
}

func afterTimestamp(line string) string {
	_, rest, _ := strings.Cut(line, " ")
	return rest
}

var logTime = regexp.MustCompile(`^time=(\S+)`)

// logLineBefore returns the daemon's last log line (INFO or above) at or
// before at.
func logLineBefore(d *daemon, at time.Time) string {
	var last string
	for _, line := range strings.Split(d.log(), "\n") {
		m := logTime.FindStringSubmatch(line)
		if m == nil || strings.Contains(line, "level=DEBUG") {
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil {
			continue
		}
		if ts.After(at) {
			break
		}
		last = line
	}
	if len(last) > 300 {
		last = last[:300] + "..."
	}
	return last
}

// pingStream pings every 0.2 s until stopped.
type pingStream struct {
	ns, dst string
	cmd     *exec.Cmd
	out     syncBuffer
	start   time.Time
}

const pingInterval = 200 * time.Millisecond

func (tp *topo) startPing(ns, dst string) *pingStream {
	tp.t.Helper()
	p := &pingStream{ns: ns, dst: dst}
	// -D timestamps every line, -O reports every request still unanswered
	// when the next goes out.
	p.cmd = exec.Command("ip", "netns", "exec", ns, "ping", "-D", "-O", "-n", "-i", "0.2", dst)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		tp.t.Fatal(err)
	}
	tp.t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	return p
}

// pingResult is what a stopped ping stream saw.
type pingResult struct {
	start    time.Time
	sent     int
	replied  map[int]time.Time // seq -> time of the reply
	lost     []int             // requests never answered (the last second excluded)
	firstRep int               // first answered seq, 0 if none
	output   string
}

var (
	pingReply = regexp.MustCompile(`^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)`)
	pingSent  = regexp.MustCompile(`(\d+) packets transmitted`)
)

// stop interrupts ping and accounts for every request. The requests of the
// last second are not judged: their answers may still be on the way.
func (p *pingStream) stop() pingResult {
	p.cmd.Process.Signal(syscall.SIGINT)
	p.cmd.Wait()
	r := pingResult{start: p.start, replied: map[int]time.Time{}, output: p.out.String()}
	for _, line := range strings.Split(r.output, "\n") {
		if m := pingReply.FindStringSubmatch(line); m != nil {
			seq, _ := strconv.Atoi(m[2])
			ts, _ := strconv.ParseFloat(m[1], 64)
			if _, dup := r.replied[seq]; !dup {
				r.replied[seq] = time.Unix(0, int64(ts*1e9))
			}
			if r.firstRep == 0 || seq < r.firstRep {
				r.firstRep = seq
			}
		}
	}
	if m := pingSent.FindStringSubmatch(r.output); m != nil {
		r.sent, _ = strconv.Atoi(m[1])
	}
	for seq := 1; seq <= r.sent-5; seq++ {
		if _, ok := r.replied[seq]; !ok {
			r.lost = append(r.lost, seq)
		}
	}
	return r
}

// sentAt estimates when request seq went out.
func (r pingResult) sentAt(seq int) time.Time {
	return r.start.Add(time.Duration(seq-1) * pingInterval)
}

// lostBetween returns the lost requests sent in [from, to) (zero times are
// open ends).
func (r pingResult) lostBetween(from, to time.Time) []int {
	var out []int
	for _, seq := range r.lost {
		at := r.sentAt(seq)
		if (!from.IsZero() && at.Before(from)) || (!to.IsZero() && !at.Before(to)) {
			continue
		}
		out = append(out, seq)
	}
	return out
}

// repliedBetween counts the answered requests sent in [from, to).
func (r pingResult) repliedBetween(from, to time.Time) int {
	n := 0
	for seq := range r.replied {
		at := r.sentAt(seq)
		if (!from.IsZero() && at.Before(from)) || (!to.IsZero() && !at.Before(to)) {
			continue
		}
		n++
	}
	return n
}

// describeLoss renders lost requests as runs, each with the event it
// followed.
func (r pingResult) describeLoss(seqs []int, tl *timeline) string {
	if len(seqs) == 0 {
		return "none"
	}
	var b strings.Builder
	for i := 0; i < len(seqs); {
		j := i
		for j+1 < len(seqs) && seqs[j+1] == seqs[j]+1 {
			j++
		}
		at := r.sentAt(seqs[i])
		fmt.Fprintf(&b, "\n  icmp_seq %d-%d (%d requests, %.1fs from %s) after %s",
			seqs[i], seqs[j], j-i+1, float64(j-i+1)*pingInterval.Seconds(), at.Format("15:04:05.0"), tl.before(at))
		i = j + 1
	}
	return b.String()
}

// tcpStream sends pseudo-random bytes at a bounded rate over one TCP
// connection (socat in both LAN namespaces) until stopped, hashing what it
// sent and what arrived.
type tcpStream struct {
	tp       *topo
	sender   *exec.Cmd
	listener *exec.Cmd
	stopCh   chan struct{}
	wrDone   chan error
	sent     hash.Hash
	sentN    int64
	recv     *countingHash
	serr     syncBuffer
	lerr     syncBuffer
}

type countingHash struct {
	mu sync.Mutex
	h  hash.Hash
	n  int64
}

func (c *countingHash) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n += int64(len(p))
	return c.h.Write(p)
}

// startTCP streams at rate bytes per second from srcNS to dst (a listener
// in dstNS).
func (tp *topo) startTCP(srcNS, dstNS, dst string, rate int) *tcpStream {
	tp.t.Helper()
	s := &tcpStream{tp: tp, stopCh: make(chan struct{}), wrDone: make(chan error, 1),
		sent: sha256.New(), recv: &countingHash{h: sha256.New()}}
	port := fmt.Sprint(20000 + rand.IntN(20000))
	s.listener = exec.Command("ip", "netns", "exec", dstNS, "socat", "-u", "TCP-LISTEN:"+port+",reuseaddr", "STDOUT")
	s.listener.Stdout, s.listener.Stderr = s.recv, &s.lerr
	if err := s.listener.Start(); err != nil {
		tp.t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		o, _ := tp.run(dstNS, 5*time.Second, "ss", "-ltn", "sport", "= :"+port)
		if strings.Contains(o, ":"+port) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.sender = exec.Command("ip", "netns", "exec", srcNS, "socat", "-u", "STDIN", "TCP:"+dst+":"+port+",connect-timeout=10")
	s.sender.Stderr = &s.serr
	stdin, err := s.sender.StdinPipe()
	if err != nil {
		tp.t.Fatal(err)
	}
	if err := s.sender.Start(); err != nil {
		tp.t.Fatal(err)
	}
	tp.t.Cleanup(func() {
		s.sender.Process.Kill()
		s.listener.Process.Kill()
	})
	go func() {
		const tick = 20 * time.Millisecond
		chunk := make([]byte, rate/int(time.Second/tick))
		r := rand.NewChaCha8([32]byte{42})
		t := time.NewTicker(tick)
		defer t.Stop()
		for {
			select {
			case <-s.stopCh:
				s.wrDone <- stdin.Close()
				return
			case <-t.C:
				r.Read(chunk)
				if _, err := stdin.Write(chunk); err != nil {
					stdin.Close()
					s.wrDone <- fmt.Errorf("writing to socat: %w", err)
					return
				}
				s.sent.Write(chunk)
				s.sentN += int64(len(chunk))
			}
		}
	}()
	return s
}

// stop ends the stream and checks that every byte arrived intact.
func (s *tcpStream) stop() error {
	close(s.stopCh)
	var werr error
	select {
	case werr = <-s.wrDone:
	case <-time.After(60 * time.Second):
		werr = fmt.Errorf("the sender was stuck for 60 s (TCP stalled)")
	}
	wait := func(c *exec.Cmd, what string) error {
		done := make(chan error, 1)
		go func() { done <- c.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				return fmt.Errorf("%s: %v", what, err)
			}
			return nil
		case <-time.After(60 * time.Second):
			c.Process.Kill()
			<-done
			return fmt.Errorf("%s did not finish within 60 s", what)
		}
	}
	serr := wait(s.sender, "socat sender")
	lerr := wait(s.listener, "socat listener")
	s.recv.mu.Lock()
	gotN, got := s.recv.n, s.recv.h.Sum(nil)
	s.recv.mu.Unlock()
	want := s.sent.Sum(nil)
	var errs []string
	for _, e := range []error{werr, serr, lerr} {
		if e != nil {
			errs = append(errs, e.Error())
		}
	}
	if gotN != s.sentN || !bytes.Equal(got, want) {
		errs = append(errs, fmt.Sprintf("received %d bytes with SHA-256 %s, sent %d bytes with SHA-256 %s",
			gotN, hex.EncodeToString(got[:8]), s.sentN, hex.EncodeToString(want[:8])))
	}
	if len(errs) > 0 {
		return fmt.Errorf("TCP stream: %s\nsender: %s\nlistener: %s", strings.Join(errs, "; "), s.serr.String(), s.lerr.String())
	}
	s.tp.t.Logf("TCP stream: %d bytes intact (SHA-256 %s)", gotN, hex.EncodeToString(got[:8]))
	return nil
}

// saView is the part of `gosec statusall --json` the SA monitor reads.
type saView struct {
	Conns []struct {
		Name string `json:"name"`
		SAs  []struct {
			SPI string `json:"spi"`
			Dir string `json:"dir"`
		} `json:"sas"`
	} `json:"conns"`
	ISAKMP []struct {
		ICookie string `json:"icookie"`
		RCookie string `json:"rcookie"`
		State   string `json:"state"`
	} `json:"isakmp"`
}

// saMonitor polls both daemons and records every SA and ISAKMP SA that
// appears or goes on the timeline.
type saMonitor struct {
	tl      *timeline
	conn    string
	daemons map[string]*daemon
	stopCh  chan struct{}
	done    chan struct{}
	mu      sync.Mutex
	cur     map[string]map[string]bool // gw -> "in 1234abcd" / "out ..." / "isakmp ..."
	seen    map[string]map[string]bool
}

func newSAMonitor(tl *timeline, conn string, daemons map[string]*daemon) *saMonitor {
	m := &saMonitor{tl: tl, conn: conn, daemons: daemons, stopCh: make(chan struct{}), done: make(chan struct{}),
		cur: map[string]map[string]bool{}, seen: map[string]map[string]bool{}}
	for gw := range daemons {
		m.cur[gw], m.seen[gw] = map[string]bool{}, map[string]bool{}
	}
	go m.run()
	return m
}

func (m *saMonitor) run() {
	defer close(m.done)
	t := time.NewTicker(300 * time.Millisecond)
	defer t.Stop()
	for {
		for _, gw := range []string{"gw1", "gw2"} {
			if d := m.daemons[gw]; d != nil {
				m.poll(gw, d)
			}
		}
		select {
		case <-m.stopCh:
			return
		case <-t.C:
		}
	}
}

func (m *saMonitor) poll(gw string, d *daemon) {
	out, err := d.ctl(5*time.Second, "statusall", "--json")
	if err != nil {
		return // daemon down (killed) or busy: keep the last view
	}
	var v saView
	if json.Unmarshal([]byte(out), &v) != nil {
		return
	}
	now := map[string]bool{}
	for _, c := range v.Conns {
		if c.Name != m.conn {
			continue
		}
		for _, sa := range c.SAs {
			now[sa.Dir+" SA "+sa.SPI] = true
		}
	}
	for _, p := range v.ISAKMP {
		now["ISAKMP SA "+p.ICookie+"/"+p.RCookie+" "+p.State] = true
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range now {
		if !m.cur[gw][k] {
			m.tl.add("%s: %s appeared", gw, k)
		}
		m.seen[gw][k] = true
	}
	for k := range m.cur[gw] {
		if !now[k] {
			m.tl.add("%s: %s gone", gw, k)
		}
	}
	m.cur[gw] = now
}

func (m *saMonitor) stop() {
	select {
	case <-m.stopCh:
	default:
		close(m.stopCh)
	}
	<-m.done
}

// count returns how many distinct entries with prefix gw has shown.
func (m *saMonitor) count(gw, prefix string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for k := range m.seen[gw] {
		if strings.HasPrefix(k, prefix) {
			n++
		}
	}
	return n
}

// current returns the entries with prefix gw shows now.
func (m *saMonitor) current(gw, prefix string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for k := range m.cur[gw] {
		if strings.HasPrefix(k, prefix) {
			out = append(out, strings.TrimPrefix(k, prefix))
		}
	}
	sort.Strings(out)
	return out
}

// waitFor polls cond every 100 ms until it holds or timeout passes.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// kill9 kills the daemon's process with SIGKILL, as a crash would.
func (d *daemon) kill9() error {
	if d.pid <= 0 {
		return fmt.Errorf("%s: pid of the daemon unknown", d.ns)
	}
	p, err := os.FindProcess(d.pid)
	if err != nil {
		return err
	}
	if err := p.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 %d: %w", d.pid, err)
	}
	for i := 0; i < 50; i++ {
		if err := p.Signal(syscall.Signal(0)); err != nil {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	return nil
}
