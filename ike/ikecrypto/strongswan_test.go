package ikecrypto

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"net/netip"
	"os"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// This file replays testdata/mm-aes128.pcap, a real strongSwan 5.9.8 <->
// strongSwan 5.9.8 IKEv1 exchange (Main Mode PSK, AES-128-CBC, SHA-1,
// MODP2048, NAT-T float to 4500, Quick Mode ESP AES-128/HMAC-SHA1-96, no
// PFS), against testdata/mm-aes128.keys, strongSwan's own level-4 key log.
// Every expected value comes from the capture or from strongSwan's log.

const interopPSK = "gosec-interop-psk"

// ssMsg is one ISAKMP message of the capture with its UDP addressing.
type ssMsg struct {
	src, dst netip.AddrPort
	b        []byte // ISAKMP header onwards (non-ESP marker removed)
}

func readCapture(t *testing.T) []ssMsg {
	t.Helper()
	f, err := os.Open("testdata/mm-aes128.pcap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	var out []ssMsg
	for {
		data, _, err := r.ReadPacketData()
		if err != nil {
			break
		}
		p := gopacket.NewPacket(data, r.LinkType(), gopacket.Default)
		ip, ok := p.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		if !ok {
			continue
		}
		u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok {
			continue
		}
		b := u.LayerPayload()
		switch {
		case u.SrcPort == 500 || u.DstPort == 500:
		case (u.SrcPort == 4500 || u.DstPort == 4500) && len(b) >= 4 && binary.BigEndian.Uint32(b) == 0:
			b = b[4:] // non-ESP marker, RFC 3948 2.2
		default:
			continue
		}
		s, _ := netip.AddrFromSlice(ip.SrcIP.To4())
		d, _ := netip.AddrFromSlice(ip.DstIP.To4())
		out = append(out, ssMsg{
			src: netip.AddrPortFrom(s, uint16(u.SrcPort)),
			dst: netip.AddrPortFrom(d, uint16(u.DstPort)),
			b:   append([]byte(nil), b...),
		})
	}
	if len(out) != 9 {
		t.Fatalf("capture has %d ISAKMP messages, want 9 (MM1-6, QM1-3)", len(out))
	}
	return out
}

func readKeys(t *testing.T) map[string][]byte {
	t.Helper()
	f, err := os.Open("testdata/mm-aes128.keys")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m := map[string][]byte{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		b, err := hex.DecodeString(strings.TrimPrefix(v, "0x"))
		if err != nil {
			continue // e.g. esp_proposal
		}
		m[k] = b
	}
	return m
}

// payload is one payload of a message body: its type and body (after the
// 4-octet generic header), and the offset just past it.
type payload struct {
	typ  uint8
	body []byte
	end  int
}

// walk parses the payload chain of b (first payload type first); it stops at
// next payload 0 and ignores anything after (padding).
func walk(t *testing.T, first uint8, b []byte) []payload {
	t.Helper()
	var out []payload
	off := 0
	for typ := first; typ != 0; {
		if off+4 > len(b) {
			t.Fatalf("truncated payload chain at %d", off)
		}
		l := int(binary.BigEndian.Uint16(b[off+2:]))
		if l < 4 || off+l > len(b) {
			t.Fatalf("bad payload length %d at %d", l, off)
		}
		out = append(out, payload{typ, b[off+4 : off+l], off + l})
		typ = b[off]
		off += l
	}
	return out
}

func find(t *testing.T, ps []payload, typ uint8) []payload {
	t.Helper()
	var out []payload
	for _, p := range ps {
		if p.typ == typ {
			out = append(out, p)
		}
	}
	if len(out) == 0 {
		t.Fatalf("no payload of type %d", typ)
	}
	return out
}

const (
	plSA    = 1
	plKE    = 4
	plID    = 5
	plHash  = 8
	plNonce = 10
	plNATD  = 20
)

func eq(t *testing.T, name string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		t.Errorf("%s:\n got  %x\n want %x", name, got, want)
	}
}

// decryptMsg decrypts the body of an encrypted message with iv and returns
// the plaintext and the last ciphertext block (the next IV in the chain).
func decryptMsg(t *testing.T, c *CBC, iv []byte, m []byte) (plain, last []byte) {
	t.Helper()
	if m[19]&1 == 0 {
		t.Fatal("message is not encrypted")
	}
	ct := m[28:binary.BigEndian.Uint32(m[24:])]
	last = append([]byte(nil), ct[len(ct)-c.BlockSize():]...)
	plain = append([]byte(nil), ct...)
	if err := c.Decrypt(iv, plain); err != nil {
		t.Fatal(err)
	}
	return plain, last
}

func TestStrongSwanExchange(t *testing.T) {
	msgs := readCapture(t)
	keys := readKeys(t)
	h := HashSHA1
	mm1, mm3, mm4 := msgs[0].b, msgs[2].b, msgs[3].b
	ckyI, ckyR := mm3[0:8], mm3[8:16]
	eq(t, "CKY-I", ckyI, keys["ike_initiator_cookie"])

	saiB := find(t, walk(t, mm1[16], mm1[28:]), plSA)[0].body
	p3, p4 := walk(t, mm3[16], mm3[28:]), walk(t, mm4[16], mm4[28:])
	gxi, gxr := find(t, p3, plKE)[0].body, find(t, p4, plKE)[0].body
	ni, nr := find(t, p3, plNonce)[0].body, find(t, p4, plNonce)[0].body
	if len(gxi) != Group(14).PublicLen() || len(gxr) != Group(14).PublicLen() {
		t.Fatalf("KE lengths %d/%d, want 256 (modp2048)", len(gxi), len(gxr))
	}
	gxy := keys["ike_dh_shared_secret_gxy"]

	k := DerivePSK(h, []byte(interopPSK), ni, nr, gxy, ckyI, ckyR, 16)
	eq(t, "SKEYID", k.SKEYID, keys["ike_SKEYID"])
	eq(t, "SKEYID_d", k.D, keys["ike_SKEYID_d"])
	eq(t, "SKEYID_a", k.A, keys["ike_SKEYID_a"])
	eq(t, "SKEYID_e", k.E, keys["ike_SKEYID_e"])
	eq(t, "Ka", k.Key, keys["ike_encryption_key_Ka"])
	iv := Phase1IV(h, gxi, gxr, 16)
	eq(t, "initial IV", iv, keys["ike_initial_IV"])
	c, err := NewCBC(CipherAES, k.Key)
	if err != nil {
		t.Fatal(err)
	}

	// MM5: IDii + HASH_I, IV = Phase1IV.
	mm5 := msgs[4].b
	plain5, last5 := decryptMsg(t, c, iv, mm5)
	ps5 := walk(t, mm5[16], plain5)
	idii := find(t, ps5, plID)[0].body
	hashI := HashI(h, k.SKEYID, gxi, gxr, ckyI, ckyR, saiB, idii)
	eq(t, "HASH_I (log)", hashI, keys["ike_HASH_I"])
	eq(t, "HASH_I (MM5)", find(t, ps5, plHash)[0].body, hashI)
	checkPadding(t, "MM5", plain5, ps5[len(ps5)-1].end)

	// MM6: IDir + HASH_R, IV = last ciphertext block of MM5.
	mm6 := msgs[5].b
	plain6, last6 := decryptMsg(t, c, last5, mm6)
	ps6 := walk(t, mm6[16], plain6)
	idir := find(t, ps6, plID)[0].body
	hashR := HashR(h, k.SKEYID, gxi, gxr, ckyI, ckyR, saiB, idir)
	eq(t, "HASH_R (log)", hashR, keys["ike_HASH_R"])
	eq(t, "HASH_R (MM6)", find(t, ps6, plHash)[0].body, hashR)
	checkPadding(t, "MM6", plain6, ps6[len(ps6)-1].end)

	// Quick Mode: first IV = hash(last phase-1 block | M-ID); then chained.
	qm1, qm2, qm3 := msgs[6].b, msgs[7].b, msgs[8].b
	mid := binary.BigEndian.Uint32(qm1[20:])
	if mid == 0 || binary.BigEndian.Uint32(qm2[20:]) != mid || binary.BigEndian.Uint32(qm3[20:]) != mid {
		t.Fatal("Quick Mode message IDs differ or are zero")
	}
	plainQ1, lastQ1 := decryptMsg(t, c, PhaseIV(h, last6, mid, 16), qm1)
	plainQ2, lastQ2 := decryptMsg(t, c, lastQ1, qm2)
	plainQ3, _ := decryptMsg(t, c, lastQ2, qm3)
	psQ1, psQ2, psQ3 := walk(t, qm1[16], plainQ1), walk(t, qm2[16], plainQ2), walk(t, qm3[16], plainQ3)
	for i, ps := range [][]payload{psQ1, psQ2, psQ3} {
		if ps[0].typ != plHash {
			t.Fatalf("QM%d: first payload %d, want HASH", i+1, ps[0].typ)
		}
	}
	if len(find(t, psQ1, plSA)) != 1 {
		t.Fatal("QM1: want one SA")
	}
	for _, ps := range [][]payload{psQ1, psQ2} {
		for _, p := range ps {
			if p.typ == plKE {
				t.Fatal("capture uses PFS; this test assumes none")
			}
		}
	}
	niQ, nrQ := find(t, psQ1, plNonce)[0].body, find(t, psQ2, plNonce)[0].body
	restQ1 := plainQ1[psQ1[0].end:psQ1[len(psQ1)-1].end]
	restQ2 := plainQ2[psQ2[0].end:psQ2[len(psQ2)-1].end]
	eq(t, "HASH(1)", psQ1[0].body, QMHash1(h, k.A, mid, restQ1))
	eq(t, "HASH(2)", psQ2[0].body, QMHash2(h, k.A, mid, niQ, restQ2))
	eq(t, "HASH(3)", psQ3[0].body, QMHash3(h, k.A, mid, niQ, nrQ))
	if len(psQ3) != 1 {
		t.Errorf("QM3 has %d payloads, want HASH only", len(psQ3))
	}
	checkPadding(t, "QM1", plainQ1, psQ1[len(psQ1)-1].end)
	checkPadding(t, "QM2", plainQ2, psQ2[len(psQ2)-1].end)
	checkPadding(t, "QM3", plainQ3, psQ3[len(psQ3)-1].end)

	// SPIs: SA body = DOI(4) Situation(4) Proposal{generic(4) #, proto,
	// spisize, #transforms, SPI}. The initiator's SPI (QM1) is the one the
	// initiator (left) receives on: right->left; the responder's is
	// left->right.
	spiOf := func(ps []payload) []byte {
		sa := find(t, ps, plSA)[0].body
		if len(sa) < 16 || sa[8+5] != 3 || sa[8+6] != 4 || len(sa) < 16+4 {
			t.Fatalf("unexpected proposal: %x", sa)
		}
		return sa[16:20]
	}
	spiL, spiR := spiOf(psQ1), spiOf(psQ2)
	eq(t, "SPI right->left", spiL, keys["esp_spi_right_to_left"])
	eq(t, "SPI left->right", spiR, keys["esp_spi_left_to_right"])
	for _, tc := range []struct {
		name string
		spi  []byte
		dir  string
	}{{"left->right", spiR, "left_to_right"}, {"right->left", spiL, "right_to_left"}} {
		km := Keymat(h, k.D, nil, 3, tc.spi, niQ, nrQ, 16+20)
		eq(t, "ESP enc key "+tc.name, km[:16], keys["esp_enc_key_"+tc.dir])
		eq(t, "ESP auth key "+tc.name, km[16:], keys["esp_auth_key_"+tc.dir])
	}
}

// checkPadding asserts strongSwan's phase-1 encryption padding as observed
// in this capture: 1..block zero octets (a block-aligned plaintext gets a
// whole block of padding; the last octet is zero, not a pad count), which
// is exactly what Pad produces.
func checkPadding(t *testing.T, name string, plain []byte, end int) {
	t.Helper()
	pad := plain[end:]
	t.Logf("%s padding (%d octets): %x", name, len(pad), pad)
	if len(pad) < 1 || len(pad) > 16 || !bytes.Equal(pad, make([]byte, len(pad))) {
		t.Errorf("%s: padding %x, want 1..16 zero octets", name, pad)
	}
	eq(t, name+" Pad()", Pad(plain[:end], 16), plain)
}

// TestStrongSwanNATD checks the NAT-D payloads of MM3/MM4 (RFC 3947 3.2:
// the first hashes the destination address/port, the following the
// source) against NATD() of the packets' real addresses.
func TestStrongSwanNATD(t *testing.T) {
	msgs := readCapture(t)
	for i, m := range msgs[2:4] {
		ps := walk(t, m.b[16], m.b[28:])
		nd := find(t, ps, plNATD)
		if len(nd) != 2 {
			t.Fatalf("MM%d: %d NAT-D payloads, want 2", i+3, len(nd))
		}
		ckyI, ckyR := m.b[0:8], m.b[8:16]
		dst := NATD(HashSHA1, ckyI, ckyR, m.dst.Addr(), m.dst.Port())
		src := NATD(HashSHA1, ckyI, ckyR, m.src.Addr(), m.src.Port())
		// strongSwan (kernel-libipsec needs UDP encapsulation) fakes the
		// hash of its OWN address (the second, source NAT-D) in both roles,
		// so each peer concludes "the other end is behind NAT"; the hash of
		// the peer's address (first NAT-D) is honest.
		if !bytes.Equal(nd[0].body, dst) {
			t.Errorf("MM%d: NAT-D(dst %v) = %x, want %x", i+3, m.dst, nd[0].body, dst)
		}
		if bytes.Equal(nd[1].body, src) {
			t.Errorf("MM%d: NAT-D(src %v) matches the real address; strongSwan is expected to fake it", i+3, m.src)
		}
	}
}
