package isakmp

import "fmt"

// DOIIPsec is the IPsec Domain of Interpretation (RFC 2407 4.2).
const DOIIPsec = 1

// Situations of the IPsec DOI (RFC 2407 4.2), a bit mask.
const (
	SitIdentityOnly = 1
	SitSecrecy      = 2
	SitIntegrity    = 4
)

// TransformKeyIKE is the only ISAKMP transform ID, KEY_IKE (RFC 2407 4.4.2).
const TransformKeyIKE = 1

// Phase-1 (Oakley) attribute types (RFC 2409 Appendix A).
const (
	AttrEncryption   = 1
	AttrHash         = 2
	AttrAuthMethod   = 3
	AttrGroupDesc    = 4
	AttrGroupType    = 5
	AttrGroupPrime   = 6
	AttrGroupGenOne  = 7
	AttrGroupGenTwo  = 8
	AttrGroupCurveA  = 9
	AttrGroupCurveB  = 10
	AttrLifeType     = 11
	AttrLifeDuration = 12
	AttrPRF          = 13
	AttrKeyLength    = 14
	AttrFieldSize    = 15
	AttrGroupOrder   = 16
)

// Phase-2 attribute types of the IPsec DOI (RFC 2407 4.5, RFC 3168, RFC
// 4304). They share numbers with the phase-1 ones, so the names carry
// an SA prefix where the two would clash.
const (
	AttrSALifeType     = 1
	AttrSALifeDuration = 2
	AttrSAGroupDesc    = 3 // PFS group
	AttrEncapMode      = 4
	AttrAuthAlg        = 5
	AttrSAKeyLength    = 6
	AttrKeyRounds      = 7
	AttrCompDictSize   = 8
	AttrCompPrivAlg    = 9
	AttrECNTunnel      = 10
	AttrESN            = 11
)

// Life types, of both AttrLifeType and AttrSALifeType.
const (
	LifeSeconds   = 1
	LifeKilobytes = 2
)

// Encapsulation modes (RFC 2407 4.5, RFC 3947 5.1; the draft values are
// those of draft-ietf-ipsec-nat-t-ike-02/03).
const (
	EncapTunnel            = 1
	EncapTransport         = 2
	EncapUDPTunnel         = 3
	EncapUDPTransport      = 4
	EncapUDPTunnelDraft    = 61443
	EncapUDPTransportDraft = 61444
)

// Phase-1 encryption algorithms (RFC 2409 App. A, RFC 3602, RFC 4132).
const (
	EncrDES      = 1
	EncrIDEA     = 2
	EncrBlowfish = 3
	EncrRC5      = 4
	Encr3DES     = 5
	EncrCAST     = 6
	EncrAES      = 7
	EncrCamellia = 8
)

// Phase-1 hash algorithms (RFC 2409 App. A, RFC 4868).
const (
	HashMD5     = 1
	HashSHA     = 2
	HashTiger   = 3
	HashSHA2256 = 4
	HashSHA2384 = 5
	HashSHA2512 = 6
)

// Phase-1 authentication methods (RFC 2409 App. A, RFC 4754, and the
// XAUTH/hybrid private values of draft-ietf-ipsec-isakmp-xauth and
// draft-ietf-ipsec-isakmp-hybrid-auth).
const (
	AuthPSK            = 1
	AuthDSS            = 2
	AuthRSASig         = 3
	AuthRSAEnc         = 4
	AuthRSARevEnc      = 5
	AuthECDSA256       = 9
	AuthECDSA384       = 10
	AuthECDSA521       = 11
	AuthHybridInitRSA  = 64221
	AuthHybridRespRSA  = 64222
	AuthHybridInitDSS  = 64223
	AuthHybridRespDSS  = 64224
	AuthXAUTHInitPSK   = 65001
	AuthXAUTHRespPSK   = 65002
	AuthXAUTHInitDSS   = 65003
	AuthXAUTHRespDSS   = 65004
	AuthXAUTHInitRSA   = 65005
	AuthXAUTHRespRSA   = 65006
	AuthXAUTHInitRSAEn = 65007
	AuthXAUTHRespRSAEn = 65008
)

// Group types (RFC 2409 App. A).
const (
	GroupTypeMODP = 1
	GroupTypeECP  = 2
	GroupTypeEC2N = 3
)

// ESP transform IDs (RFC 2407 4.4.4 and the IANA "IPSEC ESP Transform
// Identifiers" registry). IKEv1 has no ChaCha20-Poly1305 transform ID.
const (
	ESP_DES_IV64       = 1
	ESP_DES            = 2
	ESP_3DES           = 3
	ESP_RC5            = 4
	ESP_IDEA           = 5
	ESP_CAST           = 6
	ESP_BLOWFISH       = 7
	ESP_3IDEA          = 8
	ESP_DES_IV32       = 9
	ESP_RC4            = 10
	ESP_NULL           = 11
	ESP_AES            = 12
	ESP_AES_CTR        = 13
	ESP_AES_CCM_8      = 14
	ESP_AES_CCM_12     = 15
	ESP_AES_CCM_16     = 16
	ESP_AES_GCM_8      = 18
	ESP_AES_GCM_12     = 19
	ESP_AES_GCM_16     = 20
	ESP_SEED_CBC       = 21
	ESP_CAMELLIA       = 22
	ESP_NULL_AUTH_GMAC = 23
)

// AH transform IDs (RFC 2407 4.4.3, RFC 4868, IANA).
const (
	AH_MD5        = 2
	AH_SHA        = 3
	AH_DES        = 4
	AH_SHA2_256   = 5
	AH_SHA2_384   = 6
	AH_SHA2_512   = 7
	AH_RIPEMD     = 8
	AH_AES_XCBC   = 9
	AH_RSA        = 10
	AH_AES128GMAC = 11
	AH_AES192GMAC = 12
	AH_AES256GMAC = 13
)

// Authentication algorithms, values of AttrAuthAlg (RFC 2407 4.5, RFC
// 4868, RFC 4543).
const (
	AuthAlgHMACMD5     = 1
	AuthAlgHMACSHA     = 2
	AuthAlgDESMAC      = 3
	AuthAlgKPDK        = 4
	AuthAlgHMACSHA2256 = 5
	AuthAlgHMACSHA2384 = 6
	AuthAlgHMACSHA2512 = 7
	AuthAlgHMACRIPEMD  = 8
	AuthAlgAESXCBC     = 9
	AuthAlgSigRSA      = 10
	AuthAlgAES128GMAC  = 11
	AuthAlgAES192GMAC  = 12
	AuthAlgAES256GMAC  = 13
)

type names map[uint64]string

var (
	p1AttrNames = names{
		AttrEncryption: "ENCRYPTION_ALGORITHM", AttrHash: "HASH_ALGORITHM", AttrAuthMethod: "AUTHENTICATION_METHOD",
		AttrGroupDesc: "GROUP_DESCRIPTION", AttrGroupType: "GROUP_TYPE", AttrGroupPrime: "GROUP_PRIME",
		AttrGroupGenOne: "GROUP_GENERATOR_ONE", AttrGroupGenTwo: "GROUP_GENERATOR_TWO", AttrGroupCurveA: "GROUP_CURVE_A",
		AttrGroupCurveB: "GROUP_CURVE_B", AttrLifeType: "LIFE_TYPE", AttrLifeDuration: "LIFE_DURATION", AttrPRF: "PRF",
		AttrKeyLength: "KEY_LENGTH", AttrFieldSize: "FIELD_SIZE", AttrGroupOrder: "GROUP_ORDER",
	}
	p2AttrNames = names{
		AttrSALifeType: "SA_LIFE_TYPE", AttrSALifeDuration: "SA_LIFE_DURATION", AttrSAGroupDesc: "GROUP_DESCRIPTION",
		AttrEncapMode: "ENCAPSULATION_MODE", AttrAuthAlg: "AUTH_ALGORITHM", AttrSAKeyLength: "KEY_LENGTH",
		AttrKeyRounds: "KEY_ROUNDS", AttrCompDictSize: "COMPRESS_DICTIONARY_SIZE", AttrCompPrivAlg: "COMPRESS_PRIVATE_ALGORITHM",
		AttrECNTunnel: "ECN_TUNNEL", AttrESN: "EXTENDED_SEQUENCE_NUMBER",
	}
	encrNames = names{EncrDES: "DES_CBC", EncrIDEA: "IDEA_CBC", EncrBlowfish: "BLOWFISH_CBC", EncrRC5: "RC5_R16_B64_CBC",
		Encr3DES: "3DES_CBC", EncrCAST: "CAST_CBC", EncrAES: "AES_CBC", EncrCamellia: "CAMELLIA_CBC"}
	hashNames = names{HashMD5: "MD5", HashSHA: "SHA", HashTiger: "TIGER", HashSHA2256: "SHA2_256", HashSHA2384: "SHA2_384", HashSHA2512: "SHA2_512"}
	authNames = names{AuthPSK: "PRESHARED_KEY", AuthDSS: "DSS_SIG", AuthRSASig: "RSA_SIG", AuthRSAEnc: "RSA_ENC",
		AuthRSARevEnc: "RSA_REVISED_ENC", AuthECDSA256: "ECDSA_SHA256_P256", AuthECDSA384: "ECDSA_SHA384_P384",
		AuthECDSA521: "ECDSA_SHA512_P521", AuthHybridInitRSA: "HYBRID_INIT_RSA", AuthHybridRespRSA: "HYBRID_RESP_RSA",
		AuthHybridInitDSS: "HYBRID_INIT_DSS", AuthHybridRespDSS: "HYBRID_RESP_DSS", AuthXAUTHInitPSK: "XAUTH_INIT_PRESHARED",
		AuthXAUTHRespPSK: "XAUTH_RESP_PRESHARED", AuthXAUTHInitDSS: "XAUTH_INIT_DSS", AuthXAUTHRespDSS: "XAUTH_RESP_DSS",
		AuthXAUTHInitRSA: "XAUTH_INIT_RSA", AuthXAUTHRespRSA: "XAUTH_RESP_RSA", AuthXAUTHInitRSAEn: "XAUTH_INIT_RSA_ENC",
		AuthXAUTHRespRSAEn: "XAUTH_RESP_RSA_ENC"}
	groupNames = names{1: "MODP_768", 2: "MODP_1024", 3: "EC2N_155", 4: "EC2N_185", 5: "MODP_1536", 14: "MODP_2048",
		15: "MODP_3072", 16: "MODP_4096", 17: "MODP_6144", 18: "MODP_8192", 19: "ECP_256", 20: "ECP_384", 21: "ECP_521",
		22: "MODP_1024_160", 23: "MODP_2048_224", 24: "MODP_2048_256", 25: "ECP_192", 26: "ECP_224",
		27: "BRAINPOOL_224", 28: "BRAINPOOL_256", 29: "BRAINPOOL_384", 30: "BRAINPOOL_512", 31: "CURVE25519", 32: "CURVE448"}
	groupTypeNames = names{GroupTypeMODP: "MODP", GroupTypeECP: "ECP", GroupTypeEC2N: "EC2N"}
	lifeNames      = names{LifeSeconds: "SECONDS", LifeKilobytes: "KILOBYTES"}
	encapNames     = names{EncapTunnel: "TUNNEL", EncapTransport: "TRANSPORT", EncapUDPTunnel: "UDP_TUNNEL",
		EncapUDPTransport: "UDP_TRANSPORT", EncapUDPTunnelDraft: "UDP_TUNNEL_DRAFT", EncapUDPTransportDraft: "UDP_TRANSPORT_DRAFT"}
	authAlgNames = names{AuthAlgHMACMD5: "HMAC_MD5", AuthAlgHMACSHA: "HMAC_SHA1", AuthAlgDESMAC: "DES_MAC", AuthAlgKPDK: "KPDK",
		AuthAlgHMACSHA2256: "HMAC_SHA2_256", AuthAlgHMACSHA2384: "HMAC_SHA2_384", AuthAlgHMACSHA2512: "HMAC_SHA2_512",
		AuthAlgHMACRIPEMD: "HMAC_RIPEMD", AuthAlgAESXCBC: "AES_XCBC_MAC", AuthAlgSigRSA: "SIG_RSA",
		AuthAlgAES128GMAC: "AES_128_GMAC", AuthAlgAES192GMAC: "AES_192_GMAC", AuthAlgAES256GMAC: "AES_256_GMAC"}
	espNames = names{ESP_DES_IV64: "DES_IV64", ESP_DES: "DES", ESP_3DES: "3DES", ESP_RC5: "RC5", ESP_IDEA: "IDEA",
		ESP_CAST: "CAST", ESP_BLOWFISH: "BLOWFISH", ESP_3IDEA: "3IDEA", ESP_DES_IV32: "DES_IV32", ESP_RC4: "RC4",
		ESP_NULL: "NULL", ESP_AES: "AES_CBC", ESP_AES_CTR: "AES_CTR", ESP_AES_CCM_8: "AES_CCM_8",
		ESP_AES_CCM_12: "AES_CCM_12", ESP_AES_CCM_16: "AES_CCM_16", ESP_AES_GCM_8: "AES_GCM_8",
		ESP_AES_GCM_12: "AES_GCM_12", ESP_AES_GCM_16: "AES_GCM_16", ESP_SEED_CBC: "SEED_CBC",
		ESP_CAMELLIA: "CAMELLIA", ESP_NULL_AUTH_GMAC: "NULL_AUTH_AES_GMAC"}
	ahNames = names{AH_MD5: "MD5", AH_SHA: "SHA", AH_DES: "DES", AH_SHA2_256: "SHA2_256", AH_SHA2_384: "SHA2_384",
		AH_SHA2_512: "SHA2_512", AH_RIPEMD: "RIPEMD", AH_AES_XCBC: "AES_XCBC_MAC", AH_RSA: "RSA",
		AH_AES128GMAC: "AES_128_GMAC", AH_AES192GMAC: "AES_192_GMAC", AH_AES256GMAC: "AES_256_GMAC"}
	onOffNames = names{0: "OFF", 1: "ON"}
)

// valueNames says how the values of a phase-1 or phase-2 attribute type
// are named; nil for numeric attributes (lifetimes, key lengths).
func valueNames(phase1 bool, t uint16) names {
	if phase1 {
		switch t {
		case AttrEncryption:
			return encrNames
		case AttrHash:
			return hashNames
		case AttrAuthMethod:
			return authNames
		case AttrGroupDesc:
			return groupNames
		case AttrGroupType:
			return groupTypeNames
		case AttrLifeType:
			return lifeNames
		}
		return nil
	}
	switch t {
	case AttrSALifeType:
		return lifeNames
	case AttrSAGroupDesc:
		return groupNames
	case AttrEncapMode:
		return encapNames
	case AttrAuthAlg:
		return authAlgNames
	case AttrESN:
		return onOffNames
	}
	return nil
}

// AttrString names an attribute for logs, "KEY_LENGTH=128",
// "ENCRYPTION_ALGORITHM=AES_CBC": phase1 selects the Oakley attribute
// space (RFC 2409 App. A), otherwise the IPsec DOI's (RFC 2407 4.5).
// Values without a name print as numbers, or in hex if longer than 8
// octets.
func AttrString(phase1 bool, a Attr) string {
	tn := p2AttrNames
	if phase1 {
		tn = p1AttrNames
	}
	name, ok := tn[uint64(a.Type)]
	if !ok {
		name = fmt.Sprintf("ATTR_%d", a.Type)
	}
	v, ok := a.Uint()
	if !ok {
		return fmt.Sprintf("%s=0x%x", name, a.Value)
	}
	if vn, ok := valueNames(phase1, a.Type)[v]; ok {
		return name + "=" + vn
	}
	return fmt.Sprintf("%s=%d", name, v)
}

// TransformName names transform ID id of protocol p for logs: KEY_IKE,
// the ESP cipher (ESP_AES_CBC) or the AH algorithm (AH_SHA).
func TransformName(p ProtocolID, id uint8) string {
	var tn names
	switch p {
	case ProtoISAKMP:
		if id == TransformKeyIKE {
			return "KEY_IKE"
		}
	case ProtoESP:
		tn = espNames
	case ProtoAH:
		tn = ahNames
	}
	if n, ok := tn[uint64(id)]; ok {
		return p.String() + "_" + n
	}
	return fmt.Sprintf("%s_TRANSFORM_%d", p, id)
}
