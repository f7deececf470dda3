// Package ikeinterop runs gosec's IKEv1 daemon against strongSwan (charon
// with userspace ESP, kernel-libipsec) in network namespaces, with the
// project's own harness in test/interop: gosec on "left", strongSwan on
// "right", each initiating, plain and through a NAT, and the mismatches
// that must fail with the right Notify.
package ikeinterop

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil"
)

const psk = "gosec-interop-psk"

func root(t testing.TB) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}

var (
	buildOnce sync.Once
	bin       string
	buildErr  error
)

func gosecBinary(t testing.TB) string {
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gosec-ikeinterop-")
		if err != nil {
			buildErr = err
			return
		}
		bin = filepath.Join(dir, "gosec")
		cmd := exec.Command("go", "build", "-o", bin, "./cmd/gosec")
		cmd.Dir = root(t)
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return bin
}

// env is one topology with gosec on left and strongSwan on right.
type env struct {
	t       *testing.T
	prefix  string
	root    string
	dir     string
	ssDir   string // strongSwan's conf dir (right)
	gsConf  string // gosec's ipsec.conf (left)
	gsSock  string
	gsLog   string
	started bool
}

func run(t testing.TB, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	return string(out), err
}

// newEnv builds the topology (nat: through a masquerading router) and
// writes both configurations. gosecConf and ssConf are ipsec.conf texts
// in strongSwan syntax with left = the local host.
func newEnv(t *testing.T, prefix string, nat bool, gosecConf, gosecSecrets, ssConf, ssSecrets string) *env {
	t.Helper()
	return newEnvSetup(t, prefix, nat, nil, gosecConf, gosecSecrets, ssConf, ssSecrets)
}

// newEnvSetup is newEnv with setup run once the topology is up, before
// either daemon starts (extra addresses, routes).
// gosecArgs are more `gosec start` arguments.
func newEnvSetup(t *testing.T, prefix string, nat bool, setup func(), gosecConf, gosecSecrets, ssConf, ssSecrets string, gosecArgs ...string) *env {
	t.Helper()
	testutil.NeedRoot(t)
	_, err := os.Stat("/usr/lib/ipsec/starter")
	testutil.Need(t, err == nil, "strongSwan is not installed (scripts/deps.sh installs it)")
	e := &env{t: t, prefix: prefix, root: root(t), dir: t.TempDir()}
	e.ssDir = filepath.Join(e.dir, "right")
	os.MkdirAll(e.ssDir, 0o755)
	write := func(p, s string, mode os.FileMode) {
		if err := os.WriteFile(p, []byte(s), mode); err != nil {
			t.Fatal(err)
		}
	}
	write(filepath.Join(e.ssDir, "ipsec.conf"), ssConf, 0o644)
	write(filepath.Join(e.ssDir, "ipsec.secrets"), ssSecrets, 0o600)
	e.gsConf = filepath.Join(e.dir, "ipsec.conf")
	write(e.gsConf, gosecConf, 0o600)
	write(filepath.Join(e.dir, "ipsec.secrets"), gosecSecrets, 0o600)
	e.gsSock, e.gsLog = filepath.Join(e.dir, "gosec.ctl"), filepath.Join(e.dir, "gosec.log")

	topo := filepath.Join(e.root, "test", "interop", "topo.sh")
	args := []string{"up"}
	if nat {
		args = append(args, "nat")
	}
	cmd := exec.Command(topo, args...)
	cmd.Env = append(os.Environ(), "NS_PREFIX="+prefix)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("topo up: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(e.gsLog)
			t.Logf("gosec log:\n%s", tail(string(log), 40))
			out, _ := e.peer(10*time.Second, "log")
			t.Logf("charon log:\n%s", tail(out, 40))
		}
		// gosec only if it was built: e.gosec would t.Fatal on a build
		// error and end the cleanup before strongSwan is stopped (a
		// charon left running keeps the test lock's descriptor).
		if buildErr == nil && bin != "" {
			e.gosec(10*time.Second, "stop")
		}
		e.peer(20*time.Second, "stop")
		down := exec.Command(topo, "down")
		down.Env = append(os.Environ(), "NS_PREFIX="+prefix)
		down.Run()
	})
	if setup != nil {
		setup()
	}
	if out, err := e.peer(60*time.Second, "start"); err != nil {
		t.Fatalf("strongSwan start: %v\n%s", err, out)
	}
	start := append([]string{"netns", "exec", prefix + "left", gosecBinary(t), "start",
		"--config", e.gsConf, "--socket", e.gsSock, "--log", e.gsLog}, gosecArgs...)
	if out, err := run(t, 30*time.Second, "ip", start...); err != nil {
		log, _ := os.ReadFile(e.gsLog)
		t.Fatalf("gosec start: %v\n%s\n%s", err, out, log)
	}
	return e
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// peer runs strongswan-peer.sh for the right side.
func (e *env) peer(timeout time.Duration, args ...string) (string, error) {
	script := filepath.Join(e.root, "test", "interop", "strongswan-peer.sh")
	return run(e.t, timeout, script, append([]string{e.prefix + "right", e.ssDir}, args...)...)
}

// gosec runs a gosec CLI command against the left daemon.
func (e *env) gosec(timeout time.Duration, args ...string) (string, error) {
	all := append([]string{"netns", "exec", e.prefix + "left", gosecBinary(e.t)}, args...)
	all = append(all, "--socket", e.gsSock)
	return run(e.t, timeout, "ip", all...)
}

func (e *env) ping(ns, dst string) error {
	out, err := run(e.t, 15*time.Second, "ip", "netns", "exec", e.prefix+ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", dst)
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v\n%s", dst, ns, err, out)
	}
	return nil
}

// transfer sends size random bytes over TCP from leftlan to rightlan
// (or back) and compares checksums.
func (e *env) transfer(fromNS, toNS, dst string, size int) error {
	data := make([]byte, size)
	rand.NewChaCha8([32]byte{9}).Read(data)
	dir, err := os.MkdirTemp(e.dir, "transfer") // several may run at once
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	in := filepath.Join(dir, "in")
	out := filepath.Join(dir, "out")
	if err := os.WriteFile(in, data, 0o600); err != nil {
		return err
	}
	port := fmt.Sprint(20000 + rand.IntN(20000))
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	lis := exec.CommandContext(ctx, "ip", "netns", "exec", e.prefix+toNS, "socat", "-u", "TCP-LISTEN:"+port+",reuseaddr", "CREATE:"+out)
	if err := lis.Start(); err != nil {
		return err
	}
	time.Sleep(300 * time.Millisecond)
	snd, err := exec.CommandContext(ctx, "ip", "netns", "exec", e.prefix+fromNS, "socat", "-u", "OPEN:"+in, "TCP:"+dst+":"+port+",connect-timeout=5").CombinedOutput()
	if err != nil {
		lis.Process.Kill()
		lis.Wait()
		return fmt.Errorf("socat send: %v\n%s", err, snd)
	}
	if err := lis.Wait(); err != nil {
		return fmt.Errorf("socat listen: %v", err)
	}
	got, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	if sha256.Sum256(got) != sha256.Sum256(data) {
		return fmt.Errorf("checksum mismatch: sent %d bytes, received %d", len(data), len(got))
	}
	return nil
}

// ssBytes returns strongSwan's byte counters of conn's CHILD_SA.
func (e *env) ssBytes(conn string) (in, out int, status string) {
	status, _ = e.peer(20*time.Second, "ipsec", "statusall", conn)
	m := regexp.MustCompile(`(\d+) bytes_i.*?(\d+) bytes_o`).FindStringSubmatch(status)
	if m != nil {
		fmt.Sscan(m[1], &in)
		fmt.Sscan(m[2], &out)
	}
	return in, out, status
}

// conn renders a conn in strongSwan syntax with left = the local host.
type conn struct {
	name                  string
	ike, esp              string
	left, right           string
	leftSub, rightSub     string
	leftID, rightID       string
	transport, aggressive bool
}

func (c conn) text() string {
	var b bytes.Buffer
	b.WriteString("config setup\n\tuniqueids=no\n\nconn %default\n\tkeyexchange=ikev1\n\tauthby=psk\n\tikelifetime=1h\n\tlifetime=20m\n\trekeymargin=3m\n\tkeyingtries=1\n\tdpdaction=none\n\n")
	fmt.Fprintf(&b, "conn %s\n\tleft=%s\n\tright=%s\n", c.name, c.left, c.right)
	if c.leftSub != "" {
		fmt.Fprintf(&b, "\tleftsubnet=%s\n\trightsubnet=%s\n", c.leftSub, c.rightSub)
	}
	if c.leftID != "" {
		fmt.Fprintf(&b, "\tleftid=%s\n\trightid=%s\n", c.leftID, c.rightID)
	}
	fmt.Fprintf(&b, "\tike=%s!\n\tesp=%s!\n\ttype=tunnel\n\tauto=add\n", c.ike, c.esp)
	return b.String()
}

// mirror swaps the sides: the same conn as the other host writes it.
func (c conn) mirror() conn {
	m := c
	m.left, m.right = c.right, c.left
	m.leftSub, m.rightSub = c.rightSub, c.leftSub
	m.leftID, m.rightID = c.rightID, c.leftID
	return m
}

func secrets(a, b string) string { return fmt.Sprintf("%s %s : PSK \"%s\"\n", a, b, psk) }

// TestStrongSwan: Main Mode with PSK and Quick Mode ESP tunnels between
// gosec (left) and strongSwan (right) for the proposals of the issue,
// with and without PFS, AES-CBC and AES-GCM, each side initiating;
// ping both ways, a TCP transfer with a checksum, strongSwan's counters,
// and gosec down deleting strongSwan's SAs.
func TestStrongSwan(t *testing.T) {
	cases := []struct {
		ike, esp   string
		ssInitiate bool
	}{
		{ike: "aes128-sha1-modp2048", esp: "aes128-sha1"},
		{ike: "aes256-sha256-modp2048", esp: "aes256-sha256"},
		{ike: "3des-sha1-modp1024", esp: "3des-sha1"},
		{ike: "aes128-sha256-ecp256", esp: "aes128gcm16"},
		{ike: "aes128-sha1-modp2048", esp: "aes128-sha1-modp2048"}, // PFS
		{ike: "aes256-sha256-modp2048", esp: "aes256gcm16-ecp256"}, // PFS
		{ike: "aes128-sha1-modp2048", esp: "aes128-sha1", ssInitiate: true},
		{ike: "aes128-sha256-ecp256", esp: "aes128gcm16-modp2048", ssInitiate: true},
		{ike: "3des-sha1-modp1024", esp: "aes256-sha256", ssInitiate: true},
	}
	for i, c := range cases {
		who := "gosec"
		if c.ssInitiate {
			who = "strongswan"
		}
		name := fmt.Sprintf("%s_%s_%s", c.ike, c.esp, who)
		t.Run(name, func(t *testing.T) {
			cn := conn{name: fmt.Sprintf("c%d", i), ike: c.ike, esp: c.esp, left: "192.0.2.1", right: "192.0.2.2",
				leftSub: "10.1.0.0/24", rightSub: "10.2.0.0/24"}
			e := newEnv(t, "gki-", false, cn.text(), secrets("192.0.2.1", "192.0.2.2"),
				cn.mirror().text(), secrets("192.0.2.2", "192.0.2.1"))
			var out string
			var err error
			if c.ssInitiate {
				out, err = e.peer(60*time.Second, "ipsec", "up", cn.name)
			} else {
				out, err = e.gosec(60*time.Second, "up", cn.name)
			}
			if err != nil || !strings.Contains(out, "established successfully") {
				t.Fatalf("up (%s initiating): %v\n%s", who, err, out)
			}
			if err := e.ping("leftlan", "10.2.0.2"); err != nil {
				t.Fatal(err)
			}
			if err := e.ping("rightlan", "10.1.0.2"); err != nil {
				t.Fatal(err)
			}
			if err := e.transfer("leftlan", "rightlan", "10.2.0.2", 4<<20); err != nil {
				t.Fatal(err)
			}
			bi, bo, st := e.ssBytes(cn.name)
			if bi < 4<<20 || bo == 0 {
				t.Fatalf("strongSwan counted %d bytes in, %d out:\n%s", bi, bo, st)
			}
			if !strings.Contains(st, "INSTALLED, TUNNEL") {
				t.Fatalf("strongSwan status:\n%s", st)
			}
			// gosec down: strongSwan honours the Delete payloads.
			if out, err := e.gosec(30*time.Second, "down", cn.name); err != nil {
				t.Fatalf("gosec down: %v\n%s", err, out)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				st, _ := e.peer(20*time.Second, "ipsec", "statusall", cn.name)
				if !strings.Contains(st, "INSTALLED") && !strings.Contains(st, "ESTABLISHED") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("strongSwan still has SAs after gosec's Delete:\n%s", st)
				}
				time.Sleep(200 * time.Millisecond)
			}
		})
	}
}

// TestStrongSwanNAT: gosec behind a masquerading NAT (left=%defaultroute,
// FQDN IDs) initiates to strongSwan; IKE floats to 4500 and ESP travels
// in UDP through the NAT.
func TestStrongSwanNAT(t *testing.T) {
	gs := conn{name: "nat", ike: "aes128-sha1-modp2048", esp: "aes128-sha1", left: "%defaultroute", right: "192.0.2.2",
		leftSub: "10.1.0.0/24", rightSub: "10.2.0.0/24", leftID: "@left.gosec.test", rightID: "@right.gosec.test"}
	ss := gs.mirror()
	ss.left, ss.right = "192.0.2.2", "%any"
	e := newEnv(t, "gkn-", true, gs.text(), secrets("@left.gosec.test", "@right.gosec.test"),
		ss.text(), secrets("@right.gosec.test", "@left.gosec.test"))
	out, err := e.gosec(60*time.Second, "up", "nat")
	if err != nil || !strings.Contains(out, "established successfully") {
		t.Fatalf("gosec up: %v\n%s", err, out)
	}
	if !strings.Contains(out, "behind NAT") {
		t.Fatalf("gosec did not notice the NAT:\n%s", out)
	}
	if err := e.ping("leftlan", "10.2.0.2"); err != nil {
		t.Fatal(err)
	}
	if err := e.ping("rightlan", "10.1.0.2"); err != nil {
		t.Fatal(err)
	}
	if err := e.transfer("leftlan", "rightlan", "10.2.0.2", 2<<20); err != nil {
		t.Fatal(err)
	}
	_, _, st := e.ssBytes("nat")
	if !strings.Contains(st, "ESP in UDP") {
		t.Fatalf("strongSwan's SA is not UDP-encapsulated:\n%s", st)
	}
}

// TestStrongSwanMismatch: a wrong PSK, a mismatched proposal and
// mismatched subnets fail on both sides with the right explanation and
// leave no SA.
func TestStrongSwanMismatch(t *testing.T) {
	base := conn{name: "mm", ike: "aes128-sha1-modp2048", esp: "aes128-sha1", left: "192.0.2.1", right: "192.0.2.2",
		leftSub: "10.1.0.0/24", rightSub: "10.2.0.0/24"}
	cases := []struct {
		name        string
		ss          func(conn) conn
		ssPSK       string
		ssInitiate  bool
		gosecSays   string
		charonSays  string
		gosecLogHas string
	}{
		{name: "psk-gosec-initiates", ss: func(c conn) conn { return c }, ssPSK: "wrong",
			gosecSays: "pre-shared keys", charonSays: "", gosecLogHas: "pre-shared keys most likely differ"},
		{name: "psk-strongswan-initiates", ss: func(c conn) conn { return c }, ssPSK: "wrong", ssInitiate: true,
			gosecLogHas: "pre-shared keys most likely differ"},
		{name: "ike-proposal", ss: func(c conn) conn { c.ike = "aes256-sha256-modp2048"; return c },
			gosecSays: "NO_PROPOSAL_CHOSEN", charonSays: "no proposal found"},
		{name: "ike-proposal-strongswan-initiates", ss: func(c conn) conn { c.ike = "aes256-sha256-modp2048"; return c }, ssInitiate: true,
			gosecLogHas: "differs in cipher aes256 vs aes128, hash sha256 vs sha1", charonSays: "NO_PROPOSAL_CHOSEN"},
		{name: "esp-proposal", ss: func(c conn) conn { c.esp = "aes128gcm16"; return c },
			gosecSays: "NO_PROPOSAL_CHOSEN", charonSays: "no matching proposal found, sending NO_PROPOSAL_CHOSEN"},
		{name: "esp-proposal-strongswan-initiates", ss: func(c conn) conn { c.esp = "aes128gcm16"; return c }, ssInitiate: true,
			gosecLogHas: "no acceptable phase-2 proposal", charonSays: "NO_PROPOSAL_CHOSEN"},
		{name: "subnets", ss: func(c conn) conn { c.rightSub = "10.9.0.0/24"; return c },
			gosecSays: "INVALID_ID_INFORMATION", charonSays: "no matching CHILD_SA config"},
		{name: "subnets-strongswan-initiates", ss: func(c conn) conn { c.rightSub = "10.9.0.0/24"; return c }, ssInitiate: true,
			gosecLogHas: "INVALID_ID_INFORMATION", charonSays: "INVALID_ID_INFORMATION"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ssc := c.ss(base.mirror())
			sspsk := secrets("192.0.2.2", "192.0.2.1")
			if c.ssPSK != "" {
				sspsk = strings.Replace(sspsk, psk, c.ssPSK, 1)
			}
			e := newEnv(t, "gkm-", false, base.text(), secrets("192.0.2.1", "192.0.2.2"), ssc.text(), sspsk)
			var out string
			var err error
			if c.ssInitiate {
				out, err = e.peer(60*time.Second, "ipsec", "up", "mm")
			} else {
				out, err = e.gosec(90*time.Second, "up", "mm")
			}
			if err == nil && strings.Contains(out, "established successfully") {
				t.Fatalf("negotiation succeeded:\n%s", out)
			}
			if c.gosecSays != "" && !strings.Contains(out, c.gosecSays) {
				t.Fatalf("gosec up does not say %q:\n%s", c.gosecSays, out)
			}
			time.Sleep(300 * time.Millisecond)
			if c.gosecLogHas != "" {
				log, _ := os.ReadFile(e.gsLog)
				if !strings.Contains(string(log), c.gosecLogHas) {
					t.Fatalf("gosec's log does not say %q:\n%s", c.gosecLogHas, tail(string(log), 20))
				}
			}
			if c.charonSays != "" {
				log, _ := e.peer(10*time.Second, "log")
				all := log + out
				if !strings.Contains(strings.ToLower(all), strings.ToLower(c.charonSays)) {
					t.Fatalf("strongSwan does not say %q:\n%s", c.charonSays, tail(all, 30))
				}
			}
			st, _ := e.peer(20*time.Second, "ipsec", "statusall")
			if strings.Contains(st, "INSTALLED") {
				t.Fatalf("strongSwan installed an SA:\n%s", st)
			}
			gs, _ := e.gosec(20*time.Second, "status")
			if strings.Contains(gs, "INSTALLED") {
				t.Fatalf("gosec installed an SA:\n%s", gs)
			}
		})
	}
}

// floodPy sends N Main Mode first messages with random cookies from N
// source ports to DST:500.
const floodPy = `
import os, socket, sys
dst, n, tmpl = sys.argv[1], int(sys.argv[2]), bytes.fromhex(sys.argv[3])
socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(64)]
for i in range(n):
    m = os.urandom(8) + tmpl[8:]
    socks[i % 64].sendto(m, (dst, 500))
print("sent", n)
`

// TestFloodDuringNegotiation: while a flood of Main Mode first messages
// from many source ports hits gosec, strongSwan still negotiates with it,
// gosec's half-open state stays bounded, and so does its memory.
func TestFloodDuringNegotiation(t *testing.T) {
	cn := conn{name: "fl", ike: "aes128-sha1-modp2048", esp: "aes128-sha1", left: "192.0.2.1", right: "192.0.2.2",
		leftSub: "10.1.0.0/24", rightSub: "10.2.0.0/24"}
	e := newEnv(t, "gkf-", false, cn.text(), secrets("192.0.2.1", "192.0.2.2"), cn.mirror().text(), secrets("192.0.2.2", "192.0.2.1"))
	// An MM1 as strongSwan would send it: take one from gosec's own
	// encoder through a first exchange is not needed; any valid SA offer
	// that matches the conn keeps gosec creating half-open state.
	mm1 := "0000000000000000000000000000000001100200000000000000005c0000004000000001000000010000003401010001000000280101000080010007800e00808002000280030001800400" +
		"0e800b0001000c000400000e10"
	mm1 = mm1[:len(mm1)]
	rssBefore := e.gosecRSS()
	done := make(chan string, 1)
	go func() {
		out, _ := run(t, 120*time.Second, "ip", "netns", "exec", e.prefix+"right", "/usr/bin/python3", "-c", floodPy, "192.0.2.1", "20000", fixMM1(t, mm1))
		done <- out
	}()
	time.Sleep(300 * time.Millisecond)
	out, err := e.peer(60*time.Second, "ipsec", "up", cn.name)
	if err != nil || !strings.Contains(out, "established successfully") {
		t.Fatalf("strongSwan could not connect during the flood: %v\n%s", err, out)
	}
	fl := <-done
	if !strings.Contains(fl, "sent 20000") {
		t.Fatalf("flood: %s", fl)
	}
	if err := e.ping("leftlan", "10.2.0.2"); err != nil {
		t.Fatal(err)
	}
	st, _ := e.gosec(20*time.Second, "statusall", "--json")
	counter := func(name string) int {
		m := regexp.MustCompile(`"` + name + `":\s*(\d+)`).FindStringSubmatch(st)
		if m == nil {
			t.Fatalf("no %s counter in statusall:\n%s", name, tail(st, 30))
		}
		var v int
		fmt.Sscan(m[1], &v)
		return v
	}
	// How much of the flood reached the engine depends on the machine
	// (socket buffer, event queue); it must have been a real flood.
	received, evicted, queueFull := counter("received"), counter("half-open-evicted"), counter("queue-full")
	if received < 2000 {
		t.Fatalf("only %d IKE messages reached gosec: no flood to speak of", received)
	}
	rssAfter := e.gosecRSS()
	t.Logf("gosec RSS %d kB before, %d kB after 20000 MM1s; %d messages received, %d half-open SAs evicted, %d dropped on a full queue",
		rssBefore, rssAfter, received, evicted, queueFull)
	if rssAfter-rssBefore > 64<<10 {
		t.Fatalf("gosec grew by %d kB during the flood", rssAfter-rssBefore)
	}
}

// fixMM1 sets the header length of a handwritten MM1 to its real size.
func fixMM1(t *testing.T, h string) string {
	b := []byte{}
	for i := 0; i+1 < len(h); i += 2 {
		var v byte
		fmt.Sscanf(h[i:i+2], "%02x", &v)
		b = append(b, v)
	}
	n := len(b)
	b[24], b[25], b[26], b[27] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	// SA payload length (generic header at 28) = everything after the header.
	sa := n - 28
	b[30], b[31] = byte(sa>>8), byte(sa)
	// proposal (at 40) and transform (at 48) lengths
	b[42], b[43] = byte((n-40)>>8), byte(n-40)
	b[50], b[51] = byte((n-48)>>8), byte(n-48)
	return fmt.Sprintf("%x", b)
}

// gosecRSS returns the daemon's resident memory in kB.
func (e *env) gosecRSS() int {
	st, _ := e.gosec(10*time.Second, "statusall", "--json")
	m := regexp.MustCompile(`"pid":\s*(\d+)`).FindStringSubmatch(st)
	if m == nil {
		e.t.Fatalf("no pid in statusall")
	}
	b, err := os.ReadFile("/proc/" + m[1] + "/status")
	if err != nil {
		e.t.Fatal(err)
	}
	var kb int
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, "VmRSS:") {
			fmt.Sscan(strings.TrimPrefix(l, "VmRSS:"), &kb)
		}
	}
	return kb
}
