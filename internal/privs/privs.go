// Package privs drops the daemon's privileges once its sockets, TUN
// device, routes and filters are open: it becomes an unprivileged user
// that keeps only the capabilities it still needs (CAP_NET_ADMIN for
// routes, rules, nftables and TUN teardown, CAP_NET_RAW for the raw ESP
// and AH sockets, CAP_NET_BIND_SERVICE), and it makes the process not
// dumpable.
//
// Linux keeps credentials per thread, and a Go program always runs several
// threads. Every change here goes through syscall.AllThreadsSyscall (or
// the syscall package's own all-threads Setuid/Setgid/Setgroups), so no
// thread stays behind with root's credentials. The Go runtime refuses
// all-threads system calls when cgo is linked in: gosec is built with
// CGO_ENABLED=0 (make build, make deb), and Drop says so otherwise.
package privs

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Kept are the capabilities the daemon keeps after Drop.
var Kept = []uintptr{unix.CAP_NET_ADMIN, unix.CAP_NET_RAW, unix.CAP_NET_BIND_SERVICE}

// SetNotDumpable sets PR_SET_DUMPABLE to 0: no core dumps, and other
// processes of the same user cannot ptrace this one or read its memory
// through /proc. The flag belongs to the process, not to a thread.
func SetNotDumpable() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("privs: PR_SET_DUMPABLE: %w", err)
	}
	return nil
}

// Lookup resolves a user name (or numeric uid) to its uid and primary gid.
func Lookup(name string) (uid, gid int, err error) {
	u, err := user.Lookup(name)
	if err != nil {
		if _, nerr := strconv.Atoi(name); nerr == nil {
			u, err = user.LookupId(name)
		}
		if err != nil {
			return 0, 0, fmt.Errorf("privs: user %q: %w", name, err)
		}
	}
	if uid, err = strconv.Atoi(u.Uid); err != nil {
		return 0, 0, fmt.Errorf("privs: user %q: uid %q", name, u.Uid)
	}
	if gid, err = strconv.Atoi(u.Gid); err != nil {
		return 0, 0, fmt.Errorf("privs: user %q: gid %q", name, u.Gid)
	}
	return uid, gid, nil
}

// allThreads runs a raw system call on every thread of the process.
func allThreads(what string, trap, a1, a2, a3 uintptr) error {
	_, _, errno := syscall.AllThreadsSyscall(trap, a1, a2, a3)
	if errno == 0 {
		return nil
	}
	if errno == syscall.ENOTSUP {
		return fmt.Errorf("privs: %s: this gosec binary links cgo, and Go cannot change every thread's credentials then; build it with CGO_ENABLED=0 (make build does)", what)
	}
	return fmt.Errorf("privs: %s: %w", what, errno)
}

// Drop makes every thread of the process uid:gid (supplementary groups:
// gid only) with the capabilities in Kept, and nothing else: the bounding
// set loses the rest, so neither this process nor anything it could exec
// gets them back, and no_new_privs is set.
func Drop(uid, gid int) error {
	if os.Geteuid() != 0 {
		return errors.New("privs: dropping privileges needs root to start with")
	}
	if uid == 0 {
		return errors.New("privs: refusing to \"drop\" to uid 0")
	}
	keep := uint64(0)
	for _, c := range Kept {
		keep |= 1 << c
	}
	// The bounding set first: PR_CAPBSET_DROP needs CAP_SETPCAP, which
	// goes next.
	last, err := lastCap()
	if err != nil {
		return err
	}
	for c := uintptr(0); c <= last; c++ {
		if keep&(1<<c) != 0 {
			continue
		}
		if err := allThreads(fmt.Sprintf("drop capability %d from the bounding set", c), unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, c, 0); err != nil {
			return err
		}
	}
	// Keep the permitted set across the change of uid.
	if err := allThreads("PR_SET_KEEPCAPS", unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 1, 0); err != nil {
		return err
	}
	if err := syscall.Setgroups([]int{gid}); err != nil {
		return fmt.Errorf("privs: setgroups: %w", err)
	}
	if err := syscall.Setresgid(gid, gid, gid); err != nil {
		return fmt.Errorf("privs: setresgid %d: %w", gid, err)
	}
	if err := syscall.Setresuid(uid, uid, uid); err != nil {
		return fmt.Errorf("privs: setresuid %d: %w", uid, err)
	}
	// Effective and permitted: exactly the kept ones; inheritable: none.
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	data[0].Effective, data[0].Permitted = uint32(keep), uint32(keep)
	data[1].Effective, data[1].Permitted = uint32(keep>>32), uint32(keep>>32)
	if err := allThreads("capset", unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); err != nil {
		return err
	}
	if err := allThreads("PR_SET_KEEPCAPS off", unix.SYS_PRCTL, unix.PR_SET_KEEPCAPS, 0, 0); err != nil {
		return err
	}
	if err := allThreads("PR_SET_NO_NEW_PRIVS", unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); err != nil {
		return err
	}
	// setuid makes the process dumpable again (suid_dumpable aside).
	return SetNotDumpable()
}

// DropExtra is for a daemon that starts unprivileged (a service manager
// such as systemd gives it ambient capabilities): it removes from every
// thread's effective, permitted and inheritable sets, and so from the
// ambient set, every capability not in Kept, and returns their names
// (none: nothing to drop). The packaged unit gives CAP_BPF for the
// start-up only: it loads the eBPF programs (the receive ring's SPI
// filter, the TUN's steering) and creates their maps; changing a map the
// daemon holds takes no capability (Linux 6.5 and later check
// unprivileged_bpf_disabled only where programs are loaded and maps are
// created). The bounding set stays as it was (dropping
// from it would take CAP_SETPCAP, which such a daemon does not have);
// with no_new_privs nothing regains what is gone.
func DropExtra() ([]string, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return nil, fmt.Errorf("privs: capget: %w", err)
	}
	keep := KeptMask()
	have := uint64(data[0].Permitted) | uint64(data[1].Permitted)<<32
	extra := have &^ keep
	if extra == 0 {
		return nil, nil
	}
	var names []string
	for c := uint(0); c < 64; c++ {
		if extra&(1<<c) != 0 {
			names = append(names, capName(uintptr(c)))
		}
	}
	for i := range data {
		k := uint32(keep >> (32 * i))
		data[i].Effective &= k
		data[i].Permitted &= k
		data[i].Inheritable &= k
	}
	hdr = unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	if err := allThreads("capset", unix.SYS_CAPSET, uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); err != nil {
		return nil, err
	}
	return names, nil
}

// capName is the name of capability c as capabilities(7) spells it.
func capName(c uintptr) string {
	switch c {
	case unix.CAP_BPF:
		return "cap_bpf"
	case unix.CAP_PERFMON:
		return "cap_perfmon"
	case unix.CAP_SYS_ADMIN:
		return "cap_sys_admin"
	case unix.CAP_NET_ADMIN:
		return "cap_net_admin"
	case unix.CAP_NET_RAW:
		return "cap_net_raw"
	case unix.CAP_NET_BIND_SERVICE:
		return "cap_net_bind_service"
	}
	return fmt.Sprintf("capability %d", c)
}

// lastCap is the highest capability number the kernel knows.
func lastCap() (uintptr, error) {
	b, err := os.ReadFile("/proc/sys/kernel/cap_last_cap")
	if err != nil {
		return 0, fmt.Errorf("privs: %w", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		return 0, fmt.Errorf("privs: cap_last_cap: %w", err)
	}
	return uintptr(n), nil
}

// ThreadCreds is one thread's credentials as /proc shows them.
type ThreadCreds struct {
	TID                 string
	UID, GID            string // real, effective, saved, fs
	CapEff, CapPrm, Bnd uint64
	NoNewPrivs          bool
}

// Threads reads the credentials of every thread of process pid ("self"
// for this one).
func Threads(pid string) ([]ThreadCreds, error) {
	dirs, err := filepath.Glob(filepath.Join("/proc", pid, "task", "*", "status"))
	if err != nil || len(dirs) == 0 {
		return nil, fmt.Errorf("privs: no threads of %s: %v", pid, err)
	}
	var out []ThreadCreds
	for _, path := range dirs {
		b, err := os.ReadFile(path)
		if err != nil {
			continue // the thread ended
		}
		tc := ThreadCreds{TID: filepath.Base(filepath.Dir(path))}
		for _, line := range strings.Split(string(b), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			v = strings.TrimSpace(v)
			hex := func() uint64 { n, _ := strconv.ParseUint(v, 16, 64); return n }
			switch k {
			case "Uid":
				tc.UID = strings.Join(strings.Fields(v), " ")
			case "Gid":
				tc.GID = strings.Join(strings.Fields(v), " ")
			case "CapEff":
				tc.CapEff = hex()
			case "CapPrm":
				tc.CapPrm = hex()
			case "CapBnd":
				tc.Bnd = hex()
			case "NoNewPrivs":
				tc.NoNewPrivs = v == "1"
			}
		}
		out = append(out, tc)
	}
	return out, nil
}

// KeptMask is Kept as a capability bit mask.
func KeptMask() uint64 {
	var m uint64
	for _, c := range Kept {
		m |= 1 << c
	}
	return m
}
