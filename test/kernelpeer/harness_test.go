package kernelpeer

import (
	"bytes"
	"context"
	"crypto/sha256"
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
)

// The topology of kpeer.sh with this package's own names.
const (
	nsName    = "gkp-host"
	tapName   = "gkp-tap0"
	hostIP    = "192.0.2.1"
	guestIP   = "192.0.2.2"
	hostNet   = "10.1.0.0/24"
	guestNet  = "10.2.0.0/24"
	hostInner = "10.1.0.1"
	guestIn   = "10.2.0.1"
)

func pkgDir() string {
	wd, err := os.Getwd()
	if err != nil {
		panic(err)
	}
	return wd
}

func moduleRoot() string { return filepath.Clean(filepath.Join(pkgDir(), "..", "..")) }

func buildDir() string {
	if d := os.Getenv("KPEER_BUILD"); d != "" {
		return d
	}
	return filepath.Join(pkgDir(), "build")
}

// kpeerEnv is the environment of kpeer.sh: this package's namespace and tap.
func kpeerEnv() []string {
	return append(os.Environ(), "NS="+nsName, "TAP="+tapName, "LAN=gkp-lan0",
		"HOST_IP="+hostIP, "GUEST_IP="+guestIP, "KPEER_BUILD="+buildDir())
}

var (
	guestOnce sync.Once
	guestCtl  *Ctl
	guestErr  error  // boot failure: the tests fail
	guestSkip string // missing prerequisite: the tests skip (fail under CI=true)
	guestUp   bool
	bootTime  time.Duration
	// wireInCounter counts the inbound IPv4 on the tap (wirein_test.go).
	wireInCounter *wireIn
)

// prerequisites returns why the guest cannot run here, or "".
func prerequisites() string {
	if os.Geteuid() != 0 {
		return "needs root (network namespaces, tap, raw sockets)"
	}
	for tool, pkg := range map[string]string{
		"qemu-system-x86_64": "qemu-system-x86", "gcc": "gcc", "cpio": "cpio", "depmod": "kmod",
		"nft": "nftables", "ip": "iproute2", "socat": "socat", "busybox": "busybox-static",
		"dpkg-deb": "dpkg", "apt-get": "apt",
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

// kpeer runs kpeer.sh with this package's names.
func kpeer(timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(pkgDir(), "kpeer.sh"), args...)
	cmd.Env = kpeerEnv()
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// guest boots the kernel-peer guest once per test binary (TestMain takes it
// down) and returns its control channel.
func guest(t *testing.T) *Ctl {
	t.Helper()
	testutil.NeedRoot(t)
	guestOnce.Do(func() {
		if guestSkip = prerequisites(); guestSkip != "" {
			return
		}
		start := time.Now()
		if out, err := kpeer(10*time.Minute, "build"); err != nil {
			guestErr = fmt.Errorf("kpeer.sh build: %v\n%s", err, out)
			return
		}
		guestUp = true
		// a fresh guest and namespace, also after a test binary that died
		if out, err := kpeer(time.Minute, "down"); err != nil {
			guestErr = fmt.Errorf("kpeer.sh down: %v\n%s", err, out)
			return
		}
		if out, err := kpeer(3*time.Minute, "up"); err != nil {
			guestErr = fmt.Errorf("kpeer.sh up: %v\n%s", err, out)
			return
		}
		bootTime = time.Since(start)
		if wireInCounter, guestErr = attachWireIn(nsName, tapName); guestErr != nil {
			return
		}
		guestCtl, guestErr = DialCtl(filepath.Join(buildDir(), "ctl.sock"))
		if guestErr == nil {
			_, guestErr = guestCtl.Check("uname -r")
		}
	})
	testutil.Need(t, guestSkip == "", guestSkip)
	if guestErr != nil {
		t.Fatal(guestErr)
	}
	return guestCtl
}

// restartGuest boots a fresh guest on the same tap (kpeer.sh restart;
// the namespace and the gosec daemon in it stay) and returns its control
// channel, which guest() returns from then on.
func restartGuest(t *testing.T) *Ctl {
	t.Helper()
	if guestCtl != nil {
		guestCtl.Close()
	}
	guestCtl = nil
	if out, err := kpeer(3*time.Minute, "restart"); err != nil {
		guestErr = fmt.Errorf("kpeer.sh restart: %v\n%s", err, out)
		t.Fatal(guestErr)
	}
	guestCtl, guestErr = DialCtl(filepath.Join(buildDir(), "ctl.sock"))
	if guestErr == nil {
		_, guestErr = guestCtl.Check("uname -r")
	}
	if guestErr != nil {
		t.Fatal(guestErr)
	}
	return guestCtl
}

// guestSendsNothing probes this package's guest (GuestSendsNothing).
func guestSendsNothing() (bool, string) { return GuestSendsNothing(nsName, tapName, guestIP) }

func TestMain(m *testing.M) {
	code := m.Run()
	if guestCtl != nil {
		guestCtl.Close()
	}
	if wireInCounter != nil {
		wireInCounter.Close()
	}
	if guestUp {
		if out, err := kpeer(time.Minute, "down"); err != nil {
			fmt.Fprintf(os.Stderr, "kpeer.sh down: %v\n%s", err, out)
		}
	}
	for _, f := range []string{gosecBin, bulkFile} {
		if f != "" {
			os.RemoveAll(filepath.Dir(f))
		}
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
		dir, err := os.MkdirTemp("", "gosec-kpeer-bin-")
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

// daemon is gosec running in the host namespace.
type daemon struct {
	bin, dir, socket, conf, secrets, log string
}

func startDaemon(t *testing.T, conf string) *daemon {
	t.Helper()
	dir := t.TempDir()
	d := &daemon{bin: gosecBinary(t), dir: dir, socket: filepath.Join(dir, "gosec.ctl"),
		conf: filepath.Join(dir, "ipsec.conf"), secrets: filepath.Join(dir, "ipsec.secrets"),
		log: filepath.Join(dir, "gosec.log")}
	if err := os.WriteFile(d.conf, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.secrets, nil, 0o600); err != nil {
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
	Name      string     `json:"name"`
	State     string     `json:"state"`
	SAs       []saStatus `json:"sas"`
	Cleartext uint64     `json:"cleartext_dropped"`
}

type statusAll struct {
	Dataplane struct {
		Drops      map[string]uint64 `json:"drops"`
		SendErrors uint64            `json:"send_errors"`
	} `json:"dataplane"`
	Drops map[string]uint64 `json:"drops"`
	Conns []connStatus      `json:"conns"`
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

// drops sums every drop counter of the daemon (global and data plane).
func (st statusAll) drops() map[string]uint64 {
	m := map[string]uint64{}
	for k, v := range st.Drops {
		m["daemon:"+k] += v
	}
	for k, v := range st.Dataplane.Drops {
		m["dataplane:"+k] += v
	}
	m["dataplane:send_errors"] = st.Dataplane.SendErrors
	return m
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
// encrypts them).
func pingGuest(c *Ctl, dst string, count int, opts ...string) error {
	rc, out, err := c.Run(fmt.Sprintf("ping -c %d -i 0.2 -W 3 %s %s", count, strings.Join(opts, " "), dst))
	if err != nil {
		return err
	}
	if rc != 0 {
		return fmt.Errorf("guest ping %s: rc %d\n%s", dst, rc, out)
	}
	return nil
}

// bulkData is the transfer payload, the same for every case; its SHA-256
// is the check on both ends.
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
		rand.NewChaCha8([32]byte{'k', 'p'}).Read(data)
		dir, err := os.MkdirTemp("", "gosec-kpeer-data-")
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

// transferToGuest sends the bulk file over TCP from the host namespace to
// dst:port in the guest (busybox nc), which stores it in /tmp/in and
// checks its SHA-256 with busybox sha256sum.
func transferToGuest(c *Ctl, file, sum, dst string, port int) error {
	if _, err := c.Check("rm -f /tmp/in /tmp/in.sum /tmp/nc.err"); err != nil {
		return err
	}
	if _, err := c.Check(fmt.Sprintf("(nc -l -p %d > /tmp/in 2>/tmp/nc.err; sha256sum /tmp/in > /tmp/in.sum) </dev/null >/dev/null 2>&1 &", port)); err != nil {
		return err
	}
	// wait for the listener
	for i := 0; ; i++ {
		out, err := c.Check(fmt.Sprintf("netstat -ltn | grep -c ':%d ' || true", port))
		if err != nil {
			return err
		}
		if strings.TrimSpace(out) != "0" {
			break
		}
		if i > 50 {
			return fmt.Errorf("guest nc is not listening on %d", port)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := inNS(3*time.Minute, "socat", "-u", "OPEN:"+file, fmt.Sprintf("TCP:%s:%d,connect-timeout=10", dst, port)); err != nil {
		return fmt.Errorf("socat to the guest %s:%d: %v\n%s", dst, port, err, out)
	}
	var got string
	for i := 0; ; i++ {
		out, err := c.Check("cat /tmp/in.sum 2>/dev/null || true")
		if err != nil {
			return err
		}
		if f := strings.Fields(out); len(f) > 0 {
			got = f[0]
			break
		}
		if i > 600 {
			return fmt.Errorf("guest never finished receiving")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got != sum {
		size, _ := c.Check("wc -c < /tmp/in; cat /tmp/nc.err")
		return fmt.Errorf("guest received data with SHA-256 %s (size %s), want %s", got, strings.TrimSpace(size), sum)
	}
	return nil
}

// transferFromGuest sends the guest's /tmp/in (left by transferToGuest)
// back to a socat listener in the host namespace and checks the SHA-256.
func transferFromGuest(c *Ctl, sum, listen, dst string, port int) error {
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
	for i := 0; ; i++ {
		out, _ := inNS(5*time.Second, "ss", "-ltn", "sport", fmt.Sprintf("= :%d", port))
		if strings.Contains(out, fmt.Sprintf(":%d", port)) {
			break
		}
		if i > 100 {
			lis.Process.Kill()
			lis.Wait()
			return fmt.Errorf("socat is not listening on %d", port)
		}
		time.Sleep(50 * time.Millisecond)
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
