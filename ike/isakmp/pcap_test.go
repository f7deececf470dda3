package isakmp

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/google/gopacket"
	"github.com/google/gopacket/layers"
	"github.com/google/gopacket/pcapgo"
)

// captured is one ISAKMP message of testdata/mm-aes128.pcap.
type captured struct {
	frame int
	msg   []byte
}

// readPcap returns the ISAKMP messages of the capture: UDP 500, and UDP
// 4500 after the four-octet zero non-ESP marker (RFC 3948 2.2).
func readPcap(t testing.TB) []captured {
	t.Helper()
	f, err := os.Open("testdata/mm-aes128.pcap")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The capture is pcapng (tcpdump/dumpcap's default format).
	r, err := pcapgo.NewNgReader(f, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	var out []captured
	for frame := 1; ; frame++ {
		data, _, err := r.ReadPacketData()
		if err != nil {
			break
		}
		p := gopacket.NewPacket(data, r.LinkType(), gopacket.Default)
		u, ok := p.Layer(layers.LayerTypeUDP).(*layers.UDP)
		if !ok {
			continue
		}
		b := u.LayerPayload()
		switch {
		case u.SrcPort == 500 || u.DstPort == 500:
		case (u.SrcPort == 4500 || u.DstPort == 4500) && len(b) >= 4 && binary.BigEndian.Uint32(b) == 0:
			b = b[4:]
		default:
			continue // ESP, or ESP-in-UDP
		}
		out = append(out, captured{frame, append([]byte(nil), b...)})
	}
	return out
}

var (
	reFrame   = regexp.MustCompile(`^Frame (\d+):`)
	reNum     = regexp.MustCompile(`\((\d+)\)$`)
	reEncData = regexp.MustCompile(`^Encrypted Data \((\d+) bytes\)$`)
	reAttr    = regexp.MustCompile(`^(?:IKE|IPsec) Attribute \(t=(\d+),l=(\d+)\)`)
	reHex     = regexp.MustCompile(`^[0-9a-f]+…?$`)
)

// tsharkFacts turns the tshark -V text into, per frame, a list of facts
// ("exchange 2", "payload 13", "len 20", "vid 0900...") in the order
// tshark printed them. Only the ISAKMP part is read, and nothing under
// "Encrypted Data" (tshark decrypted that with keys this test does not
// have).
func tsharkFacts(t *testing.T) map[int][]string {
	t.Helper()
	f, err := os.Open("testdata/mm-aes128-decoded.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	facts := map[int][]string{}
	frame, inISAKMP, encrypted := 0, false, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if m := reFrame.FindStringSubmatch(line); m != nil {
			frame, _ = strconv.Atoi(m[1])
			inISAKMP, encrypted = false, false
			continue
		}
		if line == "Internet Security Association and Key Management Protocol" {
			inISAKMP = true
			continue
		}
		if !inISAKMP || encrypted {
			continue
		}
		if !strings.HasPrefix(line, " ") {
			inISAKMP = false
			continue
		}
		s := strings.TrimSpace(line)
		key, val, _ := strings.Cut(s, ": ")
		num := ""
		if m := reNum.FindStringSubmatch(val); m != nil {
			num = m[1]
		}
		add := func(f string, a ...any) { facts[frame] = append(facts[frame], fmt.Sprintf(f, a...)) }
		switch {
		case key == "Initiator SPI":
			add("icookie %s", val)
		case key == "Responder SPI":
			add("rcookie %s", val)
		case key == "Version":
			add("version %s", val)
		case key == "Exchange type":
			add("exchange %s", num)
		case key == "Flags":
			add("flags %s", val)
		case key == "Message ID":
			add("msgid %s", val)
		case key == "Length":
			add("length %s", val)
		case key == "Next payload":
			add("next %s", num)
		case key == "Payload" && num == "":
			// "Payload: Vendor ID (13) : XAUTH", "Payload: Proposal (2) # 1"
			m := regexp.MustCompile(`\((\d+)\)`).FindStringSubmatch(val)
			add("payload %s", m[1])
		case key == "Payload":
			add("payload %s", num)
		case key == "Payload length":
			add("len %s", val)
		case key == "Domain of interpretation":
			add("doi %s", num)
		case key == "Situation":
			add("situation %s", val)
		case key == "Proposal number":
			add("proposal %s", val)
		case key == "Protocol ID":
			add("protocol %s", num)
		case key == "SPI Size":
			add("spisize %s", val)
		case key == "Proposal transforms":
			add("transforms %s", val)
		case key == "Transform number":
			add("transform %s", val)
		case key == "Transform ID":
			add("transformid %s", num)
		case reAttr.MatchString(s):
			m := reAttr.FindStringSubmatch(s)
			add("attr %s %s", m[1], m[2])
		case key == "Value":
			add("value %s", val)
		case key == "Vendor ID" && reHex.MatchString(val):
			add("vid %s", val)
		case key == "Key Exchange Data":
			add("ke %s", val)
		case key == "Nonce DATA":
			add("nonce %s", val)
		case key == "HASH of the address and port":
			add("natd %s", val)
		case reEncData.MatchString(s):
			add("encrypted %s", reEncData.FindStringSubmatch(s)[1])
			encrypted = true
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return facts
}

// ourFacts states what this package decoded in the same vocabulary.
func ourFacts(t *testing.T, msg []byte) []string {
	t.Helper()
	var out []string
	add := func(f string, a ...any) { out = append(out, fmt.Sprintf(f, a...)) }
	h, err := ParseHeader(msg)
	if err != nil {
		t.Fatal(err)
	}
	add("icookie %x", h.ICookie)
	add("rcookie %x", h.RCookie)
	add("next %d", h.Next)
	add("version %d.%d", h.Version>>4, h.Version&15)
	add("exchange %d", h.Exchange)
	add("flags 0x%02x", h.Flags)
	add("msgid 0x%08x", h.MessageID)
	add("length %d", h.Length)
	if h.Flags&FlagEncryption != 0 {
		add("encrypted %d", int(h.Length)-HeaderLen)
		return out
	}
	ps, raws, err := DecodeAll(h.Next, msg[HeaderLen:h.Length])
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range ps {
		next := PayloadNone
		if i+1 < len(ps) {
			next = ps[i+1].Type()
		}
		add("payload %d", p.Type())
		add("next %d", next)
		add("len %d", 4+len(raws[i].Body))
		switch v := p.(type) {
		case *SA:
			add("doi %d", v.DOI)
			add("situation %08x", v.Situation)
			for j, pr := range v.Proposals {
				body := EncodeBody(&SA{Proposals: []Proposal{pr}})[8+4:]
				add("payload %d", PayloadProposal)
				add("next %d", map[bool]int{true: 0, false: 2}[j == len(v.Proposals)-1])
				add("len %d", 4+len(body))
				add("proposal %d", pr.Num)
				add("protocol %d", pr.Protocol)
				add("spisize %d", len(pr.SPI))
				add("transforms %d", len(pr.Transforms))
				for k, tr := range pr.Transforms {
					add("payload %d", PayloadTransform)
					add("next %d", map[bool]int{true: 0, false: 3}[k == len(pr.Transforms)-1])
					add("len %d", 4+len(encodeTransform(&tr)))
					add("transform %d", tr.Num)
					add("transformid %d", tr.ID)
					for _, a := range tr.Attrs {
						add("attr %d %d", a.Type, len(a.Value))
						add("value %x", a.Value)
					}
				}
			}
		case *VendorID:
			add("vid %x", v.Data)
		case *KE:
			add("ke %x", v.Data)
		case *Nonce:
			add("nonce %x", v.Data)
		case *NATD:
			add("natd %x", v.Hash)
		default:
			t.Fatalf("frame payload %T not expected in this capture", p)
		}
	}
	return out
}

// TestReferenceCapture decodes the strongSwan-vs-gosec capture and checks
// every field against what tshark 4.0 printed for it
// (testdata/mm-aes128-decoded.txt, made by
// /work/shared/interop/reference/decode.sh -V).
func TestReferenceCapture(t *testing.T) {
	msgs := readPcap(t)
	if len(msgs) != 9 {
		t.Fatalf("%d ISAKMP messages in the capture, tshark shows 9 (MM1-MM6, QM1-QM3)", len(msgs))
	}
	facts := tsharkFacts(t)
	for _, m := range msgs {
		want := facts[m.frame]
		got := ourFacts(t, m.msg)
		if !sameFacts(got, want) {
			t.Errorf("frame %d:\n got %q\nwant %q", m.frame, got, want)
		}
		// The comparison has teeth: tshark stated enough about the
		// frame, and one changed fact is noticed.
		if len(want) < 9 {
			t.Fatalf("frame %d: only %d facts read from the tshark text", m.frame, len(want))
		}
		for i := range got {
			bad := append([]string(nil), got...)
			k, v, _ := strings.Cut(bad[i], " ")
			bad[i] = k + " 1" + v
			if sameFacts(bad, want) {
				t.Fatalf("frame %d: changing %q went unnoticed", m.frame, got[i])
			}
		}
	}
	// The plaintext Main Mode messages re-encode to the captured octets.
	for _, m := range msgs[:4] {
		h, _ := ParseHeader(m.msg)
		ps, _, err := DecodeAll(h.Next, m.msg[HeaderLen:h.Length])
		if err != nil {
			t.Fatal(err)
		}
		if again := Encode(h, ps); !bytes.Equal(again, m.msg) {
			t.Errorf("frame %d re-encoded:\n%x\nwant\n%x", m.frame, again, m.msg)
		}
	}
}

// sameFacts compares the two fact lists as multisets per kind, in order
// within a kind; tshark's "…" marks a value it cut short (KE data), which
// then only has to be a prefix.
func sameFacts(got, want []string) bool {
	group := func(s []string) map[string][]string {
		m := map[string][]string{}
		for _, f := range s {
			k, v, _ := strings.Cut(f, " ")
			m[k] = append(m[k], v)
		}
		return m
	}
	g, w := group(got), group(want)
	if len(g) != len(w) {
		return false
	}
	for k, wv := range w {
		gv := g[k]
		if len(gv) != len(wv) {
			return false
		}
		for i := range wv {
			if p, cut := strings.CutSuffix(wv[i], "…"); cut {
				if !strings.HasPrefix(gv[i], p) {
					return false
				}
			} else if gv[i] != wv[i] {
				return false
			}
		}
	}
	return true
}
