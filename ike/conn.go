// Package ike is gosec's IKEv1 key manager, in the spirit of FreeS/WAN's
// Pluto: it negotiates ISAKMP SAs (phase 1, Main Mode with pre-shared
// keys) and IPsec SAs (phase 2, Quick Mode) with a peer over UDP 500 and
// 4500 (RFC 2408, 2409, 3947) and hands the IPsec SAs to an Installer,
// which puts them into the data plane's SAD and SPD.
//
// The Engine runs one goroutine that owns every negotiation: received
// messages, timers and commands are events on its queue, so the state
// machines take no locks.
package ike

import (
	"net/netip"
	"time"
)

// Conn is one connection as the key manager negotiates it, seen from this
// host (local/remote decided).
type Conn struct {
	Name string
	// Local and Remote are the IKE endpoints (UDP 500).
	Local, Remote netip.Addr
	// LocalID and RemoteID are the phase-1 identities as written in
	// ipsec.conf (leftid/rightid); empty means the IP address.
	LocalID, RemoteID string
	// IKE lists the phase-1 suites in preference order.
	IKE []Suite
	// ESP or AH lists the phase-2 suites in preference order (one of
	// them is empty).
	ESP, AH []Suite
	// PFS makes Quick Mode carry a KE payload of PFSGroup (the DH group
	// of the first IKE suite unless the ESP proposal names one).
	PFS      bool
	PFSGroup DHGroup
	// Mode is tunnel or transport.
	Mode Mode
	// LocalSubnets and RemoteSubnets are the traffic selectors (tunnel
	// mode); empty means the host itself.
	LocalSubnets, RemoteSubnets []netip.Prefix
	Proto                       uint8
	LocalPort, RemotePort       uint16
	// IKELifetime and Lifetime are the phase-1 and phase-2 lifetimes.
	IKELifetime, Lifetime time.Duration
	// KeyingTries is how many times a negotiation is attempted; 0 means
	// forever.
	KeyingTries int
	// Rekey makes the initiator of a child negotiate its successor
	// RekeyMargin before Lifetime ends (the old pair is deleted once the
	// new one is installed). Without it a child just expires.
	Rekey       bool
	RekeyMargin time.Duration
	// RekeyFuzz (percent, may exceed 100) widens the margin by a random
	// 0..RekeyFuzz% of it for the side that initiated the SA, as
	// strongSwan computes rekey = life - margin - random(0, margin x
	// fuzz); 0 means no randomness. The other side rekeys only when half
	// the margin is left (Libreswan's rule), so the initiator goes first.
	RekeyFuzz int
	// LifeBytes and LifePackets are hard volume limits of each IPsec SA
	// (strongSwan lifebytes/lifepackets; 0: none). LifeBytes is proposed
	// in kilobytes (RFC 2407 4.5 SA-Life-Type 2); IKEv1 has no packet
	// lifetime attribute, so LifePackets applies locally only.
	// MarginBytes and MarginPackets are how much before them the rekey
	// starts (strongSwan marginbytes/marginpackets; 0: a tenth), widened
	// by RekeyFuzz on the initiating side like RekeyMargin.
	LifeBytes, LifePackets     uint64
	MarginBytes, MarginPackets uint64
	// DPDDelay > 0 with DPDAction clear, hold or restart sends RFC 3706
	// R_U_THERE every DPDDelay to a peer that announced DPD; with no
	// answer for DPDTimeout the peer is dead and DPDAction applies.
	DPDDelay, DPDTimeout time.Duration
	DPDAction            string
	// ForceEncaps pretends a NAT so that ESP travels in UDP 4500.
	ForceEncaps bool
	// ReplayWindow of the inbound SA (packets).
	ReplayWindow int
	// AHAlign8 gives AH SAs the Linux 8-octet form.
	AHAlign8 bool
}

// ChildSA is a negotiated pair of IPsec SAs, handed to the Installer. It
// holds what was negotiated only: an Installer keeps what it made of it
// (its data plane's SA entries, request IDs) on its own side, keyed by
// the *ChildSA pointer or by Conn and InSPI, which stay the same from
// InstallInbound to Remove.
type ChildSA struct {
	Conn  string
	Proto Proto
	Mode  Mode
	// InSPI is ours (the peer sends to it); OutSPI the peer's.
	InSPI, OutSPI uint32
	// Cipher (ESP; zero for AH) and Integ are the negotiated algorithms,
	// In and Out the key material of each direction; the Installer maps
	// them to its data plane's configurations (gosec's daemon: esp.Config,
	// ah.Config).
	Cipher  Cipher
	Integ   Integ
	In, Out ChildKeys
	// AHAlign8 is the conn's AHAlign8 (AH SAs in the Linux 8-octet form).
	AHAlign8 bool
	// Encap is set when ESP travels in UDP (NAT-T): source and
	// destination ports of outbound packets.
	Encap *Encap
	// Local and Remote are the outer addresses.
	Local, Remote netip.Addr
	// LocalTS and RemoteTS are the negotiated traffic selectors.
	LocalTS, RemoteTS netip.Prefix
	Proto8            uint8
	LocalPort         uint16
	RemotePort        uint16
	Lifetime          time.Duration
	// LifeBytes is the negotiated byte lifetime (the smaller of ours and
	// the peer's); 0: none. LifePackets is the conn's packet lifetime.
	// Both are hard limits: the data plane's hard event (HardExpire)
	// removes the pair.
	LifeBytes   uint64
	LifePackets uint64
	// SoftBytes and SoftPackets are where the data plane should raise its
	// soft event (SoftExpire) so that the engine rekeys in time; 0: none.
	// RekeyAfter is when, after installation, the engine itself rekeys
	// by time (it runs that timer; a soft time event is harmless).
	SoftBytes, SoftPackets uint64
	RekeyAfter             time.Duration
	ReplayWindow           int
	// Suite names the algorithms for status ("aes128-sha1").
	Suite string
}

// ChildKeys is the key material of one direction of a child SA, cut
// from its KEYMAT (RFC 2409 5.5): the encryption key, salt included
// (ESP; empty for AH and NULL), then the integrity key (empty for AEAD
// ciphers). The slices are the engine's: it zeroes them once the
// Installer's call returns.
type ChildKeys struct {
	Enc, Integ []byte
}

// Installer puts negotiated SAs into the data plane. The engine calls it
// from its own goroutine.
type Installer interface {
	// AllocSPI reserves an inbound SPI for proto.
	AllocSPI(proto Proto) (uint32, error)
	// ReleaseSPI frees an SPI that was reserved but never installed.
	ReleaseSPI(proto Proto, spi uint32)
	// InstallInbound installs the inbound SA of c so that the peer's
	// first packets are accepted even before the exchange ends. The
	// engine zeroes the key bytes of c.In when it returns: keep a keyed
	// state or a copy, not the slices.
	InstallInbound(c *ChildSA) error
	// InstallOutbound installs the outbound SA, the policies and the
	// routes of c; after it, traffic flows. The engine zeroes the key
	// bytes of c.Out when it returns.
	InstallOutbound(c *ChildSA) error
	// Remove removes everything installed for c.
	Remove(c *ChildSA)
}

// Transport sends IKE messages.
type Transport interface {
	// Send sends msg to the peer: from UDP 500 when natt is false, from
	// the NAT-T port with the non-ESP marker when it is true.
	Send(msg []byte, to netip.AddrPort, natt bool) error
}

// SourceTransport is a Transport that can also choose the local
// address a message leaves from; the engine uses it to answer from the
// address a request was sent to.
type SourceTransport interface {
	Transport
	SendFrom(msg []byte, src netip.Addr, to netip.AddrPort, natt bool) error
}

// PSKFunc returns the pre-shared key for a pair of IDs (strongSwan's
// best-match rules), or false.
type PSKFunc func(localID, remoteID string) ([]byte, bool)
