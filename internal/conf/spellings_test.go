package conf

import (
	"reflect"
	"strings"
	"testing"
)

// loadText parses an ipsec.conf text with the test options.
func loadText(t *testing.T, text string) *Config {
	t.Helper()
	cfg, _ := Parse("t.conf", []byte(text), testOptions())
	return cfg
}

const ends = "\tleft=192.0.2.1\n\tright=192.0.2.2\n\tauthby=secret\n"

// TestProposalSpellings: the algorithm spellings of the upstream
// parsers, with the source that defines each.
func TestProposalSpellings(t *testing.T) {
	sha1, sha256, sha512, md5 := IntegSHA1, IntegSHA256, IntegSHA512, IntegMD5
	tests := []struct {
		name, kw, value string
		want            []Proposal
	}{
		// Libreswan lib/libswan/ike_info.c (v3.32 to v5.2)
		// default_v1_ike_prfs: an ike= without hash takes sha2_256,
		// sha2_512, sha1; default_v1_groups: without a group modp2048,
		// modp1536 (and secp256r1, curve25519 from v4: gosec lacks
		// curve25519).
		{"ike=aes256 (Libreswan defaults)", "ike", "aes256", []Proposal{{Ciphers: []Cipher{aes256}, Integs: []Integ{sha256, sha512, sha1}, DH: []DHGroup{14, 5, 19}}}},
		{"ike=3des-sha1 (Libreswan default groups)", "ike", "3des-sha1", []Proposal{{Ciphers: []Cipher{tdes}, Integs: []Integ{sha1}, DH: []DHGroup{14, 5, 19}}}},
		{"ike=aes-sha1;modp1536 (group given)", "ike", "aes-sha1;modp1536", []Proposal{{Ciphers: []Cipher{aes256, aes128}, Integs: []Integ{sha1}, DH: []DHGroup{5}}}},
		// Libreswan programs/pluto/spdb_struct.c (v3.32) and
		// ikev1_spdb_struct.c (v4.15) oakley_alg_makedb: an IKE cipher
		// without key length is proposed with the longest key, then the
		// default ("for (ks = max_ks; ; ks = def_ks)").
		{"ike=aes (Libreswan: aes256, aes128)", "ike", "aes", []Proposal{{Ciphers: []Cipher{aes256, aes128}, Integs: []Integ{sha256, sha512, sha1}, DH: []DHGroup{14, 5, 19}}}},
		{"ike=aes-128-sha1 (key length given)", "ike", "aes-128-sha1", []Proposal{{Ciphers: []Cipher{aes128}, Integs: []Integ{sha1}, DH: []DHGroup{14, 5, 19}}}},
		// esp_info.c default_v1_esp_integ: sha1, sha2_512, sha2_256;
		// plutoalg.c (v3.32) / ikev1_spdb_struct.c (v4.15)
		// kernel_alg_db_add: an ESP cipher without key length is the
		// default, then the longest ("add default here and add another
		// max entry").
		{"esp=3des,aes (Libreswan defaults)", "esp", "3des,aes", []Proposal{
			{Ciphers: []Cipher{tdes}, Integs: []Integ{sha1, sha512, sha256}},
			{Ciphers: []Cipher{aes128, aes256}, Integs: []Integ{sha1, sha512, sha256}},
		}},
		// strongSwan's aes128 is one key length (no expansion).
		{"esp=aes128-sha1 (strongSwan)", "esp", "aes128-sha1", []Proposal{{Ciphers: []Cipher{aes128}, Integs: []Integ{sha1}}}},
		// Libreswan ipsec.conf(5) esp=: "aes_gcm-null" (AEAD, null
		// integrity); AES_GCM_16's default key is 128, its longest 256.
		{"esp=aes_gcm-null", "esp", "aes_gcm-null", []Proposal{{Ciphers: []Cipher{gcm128, gcm256}}}},
		{"phase2alg=aes_gcm256-null", "phase2alg", "aes_gcm256-null", []Proposal{{Ciphers: []Cipher{gcm256}}}},
		// Libreswan proposals.c: the key length as its own token.
		{"esp=aes_gcm-256", "esp", "aes_gcm-256", []Proposal{{Ciphers: []Cipher{gcm256}}}},
		{"esp=aes_gcm_c-256", "esp", "aes_gcm_c-256", []Proposal{{Ciphers: []Cipher{gcm256}}}},
		{"esp=aes_gcm_c_256", "esp", "aes_gcm_c_256", []Proposal{{Ciphers: []Cipher{gcm256}}}},
		{"esp=aes-128-sha1", "esp", "aes-128-sha1", []Proposal{{Ciphers: []Cipher{aes128}, Integs: []Integ{sha1}}}},
		// FreeS/WAN ipsec.conf(5) (2.04) esp=: "3des-md5-96".
		{"esp=3des-md5-96", "esp", "3des-md5-96", []Proposal{{Ciphers: []Cipher{tdes}, Integs: []Integ{md5}}}},
		{"esp=aes-sha2_256-128", "esp", "aes-sha2_256-128", []Proposal{{Ciphers: []Cipher{aes128, aes256}, Integs: []Integ{sha256}}}},
		// FreeS/WAN ipsec.conf(5) ah=: "hmac-md5".
		{"ah=hmac-md5", "ah", "hmac-md5", []Proposal{{Integs: []Integ{md5}}}},
		{"ah=hmac-sha1-96", "ah", "hmac-sha1-96", []Proposal{{Integs: []Integ{sha1}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := loadText(t, "conn x\n"+ends+"\t"+tt.kw+"="+tt.value+"\n")
			if len(cfg.Conns) != 1 {
				t.Fatalf("conn not loaded: %s", renderDiags(cfg.Diags))
			}
			c := cfg.Conns[0]
			got := map[string]Proposals{"ike": c.IKE, "esp": c.ESP, "phase2alg": c.ESP, "ah": c.AH}[tt.kw]
			if !reflect.DeepEqual(got.List, tt.want) {
				t.Errorf("%s=%s: %+v, want %+v", tt.kw, tt.value, got.List, tt.want)
			}
		})
	}
}

// TestUnsupportedAlgorithms: algorithms the upstream parsers know and
// gosec does not implement skip the conn, named as "not supported by
// gosec", never as unknown.
func TestUnsupportedAlgorithms(t *testing.T) {
	for _, v := range []string{"ike=blowfish-sha1", "esp=twofish-sha1", "esp=serpent-sha1", "esp=camellia-sha1",
		"esp=cast-sha1", "esp=cast128-sha1", "esp=aes_ccm-null", "esp=aes_ccm_c-256", "esp=aes-aes_xcbc",
		"ike=aes-sha1-curve25519", "ike=aes-sha1;dh31", "esp=aes_gcm_a-128", "esp=aes_gcm_b", "esp=des-md5",
		"pfsgroup=curve25519"} {
		t.Run(v, func(t *testing.T) {
			cfg := loadText(t, "conn x\n"+ends+"\t"+v+"\n")
			if len(cfg.Conns) != 0 || len(cfg.Skipped) != 1 || cfg.Diags.Err() != nil {
				t.Fatalf("%s: %d loaded, %d skipped\n%s", v, len(cfg.Conns), len(cfg.Skipped), renderDiags(cfg.Diags))
			}
			if d := renderDiags(cfg.Diags); !strings.Contains(d, "t.conf:5: conn x skipped: "+v+": ") || !strings.Contains(d, "is not supported by gosec") {
				t.Errorf("diagnostic %q", d)
			}
		})
	}
}

// TestValueForms: values as the man pages allow them.
func TestValueForms(t *testing.T) {
	// ipsec.conf(5) (strongSwan, Libreswan): leftprotoport=tcp/http, the
	// port by service name (a built-in table, not /etc/services).
	cfg := loadText(t, "conn x\n"+ends+"\tleftprotoport=tcp/ssh\n\trightprotoport=udp/l2tp\n")
	if c := cfg.Conn("x"); c == nil || c.Left.Proto != 6 || c.Left.Port != 22 || c.Right.Proto != 17 || c.Right.Port != 1701 {
		t.Errorf("service names: %+v %s", c, renderDiags(cfg.Diags))
	}
	// An empty value is the keyword left out, and hides conn %default's
	// (strongSwan starter: an empty value resets to the default).
	cfg = loadText(t, "conn %default\n\tleftsubnet=10.1.0.0/16\n\tauthby=rsasig\n\nconn x\n"+ends+"\tleftsubnet=\n\tkeylife=\n")
	if c := cfg.Conn("x"); c == nil || len(c.Left.Subnets) != 0 || c.KeyLife != defaultConn().KeyLife {
		t.Errorf("empty values: %+v %s", c, renderDiags(cfg.Diags))
	}
	// Libreswan: left-subnet= and case-insensitive keywords; x- user
	// parameters ignored without a word (FreeS/WAN ipsec.conf(5)).
	cfg = loadText(t, "conn x\n"+ends+"\tleft-subnet=10.1.0.0/16\n\tRightSubnet=10.2.0.0/16\n\tx-owner=alice\n\tx_note=y\n")
	if c := cfg.Conn("x"); c == nil || len(c.Left.Subnets) != 1 || len(c.Right.Subnets) != 1 || len(cfg.Diags) != 0 {
		t.Errorf("spellings: %+v %s", c, renderDiags(cfg.Diags))
	}
	// Libreswan authby lists: secret among them is what gosec uses.
	cfg = loadText(t, "conn x\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tauthby=secret|rsasig\n")
	if c := cfg.Conn("x"); c == nil || c.AuthBy != "secret" {
		t.Errorf("authby=secret|rsasig: %s", renderDiags(cfg.Diags))
	}
	// strongSwan leftauth=psk/rightauth=psk is authby=secret; leftauth2
	// (a second round, XAUTH in IKEv1) skips the conn.
	cfg = loadText(t, "conn x\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tleftauth=psk\n\trightauth=psk\n")
	if c := cfg.Conn("x"); c == nil || c.AuthBy != "secret" {
		t.Errorf("leftauth=psk: %s", renderDiags(cfg.Diags))
	}
	cfg = loadText(t, "conn x\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tleftauth=psk\n\tleftauth2=xauth\n\trightauth=psk\n")
	if len(cfg.Skipped) != 1 || !strings.Contains(cfg.Skipped[0].Msg, "leftauth2=xauth: XAUTH is not supported by gosec") || cfg.Skipped[0].at.line != 5 {
		t.Errorf("leftauth2=xauth: %+v", cfg.Skipped)
	}
	// No authby: RSA signatures, the upstream default; skipped at the
	// conn's line, the daemon starts with the others.
	cfg = loadText(t, "conn rsa\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\nconn psk\n"+ends)
	if len(cfg.Conns) != 1 || cfg.Conns[0].Name != "psk" || len(cfg.Skipped) != 1 || cfg.Skipped[0].at.line != 1 || cfg.Diags.Err() != nil {
		t.Errorf("no authby: %s", renderDiags(cfg.Diags))
	}
}

// TestIKEv2Spellings: Libreswan's ikev2= values (configs/d.ipsec.conf/
// ikev2.xml, v3.32) and its precedence rule (programs/pluto/extract.c,
// v5.4: keyexchange= wins over ikev2=).
func TestIKEv2Spellings(t *testing.T) {
	tests := []struct {
		lines  string
		loaded bool
		warn   string
	}{
		{"\tikev2=no\n", true, ""},
		{"\tikev2=never\n", true, ""},
		{"\tikev2=permit\n", true, ""},
		{"\tikev2=propose\n", true, "ikev2=propose: gosec uses IKEv1"},
		{"\tikev2=yes\n", false, ""},
		{"\tikev2=insist\n", false, ""},
		{"\tkeyexchange=ikev1\n\tikev2=insist\n", true, "ikev2= is ignored: keyexchange=ikev1"},
		{"\tkeyexchange=ikev2\n\tikev2=no\n", false, ""},
		{"\tkeyexchange=ike\n", false, ""},
		{"\tkeyexchange=IKEv1\n", true, ""},
	}
	for _, tt := range tests {
		cfg := loadText(t, "conn x\n"+ends+tt.lines)
		if (len(cfg.Conns) == 1) != tt.loaded || cfg.Diags.Err() != nil {
			t.Errorf("%q: loaded %d, want %v\n%s", tt.lines, len(cfg.Conns), tt.loaded, renderDiags(cfg.Diags))
		}
		if !tt.loaded && (len(cfg.Skipped) != 1 || cfg.Skipped[0].Feature != "IKEv2") {
			t.Errorf("%q: skipped %+v, want for IKEv2", tt.lines, cfg.Skipped)
		}
		if tt.warn != "" && !strings.Contains(renderDiags(cfg.Diags), tt.warn) {
			t.Errorf("%q: diagnostics %q, want %q", tt.lines, renderDiags(cfg.Diags), tt.warn)
		}
	}
}

// TestMessagesNameTheCause: the message names what is really missing.
func TestMessagesNameTheCause(t *testing.T) {
	tests := []struct{ line, want string }{
		{"leftsubnet=%opportunisticgroup", "leftsubnet=%opportunisticgroup: opportunistic encryption is not supported by gosec"},
		{"leftnexthop=2001:db8::1", "leftnexthop=2001:db8::1: IPv6 is not supported by gosec (the next hop 2001:db8::1 is IPv6)"},
		{"rightsubnet=vhost:%priv", "rightsubnet=vhost:%priv: virtual subnets is not supported by gosec"},
		{"rightsubnet=2001:db8::/64", "IPv6 is not supported by gosec (subnet 2001:db8::/64 is IPv6)"},
		{"leftxauthserver=yes", "leftxauthserver=yes: XAUTH"},
		{"leftmodecfgclient=yes", "leftmodecfgclient=yes: Mode Config is not supported by gosec"},
		{"rightsourceip=10.3.0.0/24", "rightsourceip=10.3.0.0/24: Mode Config is not supported by gosec (virtual IPs)"},
		{"type=transport\n\tauthby=never", "authby=never: NULL authentication is not supported by gosec"},
	}
	for _, tt := range tests {
		text := "conn x\n" + ends + "\t" + tt.line + "\n"
		if strings.Contains(tt.line, "authby=") {
			text = "conn x\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\t" + tt.line + "\n"
		}
		cfg := loadText(t, text)
		d := renderDiags(cfg.Diags)
		if len(cfg.Skipped) != 1 || !strings.Contains(d, "t.conf:5: conn x skipped: ") || !strings.Contains(d, tt.want) {
			t.Errorf("%s: %q, want %q at line 5", tt.line, d, tt.want)
		}
	}
	// Libreswan's OE group as a host (ipsec.conf.common of its tests).
	cfg := loadText(t, "conn x\n\tleft=%opportunisticgroup\n\tright=192.0.2.2\n\tauthby=secret\n")
	if d := renderDiags(cfg.Diags); !strings.Contains(d, "t.conf:2: conn x skipped: left=%opportunisticgroup: opportunistic encryption") {
		t.Errorf("left=%%opportunisticgroup: %q", d)
	}
}

// TestHints: suggestions for unknown keywords, and keywords that look
// like typos but are keywords (FreeS/WAN's auth=, ahkey=).
func TestHints(t *testing.T) {
	for kw, want := range map[string]string{
		"authy": "authby", "leftsubnett": "leftsubnet", "rekye": "rekey", "dpdelay": "dpddelay",
	} {
		cfg := loadText(t, "conn x\n"+ends+"\t"+kw+"=1\n")
		if d := renderDiags(cfg.Diags); !strings.Contains(d, "(did you mean "+want+"?)") {
			t.Errorf("%s: %q, want the hint %s", kw, d, want)
		}
	}
	// auth=ah is FreeS/WAN's AH (ipsec.conf(5) 2.04), not a typo of auto.
	cfg := loadText(t, "conn x\n"+ends+"\tauth=ah\n\tesp=\n")
	if c := cfg.Conn("x"); c == nil || c.Proto() != "ah" || len(cfg.Diags) != 0 {
		t.Errorf("auth=ah: %s", renderDiags(cfg.Diags))
	}
}

// TestAlsoFlip: FreeS/WAN's alsoflip= (ipsec.conf(5) of FreeS/WAN 2.04:
// "like also, except that the left and right parameters of the conn
// named are interchanged"), and conn %oedefault ignored with a warning.
func TestAlsoFlip(t *testing.T) {
	cfg := loadText(t, `conn %oedefault
	dpddelay=20

conn gw
	left=192.0.2.1
	leftsubnet=10.1.0.0/16
	authby=secret

conn peer
	left=192.0.2.2
	leftsubnet=10.2.0.0/16
	alsoflip=gw
	auto=add
`)
	c := cfg.Conn("peer")
	if c == nil || c.Left.Addr.String() != "192.0.2.2" || c.Right.Addr.String() != "192.0.2.1" ||
		len(c.Right.Subnets) != 1 || c.Right.Subnets[0].String() != "10.1.0.0/16" || c.AuthBy != "secret" {
		t.Fatalf("alsoflip: %+v\n%s", c, renderDiags(cfg.Diags))
	}
	if d := renderDiags(cfg.Diags); !strings.Contains(d, "t.conf:1: warning: conn %oedefault is ignored") || cfg.Diags.Err() != nil {
		t.Errorf("diagnostics %q", d)
	}
}

// TestFreeSWANManualKeys: FreeS/WAN 2.04 ipsec.conf(5) manual keying:
// spi= and espenckey=/espauthkey= without a side are for both
// directions, leftespspi= (and leftahspi=) the SPI of the SA towards
// left, a sided keyword overriding the both-sides one.
func TestFreeSWANManualKeys(t *testing.T) {
	cfg := loadText(t, "conn m\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tesp=3des-md5-96\n\tspi=0x200\n\trightespspi=0x300\n"+
		"\tespenckey=0x"+strings.Repeat("11", 24)+"\n\tleftespenckey=0x"+strings.Repeat("22", 24)+"\n\tespauthkey=0x"+strings.Repeat("33", 16)+"\n\tauto=manual\n")
	c := cfg.Conn("m")
	if c == nil || cfg.Diags.Err() != nil {
		t.Fatalf("not loaded: %s", renderDiags(cfg.Diags))
	}
	if c.Left.SPI != 0x200 || c.Right.SPI != 0x300 || c.Left.ESPEncKey[0] != 0x22 || c.Right.ESPEncKey[0] != 0x11 ||
		len(c.Left.ESPAuthKey) != 16 || len(c.Right.ESPAuthKey) != 16 || c.Auto != "start" {
		t.Errorf("manual keys: %+v", c)
	}
}

// TestLibreswanValues: values Libreswan accepts that strongSwan does not
// (ipsec.conf(5) of Libreswan: esn=either, auto=ondemand/keep) and
// strongSwan 5's dpdaction=trap.
func TestLibreswanValues(t *testing.T) {
	cfg := loadText(t, "conn x\n"+ends+"\tesn=either\n\tauto=keep\n\tdpdaction=trap\n\ttype=reject\n")
	c := cfg.Conn("x")
	if c == nil || c.ESN || c.Auto != "start" || c.DPDAction != "hold" || c.Type != "drop" || len(cfg.Diags) != 0 {
		t.Errorf("%+v %s", c, renderDiags(cfg.Diags))
	}
}

// TestCASections: strongSwan's ca sections (keywords.txt, KW_CA_*) are
// ignored with one warning; a keyword no ca section knows is an error.
func TestCASections(t *testing.T) {
	cfg := loadText(t, "ca myca\n\tcacert=ca.pem\n\tcrluri=http://crl\n\tauto=add\n\tcacertt=x\n")
	d := renderDiags(cfg.Diags)
	if !strings.Contains(d, `t.conf:1: warning: ca sections are not supported`) || !strings.Contains(d, `t.conf:5: unknown ca keyword "cacertt"`) || strings.Count(d, "\n") != 2 {
		t.Errorf("diagnostics %q", d)
	}
}
