package netio

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// ringSPIMax bounds the ring's SPI map: an entry per SPI of an inbound SA
// (10,000 tunnels with a rekey's overlap need 20,000).
const ringSPIMax = 1 << 17

// RingSPIs is an RxRing's filter by SPI: an eBPF socket filter that takes
// only ESP and AH whose SPI is in its map, so that forged SPIs never
// reach the ring (no copy, no wake-up, no drop bookkeeping in the data
// plane), as the SPIGate keeps them from the raw sockets. It replaces the
// ring's classic filter and makes the same other tests (protocol, not a
// fragment after the fanout's reassembly, addressed to this host's link
// address or handed over by an IngressBypass); a packet too short to hold
// an SPI is taken, so that the data plane counts it as malformed. An
// SPIGate keeps the map in line with its set (MirrorTo).
// Open goes back to the classic filter (every SPI reaches the ring and the
// data plane judges it), for when the map cannot be kept.
//
// It is safe for concurrent use.
type RingSPIs struct {
	mu   sync.Mutex
	r    *RxRing
	m    *ebpf.Map
	prog *ebpf.Program
	open bool
	// ingress is the IngressBypass on the map (nil: none).
	ingress *IngressBypass
}

// FilterSPIs loads the SPI filter and attaches it to the ring, with an
// empty map: until SPIs are put, no ESP or AH reaches the ring. It fails
// where eBPF socket filters cannot be loaded (no CAP_BPF or
// CAP_SYS_ADMIN, a seccomp profile, an old kernel), leaving the ring's
// classic filter in place, or for a ring of other protocols than ESP and
// AH.
func (r *RxRing) FilterSPIs() (*RingSPIs, error) {
	for _, p := range r.protos {
		if p != unix.IPPROTO_ESP && p != unix.IPPROTO_AH {
			return nil, fmt.Errorf("netio: ring SPI filter: protocol %d has no SPI", p)
		}
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "gosec_ring_spis",
		Type:       ebpf.Hash,
		KeySize:    4,
		ValueSize:  1,
		MaxEntries: ringSPIMax,
		Flags:      unix.BPF_F_NO_PREALLOC,
	})
	if err != nil {
		return nil, fmt.Errorf("netio: ring SPI filter: map: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "gosec_ring_spi",
		Type:         ebpf.SocketFilter,
		License:      "GPL",
		Instructions: ringSPIProgram(m.FD(), r.protos),
	})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("netio: ring SPI filter: program: %w", err)
	}
	var serr error
	if err := r.rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_BPF, prog.FD())
	}); err != nil {
		serr = err
	}
	if serr != nil {
		prog.Close()
		m.Close()
		return nil, fmt.Errorf("netio: ring SPI filter: SO_ATTACH_BPF: %w", serr)
	}
	return &RingSPIs{r: r, m: m, prog: prog}, nil
}

// ringSPIProgram is the filter: r6 holds the skb, whose data starts at
// the IPv4 header (SOCK_DGRAM); the header's first 20 octets are copied to
// fp-24, the SPI to fp-28 (the map's key, in network order as on the
// wire). ESP's SPI is the first word after the IPv4 header, AH's the
// second.
func ringSPIProgram(mapFD int, protos []int) asm.Instructions {
	prog := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		// __sk_buff.pkt_type (offset 4): addressed to this host, or
		// handed over by the ingress bypass (PACKET_OTHERHOST with
		// ringMark in __sk_buff.mark, offset 8), whose program made
		// every test below already (and more): taken at once.
		asm.LoadMem(asm.R0, asm.R6, 4, asm.Word),
		asm.JEq.Imm(asm.R0, unix.PACKET_HOST, "host"),
		asm.JNE.Imm(asm.R0, unix.PACKET_OTHERHOST, "drop"),
		asm.LoadMem(asm.R0, asm.R6, 8, asm.Word),
		asm.JEq.Imm(asm.R0, ringMark, "accept"),
		asm.Ja.Label("drop"),
		asm.Mov.Reg(asm.R1, asm.R6).WithSymbol("host"),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -24),
		asm.Mov.Imm(asm.R4, 20),
		asm.FnSkbLoadBytes.Call(),
		asm.JNE.Imm(asm.R0, 0, "drop"),
		// R7: the SPI's offset after the IPv4 header, by protocol.
		asm.LoadMem(asm.R1, asm.RFP, -24+9, asm.Byte),
	}
	if slices.Contains(protos, unix.IPPROTO_ESP) {
		prog = append(prog,
			asm.Mov.Imm(asm.R7, 0),
			asm.JEq.Imm(asm.R1, unix.IPPROTO_ESP, "whole"))
	}
	if slices.Contains(protos, unix.IPPROTO_AH) {
		prog = append(prog,
			asm.Mov.Imm(asm.R7, 4),
			asm.JEq.Imm(asm.R1, unix.IPPROTO_AH, "whole"))
	}
	prog = append(prog, asm.Ja.Label("drop"))
	// Not a fragment: the fanout reassembled what it could.
	prog = append(prog, notFragment(-24, "whole", "drop")...)
	return append(prog,
		// The SPI at IHL*4 + R7.
		asm.LoadMem(asm.R2, asm.RFP, -24, asm.Byte),
		asm.And.Imm(asm.R2, 0x0f),
		asm.LSh.Imm(asm.R2, 2),
		asm.Add.Reg(asm.R2, asm.R7),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -28),
		asm.Mov.Imm(asm.R4, 4),
		asm.FnSkbLoadBytes.Call(),
		// Too short to hold an SPI: the data plane drops and counts it
		// (malformed), as it did before the filter.
		asm.JNE.Imm(asm.R0, 0, "accept"),
		asm.LoadMapPtr(asm.R1, mapFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -28),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "drop"),
		// Accept the whole packet.
		asm.Mov.Imm(asm.R0, 0x40000).WithSymbol("accept"),
		asm.Return(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("drop"),
		asm.Return(),
	)
}

// notFragment is the test, labelled label, that the IPv4 header copied to
// the stack at fp+hdr is not a fragment's (MF and the offset, the low 14
// bits of octets 6-7, clear), jumping to miss if it is; it uses R1.
func notFragment(hdr int16, label, miss string) asm.Instructions {
	return asm.Instructions{
		asm.LoadMem(asm.R1, asm.RFP, hdr+6, asm.Byte).WithSymbol(label),
		asm.And.Imm(asm.R1, 0x3f),
		asm.JNE.Imm(asm.R1, 0, miss),
		asm.LoadMem(asm.R1, asm.RFP, hdr+7, asm.Byte),
		asm.JNE.Imm(asm.R1, 0, miss),
	}
}

// spiMapKey is an SPI as the map holds it: the octets on the wire.
func spiMapKey(spi uint32) [4]byte {
	return [4]byte{byte(spi >> 24), byte(spi >> 16), byte(spi >> 8), byte(spi)}
}

// Put lets packets with spi reach the ring.
func (s *RingSPIs) Put(spi uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		return fmt.Errorf("netio: ring SPI filter: %w", ErrClosed)
	}
	k, v := spiMapKey(spi), uint8(1)
	if err := s.m.Put(&k, &v); err != nil {
		return fmt.Errorf("netio: ring SPI filter: put %08x: %w", spi, err)
	}
	return nil
}

// Delete stops packets with spi from reaching the ring (an SPI that was
// not there is no error).
func (s *RingSPIs) Delete(spi uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		return fmt.Errorf("netio: ring SPI filter: %w", ErrClosed)
	}
	k := spiMapKey(spi)
	if err := s.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("netio: ring SPI filter: delete %08x: %w", spi, err)
	}
	return nil
}

// Open puts the ring's classic filter back: every ESP and AH packet for
// this host reaches the ring again, whatever its SPI.
func (s *RingSPIs) Open() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.open {
		return nil
	}
	// The map is kept no longer: the ingress bypass goes first, and the
	// prerouting chain takes over.
	if s.ingress != nil {
		if err := s.ingress.Close(); err != nil {
			return fmt.Errorf("netio: ring SPI filter: %w", err)
		}
		s.ingress = nil
	}
	var serr error
	if err := s.r.rc.Control(func(fd uintptr) {
		serr = attachRingFilter(int(fd), s.r.protos)
	}); err != nil {
		serr = err
	}
	if serr != nil {
		return fmt.Errorf("netio: ring SPI filter: back to the classic filter: %w", serr)
	}
	s.open = true
	return nil
}

// Ingress is the IngressBypass made by BypassIngress (nil: none, or no
// longer: Open and Close end it).
func (s *RingSPIs) Ingress() *IngressBypass {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ingress
}

// Filtering reports whether the SPI filter is in place (not Open).
func (s *RingSPIs) Filtering() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return !s.open && s.m != nil
}

// Close releases the map and the program (the ring keeps the program
// until it closes).
func (s *RingSPIs) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.m == nil {
		return nil
	}
	var ierr error
	if s.ingress != nil {
		ierr = s.ingress.Close()
	}
	err := errors.Join(ierr, s.prog.Close(), s.m.Close())
	s.m, s.prog, s.ingress = nil, nil, nil
	return err
}
