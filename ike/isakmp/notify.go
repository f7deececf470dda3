package isakmp

import "fmt"

// NotifyType is an ISAKMP notify message type (RFC 2408 3.14.1, RFC 2407
// 4.6.3, RFC 3706).
type NotifyType uint16

// Notify message types.
const (
	InvalidPayloadType      NotifyType = 1
	DOINotSupported         NotifyType = 2
	SituationNotSupported   NotifyType = 3
	InvalidCookie           NotifyType = 4
	InvalidMajorVersion     NotifyType = 5
	InvalidMinorVersion     NotifyType = 6
	InvalidExchangeType     NotifyType = 7
	InvalidFlags            NotifyType = 8
	InvalidMessageID        NotifyType = 9
	InvalidProtocolID       NotifyType = 10
	InvalidSPI              NotifyType = 11
	InvalidTransformID      NotifyType = 12
	AttributesNotSupported  NotifyType = 13
	NoProposalChosen        NotifyType = 14
	BadProposalSyntax       NotifyType = 15
	PayloadMalformed        NotifyType = 16
	InvalidKeyInformation   NotifyType = 17
	InvalidIDInformation    NotifyType = 18
	InvalidCertEncoding     NotifyType = 19
	InvalidCertificate      NotifyType = 20
	CertTypeUnsupported     NotifyType = 21
	InvalidCertAuthority    NotifyType = 22
	InvalidHashInformation  NotifyType = 23
	AuthenticationFailed    NotifyType = 24
	InvalidSignature        NotifyType = 25
	AddressNotification     NotifyType = 26
	NotifySALifetime        NotifyType = 27
	CertificateUnavailable  NotifyType = 28
	UnsupportedExchangeType NotifyType = 29
	UnequalPayloadLengths   NotifyType = 30
	ResponderLifetime       NotifyType = 24576
	ReplayStatus            NotifyType = 24577
	InitialContact          NotifyType = 24578
	RUThere                 NotifyType = 36136
	RUThereAck              NotifyType = 36137
)

var notifyNames = map[NotifyType]string{
	1: "INVALID_PAYLOAD_TYPE", 2: "DOI_NOT_SUPPORTED", 3: "SITUATION_NOT_SUPPORTED", 4: "INVALID_COOKIE",
	5: "INVALID_MAJOR_VERSION", 6: "INVALID_MINOR_VERSION", 7: "INVALID_EXCHANGE_TYPE", 8: "INVALID_FLAGS",
	9: "INVALID_MESSAGE_ID", 10: "INVALID_PROTOCOL_ID", 11: "INVALID_SPI", 12: "INVALID_TRANSFORM_ID",
	13: "ATTRIBUTES_NOT_SUPPORTED", 14: "NO_PROPOSAL_CHOSEN", 15: "BAD_PROPOSAL_SYNTAX", 16: "PAYLOAD_MALFORMED",
	17: "INVALID_KEY_INFORMATION", 18: "INVALID_ID_INFORMATION", 19: "INVALID_CERT_ENCODING", 20: "INVALID_CERTIFICATE",
	21: "CERT_TYPE_UNSUPPORTED", 22: "INVALID_CERT_AUTHORITY", 23: "INVALID_HASH_INFORMATION", 24: "AUTHENTICATION_FAILED",
	25: "INVALID_SIGNATURE", 26: "ADDRESS_NOTIFICATION", 27: "NOTIFY_SA_LIFETIME", 28: "CERTIFICATE_UNAVAILABLE",
	29: "UNSUPPORTED_EXCHANGE_TYPE", 30: "UNEQUAL_PAYLOAD_LENGTHS",
	24576: "RESPONDER_LIFETIME", 24577: "REPLAY_STATUS", 24578: "INITIAL_CONTACT", 36136: "R_U_THERE", 36137: "R_U_THERE_ACK",
}

// String names the notify type as RFC 2408 3.14.1 spells it, with
// underscores (NO_PROPOSAL_CHOSEN), or NOTIFY_n.
func (t NotifyType) String() string {
	if n, ok := notifyNames[t]; ok {
		return n
	}
	return fmt.Sprintf("NOTIFY_%d", uint16(t))
}

// Error reports whether t is an error type (below 8192).
func (t NotifyType) Error() bool { return t < 8192 }
