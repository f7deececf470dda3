package testutil

import (
	"os"
	"testing"
)

// NeedRoot skips t when not running as root, except under CI=true, where it
// fails instead, so that CI never passes on skipped work.
func NeedRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatal("this test needs root and CI=true: failing instead of skipping")
	}
	t.Skip("needs root")
}

// Need skips t (or fails it under CI=true) with reason when ok is false.
func Need(t testing.TB, ok bool, reason string) {
	t.Helper()
	if ok {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true and a prerequisite is missing: %s", reason)
	}
	t.Skip(reason)
}
