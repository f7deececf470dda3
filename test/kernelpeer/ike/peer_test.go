package kpike

import (
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestKernelIKELibreswan is TestKernelIKE against Libreswan's pluto in the
// guest, on its own image (booted when this test starts; this file sorts
// after the strongSwan tests, so the package boots each image once).
func TestKernelIKELibreswan(t *testing.T) { testKernelIKE(t, libreswan) }

// TestKernelIKELibreswanDefaultPFS: pluto and gosec both configured
// without pfs=, pluto initiating. Libreswan's default is pfs=yes (PFS in
// the phase-1 group); gosec proposes no PFS without pfs=, but as responder
// takes an initiator's PFS in one of the conn's phase-1 groups, as
// Libreswan's pfs=no does, so a Libreswan peer at its defaults comes up.
// (gosec initiating is refused by pluto, which requires PFS: set pfs=yes
// on gosec's side, or pfs=no on pluto's.)
func TestKernelIKELibreswanDefaultPFS(t *testing.T) {
	k := kcase{name: "esp-tunnel-pfs-default", conn: "ki-pfsdef", typ: "tunnel", ike: "aes128-sha1-modp2048!", esp: "aes128-sha1!",
		xfrmAlg: "enc cbc(aes)", lswIKE: "aes128-sha1;modp2048", lswPhase2: "aes128-sha1", lswPFSDefault: true,
		lswNewest: "ESP algorithm newest: AES_CBC_128-HMAC_SHA1_96; pfsgroup=<Phase1>"}
	guestWith(t, libreswan)
	runRetrying(t, k.name+"/guest-initiates", func(t *testing.T) { runCase(t, guestWith(t, libreswan), libreswan, k, "guest") })
}

// TestKernelLifecycleLibreswan is TestKernelLifecycle against Libreswan,
// without the rekeys by bytes (strongSwan's lifebytes/marginbytes; gosec
// has no IKEv1 byte lifetime in Libreswan's keywords to meet).
func TestKernelLifecycleLibreswan(t *testing.T) {
	testKernelLifecycle(t, libreswan, append(lcCases[:len(lcCases):len(lcCases)], lcCase{"dpd-from-guest", lswDPDFromGuest}))
}

// lswDPDFromGuest: pluto does the dead peer detection (dpddelay=2s,
// dpdtimeout=10s, dpdaction=restart) and gosec, without DPD of its own,
// answers its R_U_THERE (RFC 3706). pluto probes only a tunnel that
// carried nothing in (as RFC 3706 has it), so the tunnel idles for 12 s
// between two ping streams: pluto sends its probes, counts the
// acknowledgements (`lastdpd=Ns(seq in:I out:O)` in its status), never
// declares gosec dead nor restarts, and the pings after it all come back.
func lswDPDFromGuest(t *testing.T, p *peer) {
	e := newLC(t, p, nil, []string{"dpddelay=2s", "dpdtimeout=10s", "dpdaction=restart"})
	e.up(false)
	if err := pingHost(guestIn, 3, "-I", hostInner); err != nil {
		t.Fatalf("before the idle time: %v", err)
	}
	e.tl.Add("test: idle for 12 s (pluto probes)")
	pcap := startCapture(t)
	time.Sleep(12 * time.Second)
	w := pcap.stop(t)
	ping := e.ping()
	time.Sleep(2 * time.Second)
	pr := ping.Stop()
	status, err := e.g.Check("ike status")
	if err != nil {
		t.Fatal(err)
	}
	log, _ := e.g.Check("ike log")
	e.finish()
	e.noLoss(pr, time.Time{}, time.Time{}, "after pluto's probes")
	m := lswDPD.FindStringSubmatch(status)
	if m == nil {
		t.Fatalf("no DPD state in pluto's status (did it take gosec's DPD vendor ID?):\n%s", status)
	}
	// "seq in" is pluto's next R_U_THERE sequence number, "out" the one
	// it still waits for an answer to (0: none); lastdpd is how long ago
	// the last answer came
	last, _ := strconv.Atoi(m[1])
	waiting, _ := strconv.Atoi(m[3])
	t.Logf("pluto: %s; IKE messages on UDP 500 while idle: %d", m[0], w.ike)
	if last < 0 || last > 5 {
		t.Errorf("pluto heard gosec's last R_U_THERE_ACK %d s ago (waiting for seq %d), want within the last two probes:\n%s", last, waiting, status)
	}
	// dpddelay 2 s over 12 s: about six probes and their answers
	if w.ike < 6 {
		t.Errorf("%d IKE messages on the wire in 12 s of idle tunnel, want at least 3 R_U_THERE and 3 answers", w.ike)
	}
	if strings.Contains(log, "DPD") && (strings.Contains(log, "dead") || strings.Contains(log, "timeout")) {
		t.Errorf("pluto's log tells of a DPD timeout:\n%s", log)
	}
	if n := e.mon.Count("gosec", "in SA "); n != 1 {
		t.Errorf("gosec saw %d inbound SAs, want 1 (no restart)", n)
	}
}

// peer is the IKE daemon in the guest: strongSwan's charon or Libreswan's
// pluto, both with the guest kernel's XFRM (kpike.sh, KPIKE_PEER). Each
// has its own image (build/<dir>), its own ipsec.conf dialect and its own
// status output; /sbin/ike in the guest has the same verbs for both.
type peer struct {
	name string // KPIKE_PEER, and what the image's /etc/kp-ike says
	dir  string // the image's directory under the build directory
	// conf is an ipsec.conf for case k in the peer's dialect, left =
	// local, with extra lines at the end of k's conn: the guest's, and
	// gosec's mirror image of it (gosec reads both dialects, so each
	// peer's cases configure gosec as that peer's administrator would).
	conf func(k kcase, left, right, leftSub, rightSub, extra string) string
	// established says whether the output of `ike up CONN` reports the
	// IPsec SA established.
	established func(out string) bool
	// childInstalled says whether `ike status` shows k's IPsec SA
	// installed with k's algorithms, and if not, what it looked for.
	childInstalled func(status string, k kcase) (bool, string)
	// noIKESA says whether `ike status` shows no IKE (ISAKMP) SA at all.
	noIKESA func(status string) bool
	// kill is the guest command that kills the daemon with SIGKILL.
	kill string
	// lcDefaults begins the lifecycle conn's ipsec.conf (lcConf): config
	// setup and conn %default, ESP AES-128-CBC/HMAC-SHA1 without PFS in
	// a tunnel, 1 h lifetimes, auto=add.
	lcDefaults string
	// trapAfterDelete: after a Delete the daemon leaves an on-demand
	// trap policy for the conn's prefixes (no SA, a template without
	// addresses), which the lifecycle's Delete cases accept.
	trapAfterDelete bool
}

var strongSwan = &peer{
	name: "strongswan", dir: "ss",
	conf: func(k kcase, left, right, leftSub, rightSub, extra string) string {
		return k.conf(left, right, leftSub, rightSub, extra)
	},
	established: func(out string) bool { return strings.Contains(out, "established successfully") },
	childInstalled: func(status string, k kcase) (bool, string) {
		want := "INSTALLED and " + k.ssProposal
		return strings.Contains(status, "INSTALLED") && strings.Contains(status, k.ssProposal), want
	},
	noIKESA: func(status string) bool {
		return strings.Contains(status, "Security Associations (0 up, 0 connecting)")
	},
	kill: "kill -9 $(cat /run/starter.charon.pid) $(cat /run/charon.pid)",
	lcDefaults: "# lifecycle: gosec (192.0.2.1) <-> strongSwan with the kernel's XFRM (guest 192.0.2.2)\n" +
		"config setup\n\tuniqueids=no\n\nconn %default\n\tkeyexchange=ikev1\n\tauthby=psk\n" +
		"\tike=aes128-sha1-modp2048!\n\tesp=aes128-sha1!\n\tikelifetime=1h\n\tlifetime=1h\n\trekeymargin=3m\n" +
		"\tkeyingtries=1\n\tdpdaction=none\n\ttype=tunnel\n\tauto=add\n\n",
}

// libreswan is Libreswan 4.10 (Debian 12's), configured as an
// administrator would for an IKEv1 peer: ikev2=no, and ikev1-policy=accept
// in config setup (4.10 drops IKEv1 unless told). Its own defaults stand
// otherwise, among them the default leftupdown (ipsec _updown), except PFS:
// Libreswan's default is pfs=yes and gosec's, as strongSwan's, is PFS only
// when a DH group is configured, so each case says pfs= as gosec has it.
var libreswan = &peer{
	name: "libreswan", dir: "lsw",
	conf: func(k kcase, left, right, leftSub, rightSub, extra string) string {
		var b strings.Builder
		fmt.Fprintf(&b, "# %s: gosec (192.0.2.1) <-> Libreswan with the kernel's XFRM (guest 192.0.2.2), Libreswan's syntax\n", k.name)
		b.WriteString("config setup\n\tikev1-policy=accept\n\tdnssec-enable=no\n\tuniqueids=no\n\n" +
			"conn %default\n\tikev2=no\n\tauthby=secret\n\tikelifetime=1h\n\tsalifetime=20m\n" +
			"\trekeymargin=3m\n\tkeyingtries=1\n\n")
		fmt.Fprintf(&b, "conn %s\n\tleft=%s\n\tright=%s\n", k.conn, left, right)
		if k.typ == "tunnel" {
			fmt.Fprintf(&b, "\tleftsubnet=%s\n\trightsubnet=%s\n", leftSub, rightSub)
		}
		fmt.Fprintf(&b, "\tike=%s\n\tphase2=%s\n\tphase2alg=%s\n", k.lswIKE, k.proto(), k.lswPhase2)
		if !k.lswPFSDefault {
			fmt.Fprintf(&b, "\tpfs=%s\n", map[bool]string{true: "yes", false: "no"}[k.lswPFS])
		}
		if k.encap {
			b.WriteString("\tencapsulation=yes\n")
		}
		fmt.Fprintf(&b, "\ttype=%s\n\tauto=add\n%s", k.typ, extra)
		return b.String()
	},
	// whack --initiate: `004 "conn" #2: IPsec SA established tunnel mode {...}`
	established: func(out string) bool { return strings.Contains(out, "IPsec SA established") },
	// and the conn's `ESP algorithm newest: AES_CBC_128-HMAC_SHA1_96;
	// pfsgroup=<N/A>` (AH likewise)
	childInstalled: func(status string, k kcase) (bool, string) {
		want := "STATE_QUICK_[IR]2 (IPsec SA established) and " + k.lswNewest
		return lswChild.MatchString(status) && strings.Contains(status, k.lswNewest), want
	},
	// whack --status lists each state as `#N: "conn"...`
	noIKESA: func(status string) bool { return !lswState.MatchString(status) },
	kill:    "kill -9 $(cat /run/pluto/pluto.pid)",
	lcDefaults: "# lifecycle: gosec (192.0.2.1) <-> Libreswan with the kernel's XFRM (guest 192.0.2.2), Libreswan's syntax\n" +
		"config setup\n\tikev1-policy=accept\n\tdnssec-enable=no\n\tuniqueids=no\n\n" +
		"conn %default\n\tikev2=no\n\tauthby=secret\n\tike=aes128-sha1;modp2048\n\tphase2=esp\n" +
		"\tphase2alg=aes128-sha1\n\tpfs=no\n\tikelifetime=1h\n\tlifetime=1h\n\trekeymargin=3m\n" +
		"\tkeyingtries=1\n\ttype=tunnel\n\tauto=add\n\n",
	// pluto 4.10 puts an IKEv1 conn whose IPsec SA was deleted (by
	// either side) into "prospective erouted": an outbound trap policy
	// (template 0.0.0.0, reqid 0), so the guest's next packet to gosec's
	// LAN would have the kernel ask pluto to negotiate again.
	trapAfterDelete: true,
}

var (
	// pluto's ISAKMP state: `lastdpd=1s(seq in:0 out:6)` (-1 before any)
	lswDPD   = regexp.MustCompile(`lastdpd=(-?\d+)s\(seq in:(\d+) out:(\d+)\)`)
	lswChild = regexp.MustCompile(`#\d+: "[^"]+":\d+ STATE_QUICK_[IR]2 \(IPsec SA established\)`)
	lswState = regexp.MustCompile(`#\d+: "[^"]+"`)
)
