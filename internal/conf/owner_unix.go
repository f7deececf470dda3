package conf

import (
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"strconv"
	"syscall"
)

// DaemonUser is the system user the packaged daemon runs as (systemd's
// User=, or gosec start --user): files it owns are trusted too, so that
// `gosec conf check` run by root accepts what the daemon will read.
const DaemonUser = "gosec"

// daemonUID is DaemonUser's uid, or 0 (root, accepted anyway) if there is
// no such user.
func daemonUID() uint32 {
	u, err := user.Lookup(DaemonUser)
	if err != nil {
		return 0
	}
	n, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return 0
	}
	return uint32(n)
}

// checkKeyFileOwner refuses a file holding keys that belongs to neither
// root nor the user gosec runs as: its owner could change the keys.
func checkKeyFileOwner(fi fs.FileInfo, path string) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if euid := uint32(os.Geteuid()); st.Uid != 0 && st.Uid != euid && st.Uid != daemonUID() {
		return fmt.Errorf("the file is owned by uid %d, neither root, the gosec user nor uid %d (the user gosec runs as), who could change the keys; run: chown %d %s", st.Uid, euid, euid, path)
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
