package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// ikeCase is one IKE-negotiated conn between the two gateways.
type ikeCase struct {
	name      string
	ike, esp  string // ike= and esp= (or ah=, with ah set)
	ah        bool
	transport bool
	encaps    bool
	gw2Starts bool
}

func (c ikeCase) conf() string {
	var b strings.Builder
	fmt.Fprintf(&b, "conn %s\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tauthby=secret\n\tkeyexchange=ikev1\n", c.name)
	fmt.Fprintf(&b, "\tike=%s!\n", c.ike)
	if c.ah {
		fmt.Fprintf(&b, "\tah=%s!\n", c.esp)
	} else {
		fmt.Fprintf(&b, "\tesp=%s!\n", c.esp)
	}
	if c.transport {
		b.WriteString("\ttype=transport\n")
	} else {
		b.WriteString("\ttype=tunnel\n\tleftsubnet=10.1.0.0/24\n\trightsubnet=10.2.0.0/24\n")
	}
	if c.encaps {
		b.WriteString("\tforceencaps=yes\n")
	}
	b.WriteString("\tikelifetime=1h\n\tlifetime=20m\n\tkeyingtries=1\n\tauto=add\n\n")
	return b.String()
}

type ikeStatus struct {
	ISAKMP []struct {
		Conn  string `json:"conn"`
		State string `json:"state"`
		NATT  bool   `json:"natt"`
	} `json:"isakmp"`
	Conns []struct {
		Name     string `json:"name"`
		State    string `json:"state"`
		IKEError string `json:"ike_error"`
		Children []struct {
			InSPI  string `json:"in_spi"`
			OutSPI string `json:"out_spi"`
			Suite  string `json:"suite"`
			Encap  bool   `json:"udp_encap"`
		} `json:"children"`
	} `json:"conns"`
}

func ikeStatusOf(t testing.TB, d *daemon) ikeStatus {
	t.Helper()
	out := d.mustCtl("statusall", "--json")
	var st ikeStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("statusall --json: %v\n%s", err, out)
	}
	return st
}

// TestIKEGosecPair: two gosec daemons negotiate with IKEv1 Main Mode +
// Quick Mode (PSK) and carry traffic; gosec down deletes the SAs on both
// sides.
func TestIKEGosecPair(t *testing.T) {
	tp := newTopo(t, "gsi-")
	cases := []ikeCase{
		{name: "i-aes128", ike: "aes128-sha1-modp2048", esp: "aes128-sha1"},
		{name: "i-aes256-gcm-pfs", ike: "aes256-sha256-modp2048", esp: "aes128gcm16-modp2048"},
		{name: "i-3des-transport", ike: "3des-sha1-modp1024", esp: "3des-md5", transport: true, gw2Starts: true},
		{name: "i-ecp-ah", ike: "aes128-sha256-ecp256", esp: "sha256", ah: true, transport: true},
		{name: "i-natt", ike: "aes128-sha1-modp2048", esp: "aes256-sha256", encaps: true, gw2Starts: true},
	}
	var conf strings.Builder
	for _, c := range cases {
		conf.WriteString(c.conf())
	}
	secrets := "192.0.2.1 192.0.2.2 : PSK \"gosec-e2e-psk\"\n"
	gw1 := tp.startDaemon(tp.ns("gw1"), conf.String(), secrets)
	gw2 := tp.startDaemon(tp.ns("gw2"), conf.String(), secrets)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			init, resp := gw1, gw2
			if c.gw2Starts {
				init, resp = gw2, gw1
			}
			out := init.mustCtl("up", c.name)
			if !strings.Contains(out, "established successfully") || !strings.Contains(out, "CHILD_SA") {
				t.Fatalf("gosec up output:\n%s", out)
			}
			t.Logf("gosec up %s:\n%s", c.name, out)
			defer init.ctl(10*time.Second, "down", c.name)
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
			if err := tp.transfer(srcNS, dstNS, dst, 8<<20); err != nil {
				t.Fatal(err)
			}
			for _, d := range []*daemon{gw1, gw2} {
				st := statusOf(t, d, c.name)
				if st.in.Packets == 0 || st.out.Packets == 0 || st.in.Drops["icv"] != 0 {
					t.Fatalf("%s: SA counters %+v %+v", d.ns, st.in, st.out)
				}
				if st.in.Encap != c.encaps {
					t.Fatalf("%s: encap %v, want %v", d.ns, st.in.Encap, c.encaps)
				}
			}
			is := ikeStatusOf(t, init)
			found := false
			for _, p := range is.ISAKMP {
				if p.Conn == c.name && p.State == "MAIN_I4" && p.NATT == c.encaps {
					found = true
				}
			}
			if !found {
				t.Fatalf("initiator's ISAKMP SAs: %+v", is.ISAKMP)
			}
			// gosec down on the initiator removes the responder's SAs too.
			init.mustCtl("down", c.name)
			deadline := time.Now().Add(5 * time.Second)
			for {
				st := statusOf(t, resp, c.name)
				if st.State == "down" && len(st.SAs) == 0 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("responder still has SAs after the initiator's Delete: %+v", st)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

// TestIKEMismatch: a wrong PSK and a mismatched proposal fail with an
// explanation on both sides and leave no SA.
func TestIKEMismatch(t *testing.T) {
	tp := newTopo(t, "gsj-")
	c := ikeCase{name: "mm", ike: "aes128-sha1-modp2048", esp: "aes128-sha1"}
	gw1 := tp.startDaemon(tp.ns("gw1"), c.conf(), "192.0.2.1 192.0.2.2 : PSK \"one\"\n")
	gw2 := tp.startDaemon(tp.ns("gw2"), c.conf(), "192.0.2.1 192.0.2.2 : PSK \"two\"\n")
	out, err := gw1.ctl(60*time.Second, "up", "mm")
	if err == nil || !strings.Contains(out, "pre-shared keys") {
		t.Fatalf("up with a wrong PSK: err %v\n%s", err, out)
	}
	st := ikeStatusOf(t, gw1)
	for _, cs := range st.Conns {
		if cs.Name == "mm" && (cs.State != "down" || !strings.Contains(cs.IKEError, "pre-shared keys")) {
			t.Fatalf("gw1 status after the failure: %+v", cs)
		}
	}
	if s := statusOf(t, gw2, "mm"); len(s.SAs) != 0 {
		t.Fatalf("gw2 installed SAs: %+v", s)
	}
	if log := gw2.log(); !strings.Contains(log, "pre-shared keys") {
		t.Fatalf("gw2's log does not explain the failure:\n%s", tail(log, 20))
	}

	// Same PSK now, but gw2 accepts another phase-1 proposal.
	other := c
	other.ike = "aes256-sha256-ecp256"
	gw2.rewrite(other.conf(), "192.0.2.1 192.0.2.2 : PSK \"one\"\n")
	gw2.mustCtl("reload")
	out, err = gw1.ctl(60*time.Second, "up", "mm")
	if err == nil || !strings.Contains(out, "NO_PROPOSAL_CHOSEN") || !strings.Contains(out, "aes128-sha1-modp2048") {
		t.Fatalf("up with a mismatched proposal: err %v\n%s", err, out)
	}
	if log := gw2.log(); !strings.Contains(log, "no acceptable phase-1 proposal") || !strings.Contains(log, "cipher aes128 vs aes256") {
		t.Fatalf("gw2's log does not explain the proposal mismatch:\n%s", tail(log, 20))
	}

	// Right proposal, wrong subnets: Quick Mode fails with INVALID_ID_INFORMATION.
	sub := c
	gw2.rewrite(strings.Replace(sub.conf(), "rightsubnet=10.2.0.0/24", "rightsubnet=10.9.0.0/24", 1), "192.0.2.1 192.0.2.2 : PSK \"one\"\n")
	gw2.mustCtl("reload")
	out, err = gw1.ctl(60*time.Second, "up", "mm")
	if err == nil || !strings.Contains(out, "INVALID_ID_INFORMATION") {
		t.Fatalf("up with mismatched subnets: err %v\n%s", err, out)
	}
	if log := gw2.log(); !strings.Contains(log, "INVALID_ID_INFORMATION") {
		t.Fatalf("gw2's log does not explain the subnet mismatch:\n%s", tail(log, 20))
	}
	for _, d := range []*daemon{gw1, gw2} {
		if s := statusOf(t, d, "mm"); len(s.SAs) != 0 {
			t.Fatalf("%s installed SAs: %+v", d.ns, s)
		}
	}
}

// log returns the daemon's log so far.
func (d *daemon) log() string {
	b, _ := os.ReadFile(filepath.Join(d.dir, "gosec.log"))
	return string(b)
}

// rewrite replaces the daemon's ipsec.conf and ipsec.secrets (for reload).
func (d *daemon) rewrite(conf, secrets string) {
	d.tp.t.Helper()
	if err := os.WriteFile(d.conf, []byte(conf), 0o600); err != nil {
		d.tp.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(d.dir, "ipsec.secrets"), []byte(secrets), 0o600); err != nil {
		d.tp.t.Fatal(err)
	}
}
