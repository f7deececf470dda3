package conf

import (
	"fmt"
	"slices"
	"strings"
)

// checkAmbiguous warns about IKE conns that a responder cannot tell
// apart: the same two ends (addresses as written, IDs, subnets,
// protocol and port), either way round, the same type and the same
// proposals (ike=, esp=/ah=). A peer's Main Mode and Quick Mode name
// nothing else, so gosec serves its negotiations under the first such
// conn in file order (Pluto and charon choose the best-matching conn;
// between identical ones there is no best), and the later conn's other
// settings (lifetimes, DPD, updown...) never apply to them. Conns that
// differ only in their proposals are told apart by what the peer
// offers (the first conn whose proposals fit) and draw no warning. The
// warning is at the later conn and names the earlier one. Manual conns,
// templates and passthrough/drop conns are not negotiated and are left
// out.
func (p *parser) checkAmbiguous(conns []*Conn) {
	first := make(map[string]*Conn, len(conns))
	for _, c := range conns {
		// A template (the daemon's rule: auto=ignore by default, no left=)
		// is not a conn of its own.
		template := c.Auto == "ignore" && !c.Set("auto") && !c.Set("left")
		if c.Manual || template || (c.Type != "tunnel" && c.Type != "transport") {
			continue
		}
		l, r := endKey(c.Left), endKey(c.Right)
		kind := strings.Join([]string{c.Type, c.IKE.String(), c.ESP.String(), c.AH.String()}, "\x00")
		if f := first[kind+"\x00"+l+"\x00"+r]; f != nil {
			p.warnAmbiguous(c, f)
			continue
		}
		if f := first[kind+"\x00"+r+"\x00"+l]; f != nil {
			p.warnAmbiguous(c, f)
			continue
		}
		first[kind+"\x00"+l+"\x00"+r] = c
	}
}

func (p *parser) warnAmbiguous(c, f *Conn) {
	p.warnf(pos{file: c.File, line: c.Line}, "conn %s has the same endpoints, IDs, traffic selectors and proposals as conn %s (%s:%d): "+
		"a peer's negotiations for either are served under %s, the first; give them different subnets, protoports or IDs, or remove one",
		c.Name, f.Name, f.File, f.Line, f.Name)
}

// endKey is what identifies one end of a conn to a peer's negotiation.
func endKey(e End) string {
	host := e.Host
	if e.Addr.IsValid() {
		host = e.Addr.String()
	}
	if e.Any {
		host = "%any"
	}
	subnets := make([]string, len(e.Subnets))
	for i, s := range e.Subnets {
		subnets[i] = s.Masked().String()
	}
	slices.Sort(subnets)
	return fmt.Sprintf("%s|%s|%s|%d|%d", host, e.ID, strings.Join(subnets, ","), e.Proto, e.Port)
}
