package kernelpeer

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// XfrmState is one SA as `ip -s xfrm state` prints it (iproute2 6.1).
type XfrmState struct {
	Src, Dst string
	Proto    string // "esp" or "ah"
	SPI      uint32
	Mode     string // "transport" or "tunnel"
	Flags    string // e.g. "align4", empty when none
	Encap    string // encap type, e.g. "espinudp"; empty when none
	// EncapSport and EncapDport are the UDP ports of ESP-in-UDP.
	EncapSport, EncapDport int
	// Bytes and Packets are "lifetime current": what the SA processed.
	Bytes, Packets uint64
	// Seq and OSeq are the anti-replay context: the highest sequence number
	// received and the last one sent (64 bits with ESN).
	Seq, OSeq uint64
	// Replay and Failed are the "stats" line: packets dropped as replays
	// and packets that failed integrity or decryption.
	Replay, Failed uint64
	// ReplayWindowDrops is the "stats: replay-window N" counter (packets
	// outside the window).
	ReplayWindowDrops uint64
}

// ParseXfrmStates parses the output of `ip -s xfrm state`.
func ParseXfrmStates(out string) ([]XfrmState, error) {
	var (
		states []XfrmState
		cur    *XfrmState
		next   string // what the following line holds: "lifetime" or "stats"
	)
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if !strings.HasPrefix(line, "\t") && !strings.HasPrefix(line, " ") {
			if f[0] != "src" || len(f) < 4 || f[2] != "dst" {
				return nil, fmt.Errorf("line %d: want \"src A dst B\", got %q", n, line)
			}
			states = append(states, XfrmState{Src: f[1], Dst: f[3]})
			cur = &states[len(states)-1]
			next = ""
			continue
		}
		if cur == nil {
			return nil, fmt.Errorf("line %d: attribute before the first state: %q", n, line)
		}
		var err error
		switch {
		case next == "lifetime":
			// "252(bytes), 3(packets)"
			next = ""
			if len(f) >= 2 && strings.HasSuffix(f[0], "(bytes),") && strings.HasSuffix(f[1], "(packets)") {
				if cur.Bytes, err = strconv.ParseUint(strings.TrimSuffix(f[0], "(bytes),"), 10, 64); err == nil {
					cur.Packets, err = strconv.ParseUint(strings.TrimSuffix(f[1], "(packets)"), 10, 64)
				}
			} else {
				err = fmt.Errorf("want \"N(bytes), N(packets)\"")
			}
		case next == "stats":
			// "replay-window 0 replay 0 failed 0"
			next = ""
			err = parseKV(f, map[string]*uint64{"replay-window": &cur.ReplayWindowDrops, "replay": &cur.Replay, "failed": &cur.Failed}, 10)
		case f[0] == "proto" && len(f) >= 4 && f[2] == "spi":
			cur.Proto = f[1]
			spi := f[3]
			if i := strings.IndexByte(spi, '('); i >= 0 {
				spi = spi[:i]
			}
			var v uint64
			if v, err = strconv.ParseUint(strings.TrimPrefix(spi, "0x"), 16, 32); err == nil {
				cur.SPI = uint32(v)
			}
			for i := 4; i+1 < len(f); i++ {
				if f[i] == "mode" {
					cur.Mode = f[i+1]
				}
			}
		case f[0] == "replay-window":
			// "replay-window 32 seq 0x00000000 flag align4 (0x00000040)"
			for i := 0; i < len(f); i++ {
				if f[i] == "flag" {
					var fl []string
					for _, x := range f[i+1:] {
						if !strings.HasPrefix(x, "(") {
							fl = append(fl, x)
						}
					}
					cur.Flags = strings.Join(fl, " ")
					break
				}
			}
		case f[0] == "encap" && len(f) >= 7 && f[1] == "type":
			// "encap type espinudp sport 4500 dport 4500 addr 0.0.0.0"
			cur.Encap = f[2]
			var sp, dp uint64
			err = parseKV(f[3:7], map[string]*uint64{"sport": &sp, "dport": &dp}, 10)
			cur.EncapSport, cur.EncapDport = int(sp), int(dp)
		case f[0] == "anti-replay" && len(f) >= 6:
			// "anti-replay context: seq 0x0, oseq 0x3, bitmap 0x00000000"
			kv := make([]string, 0, 4)
			for _, x := range f[2:6] {
				kv = append(kv, strings.TrimSuffix(x, ","))
			}
			err = parseKV(kv, map[string]*uint64{"seq": &cur.Seq, "oseq": &cur.OSeq}, 0)
		case f[0] == "seq-hi" && len(f) >= 8:
			// ESN: "seq-hi 0x0, seq 0x15d7, oseq-hi 0x0, oseq 0x0"
			kv := make([]string, 0, 8)
			for _, x := range f[:8] {
				kv = append(kv, strings.TrimSuffix(x, ","))
			}
			var hi, ohi uint64
			if err = parseKV(kv, map[string]*uint64{"seq-hi": &hi, "seq": &cur.Seq, "oseq-hi": &ohi, "oseq": &cur.OSeq}, 0); err == nil {
				cur.Seq |= hi << 32
				cur.OSeq |= ohi << 32
			}
		case f[0] == "lifetime" && len(f) >= 2 && f[1] == "current:":
			next = "lifetime"
		case f[0] == "stats:":
			next = "stats"
		}
		if err != nil {
			return nil, fmt.Errorf("line %d %q: %w", n, line, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	return states, nil
}

// parseKV reads "key value" pairs from f into the named counters; keys
// not in want are ignored. base 0 accepts 0x prefixes.
func parseKV(f []string, want map[string]*uint64, base int) error {
	if len(f)%2 != 0 {
		return fmt.Errorf("odd number of fields in %q", strings.Join(f, " "))
	}
	for i := 0; i+1 < len(f); i += 2 {
		p, ok := want[f[i]]
		if !ok {
			continue
		}
		v, err := strconv.ParseUint(f[i+1], base, 64)
		if err != nil {
			return fmt.Errorf("%s: %w", f[i], err)
		}
		*p = v
	}
	return nil
}

// ParseXfrmStat parses /proc/net/xfrm_stat ("Name<tab>value" lines).
func ParseXfrmStat(out string) (map[string]uint64, error) {
	m := map[string]uint64{}
	for n, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if len(f) != 2 {
			return nil, fmt.Errorf("xfrm_stat line %d: %q", n+1, line)
		}
		v, err := strconv.ParseUint(f[1], 10, 64)
		if err != nil {
			return nil, fmt.Errorf("xfrm_stat line %d: %w", n+1, err)
		}
		m[f[0]] = v
	}
	if len(m) == 0 {
		return nil, fmt.Errorf("xfrm_stat: no counters")
	}
	return m, nil
}

// StatDelta returns the counters that differ between before and after
// (new counters count from zero), as "Name +N".
func StatDelta(before, after map[string]uint64) []string {
	var d []string
	for k, v := range after {
		if v != before[k] {
			d = append(d, fmt.Sprintf("%s %+d", k, int64(v-before[k])))
		}
	}
	return d
}
