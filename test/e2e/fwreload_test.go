package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil/wire"
)

// debianNftablesConf is Debian's default /etc/nftables.conf: what
// `systemctl reload nftables` loads. Its first line deletes every table.
const debianNftablesConf = `#!/usr/sbin/nft -f

flush ruleset

table inet filter {
	chain input {
		type filter hook input priority filter;
	}
	chain forward {
		type filter hook forward priority filter;
	}
	chain output {
		type filter hook output priority filter;
	}
}
`

// TestFirewallReload: the administrator of gw1 reloads the firewall with
// a ruleset that starts with `flush ruleset` while the tunnel carries
// traffic. gosec's table (which the daemon owns: NFT_TABLE_F_OWNER) must
// survive it with everything in it:
//   - the tunnel loses no ping;
//   - cleartext forged from the WAN with a protected source is still
//     dropped before the protected LAN, and counted;
//   - the outbound guard still holds when gw1's daemon is then killed
//     (the table is persistent: NFT_TABLE_F_PERSIST): no cleartext of a
//     protected subnet on the wire while it is dead, though gw1 routes by
//     default out of its WAN link;
//   - the next daemon adopts the table and the tunnel comes back.
func TestFirewallReload(t *testing.T) {
	needScapy(t)
	e := newLC(t, "gsl13-")
	e.startUp()
	gw1 := e.tp.ns("gw1")
	ping, _ := e.traffic(false)
	time.Sleep(2 * time.Second)

	reload := e.reloadFirewall(gw1)
	table, err := e.tp.run(gw1, 10*time.Second, "nft", "list", "table", "inet", "gosec")
	if err != nil {
		t.Errorf("gosec's table is gone after the firewall reload: %v\n%s", err, table)
	}
	for _, want := range []string{"flags owner", "chain guard", "chain cleartext", "chain spi-gate", "10.2.0.0/24"} {
		if !strings.Contains(table, want) {
			t.Errorf("gosec's table after the reload lacks %q:\n%s", want, table)
		}
	}
	if out, err := e.tp.run(gw1, 10*time.Second, "nft", "list", "table", "inet", "filter"); err != nil {
		t.Errorf("the administrator's table is not there: %v\n%s", err, out)
	}
	if out, err := e.tp.run(gw1, 10*time.Second, "nft", "delete", "table", "inet", "gosec"); err == nil {
		t.Errorf("another process deleted the daemon's table:\n%s", out)
	}

	e.forgedCleartextDropped(gw1)

	// A crash after the reload: the guard must outlive the daemon.
	killed := time.Now()
	e.tl.Add("gw1: kill -9 %d", e.gw1.pid)
	if err := e.gw1.kill9(); err != nil {
		t.Fatal(err)
	}
	probe := exec.Command("ip", "netns", "exec", e.tp.ns("lan1"), "ping", "-q", "-n", "-i", "0.01", "-w", "3", "10.2.0.2")
	if err := probe.Start(); err != nil {
		t.Fatal(err)
	}
	e.tl.Add("probe: ping every 10 ms from lan1 for 3 s while gw1's daemon is dead")
	probe.Wait()
	if out, err := e.tp.run(gw1, 10*time.Second, "nft", "list", "table", "inet", "gosec"); err != nil || !strings.Contains(out, "10.2.0.0/24") {
		t.Errorf("gosec's table did not outlive the daemon: %v\n%s", err, out)
	}
	e.tl.Add("gw1: gosec start again")
	if err := e.gw1.launch(); err != nil {
		t.Fatalf("gosec start after kill -9: %v", err)
	}
	back := wire.WaitFor(30*time.Second, func() bool {
		out, err := e.tp.run(e.tp.ns("lan1"), 3*time.Second, "ping", "-c", "1", "-W", "1", "10.2.0.2")
		return err == nil && strings.Contains(out, "1 received")
	})
	e.tl.Add("test: tunnel back: %v", back)
	if out, err := e.tp.run(gw1, 10*time.Second, "nft", "list", "table", "inet", "gosec"); err != nil || !strings.Contains(out, "flags owner") {
		t.Errorf("the restarted daemon does not own its table: %v\n%s", err, out)
	}
	pr := ping.Stop()
	e.mon.Stop()
	checkLeaks(t, e.leaks, e.tl, e.daemons(), forgedExempt)
	e.noLoss(pr, time.Time{}, killed.Add(-time.Second), "across the firewall reload (from "+reload.Format("15:04:05.000")+")")
	if !back {
		t.Errorf("no ping answered within 30 s of gosec start after kill -9")
	}
}

// TestFirewallReloadUnowned: where the daemon cannot own its table (before
// Linux 6.9; here over a stale table an older gosec left without the
// flags), the same firewall reload deletes the table while the daemon
// runs. The daemon must restore it at once and say so:
//   - forged cleartext from the protected subnet is dropped again and
//     counted, and never reaches lan1;
//   - a warning in its log and status, "restored 1 times" in statusall,
//     restored in the JSON; on this kernel the restored table is owned;
//   - the tunnel's pings are all answered, nothing leaves in the clear.
func TestFirewallReloadUnowned(t *testing.T) {
	needScapy(t)
	e := newLC(t, "gsl16-")
	gw1 := e.tp.ns("gw1")
	e.tp.must(gw1, "nft", "add", "table", "inet", "gosec")
	e.tl.Add("gw1: nft add table inet gosec (a stale table without the owner and persist flags)")
	e.startUp()
	ping, _ := e.traffic(false)
	time.Sleep(2 * time.Second)
	if out := e.ctl(e.gw1, "statusall"); !strings.Contains(out, "NOT owned by the daemon") || !strings.Contains(out, "WARNING: nftables table inet gosec is not owned") {
		t.Fatalf("before the reload, statusall should warn that the table is not owned:\n%s", out)
	}

	reload := e.reloadFirewall(gw1)
	var out string
	if !wire.WaitFor(5*time.Second, func() bool {
		out = e.ctl(e.gw1, "statusall")
		return strings.Contains(out, "deleted by another process and restored 1 times")
	}) {
		t.Fatalf("statusall does not report the table restored within 5 s:\n%s", out)
	}
	e.tl.Add("gw1: the table is restored")
	for _, want := range []string{"WARNING: nftables table inet gosec was deleted by another process 1 times", "table inet gosec, owned by the daemon"} {
		if !strings.Contains(out, want) {
			t.Errorf("statusall lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "is not owned") || strings.Contains(out, "MISSING") {
		t.Errorf("statusall after the restore still warns of an unowned or missing table:\n%s", out)
	}
	if st := statusAllOf(t, e.gw1); st.Firewall == nil || st.Firewall.Missing || st.Firewall.Restored != 1 || !st.Firewall.Owned {
		t.Errorf("JSON firewall %+v, want restored 1, owned, not missing", st.Firewall)
	}
	log, _ := os.ReadFile(filepath.Join(e.gw1.dir, "gosec.log"))
	if !strings.Contains(string(log), "was deleted by another process (a firewall reload that flushes the ruleset?) and restored") {
		t.Errorf("gw1's log does not tell of the restore:\n%s", tail(string(log), 20))
	}
	e.forgedCleartextDropped(gw1)
	pr := ping.Stop()
	e.mon.Stop()
	checkLeaks(t, e.leaks, e.tl, e.daemons(), forgedExempt)
	e.noLoss(pr, reload, time.Now(), "after the firewall reload")
}

// reloadFirewall loads Debian's default nftables.conf in namespace ns, as
// `systemctl reload nftables` does, and returns when it did.
func (e *lcEnv) reloadFirewall(ns string) time.Time {
	e.t.Helper()
	conf := filepath.Join(e.t.TempDir(), "nftables.conf")
	if err := os.WriteFile(conf, []byte(debianNftablesConf), 0o600); err != nil {
		e.t.Fatal(err)
	}
	at := time.Now()
	e.tl.Add("%s: nft -f nftables.conf (flush ruleset, then a filter table)", ns[strings.LastIndex(ns, "-")+1:])
	if out, err := e.tp.run(ns, 10*time.Second, "nft", "-f", conf); err != nil {
		e.t.Fatalf("nft -f: %v\n%s", err, out)
	}
	return at
}

// forgedCleartextDropped sends gw1 (namespace ns) five cleartext packets
// from the protected subnet 10.2.0.0/24, from gw2's side of the wire
// (scapy, ICMP id 4343): none may reach lan1, and gw1 must count them as
// cleartext drops. checkLeaks callers exempt them on gw2's link.
func (e *lcEnv) forgedCleartextDropped(ns string) {
	t := e.t
	t.Helper()
	before := statusOf(t, e.gw1, lcConn).Cleartext
	mac := strings.TrimSpace(e.tp.must(ns, "cat", "/sys/class/net/wan0/address"))
	inject := `
import sys
from scapy.all import Ether, IP, ICMP, sendp, conf
conf.verb = 0
sendp(Ether(dst=sys.argv[1])/IP(src="10.2.0.2", dst="10.1.0.2")/ICMP(id=4343), iface="wan0", count=5)
`
	dump := exec.Command("ip", "netns", "exec", e.tp.ns("lan1"), "timeout", "4", "tcpdump", "-c", "1", "-n", "-i", "eth0", "icmp[4:2] == 4343")
	var dumped strings.Builder
	dump.Stdout, dump.Stderr = &dumped, &dumped
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	e.tl.Add("gw2's wire: 5 forged cleartext packets 10.2.0.2 -> 10.1.0.2 to gw1")
	if out, err := e.tp.run(e.tp.ns("gw2"), 30*time.Second, scapyPython, "-c", inject, mac); err != nil {
		t.Fatalf("inject: %v\n%s", err, out)
	}
	dump.Wait()
	if strings.Contains(dumped.String(), "1 packet captured") {
		t.Errorf("after the firewall reload, forged cleartext from the protected subnet reached lan1:\n%s", dumped.String())
	}
	if got := statusOf(t, e.gw1, lcConn).Cleartext - before; got < 5 {
		t.Errorf("gw1 counted %d cleartext drops after the reload, want 5", got)
	}
}

// forgedExempt exempts forgedCleartextDropped's packets on gw2's link
// from checkLeaks.
func forgedExempt(l wire.Leak) string {
	if l.Label == "gw2" && strings.Contains(l.Line, "10.2.0.2 > 10.1.0.2: ICMP echo request, id 4343,") {
		return "forged by the test on gw2's side of the wire"
	}
	return ""
}
