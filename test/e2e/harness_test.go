// Package e2e runs gosec daemons in network namespaces and checks that
// traffic crosses their tunnels. Every test needs root; under CI=true a
// missing prerequisite fails instead of skipping.
package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
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

// moduleRoot is the repository root (two levels up from this package).
func moduleRoot(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}

var (
	buildOnce sync.Once
	buildBin  string
	buildErr  error
)

// gosecBinary builds cmd/gosec once per test binary.
func gosecBinary(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "gosec-e2e-bin-")
		if err != nil {
			buildErr = err
			return
		}
		buildBin = filepath.Join(dir, "gosec")
		cmd := exec.Command("go", "build", "-o", buildBin, "./cmd/gosec")
		cmd.Dir = moduleRoot(t)
		// As make build: no cgo, so that --user can change every
		// thread's credentials (internal/privs).
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildBin
}

// topo is the site-to-site topology of scripts/topo.sh.
type topo struct {
	t      testing.TB
	prefix string
	root   string
}

func (tp *topo) ns(name string) string { return tp.prefix + name }

// newTopo builds the topology with namespace prefix; opts are extra
// arguments of scripts/topo.sh up (wan-default: gateways route by default
// out of their WAN link, so a leak reaches the wire).
func newTopo(t testing.TB, prefix string, opts ...string) *topo {
	t.Helper()
	testutil.NeedRoot(t)
	for _, tool := range []string{"ip", "ping", "socat", "nft"} {
		_, err := exec.LookPath(tool)
		testutil.Need(t, err == nil, tool+" is not installed (scripts/deps.sh installs it)")
	}
	tp := &topo{t: t, prefix: prefix, root: moduleRoot(t)}
	script := filepath.Join(tp.root, "scripts", "topo.sh")
	if out, err := exec.Command(script, append([]string{"up", prefix}, opts...)...).CombinedOutput(); err != nil {
		t.Fatalf("topo up: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command(script, "down", prefix).Run() })
	return tp
}

// run runs a command inside namespace ns and returns its combined output.
func (tp *topo) run(ns string, timeout time.Duration, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (tp *topo) must(ns string, args ...string) string {
	tp.t.Helper()
	out, err := tp.run(ns, 60*time.Second, args...)
	if err != nil {
		tp.t.Fatalf("%s: %s: %v\n%s", ns, strings.Join(args, " "), err, out)
	}
	return out
}

// daemon is one gosec daemon in a namespace.
type daemon struct {
	tp     *topo
	ns     string
	bin    string
	dir    string
	socket string
	conf   string
	pid    int      // of the last start (from gosec start's output)
	extra  []string // more `gosec start` arguments
}

// startDaemon writes conf (and secrets) and starts gosec in namespace ns;
// extra are more `gosec start` arguments.
func (tp *topo) startDaemon(ns, conf, secrets string, extra ...string) *daemon {
	tp.t.Helper()
	d := tp.newDaemon(ns, conf, secrets)
	d.extra = extra
	if err := d.launch(); err != nil {
		tp.t.Fatal(err)
	}
	return d
}

// newDaemon writes conf (and secrets) for a daemon in namespace ns, which
// launch starts; the test's cleanup stops it.
func (tp *topo) newDaemon(ns, conf, secrets string) *daemon {
	tp.t.Helper()
	dir := tp.t.TempDir()
	d := &daemon{tp: tp, ns: ns, bin: gosecBinary(tp.t), dir: dir,
		socket: filepath.Join(dir, "gosec.ctl"), conf: filepath.Join(dir, "ipsec.conf")}
	if err := os.WriteFile(d.conf, []byte(conf), 0o600); err != nil {
		tp.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "ipsec.secrets"), []byte(secrets), 0o600); err != nil {
		tp.t.Fatal(err)
	}
	tp.t.Cleanup(func() {
		d.ctl(10*time.Second, "stop")
		if tp.t.Failed() {
			log, _ := os.ReadFile(filepath.Join(dir, "gosec.log"))
			tp.t.Logf("gosec log of %s:\n%s", ns, tail(string(log), 60))
		}
	})
	return d
}

// launch runs gosec start with the daemon's files and records its pid.
func (d *daemon) launch() error {
	args := append([]string{d.bin, "start", "--config", d.conf, "--socket", d.socket,
		"--log", filepath.Join(d.dir, "gosec.log")}, d.extra...)
	// GOSEC_E2E_START_ARGS runs a suite over another configuration of the
	// daemon, for example the AF_PACKET receive ring: --rxring.
	args = append(args, strings.Fields(os.Getenv("GOSEC_E2E_START_ARGS"))...)
	out, err := d.tp.run(d.ns, 30*time.Second, args...)
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(d.dir, "gosec.log"))
		return fmt.Errorf("gosec start in %s: %v\n%s\nlog:\n%s", d.ns, err, out, tail(string(log), 60))
	}
	d.pid = 0
	if i := strings.Index(out, "(pid "); i >= 0 {
		fmt.Sscanf(out[i:], "(pid %d", &d.pid)
	}
	return nil
}

// ctl runs a gosec CLI command against this daemon.
func (d *daemon) ctl(timeout time.Duration, args ...string) (string, error) {
	all := append([]string{d.bin}, args...)
	all = append(all, "--socket", d.socket)
	return d.tp.run(d.ns, timeout, all...)
}

func (d *daemon) mustCtl(args ...string) string {
	d.tp.t.Helper()
	out, err := d.ctl(30*time.Second, args...)
	if err != nil {
		d.tp.t.Fatalf("%s: gosec %s: %v\n%s", d.ns, strings.Join(args, " "), err, out)
	}
	return out
}

func tail(s string, lines int) string {
	l := strings.Split(s, "\n")
	if len(l) > lines {
		l = l[len(l)-lines:]
	}
	return strings.Join(l, "\n")
}

// ping sends count echo requests from ns to dst and reports success.
func (tp *topo) ping(ns, dst string, count int) error {
	out, err := tp.run(ns, time.Duration(count+5)*time.Second, "ping", "-c", fmt.Sprint(count), "-i", "0.2", "-W", "2", dst)
	if err != nil {
		return fmt.Errorf("ping %s from %s: %v\n%s", dst, ns, err, out)
	}
	return nil
}

// transfer sends size random bytes over TCP from srcNS to dst:port (a
// socat listener in dstNS) and checks that the SHA-256 on the far side
// matches.
func (tp *topo) transfer(srcNS, dstNS, dst string, size int) error {
	dir := tp.t.TempDir()
	in := filepath.Join(dir, "in")
	out := filepath.Join(dir, "out")
	data := make([]byte, size)
	r := rand.NewChaCha8([32]byte{byte(size), 7})
	r.Read(data)
	if err := os.WriteFile(in, data, 0o600); err != nil {
		return err
	}
	want := sha256.Sum256(data)
	port := fmt.Sprint(20000 + rand.IntN(20000))
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()
	lis := exec.CommandContext(ctx, "ip", "netns", "exec", dstNS, "socat", "-u", "TCP-LISTEN:"+port+",reuseaddr", "CREATE:"+out)
	var lerr bytes.Buffer
	lis.Stderr = &lerr
	if err := lis.Start(); err != nil {
		return err
	}
	// Wait for the listener.
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		o, _ := tp.run(dstNS, 5*time.Second, "ss", "-ltn", "sport", "= :"+port)
		if strings.Contains(o, ":"+port) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	snd := exec.CommandContext(ctx, "ip", "netns", "exec", srcNS, "socat", "-u", "OPEN:"+in, "TCP:"+dst+":"+port+",connect-timeout=5")
	if o, err := snd.CombinedOutput(); err != nil {
		lis.Process.Kill()
		lis.Wait()
		return fmt.Errorf("socat send to %s: %v\n%s", dst, err, o)
	}
	if err := lis.Wait(); err != nil {
		return fmt.Errorf("socat listen: %v\n%s", err, lerr.String())
	}
	got, err := os.ReadFile(out)
	if err != nil {
		return err
	}
	if sum := sha256.Sum256(got); sum != want {
		return fmt.Errorf("transfer of %d bytes: received %d bytes with SHA-256 %s, want %s",
			size, len(got), hex.EncodeToString(sum[:8]), hex.EncodeToString(want[:8]))
	}
	return nil
}
