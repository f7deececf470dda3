package netio

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/nettest"
	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// gateway is one side of a tunnel built from this package's pieces with a
// null "ESP" (outer IPv4 + SPI + sequence, no crypto): TUN, policy routes,
// marked raw socket, cleartext filter.
type gateway struct {
	ns    string
	tun   *TUN
	raw   *RawConn
	wan   netip.Addr
	peer  netip.Addr
	seq   uint32
	stats fwdStats
}

const nullESPHdr = 20 + 8 // outer IPv4 + SPI + sequence number

// outbound: TUN batch -> prepend outer header and SPI/seq in the headroom
// -> one sendmmsg.
func (g *gateway) outbound() {
	bs := g.tun.BatchSize()
	bufs := make([][]byte, bs)
	for i := range bufs {
		bufs[i] = make([]byte, Headroom+65536)
	}
	sizes := make([]int, bs)
	ms := make([]Msg, bs)
	outer := iphdr.Outer{Src: g.wan.As4(), Dst: g.peer.As4(), DF: true}
	for {
		n, err := g.tun.Read(bufs, sizes, Headroom)
		if err != nil {
			return
		}
		for i := 0; i < n; i++ {
			start := Headroom - nullESPHdr
			b := bufs[i][start : Headroom+sizes[i]]
			g.seq++
			outer.ID = uint16(g.seq) | 1
			iphdr.PutIPv4(b, &outer, iphdr.ProtoESP, len(b))
			binary.BigEndian.PutUint32(b[20:], 0x1001)
			binary.BigEndian.PutUint32(b[24:], g.seq)
			ms[i] = Msg{Buf: b}
		}
		if _, err := g.raw.Send(ms[:n]); err != nil {
			return
		}
		g.stats.reads.Add(1)
		g.stats.pkts.Add(int64(n))
	}
}

// inbound: raw batch received at Headroom-nullESPHdr, so the inner packet
// lands exactly at Headroom -> TUN write without a copy.
func (g *gateway) inbound() {
	ms := make([]Msg, 64)
	bufs := make([][]byte, 64)
	for i := range ms {
		bufs[i] = make([]byte, Headroom+2048)
		ms[i].Buf = bufs[i][Headroom-nullESPHdr:]
	}
	w := make([][]byte, 0, 64)
	for {
		n, err := g.raw.Recv(ms)
		if err != nil {
			return
		}
		w = w[:0]
		for i := 0; i < n; i++ {
			if ms[i].N < nullESPHdr+20 || ms[i].Buf[0] != 0x45 || binary.BigEndian.Uint32(ms[i].Buf[20:]) != 0x1001 {
				continue
			}
			w = append(w, bufs[i][:Headroom-nullESPHdr+ms[i].N])
		}
		if len(w) > 0 {
			if _, err := g.tun.Write(w, Headroom); errors.Is(err, ErrClosed) {
				return
			}
		}
	}
}

// TestNullTunnel composes TUN, Router, RawConn and Filter the way the data
// plane will, with null encapsulation: ping and TCP between the two
// gateways' "LAN" addresses go through the TUNs and over proto 50 on the
// veth, and the marked outer packets do not loop.
func TestNullTunnel(t *testing.T) {
	testutil.NeedRoot(t)
	p := nettest.NewPair(t, "gnio-n", netip.MustParsePrefix("10.231.25.0/24"))
	lanA, lanB := netip.MustParseAddr("10.231.40.1"), netip.MustParseAddr("10.231.41.1")
	nettest.MustExec(t, p.A.NS, "ip", "addr", "add", lanA.String()+"/32", "dev", "lo")
	nettest.MustExec(t, p.B.NS, "ip", "addr", "add", lanB.String()+"/32", "dev", "lo")
	setup := func(ns string, wan, peer, lan netip.Addr, remote netip.Prefix) *gateway {
		g := &gateway{ns: ns, wan: wan, peer: peer}
		nettest.MustDo(t, ns, func() (err error) {
			if g.tun, err = OpenTUN(TUNConfig{Name: "gnio-ntun", MTU: 1500 - nullESPHdr}); err != nil {
				return err
			}
			if g.raw, err = ListenRaw(RawConfig{Proto: iphdr.ProtoESP, Mark: testMark, Buffer: 4 << 20}); err != nil {
				return err
			}
			r, err := NewRouter(RouteConfig{Table: 7600, Priority: 7600, Mark: testMark, TUNIndex: g.tun.Index()})
			if err != nil {
				return err
			}
			t.Cleanup(func() { r.Close() })
			if err := r.AddRoute(Route{Dst: remote, Src: lan}); err != nil {
				return err
			}
			f, err := NewFilter(FilterConfig{Table: "gnio-n", TUN: "gnio-ntun"})
			if err != nil {
				return err
			}
			t.Cleanup(func() { f.Close() })
			return f.AddConn("peer", []netip.Prefix{remote})
		})
		t.Cleanup(func() { g.tun.Close(); g.raw.Close() })
		go g.outbound()
		go g.inbound()
		return g
	}
	ga := setup(p.A.NS, p.AAddr, p.BAddr, lanA, netip.PrefixFrom(lanB, 24))
	setup(p.B.NS, p.BAddr, p.AAddr, lanB, netip.PrefixFrom(lanA, 24))

	out, err := nettest.Exec(p.A.NS, "ping", "-c", "3", "-i", "0.2", "-W", "2", lanB.String())
	if err != nil || !strings.Contains(out, " 0% packet loss") {
		t.Fatalf("ping through the null tunnel: %v\n%s", err, out)
	}
	if ga.stats.pkts.Load() < 3 {
		t.Errorf("only %d packets went through A's TUN", ga.stats.pkts.Load())
	}
	tp := &tunPair{nsA: p.A.NS, nsB: p.B.NS, addrA: lanA, addrB: lanB}
	d := tcpTransfer(t, tp, 16<<20)
	t.Logf("16 MB TCP through TUN+raw null tunnel in %v (%.0f Mbit/s), A: %d packets in %d TUN reads",
		d, float64(16<<20)*8/d.Seconds()/1e6, ga.stats.pkts.Load(), ga.stats.reads.Load())
}
