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
		if !reflect.DeepEqual(normalize(ps[0]), normalize(p)) {
			t.Fatalf("%T round trip:\n%+v\n%+v", p, ps[0], p)
		}
	}
}

// normalize maps nil and empty slices together for comparison.
func normalize(p Payload) string {
	return strings.ReplaceAll(strings.ReplaceAll(fmtPayload(p), "[]", "<nil>"), "<nil>", "-")
}

func fmtPayload(p Payload) string { return strings.TrimSpace(strings.ReplaceAll(sprint(p), "  ", " ")) }

func TestMalformed(t *testing.T) {
	good := h2b(t, mm1)
	set := func(off int, v ...byte) []byte {
		b := append([]byte(nil), good...)
		copy(b[off:], v)
		return b
	}
	cases := map[string][]byte{
		"short header":           good[:27],
		"length past datagram":   set(24, 0, 0, 0, 0x79),
		"length below header":    set(24, 0, 0, 0, 27),
		"major version 2":        set(17, 0x20),
		"payload length 3":       set(28+2, 0, 3),
		"payload past end":       set(28+2, 0, 0x50),
		"proposal length short":  set(42, 0, 0x2f),
		"transform count 2":      set(47, 2),
		"SPI size past proposal": set(46, 0x40),
		"attribute past end":     set(82, 0, 0x10),
		"notify SPI past end":    set(117, 9),
	}
	for name, b := range cases {
		h, err := ParseHeader(b)
		if err == nil {
			_, _, err = DecodeAll(h.Next, b[HeaderLen:h.Length])
		}
		if err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	// Delete whose count does not match its octets.
	d := h2b(t, "00000001 03 04 0002 01020304")
	if _, err := Decode(RawPayload{Type: PayloadDelete, Body: d}); err == nil {
		t.Error("delete with 2 SPIs in 4 octets accepted")
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
	// Padding after the last payload (decrypted messages) is fine.
	padded := append(h2b(t, "00 00 0008 01020304"), 0, 0, 0, 7)
	if ps, end, err := SplitPayloads(PayloadHash, padded); err != nil || len(ps) != 1 || end != 8 {
		t.Errorf("padded chain: %v %d %v", ps, end, err)
	}
}

// FuzzDecode: no input panics; whatever decodes re-encodes to a message
// that decodes to the same payloads.
func FuzzDecode(f *testing.F) {
	f.Add(h2b(f, mm1))
	f.Add(Encode(Header{Version: 0x10, Exchange: ExchQuick}, []Payload{&Hash{Data: make([]byte, 20)},
		&SA{DOI: 1, Situation: 1, Proposals: []Proposal{{Num: 1, Protocol: ProtoESP, SPI: []byte{1, 2, 3, 4},
			Transforms: []Transform{{Num: 1, ID: 12, Attrs: []Attr{Basic(6, 128), Uint(2, 100000)}}}}}},
		&Delete{DOI: 1, Protocol: ProtoESP, SPISize: 4, SPIs: [][]byte{{1, 2, 3, 4}}}, &NATOA{IDType: 1, Addr: []byte{1, 2, 3, 4}}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := ParseHeader(b)
		if err != nil {
			return
		}
		ps, _, err := DecodeAll(h.Next, b[HeaderLen:h.Length])
		if err != nil {
			return
		}
		h.Length = 0
		again := Encode(h, ps)
		h2, err := ParseHeader(again)
		if err != nil {
			t.Fatalf("re-encoded header: %v", err)
		}
		ps2, _, err := DecodeAll(h2.Next, again[HeaderLen:])
		if err != nil {
			t.Fatalf("re-encoded message does not decode: %v", err)
		}
		if len(ps2) != len(ps) {
			t.Fatalf("%d payloads, then %d", len(ps), len(ps2))
		}
		for i := range ps {
			if normalize(ps[i]) != normalize(ps2[i]) {
				t.Fatalf("payload %d changed:\n%s\n%s", i, normalize(ps[i]), normalize(ps2[i]))
			}
		}
	})
}

func sprint(p Payload) string { return fmt.Sprintf("%T%+v", p, p) }
