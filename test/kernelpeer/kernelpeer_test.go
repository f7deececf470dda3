package kernelpeer

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// suite is one algorithm choice in both implementations' terms.
type suite struct {
	gosec  string // esp= or ah= value in ipsec.conf
	ah     bool
	encLen int // encryption key octets (salt/nonce included)
	intLen int // integrity key octets
	// linux renders the `ip xfrm state` algorithm arguments for the keys.
	linux func(enc, integ string) string
}

func authTrunc(alg string, bits int) func(string, string) string {
	return func(_, k string) string { return fmt.Sprintf("auth-trunc 'hmac(%s)' %s %d", alg, k, bits) }
}

func cbcAuth(cipher, alg string, bits int) func(string, string) string {
	return func(e, k string) string {
		return fmt.Sprintf("enc '%s' %s auth-trunc 'hmac(%s)' %s %d", cipher, e, alg, k, bits)
	}
}

func aead(alg string) func(string, string) string {
	return func(e, _ string) string { return fmt.Sprintf("aead '%s' %s 128", alg, e) }
}

// Linux's names, key layouts (salt/nonce last, as RFC 4106/3686/7634 KEYMAT)
// and ICV truncations for gosec's suites.
var integs = []struct {
	name  string
	linux string
	key   int
	bits  int
}{
	{"sha1", "sha1", 20, 96},
	{"sha256", "sha256", 32, 128},
	{"sha384", "sha384", 48, 192},
	{"sha512", "sha512", 64, 256},
}

func espSuites() []suite {
	s := []suite{{gosec: "3des-md5", encLen: 24, intLen: 16, linux: cbcAuth("cbc(des3_ede)", "md5", 96)}}
	for _, bits := range []int{128, 192, 256} {
		for _, in := range integs {
			s = append(s, suite{gosec: fmt.Sprintf("aes%d-%s", bits, in.name), encLen: bits / 8, intLen: in.key,
				linux: cbcAuth("cbc(aes)", in.linux, in.bits)})
		}
	}
	s = append(s,
		suite{gosec: "aes128ctr-sha256", encLen: 20, intLen: 32, linux: cbcAuth("rfc3686(ctr(aes))", "sha256", 128)},
		suite{gosec: "aes192ctr-sha384", encLen: 28, intLen: 48, linux: cbcAuth("rfc3686(ctr(aes))", "sha384", 192)},
		suite{gosec: "aes256ctr-sha1", encLen: 36, intLen: 20, linux: cbcAuth("rfc3686(ctr(aes))", "sha1", 96)},
		suite{gosec: "aes128gcm16", encLen: 20, linux: aead("rfc4106(gcm(aes))")},
		suite{gosec: "aes192gcm16", encLen: 28, linux: aead("rfc4106(gcm(aes))")},
		suite{gosec: "aes256gcm16", encLen: 36, linux: aead("rfc4106(gcm(aes))")},
		suite{gosec: "chacha20poly1305", encLen: 36, linux: aead("rfc7539esp(chacha20,poly1305)")},
		suite{gosec: "null-sha256", intLen: 32, linux: func(_, k string) string {
			return fmt.Sprintf("enc 'ecb(cipher_null)' '' auth-trunc 'hmac(sha256)' %s 128", k)
		}},
	)
	return s
}

var ahSuites = []suite{
	{gosec: "md5", ah: true, intLen: 16, linux: authTrunc("md5", 96)},
	{gosec: "sha1", ah: true, intLen: 20, linux: authTrunc("sha1", 96)},
	{gosec: "sha256", ah: true, intLen: 32, linux: authTrunc("sha256", 128)},
	{gosec: "sha384", ah: true, intLen: 48, linux: authTrunc("sha384", 192)},
	{gosec: "sha512", ah: true, intLen: 64, linux: authTrunc("sha512", 256)},
}

// kcase is one conn: a suite, a mode, raw or UDP-encapsulated and, for AH,
// the alignment both ends use.
type kcase struct {
	name      string
	s         suite
	transport bool
	udp       bool
	// align8: gosec ah_align=8 and the kernel SA without `flag align4`
	// (Linux's native IPv4 AH form); otherwise gosec's RFC 4302 default
	// and, for AH, the kernel SA with `flag align4`. Only matters for
	// ICVs that are not a multiple of 8 octets with the header (SHA-2).
	align8 bool
	// esn: 64-bit extended sequence numbers (gosec esn=yes, kernel
	// `flag esn`); the high half stays 0 but enters the ICV / GCM AAD.
	esn bool
	// guestAlign8 (negative test only) gives the guest's SAs Linux's 8-octet
	// AH form while gosec keeps its own (align8) choice.
	guestAlign8 bool
	// badGuestKey (negative test only) gives the guest a different
	// integrity key for its "in" or "out" SA than gosec has.
	badGuestKey string
	idx         int
	// keys
	leftSPI, rightSPI                       uint32
	leftEnc, rightEnc, leftInteg, rightAuth string
}

func (c *kcase) mode() string {
	if c.transport {
		return "transport"
	}
	return "tunnel"
}

func (c *kcase) proto() string {
	if c.s.ah {
		return "ah"
	}
	return "esp"
}

func hexKey(r *rand.ChaCha8, n int) string {
	if n == 0 {
		return ""
	}
	b := make([]byte, n)
	r.Read(b)
	return "0x" + hex.EncodeToString(b)
}

// newRand is the deterministic key source of case idx.
func newRand(idx int) *rand.ChaCha8 {
	return rand.NewChaCha8([32]byte{'g', 'k', 'p', byte(idx), byte(idx >> 8)})
}

func matrix() []*kcase {
	var cs []*kcase
	add := func(c *kcase) {
		c.idx = len(cs) + 1
		c.leftSPI, c.rightSPI = uint32(0x10000+c.idx), uint32(0x20000+c.idx)
		r := newRand(c.idx)
		c.leftEnc, c.rightEnc = hexKey(r, c.s.encLen), hexKey(r, c.s.encLen)
		c.leftInteg, c.rightAuth = hexKey(r, c.s.intLen), hexKey(r, c.s.intLen)
		cs = append(cs, c)
	}
	for _, s := range espSuites() {
		for _, tr := range []bool{false, true} {
			c := &kcase{s: s, transport: tr}
			c.name = "esp-" + s.gosec + "-" + c.mode()
			add(c)
		}
	}
	for _, s := range ahSuites {
		aligns := []bool{false}
		if s.gosec != "md5" && s.gosec != "sha1" {
			aligns = []bool{false, true}
		}
		for _, tr := range []bool{false, true} {
			for _, a8 := range aligns {
				c := &kcase{s: s, transport: tr, align8: a8}
				c.name = "ah-" + s.gosec + "-" + c.mode()
				if len(aligns) > 1 {
					c.name += map[bool]string{false: "-align4", true: "-align8"}[a8]
				}
				add(c)
			}
		}
	}
	for _, e := range []struct {
		s         string
		transport bool
	}{{"aes128-sha256", false}, {"aes256gcm16", true}, {"chacha20poly1305", false}, {"sha256", true}} {
		c := &kcase{s: byName(e.s), transport: e.transport, esn: true}
		c.name = c.proto() + "-" + e.s + "-" + c.mode() + "-esn"
		add(c)
	}
	udp := map[string][]bool{"aes128-sha1": {false, true}, "aes128gcm16": {false}, "chacha20poly1305": {true}}
	for _, s := range espSuites() {
		for _, tr := range udp[s.gosec] {
			c := &kcase{s: s, transport: tr, udp: true}
			c.name = "esp-" + s.gosec + "-" + c.mode() + "-udp"
			add(c)
		}
	}
	return cs
}

// conf is the conn in ipsec.conf. left is gosec (192.0.2.1); every left*
// key describes the SA whose destination is left.
func (c *kcase) conf() string {
	var b strings.Builder
	fmt.Fprintf(&b, "conn %s\n\tleft=%s\n\tright=%s\n", c.name, hostIP, guestIP)
	if c.transport {
		b.WriteString("\ttype=transport\n")
	} else {
		fmt.Fprintf(&b, "\ttype=tunnel\n\tleftsubnet=%s\n\trightsubnet=%s\n", hostNet, guestNet)
	}
	fmt.Fprintf(&b, "\tleftspi=%#x\n\trightspi=%#x\n", c.leftSPI, c.rightSPI)
	if c.s.ah {
		fmt.Fprintf(&b, "\tah=%s\n\tleftahkey=%s\n\trightahkey=%s\n", c.s.gosec, c.leftInteg, c.rightAuth)
		if c.align8 {
			b.WriteString("\tah_align=8\n")
		}
	} else {
		fmt.Fprintf(&b, "\tesp=%s\n", c.s.gosec)
		if c.leftEnc != "" {
			fmt.Fprintf(&b, "\tleftespenckey=%s\n\trightespenckey=%s\n", c.leftEnc, c.rightEnc)
		}
		if c.leftInteg != "" {
			fmt.Fprintf(&b, "\tleftespauthkey=%s\n\trightespauthkey=%s\n", c.leftInteg, c.rightAuth)
		}
	}
	if c.udp {
		b.WriteString("\tforceencaps=yes\n")
	}
	if c.esn {
		b.WriteString("\tesn=yes\n")
	}
	b.WriteString("\treplay_window=64\n\tauto=add\n\n")
	return b.String()
}

// guestCmds are the guest's `ip xfrm` commands for the same SAs: the state
// into the guest (gosec's outbound, rightspi) and the state out of it.
func (c *kcase) guestCmds() []string {
	var flags []string
	if c.s.ah && !c.align8 && !c.guestAlign8 {
		flags = append(flags, "align4")
	}
	window, outWindow := 32, ""
	if c.esn {
		// ESN states carry a replay bitmap of any size; iproute2 wants
		// one on the outbound state too. ESP with ESN needs authencesn.
		flags = append(flags, "esn")
		window, outWindow = 64, " replay-window 64"
	}
	extra := ""
	if len(flags) > 0 {
		extra = " flag " + strings.Join(flags, " ")
	}
	inAuth, outAuth := c.rightAuth, c.leftInteg
	switch c.badGuestKey {
	case "in":
		inAuth = flipKey(inAuth)
	case "out":
		outAuth = flipKey(outAuth)
	}
	encap := ""
	if c.udp {
		encap = " encap espinudp 4500 4500 0.0.0.0"
	}
	selH, selG := hostIP+"/32", guestIP+"/32"
	if !c.transport {
		selH, selG = hostNet, guestNet
	}
	m, p := c.mode(), c.proto()
	return []string{
		"ip xfrm policy flush; ip xfrm state flush",
		fmt.Sprintf("ip xfrm state add src %s dst %s proto %s spi %#x reqid %d mode %s replay-window %d%s %s%s",
			hostIP, guestIP, p, c.rightSPI, c.idx, m, window, extra, c.s.linux(c.rightEnc, inAuth), encap),
		fmt.Sprintf("ip xfrm state add src %s dst %s proto %s spi %#x reqid %d mode %s%s%s %s%s",
			guestIP, hostIP, p, c.leftSPI, c.idx, m, outWindow, extra, c.s.linux(c.leftEnc, outAuth), encap),
		fmt.Sprintf("ip xfrm policy add src %s dst %s dir in tmpl src %s dst %s proto %s reqid %d mode %s",
			selH, selG, hostIP, guestIP, p, c.idx, m),
		fmt.Sprintf("ip xfrm policy add src %s dst %s dir out tmpl src %s dst %s proto %s reqid %d mode %s",
			selG, selH, guestIP, hostIP, p, c.idx, m),
	}
}

// flipKey changes the last hex digit of a 0x... key.
func flipKey(k string) string {
	b := []byte(k)
	if b[len(b)-1] == '0' {
		b[len(b)-1] = '1'
	} else {
		b[len(b)-1] = '0'
	}
	return string(b)
}

// bulkSize is the TCP transfer in each direction: 5 MiB by default, which
// keeps the whole package under about 5 minutes on 2 idle cores (TCG);
// KPEER_BULK_MB overrides it.
func bulkSize() int {
	mb := 5
	if v := os.Getenv("KPEER_BULK_MB"); v != "" {
		if _, err := fmt.Sscan(v, &mb); err != nil || mb < 1 {
			mb = 5
		}
	}
	return mb << 20
}

// wireCount is one nft counter.
type wireCount struct{ Packets, Bytes uint64 }

// wireCounters reads the counters on the tap: inbound IPv4 from the
// test's eBPF program at tc ingress (wirein_test.go), inbound IPv6 from
// kpeer.sh's nft counter at input, outbound from its counters at the
// tap's netdev egress hook, which AF_PACKET sends pass too. They count
// packets as the kernel holds them: a UDP GSO or GRO buffer (gosec's
// ESP-in-UDP sends with UDP_SEGMENT) counts once, with all its bytes, and
// each fragment once.
func wireCounters() (map[string]wireCount, error) {
	m := map[string]wireCount{}
	for _, table := range [][2]string{{"inet", "gkp"}, {"netdev", "gkpo"}} {
		if err := readCounters(table[0], table[1], m); err != nil {
			return nil, err
		}
	}
	if wireInCounter == nil {
		return nil, errors.New("no inbound wire counter on the tap")
	}
	if err := wireInCounter.add(m); err != nil {
		return nil, err
	}
	return m, nil
}

// readCounters adds the counters of one nft table to m.
func readCounters(family, table string, m map[string]wireCount) error {
	out, err := inNS(10*time.Second, "nft", "-j", "list", "counters", "table", family, table)
	if err != nil {
		return fmt.Errorf("nft list counters: %v\n%s", err, out)
	}
	var doc struct {
		Nftables []struct {
			Counter *struct {
				Name    string `json:"name"`
				Packets uint64 `json:"packets"`
				Bytes   uint64 `json:"bytes"`
			} `json:"counter"`
		} `json:"nftables"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		return fmt.Errorf("nft -j: %w\n%s", err, out)
	}
	n := 0
	for _, o := range doc.Nftables {
		if o.Counter != nil {
			m[o.Counter.Name] = wireCount{o.Counter.Packets, o.Counter.Bytes}
			n++
		}
	}
	if n == 0 {
		return fmt.Errorf("no nft counters in table %s %s:\n%s", family, table, out)
	}
	return nil
}

// startCapture records the tap to dir/name.pcap when KPEER_PCAP=dir is set.
func startCapture(t *testing.T, name string) func() {
	dir := os.Getenv("KPEER_PCAP")
	if dir == "" {
		return func() {}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", nsName, "tcpdump", "-i", tapName, "-s", "200", "-U",
		"-w", filepath.Join(dir, name+".pcap"))
	if err := cmd.Start(); err != nil {
		t.Logf("tcpdump: %v", err)
		cancel()
		return func() {}
	}
	time.Sleep(300 * time.Millisecond)
	return func() {
		time.Sleep(300 * time.Millisecond)
		cancel()
		cmd.Wait()
	}
}

// TestKernelPeer runs every case against the guest kernel: ping from each
// side, a bulk TCP transfer each way with SHA-256 checks, then the
// guest's SA and XFRM counters, the wire counters and gosec's statusall.
func TestKernelPeer(t *testing.T) {
	if testing.Short() {
		t.Skip("boots a QEMU guest; not in -short")
	}
	g := guest(t)
	start := time.Now()
	if out, err := g.Check("uname -r"); err == nil {
		t.Logf("guest kernel %s (boot and build took %v)", strings.TrimSpace(out), bootTime.Round(time.Millisecond))
	}
	cases := matrix()
	var conf strings.Builder
	for _, c := range cases {
		conf.WriteString(c.conf())
	}
	d := startDaemon(t, conf.String())
	size := bulkSize()
	file, sum := bulk(t, size)
	ran := 0
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ran++
			if runCase(t, g, d, c, file, sum, size, false) {
				g = restartGuest(t)
				runCase(t, g, d, c, file, sum, size, true)
			}
		})
	}
	g.Run("ip xfrm policy flush; ip xfrm state flush")
	// The stall probe must not see a live guest as stalled (its other
	// answer is exercised with KPEER_STALL_GUEST).
	if dead, why := guestSendsNothing(); dead {
		t.Errorf("guestSendsNothing on a live guest: %s", why)
	}
	t.Logf("%d cases in %v (%d MiB each way per case)", ran, time.Since(start).Round(time.Second), size>>20)
}

// runCase runs one case. When a step fails because the guest's network
// stopped sending (guestSendsNothing) and this is not already the retry,
// it returns true after its cleanup: the caller boots a fresh guest and
// runs the case once more. Any other failure fails the test.
func runCase(t *testing.T, g *Ctl, d *daemon, c *kcase, file, sum string, size int, retry bool) (again bool) {
	// one round trip over the serial line for all of them
	if out, err := g.Check(strings.Join(c.guestCmds(), " && ")); err != nil {
		t.Fatalf("guest: %v\n%s", err, out)
	}
	guestDead := false
	defer func() {
		if !guestDead { // a dead guest's control channel would only time out
			g.Run("ip xfrm policy flush; ip xfrm state flush")
		}
	}()
	d.mustCtl(t, "up", c.name)
	defer d.ctl(15*time.Second, "down", c.name)
	stop := startCapture(t, c.name)
	defer stop()

	stat0, err := guestXfrmStat(g)
	if err != nil {
		t.Fatal(err)
	}
	wire0, err := wireCounters()
	if err != nil {
		t.Fatal(err)
	}
	drops0 := d.status(t).drops()
	tap0, err := tapDrops()
	if err != nil {
		t.Fatal(err)
	}

	dstG, dstH := guestIP, hostIP
	if !c.transport {
		dstG, dstH = guestIn, hostInner
	}
	port := 5000 + c.idx
	steps := []struct {
		what string
		f    func() error
	}{
		{"ping from gosec's side", func() error { return pingHost(dstG, 3) }},
		{"ping from the guest", func() error { return pingGuest(g, dstH, 3) }},
		{"bulk gosec -> guest", func() error { return transferToGuest(g, file, sum, dstG, port) }},
		{"bulk guest -> gosec", func() error { return transferFromGuest(g, sum, dstH, dstH, port) }},
	}
	if !c.transport {
		// 3000-octet echoes: the host fragments them before gosec's TUN and
		// gosec protects each fragment; the guest kernel encrypts the whole
		// datagram and fragments the ESP packet. Transport mode cannot
		// protect fragments (RFC 4303 3.3.4); see TestKernelPeerKnownGaps.
		steps = append(steps[:2:2], append([]struct {
			what string
			f    func() error
		}{
			{"large ping from gosec's side", func() error { return pingHost(dstG, 2, "-s", "3000") }},
			{"large ping from the guest", func() error { return pingGuest(g, dstH, 2, "-s", "3000") }},
		}, steps[2:]...)...)
	}
	if os.Getenv("KPEER_STALL_GUEST") == c.name && !retry {
		// Exercises the restart: the guest's link goes down, so it sends
		// nothing; the case must pass on the fresh guest.
		g.Run("ip link set eth0 down")
	}
	var timing []string
	for _, s := range steps {
		t0 := time.Now()
		if err := s.f(); err != nil {
			if dead, why := guestSendsNothing(); dead && !retry {
				t.Logf("%s: %v", s.what, err)
				t.Logf("the guest sends nothing any more (%s): its network stalled; the case runs again on a fresh guest", why)
				guestDead = true
				return true
			} else if dead {
				t.Logf("the guest sends nothing any more (%s), again after a fresh guest", why)
			}
			diagnose(t, g, d, c, stat0)
			t.Fatalf("%s: %v", s.what, err)
		}
		timing = append(timing, fmt.Sprintf("%s %.1fs", s.what, time.Since(t0).Seconds()))
	}

	// The guest kernel's view.
	out, err := g.Check("ip -s xfrm state")
	if err != nil {
		t.Fatal(err)
	}
	states, err := ParseXfrmStates(out)
	if err != nil {
		t.Fatalf("ip -s xfrm state: %v\n%s", err, out)
	}
	kin, kout, ok := findStates(states, c)
	if !ok {
		t.Fatalf("guest SAs %#x/%#x not found:\n%s", c.rightSPI, c.leftSPI, out)
	}
	stat1, err := guestXfrmStat(g)
	if err != nil {
		t.Fatal(err)
	}
	wire1, err := wireCounters()
	if err != nil {
		t.Fatal(err)
	}
	tap1, err := tapDrops()
	if err != nil {
		t.Fatal(err)
	}
	st := d.status(t)
	gin, okIn := st.sa(c.name, "in")
	gout, okOut := st.sa(c.name, "out")
	if !okIn || !okOut {
		t.Fatalf("gosec statusall has no in/out SA for %s", c.name)
	}

	minPkts := uint64(size / 1500) // the data direction of each transfer
	var errs []string
	fail := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	if d := StatDelta(stat0, stat1); len(d) > 0 {
		fail("guest /proc/net/xfrm_stat moved: %s", strings.Join(d, ", "))
	}
	for _, k := range []*XfrmState{kin, kout} {
		if k.Failed != 0 || k.Replay != 0 || k.ReplayWindowDrops != 0 {
			fail("guest SA %#x stats: replay-window %d replay %d failed %d", k.SPI, k.ReplayWindowDrops, k.Replay, k.Failed)
		}
		if k.Mode != c.mode() || k.Proto != c.proto() {
			fail("guest SA %#x is %s %s, want %s %s", k.SPI, k.Proto, k.Mode, c.proto(), c.mode())
		}
		if (k.Encap == "espinudp") != c.udp {
			fail("guest SA %#x encap %q, udp=%v", k.SPI, k.Encap, c.udp)
		}
	}
	if kin.Packets < minPkts || kout.Packets < minPkts {
		fail("guest SAs carried in %d / out %d packets, want >= %d each", kin.Packets, kout.Packets, minPkts)
	}
	// Every packet one side sent, the other accepted; only what the tap
	// itself dropped (queue full while QEMU was descheduled) may be missing.
	txLost, rxLost := tap1[0]-tap0[0], tap1[1]-tap0[1]
	if kin.Packets > gout.Packets || gout.Packets-kin.Packets > txLost {
		fail("gosec sent %d packets on SA %s, the guest kernel accepted %d (tap lost %d)", gout.Packets, gout.SPI, kin.Packets, txLost)
	}
	if gin.Packets > kout.Packets || kout.Packets-gin.Packets > rxLost {
		fail("the guest kernel sent %d packets on SA %#x, gosec accepted %d (tap lost %d)", kout.Packets, kout.SPI, gin.Packets, rxLost)
	}
	if kin.Seq > gout.Packets || kout.OSeq != kout.Packets {
		fail("sequence numbers: guest in-SA highest seq %d (gosec sent %d), guest out-SA oseq %d (sent %d)",
			kin.Seq, gout.Packets, kout.OSeq, kout.Packets)
	}
	for _, sa := range []saStatus{gin, gout} {
		if len(sa.Drops) != 0 {
			fail("gosec SA %s (%s) drops: %v", sa.SPI, sa.Dir, sa.Drops)
		}
		if sa.Encap != c.udp {
			fail("gosec SA %s encap %v, want %v", sa.SPI, sa.Encap, c.udp)
		}
	}
	if d := StatDelta(drops0, st.drops()); len(d) > 0 {
		fail("gosec drop counters moved: %s", strings.Join(d, ", "))
	}
	// The wire: only the expected protocol, nothing in the clear. The
	// carrier moved at least the bulk data each way (bytes, not packets:
	// GSO/GRO buffers count once).
	dw := map[string]wireCount{}
	for k, v := range wire1 {
		dw[k] = wireCount{v.Packets - wire0[k].Packets, v.Bytes - wire0[k].Bytes}
	}
	carrier := map[bool]string{false: c.proto(), true: "udp4500"}[c.udp]
	for _, dir := range []string{"in", "out"} {
		for _, k := range []string{"esp", "ah", "udp4500", "other"} {
			n := dw[k+"_"+dir]
			if k == carrier && n.Bytes < uint64(size) {
				fail("wire: %s_%s carried %d bytes, want >= %d", k, dir, n.Bytes, size)
			}
			if k != carrier && n.Packets != 0 {
				fail("wire: %d unexpected %s packets %s on the tap", n.Packets, k, dir)
			}
		}
	}
	if len(errs) > 0 {
		diagnose(t, g, d, c, stat0)
		t.Fatalf("%s:\n  %s", c.name, strings.Join(errs, "\n  "))
	}
	t.Logf("guest in %d pkts / out %d pkts, gosec in %d / out %d, wire %s: in %d out %d (netfilter packets); %s",
		kin.Packets, kout.Packets, gin.Packets, gout.Packets, carrier, dw[carrier+"_in"].Packets, dw[carrier+"_out"].Packets,
		strings.Join(timing, ", "))
	return false
}

// tapDrops returns the tap's TX (towards the guest) and RX drop counters.
func tapDrops() ([2]uint64, error) {
	var r [2]uint64
	for i, f := range []string{"tx_dropped", "rx_dropped"} {
		out, err := inNS(5*time.Second, "cat", "/sys/class/net/"+tapName+"/statistics/"+f)
		if err != nil {
			return r, fmt.Errorf("tap %s: %v\n%s", f, err, out)
		}
		if _, err := fmt.Sscan(out, &r[i]); err != nil {
			return r, fmt.Errorf("tap %s: %q: %w", f, out, err)
		}
	}
	return r, nil
}

func findStates(states []XfrmState, c *kcase) (in, out *XfrmState, ok bool) {
	for i := range states {
		s := &states[i]
		switch {
		case s.SPI == c.rightSPI && s.Dst == guestIP:
			in = s
		case s.SPI == c.leftSPI && s.Dst == hostIP:
			out = s
		}
	}
	return in, out, in != nil && out != nil
}

func guestXfrmStat(g *Ctl) (map[string]uint64, error) {
	out, err := g.Check("cat /proc/net/xfrm_stat")
	if err != nil {
		return nil, err
	}
	return ParseXfrmStat(out)
}

// diagnose logs both sides' state after a failure.
func diagnose(t *testing.T, g *Ctl, d *daemon, c *kcase, stat0 map[string]uint64) {
	t.Helper()
	t.Logf("guest commands:\n  %s", strings.Join(c.guestCmds(), "\n  "))
	if _, out, err := g.Run("ip -s xfrm state; ip xfrm policy; netstat -s 2>/dev/null | head -40"); err == nil {
		t.Logf("guest:\n%s", out)
	}
	if s, err := guestXfrmStat(g); err == nil {
		d := StatDelta(stat0, s)
		slices.Sort(d)
		t.Logf("guest xfrm_stat delta: %v", d)
	}
	if out, err := d.ctl(15*time.Second, "statusall"); err == nil {
		t.Logf("gosec statusall:\n%s", out)
	}
}
