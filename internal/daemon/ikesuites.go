package daemon

import (
	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/internal/conf"
)

// The engine (ike) speaks its own algorithm types; these map the
// configuration's to them.

var ikeEncrs = map[conf.Encr]ike.Encr{
	conf.EncrNull: ike.EncrNull, conf.Encr3DES: ike.Encr3DES, conf.EncrAESCBC: ike.EncrAESCBC,
	conf.EncrAESCTR: ike.EncrAESCTR, conf.EncrAESGCM8: ike.EncrAESGCM8, conf.EncrAESGCM12: ike.EncrAESGCM12,
	conf.EncrAESGCM16: ike.EncrAESGCM16, conf.EncrChaCha20Poly1305: ike.EncrChaCha20Poly1305,
}

var ikeIntegs = map[conf.Integ]ike.Integ{
	conf.IntegNone: ike.IntegNone, conf.IntegMD5: ike.IntegMD5, conf.IntegSHA1: ike.IntegSHA1,
	conf.IntegSHA256: ike.IntegSHA256, conf.IntegSHA384: ike.IntegSHA384, conf.IntegSHA512: ike.IntegSHA512,
}

// ikeEncr maps an encryption algorithm (0 if ike has none such).
func ikeEncr(e conf.Encr) ike.Encr { return ikeEncrs[e] }

// ikeInteg maps an integrity algorithm.
func ikeInteg(i conf.Integ) ike.Integ { return ikeIntegs[i] }

// ikeSuite maps one configured suite; DH groups are IANA numbers in both.
func ikeSuite(s conf.Suite) ike.Suite {
	return ike.Suite{Cipher: ike.Cipher{Encr: ikeEncr(s.Cipher.Encr), KeyBits: s.Cipher.KeyBits},
		Integ: ikeInteg(s.Integ), DH: ike.DHGroup(s.DH), ESN: s.ESN}
}

// ikeSuites maps the suites of configured proposals.
func ikeSuites(ps []conf.Proposal) []ike.Suite {
	var out []ike.Suite
	for _, p := range ps {
		for _, s := range p.Suites() {
			out = append(out, ikeSuite(s))
		}
	}
	return out
}
