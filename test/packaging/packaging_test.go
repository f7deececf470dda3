// Package packaging tests what an administrator installs: the Debian
// package (installed, run and purged in a throw-away root), the systemd
// unit (systemd-analyze verify and security) and the daemon's systemd
// notifications (READY, WATCHDOG, STOPPING).
package packaging

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil"
)

func moduleRoot(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Clean(filepath.Join(wd, "..", ".."))
}

func need(t testing.TB, tools ...string) {
	t.Helper()
	for _, tool := range tools {
		_, err := exec.LookPath(tool)
		testutil.Need(t, err == nil, tool+" is not installed (scripts/deps.sh installs it)")
	}
}

// TestDebInstallRunPurge builds the package with `make deb`'s script and
// has testdata/deb-in-root.sh install it into a fresh copy-on-write root
// of this Debian system, check the gosec system user and the secrets
// file, verify the installed unit with systemd-analyze (its man page
// installed too), run the installed binary with the unit's command line
// and privileges (user gosec, ambient capabilities only) in a network
// namespace, and purge it.
func TestDebInstallRunPurge(t *testing.T) {
	testutil.NeedRoot(t)
	need(t, "dpkg-deb", "dpkg", "systemd-analyze", "unshare", "setpriv", "useradd", "man")
	root := moduleRoot(t)
	deb := buildDeb(t)
	if info, err := exec.Command("dpkg-deb", "--info", deb).CombinedOutput(); err != nil || !strings.Contains(string(info), "Package: gosec") {
		t.Fatalf("dpkg-deb --info: %v\n%s", err, info)
	}
	log, err := runDebScript(t, root, "deb-in-root.sh", deb)
	t.Logf("deb-in-root.sh:\n%s", log)
	if err != nil {
		t.Fatalf("deb-in-root.sh: %v", err)
	}
	steps := regexp.MustCompile(`(?m)^STEP (\S+)$`).FindAllStringSubmatch(log, -1)
	var got []string
	for _, s := range steps {
		got = append(got, s[1])
	}
	if want := "fresh install user verify conf-check run purge done"; strings.Join(got, " ") != want {
		t.Fatalf("steps %q, want %q", got, want)
	}
	// What the installed daemon reported about itself while it ran.
	// Started with CAP_BPF as the unit does, it gave it up once its eBPF
	// programs were loaded (CAP_BPF is 39; the bounding set keeps it, as
	// dropping from it would take CAP_SETPCAP), and they work: the ring
	// takes only the inbound SAs' SPIs and the TUN has its queues.
	for _, want := range []string{"CapEff:\t0000000000003400", "CapBnd:\t0000008000003400", "CapAmb:\t0000000000003400", "NoNewPrivs:\t1",
		`"msg":"gosec started"`, `"msg":"start-up capabilities dropped","capabilities":"cap_bpf"`, "ring (inbound SAs' SPIs only)", "queues, steered per destination", "stopping gosec"} {
		if !strings.Contains(log, want) {
			t.Errorf("the run step does not show %q", want)
		}
	}
}

// buildDeb builds the package with `make deb`'s script into a temporary
// directory and returns its path.
func buildDeb(t *testing.T) string {
	t.Helper()
	root := moduleRoot(t)
	build := exec.Command(filepath.Join(root, "scripts", "mkdeb.sh"), t.TempDir())
	build.Dir = root
	b, err := build.CombinedOutput()
	if err != nil {
		t.Fatalf("mkdeb.sh: %v\n%s", err, b)
	}
	return strings.TrimSpace(string(b))
}

// TestSystemdNspawn starts the packaged unit under a real systemd:
// testdata/deb-in-nspawn.sh boots systemd (systemd-nspawn, basic.target)
// in a container whose root is a copy-on-write overlay of this Debian
// system, installs the package there and runs systemctl start (Type=notify:
// active only after READY=1), watches the watchdog's keep-alives (the
// test's drop-in sets WatchdogSec=4s), checks the running daemon's
// credentials, capabilities, no_new_privs, seccomp filter and read-only
// /usr, adds a conn and runs systemctl reload (same main PID, the conn
// listed), and systemctl stop (inactive, Result=success). Skipped (failed
// under CI=true) when systemd cannot be booted in a container here. A
// container whose systemd does not come up is tried once more in a fresh
// one first. (Boots that seemed to stall for 60 s, state "" and nothing
// on the console, twice on a fresh machine, were the script asking
// nspawn's short-lived outer child instead of the container's init: it
// now looks for the child that is PID 1 in its own namespace.)
func TestSystemdNspawn(t *testing.T) {
	testutil.NeedRoot(t)
	need(t, "systemd-nspawn", "nsenter", "unshare", "dpkg-deb", "od")
	root := moduleRoot(t)
	deb := buildDeb(t)
	noBoot := regexp.MustCompile(`(?m)^NOBOOT (.*)$`)
	var (
		log string
		err error
	)
	for attempt := 1; ; attempt++ {
		log, err = runDebScript(t, root, "deb-in-nspawn.sh", deb)
		t.Logf("deb-in-nspawn.sh (attempt %d):\n%s", attempt, log)
		m := noBoot.FindStringSubmatch(log)
		if m == nil {
			break
		}
		if attempt == 2 {
			testutil.Need(t, false, "systemd-nspawn cannot boot systemd here (twice): "+m[1])
		}
	}
	if err != nil {
		t.Fatalf("deb-in-nspawn.sh: %v", err)
	}
	var got []string
	for _, s := range regexp.MustCompile(`(?m)^STEP (\S+)$`).FindAllStringSubmatch(log, -1) {
		got = append(got, s[1])
	}
	if want := "boot install start hardening watchdog reload stop done"; strings.Join(got, " ") != want {
		t.Fatalf("steps %q, want %q", got, want)
	}
	for _, want := range []string{
		"Type=notify", "StatusText=gosec ", "User=gosec",
		// Only the three capabilities (NET_BIND_SERVICE 10, NET_ADMIN 12,
		// NET_RAW 13), ambient from systemd; no_new_privs; a seccomp filter.
		// CAP_BPF (39) for the start-up only: gone from the effective,
		// permitted and ambient sets once the eBPF programs are loaded.
		"CapEff:\t0000000000003400", "CapPrm:\t0000000000003400", "CapBnd:\t0000008000003400", "CapAmb:\t0000000000003400",
		"NoNewPrivs:\t1", "Seccomp:\t2", "start-up capabilities dropped",
		"ring (inbound SAs' SPIs only)", "queues, steered per destination",
		"Read-only file system", "hp-vpn: down", "configuration reloaded: 1 conns",
		"after stop: inactive, Result=success", "gosec stopping",
	} {
		if !strings.Contains(log, want) {
			t.Errorf("the log does not show %q", want)
		}
	}
	if regexp.MustCompile(`(?m)^Uid:\t0\b`).MatchString(log) {
		t.Error("the service runs as root")
	}
	// ProtectKernelTunables= makes /proc/sys read-only: the TUN must still
	// get no IPv6, or the kernel's router solicitations and MLD reports
	// come out of it as "malformed" drops in the log.
	if strings.Contains(log, "reason=malformed") {
		t.Error("the idle daemon dropped malformed packets (IPv6 on its TUN device?)")
	}
}

// TestSystemdUnit: dist/gosec.service passes systemd-analyze verify
// without a word, and its exposure score (systemd-analyze security) stays
// what the README says.
func TestSystemdUnit(t *testing.T) {
	need(t, "systemd-analyze", "man")
	root := moduleRoot(t)
	dir := t.TempDir()
	// verify checks that ExecStart's binary and the man page in
	// Documentation= exist: point them at this tree's.
	bin := filepath.Join(dir, "gosec")
	build := exec.Command("go", "build", "-o", bin, "./cmd/gosec")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	unit, err := os.ReadFile(filepath.Join(root, "dist", "gosec.service"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(unit), "/usr/sbin/gosec ") {
		t.Fatal("the unit does not start /usr/sbin/gosec")
	}
	path := filepath.Join(dir, "gosec.service")
	if err := os.WriteFile(path, []byte(strings.ReplaceAll(string(unit), "/usr/sbin/gosec", bin)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, page := range []struct{ section, name string }{{"man8", "gosec.8"}, {"man5", "gosec.conf.5"}} {
		man := filepath.Join(dir, "man", page.section)
		if err := os.MkdirAll(man, 0o755); err != nil {
			t.Fatal(err)
		}
		text, err := os.ReadFile(filepath.Join(root, "dist", page.name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(man, page.name), text, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	env := append(os.Environ(), "MANPATH="+filepath.Join(dir, "man"), "SYSTEMD_LOG_LEVEL=notice")
	verify := exec.Command("systemd-analyze", "verify", path)
	verify.Env = env
	b, err := verify.CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(b))) != 0 {
		t.Fatalf("systemd-analyze verify: %v\n%s", err, b)
	}
	for _, directive := range []string{"Type=notify", "WatchdogSec=", "NoNewPrivileges=yes", "ProtectSystem=strict", "ProtectHome=yes",
		"PrivateTmp=yes", "RestrictAddressFamilies=", "SystemCallFilter=", "LimitCORE=0",
		"CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE CAP_BPF\n", "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE CAP_BPF\n",
		"SystemCallFilter=bpf capset\n"} {
		if !strings.Contains(string(unit), directive) {
			t.Errorf("the unit lacks %s", directive)
		}
	}
	sec := exec.Command("systemd-analyze", "security", "--offline=true", path)
	sec.Env = env
	b, _ = sec.CombinedOutput()
	m := regexp.MustCompile(`Overall exposure level for gosec.service: ([0-9.]+)`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("systemd-analyze security:\n%s", b)
	}
	score, _ := strconv.ParseFloat(string(m[1]), 64)
	t.Logf("systemd-analyze security: exposure %.1f", score)
	// The README quotes 2.2 (1.9 before AF_PACKET was allowed for sending
	// ESP/AH, 2.1 before CAP_BPF and bpf() for the start-up); a change that
	// weakens the unit further fails here.
	if score > 2.2 {
		t.Fatalf("exposure %.1f is worse than the 2.2 the README reports:\n%s", score, b)
	}
}

// TestSystemdNotify runs the daemon in a network namespace the way
// systemd's Type=notify with WatchdogSec=1s would: NOTIFY_SOCKET and
// WATCHDOG_USEC set. READY=1 comes once the control socket answers,
// WATCHDOG=1 about every half second, STOPPING=1 when it stops.
func TestSystemdNotify(t *testing.T) {
	testutil.NeedRoot(t)
	need(t, "ip")
	root := moduleRoot(t)
	dir := t.TempDir()
	bin := filepath.Join(dir, "gosec")
	build := exec.Command("go", "build", "-o", bin, "./cmd/gosec")
	build.Dir = root
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, b)
	}
	const ns = "gsp-sd"
	exec.Command("ip", "netns", "del", ns).Run()
	if b, err := exec.Command("ip", "netns", "add", ns).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v\n%s", err, b)
	}
	defer exec.Command("ip", "netns", "del", ns).Run()
	exec.Command("ip", "-n", ns, "link", "set", "lo", "up").Run()
	conf := filepath.Join(dir, "ipsec.conf")
	if err := os.WriteFile(conf, []byte("config setup\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	notify := filepath.Join(dir, "notify")
	sock, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notify, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer sock.Close()
	type msg struct {
		text string
	}
	var mu sync.Mutex
	var msgs []msg
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := sock.Read(buf)
			if err != nil {
				return
			}
			mu.Lock()
			msgs = append(msgs, msg{string(buf[:n])})
			mu.Unlock()
		}
	}()
	socket := filepath.Join(dir, "gosec.ctl")
	ctl := func(args ...string) (string, error) {
		b, err := exec.Command("ip", append([]string{"netns", "exec", ns, bin}, append(args, "--socket", socket)...)...).CombinedOutput()
		return string(b), err
	}
	// WATCHDOG_PID is the daemon itself: ip netns exec execs gosec in
	// the same process, so the PID of ip is gosec's.
	daemon := exec.Command("ip", "netns", "exec", ns, bin, "start", "--nofork", "--config", conf, "--socket", socket)
	daemon.Env = append(os.Environ(), "NOTIFY_SOCKET="+notify, "WATCHDOG_USEC=1000000")
	var logBuf strings.Builder
	daemon.Stderr = &logBuf
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { daemon.Wait(); close(done) }()
	defer func() {
		daemon.Process.Kill()
		<-done
	}()
	// READY=1 tells systemd the service is up: from then on the control
	// socket must answer at the first try.
	readySeen := func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			if strings.HasPrefix(m.text, "READY=1\n") {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(20 * time.Second); !readySeen(); {
		if time.Now().After(deadline) {
			t.Fatalf("no READY=1 in 20 s:\n%s", logBuf.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if out, err := ctl("status"); err != nil {
		t.Fatalf("gosec status right after READY=1: %v\n%s", err, out)
	}
	time.Sleep(2200 * time.Millisecond)
	if out, err := ctl("stop"); err != nil {
		t.Fatalf("gosec stop: %v\n%s", err, out)
	}
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("the daemon did not exit")
	}
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	var ready, watchdogs, stopping int
	for _, m := range msgs {
		switch {
		case strings.HasPrefix(m.text, "READY=1\n"):
			ready++
			if !strings.Contains(m.text, fmt.Sprintf("MAINPID=%d", daemon.Process.Pid)) {
				t.Errorf("READY without the daemon's MAINPID: %q", m.text)
			}
		case m.text == "WATCHDOG=1":
			watchdogs++
		case m.text == "STOPPING=1":
			stopping++
		default:
			t.Errorf("unexpected notification %q", m.text)
		}
	}
	t.Logf("%d notifications: READY %d, WATCHDOG %d, STOPPING %d", len(msgs), ready, watchdogs, stopping)
	if ready != 1 || stopping != 1 {
		t.Fatalf("READY=1 %d times, STOPPING=1 %d times; log:\n%s", ready, stopping, logBuf.String())
	}
	// 2.2 s at one keep-alive per 0.5 s: 4, give or take a loaded machine.
	if watchdogs < 3 {
		t.Fatalf("only %d WATCHDOG=1 in 2.2 s with WatchdogSec=1s", watchdogs)
	}
}

// runDebScript runs testdata/SCRIPT with deb and a work directory of its
// own (removed afterwards), for at most three minutes, and returns its
// output.
func runDebScript(t *testing.T, root, script, deb string) (string, error) {
	t.Helper()
	work, err := os.MkdirTemp("", "gsp-"+strings.TrimSuffix(script, ".sh")+"-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(work)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	b, err := exec.CommandContext(ctx, filepath.Join(root, "test", "packaging", "testdata", script), deb, work).CombinedOutput()
	return string(b), err
}
