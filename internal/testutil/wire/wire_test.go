package wire

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestLeakFilter(t *testing.T) {
	got := LeakFilter(netip.MustParsePrefix("10.1.0.0/24"), netip.MustParsePrefix("10.2.0.7/16"))
	for _, want := range []string{
		"(net 10.1.0.0/24 or net 10.2.0.0/16) and not (ip proto 50 or ip proto 51 or udp port 500 or udp port 4500)",
		"(icmp[20:4] & 0xffffff00) = 0x0a010000",
		"(icmp[24:4] & 0xffffff00) = 0x0a010000",
		"(icmp[20:4] & 0xffff0000) = 0x0a020000",
		"(icmp[24:4] & 0xffff0000) = 0x0a020000",
		"icmp[0] = 3 or icmp[0] = 4 or icmp[0] = 5 or icmp[0] = 11 or icmp[0] = 12",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("filter lacks %q:\n%s", want, got)
		}
	}
}

func TestTimelineBefore(t *testing.T) {
	t0 := time.Unix(1000, 0)
	tl := (&Timeline{}).With([]Event{{At: t0.Add(2 * time.Second), What: "b"}, {At: t0, What: "a"}})
	for _, c := range []struct {
		at   time.Time
		want string
	}{
		{t0.Add(-time.Second), "(before the first event)"},
		{t0.Add(time.Second), `"a" (1.00s earlier)`},
		{t0.Add(2 * time.Second), `"b" (0.00s earlier)`},
	} {
		if got := tl.Before(c.at); got != c.want {
			t.Errorf("Before(%v) = %s, want %s", c.at, got, c.want)
		}
	}
}

func TestPingAccounting(t *testing.T) {
	start := time.Unix(1000, 0)
	r := PingResult{Start: start, Sent: 12, Replied: map[int]time.Time{}}
	for _, seq := range []int{1, 2, 5, 6, 7} {
		r.Replied[seq] = start
	}
	r.Lost = []int{3, 4}
	if got := r.LostBetween(start.Add(500*time.Millisecond), time.Time{}); len(got) != 1 || got[0] != 4 {
		t.Errorf("LostBetween = %v, want [4]", got)
	}
	if n := r.RepliedBetween(time.Time{}, start.Add(PingInterval)); n != 1 {
		t.Errorf("RepliedBetween = %d, want 1", n)
	}
	if d := r.DescribeLoss([]int{3, 4, 9}, &Timeline{}); !strings.Contains(d, "icmp_seq 3-4 (2 requests") || !strings.Contains(d, "icmp_seq 9-9") {
		t.Errorf("DescribeLoss = %s", d)
	}
}

func TestParsePing(t *testing.T) {
	out := `PING 10.2.0.2 (10.2.0.2) 56(84) bytes of data.
[1764694000.100000] 64 bytes from 10.2.0.2: icmp_seq=1 ttl=62 time=0.5 ms
[1764694000.500000] no answer yet for icmp_seq=2
[1764694000.600000] 64 bytes from 10.2.0.2: icmp_seq=3 ttl=62 time=0.5 ms
[1764694000.700000] 64 bytes from 10.2.0.2: icmp_seq=3 ttl=62 time=0.5 ms (DUP!)
[1764694000.800000] From 10.1.0.1 icmp_seq=4 Destination Host Unreachable
[1764694000.900000] 64 bytes from 10.2.0.2: icmp_seq=2 ttl=62 time=800 ms

--- 10.2.0.2 ping statistics ---
12 packets transmitted, 3 received, +1 duplicates, 75% packet loss, time 2200ms
`
	r := parsePing(out, time.Unix(1764694000, 0))
	if r.Sent != 12 || len(r.Replied) != 3 || r.FirstRep != 1 {
		t.Fatalf("sent %d replied %v first %d", r.Sent, r.Replied, r.FirstRep)
	}
	// 1..7 judged (the last 5 requests are not): 4..7 lost, 2 answered late.
	if got := r.Lost; len(got) != 4 || got[0] != 4 || got[3] != 7 {
		t.Fatalf("lost %v, want [4 5 6 7]", got)
	}
}

func TestLogEvents(t *testing.T) {
	log := `time=2026-12-02T16:50:51.689Z level=INFO msg="gosec started" version=0.1.0
time=2026-12-02T16:50:52.000Z level=WARN msg="dropped packet" reason=no-sa
not a log line
time=2026-12-02T16:50:54.855Z level=INFO msg="IPsec SA deleted" room=ike conn=lc in_spi=9f1eebc1`
	ev := LogEvents("gw2", log)
	if len(ev) != 2 || ev[1].What != `gw2 log: msg="IPsec SA deleted" conn=lc in_spi=9f1eebc1` ||
		!ev[1].At.Equal(time.Date(2026, 12, 2, 16, 50, 54, 855e6, time.UTC)) {
		t.Fatalf("LogEvents = %+v", ev)
	}
}
