package privs

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/gosec-ipsec/gosec/internal/testutil"
)

func TestLookup(t *testing.T) {
	tests := []struct {
		name     string
		uid, gid int
		err      bool
	}{
		{"root", 0, 0, false},
		{"0", 0, 0, false},
		{"no-such-user-gosec-test", 0, 0, true},
	}
	for _, tt := range tests {
		uid, gid, err := Lookup(tt.name)
		if (err != nil) != tt.err || (!tt.err && (uid != tt.uid || gid != tt.gid)) {
			t.Errorf("Lookup(%q) = %d, %d, %v", tt.name, uid, gid, err)
		}
	}
}

func TestKeptMask(t *testing.T) {
	want := uint64(1)<<unix.CAP_NET_ADMIN | 1<<unix.CAP_NET_RAW | 1<<unix.CAP_NET_BIND_SERVICE
	if KeptMask() != want || want != 0x3400 {
		t.Fatalf("KeptMask = %x", KeptMask())
	}
}

func TestThreadsOfSelf(t *testing.T) {
	ths, err := Threads("self")
	if err != nil {
		t.Fatal(err)
	}
	if len(ths) == 0 {
		t.Fatal("no threads")
	}
	for _, th := range ths {
		if th.UID == "" || th.TID == "" {
			t.Fatalf("thread %+v", th)
		}
	}
}

func TestDropRefusesRootTarget(t *testing.T) {
	if os.Geteuid() != 0 {
		if err := Drop(65534, 65534); err == nil {
			t.Fatal("Drop without root: no error")
		}
		return
	}
	if err := Drop(0, 0); err == nil {
		t.Fatal("Drop to uid 0: no error")
	}
}

func TestSetNotDumpable(t *testing.T) {
	// Flip it back afterwards: the test binary's own state.
	defer unix.Prctl(unix.PR_SET_DUMPABLE, 1, 0, 0, 0)
	if err := SetNotDumpable(); err != nil {
		t.Fatal(err)
	}
	v, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	if err != nil || v != 0 {
		t.Fatalf("PR_GET_DUMPABLE = %d, %v", v, err)
	}
}

// TestDropExtra runs this test binary as nobody with ambient
// CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF (setpriv, the way systemd's
// AmbientCapabilities= starts the packaged unit), where DropExtra must
// take CAP_BPF from every thread and leave the other two.
func TestDropExtra(t *testing.T) {
	if os.Getenv("GOSEC_TEST_DROPEXTRA") == "1" {
		dropExtraChild(t)
		return
	}
	testutil.NeedRoot(t)
	if _, err := exec.LookPath("setpriv"); err != nil {
		t.Skip("no setpriv (util-linux)")
	}
	// This package's tests again, without cgo (Go changes every thread's
	// credentials only then; gosec is built so), where nobody can run them.
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "privs.test")
	build := exec.Command("go", "test", "-c", "-o", bin, ".")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go test -c: %v\n%s", err, out)
	}
	caps := "+net_admin,+net_raw,+bpf"
	cmd := exec.Command("setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
		"--inh-caps", caps, "--ambient-caps", caps, "--no-new-privs",
		bin, "-test.run", "^TestDropExtra$", "-test.v")
	cmd.Env = append(os.Environ(), "GOSEC_TEST_DROPEXTRA=1")
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	t.Logf("as nobody:\n%s", out)
	if err != nil || !strings.Contains(string(out), "DROPEXTRA OK") {
		t.Fatalf("the child failed: %v", err)
	}
}

func dropExtraChild(t *testing.T) {
	// More threads than the runtime's few, each with its credentials.
	for range 4 {
		go func() {
			runtime.LockOSThread()
			select {}
		}()
	}
	const bpf = uint64(1) << unix.CAP_BPF
	want := uint64(1)<<unix.CAP_NET_ADMIN | 1<<unix.CAP_NET_RAW
	if os.Geteuid() == 0 {
		t.Fatal("the child runs as root")
	}
	before, err := Threads("self")
	if err != nil {
		t.Fatal(err)
	}
	if before[0].CapEff != want|bpf {
		t.Fatalf("started with CapEff %x, want %x", before[0].CapEff, want|bpf)
	}
	names, err := DropExtra()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(names, []string{"cap_bpf"}) {
		t.Fatalf("DropExtra dropped %q, want cap_bpf", names)
	}
	ths, err := Threads("self")
	if err != nil {
		t.Fatal(err)
	}
	for _, th := range ths {
		if th.CapEff != want || th.CapPrm != want {
			t.Fatalf("thread %s: CapEff %x CapPrm %x, want %x", th.TID, th.CapEff, th.CapPrm, want)
		}
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	if amb := fmt.Sprintf("CapAmb:\t%016x", want); !strings.Contains(string(status), amb) {
		t.Fatalf("want %q in /proc/self/status:\n%s", amb, status)
	}
	if again, err := DropExtra(); err != nil || again != nil {
		t.Fatalf("DropExtra again: %q, %v", again, err)
	}
	fmt.Printf("DROPEXTRA OK: %d threads\n", len(ths))
}
