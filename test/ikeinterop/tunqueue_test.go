package ikeinterop

import (
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestStrongSwanTUNQueues: gosec with two TUN queues negotiates two
// tunnels with strongSwan, to 10.2.0.0/24 and to a second LAN
// 10.3.0.0/24 behind it. gosec's steering reads the two destinations from
// different queues, so two readers seal at once, and each tunnel carries
// two TCP transfers at a time: strongSwan (replay window 32) must take
// every transfer whole and count them on the right CHILD_SA, and no gosec
// SA may count a drop.
func TestStrongSwanTUNQueues(t *testing.T) {
	c2 := conn{name: "q2", ike: "aes128-sha256-modp2048", esp: "aes128gcm16", left: "192.0.2.1", right: "192.0.2.2",
		leftSub: "10.1.0.0/24", rightSub: "10.2.0.0/24"}
	c3 := c2
	c3.name, c3.rightSub = "q3", "10.3.0.0/24"
	// Both conns in one file: the second without the first's preamble.
	both := func(a, b conn) string {
		return a.text() + "\nconn " + b.name + strings.SplitN(b.text(), "conn "+b.name, 2)[1]
	}
	const prefix = "gkq-"
	setup := func() {
		for _, args := range [][]string{
			{"-n", prefix + "right", "addr", "add", "10.3.0.1/24", "dev", "lan0"},
			{"-n", prefix + "rightlan", "addr", "add", "10.3.0.2/24", "dev", "eth0"},
		} {
			if out, err := run(t, 10*time.Second, "ip", args...); err != nil {
				t.Fatalf("ip %v: %v\n%s", args, err, out)
			}
		}
	}
	e := newEnvSetup(t, prefix, false, setup, both(c2, c3), secrets("192.0.2.1", "192.0.2.2"),
		both(c2.mirror(), c3.mirror()), secrets("192.0.2.2", "192.0.2.1"), "--tun-queues", "2")
	for _, c := range []conn{c2, c3} {
		if out, err := e.gosec(60*time.Second, "up", c.name); err != nil || !strings.Contains(out, "established successfully") {
			t.Fatalf("gosec up %s: %v\n%s", c.name, err, out)
		}
	}
	for _, dst := range []string{"10.2.0.2", "10.3.0.2"} {
		if err := e.ping("leftlan", dst); err != nil {
			t.Fatal(err)
		}
	}

	const size = 4 << 20
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for _, dst := range []string{"10.2.0.2", "10.2.0.2", "10.3.0.2", "10.3.0.2"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := e.transfer("leftlan", "rightlan", dst, size); err != nil {
				errs <- fmt.Errorf("transfer to %s: %w", dst, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	out, err := e.gosec(30*time.Second, "statusall", "--json")
	if err != nil {
		t.Fatalf("statusall: %v\n%s", err, out)
	}
	var st struct {
		TUNQueues int `json:"tun_queues"`
		Plane     struct {
			TUNQueuePackets []uint64 `json:"tun_queue_packets"`
		} `json:"dataplane"`
		Conns []struct {
			Name string `json:"name"`
			SAs  []struct {
				Dir     string            `json:"dir"`
				Packets uint64            `json:"packets"`
				Drops   map[string]uint64 `json:"drops"`
			} `json:"sas"`
		} `json:"conns"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("statusall --json: %v", err)
	}
	read := st.Plane.TUNQueuePackets
	t.Logf("packets read per TUN queue: %v", read)
	if st.TUNQueues != 2 || len(read) != 2 || read[0] < 1000 || read[1] < 1000 {
		t.Errorf("gosec did not read the two tunnels from two queues: %d queues, %v", st.TUNQueues, read)
	}
	for _, c := range st.Conns {
		for _, sa := range c.SAs {
			if len(sa.Drops) > 0 {
				t.Errorf("gosec %s %s SA dropped %v", c.Name, sa.Dir, sa.Drops)
			}
		}
	}
	for _, c := range []conn{c2, c3} {
		bi, bo, status := e.ssBytes(c.name)
		if bi < 2*size || bo == 0 {
			t.Errorf("strongSwan's %s counted %d bytes in, %d out (want at least %d in):\n%s", c.name, bi, bo, 2*size, status)
		}
	}
}
