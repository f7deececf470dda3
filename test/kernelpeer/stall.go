package kernelpeer

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// GuestSendsNothing reports whether a guest's network has stopped
// sending: ARP requests from the host namespace ns (busybox arping on
// tap, through a packet socket, so neither gosec's filter nor any SA is
// involved) and not one answer, nor one frame more out of the guest onto
// the tap (its rx_packets counts what QEMU writes). A live guest answers
// ARP whatever its SAs and gosec do; what silences it is its virtio-net
// transmit path stalling (seen in CI under TCG: the guest's ESP output
// sequence stood still for two minutes while it kept receiving; its nc
// hung mid-transfer). The string says what the probe saw.
func GuestSendsNothing(ns, tap, guestIP string) (bool, string) {
	run := func(timeout time.Duration, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, args...)...).CombinedOutput()
		return string(out), err
	}
	rx := func() string {
		out, err := run(5*time.Second, "cat", "/sys/class/net/"+tap+"/statistics/rx_packets")
		if err != nil {
			return fmt.Sprintf("? (%v)", err)
		}
		return strings.TrimSpace(out)
	}
	before := rx()
	out, err := run(15*time.Second, "busybox", "arping", "-c", "3", "-w", "4", "-I", tap, guestIP)
	after := rx()
	why := fmt.Sprintf("arping %s: %v, tap rx_packets %s before, %s after: %s", guestIP, err, before, after,
		strings.Join(strings.Fields(out), " "))
	return err != nil && before == after, why
}
