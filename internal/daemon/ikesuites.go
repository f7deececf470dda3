package daemon

import (
	"fmt"

	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/internal/conf"
	"github.com/gosec-ipsec/gosec/internal/integ"
	"github.com/gosec-ipsec/gosec/sad"
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

// The engine hands negotiated child SAs over in its own terms
// (ike.ChildSA: algorithms, key material per direction); these map them
// to the data plane's configurations.

// espCipher maps an encryption algorithm to the data plane's (negotiated
// and manually keyed SAs alike).
func espCipher(e ike.Encr) (esp.Cipher, error) {
	switch e {
	case ike.EncrNull:
		return esp.CipherNull, nil
	case ike.Encr3DES:
		return esp.Cipher3DESCBC, nil
	case ike.EncrAESCBC:
		return esp.CipherAESCBC, nil
	case ike.EncrAESCTR:
		return esp.CipherAESCTR, nil
	case ike.EncrAESGCM16:
		return esp.CipherAESGCM16, nil
	case ike.EncrChaCha20Poly1305:
		return esp.CipherChaCha20Poly1305, nil
	}
	return 0, fmt.Errorf("cipher %d is not supported by the data plane", e)
}

// integAlgorithm maps an integrity algorithm to the data plane's HMAC
// truncation; integ.None for ike.IntegNone.
func integAlgorithm(i ike.Integ) integ.Algorithm {
	switch i {
	case ike.IntegMD5:
		return integ.HMACMD5_96
	case ike.IntegSHA1:
		return integ.HMACSHA1_96
	case ike.IntegSHA256:
		return integ.HMACSHA256_128
	case ike.IntegSHA384:
		return integ.HMACSHA384_192
	case ike.IntegSHA512:
		return integ.HMACSHA512_256
	}
	return integ.None
}

// childESP is the ESP configuration of one direction (keys k) of a
// negotiated child; its key slices alias k.
func childESP(ch *ike.ChildSA, k ike.ChildKeys) (esp.Config, error) {
	cipher, err := espCipher(ch.Cipher.Encr)
	if err != nil {
		return esp.Config{}, err
	}
	return esp.Config{Cipher: cipher, EncKey: k.Enc, Integ: integAlgorithm(ch.Integ), AuthKey: k.Integ}, nil
}

// childAH is the AH configuration of one direction (keys k) of a
// negotiated child; its key slice aliases k.
func childAH(ch *ike.ChildSA, k ike.ChildKeys) ah.Config {
	return ah.Config{Integ: integAlgorithm(ch.Integ), Key: k.Integ, Align8: ch.AHAlign8}
}

// childSuites keys the data plane's suite of one direction of ch.
func childSuites(ch *ike.ChildSA, k ike.ChildKeys) (*esp.Suite, *ah.Suite, error) {
	if ch.Proto == ike.ProtoAH {
		s, err := ah.NewSuite(childAH(ch, k))
		return nil, s, err
	}
	cfg, err := childESP(ch, k)
	if err != nil {
		return nil, nil, err
	}
	s, err := esp.NewSuite(cfg)
	return s, nil, err
}

// sadProto is the SAD's protocol of a child's ike.Proto (both are the IP
// protocol number, ESP 50 or AH 51).
func sadProto(p ike.Proto) sad.Proto {
	switch p {
	case ike.ProtoAH:
		return sad.AH
	case ike.ProtoESP:
		return sad.ESP
	}
	return sad.Proto(p)
}

// sadMode is the SAD's mode of a child's ike.Mode.
func sadMode(m ike.Mode) sad.Mode {
	if m == ike.ModeTunnel {
		return sad.Tunnel
	}
	return sad.Transport
}

// ikeMode is the key manager's mode of a conn's sad.Mode.
func ikeMode(m sad.Mode) ike.Mode {
	if m == sad.Tunnel {
		return ike.ModeTunnel
	}
	return ike.ModeTransport
}

// sadEncap is the outbound SA's UDP encapsulation of a child's ike.Encap
// (nil: none); reverse swaps the ports for the inbound SA.
func sadEncap(e *ike.Encap, reverse bool) *sad.Encap {
	switch {
	case e == nil:
		return nil
	case reverse:
		return &sad.Encap{SrcPort: e.DstPort, DstPort: e.SrcPort}
	}
	return &sad.Encap{SrcPort: e.SrcPort, DstPort: e.DstPort}
}
