package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// TestSaveKeysTshark: two gosec daemons negotiate with key export on (gw1
// through savekeys= in config setup, gw2 through --save-keys); the wire is
// captured from before Main Mode to after the traffic, and tshark, given
// nothing but gw1's exported ikev1_decryption_table and esp_sa files in
// its profile directory, decrypts the encrypted ISAKMP messages (ID and
// HASH of Main Mode, HASH/SA/Nonce/ID of Quick Mode) and every ESP packet.
func TestSaveKeysTshark(t *testing.T) {
	for _, tool := range []string{"tshark", "tcpdump", "ethtool"} {
		_, err := exec.LookPath(tool)
		testutil.Need(t, err == nil, tool+" is not installed (scripts/deps.sh installs it)")
	}
	tp := newTopo(t, "gsp-")
	for _, gw := range []string{"gw1", "gw2"} {
		tp.must(tp.ns(gw), "ethtool", "-K", "wan0", "tx-udp-segmentation", "off")
	}
	cases := []ikeCase{
		{name: "sk-cbc", ike: "aes128-sha1-modp2048", esp: "aes128-sha256"},
		{name: "sk-gcm-natt", ike: "aes256-sha256-modp2048", esp: "aes128gcm16-modp2048", encaps: true},
		{name: "sk-3des-transport", ike: "3des-sha1-modp1024", esp: "3des-md5", transport: true},
	}
	var conns strings.Builder
	for _, c := range cases {
		conns.WriteString(c.conf())
	}
	secrets := "192.0.2.1 192.0.2.2 : PSK \"gosec-savekeys-psk\"\n"
	keys1 := filepath.Join(t.TempDir(), "keys")
	keys2 := filepath.Join(t.TempDir(), "keys")
	gw1 := tp.startDaemon(tp.ns("gw1"), "config setup\n\tsavekeys="+keys1+"\n\n"+conns.String(), secrets)
	gw2 := tp.startDaemon(tp.ns("gw2"), conns.String(), secrets, "--save-keys", keys2)

	// The warning is loud: in the log and in status/statusall.
	for _, d := range []*daemon{gw1, gw2} {
		for _, verb := range []string{"status", "statusall"} {
			if out := d.mustCtl(verb); !strings.Contains(out, "WARNING: KEY EXPORT IS ON") {
				t.Fatalf("%s: gosec %s does not warn about key export:\n%s", d.ns, verb, out)
			}
		}
		if !strings.Contains(d.log(), "KEY EXPORT IS ON") {
			t.Fatalf("%s: the log does not warn about key export", d.ns)
		}
	}

	pcap := filepath.Join(t.TempDir(), "wire.pcap")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dump := exec.CommandContext(ctx, "ip", "netns", "exec", tp.ns("gw2"), "tcpdump", "-U", "-n", "-i", "wan0", "-w", pcap, "udp port 500 or udp port 4500 or esp")
	var derr strings.Builder
	dump.Stderr = &derr
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(5 * time.Second); !strings.Contains(derr.String(), "listening on") && time.Now().Before(deadline); {
		time.Sleep(50 * time.Millisecond)
	}
	for _, c := range cases {
		out := gw1.mustCtl("up", c.name)
		if !strings.Contains(out, "established successfully") {
			t.Fatalf("gosec up %s:\n%s", c.name, out)
		}
		src, dst, srcNS, dstNS := "10.1.0.2", "10.2.0.2", tp.ns("lan1"), tp.ns("lan2")
		if c.transport {
			src, dst, srcNS, dstNS = "192.0.2.1", "192.0.2.2", tp.ns("gw1"), tp.ns("gw2")
		}
		if err := tp.ping(srcNS, dst, 3); err != nil {
			t.Fatal(err)
		}
		if err := tp.ping(dstNS, src, 3); err != nil {
			t.Fatal(err)
		}
		// Down before the next conn: tunnel-mode conns share selectors.
		gw1.mustCtl("down", c.name)
	}
	time.Sleep(500 * time.Millisecond)
	dump.Process.Signal(os.Interrupt)
	dump.Wait()

	// The tables: mode 0600, one line per phase-1 SA and per ESP SA;
	// both daemons exported the same keys.
	tables := map[string]string{}
	for _, name := range []string{"ikev1_decryption_table", "esp_sa"} {
		for _, dir := range []string{keys1, keys2} {
			fi, err := os.Stat(filepath.Join(dir, name))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != 0o600 {
				t.Fatalf("%s/%s: mode %v, want 0600", dir, name, fi.Mode().Perm())
			}
		}
		a, _ := os.ReadFile(filepath.Join(keys1, name))
		b, _ := os.ReadFile(filepath.Join(keys2, name))
		if !sameLines(string(a), string(b)) {
			t.Fatalf("%s differs between the peers:\ngw1:\n%s\ngw2:\n%s", name, a, b)
		}
		tables[name] = string(a)
	}
	if n := strings.Count(tables["ikev1_decryption_table"], "\n"); n != len(cases) {
		t.Fatalf("ikev1_decryption_table has %d lines, want %d:\n%s", n, len(cases), tables["ikev1_decryption_table"])
	}
	if n := strings.Count(tables["esp_sa"], "\n"); n != 2*len(cases) {
		t.Fatalf("esp_sa has %d lines, want %d:\n%s", n, 2*len(cases), tables["esp_sa"])
	}
	t.Logf("exported tables:\n%s%s", tables["ikev1_decryption_table"], tables["esp_sa"])

	// tshark reads the files from its profile directory, as Wireshark
	// would from ~/.config/wireshark.
	home := t.TempDir()
	profile := filepath.Join(home, "wireshark")
	if err := os.MkdirAll(profile, 0o700); err != nil {
		t.Fatal(err)
	}
	for name, data := range tables {
		if err := os.WriteFile(filepath.Join(profile, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	tshark := func(fields []string, filter string) [][]string {
		t.Helper()
		args := []string{"-r", pcap, "-n",
			"-o", "esp.enable_encryption_decode:TRUE", "-o", "esp.enable_authentication_check:TRUE",
			"-T", "fields", "-E", "separator=/t", "-E", "aggregator=,", "-Y", filter}
		for _, f := range fields {
			args = append(args, "-e", f)
		}
		cmd := exec.Command("tshark", args...)
		cmd.Env = append(os.Environ(), "XDG_CONFIG_HOME="+home, "HOME="+home)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("tshark: %v", err)
		}
		var rows [][]string
		for _, l := range strings.Split(string(out), "\n") {
			if strings.TrimSpace(l) == "" {
				continue
			}
			r := strings.Split(l, "\t")
			for len(r) < len(fields) {
				r = append(r, "")
			}
			rows = append(rows, r)
		}
		return rows
	}

	// ISAKMP: every encrypted message is decrypted into payloads.
	rows := tshark([]string{"isakmp.exchangetype", "isakmp.ispi", "isakmp.id.type", "isakmp.hash", "isakmp.nonce", "isakmp.enc.decrypted"}, "isakmp.flag_e == 1")
	var mm, qm int
	for _, r := range rows {
		if len(r) < 6 {
			t.Fatalf("tshark row %q", r)
		}
		switch r[0] {
		case "2": // Main Mode 5 and 6: ID and HASH
			if r[2] == "" || r[3] == "" {
				t.Fatalf("Main Mode message of %s not decrypted (no ID/HASH): %q", r[1], r)
			}
			mm++
		case "32": // Quick Mode: HASH and Nonce (and IDs)
			if r[3] == "" {
				t.Fatalf("Quick Mode message of %s not decrypted (no HASH): %q", r[1], r)
			}
			if r[4] != "" {
				qm++
			}
		}
	}
	t.Logf("tshark decrypted %d encrypted ISAKMP messages: %d Main Mode, %d Quick Mode with a nonce", len(rows), mm, qm)
	if mm < 2*len(cases) || qm < 2*len(cases) {
		t.Fatalf("tshark decrypted %d Main Mode and %d Quick Mode messages, want %d each:\n%q", mm, qm, 2*len(cases), rows)
	}

	// ESP: every packet decrypted, every ICV checked, every exported SA
	// seen on the wire.
	rows = tshark([]string{"esp.spi", "esp.icv_good", "esp.icv_bad", "icmp.type"}, "esp")
	var esp, good, icmp int
	perSPI := map[string]int{}
	for _, r := range rows {
		if r[0] == "" {
			continue
		}
		esp++
		perSPI[r[0]]++
		if r[2] == "1" || r[2] == "True" {
			t.Fatalf("tshark: bad ICV: %q", r)
		}
		if r[1] == "1" || r[1] == "True" {
			good++
		}
		if r[3] != "" {
			icmp++
		}
	}
	t.Logf("%d ESP packets, %d ICVs verified by tshark, %d decrypted to ICMP; per SPI %v", esp, good, icmp, perSPI)
	if icmp != esp || good != esp {
		t.Fatalf("tshark: of %d ESP packets %d decrypted to ICMP, %d ICVs good", esp, icmp, good)
	}
	for _, l := range strings.Split(strings.TrimSpace(tables["esp_sa"]), "\n") {
		spi := strings.Trim(strings.Split(l, ",")[3], `"`)
		if perSPI[spi] == 0 {
			t.Errorf("no ESP packet of exported SA %s was captured", spi)
		}
	}
}

// sameLines reports whether a and b hold the same lines in any order.
func sameLines(a, b string) bool {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	for _, n := range count {
		if n != 0 {
			return false
		}
	}
	return true
}
