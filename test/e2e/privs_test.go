package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/privs"
)

// TestUnprivilegedDaemon: both gateways run `gosec start --user nobody`.
// Once started, every thread of each daemon is uid/gid 65534 with exactly
// CAP_NET_ADMIN, CAP_NET_RAW and CAP_NET_BIND_SERVICE (effective,
// permitted and bounding), no_new_privs, and the process is not dumpable.
// As such it negotiates a tunnel, carries traffic, rekeys the child,
// reloads a changed configuration (reading it and the secrets as nobody),
// brings the new conn up, and on stop removes its TUN device.
func TestUnprivilegedDaemon(t *testing.T) {
	tp := newTopo(t, "gsp-")
	const nobody = 65534
	conf := func(extra string) string {
		return `conn pv
	left=192.0.2.1
	right=192.0.2.2
	leftsubnet=10.1.0.0/24
	rightsubnet=10.2.0.0/24
	authby=secret
	keyexchange=ikev1
	ike=aes128-sha256-modp2048!
	esp=aes128gcm16!
	ikelifetime=1h
	lifetime=24s
	rekeymargin=12s
	rekeyfuzz=0%
	keyingtries=1
	auto=add

` + extra
	}
	secrets := "192.0.2.1 192.0.2.2 : PSK \"gosec-privs-psk\"\n"
	var gws []*daemon
	for _, gw := range []string{"gw1", "gw2"} {
		d := tp.startDaemon(tp.ns(gw), conf(""), secrets, "--user", "nobody")
		// The files must stay readable for reload: the directory
		// (and the test's temporary root above it) open to nobody, the
		// config and secrets owned by nobody (the harness writes both
		// with mode 0600; rewriting keeps the owner).
		for _, dir := range []string{d.dir, filepath.Dir(d.dir)} {
			if err := os.Chmod(dir, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		for _, f := range []string{d.conf, filepath.Join(d.dir, "ipsec.secrets")} {
			if err := os.Chown(f, nobody, nobody); err != nil {
				t.Fatal(err)
			}
		}
		gws = append(gws, d)
	}
	gw1, gw2 := gws[0], gws[1]

	for _, d := range gws {
		var st struct{ PID int }
		if err := json.Unmarshal([]byte(d.mustCtl("statusall", "--json")), &st); err != nil {
			t.Fatal(err)
		}
		threads, err := privs.Threads(fmt.Sprint(st.PID))
		if err != nil {
			t.Fatal(err)
		}
		for _, th := range threads {
			if th.UID != "65534 65534 65534 65534" || th.GID != "65534 65534 65534 65534" {
				t.Fatalf("%s: thread %s: uid %q gid %q", d.ns, th.TID, th.UID, th.GID)
			}
			if th.CapEff != privs.KeptMask() || th.CapPrm != privs.KeptMask() || th.Bnd != privs.KeptMask() {
				t.Fatalf("%s: thread %s: CapEff %x CapPrm %x CapBnd %x, want %x", d.ns, th.TID, th.CapEff, th.CapPrm, th.Bnd, privs.KeptMask())
			}
			if !th.NoNewPrivs {
				t.Fatalf("%s: thread %s: no_new_privs is off", d.ns, th.TID)
			}
		}
		// A process that is not dumpable has its /proc files owned by
		// root, whatever its uid.
		var fi syscall.Stat_t
		if err := syscall.Stat(fmt.Sprintf("/proc/%d/status", st.PID), &fi); err != nil {
			t.Fatal(err)
		}
		if fi.Uid != 0 {
			t.Fatalf("%s: /proc/%d is owned by uid %d: the daemon is dumpable", d.ns, st.PID, fi.Uid)
		}
		if !strings.Contains(d.log(), `msg="privileges dropped" user=nobody`) {
			t.Fatalf("%s: no privilege drop in the log", d.ns)
		}
		t.Logf("%s: pid %d, %d threads, all uid 65534 with capabilities %x only", d.ns, st.PID, len(threads), privs.KeptMask())
	}

	out := gw1.mustCtl("up", "pv")
	if !strings.Contains(out, "established successfully") {
		t.Fatalf("gosec up:\n%s", out)
	}
	if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 3); err != nil {
		t.Fatal(err)
	}
	if err := tp.transfer(tp.ns("lan1"), tp.ns("lan2"), "10.2.0.2", 1<<20); err != nil {
		t.Fatal(err)
	}
	// What was loaded as root keeps working without it: the receive
	// ring's eBPF SPI filter, whose map each new SA changes, and the TUN's
	// queues. On this kernel an open map needs no CAP_BPF to be changed.
	for _, d := range gws {
		var st struct {
			TUNQueues int      `json:"tun_queues"`
			Warnings  []string `json:"warnings"`
			RawPaths  struct {
				Receive       map[string]string `json:"receive"`
				RingSPIFilter bool              `json:"ring_spi_filter"`
			} `json:"raw_paths"`
			KernelDrops struct {
				Ingress *struct {
					Interfaces []string `json:"interfaces"`
					RingBypass uint64   `json:"ring_bypass"`
					Error      string   `json:"error"`
				} `json:"ingress"`
			} `json:"kernel_drops"`
		}
		if err := json.Unmarshal([]byte(d.mustCtl("statusall", "--json")), &st); err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: receive %v, ring SPI filter %v, %d TUN queues, warnings %q", d.ns, st.RawPaths.Receive, st.RawPaths.RingSPIFilter, st.TUNQueues, st.Warnings)
		if !st.RawPaths.RingSPIFilter || len(st.Warnings) > 0 {
			t.Errorf("%s: the ring's SPI filter is off after the drop, or warnings: %q", d.ns, st.Warnings)
		}
		// The ingress bypass too: its map of local addresses and its
		// counters are read and changed through the fds it opened.
		if in := st.KernelDrops.Ingress; in == nil || len(in.Interfaces) == 0 || in.Error != "" || in.RingBypass == 0 {
			t.Errorf("%s: the ingress bypass is not in place after the drop or kept nothing of the transfer: %+v", d.ns, in)
		}
	}
	// An interface that gets an address after the drop (a WAN address
	// from DHCP, a link made later) gets the ingress bypass too:
	// attached as nobody with CAP_NET_ADMIN alone.
	for _, argv := range [][]string{
		{"ip", "link", "add", "gsp-late0", "type", "veth", "peer", "name", "gsp-late1"},
		{"ip", "addr", "add", "198.51.100.2/24", "dev", "gsp-late0"},
		{"ip", "link", "set", "gsp-late0", "up"},
	} {
		if out, err := tp.run(tp.ns("gw2"), 5*time.Second, argv...); err != nil {
			t.Fatalf("%v: %v\n%s", argv, err, out)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		var st struct {
			KernelDrops struct {
				Ingress *struct {
					Interfaces  []string `json:"interfaces"`
					NotAttached []string `json:"not_attached"`
				} `json:"ingress"`
			} `json:"kernel_drops"`
		}
		if err := json.Unmarshal([]byte(gw2.mustCtl("statusall", "--json")), &st); err != nil {
			t.Fatal(err)
		}
		in := st.KernelDrops.Ingress
		if in != nil && slices.Contains(in.Interfaces, "gsp-late0") && len(in.NotAttached) == 0 {
			t.Logf("gw2: ingress bypass on %v after an address came on gsp-late0", in.Interfaces)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gw2: gsp-late0 got an address after the privilege drop; 5 s later the ingress bypass is %+v", in)
		}
	}
	first := ikeStatusOf(t, gw1).Conns[0].Children[0].InSPI

	// The child rekeys 12 s before its 24 s lifetime: a new SA pair
	// installed (routes, policies) without root.
	deadline := time.Now().Add(30 * time.Second)
	for {
		rekeyed := false
		for _, ch := range ikeStatusOf(t, gw1).Conns[0].Children {
			if ch.InSPI != first {
				rekeyed = true
			}
		}
		if rekeyed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no rekey within 30 s; log:\n%s", tail(gw1.log(), 20))
		}
		time.Sleep(500 * time.Millisecond)
	}
	if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 3); err != nil {
		t.Fatalf("after the rekey: %v", err)
	}

	// Reload with a second conn (transport mode between the gateways).
	extra := `conn pv2
	left=192.0.2.1
	right=192.0.2.2
	type=transport
	authby=secret
	keyexchange=ikev1
	ike=aes128-sha1-modp2048!
	esp=aes128-sha1!
	keyingtries=1
	auto=add
`
	for _, d := range gws {
		d.rewrite(conf(extra), secrets)
		if out, err := d.ctl(30*time.Second, "reload"); err != nil {
			t.Fatalf("%s: reload as nobody: %v\n%s", d.ns, err, out)
		}
	}
	// (pv goes down first: a second phase 1 between the same peers
	// carries INITIAL-CONTACT, which makes the responder forget the
	// first one's SAs.)
	gw1.mustCtl("down", "pv")
	out = gw1.mustCtl("up", "pv2")
	if !strings.Contains(out, "established successfully") {
		t.Fatalf("gosec up pv2 after reload:\n%s", out)
	}
	if err := tp.ping(tp.ns("gw1"), "192.0.2.2", 3); err != nil {
		t.Fatal(err)
	}
	if st := statusOf(t, gw2, "pv2"); len(st.SAs) != 2 || st.in.Packets == 0 {
		t.Fatalf("pv2 on gw2 after the ping: %+v", st)
	}

	// Stop: everything it made goes, with the capabilities it kept.
	if out := gw1.mustCtl("stop"); !strings.Contains(out, "gosec stopped") {
		t.Fatalf("gosec stop did not wait for the daemon to finish:\n%s", out)
	}
	if out, err := tp.run(tp.ns("gw1"), 5*time.Second, "ip", "link", "show", "gosec0"); err == nil {
		t.Fatalf("gosec0 still there after stop:\n%s", out)
	}
	if out, _ := tp.run(tp.ns("gw1"), 5*time.Second, "nft", "list", "tables"); strings.Contains(out, "gosec") {
		t.Fatalf("nftables table still there after stop:\n%s", out)
	}
	for _, d := range gws {
		if log := d.log(); strings.Contains(log, "not permitted") || strings.Contains(log, "level=WARN msg=teardown") {
			t.Fatalf("%s: something needed a privilege the daemon dropped:\n%s", d.ns, tail(log, 30))
		}
	}
}
