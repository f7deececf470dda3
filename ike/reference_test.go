package ike

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"os"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"

	"github.com/gosec-ipsec/gosec/ike/ikecrypto"
	"github.com/gosec-ipsec/gosec/ike/isakmp"
)

// refMsg is one ISAKMP message of the reference capture.
type refMsg struct {
	fromLeft bool
	b        []byte
}

// readReference returns the ISAKMP messages of testdata/mm-aes128.pcap, a
// real strongSwan 5.9.8 <-> strongSwan Main Mode + Quick Mode exchange
// (AES-128/SHA1/MODP2048, PSK, NAT-T float to 4500), in order.
func readReference(t *testing.T) []refMsg {
	t.Helper()
	f, err := os.Open("testdata/mm-aes128.pcap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions) // tshark writes pcapng
	if err != nil {
		t.Fatal(err)
	}
	var out []refMsg
	for {
		data, _, err := r.ReadPacketData()
		if err != nil {
			break
		}
		pkt := gopacket.NewPacket(data, r.LinkType(), gopacket.Default)
		ip, _ := pkt.Layer(layers.LayerTypeIPv4).(*layers.IPv4)
		udp, _ := pkt.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if ip == nil || udp == nil {
			continue
		}
		payload := udp.Payload
		switch {
		case udp.DstPort == 500:
		case udp.DstPort == 4500 && len(payload) > 4 && bytes.Equal(payload[:4], []byte{0, 0, 0, 0}):
			payload = payload[4:] // non-ESP marker
		default:
			continue
		}
		out = append(out, refMsg{fromLeft: ip.SrcIP.String() == "192.0.2.1", b: payload})
	}
	return out
}

// readKeys parses testdata/mm-aes128.keys (name=hex lines from strongSwan's
// own log of the exchange).
func readKeys(t *testing.T) map[string][]byte {
	t.Helper()
	f, err := os.Open("testdata/mm-aes128.keys")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string][]byte{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		k, v, ok := strings.Cut(line, "=")
		if !ok || strings.HasPrefix(line, "#") {
			continue
		}
		b, err := hex.DecodeString(strings.TrimPrefix(v, "0x"))
		if err == nil {
			keys[k] = b
		}
	}
	return keys
}

func mustDecode(t *testing.T, m []byte) (isakmp.Header, []isakmp.Payload, []isakmp.RawPayload) {
	t.Helper()
	h, err := isakmp.ParseHeader(m)
	if err != nil {
		t.Fatal(err)
	}
	ps, raws, err := isakmp.DecodeAll(h.Next, m[isakmp.HeaderLen:h.Length])
	if err != nil {
		t.Fatal(err)
	}
	return h, ps, raws
}

// TestReferenceExchange decodes strongSwan's exchange, derives every key
// from the PSK and the captured values, and checks them against the keys
// strongSwan logged: SKEYID*, the encryption key, the phase-1 IV, HASH_I
// and HASH_R (found inside the decrypted MM5 and MM6), the Quick Mode
// hashes, and both ESP SAs' keys.
func TestReferenceExchange(t *testing.T) {
	msgs := readReference(t)
	keys := readKeys(t)
	if len(msgs) != 9 {
		t.Fatalf("%d ISAKMP messages in the capture, want 9 (MM1-6, QM1-3)", len(msgs))
	}
	const h = ikecrypto.HashSHA1
	psk := []byte("gosec-interop-psk")

	// MM1: the initiator's SA offer; its body is SAi_b.
	h1, ps1, raws1 := mustDecode(t, msgs[0].b)
	if h1.Exchange != isakmp.ExchMain || !msgs[0].fromLeft {
		t.Fatalf("MM1 header %+v", h1)
	}
	sa1, ok := find[*isakmp.SA](ps1)
	if !ok {
		t.Fatal("MM1 has no SA")
	}
	saiBody := rawBody(raws1, isakmp.PayloadSA)
	offer := parseP1Transform(sa1.Proposals[0].Transforms[0])
	want := p1Suite{Cipher: ikecrypto.CipherAES, KeyBits: 128, Hash: ikecrypto.HashSHA1, Group: 14}
	if offer.suite.Cipher != want.Cipher || offer.suite.KeyBits != 128 || offer.suite.Hash != want.Hash || offer.suite.Group != 14 || offer.auth != authPSK {
		t.Fatalf("MM1 transform decoded as %+v", offer)
	}
	// Our selection as responder would accept it, and re-encoding the SA
	// reproduces strongSwan's bytes.
	if _, _, err := selectP1([]p1Suite{{Cipher: ikecrypto.CipherAES, KeyBits: 128, Hash: ikecrypto.HashSHA1, Group: 14, Life: 3600e9}}, sa1); err != nil {
		t.Fatal(err)
	}
	if got := isakmp.EncodeBody(sa1); !bytes.Equal(got, saiBody) {
		t.Fatalf("re-encoded SA differs:\n%x\n%x", got, saiBody)
	}
	var vendorNATT bool
	for _, v := range findAll[*isakmp.VendorID](ps1) {
		if bytes.Equal(v.Data, isakmp.VendorNATT) {
			vendorNATT = true
		}
	}
	if !vendorNATT {
		t.Fatal("MM1 lacks the RFC 3947 vendor ID")
	}

	h2, _, _ := mustDecode(t, msgs[1].b)
	icky, rcky := h2.ICookie[:], h2.RCookie[:]
	if !bytes.Equal(icky, keys["ike_initiator_cookie"]) {
		t.Fatalf("cookie %x, keys file says %x", icky, keys["ike_initiator_cookie"])
	}

	// MM3/MM4: KE and nonces.
	_, ps3, _ := mustDecode(t, msgs[2].b)
	_, ps4, _ := mustDecode(t, msgs[3].b)
	ke3, _ := find[*isakmp.KE](ps3)
	ke4, _ := find[*isakmp.KE](ps4)
	n3, _ := find[*isakmp.Nonce](ps3)
	n4, _ := find[*isakmp.Nonce](ps4)
	gxi, gxr, ni, nr := ke3.Data, ke4.Data, n3.Data, n4.Data
	if len(gxi) != 256 || len(gxr) != 256 || len(ni) != 32 || len(nr) != 32 {
		t.Fatalf("KE/nonce lengths %d %d %d %d", len(gxi), len(gxr), len(ni), len(nr))
	}
	gxy := keys["ike_dh_shared_secret_gxy"]

	k := ikecrypto.DerivePSK(h, psk, ni, nr, gxy, icky, rcky, 16)
	for name, got := range map[string][]byte{"ike_SKEYID": k.SKEYID, "ike_SKEYID_d": k.D, "ike_SKEYID_a": k.A,
		"ike_SKEYID_e": k.E, "ike_encryption_key_Ka": k.Key} {
		if !bytes.Equal(got, keys[name]) {
			t.Errorf("%s = %x, strongSwan %x", name, got, keys[name])
		}
	}
	iv := ikecrypto.Phase1IV(h, gxi, gxr, 16)
	if !bytes.Equal(iv, keys["ike_initial_IV"]) {
		t.Errorf("phase-1 IV %x, strongSwan %x", iv, keys["ike_initial_IV"])
	}
	// NAT-D: strongSwan fakes its own hash to force encapsulation, so the
	// responder's "local" NAT-D must NOT match its real address, while the
	// hash of our (left's) address matches.
	natd4 := findAll[*isakmp.NATD](ps4)
	leftHash := ikecrypto.NATD(h, icky, rcky, addrA, 500)
	rightHash := ikecrypto.NATD(h, icky, rcky, addrB, 500)
	if len(natd4) < 2 || !bytes.Equal(natd4[0].Hash, leftHash) {
		t.Errorf("MM4's first NAT-D is not the hash of 192.0.2.1:500")
	}
	for _, d := range natd4[1:] {
		if bytes.Equal(d.Hash, rightHash) {
			t.Errorf("MM4's NAT-D matches right's real address, expected strongSwan's fake")
		}
	}

	cbc, err := ikecrypto.NewCBC(ikecrypto.CipherAES, k.Key)
	if err != nil {
		t.Fatal(err)
	}
	p := &p1{km: keymat{cbc: cbc}}
	decrypt := func(m []byte, iv []byte) (isakmp.Header, []isakmp.Payload, []isakmp.RawPayload, []byte, []byte) {
		t.Helper()
		hh, err := isakmp.ParseHeader(m)
		if err != nil {
			t.Fatal(err)
		}
		plain, last, err := (&Engine{}).open(p, m[:hh.Length], iv)
		if err != nil {
			t.Fatal(err)
		}
		ps, raws, err := isakmp.DecodeAll(hh.Next, plain)
		if err != nil {
			t.Fatalf("decrypted %s: %v (%x)", hh.Exchange, err, plain)
		}
		return hh, ps, raws, plain, last
	}
	// MM5: IDii and HASH_I.
	_, ps5, raws5, _, last5 := decrypt(msgs[4].b, iv)
	hash5, _ := find[*isakmp.Hash](ps5)
	hashI := ikecrypto.HashI(h, k.SKEYID, gxi, gxr, icky, rcky, saiBody, rawBody(raws5, isakmp.PayloadID))
	if !bytes.Equal(hashI, keys["ike_HASH_I"]) || !bytes.Equal(hash5.Data, hashI) {
		t.Errorf("HASH_I: computed %x, in MM5 %x, strongSwan %x", hashI, hash5.Data, keys["ike_HASH_I"])
	}
	// MM6: chained IV.
	_, ps6, raws6, _, last6 := decrypt(msgs[5].b, last5)
	hash6, _ := find[*isakmp.Hash](ps6)
	hashR := ikecrypto.HashR(h, k.SKEYID, gxi, gxr, icky, rcky, saiBody, rawBody(raws6, isakmp.PayloadID))
	if !bytes.Equal(hashR, keys["ike_HASH_R"]) || !bytes.Equal(hash6.Data, hashR) {
		t.Errorf("HASH_R: computed %x, in MM6 %x, strongSwan %x", hashR, hash6.Data, keys["ike_HASH_R"])
	}

	// Quick Mode: IV from the last phase-1 block and the message ID.
	hq1, _ := isakmp.ParseHeader(msgs[6].b)
	qiv := ikecrypto.PhaseIV(h, last6, hq1.MessageID, 16)
	_, psq1, rawsq1, plain1, lastq1 := decrypt(msgs[6].b, qiv)
	rest := func(plain []byte, raws []isakmp.RawPayload) []byte {
		l := raws[len(raws)-1]
		return plain[raws[0].Off+4+len(raws[0].Body) : l.Off+4+len(l.Body)]
	}
	if got := ikecrypto.QMHash1(h, k.A, hq1.MessageID, rest(plain1, rawsq1)); !bytes.Equal(got, rawsq1[0].Body) {
		t.Errorf("HASH(1) %x, in QM1 %x", got, rawsq1[0].Body)
	}
	_, psq2, rawsq2, plain2, lastq2 := decrypt(msgs[7].b, lastq1)
	qni, _ := find[*isakmp.Nonce](psq1)
	qnr, _ := find[*isakmp.Nonce](psq2)
	if got := ikecrypto.QMHash2(h, k.A, hq1.MessageID, qni.Data, rest(plain2, rawsq2)); !bytes.Equal(got, rawsq2[0].Body) {
		t.Errorf("HASH(2) %x, in QM2 %x", got, rawsq2[0].Body)
	}
	_, _, rawsq3, _, _ := decrypt(msgs[8].b, lastq2)
	if got := ikecrypto.QMHash3(h, k.A, hq1.MessageID, qni.Data, qnr.Data); !bytes.Equal(got, rawsq3[0].Body) {
		t.Errorf("HASH(3) %x, in QM3 %x", got, rawsq3[0].Body)
	}
	// Our Quick Mode selection accepts strongSwan's QM1 offer (ESP
	// AES-128/HMAC-SHA1, UDP-encapsulated tunnel) and QM2's answer.
	sq1, _ := find[*isakmp.SA](psq1)
	sq2, _ := find[*isakmp.SA](psq2)
	ours := []p2Suite{{Proto: ProtoESP, Encr: EncrAESCBC, KeyBits: 128, Integ: IntegSHA1, Life: 1200e9}}
	_, chosen, _, encap, err := selectP2(ours, ModeTunnel, sq1)
	if err != nil || encap != encapUDPTunnel {
		t.Fatalf("selectP2 on strongSwan's QM1: %v, encap %d", err, encap)
	}
	_, spiR, _, err := acceptP2Reply(ours, ModeTunnel, sq2)
	if err != nil {
		t.Fatal(err)
	}
	spiI := be32u(sq1.Proposals[0].SPI)
	// KEYMAT for both SAs: left->right uses the SPI right chose.
	encLen, intLen := chosen.keyLens()
	for _, c := range []struct {
		spi       uint32
		enc, auth string
	}{
		{spiR, "esp_enc_key_left_to_right", "esp_auth_key_left_to_right"},
		{spiI, "esp_enc_key_right_to_left", "esp_auth_key_right_to_left"},
	} {
		km := ikecrypto.Keymat(h, k.D, nil, uint8(isakmp.ProtoESP), be32(c.spi), qni.Data, qnr.Data, encLen+intLen)
		if !bytes.Equal(km[:encLen], keys[c.enc]) || !bytes.Equal(km[encLen:], keys[c.auth]) {
			t.Errorf("KEYMAT for SPI %08x: %x | %x, strongSwan %x | %x", c.spi, km[:encLen], km[encLen:], keys[c.enc], keys[c.auth])
		}
	}
	if spiR != be32u(keys["esp_spi_left_to_right"]) || spiI != be32u(keys["esp_spi_right_to_left"]) {
		t.Errorf("SPIs %08x/%08x differ from the keys file", spiR, spiI)
	}
}
