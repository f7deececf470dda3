package privs

import (
	"os"
	"testing"

	"golang.org/x/sys/unix"
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
