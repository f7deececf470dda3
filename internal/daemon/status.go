package daemon

import (
	"context"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/internal/dataplane"
	"github.com/gosec-ipsec/gosec/internal/drop"
	"github.com/gosec-ipsec/gosec/internal/netio"
	"github.com/gosec-ipsec/gosec/sad"
)

// StatusSchema is the version of the JSON that `gosec status --json` and
// `gosec statusall --json` print (the "schema" field). It goes up when a
// field changes meaning or goes away; new fields do not change it.
const StatusSchema = 1

// Status is what `gosec status` and `gosec statusall` show (and, with
// --json, print).
type Status struct {
	Schema  int       `json:"schema"`
	Version string    `json:"version"`
	PID     int       `json:"pid"`
	Started time.Time `json:"started"`
	Uptime  string    `json:"uptime"`
	Socket  string    `json:"socket"`
	TUN     string    `json:"tun"`
	TUNMTU  int       `json:"tun_mtu"`
	// TUNQueues is the number of TUN queues read in parallel.
	TUNQueues int `json:"tun_queues"`
	// Procs is the daemon's GOMAXPROCS, CPUs the machine's CPUs.
	Procs int `json:"procs"`
	CPUs  int `json:"cpus"`
	// KeepWarm is the data plane's keep-warm timer: "1ms for 2s" (every
	// millisecond for two seconds after a packet) or "off".
	KeepWarm string                  `json:"keep_warm"`
	Plane    dataplane.StatsSnapshot `json:"dataplane"`
	Drops    map[string]uint64       `json:"drops"`
	NATT     NATTStatus              `json:"natt"`
	Conns    []ConnStatus            `json:"conns"`
	// ISAKMP lists the phase-1 SAs; IKE counts IKE messages by outcome.
	ISAKMP []ike.ISAKMPStatus `json:"isakmp"`
	IKE    map[string]uint64  `json:"ike_counters,omitempty"`
	// IKEUnmatched counts the exchanges for which no loaded conn was
	// known (UnmatchedConn).
	IKEUnmatched *IKEConnStats `json:"ike_unmatched,omitempty"`
	// Warnings are conditions an administrator must know about, such as
	// key export being on.
	Warnings []string `json:"warnings,omitempty"`
	// IKEQueue is how many events wait for the key manager; IKEHalfOpen
	// how many phase-1 SAs are still negotiating.
	IKEQueue    int `json:"ike_queue_depth"`
	IKEHalfOpen int `json:"ike_half_open"`
	// LogLevels are the log levels in force (gosec debug changes them).
	LogLevels LogLevels `json:"log_levels"`

	// KernelDrops is what the kernel's unknown-SPI filter dropped before
	// the data plane saw it (absent without the filter).
	KernelDrops *KernelDropsStatus `json:"kernel_drops,omitempty"`
	// RawPaths says how raw ESP and AH are received and sent.
	RawPaths *RawPathStatus `json:"raw_paths,omitempty"`
	// Firewall is the daemon's nftables table.
	Firewall *FirewallStatus `json:"firewall,omitempty"`
}

// FirewallStatus is the daemon's nftables table: its name, whether the
// daemon owns it (no other process can change or delete it, and a ruleset
// flush leaves it), and the lock table it holds against a second daemon
// in the namespace (empty: none, before Linux 5.12).
type FirewallStatus struct {
	Table string `json:"table"`
	Owned bool   `json:"owned"`
	Lock  string `json:"lock,omitempty"`
	// Missing: another process deleted the (unowned) table while the
	// daemon ran and it could not be restored; Restored: how many times
	// it was deleted so and restored.
	Missing  bool `json:"missing,omitempty"`
	Restored int  `json:"restored,omitempty"`
}

func (f *FirewallStatus) text() string {
	var t string
	if f.Missing {
		t = fmt.Sprintf("table inet %s MISSING: deleted by another process (a ruleset flush?) while the daemon ran; the cleartext drops, guards and SPI filter are gone until gosec stop and gosec start", f.Table)
	} else if f.Owned {
		t = fmt.Sprintf("table inet %s, owned by the daemon (kept through nft flush ruleset, closed to other processes; kept after a crash)", f.Table)
	} else {
		t = fmt.Sprintf("table inet %s, NOT owned by the daemon (a ruleset flush deletes it)", f.Table)
	}
	if f.Restored > 0 {
		t += fmt.Sprintf("; deleted by another process and restored %d times", f.Restored)
	}
	if f.Lock != "" {
		return t + fmt.Sprintf("; namespace lock: table inet %s", f.Lock)
	}
	return t + "; namespace NOT locked against a second gosec (the kernel lacks NFT_TABLE_F_OWNER, Linux 5.12)"
}

// Setup returns the config setup keywords of the loaded configuration.
func (d *Daemon) Setup() map[string]string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conns.Setup
}

// Snapshot is what statusall shows, for readers in the same process (the
// metrics endpoint).
func (d *Daemon) Snapshot() *Status { return d.status(true) }

// NATTStatus counts what arrived on the NAT-T port besides ESP.
type NATTStatus struct {
	Port       int    `json:"port"`
	Keepalives uint64 `json:"keepalives"`
	IKE        uint64 `json:"ike"`
	Invalid    uint64 `json:"invalid"`
}

// ConnStatus is one conn, up or not.
type ConnStatus struct {
	Name          string     `json:"name"`
	State         string     `json:"state"` // "installed" or "down"
	Keying        string     `json:"keying"`
	Auto          string     `json:"auto"`
	Mode          string     `json:"mode"`
	Local         string     `json:"local"`
	Remote        string     `json:"remote"`
	LocalSubnets  []string   `json:"local_subnets"`
	RemoteSubnets []string   `json:"remote_subnets"`
	Proposal      string     `json:"proposal"`
	Encap         bool       `json:"encap"`
	ReqID         uint32     `json:"reqid,omitempty"`
	Since         string     `json:"since,omitempty"`
	SAs           []SAStatus `json:"sas"`
	Cleartext     uint64     `json:"cleartext_dropped"`
	// Guarded counts cleartext to the conn's protected prefixes that the
	// outbound guard dropped (it would have left outside the TUN).
	Guarded uint64 `json:"cleartext_out_dropped"`
	// GuardKept: the conn is down but its guard stays (its last SA went,
	// or a crashed gosec left it) until it is up again or taken down.
	GuardKept bool `json:"guard_kept,omitempty"`
	// Children are the IPsec SA pairs IKE negotiated (their SAs are in
	// SAs too); IKEError is why the last `gosec up` failed.
	Children []ike.ChildStatus `json:"children,omitempty"`
	IKEError string            `json:"ike_error,omitempty"`
	// IKEStats is how the conn's IKE exchanges went since it was loaded
	// (absent before its first exchange).
	IKEStats    *IKEConnStats `json:"ike_stats,omitempty"`
	Unsupported string        `json:"unsupported,omitempty"`
}

// SAStatus is one SA of a conn.
type SAStatus struct {
	SPI          string            `json:"spi"`
	Dir          string            `json:"dir"`
	Proto        string            `json:"proto"`
	Mode         string            `json:"mode"`
	Src          string            `json:"src"`
	Dst          string            `json:"dst"`
	Encap        bool              `json:"encap"`
	Packets      uint64            `json:"packets"`
	Bytes        uint64            `json:"bytes"`
	LastPacket   *time.Time        `json:"last_packet,omitempty"`
	Seq          uint64            `json:"seq"`
	ReplayWindow int               `json:"replay_window"`
	Drops        map[string]uint64 `json:"drops"`
	Lifetime     string            `json:"lifetime"`
	// LifeLeftSeconds and LifeLeftBytes are what remains of the hard
	// lifetime (absent when there is no such limit).
	LifeLeftSeconds *int64  `json:"life_left_seconds,omitempty"`
	LifeLeftBytes   *uint64 `json:"life_left_bytes,omitempty"`
}

// status gathers the daemon's state.
func (d *Daemon) status(all bool) *Status {
	now := d.opts.Clock.Now()
	st := &Status{
		Schema: StatusSchema, Version: Version, Warnings: d.warnings, PID: os.Getpid(), Started: d.started,
		Uptime: now.Sub(d.started).Truncate(time.Second).String(),
		Socket: d.opts.Socket, TUN: d.opts.TUNName, LogLevels: d.logLevels(),
	}
	if d.tun != nil {
		st.TUNMTU, _ = d.tun.MTU()
		st.TUNQueues = d.tun.Queues()
	}
	st.Procs, st.CPUs = runtime.GOMAXPROCS(0), runtime.NumCPU()
	st.KeepWarm = keepWarmText(d.opts.KeepWarm, d.opts.KeepWarmFor)
	if d.plane != nil {
		st.Plane = d.plane.Stats()
		st.Drops = st.Plane.Drops
	}
	d.kernelDrops(st)
	st.RawPaths = d.rawPaths()
	if d.filter != nil {
		st.Firewall = &FirewallStatus{Table: d.opts.FilterTable, Owned: d.filter.Owned(), Missing: d.filter.Gone(), Restored: d.filter.Restores()}
		if !st.Firewall.Owned {
			st.Warnings = append(slices.Clip(st.Warnings), notOwnedWarning(d.opts.FilterTable))
		}
		if st.Firewall.Missing {
			st.Warnings = append(slices.Clip(st.Warnings), tableGoneWarning(d.opts.FilterTable))
		} else if st.Firewall.Restored > 0 {
			st.Warnings = append(slices.Clip(st.Warnings), fmt.Sprintf("nftables table inet %s was deleted by another process %d times (a firewall reload that flushes the ruleset?) and restored each time; "+
				"its cleartext drops and guards were missing for a moment then", d.opts.FilterTable, st.Firewall.Restored))
		}
		if d.claim != nil && d.claim.Locked() {
			st.Firewall.Lock = d.claim.Table() + netio.LockTableSuffix
		}
	}
	if d.natt != nil {
		st.NATT = NATTStatus{Port: d.opts.NATTPort}
		for _, q := range append([]*netio.NATT{d.natt}, d.nattQueues...) {
			st.NATT.Keepalives += q.Keepalives.Load()
			st.NATT.IKE += q.IKEMsgs.Load()
			st.NATT.Invalid += q.Invalid.Load()
		}
	}
	var children []ike.ChildStatus
	if d.ike != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		st.ISAKMP, children, _ = d.ike.Status(ctx)
		cancel()
		st.IKE = d.ike.Stats.Snapshot()
		st.IKEQueue = d.ike.QueueDepth()
		for _, p := range st.ISAKMP {
			if p.State != "MAIN_I4" && p.State != "MAIN_R3" {
				st.IKEHalfOpen++
			}
		}
	}
	st.IKEUnmatched = d.ikeStats.get(UnmatchedConn)
	// The filter's counters are listed before d.mu is taken: at 10,000
	// conns the listing takes seconds, and SA installs wait for d.mu.
	var counts map[string]netio.FilterCounts
	if d.filter != nil { // set once, before the control socket serves
		counts, _ = d.filter.Counts()
	}
	byConn := map[string][]ike.ChildStatus{}
	for _, ch := range children {
		byConn[ch.Conn] = append(byConn[ch.Conn], ch)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, name := range d.conns.Order {
		c := d.conns.Conns[name]
		cs := ConnStatus{
			Name: name, State: "down", Keying: "ike", Auto: c.Auto, Mode: c.Mode.String(),
			Local: addrText(c.Local), Remote: addrText(c.Remote), Proposal: c.Proposal, Encap: c.Encap != nil,
			LocalSubnets: prefixStrings(c.LocalSubnets), RemoteSubnets: prefixStrings(c.RemoteSubnets),
		}
		if c.Manual != nil {
			cs.Keying = "manual"
		}
		cs.IKEError, cs.Unsupported = d.ikeErr[name], c.IKEUnsupported
		cs.Children = byConn[name]
		if c.IKE != nil {
			cs.IKEStats = d.ikeStats.get(name)
		}
		if d.guardKept[name] && d.filter != nil {
			cs.GuardKept = true
			cs.Guarded = counts[name].Guarded
		}
		if a, ok := d.active[name]; ok {
			cs.State, cs.ReqID, cs.Since = "installed", a.reqid, a.since
			if a.pairs != nil && len(a.children) == 0 {
				// Policies without SAs: traffic is held (trap) or dropped.
				cs.State = "routed"
			}
			for _, sa := range []*sad.SA{a.in, a.out} {
				if sa != nil {
					cs.SAs = append(cs.SAs, saStatus(sa, now))
				}
			}
			for _, k := range a.children {
				if k.in != nil && k.out != nil { // half-installed pairs are not shown
					cs.SAs = append(cs.SAs, saStatus(k.in, now), saStatus(k.out, now))
				}
			}
			cs.Cleartext, cs.Guarded = counts[name].Dropped, counts[name].Guarded
		}
		st.Conns = append(st.Conns, cs)
	}
	return st
}

// addrText is an end's address as ipsec.conf writes it: %any when it is
// not known (right=%any), not Go's "invalid IP".
func addrText(a netip.Addr) string {
	if !a.IsValid() || a.IsUnspecified() {
		return "%any"
	}
	return a.String()
}

func saStatus(sa *sad.SA, now time.Time) SAStatus {
	s := sa.Stats()
	out := SAStatus{
		SPI: fmt.Sprintf("%08x", sa.SPI), Dir: sa.Dir.String(), Proto: sa.Proto.String(), Mode: sa.Mode.String(),
		Src: sa.Src.String(), Dst: sa.Dst.String(), Encap: sa.Encap != nil, Seq: s.Seq, Drops: map[string]uint64{},
		Lifetime: lifetimeLeft(sa, s, now),
	}
	if sa.Dir == sad.Inbound {
		out.Packets, out.Bytes = s.PacketsIn, s.BytesIn
	} else {
		out.Packets, out.Bytes = s.PacketsOut, s.BytesOut
	}
	if !s.LastPacket.IsZero() {
		t := s.LastPacket
		out.LastPacket = &t
	}
	if sa.Replay != nil {
		out.ReplayWindow = sa.Replay.Size()
	}
	if sa.Hard.Time > 0 {
		left := int64((sa.Hard.Time - now.Sub(s.Created)) / time.Second)
		out.LifeLeftSeconds = &left
	}
	if sa.Hard.Bytes > 0 {
		left := sa.Hard.Bytes - min(s.BytesIn+s.BytesOut, sa.Hard.Bytes)
		out.LifeLeftBytes = &left
	}
	for r := drop.Reason(1); r < drop.Count; r++ {
		if n := s.Drops[r]; n != 0 {
			out.Drops[r.String()] = n
		}
	}
	return out
}

func lifetimeLeft(sa *sad.SA, s sad.Stats, now time.Time) string {
	if s.HardExpired {
		return "expired"
	}
	var parts []string
	if sa.Hard.Time > 0 {
		parts = append(parts, fmt.Sprintf("%s left", (sa.Hard.Time-now.Sub(s.Created)).Truncate(time.Second)))
	}
	if sa.Hard.Bytes > 0 {
		used := s.BytesIn + s.BytesOut
		parts = append(parts, fmt.Sprintf("%d bytes left", sa.Hard.Bytes-min(used, sa.Hard.Bytes)))
	}
	if sa.Hard.Packets > 0 {
		used := s.PacketsIn + s.PacketsOut
		parts = append(parts, fmt.Sprintf("%d packets left", sa.Hard.Packets-min(used, sa.Hard.Packets)))
	}
	if len(parts) == 0 {
		return "unlimited"
	}
	return strings.Join(parts, ", ")
}

func prefixStrings[T fmt.Stringer](ps []T) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.String()
	}
	return out
}

// Filter keeps only the conn named name; it reports whether it exists.
func (s *Status) Filter(name string) bool {
	for _, c := range s.Conns {
		if c.Name == name {
			s.Conns = []ConnStatus{c}
			return true
		}
	}
	return false
}

// WriteText renders the status for people, in the spirit of strongSwan's
// `ipsec status` (all=false: a line per conn and SA) and `ipsec
// statusall` (all=true: everything).
func (s *Status) WriteText(w io.Writer, all bool) {
	up := 0
	for _, c := range s.Conns {
		if c.State == "installed" {
			up++
		}
	}
	for _, warning := range s.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n", warning)
	}
	if all {
		fmt.Fprintf(w, "Status of gosec daemon (%s, pid %d, up %s):\n", s.Version, s.PID, s.Uptime)
		fmt.Fprintf(w, "  control socket: %s\n", s.Socket)
		fmt.Fprintf(w, "  log level: %s\n", s.LogLevels.Text())
		fmt.Fprintf(w, "  TUN device: %s (mtu %d, %s), NAT-T port %d (%d keepalives, %d IKE, %d invalid)\n",
			s.TUN, s.TUNMTU, queuesText(s.TUNQueues), s.NATT.Port, s.NATT.Keepalives, s.NATT.IKE, s.NATT.Invalid)
		p := s.Plane
		fmt.Fprintf(w, "  data plane: %d packets in (%s), %d packets out (%s), %d bypassed, %d send errors\n",
			p.InPackets, bytesText(p.InBytes), p.OutPackets, bytesText(p.OutBytes), p.Bypassed, p.SendErrors)
		fmt.Fprintf(w, "  Go procs: %d of %d CPUs; keep-warm: %s (%d wake-ups)\n", s.Procs, s.CPUs, s.KeepWarm, p.KeepWarmTicks)
		fmt.Fprintf(w, "  drops: %s\n", dropsText(s.Drops))
		if k := s.KernelDrops; k != nil {
			fmt.Fprintf(w, "  kernel SPI filter: %s\n", k.text())
		}
		if r := s.RawPaths; r != nil {
			fmt.Fprintf(w, "  raw ESP/AH: %s\n", r.text())
		}
		if f := s.Firewall; f != nil {
			fmt.Fprintf(w, "  nftables: %s\n", f.text())
		}
		fmt.Fprintln(w, "Connections:")
		for _, c := range s.Conns {
			fmt.Fprintf(w, "%14s:  %s...%s  %s %s, %s keying, auto=%s%s\n", c.Name, c.Local, c.Remote,
				strings.ToUpper(c.Mode), c.Proposal, c.Keying, c.Auto, encapText(c.Encap))
			if c.Mode == "tunnel" {
				fmt.Fprintf(w, "%14s:   local:  [%s]\n", c.Name, strings.Join(c.LocalSubnets, " "))
				fmt.Fprintf(w, "%14s:   remote: [%s]\n", c.Name, strings.Join(c.RemoteSubnets, " "))
			}
		}
	}
	if len(s.ISAKMP) > 0 || all {
		fmt.Fprintf(w, "ISAKMP SAs (%d):\n", len(s.ISAKMP))
		for _, p := range s.ISAKMP {
			role := "responder"
			if p.Initiator {
				role = "initiator"
			}
			nat := ""
			if p.NATT {
				nat = ", NAT-T"
				if p.NAT != "" {
					nat += " (" + p.NAT + " behind NAT)"
				}
			}
			life := ""
			if p.LifeLeftSeconds > 0 {
				life = fmt.Sprintf(", %s left", time.Duration(p.LifeLeftSeconds)*time.Second)
			}
			fmt.Fprintf(w, "%14s: %s, %s...%s[%s], %s, cookies %s_i %s_r, %s%s, age %s%s\n", p.Conn, p.State, p.Local, p.Remote,
				p.PeerID, role, p.ICookie, p.RCookie, p.Suite, nat, time.Duration(p.AgeSeconds)*time.Second, life)
		}
	}
	if all && s.IKEUnmatched != nil {
		fmt.Fprintf(w, "%14s: IKE without a conn: %s\n", UnmatchedConn, s.IKEUnmatched.Text())
	}
	fmt.Fprintf(w, "Security Associations (%d up, %d conns):\n", up, len(s.Conns))
	for _, c := range s.Conns {
		if c.IKEError != "" {
			fmt.Fprintf(w, "%14s: last negotiation failed: %s\n", c.Name, c.IKEError)
		}
		if all && c.IKEStats != nil {
			fmt.Fprintf(w, "%14s: IKE: %s\n", c.Name, c.IKEStats.Text())
		}
		if c.Unsupported != "" && all {
			fmt.Fprintf(w, "%14s: cannot be negotiated: %s\n", c.Name, c.Unsupported)
		}
		if c.State == "routed" {
			how := "dropped"
			if c.Auto == "route" {
				how = "held and negotiated on demand"
			}
			fmt.Fprintf(w, "%14s: ROUTED, no SA: its traffic is %s; cleartext dropped by filter: %d in, %d out\n", c.Name, how, c.Cleartext, c.Guarded)
			continue
		}
		if c.State != "installed" {
			switch {
			case c.GuardKept:
				fmt.Fprintf(w, "%14s: down, cleartext to its subnets blocked until it is up again or `gosec down` (%d dropped)\n", c.Name, c.Guarded)
			case !all:
				fmt.Fprintf(w, "%14s: down\n", c.Name)
			}
			continue
		}
		for i := 0; i+1 < len(c.SAs); i += 2 {
			in, out := &c.SAs[i], &c.SAs[i+1]
			if in.Dir != "in" {
				in, out = out, in
			}
			var child *ike.ChildStatus
			for j := range c.Children {
				if c.Children[j].InSPI == in.SPI {
					child = &c.Children[j]
				}
			}
			c.writeSA(w, all, in, out, child)
		}
	}
}

// writeSA renders one SA pair of a conn.
func (c ConnStatus) writeSA(w io.Writer, all bool, in, out *SAStatus, child *ike.ChildStatus) {
	{
		id := fmt.Sprintf("%s[%d]", c.Name, c.ReqID)
		sel := fmt.Sprintf("%s === %s", strings.Join(c.LocalSubnets, ","), strings.Join(c.RemoteSubnets, ","))
		if c.Mode == "transport" || len(c.LocalSubnets) == 0 {
			sel = fmt.Sprintf("%s/32 === %s/32", c.Local, c.Remote)
		}
		proposal := c.Proposal
		if child != nil {
			id = fmt.Sprintf("%s{%s}", c.Name, child.InSPI)
			sel = child.LocalTS + " === " + child.RemoteTS
			proposal = child.Suite
			if child.PFS != "none" {
				proposal += ", PFS " + child.PFS
			}
		}
		if !all {
			fmt.Fprintf(w, "%14s: INSTALLED, %s, %s SPIs: %s_i %s_o, %s, %d/%d packets in/out, %s\n", id,
				strings.ToUpper(c.Mode), in.Proto, in.SPI, out.SPI, proposal, in.Packets, out.Packets, sel)
			return
		}
		fmt.Fprintf(w, "%14s: INSTALLED since %s, %s%s, reqid %d, %s keying\n", id, c.Since, strings.ToUpper(c.Mode), encapText(c.Encap), c.ReqID, c.Keying)
		fmt.Fprintf(w, "%14s:  %s SPIs: %s_i %s_o, %s\n", id, in.Proto, in.SPI, out.SPI, proposal)
		if child != nil {
			fmt.Fprintf(w, "%14s:  negotiated by IKE (ISAKMP SA %s), age %s\n", id, child.ISAKMP, time.Duration(child.AgeSeconds)*time.Second)
		}
		fmt.Fprintf(w, "%14s:  in:  %d packets, %s, last %s, replay window %d (highest seq %d)\n", id,
			in.Packets, bytesText(in.Bytes), ago(in.LastPacket), in.ReplayWindow, in.Seq)
		fmt.Fprintf(w, "%14s:  out: %d packets, %s, last %s, seq %d\n", id, out.Packets, bytesText(out.Bytes), ago(out.LastPacket), out.Seq)
		fmt.Fprintf(w, "%14s:  drops in: %s; drops out: %s; cleartext dropped by filter: %d in, %d out\n", id, dropsText(in.Drops), dropsText(out.Drops), c.Cleartext, c.Guarded)
		fmt.Fprintf(w, "%14s:  lifetime: %s\n", id, in.Lifetime)
		fmt.Fprintf(w, "%14s:   %s\n", id, sel)
	}
}

func encapText(encap bool) string {
	if encap {
		return ", UDP-encapsulated"
	}
	return ""
}

func ago(t *time.Time) string {
	if t == nil {
		return "never"
	}
	return time.Since(*t).Truncate(time.Second).String() + " ago"
}

func bytesText(n uint64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d bytes", n)
}

func dropsText(m map[string]uint64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for r := drop.Reason(1); r < drop.Count; r++ {
		if n := m[r.String()]; n > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", r, n))
		}
	}
	return strings.Join(parts, ", ")
}

// queuesText describes the TUN's queues.
func queuesText(n int) string {
	if n <= 1 {
		return "1 queue"
	}
	return fmt.Sprintf("%d queues, steered per destination", n)
}

// keepWarmText describes the keep-warm timer for status (warmFor is
// already defaulted, Options.defaults).
func keepWarmText(every, warmFor time.Duration) string {
	if every <= 0 {
		return "off"
	}
	return fmt.Sprintf("%v for %v", every, warmFor)
}
