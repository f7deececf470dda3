package netio

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ingressMaxLocals bounds the ingress bypass's map of local addresses; a
// host with more has packets to the rest dropped at prerouting instead
// (BypassRing), as without the ingress bypass.
const ingressMaxLocals = 1 << 12

// The ingress bypass's counters, per CPU, by index.
const (
	ingressBypassed = iota // an admitted SPI: handed to the ring
	ingressGateESP         // an unknown SPI, ESP
	ingressGateAH          // an unknown SPI, AH
	ingressCounters
)

// TCX verdicts (include/uapi/linux/bpf.h).
const (
	tcxNext = -1
	tcxDrop = 2
)

// bpfHdrStartNet is BPF_HDR_START_NET: bpf_skb_load_bytes_relative's
// offsets from the network header.
const bpfHdrStartNet = 1

// IngressBypass takes the IP stack's input out of the way of the ESP and
// AH the receive ring takes, and drops those of SPIs no inbound SA holds,
// at tc ingress (TCX): what SPIGate.BypassRing's prerouting chain does,
// for the same packets (IPv4, not a fragment, addressed to this host's
// link address and to one of its addresses), without the IP stack's input
// up to that chain (ip_rcv's checks, the prerouting hook, the nftables
// interpreter and its route lookup). An eBPF program looks the
// destination up in a map of this host's addresses and the SPI in the
// ring's SPI map:
//
//   - an SPI an inbound SA holds: the packet is handed to the ring, which
//     takes IPv4 after tc ingress: it is made PACKET_OTHERHOST (a frame
//     for another host, which ip_rcv drops first thing, counted in the
//     interface's otherhost drops) and marked with ringMark, which the
//     ring's filters take as addressed to this host;
//   - an unknown SPI: dropped, counted as the gate's.
//
// On a veth link the receiving gateway's input runs in the sender's
// thread, so this shortens the sender's path as well. The ring stays bound
// to IPv4, so that it sees each packet once, on the interface the IP
// stack would take it from (a tap of every protocol sees a packet on a
// bond's or a bridge's port and again on the bond or bridge).
//
// It is attached to every non-loopback Ethernet interface that holds one
// of this host's addresses: those holding one when it is made, and those
// that get their first one later (a WAN address from DHCP, an interface
// made after the daemon started), from the netlink watch of the local
// table, in the namespace it was made in. It lets packets with a VLAN
// tag not yet taken off go by. Packets arriving elsewhere (another
// interface, one it could not be attached to, a local prefix wider than
// one address) and every fragment go on to the prerouting chain as
// before. The attachments are links the process holds: they end with it,
// so nothing of it outlives the daemon; an interface that goes away takes
// its attachment with it.
//
// It is safe for concurrent use.
type IngressBypass struct {
	mu     sync.Mutex
	prog   *ebpf.Program
	locals *ebpf.Map           // this host's addresses: [4]byte -> 1
	counts *ebpf.Map           // per-CPU array of ingressCounters uint64
	links  map[int]ingressLink // by interface index
	// failed are the interfaces holding a local address that the program
	// could not be attached to, skipped those it is not for (loopback,
	// not Ethernet); both judged again once they held none (an index
	// may come back as another interface, moved in from another
	// namespace).
	failed  map[int]error
	skipped map[int]struct{}
	inMap   map[[4]byte]struct{} // what locals holds
	local   *localAddrs
	ns      *os.File // the network namespace it was made in
	err     error    // the last failure to update locals
}

// ingressLink is the program's attachment to one interface.
type ingressLink struct {
	name string
	l    link.Link
}

// IngressCounts are the packets an IngressBypass handed to the ring or
// dropped.
type IngressCounts struct {
	// Bypassed had an admitted SPI: handed to the ring.
	Bypassed uint64
	// ESP and AH had an SPI no inbound SA holds (the gate's).
	ESP, AH uint64
	// Interfaces are those the program is attached to (none after Err).
	Interfaces []string
	// NotAttached are the interfaces holding a local address that the
	// program could not be attached to, each with the reason.
	NotAttached []string
	// Err says why the program was detached (nil: it was not).
	Err error
}

// BypassIngress attaches an IngressBypass to the interfaces of the calling
// thread's namespace (see IngressBypass), handing the ring what it takes
// before the IP stack and dropping what the gate would drop. Call it only
// while the SPI filter is in place and the gate shut: Open closes it, and
// so does Close. It fails where TCX is not available (before Linux 6.6,
// no CAP_BPF or CAP_SYS_ADMIN, no CAP_NET_ADMIN), that is when it could be
// attached to none of the interfaces holding a local address; the
// prerouting chain then does the work. A host with no such interface yet
// gets a bypass that waits for one. With a bypass it may also return an
// error: the interfaces it could not be attached to.
func (s *RingSPIs) BypassIngress() (*IngressBypass, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.m == nil:
		return nil, fmt.Errorf("netio: ingress bypass: %w", ErrClosed)
	case s.open:
		return nil, errors.New("netio: ingress bypass: the ring's SPI filter is open")
	case s.ingress != nil:
		return s.ingress, nil
	}
	b, err := newIngressBypass(s.m, s.r.local, s.r.protos)
	if b != nil {
		s.ingress = b
	}
	return b, err
}

func newIngressBypass(spis *ebpf.Map, local *localAddrs, protos []int) (*IngressBypass, error) {
	locals, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "gosec_locals", Type: ebpf.Hash, KeySize: 4, ValueSize: 1,
		MaxEntries: ingressMaxLocals, Flags: unix.BPF_F_NO_PREALLOC,
	})
	if err != nil {
		return nil, fmt.Errorf("netio: ingress bypass: map of local addresses: %w", err)
	}
	counts, err := ebpf.NewMap(&ebpf.MapSpec{
		Name: "gosec_ingress_n", Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: ingressCounters,
	})
	if err != nil {
		locals.Close()
		return nil, fmt.Errorf("netio: ingress bypass: counters: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "gosec_ingress",
		Type:         ebpf.SchedCLS,
		License:      "GPL",
		Instructions: ingressProgram(locals.FD(), spis.FD(), counts.FD(), protos),
	})
	if err != nil {
		counts.Close()
		locals.Close()
		return nil, fmt.Errorf("netio: ingress bypass: program: %w", err)
	}
	ns, err := openThreadNetNS()
	if err != nil {
		prog.Close()
		counts.Close()
		locals.Close()
		return nil, fmt.Errorf("netio: ingress bypass: %w", err)
	}
	b := &IngressBypass{prog: prog, locals: locals, counts: counts, links: make(map[int]ingressLink),
		failed: make(map[int]error), skipped: make(map[int]struct{}), inMap: make(map[[4]byte]struct{}),
		local: local, ns: ns}
	// The addresses, then the interfaces (a packet the program sees finds
	// this host's addresses in place): the current ones now, on this
	// thread, and every change after it from the watch.
	local.setWatcher(b.syncLocals)
	b.mu.Lock()
	var errs []error
	for _, err := range b.failed {
		errs = append(errs, fmt.Errorf("netio: ingress bypass: attach to %w", err))
	}
	attached := len(b.links)
	b.mu.Unlock()
	if attached == 0 && len(errs) > 0 {
		b.Close()
		return nil, errors.Join(errs...)
	}
	return b, errors.Join(errs...)
}

// syncLocals makes the map of local addresses hold set's single addresses,
// then attaches the program to the interfaces that hold them and that it
// is not on yet (localAddrs calls it with every new snapshot, in order).
func (b *IngressBypass) syncLocals(set *localSet) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.locals == nil || b.err != nil {
		return
	}
	var errs []error
	for a := range b.inMap {
		if _, ok := set.hosts[a]; ok {
			continue
		}
		if err := b.locals.Delete(&a); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete %v: %w", net.IP(a[:]), err))
			continue
		}
		delete(b.inMap, a)
	}
	one := uint8(1)
	for a := range set.hosts {
		if _, ok := b.inMap[a]; ok {
			continue
		}
		// A full map leaves the rest to the prerouting chain.
		if err := b.locals.Put(&a, &one); err != nil {
			if !errors.Is(err, unix.E2BIG) {
				errs = append(errs, fmt.Errorf("put %v: %w", net.IP(a[:]), err))
			}
			continue
		}
		b.inMap[a] = struct{}{}
	}
	if err := errors.Join(errs...); err != nil {
		// A map that no longer follows the host's addresses could drop
		// ESP to an address it gave up (being forwarded now): detach,
		// the prerouting chain does the work.
		b.err = fmt.Errorf("netio: ingress bypass: map of local addresses: %w; detached", err)
		if derr := b.detach(); derr != nil {
			b.err = errors.Join(b.err, derr)
		}
		return
	}
	b.attachNew(set)
}

// attachNew attaches the program to the non-loopback Ethernet interfaces
// that hold one of set's single addresses and that it is neither on nor
// failed on, and forgets the attachments of interfaces that went away
// (b.mu held). The interfaces are looked up through the local table's
// netlink handle, which is in the bypass's namespace; TCX takes the index
// in the calling thread's, so the attachment is made on a thread in that
// namespace (inNetNS).
func (b *IngressBypass) attachNew(set *localSet) {
	for i := range b.failed {
		if _, ok := set.links[i]; !ok {
			delete(b.failed, i)
		}
	}
	for i := range b.skipped {
		if _, ok := set.links[i]; !ok {
			delete(b.skipped, i)
		}
	}
	for i, at := range b.links {
		if _, ok := set.links[i]; ok {
			continue
		}
		if _, err := b.local.h.LinkByIndex(i); errors.As(err, new(netlink.LinkNotFoundError)) {
			at.l.Close() // the kernel detached it with the interface
			delete(b.links, i)
		}
	}
	for i := range set.links {
		_, on := b.links[i]
		_, failed := b.failed[i]
		_, skipped := b.skipped[i]
		if on || failed || skipped {
			continue
		}
		lk, err := b.local.h.LinkByIndex(i)
		if err != nil {
			if !errors.As(err, new(netlink.LinkNotFoundError)) {
				b.failed[i] = fmt.Errorf("interface %d: %w", i, err)
			}
			continue
		}
		a := lk.Attrs()
		if a.Flags&net.FlagLoopback != 0 || len(a.HardwareAddr) != 6 {
			b.skipped[i] = struct{}{}
			continue
		}
		var l link.Link
		err = inNetNS(b.ns, func() (err error) {
			l, err = link.AttachTCX(link.TCXOptions{Interface: i, Program: b.prog, Attach: ebpf.AttachTCXIngress})
			return err
		})
		if err != nil {
			b.failed[i] = fmt.Errorf("%s: %w", a.Name, err)
			continue
		}
		b.links[i] = ingressLink{name: a.Name, l: l}
	}
}

// detach closes the links (b.mu held): the program runs no more.
func (b *IngressBypass) detach() error {
	var errs []error
	for i, at := range b.links {
		if err := at.l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("netio: ingress bypass: detach from %s: %w", at.name, err))
		}
		delete(b.links, i)
	}
	return errors.Join(errs...)
}

// Counts reads the counters, summed over the CPUs.
func (b *IngressBypass) Counts() (IngressCounts, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	var c IngressCounts
	if b.counts == nil {
		return c, fmt.Errorf("netio: ingress bypass: %w", ErrClosed)
	}
	for _, n := range []struct {
		key uint32
		to  *uint64
	}{{ingressBypassed, &c.Bypassed}, {ingressGateESP, &c.ESP}, {ingressGateAH, &c.AH}} {
		var per []uint64
		if err := b.counts.Lookup(&n.key, &per); err != nil {
			return c, fmt.Errorf("netio: ingress bypass: counters: %w", err)
		}
		for _, v := range per {
			*n.to += v
		}
	}
	for _, at := range b.links {
		c.Interfaces = append(c.Interfaces, at.name)
	}
	slices.Sort(c.Interfaces)
	for _, err := range b.failed {
		c.NotAttached = append(c.NotAttached, err.Error())
	}
	slices.Sort(c.NotAttached)
	c.Err = b.err
	return c, nil
}

// Close detaches the program from every interface: from its return on,
// the prerouting chain drops what the ring takes.
func (b *IngressBypass) Close() error {
	b.local.setWatcher(nil)
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.prog == nil {
		return nil
	}
	err := errors.Join(b.detach(), b.prog.Close(), b.locals.Close(), b.counts.Close(), b.ns.Close())
	b.prog, b.locals, b.counts = nil, nil, nil
	return err
}

// ingressProgram is the TCX program: r6 holds the skb; the IPv4 header's
// first 20 octets are copied to fp-24 (its destination at fp-8, the
// locals map's key), the SPI to fp-28 (the SPI map's key), the counter's
// index to fp-32. Anything it neither hands to the ring nor drops goes on
// untouched (TCX_NEXT).
func ingressProgram(localsFD, spisFD, countsFD int, protos []int) asm.Instructions {
	prog := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		// __sk_buff.protocol (offset 16, network order): IPv4.
		asm.LoadMem(asm.R0, asm.R6, 16, asm.Word),
		asm.JNE.Imm(asm.R0, int32(htons(unix.ETH_P_IP)), "next"),
		// __sk_buff.pkt_type (offset 4): addressed to this host.
		asm.LoadMem(asm.R0, asm.R6, 4, asm.Word),
		asm.JNE.Imm(asm.R0, unix.PACKET_HOST, "next"),
		// __sk_buff.vlan_present (offset 20): a tag not yet taken off
		// (the VLAN's interface comes next).
		asm.LoadMem(asm.R0, asm.R6, 20, asm.Word),
		asm.JNE.Imm(asm.R0, 0, "next"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -24),
		asm.Mov.Imm(asm.R4, 20),
		asm.Mov.Imm(asm.R5, bpfHdrStartNet),
		asm.FnSkbLoadBytesRelative.Call(),
		asm.JNE.Imm(asm.R0, 0, "next"),
		// Version 4, a header of at least 20 octets: R9 its length.
		asm.LoadMem(asm.R9, asm.RFP, -24, asm.Byte),
		asm.Mov.Reg(asm.R1, asm.R9),
		asm.RSh.Imm(asm.R1, 4),
		asm.JNE.Imm(asm.R1, 4, "next"),
		asm.And.Imm(asm.R9, 0x0f),
		asm.JLT.Imm(asm.R9, 5, "next"),
		asm.LSh.Imm(asm.R9, 2),
		// R7: the SPI's offset after the IPv4 header; R8: the counter of
		// an unknown SPI; by protocol.
		asm.LoadMem(asm.R1, asm.RFP, -24+9, asm.Byte),
	}
	if slices.Contains(protos, unix.IPPROTO_ESP) {
		prog = append(prog,
			asm.Mov.Imm(asm.R7, 0),
			asm.Mov.Imm(asm.R8, ingressGateESP),
			asm.JEq.Imm(asm.R1, unix.IPPROTO_ESP, "whole"))
	}
	if slices.Contains(protos, unix.IPPROTO_AH) {
		prog = append(prog,
			asm.Mov.Imm(asm.R7, 4),
			asm.Mov.Imm(asm.R8, ingressGateAH),
			asm.JEq.Imm(asm.R1, unix.IPPROTO_AH, "whole"))
	}
	prog = append(prog, asm.Ja.Label("next"))
	// Not a fragment: fragments go on to the IP stack, which reassembles
	// its own copy.
	prog = append(prog, notFragment(-24, "whole", "next")...)
	return append(prog,
		// To one of this host's addresses (fp-8: the destination).
		asm.LoadMapPtr(asm.R1, localsFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "next"),
		// The SPI at IHL*4 + R7; too short to hold one: on to the IP
		// stack, which drops it.
		asm.Mov.Reg(asm.R2, asm.R9),
		asm.Add.Reg(asm.R2, asm.R7),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -28),
		asm.Mov.Imm(asm.R4, 4),
		asm.Mov.Imm(asm.R5, bpfHdrStartNet),
		asm.FnSkbLoadBytesRelative.Call(),
		asm.JNE.Imm(asm.R0, 0, "next"),
		asm.LoadMapPtr(asm.R1, spisFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -28),
		asm.FnMapLookupElem.Call(),
		// R9 from here: the verdict (drop, or on to the ring).
		asm.Mov.Imm(asm.R9, tcxDrop),
		asm.JEq.Imm(asm.R0, 0, "count"),
		// An inbound SA's: handed to the ring (marked, then made
		// PACKET_OTHERHOST, which the IP stack drops first thing).
		asm.Mov.Imm(asm.R1, ringMark),
		asm.StoreMem(asm.R6, 8, asm.R1, asm.Word), // __sk_buff.mark
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, unix.PACKET_OTHERHOST),
		asm.FnSkbChangeType.Call(),
		asm.Mov.Imm(asm.R8, ingressBypassed),
		asm.Mov.Imm(asm.R9, tcxNext),
		// Count (R8), then the verdict (R9).
		asm.StoreMem(asm.RFP, -32, asm.R8, asm.Word).WithSymbol("count"),
		asm.LoadMapPtr(asm.R1, countsFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -32),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "verdict"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.Mov.Reg(asm.R0, asm.R9).WithSymbol("verdict"),
		asm.Return(),
		asm.Mov.Imm(asm.R0, tcxNext).WithSymbol("next"),
		asm.Return(),
	)
}
