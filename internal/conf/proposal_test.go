package conf

import (
	"reflect"
	"strings"
	"testing"
)

// Algorithm identifiers from their registries, written out here rather
// than taken from the parser: RFC 2407 4.4.4 / IANA "IPsec ESP Transform
// Identifiers" (3DES 3, NULL 11, AES-CBC 12, AES-CTR 13, AES-GCM-8/12/16
// 18/19/20, ChaCha20-Poly1305 28 per RFC 7634), IANA "IPsec
// Authentication Algorithm" attribute (HMAC-MD5 1, HMAC-SHA 2,
// HMAC-SHA2-256/384/512 5/6/7 per RFC 4868), IANA "Group Description"
// (MODP 1024/1536/2048/3072/4096/6144/8192 = 2/5/14/15/16/17/18, ECP
// 256/384/521 = 19/20/21, RFC 3526/5903).
var (
	aes128    = Cipher{Encr: EncrAESCBC, KeyBits: 128}
	aes192    = Cipher{Encr: EncrAESCBC, KeyBits: 192}
	aes256    = Cipher{Encr: EncrAESCBC, KeyBits: 256}
	tdes      = Cipher{Encr: Encr3DES}
	aes128ctr = Cipher{Encr: EncrAESCTR, KeyBits: 128}
	gcm128    = Cipher{Encr: EncrAESGCM16, KeyBits: 128}
	gcm256    = Cipher{Encr: EncrAESGCM16, KeyBits: 256}
	null      = Cipher{Encr: EncrNull}
	chacha    = Cipher{Encr: EncrChaCha20Poly1305, KeyBits: 256}
)

func TestParseProposals(t *testing.T) {
	tests := []struct {
		in     string
		kind   proposalKind
		want   []Proposal
		strict bool
		// suites is the expansion in strongSwan's syntax, in order.
		suites string
	}{
		{"aes128-sha1-modp2048", kindIKE, []Proposal{{Ciphers: []Cipher{aes128}, Integs: []Integ{IntegSHA1}, DH: []DHGroup{14}}}, false, "aes128-sha1-modp2048"},
		{"3des-md5-modp1024", kindIKE, []Proposal{{Ciphers: []Cipher{tdes}, Integs: []Integ{IntegMD5}, DH: []DHGroup{2}}}, false, "3des-md5-modp1024"},
		{"aes128-sha256-ecp256", kindIKE, []Proposal{{Ciphers: []Cipher{aes128}, Integs: []Integ{IntegSHA256}, DH: []DHGroup{19}}}, false, "aes128-sha256-ecp256"},
		{"aes256-sha512-modp4096!", kindIKE, []Proposal{{Ciphers: []Cipher{aes256}, Integs: []Integ{IntegSHA512}, DH: []DHGroup{16}}}, true, "aes256-sha512-modp4096"},
		{"aes192-sha384-ecp384,3des-sha1-modp1536", kindIKE, []Proposal{
			{Ciphers: []Cipher{aes192}, Integs: []Integ{IntegSHA384}, DH: []DHGroup{20}},
			{Ciphers: []Cipher{tdes}, Integs: []Integ{IntegSHA1}, DH: []DHGroup{5}},
		}, false, "aes192-sha384-ecp384,3des-sha1-modp1536"},
		{"aes128-aes256-sha1-sha256-modp2048-ecp521!", kindIKE, []Proposal{
			{Ciphers: []Cipher{aes128, aes256}, Integs: []Integ{IntegSHA1, IntegSHA256}, DH: []DHGroup{14, 21}},
		}, true, "aes128-sha1-modp2048,aes128-sha1-ecp521,aes128-sha256-modp2048,aes128-sha256-ecp521,aes256-sha1-modp2048,aes256-sha1-ecp521,aes256-sha256-modp2048,aes256-sha256-ecp521"},
		{"AES128-SHA1-MODP3072", kindIKE, []Proposal{{Ciphers: []Cipher{aes128}, Integs: []Integ{IntegSHA1}, DH: []DHGroup{15}}}, false, "aes128-sha1-modp3072"},
		{"aes128-sha256-prfsha256-modp6144", kindIKE, []Proposal{{Ciphers: []Cipher{aes128}, Integs: []Integ{IntegSHA256}, DH: []DHGroup{17}}}, false, "aes128-sha256-modp6144"},
		// A bare "aes" in IKE is aes256 then aes128, as Libreswan's
		// oakley_alg_makedb (TestLibreswanIKEv1Defaults).
		{"aes-sha-modp8192", kindIKE, []Proposal{{Ciphers: []Cipher{aes256, aes128}, Integs: []Integ{IntegSHA1}, DH: []DHGroup{18}}}, false, "aes256-sha1-modp8192,aes128-sha1-modp8192"},
		// Libreswan: the DH group after ';', dh numbers, aes_cbc names.
		{"aes128-sha1;modp2048", kindIKE, []Proposal{{Ciphers: []Cipher{aes128}, Integs: []Integ{IntegSHA1}, DH: []DHGroup{14}}}, false, "aes128-sha1-modp2048"},
		{"aes_cbc_256-sha2_256;dh19", kindIKE, []Proposal{{Ciphers: []Cipher{aes256}, Integs: []Integ{IntegSHA256}, DH: []DHGroup{19}}}, false, "aes256-sha256-ecp256"},
		{"aes128-sha1;dh14", kindESP, []Proposal{{Ciphers: []Cipher{aes128}, Integs: []Integ{IntegSHA1}, DH: []DHGroup{14}}}, false, "aes128-sha1-modp2048"},
		{"aes_gcm256", kindESP, []Proposal{{Ciphers: []Cipher{gcm256}}}, false, "aes256gcm16"},
		// ESP.
		{"aes128-sha1", kindESP, []Proposal{{Ciphers: []Cipher{aes128}, Integs: []Integ{IntegSHA1}}}, false, "aes128-sha1"},
		{"3des-md5", kindESP, []Proposal{{Ciphers: []Cipher{tdes}, Integs: []Integ{IntegMD5}}}, false, "3des-md5"},
		{"aes256-sha256-modp2048!", kindESP, []Proposal{{Ciphers: []Cipher{aes256}, Integs: []Integ{IntegSHA256}, DH: []DHGroup{14}}}, true, "aes256-sha256-modp2048"},
		{"aes128gcm16", kindESP, []Proposal{{Ciphers: []Cipher{gcm128}}}, false, "aes128gcm16"},
		{"aes256gcm128-ecp384", kindESP, []Proposal{{Ciphers: []Cipher{gcm256}, DH: []DHGroup{20}}}, false, "aes256gcm16-ecp384"},
		// An AEAD proposal drops the integrity algorithm (strongSwan's
		// proposal.c: "we MUST NOT propose any integrity algorithms").
		{"aes256gcm16-sha256-modp2048", kindESP, []Proposal{{Ciphers: []Cipher{gcm256}, DH: []DHGroup{14}}}, false, "aes256gcm16-modp2048"},
		{"aes128ctr-sha256-esn", kindESP, []Proposal{{Ciphers: []Cipher{aes128ctr}, Integs: []Integ{IntegSHA256}, ESN: []bool{true}}}, false, "aes128ctr-sha256-esn"},
		{"aes128-sha1-esn-noesn", kindESP, []Proposal{{Ciphers: []Cipher{aes128}, Integs: []Integ{IntegSHA1}, ESN: []bool{true, false}}}, false, "aes128-sha1-esn,aes128-sha1"},
		{"null-sha256", kindESP, []Proposal{{Ciphers: []Cipher{null}, Integs: []Integ{IntegSHA256}}}, false, "null-sha256"},
		{"chacha20poly1305", kindESP, []Proposal{{Ciphers: []Cipher{chacha}}}, false, "chacha20poly1305"},
		{"aes128gcm16,aes128-sha1, 3des-md5!", kindESP, []Proposal{
			{Ciphers: []Cipher{gcm128}},
			{Ciphers: []Cipher{aes128}, Integs: []Integ{IntegSHA1}},
			{Ciphers: []Cipher{tdes}, Integs: []Integ{IntegMD5}},
		}, true, "aes128gcm16,aes128-sha1,3des-md5"},
		// AH.
		{"sha1", kindAH, []Proposal{{Integs: []Integ{IntegSHA1}}}, false, "sha1"},
		{"md5", kindAH, []Proposal{{Integs: []Integ{IntegMD5}}}, false, "md5"},
		{"sha256!", kindAH, []Proposal{{Integs: []Integ{IntegSHA256}}}, true, "sha256"},
		{"sha384-modp2048,sha512", kindAH, []Proposal{{Integs: []Integ{IntegSHA384}, DH: []DHGroup{14}}, {Integs: []Integ{IntegSHA512}}}, false, "sha384-modp2048,sha512"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			ps, err := parseProposals(tt.in, tt.kind)
			if err != nil {
				t.Fatalf("parseProposals(%q): %v", tt.in, err)
			}
			if !reflect.DeepEqual(ps.List, tt.want) {
				t.Errorf("proposals\n got %+v\nwant %+v", ps.List, tt.want)
			}
			if ps.Strict != tt.strict {
				t.Errorf("strict = %v, want %v", ps.Strict, tt.strict)
			}
			var names []string
			for _, p := range ps.List {
				for _, s := range p.Suites() {
					names = append(names, s.Name())
				}
			}
			if got := strings.Join(names, ","); got != tt.suites {
				t.Errorf("suites %s, want %s", got, tt.suites)
			}
			// Round trip: the rendering parses back to the same suites.
			str := ps.String()
			wantStr := tt.suites
			if tt.strict {
				wantStr += "!"
			}
			if str != wantStr {
				t.Errorf("String() = %q, want %q", str, wantStr)
			}
			back, err := parseProposals(str, tt.kind)
			if err != nil {
				t.Fatalf("re-parsing %q: %v", str, err)
			}
			if back.String() != str || back.Strict != ps.Strict {
				t.Errorf("round trip %q -> %q", str, back.String())
			}
		})
	}
}

func TestParseProposalsErrors(t *testing.T) {
	tests := []struct {
		in   string
		kind proposalKind
		want string // part of the message
	}{
		{"", kindESP, "empty proposal list"},
		{"!", kindIKE, "empty proposal list"},
		{"aes128-sha1,,3des-md5", kindESP, "empty proposal in the list"},
		{"aes128--sha1", kindESP, "empty algorithm name"},
		{"aes128-sha1-modp768", kindIKE, "DH group modp768 is not supported"},
		{"aes128-sha1-modp1024s160", kindIKE, "not supported by gosec"},
		{"aes128-sha1-curve25519", kindIKE, "not supported by gosec"},
		{"aes128gcm16-sha256-modp2048", kindIKE, "algorithm aes128gcm16 in IKE is not supported by gosec"},
		{"sha1-modp2048", kindIKE, "needs an encryption and a hash"},
		{"aes128-sha1-esn", kindIKE, "esn is for esp= and ah= only"},
		{"aes128-sha1-prfsha256", kindIKE, "IKEv1 uses the hash algorithm as its PRF"},
		{"aes128-prfsha1", kindESP, "PRFs belong in ike= only"},
		{"aes128-null", kindESP, "encryption without integrity is refused"},
		{"sha1", kindESP, "needs an encryption algorithm"},
		{"aes128gcm16-aes128-sha1", kindESP, "classic and AEAD ciphers cannot be in the same proposal"},
		{"aes128gcm12", kindESP, "algorithm aes128gcm12 is not supported by gosec"},
		{"aes128gcm8", kindESP, "algorithm aes128gcm8 is not supported by gosec"},
		{"blowfish-sha1", kindESP, "algorithm blowfish is not supported by gosec"},
		{"aes128-aesxcbc", kindESP, "algorithm aesxcbc is not supported by gosec"},
		{"aes512-sha1", kindESP, `unknown algorithm "aes512"`},
		{"aes128-sha1", kindAH, "aes128 is an encryption algorithm"},
		{"modp2048", kindAH, "needs an integrity algorithm"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			_, err := parseProposals(tt.in, tt.kind)
			if err == nil {
				t.Fatalf("parseProposals(%q) succeeded, want an error with %q", tt.in, tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestAlgorithmNumbers checks the identifiers and key sizes against the
// registries (values written out from RFC 2407, 4106, 4868, 7634 and the
// IANA tables, not from the parser).
func TestAlgorithmNumbers(t *testing.T) {
	encr := []struct {
		e    Encr
		iana uint16
	}{{Encr3DES, 3}, {EncrNull, 11}, {EncrAESCBC, 12}, {EncrAESCTR, 13}, {EncrAESGCM8, 18}, {EncrAESGCM12, 19}, {EncrAESGCM16, 20}, {EncrChaCha20Poly1305, 28}}
	for _, tt := range encr {
		if got := tt.e.IANA(); got != tt.iana {
			t.Errorf("Encr %d IANA = %d, want %d", tt.e, got, tt.iana)
		}
	}
	integ := []struct {
		i            Integ
		iana         uint16
		keyLen       int
		strongSwanID string
	}{{IntegMD5, 1, 16, "md5"}, {IntegSHA1, 2, 20, "sha1"}, {IntegSHA256, 5, 32, "sha256"}, {IntegSHA384, 6, 48, "sha384"}, {IntegSHA512, 7, 64, "sha512"}}
	for _, tt := range integ {
		if tt.i.IANA() != tt.iana || tt.i.KeyLen() != tt.keyLen || tt.i.Name() != tt.strongSwanID {
			t.Errorf("Integ %d: IANA %d key %d name %s, want %d %d %s", tt.i, tt.i.IANA(), tt.i.KeyLen(), tt.i.Name(), tt.iana, tt.keyLen, tt.strongSwanID)
		}
	}
	groups := map[string]DHGroup{"modp1024": 2, "modp1536": 5, "modp2048": 14, "modp3072": 15, "modp4096": 16, "modp6144": 17, "modp8192": 18, "ecp256": 19, "ecp384": 20, "ecp521": 21}
	for name, g := range groups {
		if dhNames[name] != g || g.Name() != name || !g.Supported() {
			t.Errorf("group %s: dhNames %d, Name %s, Supported %v; want %d", name, dhNames[name], g.Name(), g.Supported(), g)
		}
	}
	if DHGroup(1).Supported() {
		t.Errorf("modp768 (group 1) must not be supported")
	}
	// Manual keys: key plus salt (RFC 3686 and RFC 4106: 4-octet nonce).
	keys := []struct {
		c    Cipher
		want int
	}{{tdes, 24}, {aes128, 16}, {aes192, 24}, {aes256, 32}, {aes128ctr, 20}, {gcm128, 20}, {gcm256, 36}, {null, 0}, {chacha, 36}}
	for _, tt := range keys {
		if got := tt.c.KeyLen(); got != tt.want {
			t.Errorf("%s KeyLen = %d, want %d", tt.c.Name(), got, tt.want)
		}
	}
}

// TestLibreswanIKEv1Defaults: what Libreswan's IKEv1 proposals fill in
// when ike= or esp= leaves algorithms out, rendered in strongSwan's syntax
// and parsed back to the same suites (a round trip: gosec's dump can be
// pasted into a strongSwan configuration).
//   - ike= hash: lib/libswan/ike_info.c default_v1_ike_prfs (v3.32 to
//     v5.2): sha2_256, sha2_512, sha1.
//   - ike= group: ike_info.c default_v1_groups: modp2048, modp1536 (v3.x),
//     and secp256r1, curve25519 (v4.x, v5.x); curve25519 left out.
//   - ike= "aes": programs/pluto/spdb_struct.c (v3.32) and
//     ikev1_spdb_struct.c (v4.15) oakley_alg_makedb, max key then default:
//     aes256, aes128.
//   - esp= integrity: lib/libswan/esp_info.c default_v1_esp_integ: sha1,
//     sha2_512, sha2_256.
//   - esp= "aes": programs/pluto/plutoalg.c (v3.32) and
//     ikev1_spdb_struct.c (v4.15) kernel_alg_db_add, default key then max:
//     aes128, aes256.
func TestLibreswanIKEv1Defaults(t *testing.T) {
	tests := []struct {
		value string
		kind  proposalKind
		want  string
	}{
		{"aes", kindIKE, "aes256-sha256-modp2048,aes256-sha256-modp1536,aes256-sha256-ecp256," +
			"aes256-sha512-modp2048,aes256-sha512-modp1536,aes256-sha512-ecp256," +
			"aes256-sha1-modp2048,aes256-sha1-modp1536,aes256-sha1-ecp256," +
			"aes128-sha256-modp2048,aes128-sha256-modp1536,aes128-sha256-ecp256," +
			"aes128-sha512-modp2048,aes128-sha512-modp1536,aes128-sha512-ecp256," +
			"aes128-sha1-modp2048,aes128-sha1-modp1536,aes128-sha1-ecp256"},
		{"3des-md5", kindIKE, "3des-md5-modp2048,3des-md5-modp1536,3des-md5-ecp256"},
		{"aes_cbc-sha2_256;dh19", kindIKE, "aes256-sha256-ecp256,aes128-sha256-ecp256"},
		{"aes_cbc_128-sha1", kindIKE, "aes128-sha1-modp2048,aes128-sha1-modp1536,aes128-sha1-ecp256"},
		{"aes-sha1", kindESP, "aes128-sha1,aes256-sha1"},
		{"aes", kindESP, "aes128-sha1,aes128-sha512,aes128-sha256,aes256-sha1,aes256-sha512,aes256-sha256"},
		{"aes_gcm", kindESP, "aes128gcm16,aes256gcm16"},
		{"aes-192-sha1", kindESP, "aes192-sha1"},
		{"aes-aes256-sha1", kindESP, "aes128-sha1,aes256-sha1"},
	}
	for _, tt := range tests {
		t.Run(tt.value, func(t *testing.T) {
			ps, err := parseProposals(tt.value, tt.kind)
			if err != nil {
				t.Fatal(err)
			}
			if got := ps.String(); got != tt.want {
				t.Fatalf("%s:\n got %s\nwant %s", tt.value, got, tt.want)
			}
			back, err := parseProposals(ps.String(), tt.kind)
			if err != nil {
				t.Fatalf("the rendering does not parse: %v", err)
			}
			var a, b []Suite
			for _, p := range ps.List {
				a = append(a, p.Suites()...)
			}
			for _, p := range back.List {
				b = append(b, p.Suites()...)
			}
			if !reflect.DeepEqual(a, b) {
				t.Errorf("round trip differs:\n%v\n%v", a, b)
			}
		})
	}
}
