package e2e

import (
	"strings"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/testutil/wire"
)

// TestIKESecondaryAddress: gw2 is reached at a second address on its WAN
// link (192.0.2.12 beside the primary 192.0.2.2). Its answers, on UDP 500
// and on the NAT-T port, must leave from the address gw1 sent to, or a
// strict initiator (strongSwan, Libreswan) drops them: a capture on gw1's
// WAN must see no IKE from the primary address while both conns come up
// and carry traffic.
func TestIKESecondaryAddress(t *testing.T) {
	tp := newTopo(t, "gsy-")
	tp.must(tp.ns("gw2"), "ip", "addr", "add", "192.0.2.12/24", "dev", "wan0")
	cases := []ikeCase{
		{name: "sec-500", ike: "aes128-sha256-modp2048", esp: "aes128gcm16"},
		{name: "sec-natt", ike: "aes128-sha256-modp2048", esp: "aes128gcm16", encaps: true},
	}
	var conf strings.Builder
	for _, c := range cases {
		conf.WriteString(strings.Replace(c.conf(), "right=192.0.2.2\n", "right=192.0.2.12\n", 1))
	}
	secrets := "192.0.2.1 192.0.2.12 : PSK \"gosec-e2e-psk\"\n"

	// what gw2 sends, as gw1 receives it
	capture := wire.WatchLeaks(t, "udp and (port 500 or port 4500)", wire.Tap{Label: "gw2", NetNS: tp.ns("gw1"), Iface: "wan0", Dir: "in"})

	gw1 := tp.startDaemon(tp.ns("gw1"), conf.String(), secrets)
	tp.startDaemon(tp.ns("gw2"), conf.String(), secrets)
	for _, c := range cases {
		out := gw1.mustCtl("up", c.name)
		if !strings.Contains(out, "CHILD_SA") {
			t.Fatalf("%s: gosec up:\n%s", c.name, out)
		}
		if err := tp.ping(tp.ns("lan1"), "10.2.0.2", 3); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if st := statusOf(t, gw1, c.name); st.in.Packets == 0 || st.in.Encap != c.encaps {
			t.Fatalf("%s: gw1's inbound SA %+v", c.name, st.in)
		}
		gw1.mustCtl("down", c.name)
	}
	captured, problems := capture.Stop()
	var all []string
	for _, l := range captured {
		all = append(all, l.Line)
	}
	if len(problems) > 0 {
		t.Log(strings.Join(problems, "\n"))
	}
	var fromSecondary, fromPrimary []string
	for _, line := range all {
		switch {
		case strings.Contains(line, "192.0.2.12.500 >"), strings.Contains(line, "192.0.2.12.4500 >"):
			fromSecondary = append(fromSecondary, line)
		case strings.Contains(line, "192.0.2.2.500 >"), strings.Contains(line, "192.0.2.2.4500 >"):
			fromPrimary = append(fromPrimary, line)
		}
	}
	if len(fromPrimary) > 0 {
		t.Errorf("gw2 answered from its primary address %d times:\n%s", len(fromPrimary), strings.Join(fromPrimary, "\n"))
	}
	var natt int
	for _, l := range fromSecondary {
		if strings.Contains(l, ".4500 >") {
			natt++
		}
	}
	if len(fromSecondary) == 0 || natt == 0 {
		t.Fatalf("capture holds %d packets from 192.0.2.12 (%d on 4500): the capture did not work\n%s", len(fromSecondary), natt, strings.Join(all, "\n"))
	}
	t.Logf("%d IKE and ESP-in-UDP packets from 192.0.2.12 (%d on the NAT-T port), none from 192.0.2.2", len(fromSecondary), natt)
}
