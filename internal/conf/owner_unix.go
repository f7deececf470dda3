package conf

import (
	"fmt"
	"io/fs"
	"os"
	"syscall"
)

// checkKeyFileOwner refuses a file holding keys that belongs to neither
// root nor the user gosec runs as: its owner could change the keys.
func checkKeyFileOwner(fi fs.FileInfo, path string) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if euid := uint32(os.Geteuid()); st.Uid != 0 && st.Uid != euid {
		return fmt.Errorf("the file is owned by uid %d, neither root nor uid %d (the user gosec runs as), who could change the keys; run: chown %d %s", st.Uid, euid, euid, path)
	}
	return nil
}

// isNullDevice reports whether fi is the null device (/dev/null).
func isNullDevice(fi fs.FileInfo) bool {
	if fi.Mode()&fs.ModeCharDevice == 0 {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	// Linux: character device 1:3.
	return ok && st.Rdev == uint64(1<<8|3)
}
