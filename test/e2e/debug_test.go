package e2e

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestDebugLevels: an administrator raises and lowers the log level of one
// conn, and the global one, while gosec runs: `gosec debug` at once, the
// config's debug=/plutodebug= on reload; a conn's IKE exchanges are logged
// at debug only while that conn (or everything) is at debug, and status
// shows the levels. Both daemons then run at the highest level with key
// export on, and neither log holds any of the keys the export wrote (as
// hex, in either case, or as base64).
func TestDebugLevels(t *testing.T) {
	tp := newTopo(t, "gpd-")
	a := ikeCase{name: "dbg-a", ike: "aes128-sha256-modp2048", esp: "aes128-sha256"}
	b := ikeCase{name: "dbg-b", ike: "aes256-sha1-modp2048", esp: "aes128gcm16", transport: true}
	secrets := "192.0.2.1 192.0.2.2 : PSK \"gosec-debug-psk\"\n"
	keys1 := filepath.Join(t.TempDir(), "keys")
	keys2 := filepath.Join(t.TempDir(), "keys")
	setup1 := "config setup\n\tsavekeys=" + keys1 + "\n\n"
	gw1 := tp.startDaemon(tp.ns("gw1"), setup1+a.conf()+b.conf(), secrets)
	gw2 := tp.startDaemon(tp.ns("gw2"), a.conf()+b.conf(), secrets, "--debug", "--save-keys", keys2, "--log-format", "json")

	levels := func(d *daemon) (global string, conns map[string]string) {
		t.Helper()
		var st struct {
			LogLevels struct {
				Global string            `json:"global"`
				Conns  map[string]string `json:"conns"`
			} `json:"log_levels"`
		}
		if err := json.Unmarshal([]byte(d.mustCtl("status", "--json")), &st); err != nil {
			t.Fatal(err)
		}
		return st.LogLevels.Global, st.LogLevels.Conns
	}
	exchanges := regexp.MustCompile(`level=DEBUG msg="IKE exchange" (?:room=\S+ )?conn=(\S+)`)
	debugExchanges := func(log string) map[string]int {
		n := map[string]int{}
		for _, m := range exchanges.FindAllStringSubmatch(log, -1) {
			n[m[1]]++
		}
		return n
	}
	cycle := func(c ikeCase) {
		t.Helper()
		if out := gw1.mustCtl("up", c.name); !strings.Contains(out, "established successfully") {
			t.Fatalf("gosec up %s:\n%s", c.name, out)
		}
		gw1.mustCtl("down", c.name)
	}

	// At start: info everywhere on gw1, debug on gw2 (--debug).
	if g, c := levels(gw1); g != "info" || len(c) != 0 {
		t.Fatalf("gw1 levels at start: %s %v", g, c)
	}
	if g, _ := levels(gw2); g != "debug" {
		t.Fatalf("gw2 (--debug) global level %s", g)
	}
	for _, bad := range []struct{ args, want string }{
		{"dbg-a loud", "not a log level"},
		{"no-such-conn debug", "no connection named"},
		{"dbg-a", "give the level too"},
	} {
		out, err := gw1.ctl(10*time.Second, append([]string{"debug"}, strings.Fields(bad.args)...)...)
		if err == nil || !strings.Contains(out, bad.want) {
			t.Fatalf("gosec debug %s: %v\n%s", bad.args, err, out)
		}
	}

	// dbg-a at debug: its exchanges are logged, dbg-b's are not.
	out := gw1.mustCtl("debug", "dbg-a", "debug")
	if !strings.Contains(out, "conn dbg-a: debug") {
		t.Fatalf("gosec debug dbg-a debug:\n%s", out)
	}
	if all := gw1.mustCtl("statusall"); !strings.Contains(all, "log level: info; dbg-a debug") {
		t.Fatalf("statusall does not show the levels:\n%s", all)
	}
	cycle(a)
	cycle(b)
	n := debugExchanges(gw1.log())
	if n["dbg-a"] == 0 || n["dbg-b"] != 0 {
		t.Fatalf("with dbg-a at debug, debug IKE exchange records per conn: %v", n)
	}

	// Back to the global level: no more debug records of dbg-a.
	gw1.mustCtl("debug", "dbg-a", "default")
	before := debugExchanges(gw1.log())["dbg-a"]
	cycle(a)
	if after := debugExchanges(gw1.log())["dbg-a"]; after != before {
		t.Fatalf("dbg-a back at the global level (info) still logs its exchanges at debug (%d -> %d)", before, after)
	}

	// The config decides on reload: debug= for dbg-b, plutodebug=none.
	bConf := strings.Replace(b.conf(), "\tauto=add\n", "\tauto=add\n\tdebug=debug\n", 1)
	gw1.mustCtl("debug", "warn")
	gw1.rewrite("config setup\n\tplutodebug=none\n\tsavekeys="+keys1+"\n\n"+a.conf()+bConf, secrets)
	gw1.mustCtl("reload")
	if g, c := levels(gw1); g != "info" || len(c) != 1 || c["dbg-b"] != "debug" {
		t.Fatalf("levels after reload: %s %v", g, c)
	}
	cycle(b)
	if n := debugExchanges(gw1.log()); n["dbg-b"] == 0 {
		t.Fatalf("dbg-b with debug=debug after reload: no debug IKE exchange records (%v)", n)
	}

	// Highest level everywhere, then no key in any log.
	gw1.mustCtl("debug", "4")
	cycle(a)
	cycle(b)
	if g, _ := levels(gw1); g != "debug" {
		t.Fatalf("gosec debug 4: global level %s", g)
	}
	var secretsHex []string
	ike, _ := os.ReadFile(filepath.Join(keys1, "ikev1_decryption_table"))
	for _, l := range strings.Split(strings.TrimSpace(string(ike)), "\n") {
		if f := strings.Split(l, ","); len(f) == 2 {
			secretsHex = append(secretsHex, f[1]) // f[0] is the cookie, logged on purpose
		}
	}
	espSA, _ := os.ReadFile(filepath.Join(keys1, "esp_sa"))
	for _, l := range strings.Split(strings.TrimSpace(string(espSA)), "\n") {
		f := strings.Split(l, ",")
		if len(f) != 8 {
			t.Fatalf("esp_sa line %q", l)
		}
		for _, k := range []string{f[5], f[7]} {
			if k = strings.TrimPrefix(strings.Trim(k, `"`), "0x"); len(k) >= 16 {
				secretsHex = append(secretsHex, k)
			}
		}
	}
	if len(secretsHex) < 8 {
		t.Fatalf("only %d keys exported:\n%s%s", len(secretsHex), ike, espSA)
	}
	logs := map[string]string{"gw1": gw1.log(), "gw2": gw2.log()}
	for name, log := range logs {
		if !strings.Contains(strings.ToLower(log), "debug") {
			t.Fatalf("%s: no debug record in the log", name)
		}
	}
	for _, k := range secretsHex {
		raw, err := hex.DecodeString(k)
		if err != nil {
			t.Fatal(err)
		}
		forms := []string{strings.ToLower(k), strings.ToUpper(k), base64.StdEncoding.EncodeToString(raw), base64.RawStdEncoding.EncodeToString(raw), string(raw)}
		for name, log := range logs {
			for _, f := range forms {
				if strings.Contains(log, f) {
					t.Errorf("%s's log holds key %s", name, k)
				}
			}
		}
	}
	t.Logf("%d exported keys, none in %d + %d bytes of debug logs", len(secretsHex), len(logs["gw1"]), len(logs["gw2"]))
}
