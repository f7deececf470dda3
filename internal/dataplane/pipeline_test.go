package dataplane

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net/netip"
	"runtime"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/integ"
	"github.com/gosec-ipsec/gosec/internal/iphdr"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

// link is two planes (gateways) joined by fake wires: packets generated
// by tunA are sealed by plane a, carried to plane b, opened and written
// into tunB.
type link struct {
	a, b       *side
	pa, pb     *Plane
	tunA, tunB *fakeTUN
	// tunA1 is a's second TUN queue (wireRawTUNQueue), steered is what
	// a's Steer was given, call by call.
	tunA1   *fakeTUN
	steered chan []netip.Prefix
	wires   []*fakeWire
	devices []*firstCall
	cancel  context.CancelFunc
	errs    chan error
}

// stampAt is where the fake TUN stamps its counter: the first payload
// bytes after the IPv4 and ICMP headers.
const stampAt = 28

// wireMode is how a link's packets travel.
type wireMode int

const (
	wireRaw         wireMode = iota // raw ESP
	wireUDP                         // ESP-in-UDP
	wireUDPQueue                    // ESP-in-UDP, received on b's second NAT-T socket
	wireRawTUNQueue                 // raw ESP, read from a's second TUN queue
)

func (m wireMode) String() string { return [...]string{"raw", "udp", "udp-queue", "raw-tun-queue"}[m] }

func newLink(t testing.TB, spec suiteSpec, mode wireMode, workers, batch int, pkt []byte, count int) *link {
	t.Helper()
	encap := mode == wireUDP || mode == wireUDPQueue
	l := &link{
		a:    newSide(t, gw1, gw2, lan1, lan2, sad.Tunnel, spec, 0x1001, 0x2001, encap),
		b:    newSide(t, gw2, gw1, lan2, lan1, sad.Tunnel, spec, 0x2001, 0x1001, encap),
		tunA: newFakeTUN(batch, 1500),
		tunB: newFakeTUN(batch, 1500),
		errs: make(chan error, 2),
	}
	l.tunA.source(pkt, count)
	l.tunA.stampAt = stampAt
	l.tunB.expect(int64(count))
	wire := func() *fakeWire {
		w := newFakeWire(1024)
		l.wires = append(l.wires, w)
		return w
	}
	ab, ba := wire(), wire()
	cfgA := Config{TUN: l.tunA, SAD: l.a.sad, SPD: l.a.spd, Workers: workers, Log: discardLog}
	cfgB := Config{TUN: l.tunB, SAD: l.b.sad, SPD: l.b.spd, Workers: workers, Log: discardLog}
	if encap {
		cfgA.NATT = &fakeNATT{tx: ab, rx: ba, local: netip.AddrPortFrom(gw1, 4500), from: netip.AddrPortFrom(gw2, 4500), firstCall: newFirstCall()}
		cfgB.NATT = &fakeNATT{tx: ba, rx: ab, local: netip.AddrPortFrom(gw2, 4500), from: netip.AddrPortFrom(gw1, 4500), firstCall: newFirstCall()}
		if mode == wireUDPQueue {
			// b's first socket hears nothing; its second gets a's packets.
			q := &fakeNATT{rx: ab, local: netip.AddrPortFrom(gw2, 4500), from: netip.AddrPortFrom(gw1, 4500), firstCall: newFirstCall()}
			cfgB.NATT.(*fakeNATT).rx = wire()
			cfgB.NATTQueues = []UDPConn{q}
			l.devices = append(l.devices, &q.firstCall)
		}
		ab, ba = wire(), wire() // the raw sockets stay idle
	}
	if mode == wireRawTUNQueue {
		// a's first queue stays idle; its second reads the source.
		l.tunA1 = newFakeTUN(batch, 1500)
		l.tunA1.source(pkt, count)
		l.tunA1.stampAt = stampAt
		l.tunA.source(nil, 0)
		l.steered = make(chan []netip.Prefix, 64)
		cfgA.TUNQueues = []TUNDevice{l.tunA1}
		cfgA.Steer = func(dsts []netip.Prefix) error {
			select {
			case l.steered <- dsts:
			default:
			}
			return nil
		}
		l.devices = append(l.devices, &l.tunA1.firstCall)
	}
	ra := &fakeRaw{tx: ab, rx: ba, from: netip.AddrPortFrom(gw2, 0), firstCall: newFirstCall()}
	rb := &fakeRaw{tx: ba, rx: ab, from: netip.AddrPortFrom(gw1, 0), firstCall: newFirstCall()}
	cfgA.ESP, cfgB.ESP = ra, rb
	l.devices = append(l.devices, &l.tunA.firstCall, &l.tunB.firstCall, &ra.firstCall, &rb.firstCall)
	if encap {
		l.devices = append(l.devices, &cfgA.NATT.(*fakeNATT).firstCall, &cfgB.NATT.(*fakeNATT).firstCall)
	}
	var err error
	if l.pa, err = New(cfgA); err != nil {
		t.Fatal(err)
	}
	if l.pb, err = New(cfgB); err != nil {
		t.Fatal(err)
	}
	return l
}

// waitReady waits until every loop of both planes has made its first
// read (its buffers are allocated by then).
func (l *link) waitReady() {
	for _, d := range l.devices {
		<-d.ready
	}
}

func (l *link) start() {
	ctx, cancel := context.WithCancel(context.Background())
	l.cancel = cancel
	for _, p := range []*Plane{l.pa, l.pb} {
		go func() { l.errs <- p.Run(ctx) }()
	}
}

// stop cancels the planes, closes the devices and waits until every
// goroutine of both planes has ended.
func (l *link) stop(t testing.TB) {
	l.cancel()
	l.tunA.Close()
	l.tunB.Close()
	if l.tunA1 != nil {
		l.tunA1.Close()
	}
	for _, w := range l.wires {
		w.Close()
	}
	for range 2 {
		if err := <-l.errs; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	for _, p := range []*Plane{l.pa, l.pb} {
		select {
		case <-p.Stopped():
		case <-time.After(10 * time.Second):
			buf := make([]byte, 1<<20)
			t.Fatalf("plane goroutines still running after close:\n%s", buf[:runtime.Stack(buf, true)])
		}
	}
}

// TestPipelineOrder runs whole planes on fake devices with several
// workers and checks that every packet arrives, unchanged and in the
// order it was read (the counter stamped into each), with no drop: the
// replay window, updated in the sequential stage, must accept them all.
// Stopping the planes must end all their goroutines.
func TestPipelineOrder(t *testing.T) {
	const count = 3000
	for _, spec := range specs()[:2] {
		for _, mode := range []wireMode{wireRaw, wireUDP, wireUDPQueue, wireRawTUNQueue} {
			for _, batch := range []int{1, 64} {
				name := fmt.Sprintf("%s/%v/batch=%d", spec.name, mode, batch)
				t.Run(name, func(t *testing.T) {
					pkt, n := icmpPacket(t, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2"), 200)
					tmpl := pkt[netio.Headroom : netio.Headroom+n]
					l := newLink(t, spec, mode, 4, batch, tmpl, count)
					var next uint32 = 1
					var bad []string
					l.tunB.check = func(p []byte) {
						c := binary.BigEndian.Uint32(p[stampAt:])
						if c != next && len(bad) < 5 {
							bad = append(bad, fmt.Sprintf("got packet %d, want %d", c, next))
						}
						next = c + 1
						if !bytes.Equal(p[stampAt+4:], tmpl[stampAt+4:]) && len(bad) < 5 {
							bad = append(bad, fmt.Sprintf("packet %d payload differs", c))
						}
					}
					l.start()
					select {
					case <-l.tunB.done:
					case <-time.After(60 * time.Second):
						t.Errorf("%d of %d packets arrived; drops a %v, b %v", l.tunB.got.Load(), count, l.pa.Stats().Drops, l.pb.Stats().Drops)
					}
					l.stop(t)
					l.tunB.mu.Lock()
					defer l.tunB.mu.Unlock()
					if len(bad) > 0 {
						t.Errorf("order or content: %v", bad)
					}
					for _, s := range []StatsSnapshot{l.pa.Stats(), l.pb.Stats()} {
						if len(s.Drops) > 0 || s.SendErrors > 0 {
							t.Errorf("drops %v, send errors %d", s.Drops, s.SendErrors)
						}
					}
					if got := l.pb.Stats().InPackets; got != count {
						t.Errorf("b counted %d packets in, want %d", got, count)
					}
					if got := l.a.out.Stats().PacketsOut; got != count {
						t.Errorf("a's SA counted %d packets out, want %d", got, count)
					}
				})
			}
		}
	}
}

// TestPipelineReplayDuplicate: a duplicate in the same batch as its
// original passes the replay pre-check twice (both are in flight), but
// only the first is written; the second is dropped as a replay when the
// sequential stage updates the window.
func TestPipelineReplayDuplicate(t *testing.T) {
	spec := specs()[0]
	l := newLink(t, spec, wireRaw, 2, 1, nil, 0)
	pkt, n := icmpPacket(t, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2"), 100)
	icmp := make([]byte, netio.TUNHeadroom+netio.FragNeededMax)
	out, _, _ := l.a.p.outbound(&l.a.outState, pkt, netio.Headroom, n, icmp)
	b := newInBatch(l.pb, 4, 4)
	defer freeInBatches([]*inBatch{b})
	b.arm()
	for i := 0; i < 2; i++ {
		b.ms[i].N = copy(b.ms[i].Buf, out)
		if !l.pb.rawPrepare(b.ms[i].Buf[:b.ms[i].N], &b.els[i]) {
			t.Fatalf("copy %d refused by the pre-check", i)
		}
		b.els[i].slot = i
	}
	b.n = 2
	b.crypt()
	b.finish(&inSink{})
	if got := l.tunB.got.Load(); got != 1 {
		t.Fatalf("%d packets written, want 1", got)
	}
	if got := l.b.in.Stats().Drops; got[drop.Replay] != 1 {
		t.Fatalf("replay drops %v", got)
	}
}

// TestPipelineTransportFragments: transport-mode datagrams that reach the
// TUN as fragments are reassembled by the reader, sealed by the workers
// and sent as outer fragments in order, while the reader goes on reading
// into its other containers; the reassembly buffers must not be reused
// before their batch is sent. The test joins the outer fragments again
// (the kernel's job on the peer) and opens each datagram.
func TestPipelineTransportFragments(t *testing.T) {
	const count = 400
	spec := specs()[0]
	a := newSide(t, gw1, gw2, lan1, lan2, sad.Transport, spec, 0x1001, 0x2001, false)
	b := newSide(t, gw2, gw1, lan2, lan1, sad.Transport, spec, 0x2001, 0x1001, false)
	// Two datagrams of different sizes and contents, alternating, so that
	// a buffer reused too early shows as a wrong datagram.
	var dgrams, frags [][]byte
	for i, size := range []int{3000, 2200} {
		pkt, n := icmpPacket(t, gw1, gw2, size)
		d := append([]byte(nil), pkt[netio.Headroom:netio.Headroom+n]...)
		d[6] = 0 // clear DF: the host would fragment it
		binary.BigEndian.PutUint16(d[4:], uint16(100+i))
		for j := 28; j < len(d); j++ {
			d[j] = byte(i*7 + j)
		}
		iphdrChecksum(d)
		dgrams = append(dgrams, d)
		fs := fragmentOuter(d, 1400, make([]byte, 8192), nil)
		for _, f := range fs {
			frags = append(frags, append([]byte(nil), f...))
		}
	}
	tun := newFakeTUN(16, 1500)
	tun.list, tun.left = frags, count*len(frags)/2
	wire, idle := newFakeWire(1024), newFakeWire(1)
	p, err := New(Config{TUN: tun, ESP: &fakeRaw{tx: wire, rx: idle}, SAD: a.sad, SPD: a.spd, Workers: 4, Log: discardLog})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Run(ctx) }()
	rx := &fakeRaw{rx: wire, firstCall: newFirstCall()}
	ms := make([]netio.Msg, 64)
	for i := range ms {
		ms[i].Buf = make([]byte, 2048)
	}
	var joined []byte
	got := 0
	for got < count {
		n, err := rx.Recv(ms)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range ms[:n] {
			f := m.Buf[:m.N]
			ff := binary.BigEndian.Uint16(f[6:])
			if ff&0x1fff == 0 {
				joined = append(joined[:0], f...)
			} else {
				joined = append(joined, f[20:]...)
			}
			if ff&0x2000 != 0 {
				continue
			}
			binary.BigEndian.PutUint16(joined[2:], uint16(len(joined)))
			binary.BigEndian.PutUint16(joined[6:], 0)
			iphdrChecksum(joined)
			inner := b.p.inboundRaw(joined)
			want := dgrams[got%2]
			if inner == nil {
				t.Fatalf("datagram %d did not open: drops %v", got, b.p.Stats().Drops)
			}
			if !bytes.Equal(inner[20:], want[20:]) {
				t.Fatalf("datagram %d differs from what was sent", got)
			}
			got++
		}
	}
	cancel()
	tun.Close()
	wire.Close()
	idle.Close()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	<-p.Stopped()
	if s := p.Stats(); len(s.Drops) > 0 || s.OutPackets != count {
		t.Fatalf("drops %v, %d packets out, want %d", s.Drops, s.OutPackets, count)
	}
}

// pipeSpecs are the suites BenchmarkPipeline measures: two CPU-bound
// CBC/HMAC suites and AES-GCM.
func pipeSpecs() []suiteSpec {
	k := func(n int) []byte { return bytes.Repeat([]byte{0x5a}, n) }
	return []suiteSpec{
		{"aes128-sha1", sad.ESP, esp.Config{Cipher: esp.CipherAESCBC, EncKey: k(16), Integ: integ.HMACSHA1_96, AuthKey: k(20)}, ah.Config{}},
		{"3des-sha1", sad.ESP, esp.Config{Cipher: esp.Cipher3DESCBC, EncKey: k(24), Integ: integ.HMACSHA1_96, AuthKey: k(20)}, ah.Config{}},
		{"aes128gcm16", sad.ESP, esp.Config{Cipher: esp.CipherAESGCM16, EncKey: k(20)}, ah.Config{}},
	}
}

// BenchmarkPipeline pushes packets through two whole planes on fake
// devices: TUN -> seal -> fake wire -> open -> TUN, raw ESP, tunnel mode,
// TUN batches of 64. One op is one packet delivered; pkts/s and Gbit/s
// (inner bytes) are reported. Run it with -cpu 1,2,... to see how it
// scales (scripts/bench-pipeline.sh); both gateways share the CPUs.
func BenchmarkPipeline(b *testing.B) { benchPipeline(b, 64) }

// BenchmarkPipelineSingles is BenchmarkPipeline with one packet per TUN
// read (traffic the TUN cannot hand over as a super-packet: ICMP, UDP
// without USO): the per-batch costs fall on every packet.
func BenchmarkPipelineSingles(b *testing.B) { benchPipeline(b, 1) }

func benchPipeline(b *testing.B, batch int) {
	for _, spec := range pipeSpecs() {
		for _, size := range []int{64, 1400} {
			b.Run(fmt.Sprintf("%s/%d", spec.name, size), func(b *testing.B) {
				pkt, n := icmpPacket(b, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2"), size-28)
				// The pipeline with a worker per core, whatever the
				// daemon's default for this many cores (autoWorkers).
				l := newLink(b, spec, wireRaw, runtime.GOMAXPROCS(0), batch, pkt[netio.Headroom:netio.Headroom+n], b.N)
				gate := make(chan struct{})
				l.tunA.gate = gate
				l.start()
				l.waitReady()
				b.ReportAllocs()
				cpu0 := cpuTime()
				b.ResetTimer()
				close(gate)
				<-l.tunB.done
				b.StopTimer()
				sec := b.Elapsed().Seconds()
				cpu := (cpuTime() - cpu0).Seconds()
				b.ReportMetric(float64(b.N)/sec, "pkts/s")
				b.ReportMetric(float64(l.tunB.bytes.Load())*8/sec/1e9, "Gbit/s")
				// On a shared machine the CPU the process got says more
				// than the GOMAXPROCS it was allowed.
				b.ReportMetric(cpu/sec, "cpus")
				b.ReportMetric(float64(b.N)/cpu, "pkts/cpu-s")
				l.stop(b)
			})
		}
	}
}

// BenchmarkPipelineLatency sends one 84-octet packet (a ping) at a time
// through two planes on fake devices and waits for it to come out before
// the next: the one-way time of a packet through both gateways, with the
// reader sealing/opening small batches inline (as Run does) or always
// handing them to the workers.
func BenchmarkPipelineLatency(b *testing.B) {
	for _, mode := range []struct {
		name   string
		inline int
	}{{"inline", inlineMax}, {"handoff", -1}} {
		b.Run(mode.name, func(b *testing.B) {
			saved := inlineMax
			inlineMax = mode.inline
			defer func() { inlineMax = saved }()
			pkt, n := icmpPacket(b, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2"), 56)
			l := newLink(b, pipeSpecs()[2], wireRaw, 2, 1, pkt[netio.Headroom:netio.Headroom+n], b.N)
			l.tunA.pace = make(chan struct{}, 1)
			l.tunB.check = func([]byte) { l.tunA.pace <- struct{}{} }
			l.start()
			l.waitReady()
			b.ReportAllocs()
			b.ResetTimer()
			l.tunA.pace <- struct{}{}
			<-l.tunB.done
			b.StopTimer()
			l.stop(b)
		})
	}
}

func iphdrChecksum(h []byte) { iphdr.SetChecksum(h[:20]) }

// cpuTime is the user and system time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestAutoWorkers(t *testing.T) {
	for _, tc := range []struct{ configured, procs, want int }{
		{0, 1, 0}, {0, 2, 0}, {0, 3, 0}, {0, 4, 4}, {0, 16, 16},
		{-1, 16, 0}, {1, 16, 0}, {2, 2, 2}, {3, 1, 3},
	} {
		if got := autoWorkers(tc.configured, tc.procs); got != tc.want {
			t.Errorf("autoWorkers(%d, %d) = %d, want %d", tc.configured, tc.procs, got, tc.want)
		}
	}
}

// TestTUNQueueSteering: a plane reads and seals from each TUN queue, counts
// what each queue read, steers the TUN by the SPD's outbound destinations
// when it starts and again after every change, and refuses queues it
// could not steer.
func TestTUNQueueSteering(t *testing.T) {
	const count = 500
	pkt, n := icmpPacket(t, netip.MustParseAddr("10.1.0.2"), netip.MustParseAddr("10.2.0.2"), 200)
	l := newLink(t, specs()[0], wireRawTUNQueue, 0, 64, pkt[netio.Headroom:netio.Headroom+n], count)
	l.start()
	select {
	case <-l.tunB.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("%d of %d packets arrived", l.tunB.got.Load(), count)
	}
	next := func() []netip.Prefix {
		t.Helper()
		select {
		case d := <-l.steered:
			return d
		case <-time.After(10 * time.Second):
			t.Fatal("Steer was not called")
			return nil
		}
	}
	if got, want := next(), l.a.spd.OutDestinations(); !slices.Equal(got, want) || len(want) != 1 {
		t.Fatalf("first Steer got %v, want the outbound destinations %v", got, want)
	}
	extra := netip.MustParsePrefix("10.9.0.0/16")
	if _, err := l.a.spd.Add(&spd.Policy{Name: "d", Dir: spd.Out, Action: spd.Protect, ReqID: 2,
		Sel:       spd.Selector{Local: netip.MustParsePrefix("10.1.0.0/24"), Remote: extra, LocalPorts: spd.AnyPort, RemotePorts: spd.AnyPort},
		Templates: []spd.Template{{Proto: 50, Mode: uint8(sad.Tunnel), TunnelSrc: gw1, TunnelDst: gw2}}}); err != nil {
		t.Fatal(err)
	}
	if got := next(); len(got) != 2 || !slices.Contains(got, extra) {
		t.Fatalf("Steer after a policy was added got %v, want it with %v", got, extra)
	}
	l.stop(t)
	if got := l.pa.Stats().TUNQueuePackets; !slices.Equal(got, []uint64{0, count}) {
		t.Errorf("packets read per TUN queue %v, want [0 %d]", got, count)
	}
	if _, err := New(Config{TUN: newFakeTUN(1, 1500), TUNQueues: []TUNDevice{newFakeTUN(1, 1500)},
		ESP: &fakeRaw{}, SAD: l.a.sad, SPD: l.a.spd}); err == nil {
		t.Error("New took TUN queues without Steer")
	}
}
