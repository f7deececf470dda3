package dataplane

import (
	"encoding/binary"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/gosec-ipsec/gosec/internal/netio"
)

// In-memory devices, so that whole planes run without the kernel (as
// wireguard-go's tests run its device on channel-backed TUNs and binds).

// firstCall is closed on a fake device's first read, when its loop has
// allocated its buffers.
type firstCall struct {
	once  sync.Once
	ready chan struct{}
}

func newFirstCall() firstCall { return firstCall{ready: make(chan struct{})} }

func (f *firstCall) called() {
	f.once.Do(func() {
		if f.ready != nil {
			close(f.ready)
		}
	})
}

// fakeTUN is a TUN whose reads generate copies of a template packet
// (with a running counter stamped into it) and whose writes are counted
// and handed to check.
type fakeTUN struct {
	firstCall
	// gate, if set, holds the first read until it is closed.
	gate chan struct{}
	// pace, if set, lets each read through only with a token from it.
	pace  chan struct{}
	batch int
	mtu   int

	// Source: Read makes left copies of tmpl, then blocks until closed.
	tmpl    []byte
	list    [][]byte // if set, read in turn instead of tmpl
	listAt  int
	left    int
	counter uint32
	stampAt int // offset of the 4-byte counter in tmpl (0: none)

	// Sink.
	mu    sync.Mutex
	check func(pkt []byte) // under mu; nil: none
	got   atomic.Int64
	bytes atomic.Int64
	want  int64
	done  chan struct{} // closed when got reaches want

	closeOnce sync.Once
	closed    chan struct{}
}

func newFakeTUN(batch, mtu int) *fakeTUN {
	return &fakeTUN{firstCall: newFirstCall(), batch: batch, mtu: mtu, done: make(chan struct{}), closed: make(chan struct{})}
}

func (t *fakeTUN) BatchSize() int         { return t.batch }
func (t *fakeTUN) MTU() (int, error)      { return t.mtu, nil }
func (t *fakeTUN) Close()                 { t.closeOnce.Do(func() { close(t.closed) }) }
func (t *fakeTUN) expect(n int64)         { t.want = n }
func (t *fakeTUN) source(p []byte, n int) { t.tmpl, t.left = p, n }

func (t *fakeTUN) Read(bufs [][]byte, sizes []int, offset int) (int, error) {
	t.called()
	if t.gate != nil {
		select {
		case <-t.gate:
		case <-t.closed:
		}
	}
	if t.left == 0 {
		<-t.closed
		return 0, netio.ErrClosed
	}
	if t.pace != nil {
		select {
		case <-t.pace:
		case <-t.closed:
			return 0, netio.ErrClosed
		}
	}
	select {
	case <-t.closed:
		return 0, netio.ErrClosed
	default:
	}
	k := min(t.batch, len(bufs), t.left)
	for i := 0; i < k; i++ {
		src := t.tmpl
		if t.list != nil {
			src = t.list[t.listAt%len(t.list)]
			t.listAt++
		}
		n := copy(bufs[i][offset:], src)
		if t.stampAt > 0 {
			t.counter++
			binary.BigEndian.PutUint32(bufs[i][offset+t.stampAt:], t.counter)
		}
		sizes[i] = n
	}
	t.left -= k
	return k, nil
}

func (t *fakeTUN) Write(bufs [][]byte, offset int) (int, error) {
	select {
	case <-t.closed:
		return 0, netio.ErrClosed
	default:
	}
	bytes := 0
	if t.check != nil {
		t.mu.Lock()
		for _, b := range bufs {
			t.check(b[offset:])
		}
		t.mu.Unlock()
	}
	for _, b := range bufs {
		bytes += len(b) - offset
	}
	t.bytes.Add(int64(bytes))
	if got := t.got.Add(int64(len(bufs))); got >= t.want && got-int64(len(bufs)) < t.want {
		close(t.done)
	}
	return bytes, nil
}

// fakeWire is one direction of a link: a bounded queue of frames, each
// the datagrams of one send call (up to wireFrame of them) in
// preallocated buffers, so that the fake costs a channel operation per
// batch, not per packet. A full queue blocks the sender (no loss).
type fakeWire struct {
	q         chan *wireFrame
	pool      chan *wireFrame
	closeOnce sync.Once
	closed    chan struct{}
	// The receiver's frame in progress (only the receiving loop reads).
	cur *wireFrame
	pos int
}

const wireFrameLen = 64

type wireFrame struct {
	bufs [wireFrameLen][]byte
	n    int
}

func newFakeWire(depth int) *fakeWire {
	w := &fakeWire{q: make(chan *wireFrame, depth), pool: make(chan *wireFrame, depth), closed: make(chan struct{})}
	for i := 0; i < depth; i++ {
		f := &wireFrame{}
		for j := range f.bufs {
			f.bufs[j] = make([]byte, 2048)
		}
		w.pool <- f
	}
	return w
}

func (w *fakeWire) Close() { w.closeOnce.Do(func() { close(w.closed) }) }

func (w *fakeWire) send(ms []netio.Msg) (int, error) {
	sent := 0
	for sent < len(ms) {
		var f *wireFrame
		select {
		case f = <-w.pool:
		case <-w.closed:
			return sent, netio.ErrClosed
		}
		f.n = min(len(ms)-sent, wireFrameLen)
		for i := 0; i < f.n; i++ {
			b := f.bufs[i]
			f.bufs[i] = b[:copy(b[:cap(b)], ms[sent+i].Buf)]
		}
		sent += f.n
		w.q <- f
	}
	return sent, nil
}

// recv fills ms from the queue: it waits for the first datagram and takes
// what else is queued, up to len(ms); each is given to fill.
func (w *fakeWire) recv(ms []netio.Msg, fill func(i int, b []byte)) (int, error) {
	if w.cur == nil {
		select {
		case w.cur = <-w.q:
			w.pos = 0
		case <-w.closed:
			return 0, netio.ErrClosed
		}
	}
	k := 0
	for {
		for ; k < len(ms) && w.pos < w.cur.n; k++ {
			fill(k, w.cur.bufs[w.pos])
			w.pos++
		}
		if w.pos < w.cur.n {
			return k, nil
		}
		w.pool <- w.cur
		w.cur = nil
		if k == len(ms) {
			return k, nil
		}
		// Take what else is queued, as recvmmsg does.
		select {
		case w.cur = <-w.q:
			w.pos = 0
		default:
			return k, nil
		}
	}
}

// fakeRaw is a raw ESP/AH socket on a fakeWire pair.
type fakeRaw struct {
	firstCall
	tx, rx *fakeWire
	from   netip.AddrPort
}

func (c *fakeRaw) Send(ms []netio.Msg) (int, error) { return c.tx.send(ms) }

func (c *fakeRaw) Recv(ms []netio.Msg) (int, error) {
	c.called()
	return c.rx.recv(ms, func(i int, b []byte) {
		ms[i].N = copy(ms[i].Buf, b)
		ms[i].Trunc = len(b) > len(ms[i].Buf)
		ms[i].From = c.from
	})
}

// fakeNATT is an ESP-in-UDP socket on a fakeWire pair (no coalescing).
type fakeNATT struct {
	firstCall
	tx, rx *fakeWire
	local  netip.AddrPort
	from   netip.AddrPort
}

func (c *fakeNATT) SendCoalesced(ms []netio.Msg) (int, error) { return c.tx.send(ms) }
func (c *fakeNATT) LocalAddr() netip.AddrPort                 { return c.local }

func (c *fakeNATT) ReadESP(ms []netio.Msg, out []netio.Packet) (int, error) {
	c.called()
	return c.rx.recv(ms[:min(len(ms), len(out))], func(i int, b []byte) {
		n := copy(ms[i].Buf, b)
		out[i] = netio.Packet{B: ms[i].Buf[:n], From: c.from}
	})
}
