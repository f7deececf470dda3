package conf

import (
	"bufio"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// strongSwanHosts are the addresses strongSwan's test harness puts in
// place of the PH_IP_* placeholders of its configurations before use
// (testing/scripts/build-hostconfig, with the HOSTNAMEIPV4/HOSTNAMEIPV6
// table of testing/testing.conf, strongSwan 4.6.4): PH_IP_HOST is the
// host's first address, PH_IP_HOST1 its second.
var strongSwanHosts = map[string]string{
	"PH_IP_ALICE": "10.1.0.10", "PH_IP_ALICE1": "192.168.0.50", "PH_IP_VENUS": "10.1.0.20",
	"PH_IP_MOON": "192.168.0.1", "PH_IP_MOON1": "10.1.0.1", "PH_IP_CAROL": "192.168.0.100",
	"PH_IP_CAROL1": "10.3.0.1", "PH_IP_WINNETOU": "192.168.0.150", "PH_IP_DAVE": "192.168.0.200",
	"PH_IP_DAVE1": "10.3.0.2", "PH_IP_SUN": "192.168.0.2", "PH_IP_SUN1": "10.2.0.1", "PH_IP_BOB": "10.2.0.10",
	"PH_IP6_ALICE": "fec1::10", "PH_IP6_ALICE1": "fec0::5", "PH_IP6_VENUS": "fec1::20", "PH_IP6_MOON": "fec0::1",
	"PH_IP6_MOON1": "fec1::1", "PH_IP6_CAROL": "fec0::10", "PH_IP6_CAROL1": "fec3::1", "PH_IP6_WINNETOU": "fec0::15",
	"PH_IP6_DAVE": "fec0::20", "PH_IP6_DAVE1": "fec3::2", "PH_IP6_SUN": "fec0::2", "PH_IP6_SUN1": "fec2::1",
	"PH_IP6_BOB": "fec2::10",
}

// upstreamNames are the host names of the upstream test networks, with
// the addresses their harnesses give them: Libreswan's testing/
// baseconfigs/all/etc/hosts (v3.32: west 192.1.2.45, east 192.1.2.23,
// road 192.1.3.209, nic 192.1.2.254; the .testing.libreswan.org names
// served by the harness's DNS on nic) and strongSwan's testing.conf
// (4.6.4, as strongSwanHosts).
var upstreamNames = map[string]string{
	"west.testing.libreswan.org": "192.1.2.45", "east.testing.libreswan.org": "192.1.2.23",
	"road.testing.libreswan.org": "192.1.3.209", "nic.testing.libreswan.org": "192.1.2.254",
	"west": "192.1.2.45", "east": "192.1.2.23", "road": "192.1.3.209", "nic": "192.1.2.254",
	"moon.strongswan.org": "192.168.0.1", "sun.strongswan.org": "192.168.0.2",
	"carol.strongswan.org": "192.168.0.100", "dave.strongswan.org": "192.168.0.200",
	"winnetou.strongswan.org": "192.168.0.150", "alice.strongswan.org": "10.1.0.10",
	"venus.strongswan.org": "10.1.0.20", "bob.strongswan.org": "10.2.0.10",
}

// substituteHosts replaces the placeholders, longest first.
func substituteHosts(text string) string {
	keys := make([]string, 0, len(strongSwanHosts))
	for k := range strongSwanHosts {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return len(keys[i]) > len(keys[j]) })
	for _, k := range keys {
		text = strings.ReplaceAll(text, k, strongSwanHosts[k])
	}
	return text
}

// upstreamFiles lists the configurations of testdata/conf/upstream from
// its MANIFEST, by source: every .conf and ipsec.conf except the files
// the Libreswan tests include from /testing/baseconfigs.
func upstreamFiles(t testing.TB, dir string) map[string][]string {
	f, err := os.Open(filepath.Join(dir, "MANIFEST"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 5 || len(fields[3]) != 40 {
			t.Fatalf("MANIFEST line %q: want corpus-path repository tag commit path", line)
		}
		path := fields[0]
		// Files a harness installs (Libreswan's testing/baseconfigs, the
		// strongSwan scenarios' extra /etc files) are read through the
		// configurations that include them.
		if strings.Contains(fields[4], "testing/baseconfigs/") || strings.HasSuffix(path, "secrets") ||
			strings.Contains(path, "/hosts/") && !strings.HasSuffix(path, "/etc/ipsec.conf") {
			continue
		}
		source, _, _ := strings.Cut(path, "/")
		out[source] = append(out[source], path)
	}
	// A file another one includes is a fragment (its conns name conns
	// of the including file with also=): it is checked through that file.
	included := map[string]bool{}
	for source, files := range out {
		for _, f := range files {
			data, err := os.ReadFile(filepath.Join(dir, f))
			if err != nil {
				t.Fatal(err)
			}
			for _, line := range strings.Split(string(data), "\n") {
				fields := strings.Fields(stripComment(line))
				if len(fields) != 2 || fields[0] != "include" {
					continue
				}
				pat := unquote(fields[1])
				if filepath.IsAbs(pat) {
					pat = filepath.Join(dir, source, pat)
				} else {
					pat = filepath.Join(dir, filepath.Dir(f), pat)
				}
				matches, _ := filepath.Glob(pat)
				for _, m := range matches {
					rel, _ := filepath.Rel(dir, m)
					included[rel] = true
				}
			}
		}
	}
	for source, files := range out {
		var keep []string
		for _, f := range files {
			if !included[f] {
				keep = append(keep, f)
			}
		}
		out[source] = keep
	}
	return out
}

// checkUpstream is what `gosec conf check` prints on stderr for one file
// (without a secrets file), and its exit status.
func checkUpstream(path, source string) (string, int, *Config) {
	opts := testOptions()
	opts.Root = source
	if i := strings.Index(path, "/etc/ipsec.conf"); strings.HasPrefix(source, "strongswan-") && i > 0 {
		opts.Root = path[:i] // the harness installs hosts/HOST/etc as /etc
	}
	opts.LookupHost = func(name string) ([]netip.Addr, error) {
		if a, ok := upstreamNames[name]; ok {
			return []netip.Addr{netip.MustParseAddr(a)}, nil
		}
		// The placeholders of the files a strongSwan configuration
		// includes (the harness substitutes them in every file).
		if a, ok := strongSwanHosts[name]; ok && strings.HasPrefix(name, "PH_IP_") {
			return []netip.Addr{netip.MustParseAddr(a)}, nil
		}
		return nil, errors.New("no such host (test resolver)")
	}
	var cfg *Config
	if strings.HasPrefix(source, "strongswan-") {
		data, err := os.ReadFile(path)
		if err != nil {
			return fmt.Sprintf("%s: %v\n", path, err), 1, nil
		}
		cfg, _ = Parse(path, []byte(substituteHosts(string(data))), opts)
	} else {
		cfg, _ = Load(path, opts)
	}
	verdict, code := cfg.Summary(path, 0)
	return renderDiags(cfg.Diags) + verdict + "\n", code, cfg
}

// loadedVerdict matches the verdict of a file that loads (Summary, exit
// status 0 or 3).
var loadedVerdict = regexp.MustCompile(`^(\S+): (\d+ conns, configuration OK|\d+ conns loaded, \d+ skipped: .*)$`)

// TestUpstreamCorpus loads the real IKEv1 configurations of the upstream
// test suites and examples (testdata/conf/upstream, origin of each in its
// MANIFEST) and compares gosec conf check's output with SOURCE.golden. A
// file whose golden says it loaded (exit status 0 or 3) and that no longer
// does fails the test even with -update. SUMMARY holds the counts the
// README quotes.
func TestUpstreamCorpus(t *testing.T) {
	dir := filepath.Join(corpusDir(t), "upstream")
	sources := upstreamFiles(t, dir)
	if len(sources) < 4 {
		t.Fatalf("%d sources in the MANIFEST, want 4", len(sources))
	}
	t.Chdir(dir)
	var names []string
	for s := range sources {
		names = append(names, s)
	}
	sort.Strings(names)
	var summary strings.Builder
	total := map[string]int{}
	features := map[string]int{}
	for _, source := range names {
		files := sources[source]
		sort.Strings(files)
		goldenPath := source + ".golden"
		loadedBefore := map[string]bool{}
		if old, err := os.ReadFile(goldenPath); err == nil {
			for _, line := range strings.Split(string(old), "\n") {
				if m := loadedVerdict.FindStringSubmatch(line); m != nil {
					loadedBefore[m[1]] = true
				}
			}
		}
		var out strings.Builder
		counts := map[string]int{}
		for _, f := range files {
			text, code, cfg := checkUpstream(f, source)
			out.WriteString(text + "\n")
			if code == 1 && loadedBefore[f] {
				t.Errorf("%s loaded before and does not now:\n%s", f, text)
			}
			switch {
			case code == 1:
				counts["rejected"]++
			case code == 3:
				counts["loaded, some conns skipped"]++
			case len(cfg.Diags) == 0:
				counts["loaded clean"]++
			default:
				counts["loaded with warnings"]++
			}
			if cfg != nil {
				counts["conns loaded"] += len(cfg.Conns)
				counts["conns skipped"] += len(cfg.Skipped)
				for _, s := range cfg.Skipped {
					features[s.Feature]++
				}
			}
		}
		if len(loadedBefore) == 0 && !*update {
			t.Errorf("%s: no file loads in the golden", goldenPath)
		}
		checkGolden(t, goldenPath, out.String())
		fmt.Fprintf(&summary, "%s: %d files: %d loaded clean, %d loaded with warnings, %d loaded with conns skipped, %d rejected; %d conns loaded, %d skipped\n",
			source, len(files), counts["loaded clean"], counts["loaded with warnings"], counts["loaded, some conns skipped"], counts["rejected"], counts["conns loaded"], counts["conns skipped"])
		for k, v := range counts {
			total[k] += v
		}
		total["files"] += len(files)
	}
	fmt.Fprintf(&summary, "all: %d files: %d loaded clean, %d loaded with warnings, %d loaded with conns skipped, %d rejected; %d conns loaded, %d skipped\n",
		total["files"], total["loaded clean"], total["loaded with warnings"], total["loaded, some conns skipped"], total["rejected"], total["conns loaded"], total["conns skipped"])
	var fs []string
	for f := range features {
		fs = append(fs, f)
	}
	sort.Slice(fs, func(i, j int) bool {
		if features[fs[i]] != features[fs[j]] {
			return features[fs[i]] > features[fs[j]]
		}
		return fs[i] < fs[j]
	})
	for _, f := range fs {
		fmt.Fprintf(&summary, "skipped for %s: %d conns\n", f, features[f])
	}
	checkGolden(t, "SUMMARY", summary.String())
}

// TestUpstreamSecrets loads the ipsec.secrets files of the same suites
// (testdata/conf/upstream, MANIFEST): none is rejected (RSA key blocks,
// XAUTH, EAP and other entries are skipped with a warning each), and the
// diagnostics and PSK count of each are in secrets.golden.
func TestUpstreamSecrets(t *testing.T) {
	dir := filepath.Join(corpusDir(t), "upstream")
	data, err := os.ReadFile(filepath.Join(dir, "MANIFEST"))
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) == 5 && strings.HasSuffix(f[0], "secrets") {
			files = append(files, f[0])
		}
	}
	if len(files) < 100 {
		t.Fatalf("%d secrets files in the MANIFEST, want the 117 of collect.py", len(files))
	}
	sort.Strings(files)
	t.Chdir(dir)
	var out strings.Builder
	for _, f := range files {
		// Checked out, the files are 0644: the mode and owner checks
		// have their own tests.
		p := &secretsParser{openFiles: true}
		p.read(f, pos{file: f}, nil)
		sortDiags(p.diags, nil)
		// Openswan's test includes a file its harness creates under
		// /etc/ipsec.d: the one error the corpus expects.
		harness := f == "openswan-v2.6.51/tests/unit/libopenswan/lo03-includesecrets/key-2048.secrets"
		if errs := p.diags.Errors(); len(errs) > 0 && !harness {
			t.Errorf("%s rejected:\n%s", f, renderDiags(errs))
		}
		psks := 0
		for _, s := range p.list {
			if s.Type == "PSK" {
				psks++
			}
		}
		out.WriteString(renderDiags(p.diags))
		fmt.Fprintf(&out, "%s: %d entries, %d PSK\n\n", f, len(p.list), psks)
	}
	checkGolden(t, "secrets.golden", out.String())
}
