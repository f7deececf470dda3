package ike

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"

	"github.com/gosec-ipsec/gosec/ike/ikecrypto"
	"github.com/gosec-ipsec/gosec/ike/isakmp"
)

// keymat is the key material of one ISAKMP SA (strongSwan's keymat_v1):
// SKEYID and its derivations, the phase-1 cipher and the running IV. It
// derives them from what the phase-1 exchange (its task, which owns the
// Diffie-Hellman pair, the public values, the nonces and the SA payload
// until it is done) hands it, and forgets each secret as soon as nothing
// needs it any more:
//
//   - g^xy, SKEYID_e and the encryption key once the cipher is keyed
//     (derive);
//   - SKEYID once the peer is authenticated and our proof sent
//     (authenticated): only HASH_I and HASH_R need it;
//   - SKEYID_d and SKEYID_a when the ISAKMP SA goes (wipe).
//
// The phase-1 task forgets its own: its Diffie-Hellman private value
// once g^xy is computed, its nonces and public values when it is done
// (mainMode.forget).
//
// "Forget" means zeroed in place, not only dropped.
type keymat struct {
	hash   ikecrypto.Hash
	skeyid []byte
	// d is SKEYID_d (children's KEYMAT), a SKEYID_a (the HASHes of
	// Quick Mode and Informational messages).
	d, a []byte
	cbc  *ikecrypto.CBC
	// iv is the running phase-1 IV; after Main Mode, its last block.
	iv []byte
}

// wipe zeroes b in place.
func wipe(b []byte) { clear(b) }

// keyLogger receives the derived keys when key logging (debug) is on.
type keyLogger func(skeyid, d, a, e, key, iv []byte)

// derive computes SKEYID (auth's method, from the nonces ni and nr),
// SKEYID_d, _a, _e and the encryption key from g^xy and the cookies of
// in, then keys the phase-1 cipher and computes the first IV from the
// public values of in (RFC 2409 5, Appendix B). export, if set, receives
// a copy of the encryption key (key export for Wireshark); logKeys, if
// set, the keys. g^xy, SKEYID_e and the encryption key are zeroed before
// derive returns: the cipher keeps its own key schedule.
func (k *keymat) derive(auth authenticator, in authInput, ni, nr, gxy []byte, c ikecrypto.Cipher, keyLen int, export func([]byte), logKeys keyLogger) error {
	defer wipe(gxy)
	keys := ikecrypto.DeriveFrom(k.hash, auth.skeyid(k.hash, ni, nr, gxy), gxy, in.icky, in.rcky, keyLen)
	defer wipe(keys.E)
	defer wipe(keys.Key)
	cbc, err := ikecrypto.NewCBC(c, keys.Key)
	if err != nil {
		wipe(keys.SKEYID)
		wipe(keys.D)
		wipe(keys.A)
		return err
	}
	k.skeyid, k.d, k.a, k.cbc = keys.SKEYID, keys.D, keys.A, cbc
	k.iv = ikecrypto.Phase1IV(k.hash, in.gxi, in.gxr, cbc.BlockSize())
	if export != nil {
		export(append([]byte(nil), keys.Key...))
	}
	if logKeys != nil {
		logKeys(keys.SKEYID, keys.D, keys.A, keys.E, keys.Key, k.iv)
	}
	return nil
}

// authenticated forgets what only the phase-1 proofs needed: SKEYID.
func (k *keymat) authenticated() {
	wipe(k.skeyid)
	k.skeyid = nil
}

// wipe forgets everything (the ISAKMP SA is gone).
func (k *keymat) wipe() {
	k.authenticated()
	wipe(k.d)
	wipe(k.a)
	k.d, k.a, k.cbc, k.iv = nil, nil, nil, nil
}

// phase2IV is the first IV of the exchange with message ID msgID
// (Quick Mode, Informational): a hash of the last phase-1 block and the
// message ID.
func (k *keymat) phase2IV(msgID uint32) []byte {
	return ikecrypto.PhaseIV(k.hash, k.iv, msgID, k.cbc.BlockSize())
}

// authInput is what phase-1 proofs cover besides SKEYID and the ID:
// the cookies, the initiator's SA payload body and the public values
// (the phase-1 task's, lent for the call).
type authInput struct {
	icky, rcky []byte
	saiBody    []byte
	gxi, gxr   []byte
}

// errNoProof is a message without the payload that should authenticate
// it.
var errNoProof = errors.New("no authentication payload")

// authenticator proves our identity in phase 1 and checks the peer's.
// Pre-shared keys are the one method today (pskAuth); RSA signatures and
// certificates would be another implementation (their SKEYID is
// prf(Ni_b | Nr_b, g^xy) and their proof a SIG payload, RFC 2409 5.1),
// and XAUTH a Transaction exchange after Main Mode, not an
// authenticator.
type authenticator interface {
	// skeyid derives SKEYID from the nonces and g^xy.
	skeyid(h ikecrypto.Hash, ni, nr, gxy []byte) []byte
	// prove returns the payload that authenticates our side over our ID
	// payload body: HASH_I from the initiator, HASH_R from the responder.
	prove(k *keymat, in authInput, initiator bool, idBody []byte) isakmp.Payload
	// verify checks the peer's proof among ps over its ID payload body
	// (peerInitiator: the peer is the initiator); errNoProof when ps has
	// none.
	verify(k *keymat, in authInput, peerInitiator bool, idBody []byte, ps []isakmp.Payload) error
	// binding is a digest of the credential: another conn may use the
	// ISAKMP SA only with the same (authz.go).
	binding() [32]byte
}

// pskAuth authenticates with a pre-shared key. It keeps only the key's
// digest once SKEYID is derived.
type pskAuth struct {
	key []byte // not owned: the secrets store's; never modified
	sum [32]byte
}

func newPSKAuth(key []byte) *pskAuth { return &pskAuth{key: key, sum: sha256.Sum256(key)} }

func (a *pskAuth) skeyid(h ikecrypto.Hash, ni, nr, _ []byte) []byte {
	s := ikecrypto.PRF(h, a.key, ni, nr)
	a.key = nil
	return s
}

func (a *pskAuth) proofHash(k *keymat, in authInput, ofInitiator bool, idBody []byte) []byte {
	if ofInitiator {
		return ikecrypto.HashI(k.hash, k.skeyid, in.gxi, in.gxr, in.icky, in.rcky, in.saiBody, idBody)
	}
	return ikecrypto.HashR(k.hash, k.skeyid, in.gxi, in.gxr, in.icky, in.rcky, in.saiBody, idBody)
}

func (a *pskAuth) prove(k *keymat, in authInput, initiator bool, idBody []byte) isakmp.Payload {
	return &isakmp.Hash{Data: a.proofHash(k, in, initiator, idBody)}
}

var errBadHash = errors.New("HASH does not verify")

func (a *pskAuth) verify(k *keymat, in authInput, peerInitiator bool, idBody []byte, ps []isakmp.Payload) error {
	h, ok := find[*isakmp.Hash](ps)
	if !ok {
		return errNoProof
	}
	if !hashEqual(a.proofHash(k, in, peerInitiator, idBody), h.Data) {
		return errBadHash
	}
	return nil
}

func (a *pskAuth) binding() [32]byte { return a.sum }

// hexKeys renders keys for the debug key log.
func hexKeys(skeyid, d, a, e, key, iv []byte) []any {
	return []any{"skeyid", hex.EncodeToString(skeyid), "skeyid_d", hex.EncodeToString(d), "skeyid_a", hex.EncodeToString(a),
		"skeyid_e", hex.EncodeToString(e), "enc_key", hex.EncodeToString(key), "iv", hex.EncodeToString(iv)}
}
