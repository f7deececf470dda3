// Package pktmem provides the data plane's long-lived packet buffers in
// memory outside the Go heap.
//
// The data plane keeps tens of megabytes of fixed receive and TUN-write
// buffers (64 KB each, so that GRO super-packets and reassembled
// datagrams fit) for as long as a loop runs. On the Go heap they count as
// live data, and the collector lets garbage grow to as much again before
// it runs (GOGC=100): a flood of IKE messages, whose garbage is otherwise
// small, then raised the daemon's resident memory by the size of buffers
// that traffic never touched. Mapped with mmap they cost address space,
// become resident only where packets are written, and leave the heap goal
// to what the daemon really allocates.
//
// A Block is freed (unmapped) by its owner once nothing uses its buffers
// any more; a buffer used after Free faults.
package pktmem

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// align is the stride every buffer starts on (a cache line).
const align = 64

// Block is one mapping carved into equal buffers.
type Block struct {
	mem    []byte
	mapped bool
}

// New returns n buffers of size octets each (length and capacity size),
// in one anonymous private mapping. If the mapping fails (it should not:
// it is address space, not memory) the buffers come from the Go heap, so
// that the caller works the same.
func New(n, size int) (*Block, [][]byte) {
	if n <= 0 || size <= 0 {
		return &Block{}, make([][]byte, max(n, 0))
	}
	stride := (size + align - 1) &^ (align - 1)
	b := &Block{}
	mem, err := unix.Mmap(-1, 0, n*stride, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err == nil {
		b.mem, b.mapped = mem, true
	} else {
		b.mem = make([]byte, n*stride)
	}
	bufs := make([][]byte, n)
	for i := range bufs {
		off := i * stride
		bufs[i] = b.mem[off : off+size : off+size]
	}
	return b, bufs
}

// Mapped reports whether the buffers are outside the Go heap.
func (b *Block) Mapped() bool { return b.mapped }

// Free unmaps the block. Its buffers must not be used afterwards. Free is
// idempotent.
func (b *Block) Free() error {
	if b == nil || b.mem == nil {
		return nil
	}
	mem, mapped := b.mem, b.mapped
	b.mem, b.mapped = nil, false
	if !mapped {
		return nil
	}
	if err := unix.Munmap(mem); err != nil {
		return fmt.Errorf("pktmem: munmap %d octets: %w", len(mem), err)
	}
	return nil
}
