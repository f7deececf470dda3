package isakmp

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"os"
	"strconv"
	"strings"
	"testing"
)

// tsharkValues reads testdata/tshark-isakmp-values.txt, the ISAKMP lines
// of `tshark -G values` (Wireshark 4.0.17's value tables, which follow
// the IANA registries): field -> value -> label.
func tsharkValues(t *testing.T) map[string]map[uint64]string {
	t.Helper()
	f, err := os.Open("testdata/tshark-isakmp-values.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[uint64]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		c := strings.Split(sc.Text(), "\t")
		var lo, hi uint64
		var label string
		switch {
		case c[0] == "V" && len(c) == 4:
			lo, _ = strconv.ParseUint(c[2], 10, 64)
			hi, label = lo, c[3]
		case c[0] == "R" && len(c) == 5:
			lo, _ = strconv.ParseUint(c[2], 10, 64)
			hi, _ = strconv.ParseUint(c[3], 10, 64)
			label = c[4]
		default:
			continue
		}
		if hi != lo {
			continue // ranges: "Private use" and the like
		}
		if out[c[1]] == nil {
			out[c[1]] = map[uint64]string{}
		}
		if _, dup := out[c[1]][lo]; !dup { // the first of a field's tables is IKEv1's
			out[c[1]][lo] = strings.TrimSpace(label)
		}
	}
	return out
}

func TestConstantsAgainstWireshark(t *testing.T) {
	vals := tsharkValues(t)
	cases := []struct {
		field string
		v     uint64
		label string
	}{
		{"isakmp.exchangetype", uint64(ExchBase), "Base"},
		{"isakmp.exchangetype", uint64(ExchMain), "Identity Protection (Main Mode)"},
		{"isakmp.exchangetype", uint64(ExchAuthOnly), "Authentication Only"},
		{"isakmp.exchangetype", uint64(ExchAggressive), "Aggressive"},
		{"isakmp.exchangetype", uint64(ExchInfo), "Informational"},
		{"isakmp.exchangetype", uint64(ExchQuick), "Quick Mode"},
		{"isakmp.nextpayload", uint64(PayloadNone), "NONE / No Next Payload"},
		{"isakmp.nextpayload", uint64(PayloadSA), "Security Association"},
		{"isakmp.nextpayload", uint64(PayloadProposal), "Proposal"},
		{"isakmp.nextpayload", uint64(PayloadTransform), "Transform"},
		{"isakmp.nextpayload", uint64(PayloadKE), "Key Exchange"},
		{"isakmp.nextpayload", uint64(PayloadID), "Identification"},
		{"isakmp.nextpayload", uint64(PayloadCert), "Certificate"},
		{"isakmp.nextpayload", uint64(PayloadCertReq), "Certificate Request"},
		{"isakmp.nextpayload", uint64(PayloadHash), "Hash"},
		{"isakmp.nextpayload", uint64(PayloadSig), "Signature"},
		{"isakmp.nextpayload", uint64(PayloadNonce), "Nonce"},
		{"isakmp.nextpayload", uint64(PayloadNotify), "Notification"},
		{"isakmp.nextpayload", uint64(PayloadDelete), "Delete"},
		{"isakmp.nextpayload", uint64(PayloadVendorID), "Vendor ID"},
		{"isakmp.nextpayload", uint64(PayloadNATD), "NAT-D (RFC 3947)"},
		{"isakmp.nextpayload", uint64(PayloadNATOA), "NAT-OA (RFC 3947)"},
		{"isakmp.nextpayload", uint64(PayloadNATDDraft), "NAT-D (draft-ietf-ipsec-nat-t-ike-01 to 03)"},
		{"isakmp.nextpayload", uint64(PayloadNATOADraft), "NAT-OA (draft-ietf-ipsec-nat-t-ike-01 to 03)"},
		{"isakmp.prop.protoid", uint64(ProtoISAKMP), "ISAKMP"},
		{"isakmp.prop.protoid", uint64(ProtoAH), "IPSEC_AH"},
		{"isakmp.prop.protoid", uint64(ProtoESP), "IPSEC_ESP"},
		{"isakmp.prop.protoid", uint64(ProtoIPComp), "IPCOMP"},
		{"isakmp.id.type", IDIPv4Addr, "IPV4_ADDR"},
		{"isakmp.id.type", IDFQDN, "FQDN"},
		{"isakmp.id.type", IDUserFQDN, "USER_FQDN"},
		{"isakmp.id.type", IDIPv4Subnet, "IPV4_ADDR_SUBNET"},
		{"isakmp.id.type", IDIPv6Addr, "IPV6_ADDR"},
		{"isakmp.id.type", IDIPv6Subnet, "IPV6_ADDR_SUBNET"},
		{"isakmp.id.type", IDIPv4Range, "IPV4_ADDR_RANGE"},
		{"isakmp.id.type", IDIPv6Range, "IPV6_ADDR_RANGE"},
		{"isakmp.id.type", IDDERASN1DN, "DER_ASN1_DN"},
		{"isakmp.id.type", IDDERASN1GN, "DER_ASN1_GN"},
		{"isakmp.id.type", IDKeyID, "KEY_ID"},
		{"isakmp.ike.attr.type", AttrEncryption, "Encryption-Algorithm"},
		{"isakmp.ike.attr.type", AttrHash, "Hash-Algorithm"},
		{"isakmp.ike.attr.type", AttrAuthMethod, "Authentication-Method"},
		{"isakmp.ike.attr.type", AttrGroupDesc, "Group-Description"},
		{"isakmp.ike.attr.type", AttrGroupType, "Group-Type"},
		{"isakmp.ike.attr.type", AttrGroupPrime, "Group-Prime"},
		{"isakmp.ike.attr.type", AttrGroupGenOne, "Group-Generator-One"},
		{"isakmp.ike.attr.type", AttrGroupGenTwo, "Group-Generator-Two"},
		{"isakmp.ike.attr.type", AttrGroupCurveA, "Group-Curve-A"},
		{"isakmp.ike.attr.type", AttrGroupCurveB, "Group-Curve-B"},
		{"isakmp.ike.attr.type", AttrLifeType, "Life-Type"},
		{"isakmp.ike.attr.type", AttrLifeDuration, "Life-Duration"},
		{"isakmp.ike.attr.type", AttrPRF, "PRF"},
		{"isakmp.ike.attr.type", AttrKeyLength, "Key-Length"},
		{"isakmp.ike.attr.type", AttrFieldSize, "Field-Size"},
		{"isakmp.ike.attr.type", AttrGroupOrder, "Group-Order"},
		{"isakmp.ipsec.attr.type", AttrSALifeType, "SA-Life-Type"},
		{"isakmp.ipsec.attr.type", AttrSALifeDuration, "SA-Life-Duration"},
		{"isakmp.ipsec.attr.type", AttrSAGroupDesc, "Group-Description"},
		{"isakmp.ipsec.attr.type", AttrEncapMode, "Encapsulation-Mode"},
		{"isakmp.ipsec.attr.type", AttrAuthAlg, "Authentication-Algorithm"},
		{"isakmp.ipsec.attr.type", AttrSAKeyLength, "Key-Length"},
		{"isakmp.ipsec.attr.type", AttrKeyRounds, "Key-Rounds"},
		{"isakmp.ipsec.attr.type", AttrCompDictSize, "Compress-Dictionary-Size"},
		{"isakmp.ipsec.attr.type", AttrCompPrivAlg, "Compress-Private-Algorithm"},
		{"isakmp.ipsec.attr.type", AttrECNTunnel, "ECN Tunnel"},
		{"isakmp.ipsec.attr.type", AttrESN, "Extended (64-bit) Sequence Number"},
		{"isakmp.ike.attr.life_type", LifeSeconds, "Seconds"},
		{"isakmp.ike.attr.life_type", LifeKilobytes, "Kilobytes"},
		{"isakmp.ipsec.attr.life_type", LifeSeconds, "Seconds"},
		{"isakmp.ipsec.attr.life_type", LifeKilobytes, "Kilobytes"},
		{"isakmp.ipsec.attr.encap_mode", EncapTunnel, "Tunnel"},
		{"isakmp.ipsec.attr.encap_mode", EncapTransport, "Transport"},
		{"isakmp.ipsec.attr.encap_mode", EncapUDPTunnel, "UDP-Encapsulated-Tunnel"},
		{"isakmp.ipsec.attr.encap_mode", EncapUDPTransport, "UDP-Encapsulated-Transport"},
		{"isakmp.ipsec.attr.encap_mode", EncapUDPTunnelDraft, "UDP-Encapsulated-Tunnel (draft)"},
		{"isakmp.ipsec.attr.encap_mode", EncapUDPTransportDraft, "UDP-Encapsulated-Transport (draft)"},
		{"isakmp.ike.attr.encryption_algorithm", EncrDES, "DES-CBC"},
		{"isakmp.ike.attr.encryption_algorithm", EncrIDEA, "IDEA-CBC"},
		{"isakmp.ike.attr.encryption_algorithm", EncrBlowfish, "BLOWFISH-CBC"},
		{"isakmp.ike.attr.encryption_algorithm", EncrRC5, "RC5-R16-B64-CBC"},
		{"isakmp.ike.attr.encryption_algorithm", Encr3DES, "3DES-CBC"},
		{"isakmp.ike.attr.encryption_algorithm", EncrCAST, "CAST-CBC"},
		{"isakmp.ike.attr.encryption_algorithm", EncrAES, "AES-CBC"},
		{"isakmp.ike.attr.encryption_algorithm", EncrCamellia, "CAMELLIA-CBC"},
		{"isakmp.ike.attr.hash_algorithm", HashMD5, "MD5"},
		{"isakmp.ike.attr.hash_algorithm", HashSHA, "SHA"},
		{"isakmp.ike.attr.hash_algorithm", HashTiger, "TIGER"},
		{"isakmp.ike.attr.hash_algorithm", HashSHA2256, "SHA2-256"},
		{"isakmp.ike.attr.hash_algorithm", HashSHA2384, "SHA2-384"},
		{"isakmp.ike.attr.hash_algorithm", HashSHA2512, "SHA2-512"},
		{"isakmp.ike.attr.authentication_method", AuthPSK, "Pre-shared key"},
		{"isakmp.ike.attr.authentication_method", AuthDSS, "DSS signatures"},
		{"isakmp.ike.attr.authentication_method", AuthRSASig, "RSA signatures"},
		{"isakmp.ike.attr.authentication_method", AuthRSAEnc, "Encryption with RSA"},
		{"isakmp.ike.attr.authentication_method", AuthRSARevEnc, "Revised encryption with RSA"},
		{"isakmp.ike.attr.authentication_method", AuthECDSA256, "ECDSA with SHA-256 on the P-256 curve"},
		{"isakmp.ike.attr.authentication_method", AuthECDSA384, "ECDSA with SHA-384 on the P-384 curve"},
		{"isakmp.ike.attr.authentication_method", AuthECDSA521, "ECDSA with SHA-512 on the P-521 curve"},
		{"isakmp.ike.attr.authentication_method", AuthHybridInitRSA, "HybridInitRSA"},
		{"isakmp.ike.attr.authentication_method", AuthHybridRespRSA, "HybridRespRSA"},
		{"isakmp.ike.attr.authentication_method", AuthHybridInitDSS, "HybridInitDSS"},
		{"isakmp.ike.attr.authentication_method", AuthHybridRespDSS, "HybridRespDSS"},
		{"isakmp.ike.attr.authentication_method", AuthXAUTHInitPSK, "XAUTHInitPreShared"},
		{"isakmp.ike.attr.authentication_method", AuthXAUTHRespPSK, "XAUTHRespPreShared"},
		{"isakmp.ike.attr.authentication_method", AuthXAUTHInitDSS, "XAUTHInitDSS"},
		{"isakmp.ike.attr.authentication_method", AuthXAUTHRespDSS, "XAUTHRespDSS"},
		{"isakmp.ike.attr.authentication_method", AuthXAUTHInitRSA, "XAUTHInitRSA"},
		{"isakmp.ike.attr.authentication_method", AuthXAUTHRespRSA, "XAUTHRespRSA"},
		{"isakmp.ike.attr.authentication_method", AuthXAUTHInitRSAEn, "XAUTHInitRSAEncryption"},
		{"isakmp.ike.attr.authentication_method", AuthXAUTHRespRSAEn, "XAUTHRespRSAEncryption"},
		{"isakmp.ike.attr.group_type", GroupTypeMODP, "MODP"},
		{"isakmp.ike.attr.group_type", GroupTypeECP, "ECP"},
		{"isakmp.ike.attr.group_type", GroupTypeEC2N, "EC2N"},
		{"isakmp.ipsec.attr.auth_algorithm", AuthAlgHMACMD5, "HMAC-MD5"},
		{"isakmp.ipsec.attr.auth_algorithm", AuthAlgHMACSHA, "HMAC-SHA"},
		{"isakmp.ipsec.attr.auth_algorithm", AuthAlgDESMAC, "DES-MAC"},
		{"isakmp.ipsec.attr.auth_algorithm", AuthAlgKPDK, "KPDK"},
		{"isakmp.ipsec.attr.auth_algorithm", AuthAlgHMACSHA2256, "HMAC-SHA2-256"},
		{"isakmp.ipsec.attr.auth_algorithm", AuthAlgHMACSHA2384, "HMAC-SHA2-384"},
		{"isakmp.ipsec.attr.auth_algorithm", AuthAlgHMACSHA2512, "HMAC-SHA2-512"},
		{"isakmp.ipsec.attr.auth_algorithm", AuthAlgHMACRIPEMD, "HMAC-RIPEMD"},
		{"isakmp.ipsec.attr.auth_algorithm", AuthAlgAESXCBC, "AES-XCBC-MAC"},
		{"isakmp.ipsec.attr.auth_algorithm", AuthAlgSigRSA, "SIG-RSA"},
		{"isakmp.ipsec.attr.auth_algorithm", AuthAlgAES128GMAC, "AES-128-GMAC"},
		{"isakmp.ipsec.attr.auth_algorithm", AuthAlgAES192GMAC, "AES-192-GMAC"},
		{"isakmp.ipsec.attr.auth_algorithm", AuthAlgAES256GMAC, "AES-256-GMAC"},
	}
	for _, c := range cases {
		if got := vals[c.field][c.v]; got != c.label {
			t.Errorf("%s %d: Wireshark says %q, want %q", c.field, c.v, got, c.label)
		}
	}
	// Every notify type this package names, and its name, against
	// Wireshark's (which spells with hyphens).
	for nt, name := range notifyNames {
		if got := vals["isakmp.notify.msgtype"][uint64(nt)]; got != strings.ReplaceAll(name, "_", "-") {
			t.Errorf("notify %d: Wireshark says %q, we say %q", nt, got, name)
		}
	}
	if len(notifyNames) != 35 {
		t.Errorf("%d notify names, want RFC 2408's 30 errors + 3 IPsec DOI status + 2 DPD", len(notifyNames))
	}
	// Group numbers AttrString names, against Wireshark's descriptions.
	for g, name := range groupNames {
		desc := vals["isakmp.ike.attr.group_description"][g]
		var frag string
		switch {
		case strings.HasPrefix(name, "MODP_"):
			frag = strings.TrimPrefix(name, "MODP_")
			frag, _, _ = strings.Cut(frag, "_")
		case strings.HasPrefix(name, "ECP_"), strings.HasPrefix(name, "BRAINPOOL_"), strings.HasPrefix(name, "EC2N_"):
			_, frag, _ = strings.Cut(name, "_")
		case name == "CURVE25519":
			frag = "Curve25519"
		case name == "CURVE448":
			frag = "Curve448"
		}
		if frag == "" || !strings.Contains(desc, frag) {
			t.Errorf("group %d: we say %s, Wireshark %q", g, name, desc)
		}
	}
}

// TestTransformIDs checks the ESP and AH transform IDs against the
// literal values of strongSwan's ikev1_esp_transid_t/ikev1_ah_transid_t
// (src/libcharon/encoding/payloads/proposal_substructure.c), which
// follow the IANA registries; Wireshark's tables do not carry them.
func TestTransformIDs(t *testing.T) {
	for _, c := range []struct{ got, want int }{
		{ESP_DES, 2}, {ESP_3DES, 3}, {ESP_NULL, 11}, {ESP_AES, 12}, {ESP_AES_CTR, 13},
		{ESP_AES_CCM_8, 14}, {ESP_AES_CCM_12, 15}, {ESP_AES_CCM_16, 16},
		{ESP_AES_GCM_8, 18}, {ESP_AES_GCM_12, 19}, {ESP_AES_GCM_16, 20},
		{ESP_SEED_CBC, 21}, {ESP_CAMELLIA, 22}, {ESP_NULL_AUTH_GMAC, 23},
		{AH_MD5, 2}, {AH_SHA, 3}, {AH_DES, 4}, {AH_SHA2_256, 5}, {AH_SHA2_384, 6}, {AH_SHA2_512, 7},
		{AH_RIPEMD, 8}, {AH_AES_XCBC, 9}, {AH_RSA, 10}, {AH_AES128GMAC, 11}, {AH_AES192GMAC, 12}, {AH_AES256GMAC, 13},
	} {
		if c.got != c.want {
			t.Errorf("transform ID %d, want %d", c.got, c.want)
		}
	}
	for _, c := range []struct {
		p    ProtocolID
		id   uint8
		want string
	}{
		{ProtoISAKMP, TransformKeyIKE, "KEY_IKE"}, {ProtoESP, ESP_AES, "ESP_AES_CBC"}, {ProtoESP, ESP_AES_GCM_16, "ESP_AES_GCM_16"},
		{ProtoAH, AH_SHA, "AH_SHA"}, {ProtoESP, 17, "ESP_TRANSFORM_17"}, {ProtoIPComp, 2, "IPCOMP_TRANSFORM_2"},
	} {
		if got := TransformName(c.p, c.id); got != c.want {
			t.Errorf("TransformName(%s, %d) = %q, want %q", c.p, c.id, got, c.want)
		}
	}
}

func TestAttrString(t *testing.T) {
	for _, c := range []struct {
		phase1 bool
		a      Attr
		want   string
	}{
		{true, Basic(AttrEncryption, EncrAES), "ENCRYPTION_ALGORITHM=AES_CBC"},
		{true, Basic(AttrKeyLength, 256), "KEY_LENGTH=256"},
		{true, Basic(AttrHash, HashSHA2256), "HASH_ALGORITHM=SHA2_256"},
		{true, Basic(AttrAuthMethod, AuthXAUTHInitPSK), "AUTHENTICATION_METHOD=XAUTH_INIT_PRESHARED"},
		{true, Basic(AttrGroupDesc, 14), "GROUP_DESCRIPTION=MODP_2048"},
		{true, Basic(AttrLifeType, LifeSeconds), "LIFE_TYPE=SECONDS"},
		{true, Uint(AttrLifeDuration, 86400), "LIFE_DURATION=86400"},
		{true, Basic(AttrEncryption, 99), "ENCRYPTION_ALGORITHM=99"},
		{true, Var(AttrGroupPrime, bytes.Repeat([]byte{0xff}, 9)), "GROUP_PRIME=0xffffffffffffffffff"},
		{true, Basic(300, 1), "ATTR_300=1"},
		{false, Basic(AttrEncapMode, EncapUDPTunnel), "ENCAPSULATION_MODE=UDP_TUNNEL"},
		{false, Basic(AttrEncapMode, EncapUDPTransportDraft), "ENCAPSULATION_MODE=UDP_TRANSPORT_DRAFT"},
		{false, Basic(AttrAuthAlg, AuthAlgHMACSHA), "AUTH_ALGORITHM=HMAC_SHA1"},
		{false, Basic(AttrSALifeType, LifeKilobytes), "SA_LIFE_TYPE=KILOBYTES"},
		{false, Basic(AttrSAGroupDesc, 19), "GROUP_DESCRIPTION=ECP_256"},
		{false, Basic(AttrESN, 1), "EXTENDED_SEQUENCE_NUMBER=ON"},
		{false, Basic(AttrSAKeyLength, 128), "KEY_LENGTH=128"},
		{false, Var(AttrSALifeDuration, nil), "SA_LIFE_DURATION=0x"},
	} {
		if got := AttrString(c.phase1, c.a); got != c.want {
			t.Errorf("AttrString(%v, %+v) = %q, want %q", c.phase1, c.a, got, c.want)
		}
	}
}

func TestAttrForms(t *testing.T) {
	// RFC 2408 3.3: AF=1 is type/value with a 2-octet value; AF=0 is
	// type/length/value.
	for _, c := range []struct {
		a    Attr
		wire string
		v    uint64
	}{
		{Basic(AttrKeyLength, 128), "800e 0080", 128},
		{Uint(AttrLifeDuration, 3600), "800c 0e10", 3600},
		{Uint(AttrLifeDuration, 0x10000), "000c 0004 00010000", 0x10000},
		{Uint(AttrLifeDuration, 1<<40), "000c 0008 0000010000000000", 1 << 40},
		{Var(AttrLifeDuration, []byte{1, 2, 3}), "000c 0003 010203", 0x010203},
	} {
		got := encodeTransform(&Transform{Num: 1, ID: 1, Attrs: []Attr{c.a}})[4:]
		if want := h2b(t, c.wire); !bytes.Equal(got, want) {
			t.Errorf("%+v encoded as %x, want %x", c.a, got, want)
		}
		if v, ok := c.a.Uint(); !ok || v != c.v {
			t.Errorf("%+v Uint() = %d %v, want %d", c.a, v, ok, c.v)
		}
	}
	// A TLV attribute with a 2-octet value decodes like the TV form.
	tr, err := decodeTransform(h2b(t, "01 01 0000 000e 0002 0100"))
	if err != nil || len(tr.Attrs) != 1 || tr.Attrs[0].Type != AttrKeyLength {
		t.Fatalf("%+v %v", tr, err)
	}
	if a, ok := tr.Get(AttrKeyLength); !ok || !bytes.Equal(a.Value, []byte{1, 0}) {
		t.Fatalf("Get: %+v %v", a, ok)
	}
	if _, ok := tr.Get(AttrHash); ok {
		t.Fatal("Get found an absent attribute")
	}
	for _, v := range [][]byte{nil, make([]byte, 9)} {
		if _, ok := (Attr{Value: v}).Uint(); ok {
			t.Errorf("Uint of %d octets succeeded", len(v))
		}
	}
}

func TestVendorName(t *testing.T) {
	h := func(s string) []byte {
		b, err := hex.DecodeString(s)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	// Octets as tshark printed them in testdata/mm-aes128-decoded.txt
	// (strongSwan 5.9's MM1/MM2), and strongSwan's isakmp_vendor.c table.
	for _, c := range []struct {
		b    []byte
		want string
	}{
		{h("09002689dfd6b712"), "XAUTH"},
		{h("afcad71368a1f1c96b8696fc77570100"), "DPD (RFC 3706)"},
		{h("4048b7d56ebce88525e7de7f00d6c2d380000000"), "FRAGMENTATION"},
		{h("4048b7d56ebce88525e7de7f00d6c2d3"), "FRAGMENTATION"},
		{h("4048b7d56ebce88525e7de7f00d6c2d340000000"), "FRAGMENTATION (not of Main Mode)"},
		{h("4a131c81070358455c5728f20e95452f"), "NAT-T (RFC 3947)"},
		{h("90cb80913ebb696e086381b5ec427b1f"), `draft-ietf-ipsec-nat-t-ike-02\n`},
		{h("cd60464335df21f87cfdb2fc68b6a448"), "draft-ietf-ipsec-nat-t-ike-02"},
		{h("7d9419a65310ca6f2c179d9215529d56"), "draft-ietf-ipsec-nat-t-ike-03"},
		{h("882fe56d6fd20dbc2251613b2ebe5beb"), "strongSwan"},
		{h("12f5f28c457168a9702d9fe274cc0100"), "Cisco Unity"},
		{h("1e2b516905991c7d7c96fcbfb587e46100000009"), "MS NT5 ISAKMPOAKLEY"},
		{h("0102"), "unknown 0102"},
		{nil, "unknown "},
	} {
		if got := VendorName(c.b); got != c.want {
			t.Errorf("VendorName(%x) = %q, want %q", c.b, got, c.want)
		}
	}
}
