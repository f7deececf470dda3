// Package wire holds the instruments of the end-to-end lifecycle tests
// (test/e2e and test/ikeinterop): a leak watcher that captures, for the
// whole test, every cleartext packet of the protected subnets on the wire;
// a timeline of events to tie a leaked or lost packet to what preceded it;
// a ping stream with loss accounting; and a TCP stream with a checksum.
// Everything runs in network namespaces through `ip netns exec`.
package wire

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"math/rand/v2"
	"net/netip"
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

// Event is one entry of a Timeline.
type Event struct {
	At   time.Time
	What string
}

// Timeline records what a test did and saw, so that a leaked or lost
// packet can be tied to the event it followed. It is safe for concurrent
// use.
type Timeline struct {
	mu sync.Mutex
	ev []Event
}

// Add records an event now.
func (tl *Timeline) Add(format string, args ...any) {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	tl.ev = append(tl.ev, Event{At: time.Now(), What: fmt.Sprintf(format, args...)})
}

// With returns a copy of the timeline merged with more events, in time
// order (daemon log lines, for example, which carry exact times).
func (tl *Timeline) With(more []Event) *Timeline {
	tl.mu.Lock()
	out := &Timeline{ev: append(append([]Event(nil), tl.ev...), more...)}
	tl.mu.Unlock()
	sort.SliceStable(out.ev, func(i, j int) bool { return out.ev[i].At.Before(out.ev[j].At) })
	return out
}

// Before describes the last event at or before at.
func (tl *Timeline) Before(at time.Time) string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var last *Event
	for i := range tl.ev {
		if tl.ev[i].At.After(at) {
			break
		}
		last = &tl.ev[i]
	}
	if last == nil {
		return "(before the first event)"
	}
	return fmt.Sprintf("%q (%.2fs earlier)", last.What, at.Sub(last.At).Seconds())
}

func (tl *Timeline) String() string {
	tl.mu.Lock()
	defer tl.mu.Unlock()
	var b strings.Builder
	for _, e := range tl.ev {
		fmt.Fprintf(&b, "  %s %s\n", e.At.Format("15:04:05.000"), e.What)
	}
	return b.String()
}

// LeakFilter is a tcpdump filter for a WAN link matching every IPv4
// packet from or to one of the protected prefixes that is not ESP, AH or
// IKE (UDP 500/4500), and every ICMP error (unreachable, source quench,
// redirect, time exceeded, parameter problem) quoting a packet from or to
// one: both reveal protected traffic on the wire.
func LeakFilter(protected ...netip.Prefix) string {
	var nets, quoted []string
	for _, p := range protected {
		p = p.Masked()
		nets = append(nets, "net "+p.String())
		a := p.Addr().As4()
		v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
		mask := ^uint32(0) << (32 - p.Bits())
		for _, off := range []int{20, 24} { // quoted source, destination
			quoted = append(quoted, fmt.Sprintf("(icmp[%d:4] & 0x%08x) = 0x%08x", off, mask, v))
		}
	}
	return "ip and ((" + strings.Join(nets, " or ") + ") and not (ip proto 50 or ip proto 51 or udp port 500 or udp port 4500))" +
		" or (icmp and (icmp[0] = 3 or icmp[0] = 4 or icmp[0] = 5 or icmp[0] = 11 or icmp[0] = 12) and (" +
		strings.Join(quoted, " or ") + "))"
}

// Tap is one capture point: the packets a host sends on an interface
// (or, with Dir "in", those it receives there: what the host at the other
// end of a point-to-point link, a VM behind a tap say, sent).
type Tap struct {
	Label string // who sends: "gw1", "gosec", "strongswan"...
	NetNS string
	Iface string
	Dir   string // tcpdump -Q: "out" (the default) or "in"
}

// LeakWatcher runs tcpdump on its taps (outgoing direction only, so each
// packet is attributed to the host that put it on the wire) until Stop.
type LeakWatcher struct {
	caps     []*leakCapture
	once     sync.Once
	leaks    []Leak
	problems []string
}

type leakCapture struct {
	tap    Tap
	cmd    *exec.Cmd
	out    syncBuffer
	stderr syncBuffer
}

// Leak is one captured packet.
type Leak struct {
	Label string // the tap's label: who sent it
	At    time.Time
	Line  string // tcpdump's line
}

// WatchLeaks starts a capture with filter on every tap and waits until
// each is listening; the test's cleanup stops them.
func WatchLeaks(tb testing.TB, filter string, taps ...Tap) *LeakWatcher {
	tb.Helper()
	_, err := exec.LookPath("tcpdump")
	testutil.Need(tb, err == nil, "tcpdump is not installed (scripts/deps.sh installs it)")
	w := &LeakWatcher{}
	for _, tap := range taps {
		c := &leakCapture{tap: tap}
		dir := tap.Dir
		if dir == "" {
			dir = "out"
		}
		c.cmd = exec.Command("ip", "netns", "exec", tap.NetNS, "tcpdump", "-l", "-n", "-tt", "-Q", dir, "-i", tap.Iface, filter)
		c.cmd.Stdout, c.cmd.Stderr = &c.out, &c.stderr
		if err := c.cmd.Start(); err != nil {
			tb.Fatalf("tcpdump on %s %s: %v", tap.NetNS, tap.Iface, err)
		}
		w.caps = append(w.caps, c)
	}
	tb.Cleanup(func() { w.Stop() })
	for _, c := range w.caps {
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(c.stderr.String(), "listening on") {
			if time.Now().After(deadline) {
				tb.Fatalf("tcpdump on %s %s did not start: %s", c.tap.NetNS, c.tap.Iface, c.stderr.String())
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return w
}

var droppedByKernel = regexp.MustCompile(`(\d+) packets? dropped by kernel`)

// Stop ends the captures (once) and returns every captured packet, and
// the problems of the capture itself (matching packets the kernel dropped
// before tcpdump read them: leaks too).
func (w *LeakWatcher) Stop() ([]Leak, []string) {
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
				l := Leak{Label: c.tap.Label, Line: line}
				if f, _, ok := strings.Cut(line, " "); ok {
					if ts, err := strconv.ParseFloat(f, 64); err == nil {
						l.At = time.Unix(0, int64(ts*1e9))
					}
				}
				w.leaks = append(w.leaks, l)
			}
			if m := droppedByKernel.FindStringSubmatch(c.stderr.String()); m != nil && m[1] != "0" {
				w.problems = append(w.problems, fmt.Sprintf("tcpdump on %s: %s more matching packets were dropped by the kernel before capture", c.tap.Label, m[1]))
			}
		}
		sort.SliceStable(w.leaks, func(i, j int) bool { return w.leaks[i].At.Before(w.leaks[j].At) })
	})
	return w.leaks, w.problems
}

// Report renders leaks for a failure message: counts per sender and per
// preceding event, then the first packets, each with the event it
// followed and, if note is set, a note about it (a daemon's log line).
func Report(leaks []Leak, problems []string, tl *Timeline, note func(Leak) string) string {
	var b strings.Builder
	perLabel := map[string]int{}
	var labels []string
	perEvent := map[string]int{}
	var eventOrder []string
	for _, l := range leaks {
		if perLabel[l.Label] == 0 {
			labels = append(labels, l.Label)
		}
		perLabel[l.Label]++
		key := l.Label + " after " + strings.SplitN(tl.Before(l.At), " (", 2)[0]
		if perEvent[key] == 0 {
			eventOrder = append(eventOrder, key)
		}
		perEvent[key]++
	}
	var who []string
	for _, l := range labels {
		who = append(who, fmt.Sprintf("%s sent %d", l, perLabel[l]))
	}
	fmt.Fprintf(&b, "CLEARTEXT ON THE WIRE: %d packets of protected subnets (%s)\n", len(leaks), strings.Join(who, ", "))
	for _, p := range problems {
		fmt.Fprintf(&b, "  %s\n", p)
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
		_, rest, _ := strings.Cut(l.Line, " ")
		fmt.Fprintf(&b, "  [%s] %s %s\n      after %s\n", l.Label, l.At.Format("15:04:05.000000"), rest, tl.Before(l.At))
		if note != nil {
			if n := note(l); n != "" {
				fmt.Fprintf(&b, "      %s\n", n)
			}
		}
	}
	b.WriteString("timeline:\n")
	b.WriteString(tl.String())
	return b.String()
}

// PingInterval is the ping stream's interval.
const PingInterval = 200 * time.Millisecond

// Ping pings every PingInterval until stopped.
type Ping struct {
	cmd   *exec.Cmd
	out   syncBuffer
	start time.Time
}

// StartPing pings dst from namespace ns, with ping's options opts (-I
// src, say); the test's cleanup kills it.
func StartPing(tb testing.TB, ns, dst string, opts ...string) *Ping {
	tb.Helper()
	p := &Ping{}
	// -D timestamps every line, -O reports every request still unanswered
	// when the next goes out. No -W: a late answer still counts.
	args := append([]string{"netns", "exec", ns, "ping", "-D", "-O", "-n", "-i", "0.2"}, opts...)
	p.cmd = exec.Command("ip", append(args, dst)...)
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.out
	p.start = time.Now()
	if err := p.cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	return p
}

// PingResult is what a stopped ping stream saw.
type PingResult struct {
	Start    time.Time
	Sent     int
	Replied  map[int]time.Time // icmp_seq -> time of the (first) answer
	Lost     []int             // requests never answered (the last second not judged)
	FirstRep int               // first answered icmp_seq, 0 if none
	Output   string
}

var (
	pingReply = regexp.MustCompile(`^\[(\d+\.\d+)\] \d+ bytes from .*icmp_seq=(\d+)`)
	pingSent  = regexp.MustCompile(`(\d+) packets transmitted`)
)

// Stop interrupts ping and accounts for every request. The requests of
// the last second are not judged: their answers may still be on the way.
func (p *Ping) Stop() PingResult {
	p.cmd.Process.Signal(syscall.SIGINT)
	p.cmd.Wait()
	return parsePing(p.out.String(), p.start)
}

// parsePing accounts for the requests in the output of ping -D -O.
func parsePing(output string, start time.Time) PingResult {
	r := PingResult{Start: start, Replied: map[int]time.Time{}, Output: output}
	for _, line := range strings.Split(r.Output, "\n") {
		if m := pingReply.FindStringSubmatch(line); m != nil {
			seq, _ := strconv.Atoi(m[2])
			ts, _ := strconv.ParseFloat(m[1], 64)
			if _, dup := r.Replied[seq]; !dup {
				r.Replied[seq] = time.Unix(0, int64(ts*1e9))
			}
			if r.FirstRep == 0 || seq < r.FirstRep {
				r.FirstRep = seq
			}
		}
	}
	if m := pingSent.FindStringSubmatch(r.Output); m != nil {
		r.Sent, _ = strconv.Atoi(m[1])
	}
	for seq := 1; seq <= r.Sent-5; seq++ {
		if _, ok := r.Replied[seq]; !ok {
			r.Lost = append(r.Lost, seq)
		}
	}
	return r
}

// SentAt estimates when request seq went out.
func (r PingResult) SentAt(seq int) time.Time {
	return r.Start.Add(time.Duration(seq-1) * PingInterval)
}

func (r PingResult) in(seq int, from, to time.Time) bool {
	at := r.SentAt(seq)
	return (from.IsZero() || !at.Before(from)) && (to.IsZero() || at.Before(to))
}

// LostBetween returns the lost requests sent in [from, to); a zero time
// is an open end.
func (r PingResult) LostBetween(from, to time.Time) []int {
	var out []int
	for _, seq := range r.Lost {
		if r.in(seq, from, to) {
			out = append(out, seq)
		}
	}
	return out
}

// RepliedBetween counts the answered requests sent in [from, to).
func (r PingResult) RepliedBetween(from, to time.Time) int {
	n := 0
	for seq := range r.Replied {
		if r.in(seq, from, to) {
			n++
		}
	}
	return n
}

// DescribeLoss renders lost requests as runs, each with the event it
// followed.
func (r PingResult) DescribeLoss(seqs []int, tl *Timeline) string {
	if len(seqs) == 0 {
		return "none"
	}
	var b strings.Builder
	for i := 0; i < len(seqs); {
		j := i
		for j+1 < len(seqs) && seqs[j+1] == seqs[j]+1 {
			j++
		}
		at := r.SentAt(seqs[i])
		fmt.Fprintf(&b, "\n  icmp_seq %d-%d (%d requests, %.1fs from %s) after %s",
			seqs[i], seqs[j], j-i+1, float64(j-i+1)*PingInterval.Seconds(), at.Format("15:04:05.0"), tl.Before(at))
		i = j + 1
	}
	return b.String()
}

// TCPStream sends pseudo-random bytes at a bounded rate over one TCP
// connection (socat in both namespaces) until stopped, hashing what it
// sent and what arrived.
type TCPStream struct {
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

// StartTCP streams rate bytes per second from srcNS to dst:port, a
// listener it starts in dstNS; the test's cleanup kills both ends.
func StartTCP(tb testing.TB, srcNS, dstNS, dst string, rate int) *TCPStream {
	tb.Helper()
	s := &TCPStream{stopCh: make(chan struct{}), wrDone: make(chan error, 1),
		sent: sha256.New(), recv: &countingHash{h: sha256.New()}}
	port := fmt.Sprint(20000 + rand.IntN(20000))
	s.listener = exec.Command("ip", "netns", "exec", dstNS, "socat", "-u", "TCP-LISTEN:"+port+",reuseaddr", "STDOUT")
	s.listener.Stdout, s.listener.Stderr = s.recv, &s.lerr
	if err := s.listener.Start(); err != nil {
		tb.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		o, _ := exec.Command("ip", "netns", "exec", dstNS, "ss", "-ltn", "sport", "= :"+port).CombinedOutput()
		if strings.Contains(string(o), ":"+port) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	s.sender = exec.Command("ip", "netns", "exec", srcNS, "socat", "-u", "STDIN", "TCP:"+dst+":"+port+",connect-timeout=10")
	s.sender.Stderr = &s.serr
	stdin, err := s.sender.StdinPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := s.sender.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
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

// Stop ends the stream and checks that every byte arrived intact; it
// returns how many did.
func (s *TCPStream) Stop() (int64, error) {
	close(s.stopCh)
	var werr error
	select {
	case werr = <-s.wrDone:
	case <-time.After(20 * time.Second):
		werr = fmt.Errorf("the sender was stuck for 20 s (TCP stalled)")
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
		case <-time.After(20 * time.Second):
			c.Process.Kill()
			<-done
			return fmt.Errorf("%s did not finish within 20 s", what)
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
		return gotN, fmt.Errorf("TCP stream: %s\nsender: %s\nlistener: %s", strings.Join(errs, "; "), s.serr.String(), s.lerr.String())
	}
	return gotN, nil
}

// WaitFor polls cond every 100 ms until it holds or timeout passes.
func WaitFor(timeout time.Duration, cond func() bool) bool {
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

// Monitor polls snapshot sources (a daemon's status, say) and puts every
// entry that appears or goes on the timeline, remembering all it saw.
type Monitor struct {
	tl      *Timeline
	sources map[string]func() (map[string]bool, error)
	labels  []string
	stopCh  chan struct{}
	done    chan struct{}
	once    sync.Once
	mu      sync.Mutex
	cur     map[string]map[string]bool
	seen    map[string]map[string]bool
}

// NewMonitor polls every source every interval until Stop. A source that
// fails (a daemon killed or busy) keeps its last view.
func NewMonitor(tl *Timeline, interval time.Duration, sources map[string]func() (map[string]bool, error)) *Monitor {
	m := &Monitor{tl: tl, sources: sources, stopCh: make(chan struct{}), done: make(chan struct{}),
		cur: map[string]map[string]bool{}, seen: map[string]map[string]bool{}}
	for l := range sources {
		m.labels = append(m.labels, l)
		m.cur[l], m.seen[l] = map[string]bool{}, map[string]bool{}
	}
	sort.Strings(m.labels)
	go m.run(interval)
	return m
}

func (m *Monitor) run(interval time.Duration) {
	defer close(m.done)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		for _, l := range m.labels {
			if now, err := m.sources[l](); err == nil {
				m.update(l, now)
			}
		}
		select {
		case <-m.stopCh:
			return
		case <-t.C:
		}
	}
}

func (m *Monitor) update(label string, now map[string]bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range now {
		if !m.cur[label][k] {
			m.tl.Add("%s: %s appeared", label, k)
		}
		m.seen[label][k] = true
	}
	for k := range m.cur[label] {
		if !now[k] {
			m.tl.Add("%s: %s gone", label, k)
		}
	}
	m.cur[label] = now
}

// Stop ends the polling (idempotent).
func (m *Monitor) Stop() {
	m.once.Do(func() { close(m.stopCh) })
	<-m.done
}

// Seen returns every entry with prefix label has shown, prefix removed.
func (m *Monitor) Seen(label, prefix string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return withPrefix(m.seen[label], prefix)
}

// Current returns the entries with prefix label shows now, prefix
// removed.
func (m *Monitor) Current(label, prefix string) []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return withPrefix(m.cur[label], prefix)
}

// Count is len(Seen(label, prefix)).
func (m *Monitor) Count(label, prefix string) int { return len(m.Seen(label, prefix)) }

func withPrefix(set map[string]bool, prefix string) []string {
	var out []string
	for k := range set {
		if strings.HasPrefix(k, prefix) {
			out = append(out, strings.TrimPrefix(k, prefix))
		}
	}
	sort.Strings(out)
	return out
}

var slogTime = regexp.MustCompile(`^time=(\S+)`)

// LogEvents turns the INFO lines of a gosec log (slog text format: SAs
// established, rekeyed, expired, deleted...) into events labelled label,
// for Timeline.With: they carry exact times where a Monitor polls.
func LogEvents(label, log string) []Event {
	var out []Event
	for _, line := range strings.Split(log, "\n") {
		m := slogTime.FindStringSubmatch(line)
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
		out = append(out, Event{At: ts, What: label + " log: " + what})
	}
	return out
}
