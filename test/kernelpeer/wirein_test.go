package kernelpeer

import (
	"fmt"
	"net"
	"runtime"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netns"
)

// The inbound IPv4 on the tap is counted by an eBPF program of the test's
// own, first at the tap's tc ingress (TCX, anchored at the head), because
// nothing later sees all of it: gosec's ingress bypass (a TCX program
// appended after this one) drops the ESP and AH its receive ring took
// before netfilter, the netdev ingress hook included, would see them.
// Categories as kpeer.sh's outbound counters: ESP, AH, UDP to port 4500
// (a later fragment has no port to read; during a case the only UDP the
// guest sends is ESP-in-UDP), anything else.
var wireInNames = [...]string{"esp_in", "ah_in", "udp4500_in", "other_in"}

// wireIn is the attached counter.
type wireIn struct {
	prog   *ebpf.Program
	counts *ebpf.Map // per-CPU array of len(wireInNames) {packets, bytes}
	link   link.Link
}

// attachWireIn attaches the counter to tap in namespace ns.
func attachWireIn(ns, tap string) (*wireIn, error) {
	counts, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 16, MaxEntries: uint32(len(wireInNames))})
	if err != nil {
		return nil, fmt.Errorf("wire counter map: %w", err)
	}
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SchedCLS, License: "GPL", Instructions: wireInProgram(counts.FD())})
	if err != nil {
		counts.Close()
		return nil, fmt.Errorf("wire counter program: %w", err)
	}
	w := &wireIn{prog: prog, counts: counts}
	err = func() error {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		orig, err := netns.Get()
		if err != nil {
			return err
		}
		defer orig.Close()
		h, err := netns.GetFromName(ns)
		if err != nil {
			return err
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			return err
		}
		defer netns.Set(orig)
		ifi, err := net.InterfaceByName(tap)
		if err != nil {
			return err
		}
		w.link, err = link.AttachTCX(link.TCXOptions{Interface: ifi.Index, Program: prog,
			Attach: ebpf.AttachTCXIngress, Anchor: link.Head()})
		return err
	}()
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("wire counter on %s in %s: %w", tap, ns, err)
	}
	return w, nil
}

// add adds the counts to m under wireInNames.
func (w *wireIn) add(m map[string]wireCount) error {
	for i, name := range wireInNames {
		var per [][2]uint64
		if err := w.counts.Lookup(uint32(i), &per); err != nil {
			return fmt.Errorf("wire counter %s: %w", name, err)
		}
		c := m[name]
		for _, v := range per {
			c.Packets += v[0]
			c.Bytes += v[1]
		}
		m[name] = c
	}
	return nil
}

func (w *wireIn) Close() {
	if w.link != nil {
		w.link.Close()
	}
	w.prog.Close()
	w.counts.Close()
}

// wireInProgram counts by category (R8) the IPv4 packets and their IPv4
// length (R9); the header's first 20 octets at fp-24, the UDP ports at
// fp-28, the counter's index at fp-32. It never drops (TCX_NEXT).
func wireInProgram(countsFD int) asm.Instructions {
	const ethPIPNetOrder = 0x0008 // htons(ETH_P_IP) as __sk_buff.protocol holds it on little-endian hosts
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R0, asm.R6, 16, asm.Word), // __sk_buff.protocol
		asm.JNE.Imm(asm.R0, ethPIPNetOrder, "next"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 0),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -24),
		asm.Mov.Imm(asm.R4, 20),
		asm.Mov.Imm(asm.R5, 1), // BPF_HDR_START_NET
		asm.FnSkbLoadBytesRelative.Call(),
		asm.JNE.Imm(asm.R0, 0, "next"),
		// R9: the total length.
		asm.LoadMem(asm.R9, asm.RFP, -24+2, asm.Byte),
		asm.LSh.Imm(asm.R9, 8),
		asm.LoadMem(asm.R1, asm.RFP, -24+3, asm.Byte),
		asm.Or.Reg(asm.R9, asm.R1),
		asm.LoadMem(asm.R1, asm.RFP, -24+9, asm.Byte),
		asm.Mov.Imm(asm.R8, 0),
		asm.JEq.Imm(asm.R1, 50, "count"),
		asm.Mov.Imm(asm.R8, 1),
		asm.JEq.Imm(asm.R1, 51, "count"),
		asm.Mov.Imm(asm.R8, 3),
		asm.JNE.Imm(asm.R1, 17, "count"),
		// UDP: a later fragment counts as port 4500's.
		asm.Mov.Imm(asm.R8, 2),
		asm.LoadMem(asm.R1, asm.RFP, -24+6, asm.Byte),
		asm.And.Imm(asm.R1, 0x1f),
		asm.JNE.Imm(asm.R1, 0, "count"),
		asm.LoadMem(asm.R1, asm.RFP, -24+7, asm.Byte),
		asm.JNE.Imm(asm.R1, 0, "count"),
		asm.Mov.Imm(asm.R8, 3),
		asm.LoadMem(asm.R2, asm.RFP, -24, asm.Byte),
		asm.And.Imm(asm.R2, 0x0f),
		asm.LSh.Imm(asm.R2, 2),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -28),
		asm.Mov.Imm(asm.R4, 4),
		asm.Mov.Imm(asm.R5, 1),
		asm.FnSkbLoadBytesRelative.Call(),
		asm.JNE.Imm(asm.R0, 0, "count"),
		asm.LoadMem(asm.R1, asm.RFP, -28+2, asm.Half), // destination port, network order
		asm.JNE.Imm(asm.R1, 0x9411, "count"),          // 4500 = 0x1194
		asm.Mov.Imm(asm.R8, 2),
		asm.StoreMem(asm.RFP, -32, asm.R8, asm.Word).WithSymbol("count"),
		asm.LoadMapPtr(asm.R1, countsFD),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -32),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "next"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.DWord),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R0, 0, asm.R1, asm.DWord),
		asm.LoadMem(asm.R1, asm.R0, 8, asm.DWord),
		asm.Add.Reg(asm.R1, asm.R9),
		asm.StoreMem(asm.R0, 8, asm.R1, asm.DWord),
		asm.Mov.Imm(asm.R0, -1).WithSymbol("next"), // TCX_NEXT
		asm.Return(),
	}
}
