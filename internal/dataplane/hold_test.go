package dataplane

import (
	"net/netip"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

// TestTrapHoldsAndReleases: with a trap policy and no SA, packets are held
// (bounded), IKE is asked once, and nothing leaves; when the outbound SA
// appears the held packets are sealed with it and sent, in order; if the
// negotiation fails they are dropped and counted.
func TestTrapHoldsAndReleases(t *testing.T) {
	a := newSide(t, gw1, gw2, lan1, lan2, sad.Tunnel, specs()[1], 0x1001, 0x2001, false)
	out := a.out
	a.sad.Delete(out.SPI, out.Proto, out.Dst)
	// Make the Out policy a trap.
	for _, p := range a.spd.All() {
		if p.Dir == spd.Out {
			q := *p
			q.Trap = true
			if err := a.spd.Replace(p.ID, &q); err != nil {
				t.Fatal(err)
			}
		}
	}
	var trapped []uint32
	a.p.cfg.OnTrap = func(reqid uint32) { trapped = append(trapped, reqid) }
	var sent [][]byte
	a.p.sendHeld = func(raw, rawAH, udp []netio.Msg) {
		for _, m := range raw {
			sent = append(sent, append([]byte(nil), m.Buf...))
		}
	}
	icmp := make([]byte, netio.TUNHeadroom+netio.FragNeededMax)
	send := func(n int) {
		for i := 0; i < n; i++ {
			buf, m := icmpPacket(t, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2"), 10+i)
			if _, kind, _ := a.p.outbound(&a.outState, buf, netio.Headroom, m, icmp); kind != outDrop {
				t.Fatalf("packet %d left without an SA (kind %d)", i, kind)
			}
		}
	}
	send(MaxHeldPerReqID + 5)
	if len(trapped) != 1 || trapped[0] != 1 {
		t.Fatalf("OnTrap calls %v, want one for reqid 1", trapped)
	}
	if got := a.p.Held(); got != MaxHeldPerReqID {
		t.Fatalf("held %d, want the bound %d", got, MaxHeldPerReqID)
	}
	if st := a.p.Stats(); st.Drops[drop.NoBuffer.String()] != 5 || st.Held != MaxHeldPerReqID {
		t.Fatalf("stats %+v: want 5 no-buffer drops beyond the bound", st)
	}
	// The SA arrives: the held packets go out sealed with it, in order.
	out = &sad.SA{SPI: out.SPI, Proto: out.Proto, Mode: out.Mode, Src: out.Src, Dst: out.Dst, ReqID: out.ReqID,
		Dir: out.Dir, ESP: out.ESP, AH: out.AH, Encap: out.Encap, Conn: out.Conn}
	if err := a.sad.Add(out); err != nil {
		t.Fatal(err)
	}
	if n := a.p.ReleaseHeld(1); n != MaxHeldPerReqID || len(sent) != MaxHeldPerReqID {
		t.Fatalf("released %d, sent %d; want %d", n, len(sent), MaxHeldPerReqID)
	}
	for i, b := range sent {
		// Outer IPv4 + ESP: SPI at 20, sequence number at 24.
		if spi := be32(b[20:]); spi != out.SPI {
			t.Fatalf("packet %d sealed with SPI %08x, want %08x", i, spi, out.SPI)
		}
		if seq := be32(b[24:]); seq != uint32(i+1) {
			t.Fatalf("packet %d has sequence number %d: order lost", i, seq)
		}
	}
	if a.p.Held() != 0 {
		t.Fatal("queue not empty after release")
	}
	// Negotiation fails: held packets are dropped and counted, the trap
	// fires again for the next packet.
	a.sad.Delete(out.SPI, out.Proto, out.Dst)
	a.p.ClearTrap(1)
	send(3)
	before := a.p.Stats().Drops[drop.NoSA.String()]
	if n := a.p.DropHeld(1); n != 3 {
		t.Fatalf("DropHeld = %d, want 3", n)
	}
	if got := a.p.Stats().Drops[drop.NoSA.String()] - before; got != 3 {
		t.Fatalf("no-sa drops +%d, want +3", got)
	}
	send(1)
	if len(trapped) != 3 {
		t.Fatalf("OnTrap calls %v, want a new one after each failure/clear", trapped)
	}
}

func be32(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
