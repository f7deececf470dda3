package isakmp

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
)

// Vendor IDs gosec sends or recognises. The octets are those of
// strongSwan's src/libcharon/sa/ikev1/tasks/isakmp_vendor.c (and the
// RFCs they come from, where one exists).
var (
	// VendorNATT is MD5("RFC 3947"), RFC 3947 3.1.
	VendorNATT = mustHex("4a131c81070358455c5728f20e95452f")
	// VendorNATTDraft02 is draft-ietf-ipsec-nat-t-ike-02.
	VendorNATTDraft02 = mustHex("cd60464335df21f87cfdb2fc68b6a448")
	// VendorNATTDraft02N is "draft-ietf-ipsec-nat-t-ike-02\n" (with the
	// newline, as many implementations sent it).
	VendorNATTDraft02N = mustHex("90cb80913ebb696e086381b5ec427b1f")
	// VendorNATTDraft03 is draft-ietf-ipsec-nat-t-ike-03.
	VendorNATTDraft03 = mustHex("7d9419a65310ca6f2c179d9215529d56")
	// VendorDPD is Dead Peer Detection, RFC 3706 2.
	VendorDPD = mustHex("afcad71368a1f1c96b8696fc77570100")
	// VendorXAUTH is MD5("draft-ietf-ipsra-isakmp-xauth-06.txt") cut to 8
	// octets.
	VendorXAUTH = mustHex("09002689dfd6b712")
	// VendorFragmentation is Cisco's IKE fragmentation extension; peers
	// send it alone or followed by 4 capability octets (0x80000000: Main
	// and Aggressive Mode messages).
	VendorFragmentation = mustHex("4048b7d56ebce88525e7de7f00d6c2d3")
	// VendorStrongSwan is MD5("strongSwan").
	VendorStrongSwan = mustHex("882fe56d6fd20dbc2251613b2ebe5beb")
	// VendorCiscoUnity is CISCO-UNITY 1.0; the last two octets carry the
	// version.
	VendorCiscoUnity = mustHex("12f5f28c457168a9702d9fe274cc0100")
	// VendorMSNT5 is MS NT5 ISAKMPOAKLEY, followed by a 4-octet version.
	VendorMSNT5 = mustHex("1e2b516905991c7d7c96fcbfb587e461")
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

var exactVendors = []struct {
	id   []byte
	name string
}{
	{VendorNATT, "NAT-T (RFC 3947)"},
	{VendorNATTDraft02, "draft-ietf-ipsec-nat-t-ike-02"},
	{VendorNATTDraft02N, `draft-ietf-ipsec-nat-t-ike-02\n`},
	{VendorNATTDraft03, "draft-ietf-ipsec-nat-t-ike-03"},
	{VendorDPD, "DPD (RFC 3706)"},
	{VendorXAUTH, "XAUTH"},
	{VendorStrongSwan, "strongSwan"},
}

// VendorName names a vendor ID for logs: one of the Vendor* values
// ("NAT-T (RFC 3947)", "DPD (RFC 3706)", "FRAGMENTATION" ...), or
// "unknown" followed by the octets in hex.
func VendorName(b []byte) string {
	for _, v := range exactVendors {
		if bytes.Equal(b, v.id) {
			return v.name
		}
	}
	switch {
	case bytes.HasPrefix(b, VendorFragmentation) && len(b) == 16:
		return "FRAGMENTATION"
	case bytes.HasPrefix(b, VendorFragmentation) && len(b) == 20:
		if binary.BigEndian.Uint32(b[16:])&0x80000000 != 0 {
			return "FRAGMENTATION"
		}
		return "FRAGMENTATION (not of Main Mode)"
	case len(b) == 16 && bytes.Equal(b[:14], VendorCiscoUnity[:14]):
		return "Cisco Unity"
	case len(b) >= 16 && bytes.Equal(b[:16], VendorMSNT5):
		return "MS NT5 ISAKMPOAKLEY"
	}
	return "unknown " + hex.EncodeToString(b)
}
