package isakmp

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// h2b reads hex written by hand, with "#" comments to the end of a line.
func h2b(t testing.TB, s string) []byte {
	t.Helper()
	var clean strings.Builder
	for _, line := range strings.Split(s, "\n") {
		line, _, _ = strings.Cut(line, "#")
		clean.WriteString(strings.Join(strings.Fields(line), ""))
	}
	b, err := hex.DecodeString(clean.String())
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// mm1 is a Main Mode first message written octet by octet from the
// layouts of RFC 2408 3.1, 3.4-3.6 and RFC 2409 Appendix A.
const mm1 = `
	0102030405060708 0000000000000000   # cookies
	01 10 02 00 00000000 00000078        # next SA, version 1.0, Main Mode, flags, M-ID 0, length 120
	0d 00 003c                           # SA: next VID, length 60
	00000001 00000001                    # DOI IPsec, SIT_IDENTITY_ONLY
	00 00 0030 01 01 00 01               # proposal: last, length 48, #1, ISAKMP, SPI size 0, 1 transform
	00 00 0028 01 01 0000                # transform: last, length 40, #1, KEY_IKE
	8001 0007  800e 0080  8002 0002  8003 0001  8004 000e  800b 0001  # AES, 128, SHA, PSK, group 14, seconds
	000c 0004 00000e10                   # life duration 3600, variable form (4 octets)
	0b 00 0014 4a131c81070358455c5728f20e95452f   # VID (RFC 3947), next N
	00 00 000c 00000001 01 00 6002       # N: DOI 1, ISAKMP, SPI size 0, INITIAL_CONTACT
`

func TestDecodeHandcrafted(t *testing.T) {
	b := h2b(t, mm1)
	h, err := ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Header{ICookie: [8]byte{1, 2, 3, 4, 5, 6, 7, 8}, Next: PayloadSA, Version: 0x10, Exchange: ExchMain, Length: 120}
	if h != want {
		t.Fatalf("header %+v, want %+v", h, want)
	}
	ps, raws, err := DecodeAll(h.Next, b[HeaderLen:h.Length])
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 3 || raws[1].Off != 60 || len(raws[0].Body) != 56 {
		t.Fatalf("payloads %d, raws %+v", len(ps), raws)
	}
	sa := ps[0].(*SA)
	tr := sa.Proposals[0].Transforms[0]
	wantSA := &SA{DOI: 1, Situation: 1, Proposals: []Proposal{{Num: 1, Protocol: ProtoISAKMP, Transforms: []Transform{{
		Num: 1, ID: 1, Attrs: []Attr{Basic(1, 7), Basic(14, 128), Basic(2, 2), Basic(3, 1), Basic(4, 14), Basic(11, 1), Var(12, []byte{0, 0, 0x0e, 0x10})}}}}}}
	if !reflect.DeepEqual(sa, wantSA) {
		t.Fatalf("SA %+v\nwant %+v", sa, wantSA)
	}
	if a, ok := tr.Get(12); !ok {
		t.Fatal("no life duration")
	} else if v, _ := a.Uint(); v != 3600 {
		t.Fatalf("life %d", v)
	}
	if v := ps[1].(*VendorID); !bytes.Equal(v.Data, h2b(t, "4a131c81070358455c5728f20e95452f")) {
		t.Fatalf("VID %x", v.Data)
	}
	n := ps[2].(*Notify)
	if n.Kind != InitialContact || n.Protocol != ProtoISAKMP || len(n.SPI) != 0 || n.Kind.String() != "INITIAL_CONTACT" {
		t.Fatalf("notify %+v", n)
	}
	// And the encoder reproduces the octets.
	if got := Encode(h, ps); !bytes.Equal(got, b) {
		t.Fatalf("re-encoded\n%x\nwant\n%x", got, b)
	}
}

func TestRoundTrip(t *testing.T) {
	cases := []Payload{
		&SA{DOI: 1, Situation: 1, Proposals: []Proposal{
			{Num: 1, Protocol: ProtoESP, SPI: []byte{1, 2, 3, 4}, Transforms: []Transform{
				{Num: 1, ID: 12, Attrs: []Attr{Basic(6, 128), Basic(5, 2), Basic(4, 3), Basic(1, 1), Uint(2, 1200)}},
				{Num: 2, ID: 20, Attrs: []Attr{Basic(6, 256), Uint(2, 86400*10), Basic(3, 14)}}}},
			{Num: 2, Protocol: ProtoAH, SPI: []byte{5, 6, 7, 8}, Transforms: []Transform{{Num: 1, ID: 3, Attrs: []Attr{Basic(5, 2)}}}},
		}},
		&KE{Data: bytes.Repeat([]byte{0xab}, 256)},
		&Nonce{Data: []byte("0123456789abcdef0123456789abcdef")},
		&Hash{Data: bytes.Repeat([]byte{1}, 20)},
		&Sig{Data: []byte{9, 9}},
		&VendorID{Data: []byte{0xaf, 0xca}},
		&ID{IDType: IDIPv4Subnet, Protocol: 17, Port: 500, Data: []byte{10, 1, 0, 0, 255, 255, 255, 0}},
		&ID{IDType: IDFQDN, Data: []byte("left.gosec.test")},
		&Cert{Encoding: 4, Data: []byte{0x30, 0}},
		&CertReq{Encoding: 4},
		&Notify{DOI: 1, Protocol: ProtoESP, Kind: NoProposalChosen, SPI: []byte{1, 2, 3, 4}, Data: []byte{7}},
		&Notify{DOI: 1, Protocol: ProtoISAKMP, Kind: RUThere, SPI: bytes.Repeat([]byte{3}, 16), Data: []byte{0, 0, 0, 1}},
		&Delete{DOI: 1, Protocol: ProtoESP, SPISize: 4, SPIs: [][]byte{{1, 2, 3, 4}, {5, 6, 7, 8}}},
		&Delete{DOI: 1, Protocol: ProtoISAKMP, SPISize: 16, SPIs: [][]byte{bytes.Repeat([]byte{1}, 16)}},
		&NATD{Hash: bytes.Repeat([]byte{2}, 20)},
		&NATD{Draft: true, Hash: bytes.Repeat([]byte{2}, 20)},
		&NATOA{IDType: 1, Addr: []byte{192, 0, 2, 1}},
		&Unknown{T: 200, Data: []byte("x")},
	}
	for _, p := range cases {
		h := Header{ICookie: [8]byte{1}, RCookie: [8]byte{2}, Version: 0x10, Exchange: ExchQuick, Flags: FlagCommit, MessageID: 7}
		msg := Encode(h, []Payload{p, &VendorID{Data: []byte("tail")}})
		hh, err := ParseHeader(msg)
		if err != nil {
			t.Fatal(err)
		}
		ps, _, err := DecodeAll(hh.Next, msg[HeaderLen:])
		if err != nil {
			t.Fatalf("%T: %v", p, err)
		}
		if err := Validate(p); err != nil {
			t.Errorf("%T: %v", p, err)
		}
		if !reflect.DeepEqual(ps[0], p) {
			t.Fatalf("%T round trip:\n%s\n%s", p, dump(ps[:1]), dump([]Payload{p}))
		}
		if ps[1].(*VendorID).Data == nil || string(ps[1].(*VendorID).Data) != "tail" {
			t.Fatalf("%T: the payload after it decoded as %+v", p, ps[1])
		}
	}
}

func TestMalformed(t *testing.T) {
	good := h2b(t, mm1)
	set := func(off int, v ...byte) []byte {
		b := append([]byte(nil), good...)
		copy(b[off:], v)
		return b
	}
	// Offsets in mm1: header 0-27, SA generic header 28, DOI 32,
	// situation 36, proposal header 40 (length 42, SPI size 46,
	// transform count 47), transform header 48 (length 50), attributes
	// from 56 (life duration TLV header at 80, its length at 82), VID at
	// 88, notify at 108 (SPI size 117).
	cases := []struct {
		name string
		b    []byte
		want error
	}{
		{"short header", good[:27], ErrTruncated},
		{"empty", nil, ErrTruncated},
		{"length past datagram", set(24, 0, 0, 0, 0x79), ErrLength},
		{"length below header", set(24, 0, 0, 0, 27), ErrLength},
		{"major version 2", set(17, 0x20), ErrVersion},
		{"major version 0", set(17, 0x00), ErrVersion},
		{"payload length 3", set(28+2, 0, 3), ErrLength},
		{"payload length 0", set(28+2, 0, 0), ErrLength},
		{"payload past end", set(28+2, 0, 0x5d), ErrTruncated},
		{"chain runs past the message", set(108, 13), ErrTruncated},
		{"proposal length short", set(42, 0, 0x2f), ErrLength},
		{"proposal length long", set(42, 0, 0x31), ErrTruncated},
		{"proposal next is not a proposal", set(40, 3), ErrTruncated},
		{"transform count 2", set(47, 2), ErrLength},
		{"transform count 0 with a transform", set(47, 0), ErrLength},
		{"SPI size past proposal", set(46, 0x40), ErrLength},
		{"transform length short", set(50, 0, 0x27), ErrLength},
		{"transform of 3 octets", set(50, 0, 3), ErrLength},
		{"payload of type KE inside a proposal", set(48, 4), ErrTruncated},
		{"attribute past end", set(82, 0, 0x10), ErrTruncated},
		{"notify SPI past end", set(117, 9), ErrLength},
		{"SA of DOI 2", set(32, 0, 0, 0, 2), ErrUnsupported},
		{"SA with SIT_SECRECY", set(36, 0, 0, 0, 3), ErrUnsupported},
	}
	for _, c := range cases {
		h, err := ParseHeader(c.b)
		if err == nil {
			_, _, err = DecodeAll(h.Next, c.b[HeaderLen:h.Length])
		}
		if !errors.Is(err, c.want) {
			t.Errorf("%s: error %v, want %v", c.name, err, c.want)
		}
	}
	// One payload at a time, bodies written from RFC 2408 3.14/3.15,
	// RFC 2407 4.6.2 and RFC 3947 5.2.
	bodies := []struct {
		name string
		t    PayloadType
		body string
	}{
		{"delete count 2, 1 SPI", PayloadDelete, "00000001 03 04 0002 01020304"},
		{"delete count 1, 2 SPIs", PayloadDelete, "00000001 03 04 0001 01020304 05060708"},
		{"delete SPI size 0 with a count", PayloadDelete, "00000001 03 00 0001"},
		{"delete short", PayloadDelete, "00000001 03 04 00"},
		{"notify short", PayloadNotify, "00000001 01 00 60"},
		{"notify SPI size past end", PayloadNotify, "00000001 03 04 000e 010203"},
		{"ID short", PayloadID, "01 11 01"},
		{"ID IPv4 address of 3 octets", PayloadID, "01 00 0000 c00002"},
		{"ID IPv4 subnet of 4 octets", PayloadID, "04 00 0000 0a000000"},
		{"ID IPv6 address of 4 octets", PayloadID, "05 00 0000 0a000000"},
		{"NAT-OA short", PayloadNATOA, "01 00 00"},
		{"NAT-OA IPv4 of 16 octets", PayloadNATOA, "01 000000 00000000000000000000000000000001"},
		{"NAT-OA FQDN", PayloadNATOADraft, "02 000000 61"},
		{"cert without encoding", PayloadCert, ""},
		{"SA short", PayloadSA, "00000001 000000"},
		{"SA trailing octets", PayloadSA, "00000001 00000001 00 00 0008 01 01 00 00 ff"},
		{"attribute header cut", PayloadSA, "00000001 00000001 00 00 0012 01 01 00 01 00 00 000a 01 01 0000 8001"},
		{"TLV attribute past transform", PayloadSA, "00000001 00000001 00 00 0014 01 01 00 01 00 00 000c 01 01 0000 000c 0004"},
	}
	for _, c := range bodies {
		if p, err := Decode(RawPayload{Type: c.t, Body: h2b(t, c.body)}); err == nil {
			t.Errorf("%s: accepted as %+v", c.name, p)
		}
	}
	// More than MaxPayloads.
	var chain []byte
	for i := 0; i < MaxPayloads+1; i++ {
		next := byte(PayloadVendorID)
		if i == MaxPayloads {
			next = 0
		}
		chain = append(chain, next, 0, 0, 4)
	}
	if _, _, err := SplitPayloads(PayloadVendorID, chain); !errors.Is(err, ErrTooMany) {
		t.Errorf("65 payloads: %v", err)
	}
	if ps, _, err := SplitPayloads(PayloadVendorID, chain[4:]); err != nil || len(ps) != MaxPayloads {
		t.Errorf("64 payloads: %d, %v", len(ps), err)
	}
}

func TestSplitPayloads(t *testing.T) {
	// A decrypted Quick Mode body: HASH(3), then CBC padding (RFC 2409
	// 5.3: padding may be anything, its last octet need not be a count).
	b := h2b(t, `
		00 00 0018 0102030405060708090a0b0c0d0e0f1011121314   # HASH, last payload
		00 00 00 00 00 00 00 07                               # padding`)
	ps, end, err := SplitPayloads(PayloadHash, b)
	if err != nil || len(ps) != 1 || end != 24 || ps[0].Off != 0 || len(ps[0].Body) != 20 || ps[0].Body[0] != 1 {
		t.Fatalf("padded chain: %+v %d %v", ps, end, err)
	}
	// A payload type this package does not know is kept (RFC 2408 5.1)
	// with its offset, and the chain goes on past it.
	b = h2b(t, `
		0d 77 0006 abcd     # type 200 (private use), reserved octet 0x77 ignored
		00 00 0008 01020304 # VID`)
	ps, end, err = SplitPayloads(200, b)
	if err != nil || len(ps) != 2 || end != 14 || ps[1].Type != PayloadVendorID || ps[1].Off != 6 {
		t.Fatalf("unknown type chain: %+v %d %v", ps, end, err)
	}
	p, err := Decode(ps[0])
	if u, ok := p.(*Unknown); err != nil || !ok || u.T != 200 || !bytes.Equal(u.Data, []byte{0xab, 0xcd}) {
		t.Fatalf("unknown payload decoded as %+v, %v", p, err)
	}
	// Body aliases the input.
	b[4] = 0xee
	if ps[0].Body[0] != 0xee {
		t.Fatal("RawPayload.Body does not alias the input")
	}
	// An empty chain.
	if ps, end, err := SplitPayloads(PayloadNone, []byte{1, 2, 3}); err != nil || len(ps) != 0 || end != 0 {
		t.Fatalf("empty chain: %v %d %v", ps, end, err)
	}
}

func TestHeader(t *testing.T) {
	// RFC 2408 3.1 layout, octet by octet.
	b := h2b(t, `
		1122334455667788 99aabbccddeeff00   # initiator, responder cookie
		08                                  # next payload HASH
		10                                  # major 1, minor 0
		20                                  # Quick Mode
		03                                  # E and C flags
		7c21f538                            # message ID
		00000024                            # length 36
		00 00 0008 deadbeef                 # HASH
		ffff                                # octets after Length: ignored`)
	h, err := ParseHeader(b)
	if err != nil {
		t.Fatal(err)
	}
	want := Header{ICookie: [8]byte{0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88},
		RCookie: [8]byte{0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0xff, 0}, Next: PayloadHash, Version: 0x10,
		Exchange: ExchQuick, Flags: FlagEncryption | FlagCommit, MessageID: 0x7c21f538, Length: 36}
	if h != want {
		t.Fatalf("header %+v\nwant %+v", h, want)
	}
	out := make([]byte, HeaderLen)
	h.Put(out)
	if !bytes.Equal(out, b[:HeaderLen]) {
		t.Fatalf("Put: %x", out)
	}
	if got := Encode(h, []Payload{&Hash{Data: []byte{0xde, 0xad, 0xbe, 0xef}}}); !bytes.Equal(got, b[:36]) {
		t.Fatalf("Encode: %x", got)
	}
	// Minor versions are accepted (RFC 2408 3.1 leaves them to the
	// implementation; strongSwan and Linux racoon ignore them).
	b[17] = 0x11
	if _, err := ParseHeader(b); err != nil {
		t.Fatal(err)
	}
	// Names for logs.
	for _, c := range []struct{ got, want string }{
		{ExchMain.String(), "ID_PROT"}, {ExchQuick.String(), "QUICK_MODE"}, {ExchangeType(6).String(), "EXCHANGE_6"},
		{PayloadNATD.String(), "NAT-D"}, {PayloadType(99).String(), "PAYLOAD_99"},
		{ProtoESP.String(), "ESP"}, {ProtocolID(9).String(), "PROTO_9"},
		{NoProposalChosen.String(), "NO_PROPOSAL_CHOSEN"}, {NotifyType(40000).String(), "NOTIFY_40000"},
	} {
		if c.got != c.want {
			t.Errorf("name %q, want %q", c.got, c.want)
		}
	}
}

// FuzzDecode: no input panics; whatever decodes passes Validate and
// re-encodes to a message that decodes to the same values.
func FuzzDecode(f *testing.F) {
	f.Add(h2b(f, mm1))
	for _, m := range readPcap(f) {
		f.Add(m.msg)
	}
	f.Add(Encode(Header{Version: 0x10, Exchange: ExchQuick}, []Payload{&Hash{Data: make([]byte, 20)},
		&SA{DOI: 1, Situation: 1, Proposals: []Proposal{{Num: 1, Protocol: ProtoESP, SPI: []byte{1, 2, 3, 4},
			Transforms: []Transform{{Num: 1, ID: 12, Attrs: []Attr{Basic(6, 128), Uint(2, 100000), Var(9, nil)}}}}}},
		&ID{IDType: IDIPv4Subnet, Protocol: 17, Port: 500, Data: []byte{10, 0, 0, 0, 255, 0, 0, 0}},
		&Notify{DOI: 1, Protocol: ProtoESP, Kind: RUThere, SPI: []byte{1, 2, 3, 4}, Data: []byte{0, 0, 0, 9}},
		&Delete{DOI: 1, Protocol: ProtoESP, SPISize: 4, SPIs: [][]byte{{1, 2, 3, 4}}}, &NATOA{IDType: 1, Addr: []byte{1, 2, 3, 4}},
		&Cert{Encoding: 4, Data: []byte{0x30}}, &Unknown{T: 200, Data: []byte{1}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			return
		}
		ps, raws, err := DecodeAll(h.Next, b[HeaderLen:h.Length])
		if err != nil {
			return
		}
		for i, p := range ps {
			if err := Validate(p); err != nil {
				t.Fatalf("decoded payload %d does not validate: %v", i, err)
			}
			if p.Type() != raws[i].Type {
				t.Fatalf("payload %d decoded as %s from %s", i, p.Type(), raws[i].Type)
			}
		}
		again := Encode(h, ps)
		h2, err := ParseHeader(again)
		if err != nil {
			t.Fatalf("re-encoded header: %v", err)
		}
		ps2, _, err := DecodeAll(h2.Next, again[HeaderLen:])
		if err != nil {
			t.Fatalf("re-encoded message does not decode: %v", err)
		}
		h.Length, h2.Length = 0, 0
		if len(ps) == 0 {
			h.Next = PayloadNone // Encode derives Next from the payloads
		}
		if h != h2 {
			t.Fatalf("header %+v, then %+v", h, h2)
		}
		if !reflect.DeepEqual(ps, ps2) {
			t.Fatalf("payloads changed:\n%s\n%s", dump(ps), dump(ps2))
		}
		// The encoding is canonical: a second round is octet for octet
		// the first.
		if third := Encode(h2, ps2); !bytes.Equal(third, again) {
			t.Fatalf("encoding not deterministic:\n%x\n%x", again, third)
		}
	})
}

func dump(ps []Payload) string {
	var b strings.Builder
	for _, p := range ps {
		fmt.Fprintf(&b, "%T%+v\n", p, p)
	}
	return b.String()
}

// TestManyTransforms: phase-1 proposals of strongSwan's default cipher
// list carry far more than 64 transforms; the 64-payload bound is for
// the message chain only, a proposal may hold up to its count field's
// 255.
func TestManyTransforms(t *testing.T) {
	mk := func(n int) *SA {
		pr := Proposal{Num: 1, Protocol: ProtoISAKMP}
		for i := 0; i < n; i++ {
			pr.Transforms = append(pr.Transforms, Transform{Num: uint8(i + 1), ID: TransformKeyIKE,
				Attrs: []Attr{Basic(AttrEncryption, EncrAES), Basic(AttrKeyLength, 256)}})
		}
		return &SA{DOI: DOIIPsec, Situation: SitIdentityOnly, Proposals: []Proposal{pr}}
	}
	sa := mk(200)
	p, err := Decode(RawPayload{Type: PayloadSA, Body: EncodeBody(sa)})
	if err != nil || !reflect.DeepEqual(p, sa) {
		t.Fatalf("200 transforms: %v", err)
	}
	// 256 transforms cannot be described: the count octet wraps to 0.
	if err := Validate(mk(256)); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Validate of 256 transforms: %v", err)
	}
	if _, err := Decode(RawPayload{Type: PayloadSA, Body: EncodeBody(mk(256))}); err == nil {
		t.Fatal("256 transforms with a count of 0 decoded")
	}
}

func TestValidate(t *testing.T) {
	big := make([]byte, 0x10000)
	bad := []Payload{
		&SA{Proposals: []Proposal{{SPI: make([]byte, 256)}}},
		&SA{Proposals: []Proposal{{Transforms: []Transform{{Attrs: []Attr{Basic(0x8001, 1)}}}}}},
		&SA{Proposals: []Proposal{{Transforms: []Transform{{Attrs: []Attr{Var(1, big)}}}}}},
		&Notify{SPI: make([]byte, 256)},
		&Delete{SPISize: 4, SPIs: [][]byte{{1, 2, 3}}},
		&Delete{SPISize: 0, SPIs: [][]byte{{}}},
		&Delete{SPISize: 1, SPIs: make([][]byte, 0x10000)},
		&ID{IDType: IDIPv6Subnet, Data: make([]byte, 16)},
		&NATOA{IDType: IDIPv6Addr, Addr: make([]byte, 4)},
		&Unknown{T: PayloadNone},
		&KE{Data: big},
		nil,
	}
	for _, p := range bad {
		if err := Validate(p); !errors.Is(err, ErrInvalid) {
			t.Errorf("Validate(%T %.60v) = %v", p, p, err)
		}
	}
	good := []Payload{
		&KE{Data: make([]byte, 0xffff-4)},
		&Delete{DOI: 1, Protocol: ProtoESP, SPISize: 4},
		&NATOA{IDType: IDIPv6Addr, Addr: make([]byte, 16)},
		&ID{IDType: IDKeyID, Data: []byte("anything")},
	}
	for _, p := range good {
		if err := Validate(p); err != nil {
			t.Errorf("Validate(%T): %v", p, err)
		}
	}
	// Notify types below 8192 are errors (RFC 2408 3.14.1).
	if !PayloadMalformed.Error() || InitialContact.Error() || RUThere.Error() {
		t.Error("NotifyType.Error")
	}
}
