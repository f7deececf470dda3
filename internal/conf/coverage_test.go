package conf

import (
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// TestCorpusCoverage checks that the corpus exercises every keyword and
// value issue 4 names and that the goldens hold every error class, so that
// a corpus edit cannot silently drop one.
func TestCorpusCoverage(t *testing.T) {
	dir := corpusDir(t)
	var paths []string
	for _, pat := range []string{"*.conf", "inc/*", "inc/sub/*"} {
		m, err := filepath.Glob(filepath.Join(dir, pat))
		if err != nil {
			t.Fatal(err)
		}
		paths = append(paths, m...)
	}
	texts := map[string]string{}
	for _, p := range paths {
		if fi, err := os.Stat(p); err != nil || fi.IsDir() {
			continue
		}
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, p)
		texts[rel] = string(b)
	}
	filesWith := func(re *regexp.Regexp) []string {
		var out []string
		for name, text := range texts {
			if re.MatchString(text) {
				out = append(out, name)
			}
		}
		sort.Strings(out)
		return out
	}

	keywords := []string{
		"left", "right", "leftsubnet", "rightsubnet", "rightsubnets", "leftid", "rightid",
		"leftprotoport", "rightprotoport", "leftnexthop", "rightnexthop", "authby", "keyexchange",
		"aggressive", "aggrmode", "ike", "esp", "ah", "phase2", "phase2alg", "pfs", "pfsgroup",
		"ikelifetime", "keylife", "lifetime", "salifetime", "rekey", "rekeymargin", "margintime",
		"rekeyfuzz", "keyingtries", "dpddelay", "dpdtimeout", "dpdaction", "forceencaps",
		"encapsulation", "type", "auto", "replay_window", "leftrsasigkey", "rightrsasigkey",
		"leftcert", "rightcert", "leftspi", "rightspi", "leftespenckey", "rightespenckey",
		"leftespauthkey", "rightespauthkey", "leftahkey", "rightahkey", "also", "ikev2",
	}
	for _, kw := range keywords {
		re := regexp.MustCompile(`(?m)^[ \t]+` + regexp.QuoteMeta(kw) + `[ \t]*=`)
		if files := filesWith(re); len(files) == 0 {
			t.Errorf("no corpus file sets %s=", kw)
		}
	}
	values := map[string]string{
		"authby=secret": `authby=secret\b`, "authby=psk": `authby=psk\b`,
		"authby=rsasig": `authby=rsasig\b`, "authby=pubkey": `authby=pubkey\b`,
		"type=tunnel": `type=tunnel\b`, "type=transport": `type=transport\b`,
		"type=passthrough": `type=passthrough\b`, "type=drop": `type=drop\b`,
		"auto=add": `auto=add\b`, "auto=start": `auto=start\b`, "auto=route": `auto=route\b`, "auto=ignore": `auto=ignore\b`,
		"%any": `(left|right)=%any\b`, "%defaultroute": `(left|right)=%defaultroute\b`,
		"DNS name":        `(left|right)=(localhost|vpn\.example\.net)\b`,
		"several subnets": `subnets?=\{?[0-9./]+[, ]`,
		"version 2":       `(?m)^version 2`, "include glob": `(?m)^[ \t]*include \S*\*`,
		"conn %default": `(?m)^conn %default`, "Libreswan ; DH": `=[a-z0-9_-]+;(modp|dh)[0-9]+`,
		"strict !": `(ike|esp|ah)=\S+!`, "list with commas": `(ike|esp)=\S+,\S+`,
		"aes256gcm16-sha256-modp2048": `aes256gcm16-sha256-modp2048`,
		"3des-md5-modp1024":           `3des-md5-modp1024`, "aes128-sha256-ecp256": `aes128-sha256-ecp256`,
		"replay_window=0": `replay_window=0\b`,
	}
	for what, pat := range values {
		if files := filesWith(regexp.MustCompile(pat)); len(files) == 0 {
			t.Errorf("no corpus file has %s", what)
		}
	}

	// Every error class is in a golden, and the files written to show
	// errors report several at once.
	errs := map[string]string{}
	for name := range texts {
		if !strings.HasSuffix(name, ".conf") || strings.Contains(name, "/") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, strings.TrimSuffix(name, ".conf")+".err"))
		if err != nil {
			t.Fatal(err)
		}
		errs[name] = string(b)
		if strings.Contains(name, "-err-") && strings.Count(string(b), "\n") < 3 {
			t.Errorf("%s reports %d problems; the error files show several per run", name, strings.Count(string(b), "\n"))
		}
		if !strings.Contains(name, "-err-") && strings.Contains(string(b), ": ") {
			for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				if !strings.Contains(line, ": warning: ") && !strings.Contains(line, " skipped: ") {
					t.Errorf("%s is meant to load without errors: %s", name, line)
				}
			}
		}
	}
	classes := map[string]string{
		"unknown keyword with suggestion":    `unknown keyword "\w+" \(did you mean \w+\?\)`,
		"keyword in wrong section":           `is a (conn|config setup) keyword; it is not allowed in`,
		"bad value":                          `: bad value "`,
		"conn without left/right":            `conn \S+ has no (left|right)`,
		"unknown also= target":               `also=\S+: no conn named`,
		"also= loop":                         `makes a loop`,
		"include loop":                       `include loop`,
		"manual conn without keys":           `manually keyed conn \S+ needs \w+key`,
		"manual key of wrong length":         `key is \d+ bytes; \S+ needs \d+`,
		"keyexchange=ikev2":                  `keyexchange=ikev2: IKEv2 is not supported by gosec`,
		"conn skipped for a missing feature": `conn \S+ skipped: \S+: .* is not supported by gosec`,
		"unindented keyword line":            `must be indented`,
		"unsupported keyword warning":        `: warning: \S+ is not supported by gosec`,
	}
	for class, pat := range classes {
		re := regexp.MustCompile(pat)
		found := false
		for _, text := range errs {
			if re.MatchString(text) {
				found = true
			}
		}
		if !found {
			t.Errorf("no golden shows the error class %q", class)
		}
	}
}
