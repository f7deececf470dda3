package daemon

import (
	"fmt"

	"github.com/gosec-ipsec/gosec/internal/netio"
)

// RawPathStatus says how raw ESP and AH (IP protocols 50 and 51, not
// ESP-in-UDP) are received and sent.
type RawPathStatus struct {
	// Receive and Send name the path per protocol ("esp", "ah"):
	// "af_packet ring" or "raw socket" for receive, "af_packet tx ring"
	// or "af_packet" (sendmmsg; each with the raw socket for what it
	// cannot send) or "raw socket" for send.
	Receive map[string]string `json:"receive"`
	Send    map[string]string `json:"send"`
	// Ring is the receive ring's counters (one ring for ESP and AH;
	// absent without it).
	Ring *netio.RingStats `json:"ring,omitempty"`
	// RingSPIFilter says the ring takes only the SPIs of inbound SAs
	// (its eBPF filter, kept by the kernel SPI filter); false: it takes
	// every SPI and the data plane drops unknown ones.
	RingSPIFilter bool `json:"ring_spi_filter,omitempty"`
	// SentAFPacket and SentRaw count the packets the AF_PACKET send path
	// passed to each socket.
	SentAFPacket uint64 `json:"sent_af_packet"`
	SentRaw      uint64 `json:"sent_raw_socket"`
}

// rawPaths describes the ESP and AH sockets (nil before setup).
func (d *Daemon) rawPaths() *RawPathStatus {
	if d.esp == nil {
		return nil
	}
	st := &RawPathStatus{Receive: map[string]string{}, Send: map[string]string{}}
	for name, s := range map[string]espSocket{"esp": d.esp, "ah": d.ah} {
		if s == nil {
			continue
		}
		st.Receive[name], st.Send[name] = "raw socket", "raw socket"
		tx := s
		if r, ok := s.(*ringSocket); ok {
			st.Receive[name] = "af_packet ring"
			if r.ring != nil {
				rs := r.ring.Stats()
				st.Ring = &rs
				st.RingSPIFilter = d.ringSPIs != nil && d.ringSPIs.Filtering()
			}
			tx = r.tx
		}
		if pc, ok := tx.(*netio.PacketConn); ok {
			st.Send[name] = "af_packet"
			if pc.TxRing() {
				st.Send[name] = "af_packet tx ring"
			}
			ps := pc.Stats()
			st.SentAFPacket += ps.Packet
			st.SentRaw += ps.Raw
		}
	}
	return st
}

// text is statusall's line for the raw paths.
func (r *RawPathStatus) text() string {
	s := fmt.Sprintf("receive ESP %s, AH %s; send ESP %s, AH %s", r.Receive["esp"], r.Receive["ah"], r.Send["esp"], r.Send["ah"])
	if g := r.Ring; g != nil {
		spis := "every SPI"
		if r.RingSPIFilter {
			spis = "inbound SAs' SPIs only"
		}
		s += fmt.Sprintf("; ring (%s): %d packets, %d not for this host, %d bad headers, %d larger than a frame, %d dropped full",
			spis, g.Packets, g.NotLocal, g.BadHeader, g.Copied, g.KernelDrops)
	}
	if r.SentAFPacket+r.SentRaw > 0 {
		s += fmt.Sprintf("; sent %d through AF_PACKET, %d through the raw sockets", r.SentAFPacket, r.SentRaw)
	}
	return s
}
