package pktmem

import (
	"runtime"
	"testing"
)

func TestBuffersDisjointAndBounded(t *testing.T) {
	tests := []struct{ n, size int }{
		{1, 1}, {3, 63}, {4, 64}, {5, 65}, {128, 65535 + 64},
	}
	for _, tc := range tests {
		blk, bufs := New(tc.n, tc.size)
		if !blk.Mapped() {
			t.Fatalf("n=%d size=%d: not mapped", tc.n, tc.size)
		}
		if len(bufs) != tc.n {
			t.Fatalf("n=%d size=%d: %d buffers", tc.n, tc.size, len(bufs))
		}
		for i, b := range bufs {
			if len(b) != tc.size || cap(b) != tc.size {
				t.Fatalf("n=%d size=%d: buffer %d len %d cap %d", tc.n, tc.size, i, len(b), cap(b))
			}
			for j := range b {
				b[j] = byte(i)
			}
		}
		// appending to a full buffer must not run into its neighbour
		_ = append(bufs[0], 0xee)
		for i, b := range bufs {
			for j := range b {
				if b[j] != byte(i) {
					t.Fatalf("n=%d size=%d: buffer %d octet %d is %d: buffers overlap", tc.n, tc.size, i, j, b[j])
				}
			}
		}
		if err := blk.Free(); err != nil {
			t.Fatal(err)
		}
		if err := blk.Free(); err != nil {
			t.Fatalf("second Free: %v", err)
		}
	}
}

func TestEmpty(t *testing.T) {
	for _, n := range []int{0, -1} {
		blk, bufs := New(n, 100)
		if len(bufs) != 0 {
			t.Fatalf("New(%d, 100): %d buffers", n, len(bufs))
		}
		if err := blk.Free(); err != nil {
			t.Fatal(err)
		}
	}
	var nilBlock *Block
	if err := nilBlock.Free(); err != nil {
		t.Fatal(err)
	}
}

// TestOutsideHeap is why the package exists: 64 MB of buffers, written
// to, must not count in the Go heap (and so not in the collector's goal).
func TestOutsideHeap(t *testing.T) {
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	before := heap()
	blk, bufs := New(1024, 64<<10)
	for _, b := range bufs {
		b[0], b[len(b)-1] = 1, 1
	}
	after := heap()
	runtime.KeepAlive(bufs)
	if after > before && after-before > 1<<20 {
		t.Fatalf("the Go heap grew by %d octets for 64 MB of packet buffers", after-before)
	}
	if err := blk.Free(); err != nil {
		t.Fatal(err)
	}
}
