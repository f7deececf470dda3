package kernelpeer

import (
	"slices"
	"strings"
	"testing"
	"time"
)

// negCase is a deliberately broken pairing; check inspects what each side
// counted after pings from both sides.
type negCase struct {
	c     *kcase
	check func(t *testing.T, r negResult)
}

type negResult struct {
	hostPingErr, guestPingErr error
	statDelta                 map[string]int64 // guest /proc/net/xfrm_stat
	kin, kout                 *XfrmState       // guest SAs (into / out of the guest)
	gin, gout                 saStatus         // gosec SAs
}

func byName(name string) suite {
	for _, s := range append(espSuites(), ahSuites...) {
		if s.gosec == name {
			return s
		}
	}
	panic("no suite " + name)
}

// negativeCases show that the harness sees the kernel and gosec reject
// each other's packets: wrong integrity keys each way, and AH with
// HMAC-SHA2-256 where gosec sends RFC 4302's 4-octet-aligned form to a
// kernel SA without `flag align4`.
func negativeCases() []negCase {
	mk := func(idx int, name, s string, f func(*kcase)) *kcase {
		c := &kcase{name: name, s: byName(s), transport: true, idx: idx}
		c.leftSPI, c.rightSPI = uint32(0x10000+idx), uint32(0x20000+idx)
		c.leftEnc, c.rightEnc = hexKey(newRand(idx), c.s.encLen), hexKey(newRand(idx+1), c.s.encLen)
		c.leftInteg, c.rightAuth = hexKey(newRand(idx+2), c.s.intLen), hexKey(newRand(idx+3), c.s.intLen)
		f(c)
		return c
	}
	intoGuestRejected := func(t *testing.T, r negResult) {
		if r.hostPingErr == nil {
			t.Error("ping from gosec's side succeeded with a wrong key in the guest")
		}
		if r.statDelta["XfrmInStateProtoError"] < 3 || r.kin.Failed < 3 {
			t.Errorf("guest counted XfrmInStateProtoError %+d, SA failed %d; want >= 3 each", r.statDelta["XfrmInStateProtoError"], r.kin.Failed)
		}
		if r.gout.Packets < 3 || r.kin.Packets != 0 {
			t.Errorf("gosec sent %d, guest accepted %d; want >= 3 sent, none accepted", r.gout.Packets, r.kin.Packets)
		}
	}
	fromGuestRejected := func(t *testing.T, r negResult) {
		if r.guestPingErr == nil {
			t.Error("ping from the guest succeeded with a wrong key in the guest")
		}
		if r.gin.Drops["icv"] < 3 || r.gin.Packets != 0 {
			t.Errorf("gosec's inbound SA: %d packets, drops %v; want 0 packets and >= 3 icv drops", r.gin.Packets, r.gin.Drops)
		}
		if r.kout.OSeq < 3 {
			t.Errorf("the guest sent %d packets, want >= 3", r.kout.OSeq)
		}
	}
	return []negCase{
		{mk(201, "neg-esp-bad-key-into-guest", "aes128-sha1", func(c *kcase) { c.badGuestKey = "in" }), intoGuestRejected},
		{mk(202, "neg-esp-bad-key-from-guest", "aes128-sha1", func(c *kcase) { c.badGuestKey = "out" }), fromGuestRejected},
		{mk(203, "neg-ah-bad-key-into-guest", "sha1", func(c *kcase) { c.badGuestKey = "in" }), intoGuestRejected},
		{mk(204, "neg-ah-bad-key-from-guest", "sha1", func(c *kcase) { c.badGuestKey = "out" }), fromGuestRejected},
		{mk(205, "neg-ah-sha256-align4-to-linux-align8", "sha256", func(c *kcase) { c.guestAlign8 = true }),
			func(t *testing.T, r negResult) {
				// The kernel rejects gosec's 28-octet AH (it wants 32), so
				// neither ping gets an answer; gosec still accepts the
				// kernel's 8-octet form (RFC 4302 allows the padding).
				if r.hostPingErr == nil || r.guestPingErr == nil {
					t.Errorf("pings succeeded (gosec side: %v, guest: %v); the kernel should reject 4-octet AH", r.hostPingErr, r.guestPingErr)
				}
				if r.kin.Packets != 0 {
					t.Errorf("the guest accepted %d AH packets of gosec's 4-octet form", r.kin.Packets)
				}
				var errs int64
				for k, v := range r.statDelta {
					if strings.HasPrefix(k, "XfrmIn") {
						errs += v
					}
				}
				if errs < 6 {
					t.Errorf("guest XfrmIn* errors moved by %d, want >= 6 (3 requests, 3 replies): %v", errs, r.statDelta)
				}
				if r.gin.Packets < 3 || len(r.gin.Drops) != 0 {
					t.Errorf("gosec accepted %d of the kernel's 8-octet AH packets (drops %v), want >= 3 and no drops", r.gin.Packets, r.gin.Drops)
				}
			}},
	}
}

// TestKernelPeerNegative checks that mismatched SAs fail visibly on the
// side that must reject them, so that the clean counters of TestKernelPeer
// mean something.
func TestKernelPeerNegative(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a QEMU guest; not in -short")
	}
	g := guest(t)
	cases := negativeCases()
	var conf strings.Builder
	for _, nc := range cases {
		conf.WriteString(nc.c.conf())
	}
	d := startDaemon(t, conf.String())
	for _, nc := range cases {
		t.Run(nc.c.name, func(t *testing.T) {
			c := nc.c
			r := runBroken(t, g, d, c, func() (error, error) {
				// a short wait: most of these pings get no answer
				return pingHost(guestIP, 3, "-W", "1"), pingGuest(g, hostIP, 3, "-W", "1")
			})
			nc.check(t, r)
			if t.Failed() {
				diagnose(t, g, d, c, nil)
			}
		})
	}
}

// runBroken sets up c on both sides, runs traffic and collects both sides'
// counters.
func runBroken(t *testing.T, g *Ctl, d *daemon, c *kcase, traffic func() (error, error)) negResult {
	t.Helper()
	if out, err := g.Check(strings.Join(c.guestCmds(), " && ")); err != nil {
		t.Fatalf("guest: %v\n%s", err, out)
	}
	defer g.Run("ip xfrm policy flush; ip xfrm state flush")
	d.mustCtl(t, "up", c.name)
	defer d.ctl(15*time.Second, "down", c.name)
	stat0, err := guestXfrmStat(g)
	if err != nil {
		t.Fatal(err)
	}
	var r negResult
	r.hostPingErr, r.guestPingErr = traffic()
	stat1, err := guestXfrmStat(g)
	if err != nil {
		t.Fatal(err)
	}
	r.statDelta = map[string]int64{}
	for k, v := range stat1 {
		if v != stat0[k] {
			r.statDelta[k] = int64(v - stat0[k])
		}
	}
	out, err := g.Check("ip -s xfrm state")
	if err != nil {
		t.Fatal(err)
	}
	states, err := ParseXfrmStates(out)
	if err != nil {
		t.Fatal(err)
	}
	var ok bool
	if r.kin, r.kout, ok = findStates(states, c); !ok {
		t.Fatalf("guest SAs not found:\n%s", out)
	}
	st := d.status(t)
	r.gin, _ = st.sa(c.name, "in")
	r.gout, _ = st.sa(c.name, "out")
	keys := make([]string, 0, len(r.statDelta))
	for k := range r.statDelta {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	t.Logf("guest xfrm_stat delta %v; guest in-SA %d pkts failed %d, out-SA oseq %d; gosec in %d pkts drops %v, out %d pkts",
		keys, r.kin.Packets, r.kin.Failed, r.kout.OSeq, r.gin.Packets, r.gin.Drops, r.gout.Packets)
	return r
}

// TestKernelPeerKnownGaps holds interop failures found with this peer.
// The one so far, now fixed: in transport mode a datagram larger than the
// TUN MTU without DF is fragmented by the host kernel before it reaches
// the TUN; gosec used to refuse the fragments (transport mode protects
// whole datagrams, RFC 4303 3.1.1/3.3.4) and now reassembles them, seals
// the whole datagram and fragments the ESP/AH packet, as the Linux kernel
// does: 3000-octet echoes both ways must work.
func TestKernelPeerKnownGaps(t *testing.T) {
	g := guest(t)
	var cs []*kcase
	for i, s := range []string{"aes128-sha1", "sha256"} {
		idx := 220 + i
		c := &kcase{s: byName(s), transport: true, idx: idx}
		c.name = "gap-" + c.proto() + "-" + s + "-transport-large-ping"
		c.leftSPI, c.rightSPI = uint32(0x10000+idx), uint32(0x20000+idx)
		c.leftEnc, c.rightEnc = hexKey(newRand(idx), c.s.encLen), hexKey(newRand(idx+1), c.s.encLen)
		c.leftInteg, c.rightAuth = hexKey(newRand(idx+2), c.s.intLen), hexKey(newRand(idx+3), c.s.intLen)
		cs = append(cs, c)
	}
	var conf strings.Builder
	for _, c := range cs {
		conf.WriteString(c.conf())
	}
	d := startDaemon(t, conf.String())
	for _, c := range cs {
		t.Run(c.name, func(t *testing.T) {
			stop := startCapture(t, c.name)
			r := runBroken(t, g, d, c, func() (error, error) {
				return pingHost(guestIP, 2, "-s", "3000"), pingGuest(g, hostIP, 2, "-s", "3000")
			})
			stop()
			if r.hostPingErr != nil || r.guestPingErr != nil {
				t.Errorf("large ping from gosec's side: %v\nlarge ping from the guest: %v\ngosec out-SA drops %v",
					r.hostPingErr, r.guestPingErr, r.gout.Drops)
			}
		})
	}
}
