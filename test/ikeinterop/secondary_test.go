package ikeinterop

import (
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil/wire"
)

// TestStrongSwanNATTPortSecondary: strongSwan starts Main Mode directly
// on gosec's NAT-T port (left/rightikeport=4500, RFC 3947 non-ESP marker
// from the first message) to a second address of gosec's on its WAN link.
// gosec must answer every message from that address, not from the
// primary one the kernel would choose (a peer matches replies to the
// address it asked), and its ESP-in-UDP must leave from it too; a
// capture on gosec's WAN checks that nothing of IKE or ESP-in-UDP leaves
// from 192.0.2.1.
func TestStrongSwanNATTPortSecondary(t *testing.T) {
	// gosec's side is left=%any: which of its addresses a negotiation
	// uses is the one the peer sent to (with left=192.0.2.11 the conn
	// would name it).
	gs := conn{name: "sec4500", ike: "aes128-sha256-modp2048", esp: "aes128gcm16", left: "%any", right: "192.0.2.2",
		leftSub: "10.1.0.0/24", rightSub: "10.2.0.0/24"}
	ss := gs.mirror()
	ss.right = "192.0.2.11"
	// both ports 4500: charon adds the non-ESP marker only when it sends
	// from its NAT-T socket
	ssText := strings.Replace(ss.text(), "\tright=192.0.2.11\n", "\tright=192.0.2.11\n\trightikeport=4500\n\tleftikeport=4500\n", 1)
	if !strings.Contains(ssText, "rightikeport=4500") {
		t.Fatalf("strongSwan conf without rightikeport:\n%s", ssText)
	}
	second := func() {
		if out, err := run(t, 10*time.Second, "ip", "-n", "gks-left", "addr", "add", "192.0.2.11/24", "dev", "wan0"); err != nil {
			t.Fatalf("second address: %v\n%s", err, out)
		}
	}
	e := newEnvSetup(t, "gks-", false, second, gs.text(), secrets("%any", "192.0.2.2"), ssText, secrets("192.0.2.2", "192.0.2.11"))

	// what gosec sends on its WAN
	capture := wire.WatchLeaks(t, "udp and (port 500 or port 4500)", wire.Tap{Label: "gosec", NetNS: "gks-left", Iface: "wan0"})

	out, err := e.peer(60*time.Second, "ipsec", "up", gs.name)
	if err != nil || !strings.Contains(out, "established successfully") {
		t.Fatalf("strongSwan up: %v\n%s", err, out)
	}
	if !strings.Contains(out, "192.0.2.11[4500]") {
		t.Fatalf("strongSwan did not start on port 4500:\n%s", out)
	}
	if err := e.ping("leftlan", "10.2.0.2"); err != nil {
		t.Fatal(err)
	}
	if err := e.ping("rightlan", "10.1.0.2"); err != nil {
		t.Fatal(err)
	}
	captured, problems := capture.Stop()
	var lines []string
	for _, l := range captured {
		lines = append(lines, l.Line)
	}
	text := strings.Join(append(lines, problems...), "\n")
	if !strings.Contains(text, "192.0.2.11.4500 > 192.0.2.2.4500") {
		t.Fatalf("the capture holds nothing from 192.0.2.11:4500 (capture broken?):\n%s", text)
	}
	for _, line := range lines {
		if strings.Contains(line, " 192.0.2.1.") {
			t.Fatalf("gosec sent from its primary address, not the one it was asked on:\n%s\n\nwhole capture:\n%s", line, text)
		}
	}
}
