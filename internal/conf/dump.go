package conf

import (
	"fmt"
	"io"
	"strings"
)

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (e *End) dump(w io.Writer, side string, manual bool) {
	host := e.Host
	if host == "" {
		host = "(unset)"
	}
	if e.Addr.IsValid() && e.Addr.String() != e.Host {
		host = fmt.Sprintf("%s (%s)", e.Host, e.Addr)
	}
	fmt.Fprintf(w, "  %s: %s\n", side, host)
	if len(e.Subnets) > 0 {
		var s []string
		for _, p := range e.Subnets {
			s = append(s, p.String())
		}
		fmt.Fprintf(w, "    subnets: %s\n", strings.Join(s, ","))
	}
	if e.ID != "" {
		fmt.Fprintf(w, "    id: %s\n", e.ID)
	}
	if e.Proto != 0 || e.Port != 0 {
		fmt.Fprintf(w, "    protoport: %d/%d\n", e.Proto, e.Port)
	}
	if e.NextHop.IsValid() {
		fmt.Fprintf(w, "    nexthop: %s\n", e.NextHop)
	}
	if e.Cert != "" {
		fmt.Fprintf(w, "    cert: %s\n", e.Cert)
	}
	if e.UpDown != "" {
		fmt.Fprintf(w, "    updown: %s\n", e.UpDown)
	}
	if e.RSASigKey != "" {
		fmt.Fprintf(w, "    rsasigkey: <hidden>\n")
	}
	if manual {
		fmt.Fprintf(w, "    spi: %#08x (SA towards %s)\n", e.SPI, side)
		for _, k := range []struct {
			name string
			key  []byte
		}{{"espenckey", e.ESPEncKey}, {"espauthkey", e.ESPAuthKey}, {"ahkey", e.AHKey}} {
			if k.key != nil {
				fmt.Fprintf(w, "    %s: <hidden, %d bytes>\n", k.name, len(k.key))
			}
		}
	}
}

// Dump writes the resolved conn (after %default and also=) in a stable,
// readable form; secrets are never shown.
func (c *Conn) Dump(w io.Writer) {
	fmt.Fprintf(w, "conn %s (%s:%d)\n", c.Name, c.File, c.Line)
	c.Left.dump(w, "left", c.Manual)
	c.Right.dump(w, "right", c.Manual)
	if c.Manual {
		s := c.ManualSuite()
		fmt.Fprintf(w, "  keying: manual, %s %s\n", strings.ToUpper(c.Proto()), s.Name())
	} else {
		fmt.Fprintf(w, "  keying: %s, authby=%s, aggressive=%s\n", c.KeyExchange, c.AuthBy, yesNo(c.Aggressive))
		fmt.Fprintf(w, "  ike: %s\n", c.IKE)
		if c.Proto() == "ah" {
			fmt.Fprintf(w, "  ah: %s\n", c.AH)
		} else {
			fmt.Fprintf(w, "  esp: %s\n", c.ESP)
		}
		fmt.Fprintf(w, "  pfs: %s\n", yesNo(c.PFS))
		fmt.Fprintf(w, "  lifetimes: ike %s, ipsec %s; rekey=%s margin %s fuzz %d%%; keyingtries=%s\n",
			c.IKELifetime, c.KeyLife, yesNo(c.Rekey), c.RekeyMargin, c.RekeyFuzz, tries(c.KeyingTries))
		if c.LifeBytes != 0 || c.LifePackets != 0 {
			fmt.Fprintf(w, "  volume: lifebytes %d (margin %d), lifepackets %d (margin %d)\n", c.LifeBytes, c.MarginBytes, c.LifePackets, c.MarginPackets)
		}
		fmt.Fprintf(w, "  dpd: delay %s, timeout %s, action %s\n", c.DPDDelay, c.DPDTimeout, c.DPDAction)
	}
	fmt.Fprintf(w, "  type=%s auto=%s forceencaps=%s replay_window=%d esn=%s", c.Type, c.Auto, yesNo(c.ForceEncaps), c.ReplayWindow, yesNo(c.ESN))
	if c.Proto() == "ah" {
		fmt.Fprintf(w, " ah_align=%d", c.AHAlign)
	}
	fmt.Fprintln(w)
	if c.Debug != "" {
		fmt.Fprintf(w, "  debug: %s\n", c.Debug)
	}
}

func tries(n int) string {
	if n == 0 {
		return "%forever"
	}
	return fmt.Sprint(n)
}

// Dump writes the secrets without their values.
func (s *Secrets) Dump(w io.Writer) {
	for _, sec := range s.List {
		ids := strings.Join(sec.IDs, " ")
		if ids == "" {
			ids = "(any)"
		}
		fmt.Fprintf(w, "secret %s : %s <hidden> (%s:%d)\n", ids, sec.Type, sec.File, sec.Line)
	}
}
