package conf

import (
	"strings"
)

// The keywords of the upstream ipsec.conf parsers that gosec accepts
// without implementing them. Every keyword of these parsers is either
// implemented (keywords.go) or listed here; TestUpstreamKeywords checks it
// against the keyword lists extracted from the upstream sources, which
// testdata/conf/upstream-keywords holds with the repository, commit and
// path each came from:
//
//   - strongSwan 5.9.14, 4.6.4 and 4.2.0: src/starter/keywords.txt (the
//     section of each from keywords.h's KW_SETUP/KW_CA token ranges);
//   - Libreswan v3.32 and v4.15: lib/libipsecconf/keywords.c; v5.4:
//     lib/libswan/ipsecconf/{conn,setup}.c;
//   - Openswan v2.6.51: lib/libipsecconf/keywords.c;
//   - FreeS/WAN 2.04: ipsec.conf(5) as Openswan 2.0.0 imported it
//     (programs/_confread/ipsec.conf.5).
//
// Libreswan matches keywords without case and lets "left-"/"right-"
// stand for "left"/"right" (lib/libswan/ipsecconf/parser.y,
// parse_leftright); FreeS/WAN reserves "x-" and "x_" for user parameters
// (ipsec.conf(5): "Parameter names beginning with x- (or X-, or x_, or
// X_) are reserved for user extensions and will never be assigned
// meanings by IPsec"); normalizeKey and isUserParam implement both.

// words splits a space-separated list into a set with one reason.
func words(reason, list string, into map[string]string) {
	for _, w := range strings.Fields(list) {
		into[w] = reason
	}
}

// ignoredSetup are the config setup keywords of every upstream parser;
// gosec implements none of them (its own options are command-line flags),
// and each draws a warning naming it and what gosec does instead.
var ignoredSetup = func() map[string]string {
	m := map[string]string{}
	words("", `cachecrls charonstart crl-strict crl-timeout crl_strict crlcheckinterval
		curl-iface curl-timeout curl_iface curl_timeout ddos-ike-threshold ddos-mode dns-resolver
		dnssec-anchors dnssec-enable dnssec-rootkey-file drop-oppo-null expire-lifetime
		expire-shunt-interval force-busy force_busy ikev1-secctx-attr-type max-halfopen-ike
		myvendorid nocrsend ocsp-cache-max-age ocsp-cache-min-age ocsp-cache-size ocsp-enable
		ocsp-method ocsp-strict ocsp-timeout ocsp-trustname ocsp-uri ocsp_enable ocsp_strict
		ocsp_timeout ocsp_trust_name ocsp_uri pkcs11initargs pkcs11keepstate pkcs11module
		pkcs11proxy plutostart secctx-attr-type secctx-attr-value secctx_attr_value seccomp
		seedbits seeddev shuntlifetime strictcrlpolicy uniqueids xfrmlifetime global-redirect
		global-redirect-to ipsec-interface-managed nflog-all statsbin exampledir nssdir ipsecdir
		rundir secretsfile dumpdir perpeerlog perpeerlogdir plutofork plutorestartoncrash
		plutowait prepluto postpluto plutoopts pluto manualstart packetdefault forwardcontrol
		rp_filter fragicmp hidetos overridemtu klipsdebug virtual_private virtual-private myid
		keep_alive keep-alive force_keepalive disable_port_floating ike-socket-bufsize
		ike-socket-errqueue nhelpers audit-log logip loglimit syslog`, m)
	words("gosec logs through its own logger: gosec start --log", `logfile logappend logtime
		logstderr plutostderrlog plutostderrlogtime`, m)
	words("gosec is its own IPsec stack", `protostack`, m)
	words("gosec listens on all addresses", `interfaces listen listen-tcp listen-udp`, m)
	words("NAT traversal is always on", `nat_traversal`, m)
	words("gosec listens on UDP 500 and 4500, or the ports of gosec start", `ikeport nat-ikeport nat_ikeport`, m)
	words("gosec speaks IKEv1", `ikev1-policy`, m)
	words("opportunistic encryption is not implemented", `oe`, m)
	return m
}()

// ignoredConn are the conn keywords gosec accepts and ignores: a warning
// names each, with what gosec does instead when that says more than "it
// is ignored". Keywords that make a conn need a feature gosec lacks only
// with some values are in featureKeywords, before this table is asked.
var ignoredConn = func() map[string]string {
	m := map[string]string{}
	// Policy, routing and kernel details gosec does its own way.
	words("", `closeaction inactivity installpolicy reqid priority metric mtu nopmtudisc
		decap-dscp encap-dscp ikedscp tfc send-esp-tfc-padding-not-supported send-no-esp-tfc
		overlapip sareftrack nflog nflog-group connalias clones loopback
		nm-configured nm_configured remote-peer-type remote_peer_type cisco-unity cisco_unity
		cisco-split fake-strongswan send-vendorid send_vendorid initial-contact initial_contact
		ikepad nat-ikev1-method nat-keepalive nat_keepalive sha2-truncbug sha2_truncbug
		sha256_96 ms-dh-downgrade pfs-rekey-workaround require-id-on-certificate
		reject-simultaneous-ike-auth retransmit-interval retransmit-timeout share-lease
		failureshunt negotiationshunt dns-match-id pam-authorize ignore-peer-dns
		hostaddrfamily connaddrfamily clientaddrfamily endaddrfamily tunneladdrfamily
		disablearrivalcheck spibase`, m)
	words("IKEv2 only", `mobike reauth narrowing intermediate ppk ppk-ids
		session-resumption send-supported-auth-methods send-redirect redirect-to
		accept-redirect accept-redirect-to eap eap_identity aaa_identity me_peerid mediated_by
		mediation ike-frag ike_frag fragmentation`, m)
	words("IPComp is not implemented", `compress`, m)
	words("gosec does not mark packets", `mark mark-in mark-out mark_in mark_out`, m)
	words("VTI interfaces are not implemented; gosec routes through its TUN device", `vti-interface
		vti-routing vti-shared ipsec-interface`, m)
	words("labeled IPsec is not implemented", `labeled-ipsec labeled_ipsec policy-label
		policy_label sec-label`, m)
	words("hardware offload is not implemented", `nic-offload`, m)
	words("IPsec-over-TCP (RFC 8229) is not implemented", `enable-tcp tcp-remoteport`, m)
	words("IP-TFS is not implemented", `iptfs iptfs-drop-time iptfs-fragmentation
		iptfs-init-delay iptfs-max-queue-size iptfs-packet-size iptfs-reorder-window`, m)
	words("use lifebytes/lifepackets", `ipsec-max-bytes ipsec-max-packets`, m)
	words("Mode Config is not implemented (a conn that needs it is skipped)", `modecfgbanner
		modecfgdns modecfgdns1 modecfgdns2 modecfgdomain modecfgdomains modecfgwins1
		modecfgwins2 modeconfig`, m)
	words("XAUTH is not implemented (a conn that needs it is skipped)", `xauthfail
		xauth_identity`, m)
	words("XAUTH is not implemented", `xauthby`, m)
	words("used with xauth only, which strongSwan enables with authby=xauthpsk", `xauth`, m)
	words("certificates are not implemented", `sendca`, m)
	words("gosec keeps one IPsec SA per direction; replay windows are replay_window=",
		`espreplay_window ahreplay_window`, m)
	// left*/right* keywords.
	for _, side := range []string{"left", "right"} {
		for kw, why := range map[string]string{
			"firewall":      "gosec installs its own filter",
			"updown-config": "", "hostaccess": "", "allowany": "",
			"ikeport": "gosec uses the ports of gosec start", "dns": "Mode Config is not implemented",
			"groups": "", "groups2": "", "ca": "certificates are not implemented",
			"ca2": "certificates are not implemented", "cert2": "certificates are not implemented",
			"sendcert": "certificates are not implemented", "certpolicy": "certificates are not implemented",
			"sigkey": "RSA authentication is not implemented", "pubkey": "RSA authentication is not implemented",
			"rsasigkey2": "RSA authentication is not implemented", "ecdsakey": "ECDSA authentication is not implemented",
			"eddsakey": "EdDSA authentication is not implemented", "ckaid": "NSS keys are not used",
			"vti": "VTI interfaces are not implemented", "cat": "", "interface-ip": "",
			"natip": "", "subnetwithin": "", "groundhog": "", "id2": "a second authentication round is not implemented",
			"username": "XAUTH is not implemented", "xauthname": "XAUTH is not implemented",
			"xauthusername": "XAUTH is not implemented", "espreplay_window": "use replay_window=",
			"modecfgdns1": "Mode Config is not implemented", "modecfgdns2": "Mode Config is not implemented",
			"modecfgwins1": "Mode Config is not implemented", "modecfgwins2": "Mode Config is not implemented",
			"spibase": "",
		} {
			m[side+kw] = why
		}
	}
	return m
}()

// featureKeywords are keywords that make a conn need a feature gosec
// lacks, depending on their value. Each returns a *needError for value v,
// or nil when the value needs nothing gosec lacks: the keyword is then
// accepted and ignored with a warning. The features are named coarsely
// (the summary of gosec conf check groups skipped conns by them), the
// details say more.
var featureKeywords = func() map[string]func(v string) error {
	yes := func(feature, detail string) func(string) error {
		return func(v string) error {
			if isYes(v) {
				return need(feature, detail)
			}
			return nil
		}
	}
	const xauth = "an extended authentication round after phase 1"
	m := map[string]func(string) error{
		"modecfgpull": yes("Mode Config", "the client pulls its configuration"),
	}
	for _, side := range []string{"left", "right"} {
		m[side+"xauthserver"] = yes("XAUTH", xauth)
		m[side+"xauthclient"] = yes("XAUTH", xauth)
		m[side+"modecfgserver"] = yes("Mode Config", "")
		m[side+"modecfgclient"] = yes("Mode Config", "")
		m[side+"addresspool"] = func(string) error { return need("Mode Config", "address pools") }
		m[side+"autheap"] = func(v string) error {
			if v == "none" {
				return nil
			}
			return need("EAP", "IKEv2 only")
		}
		// strongSwan: leftauth= is the first authentication round, and
		// leftauth2= a second one (XAUTH in IKEv1); ipsec.conf(5).
		m[side+"auth"] = endAuthFeature
		m[side+"auth2"] = func(v string) error {
			return need("XAUTH", "a second authentication round, XAUTH in IKEv1")
		}
		// strongSwan: leftsourceip=%config asks for a virtual IP and
		// rightsourceip=10.3.0.0/24 hands them out (Mode Config in
		// IKEv1); a plain address is only the source address of the
		// tunnel's route (Libreswan, strongSwan 4 pluto).
		m[side+"sourceip"] = func(v string) error {
			if strings.HasPrefix(v, "%") || strings.Contains(v, "/") || strings.Contains(v, "-") || strings.Contains(v, ",") {
				return need("Mode Config", "virtual IPs")
			}
			return nil
		}
	}
	return m
}()

// endAuthFeature judges strongSwan's leftauth=/rightauth=: psk (secret)
// is what gosec does; anything else is another method.
func endAuthFeature(v string) error {
	l := strings.ToLower(v)
	switch {
	case l == "psk" || l == "secret":
		return nil
	case strings.HasPrefix(l, "pubkey") || strings.HasPrefix(l, "rsa") || strings.HasPrefix(l, "ecdsa") ||
		strings.HasPrefix(l, "ike:") || strings.HasPrefix(l, "ed25519") || strings.HasPrefix(l, "ed448"):
		return need("public-key authentication", "RSA/ECDSA signatures and certificates")
	case strings.HasPrefix(l, "xauth"):
		return need("XAUTH", "an extended authentication round after phase 1")
	case strings.HasPrefix(l, "eap"):
		return need("EAP", "IKEv2 only")
	case l == "null":
		return need("NULL authentication", "RFC 7619, IKEv2")
	}
	return need("authentication method "+v, "")
}

func isYes(v string) bool {
	switch strings.ToLower(v) {
	case "yes", "true", "on", "1", "y":
		return true
	}
	return false
}

// caKeywords are the keywords of strongSwan's ca sections; gosec ignores
// ca sections as a whole (one warning).
var caKeywords = func() map[string]string {
	m := map[string]string{}
	words("", `cacert certuribase crluri crluri1 crluri2 ldaphost ldapbase ocspuri ocspuri1
		ocspuri2 auto also`, m)
	return m
}()

// normalizeKey is the keyword as gosec's tables spell it: Libreswan
// matches keywords without case (parser.y, hunk_strcaseeq) and takes
// "left-subnet" for "leftsubnet".
func normalizeKey(key string) string {
	k := strings.ToLower(key)
	for _, side := range []string{"left-", "right-"} {
		if strings.HasPrefix(k, side) && len(k) > len(side) {
			k = side[:len(side)-1] + k[len(side):]
		}
	}
	return k
}

// isUserParam reports FreeS/WAN's user extension parameters (x-..., x_...).
func isUserParam(key string) bool {
	return len(key) > 2 && (key[0] == 'x' || key[0] == 'X') && (key[1] == '-' || key[1] == '_')
}
