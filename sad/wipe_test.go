package sad

import (
	"net/netip"
	"testing"
	"time"
)

type wiper interface{ Wiped() bool }

func suiteOf(sa *SA) wiper {
	if sa.ESP != nil {
		return sa.ESP
	}
	return sa.AH
}

// TestWipeOnRemoval: an SA's suites are wiped WipeDelay after Delete,
// DeleteReqID or Replace (not before: packets holding it finish), a
// same-key replacement that keeps the suite keeps it unwiped, and Close
// wipes everything at once.
func TestWipeOnRemoval(t *testing.T) {
	db, clk, _ := newDB(t)
	add := func(sa *SA) *SA {
		t.Helper()
		if err := db.Add(sa); err != nil {
			t.Fatal(err)
		}
		return sa
	}
	ah := suited(&SA{SPI: spiSeq.Add(1), Proto: AH, Mode: Tunnel, Dir: Outbound, Src: addrA, Dst: addrB, ReqID: 7})
	deleted, byReqID, byReqIDAH := add(out(0)), add(in(7)), add(ah)
	replaced, sameKey := add(out(0)), add(out(0))
	stays := add(in(0))

	db.Delete(deleted.SPI, deleted.Proto, deleted.Dst)
	db.DeleteReqID(7)
	repl := out(0)
	if err := db.Replace(replaced, repl); err != nil {
		t.Fatal(err)
	}
	// Same key, same suite (say, new UDP ports): the suite stays in use.
	moved := &SA{SPI: sameKey.SPI, Proto: ESP, Mode: Tunnel, Dir: Outbound, Src: addrA, Dst: addrB, ESP: sameKey.ESP,
		Encap: &Encap{SrcPort: 4500, DstPort: 4501}}
	if err := db.Replace(sameKey, moved); err != nil {
		t.Fatal(err)
	}
	gone := []*SA{deleted, byReqID, byReqIDAH, replaced}
	for _, sa := range append(gone, sameKey, stays, repl) {
		if suiteOf(sa).Wiped() {
			t.Fatalf("%v wiped before WipeDelay", sa)
		}
	}
	clk.Advance(WipeDelay - time.Millisecond)
	for _, sa := range gone {
		if suiteOf(sa).Wiped() {
			t.Fatalf("%v wiped before WipeDelay", sa)
		}
	}
	clk.Advance(time.Millisecond)
	for _, sa := range gone {
		if !suiteOf(sa).Wiped() {
			t.Errorf("%v not wiped WipeDelay after its removal", sa)
		}
	}
	for _, sa := range []*SA{moved, stays, repl} {
		if suiteOf(sa).Wiped() {
			t.Errorf("%v, still in the DB, was wiped", sa)
		}
	}
	// Removed just before Close: wiped by Close, as is what is still in.
	last := add(in(0))
	db.Delete(last.SPI, last.Proto, netip.Addr(last.Dst))
	db.Close()
	for _, sa := range []*SA{last, moved, stays, repl} {
		if !suiteOf(sa).Wiped() {
			t.Errorf("%v not wiped by Close", sa)
		}
	}
}
