package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// tsharkNames maps ipsec.conf suite names to the names of Wireshark's ESP
// SA table (epan/dissectors/packet-ipsec.c, tshark 4.0).
var tsharkEncr = map[string]string{
	"3des":        "TripleDES-CBC [RFC2451]",
	"aes128":      "AES-CBC [RFC3602]",
	"aes256":      "AES-CBC [RFC3602]",
	"aes128ctr":   "AES-CTR [RFC3686]",
	"aes128gcm16": "AES-GCM with 16 octet ICV [RFC4106]",
	"aes256gcm16": "AES-GCM with 16 octet ICV [RFC4106]",
	"null":        "NULL",
}

var tsharkInteg = map[string]string{
	"":       "NULL",
	"md5":    "HMAC-MD5-96 [RFC2403]",
	"sha1":   "HMAC-SHA-1-96 [RFC2404]",
	"sha256": "HMAC-SHA-256-128 [RFC4868]",
	"sha512": "HMAC-SHA-512-256 [RFC4868]",
}

// confValue returns the value of keyword kw in a rendered conn.
func confValue(t *testing.T, conf, kw string) string {
	t.Helper()
	m := regexp.MustCompile(`(?m)^\s*` + kw + `=(\S+)$`).FindStringSubmatch(conf)
	if m == nil {
		return ""
	}
	return m[1]
}

// TestTsharkDecrypt captures the wire between two gosec gateways and has
// tshark's ESP dissector, an independent implementation, decrypt every
// packet and check every ICV with the SA keys from the conf.
func TestTsharkDecrypt(t *testing.T) {
	_, err := exec.LookPath("tshark")
	testutil.Need(t, err == nil, "tshark is not installed (scripts/deps.sh installs it)")
	_, err = exec.LookPath("tcpdump")
	testutil.Need(t, err == nil, "tcpdump is not installed (scripts/deps.sh installs it)")
	_, err = exec.LookPath("ethtool")
	testutil.Need(t, err == nil, "ethtool is not installed (scripts/deps.sh installs it)")
	tp := newTopo(t, "gst-")
	// gosec sends ESP-in-UDP as UDP_SEGMENT runs; over veth such a run
	// stays one 64 KB frame, and the capture would hold it whole. With the
	// links' UDP segmentation offload off the kernel cuts it before the
	// wire, so each captured frame is one ESP packet, as on a real NIC.
	for _, gw := range []string{"gw1", "gw2"} {
		tp.must(tp.ns(gw), "ethtool", "-K", "wan0", "tx-udp-segmentation", "off")
	}
	cases := []manualCase{
		{name: "ts-3des-md5", s: suite{esp: "3des-md5", encLen: 24, intLen: 16}, spiBase: 1001},
		{name: "ts-aes128-sha1", s: suite{esp: "aes128-sha1", encLen: 16, intLen: 20}, spiBase: 1002},
		{name: "ts-aes128-sha1-udp", s: suite{esp: "aes128-sha1", encLen: 16, intLen: 20}, udp: true, spiBase: 1003},
		{name: "ts-aes256-sha512-transport", s: suite{esp: "aes256-sha512", encLen: 32, intLen: 64}, transport: true, spiBase: 1004},
		{name: "ts-aes128ctr-sha256", s: suite{esp: "aes128ctr-sha256", encLen: 20, intLen: 32}, spiBase: 1005},
		{name: "ts-aes128gcm16", s: suite{esp: "aes128gcm16", encLen: 20}, spiBase: 1006},
		{name: "ts-aes256gcm16-udp-transport", s: suite{esp: "aes256gcm16", encLen: 36}, udp: true, transport: true, spiBase: 1007},
		{name: "ts-null-sha256", s: suite{esp: "null-sha256", intLen: 32}, spiBase: 1008},
	}
	var conf strings.Builder
	for _, c := range cases {
		conf.WriteString(c.conf(5, false))
	}
	gw1 := tp.startDaemon(tp.ns("gw1"), conf.String(), "")
	gw2 := tp.startDaemon(tp.ns("gw2"), conf.String(), "")
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			text := c.conf(5, false)
			encr, integ, _ := strings.Cut(c.s.esp, "-")
			if encr == "null" {
				encr, integ = "null", strings.TrimPrefix(c.s.esp, "null-")
			}
			sa := func(spi, enc, auth string) string {
				if enc == "" {
					enc = "0x"
				}
				if auth == "" {
					auth = "0x"
				}
				return fmt.Sprintf(`uat:esp_sa:"IPv4","*","*","%s","%s","%s","%s","%s"`,
					spi, tsharkEncr[encr], enc, tsharkInteg[integ], auth)
			}
			uatLeft := sa(confValue(t, text, "leftspi"), confValue(t, text, "leftespenckey"), confValue(t, text, "leftespauthkey"))
			uatRight := sa(confValue(t, text, "rightspi"), confValue(t, text, "rightespenckey"), confValue(t, text, "rightespauthkey"))

			gw1.mustCtl("up", c.name)
			gw2.mustCtl("up", c.name)
			defer gw1.ctl(10*time.Second, "down", c.name)
			defer gw2.ctl(10*time.Second, "down", c.name)

			pcap := filepath.Join(t.TempDir(), "wire.pcap")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			dump := exec.CommandContext(ctx, "ip", "netns", "exec", tp.ns("gw2"), "tcpdump", "-U", "-n", "-i", "wan0", "-w", pcap, "esp or udp port 4500")
			var derr strings.Builder
			dump.Stderr = &derr
			if err := dump.Start(); err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(5 * time.Second); !strings.Contains(derr.String(), "listening on") && time.Now().Before(deadline); {
				time.Sleep(50 * time.Millisecond)
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
			if err := tp.transfer(srcNS, dstNS, dst, 256<<10); err != nil {
				t.Fatal(err)
			}
			time.Sleep(500 * time.Millisecond)
			dump.Process.Signal(os.Interrupt)
			dump.Wait()

			args := []string{"-r", pcap, "-n",
				"-o", "esp.enable_encryption_decode:TRUE",
				"-o", "esp.enable_authentication_check:TRUE",
				"-o", uatLeft, "-o", uatRight,
				"-T", "fields", "-e", "esp.spi", "-e", "esp.icv_good", "-e", "esp.icv_bad", "-e", "ip.proto", "-e", "icmp.type", "-e", "tcp.srcport",
				"-Y", "esp"}
			out, err := exec.Command("tshark", args...).Output()
			if err != nil {
				t.Fatalf("tshark: %v", err)
			}
			lines := strings.Split(strings.TrimSpace(string(out)), "\n")
			var esp, good, icmp, tcp int
			for _, l := range lines {
				f := strings.Split(l, "\t")
				if len(f) < 6 || f[0] == "" {
					continue
				}
				esp++
				if f[2] == "1" || f[2] == "True" {
					t.Fatalf("tshark: bad ICV: %s", l)
				}
				if f[1] == "1" || f[1] == "True" {
					good++
				}
				if f[4] != "" {
					icmp++
				}
				if f[5] != "" {
					tcp++
				}
			}
			t.Logf("%d ESP packets, %d ICVs verified by tshark, %d decrypted to ICMP, %d to TCP", esp, good, icmp, tcp)
			// 12 echoes and a 256 KB transfer (how many TCP segments
			// depends on offloads and timing; a few dozen at least).
			if esp < 12+30 {
				t.Fatalf("only %d ESP packets captured:\n%s", esp, out)
			}
			if icmp < 12 || icmp+tcp != esp {
				t.Fatalf("tshark decrypted %d ICMP + %d TCP of %d ESP packets:\n%s", icmp, tcp, esp, tail(string(out), 20))
			}
			// tshark checks the HMAC ICVs and the GCM tags alike.
			if good != esp {
				t.Fatalf("tshark verified %d of %d ICVs", good, esp)
			}
		})
	}
}
