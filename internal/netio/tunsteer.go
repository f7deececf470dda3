package netio

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"golang.org/x/sys/unix"
)

// tunSetSteeringEBPF is TUNSETSTEERINGEBPF, _IOR('T', 224, int): it
// attaches a socket-filter program whose return value, modulo the number
// of queues, is the queue each packet into the TUN goes to (Linux 4.16).
const tunSetSteeringEBPF = 0x800454e0

// steerMaxGroups bounds the steering map: one entry per group of nested
// destination prefixes (10,000 tunnels need 10,000 at most).
const steerMaxGroups = 1 << 17

// steerKey is a key of the steering map, the kernel's struct
// bpf_lpm_trie_key_u8 for IPv4: the prefix length in host order, then
// the address in network order.
type steerKey struct {
	Bits uint32
	Addr [4]byte
}

func steerKeyOf(p netip.Prefix) steerKey {
	return steerKey{Bits: uint32(p.Bits()), Addr: p.Masked().Addr().As4()}
}

// steering is a multi-queue TUN's queue choice: an eBPF program the
// kernel runs for every packet it sends into the TUN, which looks the
// packet's IPv4 destination up in an LPM trie of destination prefixes
// and returns the queue the prefix was given (queue 0 when none matches
// or the packet is not IPv4).
//
// The point is order. The kernel's own choice hashes each flow to a
// queue, so two flows of one SA would be read by two readers, which
// number that SA's packets concurrently and send them in two orders: the
// peer would see them out of order by up to a batch, beyond its replay
// window. Steering by destination prefix keeps every SA on one queue, as
// long as each SA's destinations are one prefix or nested in one: nested
// prefixes are merged into their outermost one (a group), and groups are
// given queues, so every address a policy selects maps to the same
// queue whichever of the nested policies picks the SA.
type steering struct {
	queues int
	m      *ebpf.Map
	prog   *ebpf.Program
	// group is each group's queue as the map holds it; load counts the
	// groups per queue, for giving new groups the least loaded queue.
	group map[groupKey]uint32
	load  []int
	// keys is set's scratch space, reused.
	keys []groupKey
}

// groupKey is an IPv4 prefix as one integer: the address in the high 32
// bits, the length in the low 8, so that integer order is address order
// with the shorter of two prefixes at one address first. Steering 10,000
// tunnels recomputes their groups after every SPD change; as integers
// that is a fraction of a millisecond (BenchmarkSteeringSet10k).
type groupKey uint64

func keyOf(p netip.Prefix) groupKey {
	a := p.Masked().Addr().As4()
	return groupKey(binary.BigEndian.Uint32(a[:]))<<8 | groupKey(p.Bits())
}

func (k groupKey) bits() int { return int(k & 0xff) }

func (k groupKey) prefix() netip.Prefix {
	var a [4]byte
	binary.BigEndian.PutUint32(a[:], uint32(k>>8))
	return netip.PrefixFrom(netip.AddrFrom4(a), k.bits())
}

// contains reports whether prefix k contains prefix o.
func (k groupKey) contains(o groupKey) bool {
	if o.bits() < k.bits() {
		return false
	}
	mask := uint32(0)
	if k.bits() > 0 {
		mask = ^uint32(0) << (32 - k.bits())
	}
	return uint32(o>>8)&mask == uint32(k>>8)
}

// loadSteering is newSteering; tests replace it to play a kernel that
// refuses eBPF.
var loadSteering = newSteering

// newSteering loads the map and the program for a device of n queues.
func newSteering(n int) (*steering, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{
		Name:       "gosec_steer",
		Type:       ebpf.LPMTrie,
		KeySize:    uint32(unsafe.Sizeof(steerKey{})),
		ValueSize:  4,
		MaxEntries: steerMaxGroups,
		Flags:      unix.BPF_F_NO_PREALLOC,
	})
	if err != nil {
		return nil, fmt.Errorf("steering map: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:         "gosec_steer",
		Type:         ebpf.SocketFilter,
		License:      "GPL",
		Instructions: steerProgram(m.FD()),
	})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("steering program: %w", err)
	}
	return &steering{queues: n, m: m, prog: prog, group: map[groupKey]uint32{}, load: make([]int, n)}, nil
}

// steerProgram returns the program: r6 holds the skb (its data starts at
// the IP header on a TUN), the key is built on the stack at fp-8
// (prefix length 32, then the destination read at offset 16), and the
// version nibble is read into fp-12.
func steerProgram(mapFD int) asm.Instructions {
	// load copies n packet octets from offset off to the stack at fp+to,
	// going to "none" if the packet is shorter.
	load := func(off, to, n int32) asm.Instructions {
		return asm.Instructions{
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.Mov.Imm(asm.R2, off),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, to),
			asm.Mov.Imm(asm.R4, n),
			asm.FnSkbLoadBytes.Call(),
			asm.JNE.Imm(asm.R0, 0, "none"),
		}
	}
	prog := asm.Instructions{asm.Mov.Reg(asm.R6, asm.R1)}
	// Version: IPv4 only, anything else to queue 0.
	prog = append(prog, load(0, -12, 1)...)
	prog = append(prog,
		asm.LoadMem(asm.R1, asm.RFP, -12, asm.Byte),
		asm.RSh.Imm(asm.R1, 4),
		asm.JNE.Imm(asm.R1, 4, "none"),
		// Key: {32, destination}.
		asm.StoreImm(asm.RFP, -8, 32, asm.Word),
	)
	prog = append(prog, load(16, -4, 4)...)
	return append(prog,
		asm.LoadMapPtr(asm.R1, mapFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "none"),
		asm.LoadMem(asm.R0, asm.R0, 0, asm.Word),
		asm.Return(),
		asm.Mov.Imm(asm.R0, 0).WithSymbol("none"),
		asm.Return(),
	)
}

// attach makes the program the device's queue choice (fd: any of its
// queues).
func (s *steering) attach(fd int) error {
	progFD := int32(s.prog.FD())
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), tunSetSteeringEBPF, uintptr(unsafe.Pointer(&progFD))); e != 0 {
		return fmt.Errorf("TUNSETSTEERINGEBPF: %w", e)
	}
	return nil
}

// outermost returns the prefixes that no other prefix of ps contains,
// each IPv4 prefix masked, sorted by address. Two CIDR prefixes are either
// disjoint or nested, so after sorting by first address (the shorter
// first among equals) a prefix is nested exactly when the last outermost
// one contains it.
func outermost(ps []netip.Prefix) []netip.Prefix {
	var out []netip.Prefix
	for _, k := range outermostKeys(ps, nil) {
		out = append(out, k.prefix())
	}
	return out
}

// outermostKeys is outermost as sorted keys, appended to buf[:0].
func outermostKeys(ps []netip.Prefix, buf []groupKey) []groupKey {
	keys := buf[:0]
	for _, p := range ps {
		if p.IsValid() && p.Addr().Is4() {
			keys = append(keys, keyOf(p))
		}
	}
	slices.Sort(keys)
	out := keys[:0] // in place: out never passes the element being read
	for _, k := range keys {
		if n := len(out); n > 0 && out[n-1].contains(k) {
			continue
		}
		out = append(out, k)
	}
	return out
}

// set makes the groups of dsts the map's contents: a group that stays
// keeps its queue (its SAs' packets never change readers while it
// exists); a new group gets the queue with the fewest groups, the last
// of equals. On an error the state is what the map holds, and a later set retries.
func (s *steering) set(dsts []netip.Prefix) error {
	groups := outermostKeys(dsts, s.keys)
	s.keys = groups
	var errs []error
	for g, q := range s.group {
		if _, keep := slices.BinarySearch(groups, g); keep {
			continue
		}
		k := steerKeyOf(g.prefix())
		if err := s.m.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("delete %v: %w", g, err))
			continue
		}
		delete(s.group, g)
		s.load[q]--
	}
	for _, g := range groups {
		if _, ok := s.group[g]; ok {
			continue
		}
		// The least loaded queue, the last of equals: queue 0 also reads
		// every packet no group covers, and a gateway's only tunnel is
		// then read where nothing else is (which also puts every
		// one-tunnel test through a steered queue).
		q := uint32(len(s.load) - 1)
		for i := len(s.load) - 1; i >= 0; i-- {
			if s.load[i] < s.load[q] {
				q = uint32(i)
			}
		}
		k := steerKeyOf(g.prefix())
		if err := s.m.Put(&k, &q); err != nil {
			errs = append(errs, fmt.Errorf("put %v: %w", g, err))
			continue
		}
		s.group[g] = q
		s.load[q]++
	}
	return errors.Join(errs...)
}

// queueOf is the queue the program gives dst, by the same longest-prefix
// match over the groups (for status and tests).
func (s *steering) queueOf(dst netip.Addr) int {
	k := steerKey{Bits: 32, Addr: dst.As4()}
	var q uint32
	if err := s.m.Lookup(&k, &q); err != nil {
		return 0
	}
	return int(q % uint32(s.queues))
}

func (s *steering) close() error {
	return errors.Join(s.prog.Close(), s.m.Close())
}
