package daemon

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"

	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/sad"
)

// spiGate is what the daemon needs of netio.SPIGate: the kernel's drop of
// ESP, AH and ESP-in-UDP packets whose SPI no inbound SA holds.
type spiGate interface {
	Admit(spi uint32, peer netip.Addr) error
	Revoke(spi uint32, peer netip.Addr) error
	Counts() (netio.SPIGateCounts, error)
	Close() error
}

// addInboundLocked adds inbound SA sa to the SAD, admitting its SPI to the
// kernel's gate first: the kernel lets the SA's packets through before the
// SA exists, so before the peer can have learnt of it (an initiator sends
// its inbound SPI in QM1 and installs the SA at QM2, a responder installs
// it before QM2; a rekey installs the new SA while the old one still
// stands: make-before-break). If the SPI cannot be admitted, the SA is not
// added (its packets would be dropped), unless the gate opened instead.
func (d *Daemon) addInboundLocked(sa *sad.SA) error {
	if d.gate != nil {
		if err := d.gate.Admit(sa.SPI, sa.Src); err != nil {
			switch {
			case errors.Is(err, netio.ErrMirrorOpened):
				d.log.Warn("AF_PACKET receive ring: its SPI filter failed and is off: unknown SPIs reach the data plane, which drops them", "err", err)
			case errors.Is(err, netio.ErrGateOpened):
				d.log.Warn("kernel unknown-SPI filter failed and is off: gosec drops unknown SPIs itself", "err", err)
			default:
				return fmt.Errorf("inbound SA %08x: kernel SPI filter: %w", sa.SPI, err)
			}
		}
	}
	if err := d.sad.Add(sa); err != nil {
		d.revokeSPI(sa.SPI, sa.Src)
		return err
	}
	return nil
}

// deleteInboundLocked removes inbound SA sa from the SAD and then releases
// its SPI at the kernel's gate.
func (d *Daemon) deleteInboundLocked(sa *sad.SA) {
	if d.sad.Delete(sa.SPI, sa.Proto, sa.Dst) {
		d.revokeSPI(sa.SPI, sa.Src)
	}
}

func (d *Daemon) revokeSPI(spi uint32, peer netip.Addr) {
	if d.gate == nil {
		return
	}
	if err := d.gate.Revoke(spi, peer); err != nil {
		// The SPI stays admitted: its packets reach the data plane,
		// which drops them (no SA).
		d.log.Warn("kernel SPI filter: revoke", "spi", fmt.Sprintf("%08x", spi), "err", err)
	}
}

// KernelDropsStatus is what the kernel's unknown-SPI filter dropped.
type KernelDropsStatus struct {
	// UnknownSPI counts ESP, AH and ESP-in-UDP packets dropped for an
	// SPI no inbound SA holds (also in Status.Drops["unknown-spi"], except
	// ESP and AH received through an AF_PACKET ring without its SPI
	// filter: that ring took them before netfilter INPUT and the data
	// plane counted them already).
	UnknownSPI uint64 `json:"unknown-spi"`
	ESP        uint64 `json:"esp"`
	AH         uint64 `json:"ah"`
	UDP        uint64 `json:"udp"`
	// SPIs is how many SPIs the filter lets through.
	SPIs int `json:"spis"`
	// RingBypass counts the ESP and AH packets of known SPIs that the
	// AF_PACKET receive ring took and the IP stack then dropped at
	// prerouting instead of processing them again (present only while
	// the ring bypass is in place; not in UnknownSPI).
	RingBypass *uint64 `json:"ring_bypass,omitempty"`
	// Prerouting counts the unknown-SPI ESP and AH packets (of ESP and AH)
	// dropped in the ring-bypass chain, before routing: whole packets
	// for this host (present while that chain is in place); the rest
	// were dropped at INPUT.
	Prerouting *uint64 `json:"prerouting,omitempty"`
	// Ingress is what the ingress bypass dropped at tc ingress (present
	// while it is in place), also counted above: ESP and AH of admitted
	// SPIs in RingBypass, of unknown SPIs in ESP, AH and Prerouting.
	Ingress *IngressDropsStatus `json:"ingress,omitempty"`
	// Off says the filter removed its rules after an error (Error).
	Off   bool   `json:"off,omitempty"`
	Error string `json:"error,omitempty"`
}

// IngressDropsStatus is what the ingress bypass (netio.IngressBypass)
// kept from the IP stack and dropped.
type IngressDropsStatus struct {
	// Interfaces are those it is attached to: every Ethernet interface
	// holding one of the host's addresses, also those that got one after
	// the daemon started.
	Interfaces []string `json:"interfaces"`
	// NotAttached are the interfaces holding an address that it could not
	// be attached to, each with the reason: there the prerouting chain
	// keeps what the ring received from the IP stack.
	NotAttached []string `json:"not_attached,omitempty"`
	// RingBypass counts ESP and AH of admitted SPIs (the ring took them),
	// UnknownSPI those of SPIs no inbound SA holds.
	RingBypass uint64 `json:"ring_bypass"`
	UnknownSPI uint64 `json:"unknown-spi"`
	// Error says why it was detached.
	Error string `json:"error,omitempty"`
}

// kernelDrops reads the gate's counters into st: its own field, and the
// unknown-spi count of st.Drops, so that drops by reason count every
// forged SPI wherever it was dropped.
func (d *Daemon) kernelDrops(st *Status) {
	if d.gate == nil {
		return
	}
	c, err := d.gate.Counts()
	if err != nil {
		d.log.Warn("kernel SPI filter: counters", "err", err)
		return
	}
	k := &KernelDropsStatus{UnknownSPI: c.Total(), ESP: c.ESP, AH: c.AH, UDP: c.UDP, SPIs: c.Admitted, Off: c.Open}
	if c.Bypassing {
		n, p := c.RingBypass, c.Prerouting
		k.RingBypass, k.Prerouting = &n, &p
	}
	if c.Err != nil {
		k.Error = c.Err.Error()
	}
	d.ingressDrops(k)
	st.KernelDrops = k
	// A protocol received through an AF_PACKET ring that takes every
	// SPI reached the data plane before the gate dropped it (the ring
	// sits before netfilter INPUT), which counted it already: count it
	// once. A ring filtering by SPI never saw it.
	unknown := k.UDP
	ringAll := d.ringSPIs == nil || !d.ringSPIs.Filtering()
	if _, ring := d.esp.(*ringSocket); !ring || !ringAll {
		unknown += k.ESP
	}
	if _, ring := d.ah.(*ringSocket); !ring || !ringAll {
		unknown += k.AH
	}
	if unknown == 0 {
		return
	}
	drops := make(map[string]uint64, len(st.Drops)+1)
	for r, n := range st.Drops {
		drops[r] = n
	}
	drops[drop.UnknownSPI.String()] += unknown
	st.Drops = drops
}

// text is the filter's line in statusall.
func (k *KernelDropsStatus) text() string {
	if k.Off {
		return fmt.Sprintf("off after an error (%s); %d unknown-SPI packets dropped before", k.Error, k.UnknownSPI)
	}
	s := fmt.Sprintf("%d SPIs let through, %d unknown-SPI packets dropped (ESP %d, AH %d, ESP-in-UDP %d",
		k.SPIs, k.UnknownSPI, k.ESP, k.AH, k.UDP)
	if k.Prerouting != nil {
		s += fmt.Sprintf("; %d of them before routing", *k.Prerouting)
	}
	s += ")"
	if k.RingBypass != nil {
		s += fmt.Sprintf("; %d received by the ring kept from the IP stack", *k.RingBypass)
	}
	if in := k.Ingress; in != nil {
		if in.Error != "" {
			s += fmt.Sprintf("; at tc ingress: off after an error (%s)", in.Error)
		}
		if len(in.Interfaces) > 0 {
			s += fmt.Sprintf("; at tc ingress on %s", strings.Join(in.Interfaces, ", "))
		}
		s += fmt.Sprintf(": %d kept, %d unknown-SPI", in.RingBypass, in.UnknownSPI)
		if len(in.NotAttached) > 0 {
			s += fmt.Sprintf("; not attached to %s", strings.Join(in.NotAttached, "; "))
		}
	}
	return s
}

// ingressDrops adds the ingress bypass's counters (if it is in place) to
// k's.
func (d *Daemon) ingressDrops(k *KernelDropsStatus) {
	if d.ringSPIs == nil {
		return
	}
	ing := d.ringSPIs.Ingress()
	if ing == nil {
		return
	}
	c, err := ing.Counts()
	if err != nil {
		// A closed bypass (the SPI filter opened since Ingress), or a
		// kernel that wants CAP_BPF to read a map through an open fd
		// from a daemon that gave it up (--user; Linux 6.5 and later do
		// not, TestUnprivilegedDaemon).
		d.log.Debug("ingress bypass: counters", "err", err)
		return
	}
	addIngress(k, c)
}

// addIngress adds the ingress bypass's counts c to k's: its own field,
// and the totals it is part of.
func addIngress(k *KernelDropsStatus, c netio.IngressCounts) {
	in := &IngressDropsStatus{Interfaces: c.Interfaces, NotAttached: c.NotAttached, RingBypass: c.Bypassed, UnknownSPI: c.ESP + c.AH}
	if c.Err != nil {
		in.Error = c.Err.Error()
	}
	k.Ingress = in
	k.ESP += c.ESP
	k.AH += c.AH
	k.UnknownSPI += c.ESP + c.AH
	if k.RingBypass != nil {
		*k.RingBypass += c.Bypassed
	}
	if k.Prerouting != nil {
		*k.Prerouting += c.ESP + c.AH
	}
}
