package netio

import (
	"os"
	"testing"
)

func TestMain(m *testing.M) {
	// The child process of TestFilterCarryOverProcess.
	if host := os.Getenv("GOSEC_TEST_FILTER_CRASH"); host != "" {
		filterCrashChild(host)
	}
	os.Exit(m.Run())
}
