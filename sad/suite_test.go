package sad

import (
	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/internal/integ"
)

// suited attaches a crypto suite of the SA's protocol (the SAD refuses SAs
// without one); the tests here exercise the database, not the crypto.
func suited(sa *SA) *SA {
	key := make([]byte, 20)
	switch sa.Proto {
	case ESP:
		s, err := esp.NewSuite(esp.Config{Cipher: esp.CipherNull, Integ: integ.HMACSHA1_96, AuthKey: key, ESN: sa.ESN})
		if err != nil {
			panic(err)
		}
		sa.ESP = s
	case AH:
		s, err := ah.NewSuite(ah.Config{Integ: integ.HMACSHA1_96, Key: key, ESN: sa.ESN})
		if err != nil {
			panic(err)
		}
		sa.AH = s
	}
	return sa
}
