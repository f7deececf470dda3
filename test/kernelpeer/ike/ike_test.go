package kpike

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/test/kernelpeer"
)

// kcase is one conn, negotiated between gosec (192.0.2.1) and the guest's
// IKE daemon (192.0.2.2; strongSwan's charon, or Libreswan's pluto), with
// either side initiating.
type kcase struct {
	name      string
	conn      string
	typ       string // "tunnel" or "transport"
	ike       string // ike= of both sides
	esp, ah   string // esp= or ah= of both sides (one of them)
	gosecOnly string // extra lines for gosec's conn only
	// what the guest must show: a substring of the CHILD_SA's proposal in
	// `ike status` and of its `ip -s xfrm state`
	ssProposal, xfrmAlg string
	// the same conn for Libreswan: ike=, phase2alg= and pfs=, and the
	// conn's "ESP (or AH) algorithm newest:" line in its status
	lswIKE, lswPhase2 string
	lswPFS            bool
	lswPFSDefault     bool // no pfs= on either side (Libreswan's default: yes)
	lswNewest         string
	ahLen             int // AH cases: the AH length field (RFC 4302: 32-bit words - 2) on the wire
	bulk              int // bytes sent each way over TCP (0: none)
	// encap forces UDP encapsulation (RFC 3948) on both sides without a
	// NAT: strongSwan's forceencaps=yes, Libreswan's encapsulation=yes.
	// IKE moves to UDP 4500 and ESP rides in UDP 4500 both ways.
	encap bool
}

func (k kcase) proto() string {
	if k.ah != "" {
		return "ah"
	}
	return "esp"
}

// conf is the ipsec.conf of one side in strongSwan syntax, left = local
// (gosec's, and the strongSwan guest's).
func (k kcase) conf(left, right, leftSub, rightSub, extra string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# %s: gosec (192.0.2.1) <-> strongSwan with the kernel's XFRM (guest 192.0.2.2)\n", k.name)
	b.WriteString("config setup\n\tuniqueids=no\n\nconn %default\n\tkeyexchange=ikev1\n\tauthby=psk\n" +
		"\tikelifetime=1h\n\tlifetime=20m\n\trekeymargin=3m\n\tkeyingtries=1\n\tdpdaction=none\n\n")
	fmt.Fprintf(&b, "conn %s\n\tleft=%s\n\tright=%s\n", k.conn, left, right)
	if k.typ == "tunnel" {
		fmt.Fprintf(&b, "\tleftsubnet=%s\n\trightsubnet=%s\n", leftSub, rightSub)
	}
	fmt.Fprintf(&b, "\tike=%s\n", k.ike)
	if k.esp != "" {
		fmt.Fprintf(&b, "\tesp=%s\n", k.esp)
	} else {
		fmt.Fprintf(&b, "\tah=%s\n", k.ah)
	}
	if k.encap {
		b.WriteString("\tforceencaps=yes\n")
	}
	fmt.Fprintf(&b, "\ttype=%s\n\tauto=add\n%s", k.typ, extra)
	return b.String()
}

// pingTargets returns what the host pings (and from where) and what the
// guest pings.
func (k kcase) pingTargets() (hostDst string, hostOpts []string, guestDst string) {
	if k.typ == "tunnel" {
		return guestIn, []string{"-I", hostInner}, hostInner
	}
	return guestIP, nil, hostIP
}

const lswSHA1 = "ESP algorithm newest: AES_CBC_128-HMAC_SHA1_96; pfsgroup=<N/A>"

var cases = []kcase{
	{name: "esp-tunnel", conn: "ki-tunnel", typ: "tunnel", ike: "aes128-sha1-modp2048!", esp: "aes128-sha1!",
		ssProposal: "AES_CBC_128/HMAC_SHA1_96", xfrmAlg: "enc cbc(aes)", bulk: 4 << 20,
		lswIKE: "aes128-sha1;modp2048", lswPhase2: "aes128-sha1", lswNewest: lswSHA1},
	{name: "esp-transport", conn: "ki-transport", typ: "transport", ike: "aes128-sha1-modp2048!", esp: "aes128-sha1!",
		ssProposal: "AES_CBC_128/HMAC_SHA1_96", xfrmAlg: "auth-trunc hmac(sha1)", bulk: 4 << 20,
		lswIKE: "aes128-sha1;modp2048", lswPhase2: "aes128-sha1", lswNewest: lswSHA1},
	{name: "ah-sha1-transport", conn: "ki-ah", typ: "transport", ike: "aes128-sha1-modp2048!", ah: "sha1!",
		ssProposal: "HMAC_SHA1_96", xfrmAlg: "auth-trunc hmac(sha1)", ahLen: 4,
		lswIKE: "aes128-sha1;modp2048", lswPhase2: "sha1", lswNewest: "AH algorithm newest: HMAC_SHA1_96; pfsgroup=<N/A>"},
	{name: "ah-sha256-transport", conn: "ki-ah256", typ: "transport", ike: "aes128-sha1-modp2048!", ah: "sha256!",
		ssProposal: "HMAC_SHA2_256_128", xfrmAlg: "auth-trunc hmac(sha256)", ahLen: 5,
		lswIKE: "aes128-sha1;modp2048", lswPhase2: "sha2_256", lswNewest: "AH algorithm newest: HMAC_SHA2_256_128; pfsgroup=<N/A>"},
	{name: "esp-tunnel-pfs", conn: "ki-pfs", typ: "tunnel", ike: "aes128-sha1-modp2048!", esp: "aes128-sha1-modp2048!",
		ssProposal: "AES_CBC_128/HMAC_SHA1_96/MODP_2048", xfrmAlg: "enc cbc(aes)",
		lswIKE: "aes128-sha1;modp2048", lswPhase2: "aes128-sha1;modp2048", lswPFS: true,
		lswNewest: "ESP algorithm newest: AES_CBC_128-HMAC_SHA1_96; pfsgroup=MODP2048"},
	{name: "esp-tunnel-gcm", conn: "ki-gcm", typ: "tunnel", ike: "aes128-sha256-ecp256!", esp: "aes128gcm16!",
		ssProposal: "AES_GCM_16_128", xfrmAlg: "aead rfc4106(gcm(aes))",
		lswIKE: "aes128-sha2_256;dh19", lswPhase2: "aes_gcm128-null", lswNewest: "ESP algorithm newest: AES_GCM_16_128-NONE; pfsgroup=<N/A>"},
	{name: "esp-tunnel-natt", conn: "ki-natt", typ: "tunnel", ike: "aes128-sha1-modp2048!", esp: "aes128-sha1!", encap: true,
		ssProposal: "AES_CBC_128/HMAC_SHA1_96", xfrmAlg: "enc cbc(aes)", bulk: 4 << 20,
		lswIKE: "aes128-sha1;modp2048", lswPhase2: "aes128-sha1", lswNewest: lswSHA1},
}

// TestKernelIKE negotiates every case with gosec and with the guest's
// strongSwan initiating, then checks traffic both ways and the counters of
// both ends, the wire and the teardown by Delete.
func TestKernelIKE(t *testing.T) { testKernelIKE(t, strongSwan) }

func testKernelIKE(t *testing.T, p *peer) {
	guestWith(t, p)
	for _, k := range cases {
		for _, init := range []string{"gosec", "guest"} {
			runRetrying(t, k.name+"/"+init+"-initiates", func(t *testing.T) {
				start := time.Now()
				runCase(t, guestWith(t, p), p, k, init)
				t.Logf("%s/%s: %v", k.name, init, time.Since(start).Round(100*time.Millisecond))
			})
		}
	}
}

// prepare starts the guest's IKE daemon p and gosec in the host namespace,
// both with k's conn in p's dialect and nothing negotiated yet.
func prepare(t *testing.T, g *kernelpeer.Ctl, p *peer, k kcase) *daemon {
	t.Helper()
	return prepareConfs(t, g, p.conf(k, hostIP, guestIP, hostNet, guestNet, k.gosecOnly), p.conf(k, guestIP, hostIP, guestNet, hostNet, ""))
}

// prepareConfs is prepare with both sides' ipsec.conf given.
func prepareConfs(t *testing.T, g *kernelpeer.Ctl, gosecConf, guestConf string) *daemon {
	t.Helper()
	// a clean guest: no daemon, no SAs, no policies
	if _, err := g.Check("ike stop >/dev/null; ip xfrm state flush; ip xfrm policy flush"); err != nil {
		t.Fatal(err)
	}
	if err := pushFile(g, "/etc/ipsec.conf", guestConf, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := pushFile(g, "/etc/ipsec.secrets", fmt.Sprintf("%s %s : PSK \"%s\"\n", guestIP, hostIP, psk), 0o600); err != nil {
		t.Fatal(err)
	}
	if out, err := g.Check("ike start"); err != nil {
		t.Fatalf("ike start: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		if guestStalled {
			return // its control channel would only time out
		}
		if t.Failed() {
			_, out, _ := g.Run("ike status; ip -s xfrm state; ip xfrm policy; cat /proc/net/xfrm_stat | grep -v ' 0$'; ike log | tail -40")
			t.Logf("guest at failure (keys redacted):\n%s", keyHex.ReplaceAllString(out, "$1 0x…"))
		}
		g.Run("ike stop")
	})
	return startDaemon(t, gosecConf,
		fmt.Sprintf("%s %s : PSK \"%s\"\n", hostIP, guestIP, psk))
}

// establish negotiates k's conn, initiated by "gosec" or the "guest" (its
// IKE daemon p), and waits until both ends have installed their SAs.
func establish(t *testing.T, g *kernelpeer.Ctl, d *daemon, p *peer, k kcase, initiator string) {
	t.Helper()
	if initiator == "gosec" {
		out, err := d.ctl(60*time.Second, "up", k.conn)
		if err != nil || !gosecEstablished(out) {
			t.Fatalf("gosec up %s: %v\n%s", k.conn, err, out)
		}
	} else {
		out, err := g.Check("ike up " + k.conn)
		if err != nil || !p.established(out) {
			t.Fatalf("guest ike up %s: %v\n%s", k.conn, err, out)
		}
	}
	// IKEv1 responders install their SAs only when QM3 arrives: wait until
	// both ends have them before any traffic (kernel-peer README, pitfall 1)
	if !waitFor(10*time.Second, func() bool { return guestSACount(t, g) == 2 }) {
		t.Fatalf("the guest does not have 2 SAs after the exchange")
	}
	if !waitFor(10*time.Second, func() bool {
		st := d.status(t)
		_, in := st.sa(k.conn, "in")
		_, out := st.sa(k.conn, "out")
		return in && out
	}) {
		t.Fatalf("gosec has no SA pair for %s:\n%s", k.conn, d.mustCtl(t, "statusall"))
	}
}

func runCase(t *testing.T, g *kernelpeer.Ctl, p *peer, k kcase, initiator string) {
	d := prepare(t, g, p, k)
	statBefore := xfrmStat(t, g)
	pcap := startCapture(t)
	establish(t, g, d, p, k, initiator)

	// traffic both ways
	if stall := os.Getenv("KPIKE_STALL_GUEST"); stall != "" && strings.HasPrefix(t.Name(), "TestKernelIKE/"+stall) && !retrying {
		// Exercises runRetrying: the guest's link goes down, so it sends
		// nothing; the case must pass on the fresh guest.
		g.Run("ip link set eth0 down")
	}
	const pings = 3
	hostDst, hostOpts, guestDst := k.pingTargets()
	if err := pingHost(hostDst, pings, hostOpts...); err != nil {
		failTraffic(t, err)
	}
	if err := pingGuest(g, guestDst, pings); err != nil {
		failTraffic(t, err)
	}
	if k.bulk > 0 {
		file, sum := bulk(t, k.bulk)
		t0 := time.Now()
		if err := transferToGuest(g, file, sum, hostDst, 5001); err != nil {
			failTraffic(t, err)
		}
		t1 := time.Now()
		if err := transferFromGuest(g, sum, guestDst, guestDst, 5002); err != nil {
			failTraffic(t, err)
		}
		t.Logf("bulk %d bytes, SHA-256 %s…: host->guest %v, guest->host %v", k.bulk, sum[:16],
			t1.Sub(t0).Round(100*time.Millisecond), time.Since(t1).Round(100*time.Millisecond))
	}

	// the guest's kernel: two SAs of the negotiated kind, both used
	rc, raw, err := g.Run("ip -s xfrm state")
	if err != nil || rc != 0 {
		t.Fatalf("ip -s xfrm state: rc %d %v\n%s", rc, err, raw)
	}
	states, err := kernelpeer.ParseXfrmStates(raw)
	if err != nil {
		t.Fatalf("%v\n%s", err, raw)
	}
	if len(states) != 2 {
		t.Fatalf("guest has %d SAs, want 2:\n%s", len(states), raw)
	}
	if !strings.Contains(raw, k.xfrmAlg) {
		t.Errorf("guest SAs do not use %q:\n%s", k.xfrmAlg, raw)
	}
	var gin, gout kernelpeer.XfrmState
	for _, s := range states {
		switch {
		case s.Src == hostIP && s.Dst == guestIP:
			gin = s
		case s.Src == guestIP && s.Dst == hostIP:
			gout = s
		}
		if s.Proto != k.proto() || s.Mode != k.typ {
			t.Errorf("guest SA %08x: proto %s mode %s, want %s %s", s.SPI, s.Proto, s.Mode, k.proto(), k.typ)
		}
		if k.encap && (s.Encap != "espinudp" || s.EncapSport != 4500 || s.EncapDport != 4500) || !k.encap && s.Encap != "" {
			t.Errorf("guest SA %08x: encap %q %d %d, want %s", s.SPI, s.Encap, s.EncapSport, s.EncapDport,
				map[bool]string{true: "espinudp 4500 4500", false: "none"}[k.encap])
		}
		// charon gives IPv4 AH SAs align4 (XFRM_STATE_ALIGN4): the kernel
		// then sends and expects RFC 4302's 4-octet form, as gosec does by
		// default (without it Linux pads AH to 8 octets)
		if k.ah != "" && !strings.Contains(s.Flags, "align4") {
			t.Errorf("guest AH SA %08x without align4 (flags %q)", s.SPI, s.Flags)
		}
		if s.Replay != 0 || s.Failed != 0 || s.ReplayWindowDrops != 0 {
			t.Errorf("guest SA %08x: replay %d failed %d replay-window %d", s.SPI, s.Replay, s.Failed, s.ReplayWindowDrops)
		}
	}
	if gin.SPI == 0 || gout.SPI == 0 {
		t.Fatalf("guest SAs are not %s<->%s:\n%s", hostIP, guestIP, raw)
	}
	if k.bulk == 0 && (gin.Packets != 2*pings || gout.Packets != 2*pings) {
		t.Errorf("guest SAs: in %d, out %d packets, want %d each (%d pings each way)", gin.Packets, gout.Packets, 2*pings, pings)
	}
	if d := kernelpeer.StatDelta(statBefore, xfrmStat(t, g)); len(d) > 0 {
		t.Errorf("guest /proc/net/xfrm_stat changed: %v", d)
	}
	ss, err := g.Check("ike status")
	if err != nil {
		t.Fatal(err)
	}
	if ok, want := p.childInstalled(ss, k); !ok {
		t.Errorf("%s's status does not show %s:\n%s", p.name, want, ss)
	}

	// gosec: the mirror image of the guest's SAs
	st := d.status(t)
	sin, _ := st.sa(k.conn, "in")
	sout, _ := st.sa(k.conn, "out")
	for _, m := range []struct {
		dir   string
		gosec saStatus
		kern  kernelpeer.XfrmState
	}{{"in", sin, gout}, {"out", sout, gin}} {
		spi, _ := strconv.ParseUint(m.gosec.SPI, 16, 32)
		if uint32(spi) != m.kern.SPI || !strings.EqualFold(m.gosec.Proto, k.proto()) || !strings.EqualFold(m.gosec.Mode, k.typ) || m.gosec.Encap != k.encap {
			t.Errorf("gosec %s SA %s %s %s encap=%v; the guest's is %08x %s %s", m.dir, m.gosec.SPI, m.gosec.Proto, m.gosec.Mode, m.gosec.Encap, m.kern.SPI, k.proto(), k.typ)
		}
		if m.gosec.Packets != m.kern.Packets {
			t.Errorf("gosec %s SA counted %d packets, the guest's SA %d", m.dir, m.gosec.Packets, m.kern.Packets)
		}
	}
	if st.isakmp(k.conn) == "" || st.ISAKMP[0].NATT != k.encap {
		t.Errorf("gosec's ISAKMP SA: %+v, want one with NAT-T %v (no NAT between the ends; forced encapsulation: %v)", st.ISAKMP, k.encap, k.encap)
	}
	if bad := st.nonzero(); len(bad) > 0 {
		t.Errorf("gosec drops: %v", bad)
	}

	// teardown by Delete, from the initiator
	if initiator == "gosec" {
		d.mustCtl(t, "down", k.conn)
	} else if _, err := g.Check("ike down " + k.conn); err != nil {
		t.Fatal(err)
	}
	if !waitFor(10*time.Second, func() bool { return guestSACount(t, g) == 0 }) {
		t.Errorf("the guest still has SAs after the Delete")
	}
	if !waitFor(10*time.Second, func() bool {
		st := d.status(t)
		_, in := st.sa(k.conn, "in")
		_, out := st.sa(k.conn, "out")
		return !in && !out
	}) {
		t.Errorf("gosec still has SAs after the Delete:\n%s", d.mustCtl(t, "statusall"))
	}
	// the ISAKMP SA goes too, on both ends
	if !waitFor(10*time.Second, func() bool {
		out, err := g.Check("ike status")
		return err == nil && p.noIKESA(out)
	}) {
		out, _ := g.Check("ike status")
		t.Errorf("%s still has an IKE SA after the Delete:\n%s", p.name, out)
	}
	if !waitFor(10*time.Second, func() bool { return d.status(t).isakmp(k.conn) == "" }) {
		t.Errorf("gosec still has an ISAKMP SA after the Delete:\n%s", d.mustCtl(t, "statusall"))
	}

	// the wire: only raw ESP/AH (or, encapsulated, ESP in UDP 4500), one
	// packet per SA packet, the AH length form
	w := pcap.stop(t)
	carrier := map[string]string{"esp": "50", "ah": "51"}[k.proto()]
	if k.encap {
		carrier = "udp-esp"
		if w.proto[hostIP]["50"]+w.proto[guestIP]["50"] != 0 || w.ike4500 == 0 {
			t.Errorf("wire: %d raw ESP packets and %d IKE messages on UDP 4500, want none and some (forced encapsulation)",
				w.proto[hostIP]["50"]+w.proto[guestIP]["50"], w.ike4500)
		}
	} else if n := w.ike4500 + w.keepalive + w.proto[hostIP]["udp-esp"] + w.proto[guestIP]["udp-esp"]; n != 0 {
		t.Errorf("wire: %d packets on UDP 4500, want only IKE on 500 and %s", n, k.proto())
	}
	if w.other[hostIP] != 0 || w.other[guestIP] != 0 {
		t.Errorf("wire: %v packets of other protocols, want only IKE and %s", w.other, k.proto())
	}
	if w.proto[hostIP][carrier] != gin.Packets || w.proto[guestIP][carrier] != gout.Packets {
		t.Errorf("wire: %s %s->%s %d, %s->%s %d; the guest's SAs counted %d in, %d out",
			k.proto(), hostIP, guestIP, w.proto[hostIP][carrier], guestIP, hostIP, w.proto[guestIP][carrier], gin.Packets, gout.Packets)
	}
	if k.ahLen != 0 {
		for src, lens := range w.ahLen {
			if len(lens) != 1 || lens[k.ahLen] == 0 {
				t.Errorf("AH from %s: length fields %v, want only %d", src, lens, k.ahLen)
			}
		}
	}
	t.Logf("guest `ip -s xfrm state` before the Delete (keys redacted):\n%s", keyHex.ReplaceAllString(raw, "$1 0x…"))
	t.Logf("guest SAs in %08x %d pkts, out %08x %d pkts; wire %v, ike/500 %d, ike/4500 %d, keepalives %d, AH lengths %v", gin.SPI, gin.Packets,
		gout.SPI, gout.Packets, w.proto, w.ike, w.ike4500, w.keepalive, w.ahLen)
}

// keyHex matches the key of an `ip xfrm state` algorithm line.
var keyHex = regexp.MustCompile(`((?:enc|auth|auth-trunc|aead|comp) \S+) 0x[0-9a-f]+`)

func guestSACount(t *testing.T, g *kernelpeer.Ctl) int {
	t.Helper()
	out, err := g.Check("ip xfrm state count")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(out)
	n := -1
	if len(f) == 3 && f[0] == "SAD" && f[1] == "count" {
		n, _ = strconv.Atoi(f[2])
	}
	return n
}

func xfrmStat(t *testing.T, g *kernelpeer.Ctl) map[string]uint64 {
	t.Helper()
	out, err := g.Check("cat /proc/net/xfrm_stat")
	if err != nil {
		t.Fatal(err)
	}
	m, err := kernelpeer.ParseXfrmStat(out)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// capture is tcpdump on the tap in the host namespace.
type capture struct {
	cmd  *exec.Cmd
	file string
}

func startCapture(t *testing.T) *capture {
	t.Helper()
	c := &capture{file: filepath.Join(t.TempDir(), "tap.pcap")}
	c.cmd = exec.Command("ip", "netns", "exec", nsName, "tcpdump", "-i", tapName, "-n", "-U", "--immediate-mode", "-s", "128", "-w", c.file)
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if c.cmd.ProcessState == nil {
			c.cmd.Process.Kill()
			c.cmd.Wait()
		}
	})
	// tcpdump has the tap open once the file has its header
	if !waitFor(5*time.Second, func() bool {
		fi, err := os.Stat(c.file)
		return err == nil && fi.Size() > 0
	}) {
		t.Fatal("tcpdump did not start")
	}
	return c
}

// wire is what tshark read from a capture, by source address.
type wire struct {
	// src -> IP protocol ("50", "51"; "udp-esp": ESP in UDP 4500) -> packets
	proto     map[string]map[string]uint64
	other     map[string]uint64         // src -> packets that are neither IKE, ESP nor AH
	ahLen     map[string]map[int]uint64 // src -> AH length field -> packets
	ike       uint64                    // IKE on UDP 500
	ike4500   uint64                    // IKE on UDP 4500 (non-ESP marker)
	keepalive uint64                    // NAT-T keepalives (one octet) on UDP 4500
}

func (c *capture) stop(t *testing.T) wire {
	t.Helper()
	// --immediate-mode hands every packet over at once; the pause covers
	// the last one's way through the tap
	time.Sleep(500 * time.Millisecond)
	c.cmd.Process.Signal(os.Interrupt)
	c.cmd.Wait()
	out, err := exec.Command("tshark", "-r", c.file, "-n", "-T", "fields", "-E", "separator=,",
		"-e", "ip.src", "-e", "ip.proto", "-e", "udp.dstport", "-e", "ah.length", "-e", "esp.spi", "-e", "udp.length").CombinedOutput()
	if err != nil {
		t.Fatalf("tshark: %v\n%s", err, out)
	}
	w := wire{proto: map[string]map[string]uint64{}, other: map[string]uint64{}, ahLen: map[string]map[int]uint64{}}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 6 || f[0] == "" {
			continue // ARP
		}
		src, proto := f[0], f[1]
		if w.proto[src] == nil {
			w.proto[src] = map[string]uint64{}
		}
		switch {
		case proto == "50" || proto == "51":
			w.proto[src][proto]++
			if proto == "51" {
				n, _ := strconv.Atoi(strings.Split(f[3], ";")[0])
				if w.ahLen[src] == nil {
					w.ahLen[src] = map[int]uint64{}
				}
				w.ahLen[src][n]++
			}
		case proto == "17" && f[2] == "500":
			w.ike++
		case proto == "17" && f[2] == "4500" && f[4] != "":
			w.proto[src]["udp-esp"]++
		case proto == "17" && f[2] == "4500" && f[5] == "9":
			w.keepalive++
		case proto == "17" && f[2] == "4500":
			w.ike4500++
		default:
			w.other[src]++
		}
	}
	return w
}

// TestKernelIKEAHAlign8 is the counter-check of the AH cases: with
// ah_align=8 gosec pads HMAC-SHA2-256-128 AH to 32 octets (length field 6),
// which the guest's align4 SA must reject, visibly in its xfrm_stat, while
// gosec keeps accepting the kernel's 4-octet form. It shows that the AH
// cases above would notice a length mismatch.
func TestKernelIKEAHAlign8(t *testing.T) {
	g := guest(t)
	k := kcase{name: "ah-sha256-align8", conn: "ki-ah8", typ: "transport", ike: "aes128-sha1-modp2048!", ah: "sha256!",
		gosecOnly: "\tah_align=8\n"}
	d := prepare(t, g, strongSwan, k)
	before := xfrmStat(t, g)
	pcap := startCapture(t)
	establish(t, g, d, strongSwan, k, "gosec")
	const pings = 3
	if err := pingHost(guestIP, pings); err == nil {
		t.Errorf("ping %s succeeded although gosec sends 8-octet AH to an align4 SA", guestIP)
	}
	if err := pingGuest(g, hostIP, pings); err == nil {
		t.Errorf("guest ping %s succeeded although gosec answers with 8-octet AH", hostIP)
	}
	after := xfrmStat(t, g)
	// every AH packet from gosec: 3 echo requests and 3 replies
	if n := after["XfrmInStateProtoError"] - before["XfrmInStateProtoError"]; n != 2*pings {
		t.Errorf("guest XfrmInStateProtoError +%d, want +%d (all: %v)", n, 2*pings, kernelpeer.StatDelta(before, after))
	}
	st := d.status(t)
	if in, _ := st.sa(k.conn, "in"); in.Packets != pings {
		t.Errorf("gosec accepted %d AH packets of the guest's 4-octet form, want %d (its echo requests)", in.Packets, pings)
	}
	w := pcap.stop(t)
	if len(w.ahLen[hostIP]) != 1 || w.ahLen[hostIP][6] != 2*pings || len(w.ahLen[guestIP]) != 1 || w.ahLen[guestIP][5] != pings {
		t.Errorf("AH length fields on the wire: %v, want %s: 6 x%d, %s: 5 x%d", w.ahLen, hostIP, 2*pings, guestIP, pings)
	}
	t.Logf("guest xfrm_stat %v; AH lengths on the wire %v", kernelpeer.StatDelta(before, after), w.ahLen)
}
