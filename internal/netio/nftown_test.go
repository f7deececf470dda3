package netio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
	"golang.org/x/sys/unix"
)

// TestFilterOwnedTable: the daemon's table is owned by its socket and
// persistent. Another process's `nft flush ruleset` leaves it and its
// guard; other processes cannot change or delete it, nor can a second
// Filter (another daemon) take it; the SPI gate changes it through the
// filter's socket. When the owning socket goes (a crash) the table and its
// guard stay; the next Filter adopts the table, keeps the guard and owns
// it again; Close deletes it.
func TestFilterOwnedTable(t *testing.T) {
	const table = "gns-fo"
	p, g, host, ns, nft := newTableLab(t, table, "10.231.26.0/24", 7007)
	flags := func() uint32 {
		t.Helper()
		var fl uint32
		nettest.MustDo(t, ns, func() error {
			c, err := nftables.New()
			if err != nil {
				return err
			}
			tb, err := c.ListTableOfFamily(table, nftables.TableFamilyINet)
			if err != nil {
				return err
			}
			// google/nftables v0.3.0 decodes NFTA_TABLE_FLAGS in host
			// order; the kernel sends it big-endian.
			fl = binary.BigEndian.Uint32(binary.NativeEndian.AppendUint32(nil, tb.Flags))
			return nil
		})
		return fl
	}
	newFilter := func(cfg FilterConfig) (*Filter, error) {
		cfg.Table, cfg.TUN = table, "gns-fotun"
		var f *Filter
		err := nettest.Do(ns, func() (err error) {
			f, err = NewFilter(cfg)
			return err
		})
		return f, err
	}

	f, err := newFilter(FilterConfig{Guards: map[string][]netip.Prefix{"peer": {host}}})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if !f.Owned() {
		t.Fatal("Owned() = false on a kernel with NFT_TABLE_F_PERSIST")
	}
	if got := flags(); got&(nftTableOwner|nftTablePersist) != nftTableOwner|nftTablePersist {
		t.Fatalf("table flags %#x, want owner and persist", got)
	}
	if g.send("before") {
		t.Fatal("the guard is missing")
	}

	if out, err := nft("flush", "ruleset"); err != nil {
		t.Fatalf("nft flush ruleset: %v\n%s", err, out)
	}
	if out, err := nft("list", "table", "inet", table); err != nil || !strings.Contains(out, "chain guard") {
		t.Fatalf("the table or its guard chain is gone after nft flush ruleset: %v\n%s", err, out)
	}
	if g.send("after flush ruleset") {
		t.Fatal("cleartext left after nft flush ruleset: the guard went with it")
	}
	for _, args := range [][]string{
		{"delete", "table", "inet", table},
		{"flush", "table", "inet", table},
		{"delete", "element", "inet", table, guardedSet, "{ " + host.String() + " }"},
		{"add", "element", "inet", table, protectedSet, "{ 192.0.2.99 }"},
	} {
		if out, err := nft(args...); err == nil {
			t.Errorf("nft %s: another process changed the owned table\n%s", strings.Join(args, " "), out)
		}
	}
	if g.send("after the attempts") {
		t.Fatal("cleartext left after other processes tried to change the table")
	}
	readFilterSets(t, f).matchModel(t, f, "after other processes tried")

	if f2, err := newFilter(FilterConfig{}); err == nil {
		f2.Close()
		t.Fatal("a second Filter took the table of a live one")
	} else if !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "another gosec") {
		t.Errorf("second Filter: %v, want EPERM naming another gosec", err)
	}

	// The SPI gate goes through the filter's socket; a socket of its own
	// cannot change the owned table.
	nettest.MustDo(t, ns, func() error {
		gate, err := NewSPIGate(SPIGateConfig{Filter: f})
		if err != nil {
			return err
		}
		// Left open: its chain and sets are stale state at the crash.
		if err := gate.Admit(0x4242, p.BAddr); err != nil {
			return err
		}
		if c, err := gate.Counts(); err != nil || c.Admitted != 1 || c.Open {
			t.Errorf("gate counts %+v, %v; want 1 SPI admitted, gate shut", c, err)
		}
		if lone, err := NewSPIGate(SPIGateConfig{Table: table}); err == nil {
			lone.Close()
			t.Error("a gate on a socket of its own changed the owned table")
		}
		return nil
	})
	if err := f.AddConn("peer", []netip.Prefix{host}); err != nil {
		t.Fatalf("AddConn after the gate came and went: %v", err)
	}
	readFilterSets(t, f).matchModel(t, f, "after the gate")

	// A crash: the owner's socket goes, the table and its guard stay.
	f.crash()
	if got := flags(); got&nftTablePersist == 0 || got&nftTableOwner != 0 {
		t.Fatalf("after the owner's socket closed: table flags %#x, want persist without owner", got)
	}
	if g.send("after the crash") {
		t.Fatal("cleartext left after the daemon died")
	}
	f3, err := newFilter(FilterConfig{KeepStale: func(string) bool { return true }})
	if err != nil {
		t.Fatalf("NewFilter after a crash: %v", err)
	}
	if !f3.Owned() || flags()&nftTableOwner == 0 {
		t.Errorf("the next Filter did not adopt the table: Owned() %v, flags %#x", f3.Owned(), flags())
	}
	if kept := f3.Kept(); len(kept["peer"]) != 1 || kept["peer"][0] != host {
		t.Errorf("Kept() = %v, want peer: %v", kept, host)
	}
	if g.send("restarted") {
		t.Fatal("cleartext left after the restart")
	}
	if out, err := nft("list", "table", "inet", table); err != nil || strings.Count(out, "\tchain ") != 5 || strings.Contains(out, spiGateChain) || strings.Contains(out, spiGateSet) {
		t.Errorf("the adopted table holds the stale gate's chain or set, or not the filter's 5 chains: %v\n%s", err, out)
	}
	if err := f3.Close(); err != nil {
		t.Fatal(err)
	}
	if out, err := nft("list", "table", "inet", table); err == nil {
		t.Errorf("the table is still there after Close:\n%s", out)
	}
	if !g.send("closed") {
		t.Error("the guard still drops after Close")
	}

	// A stale table without the flags (an older gosec's, or one made by
	// hand) cannot be adopted: the Filter replaces it unowned, as before,
	// and owns the table from the start after a clean stop.
	if out, err := nft("add", "table", "inet", table); err != nil {
		t.Fatalf("nft add table: %v\n%s", err, out)
	}
	f4, err := newFilter(FilterConfig{Guards: map[string][]netip.Prefix{"peer": {host}}})
	if err != nil {
		t.Fatalf("NewFilter over an unowned stale table: %v", err)
	}
	if f4.Owned() {
		t.Error("Owned() = true over a stale table without NFT_TABLE_F_PERSIST")
	}
	if g.send("unowned") {
		t.Fatal("the guard is missing in the unowned table")
	}
	if err := f4.Close(); err != nil {
		t.Fatal(err)
	}
	f5, err := newFilter(FilterConfig{})
	if err != nil {
		t.Fatal(err)
	}
	defer f5.Close()
	if !f5.Owned() {
		t.Error("Owned() = false after a clean stop deleted the unowned table")
	}
}

// TestTableClaim: ClaimTable is the namespace's daemon lock. A claim owns
// the table; a second claim fails with ErrAnotherDaemon (EPERM) while the
// first lives; a claim that no Filter took deletes the empty table it
// created but leaves a crashed daemon's table, with its guard, when it
// closes; a Filter takes over a claim on its own table only.
func TestTableClaim(t *testing.T) {
	const table = "gns-tc"
	_, g, host, ns, nft := newTableLab(t, table, "10.231.27.0/24", 7008)
	claim := func(name string) (*TableClaim, error) {
		var c *TableClaim
		err := nettest.Do(ns, func() (err error) {
			c, err = ClaimTable(name)
			return err
		})
		return c, err
	}
	newFilter := func(cfg FilterConfig) (*Filter, error) {
		cfg.TUN = "gns-tctun"
		var f *Filter
		err := nettest.Do(ns, func() (err error) {
			f, err = NewFilter(cfg)
			return err
		})
		return f, err
	}

	c1, err := claim(table)
	if err != nil {
		t.Fatal(err)
	}
	if !c1.Owned() {
		t.Fatal("Owned() = false on a kernel with NFT_TABLE_F_PERSIST")
	}
	lock := table + LockTableSuffix
	if out, err := nft("list", "table", "inet", table); err != nil || !strings.Contains(out, "flags owner") {
		t.Fatalf("no owned table after the claim: %v\n%s", err, out)
	}
	if out, err := nft("list", "table", "inet", lock); err != nil || !strings.Contains(out, "flags owner") || strings.Contains(out, "persist") {
		t.Fatalf("no lock table owned without persistence: %v\n%s", err, out)
	}
	if !c1.Locked() {
		t.Fatal("Locked() = false with the lock table there")
	}
	if c2, err := claim(table); err == nil {
		c2.Close()
		t.Fatal("a second claim took the table of a live one")
	} else if !errors.Is(err, ErrAnotherDaemon) || !errors.Is(err, unix.EPERM) {
		t.Fatalf("second claim: %v, want ErrAnotherDaemon and EPERM", err)
	}
	if _, err := newFilter(FilterConfig{Table: table}); !errors.Is(err, ErrAnotherDaemon) {
		t.Fatalf("a Filter without the claim: %v, want ErrAnotherDaemon", err)
	}
	if _, err := newFilter(FilterConfig{Table: table + "x", Claim: c1}); err == nil {
		t.Fatal("a Filter on another table took the claim")
	}
	// A start-up that fails before its filter: the empty table goes.
	if err := c1.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{table, lock} {
		if out, err := nft("list", "table", "inet", name); err == nil {
			t.Fatalf("table inet %s is still there after the claim closed:\n%s", name, out)
		}
	}

	// A Filter takes the claim; closing the claim then changes nothing.
	c3, err := claim(table)
	if err != nil {
		t.Fatal(err)
	}
	f, err := newFilter(FilterConfig{Table: table, Claim: c3, Guards: map[string][]netip.Prefix{"peer": {host}}})
	if err != nil {
		t.Fatal(err)
	}
	if !f.Owned() {
		t.Error("the Filter on an owned claim is not Owned")
	}
	if _, err := newFilter(FilterConfig{Table: table, Claim: c3}); err == nil {
		t.Fatal("a second Filter took a claim already taken")
	}
	if err := c3.Close(); err != nil {
		t.Fatal(err)
	}
	if g.send("claim closed after the Filter took it") {
		t.Fatal("closing a taken claim took the guard away")
	}
	if c4, err := claim(table); err == nil {
		c4.Close()
		t.Fatal("the Filter's table was claimable: closing the taken claim gave up the ownership")
	}

	// A crash, then a start-up that fails after its claim: the crashed
	// daemon's table and guard stay.
	f.crash()
	c5, err := claim(table)
	if err != nil {
		t.Fatalf("claim after a crash: %v", err)
	}
	if err := c5.Close(); err != nil {
		t.Fatal(err)
	}
	if out, err := nft("list", "table", "inet", table); err != nil || !strings.Contains(out, "chain guard") {
		t.Fatalf("a failed start-up removed the crashed daemon's table: %v\n%s", err, out)
	}
	if g.send("after a failed start-up") {
		t.Fatal("cleartext left after a start-up that failed after its claim")
	}
	f2, err := newFilter(FilterConfig{Table: table})
	if err != nil {
		t.Fatal(err)
	}
	if err := f2.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{table, lock} {
		if out, err := nft("list", "table", "inet", name); err == nil {
			t.Fatalf("table inet %s is still there after the Filter closed:\n%s", name, out)
		}
	}

	// A table that cannot be owned (here a stale one without the flags,
	// as an older gosec left it; before Linux 6.9 every table): the claim
	// is unowned, and the lock table alone locks the namespace, also
	// after a ruleset flush deleted the unowned table.
	if out, err := nft("add", "table", "inet", table); err != nil {
		t.Fatalf("nft add table: %v\n%s", err, out)
	}
	c6, err := claim(table)
	if err != nil {
		t.Fatalf("claim over a stale unowned table: %v", err)
	}
	if c6.Owned() || !c6.Locked() {
		t.Fatalf("claim over a stale unowned table: Owned() %v, Locked() %v; want unowned and locked", c6.Owned(), c6.Locked())
	}
	if c7, err := claim(table); err == nil {
		c7.Close()
		t.Fatal("a second claim passed the lock table")
	} else if !errors.Is(err, ErrAnotherDaemon) {
		t.Fatalf("second claim with the lock table held: %v, want ErrAnotherDaemon", err)
	}
	f6, err := newFilter(FilterConfig{Table: table, Claim: c6})
	if err != nil {
		t.Fatal(err)
	}
	if f6.Owned() {
		t.Error("a Filter on an unowned claim says Owned")
	}
	if _, err := newFilter(FilterConfig{Table: table}); !errors.Is(err, ErrAnotherDaemon) {
		t.Errorf("a second Filter while the first holds the lock table: %v, want ErrAnotherDaemon", err)
	}
	if out, err := nft("flush", "ruleset"); err != nil {
		t.Fatalf("nft flush ruleset: %v\n%s", err, out)
	}
	if out, err := nft("list", "table", "inet", lock); err != nil {
		t.Fatalf("the lock table did not survive nft flush ruleset: %v\n%s", err, out)
	}
	if c8, err := claim(table); err == nil {
		c8.Close()
		t.Fatal("a second claim passed the lock table after a ruleset flush deleted the unowned table")
	} else if !errors.Is(err, ErrAnotherDaemon) {
		t.Fatalf("second claim after the flush: %v, want ErrAnotherDaemon", err)
	}
	if err := f6.Close(); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{table, lock} {
		if out, err := nft("list", "table", "inet", name); err == nil {
			t.Errorf("table inet %s is still there after the Filter closed:\n%s", name, out)
		}
	}
}

// newTableLab is the set-up of the table tests (root): a namespace pair
// named after the table, with a guard probe on port, the peer's address as
// a /32 and nft in the first namespace.
func newTableLab(t *testing.T, table, prefix string, port int) (*nettest.Pair, *guardProbe, netip.Prefix, string, func(args ...string) (string, error)) {
	t.Helper()
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, table, netip.MustParsePrefix(prefix))
	return p, newGuardProbe(t, p, port), netip.PrefixFrom(p.BAddr, 32), p.A.NS, nftIn(p.A.NS)
}

// nftIn runs the nft command in namespace ns.
func nftIn(ns string) func(args ...string) (string, error) {
	return func(args ...string) (string, error) {
		out, err := exec.Command("ip", append([]string{"netns", "exec", ns, "nft"}, args...)...).CombinedOutput()
		return string(out), err
	}
}

// TestFilterRestore: an unowned table (here over a stale one without the
// flags; before Linux 6.9 always) is watched. When another process
// deletes it (nft flush ruleset) the Filter restores it from its model,
// and the SPI gate its chain, SPIs and ring bypass, and OnGone hears how
// that went: the guard drops again, conns and SPIs can be added again.
// On this kernel the restored table is owned. The Filter's own Close is
// not reported; an owned table is not watched.
func TestFilterRestore(t *testing.T) {
	const table = "gns-fg"
	p, g, host, ns, nft := newTableLab(t, table, "10.231.28.0/24", 7009)
	gone := make(chan error, 4)
	newFilter := func() *Filter {
		t.Helper()
		var f *Filter
		nettest.MustDo(t, ns, func() (err error) {
			f, err = NewFilter(FilterConfig{Table: table, TUN: "gns-fgtun", OnGone: func(err error) { gone <- err }})
			return err
		})
		return f
	}

	owned := newFilter()
	if !owned.Owned() || owned.watch != nil {
		t.Fatalf("owned table: Owned() %v, watched %v; want owned and not watched", owned.Owned(), owned.watch != nil)
	}
	if err := owned.Close(); err != nil {
		t.Fatal(err)
	}

	// Closed without a deletion by anyone else: nothing reported.
	if out, err := nft("add", "table", "inet", table); err != nil {
		t.Fatalf("nft add table: %v\n%s", err, out)
	}
	f := newFilter()
	if f.Owned() || f.watch == nil {
		t.Fatalf("stale unowned table: Owned() %v, watched %v; want unowned and watched", f.Owned(), f.watch != nil)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gone:
		t.Fatal("the Filter's own Close was reported as the table's loss")
	case <-time.After(300 * time.Millisecond):
	}

	if out, err := nft("add", "table", "inet", table); err != nil {
		t.Fatalf("nft add table: %v\n%s", err, out)
	}
	f = newFilter()
	defer f.Close()
	if err := f.AddConn("peer", []netip.Prefix{host}); err != nil {
		t.Fatal(err)
	}
	var gate *SPIGate
	nettest.MustDo(t, ns, func() (err error) {
		gate, err = NewSPIGate(SPIGateConfig{Filter: f, NATTPort: 4500})
		return err
	})
	defer gate.Close()
	if err := gate.Admit(0x4242, p.BAddr); err != nil {
		t.Fatal(err)
	}
	if err := gate.BypassRing(); err != nil {
		t.Fatal(err)
	}
	if g.send("before the flush") {
		t.Fatal("the guard is missing before the flush")
	}
	if _, err := f.Counts(); err != nil {
		t.Fatal(err)
	}

	if out, err := nft("flush", "ruleset"); err != nil {
		t.Fatalf("nft flush ruleset: %v\n%s", err, out)
	}
	select {
	case err := <-gone:
		if err != nil {
			t.Fatalf("restoring the table: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the unowned table's deletion was not reported within 5 s")
	}
	if f.Gone() || f.Restores() != 1 {
		t.Errorf("after the restore: Gone() %v, Restores() %d; want false, 1", f.Gone(), f.Restores())
	}
	if !f.Owned() {
		t.Error("the restored table is not owned on a kernel with NFT_TABLE_F_PERSIST")
	}
	readFilterSets(t, f).matchModel(t, f, "after the restore")
	if g.send("after the restore") {
		t.Fatal("cleartext left after the table was restored: the guard is missing")
	}
	out, err := nft("list", "table", "inet", table)
	if err != nil {
		t.Fatalf("nft list table: %v\n%s", err, out)
	}
	for _, want := range []string{"chain " + spiGateChain, "chain " + ringBypassChain, "elements = { 16962 }", p.BAddr.String(), "chain guard"} {
		if !strings.Contains(out, want) {
			t.Errorf("the restored table lacks %q:\n%s", want, out)
		}
	}
	if err := f.AddConn("peer2", []netip.Prefix{netip.MustParsePrefix("192.0.2.128/25")}); err != nil {
		t.Errorf("AddConn after the restore: %v", err)
	}
	if err := gate.Admit(0x4343, p.BAddr); err != nil {
		t.Errorf("Admit after the restore: %v", err)
	}
	if c, err := gate.Counts(); err != nil || c.Admitted != 2 || c.Open {
		t.Errorf("gate after the restore: %+v, %v; want 2 SPIs admitted, shut", c, err)
	}
	readFilterSets(t, f).matchModel(t, f, "after adding to the restored table")
	gate.Close()
	f.Close()

	// As before Linux 6.9, where no table can be owned: every flush
	// deletes it, every deletion is restored, unowned, and the restore's
	// own transaction is not taken for another deletion.
	noPersistForTests = true
	defer func() { noPersistForTests = false }()
	f = newFilter()
	defer f.Close()
	if f.Owned() || f.watch == nil {
		t.Fatalf("without persist: Owned() %v, watched %v; want unowned and watched", f.Owned(), f.watch != nil)
	}
	if err := f.AddConn("peer", []netip.Prefix{host}); err != nil {
		t.Fatal(err)
	}
	for round := 1; round <= 2; round++ {
		if out, err := nft("flush", "ruleset"); err != nil {
			t.Fatalf("nft flush ruleset: %v\n%s", err, out)
		}
		flushed := time.Now()
		select {
		case err := <-gone:
			if err != nil {
				t.Fatalf("round %d: restoring the table: %v", round, err)
			}
			t.Logf("round %d: restored %v after nft flush ruleset returned", round, time.Since(flushed))
		case <-time.After(5 * time.Second):
			t.Fatalf("round %d: the deletion was not reported within 5 s", round)
		}
		if f.Owned() {
			t.Errorf("round %d: the restored table is owned without persist", round)
		}
		readFilterSets(t, f).matchModel(t, f, fmt.Sprintf("without persist, restore %d", round))
		if g.send(fmt.Sprintf("without persist, restore %d", round)) {
			t.Fatalf("round %d: the guard is missing after the restore", round)
		}
	}
	select {
	case err := <-gone:
		t.Errorf("a third deletion reported after two flushes (the restore's own transaction?): %v", err)
	case <-time.After(500 * time.Millisecond):
	}
	if n := f.Restores(); n != 2 {
		t.Errorf("Restores() = %d after two flushes, want 2", n)
	}
}
