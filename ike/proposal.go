package ike

import (
	"errors"
	"fmt"
	"iter"
	"slices"
	"strings"
	"time"

	"github.com/gosec-ipsec/gosec/ike/ikecrypto"
	"github.com/gosec-ipsec/gosec/ike/isakmp"
)

// Protocol numbers of RFC 2409 Appendix A and RFC 2407 4.5, 4.6.
const (
	// phase-1 attribute types
	p1Encryption   = 1
	p1Hash         = 2
	p1AuthMethod   = 3
	p1GroupDesc    = 4
	p1LifeType     = 11
	p1LifeDuration = 12
	p1KeyLength    = 14

	authPSK = 1

	lifeSeconds   = 1
	lifeKilobytes = 2

	// phase-2 (IPsec DOI) attribute types
	p2LifeType     = 1
	p2LifeDuration = 2
	p2GroupDesc    = 3
	p2EncapMode    = 4
	p2AuthAlg      = 5
	p2KeyLength    = 6

	encapTunnel          = 1
	encapTransport       = 2
	encapUDPTunnel       = 3
	encapUDPTransport    = 4
	encapUDPTunnelDraft  = 61443
	encapUDPTransportDft = 61444

	keyIKE    = 1 // transform ID KEY_IKE
	doiIPsec  = 1
	sitIDOnly = 1
)

// p1Suite is one phase-1 transform.
type p1Suite struct {
	Cipher  ikecrypto.Cipher
	KeyBits int
	Hash    ikecrypto.Hash
	Group   ikecrypto.Group
	Life    time.Duration
}

func (s p1Suite) String() string {
	c := "3des"
	if s.Cipher == ikecrypto.CipherAES {
		c = fmt.Sprintf("aes%d", s.KeyBits)
	}
	return fmt.Sprintf("%s-%s-%s", c, hashName(s.Hash), s.Group)
}

func hashName(h ikecrypto.Hash) string {
	switch h {
	case ikecrypto.HashMD5:
		return "md5"
	case ikecrypto.HashSHA1:
		return "sha1"
	case ikecrypto.HashSHA256:
		return "sha256"
	case ikecrypto.HashSHA384:
		return "sha384"
	case ikecrypto.HashSHA512:
		return "sha512"
	}
	return fmt.Sprintf("hash%d", uint8(h))
}

func hashOf(i Integ) ikecrypto.Hash {
	switch i {
	case IntegMD5:
		return ikecrypto.HashMD5
	case IntegSHA1:
		return ikecrypto.HashSHA1
	case IntegSHA256:
		return ikecrypto.HashSHA256
	case IntegSHA384:
		return ikecrypto.HashSHA384
	case IntegSHA512:
		return ikecrypto.HashSHA512
	}
	return 0
}

// p1Suites is the conn's phase-1 offer.
func p1Suites(c *Conn) []p1Suite {
	var out []p1Suite
	for _, s := range c.IKE {
		ps := p1Suite{Hash: hashOf(s.Integ), Group: ikecrypto.Group(s.DH), Life: c.IKELifetime}
		switch s.Cipher.Encr {
		case Encr3DES:
			ps.Cipher = ikecrypto.CipherDES3
		case EncrAESCBC:
			ps.Cipher, ps.KeyBits = ikecrypto.CipherAES, s.Cipher.KeyBits
		default:
			continue
		}
		if ps.Group == 0 {
			ps.Group = 14
		}
		out = append(out, ps)
	}
	return out
}

func (s p1Suite) transform(num uint8) isakmp.Transform {
	t := isakmp.Transform{Num: num, ID: keyIKE}
	t.Attrs = append(t.Attrs, isakmp.Basic(p1Encryption, uint16(s.Cipher)))
	if s.Cipher == ikecrypto.CipherAES {
		t.Attrs = append(t.Attrs, isakmp.Basic(p1KeyLength, uint16(s.KeyBits)))
	}
	t.Attrs = append(t.Attrs,
		isakmp.Basic(p1Hash, uint16(s.Hash)),
		isakmp.Basic(p1AuthMethod, authPSK),
		isakmp.Basic(p1GroupDesc, uint16(s.Group)),
		isakmp.Basic(p1LifeType, lifeSeconds),
		isakmp.Uint(p1LifeDuration, uint64(s.Life/time.Second)))
	return t
}

// p1SA builds the phase-1 SA payload offering suites.
func p1SA(suites []p1Suite) *isakmp.SA {
	p := isakmp.Proposal{Num: 1, Protocol: isakmp.ProtoISAKMP}
	for i, s := range suites {
		p.Transforms = append(p.Transforms, s.transform(uint8(i+1)))
	}
	return &isakmp.SA{DOI: doiIPsec, Situation: sitIDOnly, Proposals: []isakmp.Proposal{p}}
}

// p1Offer is a decoded phase-1 transform of the peer, with what gosec
// could not accept in it.
type p1Offer struct {
	suite    p1Suite
	auth     uint64
	lifeType uint64
	// problem is an attribute gosec does not support at all (its type in
	// problemAttr), formatted only when a refusal is explained.
	problem     uint8
	problemAttr uint16
}

// Problems of an offered transform (p1Offer.problem, p2Offer.problem).
const (
	problemNone = iota
	problemNotNumeric
	problemCustomGroup
	problemAHTransform
	problemESPTransform
	problemProtocol
	problemAuthAlg
	problemAHNoAuth
)

func parseP1Transform(t isakmp.Transform) p1Offer {
	o := newP1Offer()
	for _, a := range t.Attrs {
		o.attr(a.Type, a.Value)
	}
	o.finish()
	return o
}

// parseP1View is parseP1Transform over a transform read in place.
func parseP1View(t isakmp.TransformView) p1Offer {
	o := newP1Offer()
	t.EachAttr(o.attr)
	o.finish()
	return o
}

func newP1Offer() p1Offer { return p1Offer{auth: authPSK, lifeType: lifeSeconds} }

// attr takes one phase-1 attribute into the offer.
func (o *p1Offer) attr(typ uint16, value []byte) {
	v, ok := isakmp.Attr{Type: typ, Value: value}.Uint()
	if !ok {
		o.problem, o.problemAttr = problemNotNumeric, typ
		return
	}
	switch typ {
	case p1Encryption:
		o.suite.Cipher = ikecrypto.Cipher(v)
	case p1KeyLength:
		o.suite.KeyBits = int(v)
	case p1Hash:
		o.suite.Hash = ikecrypto.Hash(v)
	case p1AuthMethod:
		o.auth = v
	case p1GroupDesc:
		o.suite.Group = ikecrypto.Group(v)
	case p1LifeType:
		o.lifeType = v
	case p1LifeDuration:
		if o.lifeType == lifeSeconds {
			o.suite.Life = time.Duration(min(v, 1<<31)) * time.Second
		}
	case 5, 6, 7, 8, 9, 10, 13, 15, 16:
		o.problem, o.problemAttr = problemCustomGroup, typ
	}
}

func (o *p1Offer) finish() {
	if o.suite.Cipher == ikecrypto.CipherDES3 {
		o.suite.KeyBits = 0
	} else if o.suite.Cipher == ikecrypto.CipherAES && o.suite.KeyBits == 0 {
		o.suite.KeyBits = 128 // RFC 3602 allows the default
	}
}

// mismatches counts how offer differs from ours, without formatting
// anything (the matching loop runs it for every offered transform).
func (o p1Offer) mismatches(ours p1Suite) int {
	n := 0
	if o.suite.Cipher != ours.Cipher || o.suite.KeyBits != ours.KeyBits {
		n++
	}
	if o.suite.Hash != ours.Hash {
		n++
	}
	if o.suite.Group != ours.Group {
		n++
	}
	if o.auth != authPSK {
		n++
	}
	if o.problem != problemNone {
		n++
	}
	return n
}

// diff lists how offer differs from ours, in words (explanations only).
func (o p1Offer) diff(ours p1Suite) []string {
	var d []string
	if o.suite.Cipher != ours.Cipher || o.suite.KeyBits != ours.KeyBits {
		d = append(d, fmt.Sprintf("cipher %s vs %s", cipherName(o.suite), cipherName(ours)))
	}
	if o.suite.Hash != ours.Hash {
		d = append(d, fmt.Sprintf("hash %s vs %s", hashName(o.suite.Hash), hashName(ours.Hash)))
	}
	if o.suite.Group != ours.Group {
		d = append(d, fmt.Sprintf("DH group %s vs %s", o.suite.Group, ours.Group))
	}
	if o.auth != authPSK {
		d = append(d, fmt.Sprintf("authentication method %d vs pre-shared key", o.auth))
	}
	if o.problem != problemNone {
		d = append(d, problemText(o.problem, o.problemAttr))
	}
	return d
}

func problemText(problem uint8, v uint16) string {
	switch problem {
	case problemNotNumeric:
		return fmt.Sprintf("attribute %d has no numeric value", v)
	case problemCustomGroup:
		return fmt.Sprintf("attribute %d (custom groups or PRF) is not supported", v)
	case problemAHTransform:
		return fmt.Sprintf("AH transform %d is not supported", v)
	case problemESPTransform:
		return fmt.Sprintf("ESP transform %d is not supported", v)
	case problemProtocol:
		return fmt.Sprintf("protocol %d is not supported", v)
	case problemAuthAlg:
		return fmt.Sprintf("authentication algorithm %d is not supported", v)
	case problemAHNoAuth:
		return "AH transform without authentication algorithm"
	}
	return ""
}

func cipherName(s p1Suite) string {
	switch s.Cipher {
	case ikecrypto.CipherDES3:
		return "3des"
	case ikecrypto.CipherAES:
		return fmt.Sprintf("aes%d", s.KeyBits)
	}
	return fmt.Sprintf("cipher%d", s.Cipher)
}

// p1Cand is one phase-1 transform the peer offered, read in place.
type p1Cand struct {
	p isakmp.ProposalView
	t isakmp.TransformView
	o p1Offer
}

// p1Rule compares the peer's phase-1 transforms with our suites.
var p1Rule = rule[p1Offer, p1Suite]{
	mismatches: p1Offer.mismatches,
	diff:       p1Offer.diff,
	offerName:  func(o p1Offer) string { return o.suite.String() },
	ourName:    p1Suite.String,
}

// p1CandRule is p1Rule over transforms read in place.
var p1CandRule = rule[p1Cand, p1Suite]{
	mismatches: func(c p1Cand, s p1Suite) int { return c.o.mismatches(s) },
	diff:       func(c p1Cand, s p1Suite) []string { return c.o.diff(s) },
	offerName:  func(c p1Cand) string { return c.o.suite.String() },
	ourName:    p1Suite.String,
}

// p1Offers reads the ISAKMP transforms of an SA payload body in place,
// already checked by isakmp.WalkSA (for explanations).
func p1Offers(sai []byte) iter.Seq[p1Cand] {
	return func(yield func(p1Cand) bool) {
		isakmp.WalkSA(sai, func(p isakmp.ProposalView, t isakmp.TransformView) bool {
			if p.Protocol != isakmp.ProtoISAKMP || t.ID != keyIKE {
				return true
			}
			return yield(p1Cand{p: p, t: t, o: parseP1View(t)})
		})
	}
}

// selectP1 picks, as responder, the first of our suites that one of the
// peer's transforms matches. It returns the transform to send back as is.
func selectP1(ours []p1Suite, sa *isakmp.SA) (isakmp.Proposal, p1Suite, error) {
	return selectP1Raw(ours, isakmp.EncodeBody(sa))
}

// selectP1Raw is selectP1 over the SA payload body as received: it reads
// the transforms in place (isakmp.WalkSA), allocates nothing while it
// matches, and builds the explanation of a refusal only if asked for.
func selectP1Raw(ours []p1Suite, sai []byte) (isakmp.Proposal, p1Suite, error) {
	doi, err := isakmp.WalkSA(sai, func(isakmp.ProposalView, isakmp.TransformView) bool { return false })
	if err != nil {
		return isakmp.Proposal{}, p1Suite{}, &errNoProposal{whole: true, msg: fmt.Sprintf("malformed SA payload: %v", err)}
	}
	if doi != doiIPsec {
		return isakmp.Proposal{}, p1Suite{}, &errNoProposal{whole: true, msg: fmt.Sprintf("SA payload with DOI %d", doi)}
	}
	ch := p1CandRule.chooser(ours)
	isakmp.WalkSA(sai, func(p isakmp.ProposalView, t isakmp.TransformView) bool {
		if p.Protocol != isakmp.ProtoISAKMP || t.ID != keyIKE {
			return true
		}
		return !ch.see(p1Cand{p: p, t: t, o: parseP1View(t)})
	})
	s, c, ok := ch.result()
	if !ok {
		return isakmp.Proposal{}, p1Suite{}, p1CandRule.refusal(1, ours, p1Offers(sai))
	}
	chosen := isakmp.Proposal{Num: c.p.Num, Protocol: c.p.Protocol, SPI: append([]byte(nil), c.p.SPI...), Transforms: []isakmp.Transform{c.t.Transform()}}
	if c.o.suite.Life > 0 {
		s.Life = c.o.suite.Life
	}
	return chosen, s, nil
}

// acceptP1Reply checks, as initiator, the responder's choice against
// what we offered.
func acceptP1Reply(ours []p1Suite, sa *isakmp.SA) (p1Suite, error) {
	if len(sa.Proposals) != 1 || len(sa.Proposals[0].Transforms) != 1 {
		return p1Suite{}, errors.New("the responder's SA payload must hold exactly one proposal with one transform")
	}
	o := parseP1Transform(sa.Proposals[0].Transforms[0])
	if s, _, ok := p1Rule.choose(ours, o); ok {
		if o.suite.Life > 0 && o.suite.Life < s.Life {
			s.Life = o.suite.Life
		}
		return s, nil
	}
	return p1Suite{}, fmt.Errorf("the responder chose %s, which we did not offer", o.suite)
}

// p2Suite is one phase-2 transform.
type p2Suite struct {
	Proto   Proto
	Encr    Encr // ESP only
	KeyBits int
	Integ   Integ
	Group   ikecrypto.Group // PFS group, 0 without PFS
	Life    time.Duration
	// LifeKB is the lifetime in kilobytes: lifebytes rounded up when we
	// propose, the smaller of both sides' once negotiated; 0: no limit.
	LifeKB uint64
	ESN    bool
	// lifeNote says how a peer's lifetime was clamped, for the log.
	lifeNote string
}

// Bounds on the lifetimes a peer may impose on a child SA. Below the
// floors (or below what this conn itself configures, if that is lower)
// a proposal is refused: an SA of a few packets or seconds would make
// the gateways rekey without pause. A kilobyte value whose byte count
// overflows 64 bits is taken as no byte limit, a number of seconds
// beyond 2^31 as 2^31 s.
const (
	minChildLife   = 10 * time.Second
	minChildLifeKB = 1024 // 1 MiB
	maxChildLifeKB = ^uint64(0) / 1024
	maxChildLife   = 1 << 31 // seconds
)

// lifeProblem says why the peer's lifetimes in o are unacceptable next
// to ours, or "".
func (o p2Offer) lifeProblem(ours p2Suite) string {
	if o.suite.Life > 0 {
		floor := minChildLife
		if ours.Life > 0 && ours.Life < floor {
			floor = ours.Life
		}
		if o.suite.Life < floor {
			return fmt.Sprintf("lifetime of %v is below the minimum of %v", o.suite.Life, floor)
		}
	}
	if o.suite.LifeKB > 0 {
		floor := uint64(minChildLifeKB)
		if ours.LifeKB > 0 && ours.LifeKB < floor {
			floor = ours.LifeKB
		}
		if o.suite.LifeKB < floor {
			return fmt.Sprintf("lifetime of %d kilobytes is below the minimum of %d kilobytes", o.suite.LifeKB, floor)
		}
	}
	return ""
}

// adoptLife combines our suite's lifetimes with the peer's: the smaller
// of each, a zero meaning no limit.
func adoptLife(ours p2Suite, o p2Offer) p2Suite {
	if o.suite.Life > 0 && (ours.Life <= 0 || o.suite.Life < ours.Life) {
		ours.Life = o.suite.Life
	}
	if o.suite.LifeKB > 0 && (ours.LifeKB == 0 || o.suite.LifeKB < ours.LifeKB) {
		ours.LifeKB = o.suite.LifeKB
	}
	ours.lifeNote = o.suite.lifeNote
	return ours
}

func (s p2Suite) String() string {
	var parts []string
	if s.Proto == ProtoAH {
		parts = append(parts, "ah")
	} else {
		parts = append(parts, Cipher{Encr: s.Encr, KeyBits: s.KeyBits}.Name())
	}
	if s.Integ != IntegNone {
		parts = append(parts, s.Integ.Name())
	}
	if s.Group != 0 {
		parts = append(parts, s.Group.String())
	}
	return strings.Join(parts, "-")
}

// p2Suites is the conn's phase-2 offer.
func p2Suites(c *Conn) []p2Suite {
	var out []p2Suite
	group := ikecrypto.Group(0)
	if c.PFS {
		group = ikecrypto.Group(c.PFSGroup)
		if group == 0 && len(c.IKE) > 0 {
			group = ikecrypto.Group(c.IKE[0].DH)
		}
	}
	add := func(proto Proto, s Suite) {
		// A DH group in esp= turns PFS on (strongSwan); pfs=yes without
		// one uses PFSGroup or the phase-1 group (Libreswan).
		g := group
		if s.DH != 0 {
			g = ikecrypto.Group(s.DH)
		}
		out = append(out, p2Suite{Proto: proto, Encr: s.Cipher.Encr, KeyBits: s.Cipher.KeyBits, Integ: s.Integ, Group: g, Life: c.Lifetime, ESN: s.ESN,
			LifeKB: (c.LifeBytes + 1023) / 1024})
	}
	if len(c.AH) > 0 {
		for _, s := range c.AH {
			add(ProtoAH, s)
		}
		return out
	}
	for _, s := range c.ESP {
		add(ProtoESP, s)
	}
	return out
}

// p2ResponderSuites is what conn c accepts as Quick Mode responder:
// p2Suites, and when c does not ask for PFS (no pfs=yes, no DH group in
// esp= or ah=) each of them again with PFS in each of c's phase-1 groups,
// after them. Libreswan's pfs=no accepts an initiator's PFS the same way,
// and so its default (pfs=yes, with the phase-1 group) meets a conn
// written without pfs=, as an administrator moving from Libreswan writes
// it. Accepting PFS only adds a Diffie-Hellman exchange in a group the
// conn already takes for phase 1, from a peer that has authenticated; a
// conn that asks for PFS still refuses an offer without it.
func p2ResponderSuites(c *Conn) []p2Suite {
	ours := p2Suites(c)
	for _, s := range ours {
		if s.Group != 0 {
			return ours
		}
	}
	var groups []ikecrypto.Group
	for _, s := range c.IKE {
		if g := ikecrypto.Group(s.DH); g != 0 && !slices.Contains(groups, g) {
			groups = append(groups, g)
		}
	}
	n := len(ours)
	for _, g := range groups {
		for _, s := range ours[:n] {
			s.Group = g
			ours = append(ours, s)
		}
	}
	return ours
}

func ahTransformID(i Integ) uint8 {
	return [...]uint8{0, 2, 3, 5, 6, 7}[i]
}

func (s p2Suite) transform(num uint8, encap uint16) isakmp.Transform {
	t := isakmp.Transform{Num: num}
	if s.Proto == ProtoAH {
		t.ID = ahTransformID(s.Integ)
	} else {
		t.ID = uint8(s.Encr.IANA())
		if s.KeyBits != 0 && s.Encr != Encr3DES && s.Encr != EncrNull {
			t.Attrs = append(t.Attrs, isakmp.Basic(p2KeyLength, uint16(s.KeyBits)))
		}
	}
	if s.Integ != IntegNone {
		t.Attrs = append(t.Attrs, isakmp.Basic(p2AuthAlg, s.Integ.IANA()))
	}
	t.Attrs = append(t.Attrs, isakmp.Basic(p2EncapMode, encap))
	if s.Group != 0 {
		t.Attrs = append(t.Attrs, isakmp.Basic(p2GroupDesc, uint16(s.Group)))
	}
	t.Attrs = append(t.Attrs, isakmp.Basic(p2LifeType, lifeSeconds),
		isakmp.Uint(p2LifeDuration, uint64(s.Life/time.Second)))
	if s.LifeKB > 0 {
		t.Attrs = append(t.Attrs, isakmp.Basic(p2LifeType, lifeKilobytes), isakmp.Uint(p2LifeDuration, s.LifeKB))
	}
	return t
}

// p2SA builds the Quick Mode SA payload: one proposal with every suite as
// a transform, carrying our inbound SPI.
func p2SA(suites []p2Suite, spi uint32, encap uint16) *isakmp.SA {
	proto := isakmp.ProtoESP
	if len(suites) > 0 && suites[0].Proto == ProtoAH {
		proto = isakmp.ProtoAH
	}
	p := isakmp.Proposal{Num: 1, Protocol: proto, SPI: be32(spi)}
	for i, s := range suites {
		p.Transforms = append(p.Transforms, s.transform(uint8(i+1), encap))
	}
	return &isakmp.SA{DOI: doiIPsec, Situation: sitIDOnly, Proposals: []isakmp.Proposal{p}}
}

// p2Offer is one decoded phase-2 transform of the peer.
type p2Offer struct {
	suite       p2Suite
	encap       uint16
	problem     uint8 // problemNone, ... (see p1Offer)
	problemAttr uint16
}

func parseP2Transform(proto isakmp.ProtocolID, t isakmp.Transform) p2Offer {
	var o p2Offer
	o.encap = encapTunnel
	switch proto {
	case isakmp.ProtoAH:
		o.suite.Proto = ProtoAH
		switch t.ID {
		case 2:
			o.suite.Integ = IntegMD5
		case 3:
			o.suite.Integ = IntegSHA1
		case 5:
			o.suite.Integ = IntegSHA256
		case 6:
			o.suite.Integ = IntegSHA384
		case 7:
			o.suite.Integ = IntegSHA512
		default:
			o.problem, o.problemAttr = problemAHTransform, uint16(t.ID)
		}
	case isakmp.ProtoESP:
		o.suite.Proto = ProtoESP
		found := false
		for e := EncrNull; e <= EncrChaCha20Poly1305; e++ {
			if uint16(t.ID) == e.IANA() {
				o.suite.Encr, found = e, true
			}
		}
		if !found {
			o.problem, o.problemAttr = problemESPTransform, uint16(t.ID)
		}
		if o.suite.Encr == EncrChaCha20Poly1305 {
			o.suite.KeyBits = 256
		}
	default:
		o.problem, o.problemAttr = problemProtocol, uint16(proto)
	}
	lifeType := uint64(lifeSeconds)
	authSeen := false
	for _, a := range t.Attrs {
		v, ok := a.Uint()
		if !ok {
			o.problem, o.problemAttr = problemNotNumeric, a.Type
			continue
		}
		switch a.Type {
		case p2LifeType:
			lifeType = v
		case p2LifeDuration:
			switch lifeType {
			case lifeSeconds:
				if v > maxChildLife {
					o.suite.lifeNote = fmt.Sprintf("a lifetime of %d s was clamped to %d s", v, uint64(maxChildLife))
					v = maxChildLife
				}
				o.suite.Life = time.Duration(v) * time.Second
			case lifeKilobytes:
				if v > maxChildLifeKB {
					o.suite.lifeNote = fmt.Sprintf("a lifetime of %d kilobytes overflows a byte count and was taken as no byte limit", v)
					v = 0
				}
				o.suite.LifeKB = v
			}
		case p2GroupDesc:
			o.suite.Group = ikecrypto.Group(v)
		case p2EncapMode:
			o.encap = uint16(v)
		case p2AuthAlg:
			authSeen = true
			switch v {
			case 1:
				o.suite.Integ = IntegMD5
			case 2:
				o.suite.Integ = IntegSHA1
			case 5:
				o.suite.Integ = IntegSHA256
			case 6:
				o.suite.Integ = IntegSHA384
			case 7:
				o.suite.Integ = IntegSHA512
			default:
				o.problem, o.problemAttr = problemAuthAlg, uint16(v)
			}
		case p2KeyLength:
			o.suite.KeyBits = int(v)
		case 11: // ESN
			o.suite.ESN = v == 1
		}
	}
	if o.suite.Proto == ProtoESP && o.suite.KeyBits == 0 {
		switch o.suite.Encr {
		case EncrAESCBC, EncrAESCTR, EncrAESGCM16:
			o.suite.KeyBits = 128
		}
	}
	if o.suite.Proto == ProtoAH && !authSeen {
		o.problem = problemAHNoAuth
	}
	return o
}

func isTransport(e uint16) bool {
	return e == encapTransport || e == encapUDPTransport || e == encapUDPTransportDft
}
func encapUDP(e uint16) bool {
	return e == encapUDPTunnel || e == encapUDPTransport || e == encapUDPTunnelDraft || e == encapUDPTransportDft
}

// mismatches counts how offer differs from ours without formatting.
func (o p2Offer) mismatches(ours p2Suite, mode Mode) int {
	n := 0
	if o.problem != problemNone {
		n++
	}
	if o.suite.Proto != ours.Proto {
		n++
	}
	if o.suite.Proto == ProtoESP && (o.suite.Encr != ours.Encr || o.suite.KeyBits != ours.KeyBits) {
		n++
	}
	if o.suite.Integ != ours.Integ {
		n++
	}
	if o.suite.Group != ours.Group {
		n++
	}
	if isTransport(o.encap) != (mode == ModeTransport) {
		n++
	}
	if o.suite.ESN != ours.ESN {
		n++
	}
	if o.lifeProblem(ours) != "" {
		n++
	}
	return n
}

// diff lists how offer differs from ours, in words (explanations only).
func (o p2Offer) diff(ours p2Suite, mode Mode) []string {
	var d []string
	if o.problem != problemNone {
		d = append(d, problemText(o.problem, o.problemAttr))
	}
	if o.suite.Proto != ours.Proto {
		d = append(d, fmt.Sprintf("protocol %s vs %s", o.suite.Proto, ours.Proto))
	}
	if o.suite.Proto == ProtoESP && (o.suite.Encr != ours.Encr || o.suite.KeyBits != ours.KeyBits) {
		d = append(d, fmt.Sprintf("cipher %s vs %s", Cipher{Encr: o.suite.Encr, KeyBits: o.suite.KeyBits}.Name(),
			Cipher{Encr: ours.Encr, KeyBits: ours.KeyBits}.Name()))
	}
	if o.suite.Integ != ours.Integ {
		d = append(d, fmt.Sprintf("integrity %s vs %s", o.suite.Integ.Name(), ours.Integ.Name()))
	}
	if o.suite.Group != ours.Group {
		d = append(d, fmt.Sprintf("PFS group %s vs %s", groupName(o.suite.Group), groupName(ours.Group)))
	}
	if isTransport(o.encap) != (mode == ModeTransport) {
		d = append(d, fmt.Sprintf("mode %s vs %s", encapName(o.encap), mode))
	}
	if o.suite.ESN != ours.ESN {
		d = append(d, "extended sequence numbers")
	}
	if lp := o.lifeProblem(ours); lp != "" {
		d = append(d, lp)
	}
	return d
}

func groupName(g ikecrypto.Group) string {
	if g == 0 {
		return "none"
	}
	return g.String()
}

func encapName(e uint16) string {
	switch e {
	case encapTunnel:
		return "tunnel"
	case encapTransport:
		return "transport"
	case encapUDPTunnel, encapUDPTunnelDraft:
		return "UDP-encapsulated tunnel"
	case encapUDPTransport, encapUDPTransportDft:
		return "UDP-encapsulated transport"
	}
	return fmt.Sprintf("encapsulation %d", e)
}

// p2Cand is one transform the peer offered in Quick Mode; bundled: its
// proposal number is shared with another proposal (an ESP+AH bundle,
// which gosec does not take).
type p2Cand struct {
	p       isakmp.Proposal
	t       isakmp.Transform
	o       p2Offer
	bundled bool
}

// p2Rule compares the peer's phase-2 transforms with our suites in a
// conn's mode.
func p2Rule(mode Mode) rule[p2Cand, p2Suite] {
	return rule[p2Cand, p2Suite]{
		mismatches: func(c p2Cand, s p2Suite) int {
			n := c.o.mismatches(s, mode)
			if c.bundled {
				n++
			}
			return n
		},
		diff: func(c p2Cand, s p2Suite) []string {
			d := c.o.diff(s, mode)
			if c.bundled {
				d = append(d, "part of a bundle of proposals (ESP+AH)")
			}
			return d
		},
		offerName: func(c p2Cand) string { return c.o.suite.String() + " " + encapName(c.o.encap) },
		ourName:   func(s p2Suite) string { return s.String() + " " + mode.String() },
	}
}

// selectP2 picks, as responder, the first of our suites the peer offers.
// It returns the proposal to send back (without our SPI yet), the suite,
// the peer's SPI and the encapsulation mode.
func selectP2(ours []p2Suite, mode Mode, sa *isakmp.SA) (isakmp.Proposal, p2Suite, uint32, uint16, error) {
	// Proposals sharing a number form a bundle (ESP+AH); gosec takes
	// single-protocol proposals only.
	var count [256]int
	for _, p := range sa.Proposals {
		count[p.Num]++
	}
	var offers []p2Cand
	for _, p := range sa.Proposals {
		if len(p.SPI) != 4 {
			continue
		}
		for _, t := range p.Transforms {
			offers = append(offers, p2Cand{p, t, parseP2Transform(p.Protocol, t), count[p.Num] > 1})
		}
	}
	r := p2Rule(mode)
	s, c, ok := r.choose(ours, offers...)
	if !ok {
		return isakmp.Proposal{}, p2Suite{}, 0, 0, r.refusal(2, ours, slices.Values(offers))
	}
	chosen := isakmp.Proposal{Num: c.p.Num, Protocol: c.p.Protocol, Transforms: []isakmp.Transform{c.t}}
	return chosen, adoptLife(s, c.o), be32u(c.p.SPI), c.o.encap, nil
}

// acceptP2Reply checks, as initiator, the responder's choice.
func acceptP2Reply(ours []p2Suite, mode Mode, sa *isakmp.SA) (p2Suite, uint32, uint16, error) {
	if len(sa.Proposals) != 1 || len(sa.Proposals[0].Transforms) != 1 || len(sa.Proposals[0].SPI) != 4 {
		return p2Suite{}, 0, 0, errors.New("the responder's Quick Mode SA must hold one proposal with one transform and a 4-octet SPI")
	}
	p := sa.Proposals[0]
	o := parseP2Transform(p.Protocol, p.Transforms[0])
	if s, _, ok := p2Rule(mode).choose(ours, p2Cand{p: p, t: p.Transforms[0], o: o}); ok {
		return adoptLife(s, o), be32u(p.SPI), o.encap, nil
	}
	for _, s := range ours {
		if lp := o.lifeProblem(s); lp != "" {
			return p2Suite{}, 0, 0, fmt.Errorf("the responder chose %s with a %s", o.suite, lp)
		}
	}
	return p2Suite{}, 0, 0, fmt.Errorf("the responder chose %s (%s), which we did not offer", o.suite, encapName(o.encap))
}

// keyLens returns the encryption (salt included) and integrity key
// lengths of s, in octets.
func (s p2Suite) keyLens() (int, int) {
	if s.Proto == ProtoAH {
		return 0, s.Integ.KeyLen()
	}
	enc := Cipher{Encr: s.Encr, KeyBits: s.KeyBits}.KeyLen()
	return enc, s.Integ.KeyLen()
}

func be32(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }

func be32u(b []byte) uint32 {
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}
