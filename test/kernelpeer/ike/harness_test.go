package kpike

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil"
	"github.com/gosec-ipsec/gosec/test/kernelpeer"
)

// The topology of ../kpeer.sh with this package's own names (gki-*).
const (
	nsName    = "gki-host"
	tapName   = "gki-tap0"
	lanName   = "gki-lan0"
	hostIP    = "192.0.2.1"
	guestIP   = "192.0.2.2"
	hostNet   = "10.1.0.0/24"
	guestNet  = "10.2.0.0/24"
	hostInner = "10.1.0.1"
	guestIn   = "10.2.0.1"
	psk       = "gosec-interop-psk"
)

func pkgDir() string {
	wd, err := os.Getwd()
	if err != nil {
		panic(err)
	}
	return wd
}

func moduleRoot() string { return filepath.Clean(filepath.Join(pkgDir(), "..", "..", "..")) }

func buildDir() string {
	if d := os.Getenv("KPIKE_BUILD"); d != "" {
		return d
	}
	return filepath.Join(pkgDir(), "build")
}

// kpikeEnv is the environment of kpike.sh (and through it kpeer.sh) for
// the guest with peer p.
func kpikeEnv(p *peer) []string {
	return append(os.Environ(), "NS="+nsName, "TAP="+tapName, "LAN="+lanName,
		"HOST_IP="+hostIP, "GUEST_IP="+guestIP, "KPIKE_BUILD="+buildDir(), "KPIKE_PEER="+p.name)
}

var (
	guestCtl   *kernelpeer.Ctl
	guestPeer  *peer  // the IKE daemon of the guest that runs (nil: none booted)
	guestErr   error  // boot failure: the tests fail
	guestSkip  string // missing prerequisite: the tests skip (fail under CI=true)
	guestSkipd bool   // prerequisites checked
	guestUp    bool   // a guest was booted: TestMain takes it down
)

// prerequisites returns why the guest cannot run here, or "".
func prerequisites() string {
	if os.Geteuid() != 0 {
		return "needs root (network namespaces, tap, raw sockets)"
	}
	for tool, pkg := range map[string]string{
		"qemu-system-x86_64": "qemu-system-x86", "gcc": "gcc", "cpio": "cpio", "depmod": "kmod",
		"nft": "nftables", "ip": "iproute2", "socat": "socat", "busybox": "busybox-static",
		"dpkg-deb": "dpkg", "apt-get": "apt", "tcpdump": "tcpdump", "tshark": "tshark",
	} {
		if _, err := exec.LookPath(tool); err != nil {
			return tool + " is not installed (Debian package " + pkg + "; scripts/deps.sh installs it)"
		}
	}
	if _, err := os.Stat("/dev/net/tun"); err != nil {
		return "/dev/net/tun is missing"
	}
	return ""
}

// kpike runs kpike.sh with this package's names, for the guest with
// peer p.
func kpike(p *peer, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(pkgDir(), "kpike.sh"), args...)
	cmd.Env = kpikeEnv(p)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// guest returns the control channel of the strongSwan guest (guestWith).
func guest(t *testing.T) *kernelpeer.Ctl { return guestWith(t, strongSwan) }

// guestWith returns the control channel of a guest whose IKE daemon is
// p's, booting one first unless the running guest has it: the tests of
// one peer run one after another, so each peer's guest boots once per
// test binary (TestMain takes the last one down).
func guestWith(t *testing.T, p *peer) *kernelpeer.Ctl {
	t.Helper()
	testutil.NeedRoot(t)
	if !guestSkipd {
		guestSkipd, guestSkip = true, prerequisites()
	}
	testutil.Need(t, guestSkip == "", guestSkip)
	if guestPeer == p {
		if guestErr != nil {
			t.Fatal(guestErr)
		}
		return guestCtl
	}
	if guestCtl != nil {
		guestCtl.Run("ike stop")
		guestCtl.Close()
		guestCtl = nil
	}
	if guestPeer != nil {
		if out, err := kpike(guestPeer, time.Minute, "down"); err != nil {
			t.Logf("kpike.sh down (%s guest): %v\n%s", guestPeer.name, err, out)
		}
	}
	guestPeer, guestErr = p, bootGuest(t, p)
	if guestErr != nil {
		t.Fatal(guestErr)
	}
	return guestCtl
}

// bootGuest builds p's image and boots a fresh guest with it.
func bootGuest(t *testing.T, p *peer) error {
	start := time.Now()
	if out, err := kpike(p, 10*time.Minute, "build"); err != nil {
		return fmt.Errorf("kpike.sh build (%s): %v\n%s", p.name, err, out)
	}
	built := time.Now()
	guestUp = true
	// a fresh guest and namespace, also after a test binary that died
	if out, err := kpike(p, time.Minute, "down"); err != nil {
		return fmt.Errorf("kpike.sh down: %v\n%s", err, out)
	}
	if out, err := kpike(p, 3*time.Minute, "up"); err != nil {
		return fmt.Errorf("kpike.sh up (%s): %v\n%s", p.name, err, out)
	}
	t.Logf("%s guest: build %v, boot %v", p.name, built.Sub(start).Round(100*time.Millisecond),
		time.Since(built).Round(100*time.Millisecond))
	return dialGuest(p)
}

// dialGuest connects to the control channel of p's guest and checks that
// the guest runs p's image.
func dialGuest(p *peer) error {
	var err error
	guestCtl, err = kernelpeer.DialCtl(filepath.Join(buildDir(), p.dir, "ctl.sock"))
	if err == nil {
		_, err = guestCtl.Check("grep -qx " + p.name + " /etc/kp-ike")
	}
	return err
}

// A guest whose virtio-net transmit path stalls (seen in CI under TCG: the
// guest's nc hung mid-transfer and every later case failed on a dead guest)
// says nothing about gosec. A case whose traffic fails on such a guest is
// skipped (failTraffic) and runRetrying runs it once more on a fresh guest;
// a second stall fails it.
var (
	guestStalled bool // set by failTraffic; the guest is not to be talked to
	retrying     bool // this is the case's run on a fresh guest
)

// runRetrying runs f as subtest name and, when f found the guest stalled,
// boots a fresh guest and runs it once more as name+"-again".
func runRetrying(t *testing.T, name string, f func(t *testing.T)) {
	t.Helper()
	t.Run(name, f)
	if !guestStalled {
		return
	}
	restartGuest(t)
	guestStalled, retrying = false, true
	defer func() { retrying = false }()
	t.Run(name+"-again", f)
}

// failTraffic fails t with err, unless the guest has stopped sending and
// this is not already the retry: then the case is skipped, for
// runRetrying to run it again on a fresh guest.
func failTraffic(t *testing.T, err error) {
	t.Helper()
	if dead, why := guestSendsNothing(); dead {
		if !retrying {
			guestStalled = true
			t.Logf("%v", err)
			t.Skipf("the guest sends nothing any more (%s): its network stalled; the case runs again on a fresh guest", why)
		}
		t.Logf("the guest sends nothing any more (%s), again after a fresh guest", why)
	}
	t.Fatal(err)
}

// guestSendsNothing probes this package's guest (GuestSendsNothing).
func guestSendsNothing() (bool, string) {
	return kernelpeer.GuestSendsNothing(nsName, tapName, guestIP)
}

// restartGuest boots a fresh guest on the same tap (kpike.sh restart) and
// makes guest() return its control channel.
func restartGuest(t *testing.T) {
	t.Helper()
	if guestCtl != nil {
		guestCtl.Close()
	}
	guestCtl = nil
	if out, err := kpike(guestPeer, 3*time.Minute, "restart"); err != nil {
		guestErr = fmt.Errorf("kpike.sh restart: %v\n%s", err, out)
		t.Fatal(guestErr)
	}
	if guestErr = dialGuest(guestPeer); guestErr != nil {
		t.Fatal(guestErr)
	}
}

func TestMain(m *testing.M) {
	start := time.Now()
	code := m.Run()
	if guestCtl != nil {
		guestCtl.Run("ike stop")
		guestCtl.Close()
	}
	if guestUp {
		if out, err := kpike(guestPeer, time.Minute, "down"); err != nil {
			fmt.Fprintf(os.Stderr, "kpike.sh down: %v\n%s", err, out)
		}
	}
	for _, f := range []string{gosecBin, bulkFile} {
		if f != "" {
			os.RemoveAll(filepath.Dir(f))
		}
	}
	if guestUp {
		fmt.Fprintf(os.Stderr, "kpike: wall time %v\n", time.Since(start).Round(time.Second))
	}
	os.Exit(code)
}

// inNS runs a command in the host namespace.
func inNS(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", nsName}, args...)...).CombinedOutput()
	return string(out), err
}

var (
	buildOnce sync.Once
	gosecBin  string
	buildErr  error
)

// gosecBinary builds cmd/gosec once per test binary.
func gosecBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gosec-kpike-bin-")
		if err != nil {
			buildErr = err
			return
		}
		gosecBin = filepath.Join(dir, "gosec")
		cmd := exec.Command("go", "build", "-o", gosecBin, "./cmd/gosec")
		cmd.Dir = moduleRoot()
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/gosec: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return gosecBin
}

// gosecEstablished says whether the output of `gosec up CONN` reports
// the conn up (gosec words it as strongSwan's ipsec up does).
func gosecEstablished(out string) bool { return strings.Contains(out, "established successfully") }

// daemon is gosec running in the host namespace.
type daemon struct {
	bin, dir, socket, conf, secrets, log string
}

func startDaemon(t *testing.T, conf, secrets string) *daemon {
	t.Helper()
	dir := t.TempDir()
	d := &daemon{bin: gosecBinary(t), dir: dir, socket: filepath.Join(dir, "gosec.ctl"),
		conf: filepath.Join(dir, "ipsec.conf"), secrets: filepath.Join(dir, "ipsec.secrets"),
		log: filepath.Join(dir, "gosec.log")}
	if err := os.WriteFile(d.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.secrets, []byte(secrets), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := inNS(30*time.Second, d.bin, "start", "--config", d.conf, "--secrets", d.secrets,
		"--socket", d.socket, "--log", d.log)
	if err != nil {
		t.Fatalf("gosec start: %v\n%s\nlog:\n%s", err, out, d.tail(40))
	}
	t.Cleanup(func() {
		if out, err := d.ctl(15*time.Second, "stop"); err != nil {
			t.Errorf("gosec stop: %v\n%s", err, out)
		}
		if t.Failed() {
			t.Logf("gosec log (tail):\n%s", d.tail(60))
		}
	})
	return d
}

func (d *daemon) tail(n int) string {
	b, _ := os.ReadFile(d.log)
	l := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

func (d *daemon) ctl(timeout time.Duration, args ...string) (string, error) {
	return inNS(timeout, append(append([]string{d.bin}, args...), "--socket", d.socket)...)
}

func (d *daemon) mustCtl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := d.ctl(30*time.Second, args...)
	if err != nil {
		t.Fatalf("gosec %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

// saStatus, connStatus and statusAll are the parts of `gosec statusall
// --json` these tests read.
type saStatus struct {
	SPI     string            `json:"spi"`
	Dir     string            `json:"dir"`
	Proto   string            `json:"proto"`
	Mode    string            `json:"mode"`
	Packets uint64            `json:"packets"`
	Bytes   uint64            `json:"bytes"`
	Encap   bool              `json:"encap"`
	Drops   map[string]uint64 `json:"drops"`
}

type connStatus struct {
	Name  string     `json:"name"`
	State string     `json:"state"`
	SAs   []saStatus `json:"sas"`
}

type statusAll struct {
	Dataplane struct {
		Drops      map[string]uint64 `json:"drops"`
		SendErrors uint64            `json:"send_errors"`
	} `json:"dataplane"`
	Drops  map[string]uint64 `json:"drops"`
	Conns  []connStatus      `json:"conns"`
	ISAKMP []struct {
		Conn  string `json:"conn"`
		State string `json:"state"`
		NATT  bool   `json:"natt"`
	} `json:"isakmp"`
}

// isakmp returns the state of the conn's ISAKMP SA, or "" when it has none.
func (st statusAll) isakmp(conn string) string {
	for _, s := range st.ISAKMP {
		if s.Conn == conn {
			return s.State
		}
	}
	return ""
}

func (d *daemon) status(t *testing.T) statusAll {
	t.Helper()
	out := d.mustCtl(t, "statusall", "--json")
	var st statusAll
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("statusall --json: %v\n%s", err, out)
	}
	return st
}

// sa returns the conn's SA in direction dir ("in" or "out").
func (st statusAll) sa(conn, dir string) (saStatus, bool) {
	for _, c := range st.Conns {
		if c.Name != conn {
			continue
		}
		for _, sa := range c.SAs {
			if sa.Dir == dir {
				return sa, true
			}
		}
	}
	return saStatus{}, false
}

// nonzero lists the non-zero counters of every drop map of the daemon.
func (st statusAll) nonzero() []string {
	var bad []string
	add := func(where string, m map[string]uint64) {
		for k, v := range m {
			if v != 0 {
				bad = append(bad, fmt.Sprintf("%s:%s=%d", where, k, v))
			}
		}
	}
	add("daemon", st.Drops)
	add("dataplane", st.Dataplane.Drops)
	if st.Dataplane.SendErrors != 0 {
		bad = append(bad, fmt.Sprintf("dataplane:send_errors=%d", st.Dataplane.SendErrors))
	}
	for _, c := range st.Conns {
		for _, sa := range c.SAs {
			add(c.Name+"/"+sa.Dir, sa.Drops)
		}
	}
	return bad
}

// pushFile writes content to path in the guest (one control line).
func pushFile(c *kernelpeer.Ctl, path, content string, mode os.FileMode) error {
	_, err := c.Check(fmt.Sprintf("echo %s | base64 -d > %s && chmod %o %s",
		base64.StdEncoding.EncodeToString([]byte(content)), path, mode, path))
	return err
}

// pingHost sends count echo requests from the host namespace.
func pingHost(dst string, count int, opts ...string) error {
	args := append([]string{"ping", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "3"}, opts...)
	out, err := inNS(time.Duration(count+10)*time.Second, append(args, dst)...)
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v\n%s", dst, nsName, err, out)
	}
	return nil
}

// pingGuest sends count echo requests from the guest (the kernel's XFRM
// protects them).
func pingGuest(c *kernelpeer.Ctl, dst string, count int) error {
	rc, out, err := c.Run(fmt.Sprintf("ping -c %d -i 0.2 -W 3 %s", count, dst))
	if err != nil {
		return err
	}
	if rc != 0 {
		return fmt.Errorf("guest ping %s: rc %d\n%s", dst, rc, out)
	}
	return nil
}

// waitFor polls f every 100 ms until it returns true or d passes.
func waitFor(d time.Duration, f func() bool) bool {
	for end := time.Now().Add(d); ; {
		if f() {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// bulk is the transfer payload; its SHA-256 is the check on both ends.
var (
	bulkOnce sync.Once
	bulkFile string
	bulkSum  string
	bulkErr  error
)

func bulk(t *testing.T, size int) (string, string) {
	t.Helper()
	bulkOnce.Do(func() {
		data := make([]byte, size)
		rand.NewChaCha8([32]byte{'k', 'i'}).Read(data)
		dir, err := os.MkdirTemp("", "gosec-kpike-data-")
		if err != nil {
			bulkErr = err
			return
		}
		bulkFile = filepath.Join(dir, "bulk")
		bulkErr = os.WriteFile(bulkFile, data, 0o600)
		s := sha256.Sum256(data)
		bulkSum = hex.EncodeToString(s[:])
	})
	if bulkErr != nil {
		t.Fatal(bulkErr)
	}
	return bulkFile, bulkSum
}

// transferToGuest sends file over TCP from the host namespace to dst:port
// in the guest (busybox nc), which stores it in /tmp/in and checks its
// SHA-256 with busybox sha256sum.
func transferToGuest(c *kernelpeer.Ctl, file, sum, dst string, port int) error {
	if _, err := c.Check("rm -f /tmp/in /tmp/in.sum /tmp/nc.err"); err != nil {
		return err
	}
	if _, err := c.Check(fmt.Sprintf("(nc -l -p %d > /tmp/in 2>/tmp/nc.err; sha256sum /tmp/in > /tmp/in.sum) </dev/null >/dev/null 2>&1 &", port)); err != nil {
		return err
	}
	listening := waitFor(5*time.Second, func() bool {
		out, err := c.Check(fmt.Sprintf("netstat -ltn | grep -c ':%d ' || true", port))
		return err == nil && strings.TrimSpace(out) != "0"
	})
	if !listening {
		return fmt.Errorf("guest nc is not listening on %d", port)
	}
	if out, err := inNS(3*time.Minute, "socat", "-u", "OPEN:"+file, fmt.Sprintf("TCP:%s:%d,connect-timeout=10", dst, port)); err != nil {
		return fmt.Errorf("socat to the guest %s:%d: %v\n%s", dst, port, err, out)
	}
	var got string
	waitFor(60*time.Second, func() bool {
		out, err := c.Check("cat /tmp/in.sum 2>/dev/null || true")
		if f := strings.Fields(out); err == nil && len(f) > 0 {
			got = f[0]
			return true
		}
		return false
	})
	if got != sum {
		size, _ := c.Check("wc -c < /tmp/in; cat /tmp/nc.err")
		return fmt.Errorf("guest received data with SHA-256 %q (size %s), want %s", got, strings.TrimSpace(size), sum)
	}
	return nil
}

// transferFromGuest sends the guest's /tmp/in (left by transferToGuest)
// back to a socat listener in the host namespace and checks the SHA-256.
func transferFromGuest(c *kernelpeer.Ctl, sum, listen, dst string, port int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	lis := exec.CommandContext(ctx, "ip", "netns", "exec", nsName, "socat", "-u",
		fmt.Sprintf("TCP-LISTEN:%d,reuseaddr,bind=%s", port, listen), "STDOUT")
	var lerr bytes.Buffer
	h := sha256.New()
	lis.Stdout = h
	lis.Stderr = &lerr
	if err := lis.Start(); err != nil {
		return err
	}
	listening := waitFor(5*time.Second, func() bool {
		out, _ := inNS(5*time.Second, "ss", "-ltn", "sport", fmt.Sprintf("= :%d", port))
		return strings.Contains(out, fmt.Sprintf(":%d", port))
	})
	if !listening {
		lis.Process.Kill()
		lis.Wait()
		return fmt.Errorf("socat is not listening on %d", port)
	}
	if out, err := c.Check(fmt.Sprintf("nc %s %d < /tmp/in", dst, port)); err != nil {
		lis.Process.Kill()
		lis.Wait()
		return fmt.Errorf("guest nc to %s:%d: %v\n%s", dst, port, err, out)
	}
	if err := lis.Wait(); err != nil {
		return fmt.Errorf("socat listener: %v\n%s", err, lerr.String())
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != sum {
		return fmt.Errorf("host received data with SHA-256 %s, want %s", got, sum)
	}
	return nil
}
