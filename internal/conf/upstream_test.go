package conf

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestUpstreamKeywords checks that gosec recognises every keyword of the
// upstream parsers, in the section they put it in: the lists in
// testdata/conf/upstream-keywords were extracted by extract.py from the
// sources each header names (repository, tag, commit, path). Recognised
// means implemented, or accepted with a warning naming it; never
// "unknown keyword".
func TestUpstreamKeywords(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(corpusDir(t), "upstream-keywords", "*.txt"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 8 {
		t.Fatalf("%d keyword lists, want the 8 extract.py writes", len(files))
	}
	commit := regexp.MustCompile(`^# \S+/\S+ .* [0-9a-f]{40} \S+$`)
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			fh, err := os.Open(f)
			if err != nil {
				t.Fatal(err)
			}
			defer fh.Close()
			sc := bufio.NewScanner(fh)
			n, headers := 0, 0
			for sc.Scan() {
				line := sc.Text()
				if strings.HasPrefix(line, "#") {
					if !commit.MatchString(line) {
						t.Errorf("header %q does not name repository, commit and path", line)
					}
					headers++
					continue
				}
				sec, kw, ok := strings.Cut(line, " ")
				if !ok {
					t.Fatalf("bad line %q", line)
				}
				n++
				key := normalizeKey(kw)
				switch sec {
				case "setup":
					_, ignored := ignoredSetup[key]
					if _, supported := setupSupported[key]; !ignored && !supported {
						t.Errorf("config setup keyword %s is not recognised", kw)
					}
				case "conn":
					if !isConnKeyword(key) {
						t.Errorf("conn keyword %s is not recognised", kw)
					}
				case "ca":
					if _, ok := caKeywords[key]; !ok {
						t.Errorf("ca keyword %s is not recognised", kw)
					}
				default:
					t.Errorf("unknown section %q", sec)
				}
			}
			if headers == 0 || n < 40 {
				t.Errorf("%d headers, %d keywords: not an extracted list", headers, n)
			}
		})
	}
}

// TestKeywordSpellings checks the spellings the parsers allow besides
// the tables' own.
func TestKeywordSpellings(t *testing.T) {
	tests := []struct{ in, want string }{
		// Libreswan parser.y parse_leftright: "left" then an optional "-".
		{"left-subnet", "leftsubnet"},
		{"right-id", "rightid"},
		// Libreswan parser.y: hunk_strcaseeq, keywords without case.
		{"LeftSubnet", "leftsubnet"},
		{"left", "left"},
		{"left-", "left-"},
	}
	for _, tt := range tests {
		if got := normalizeKey(tt.in); got != tt.want {
			t.Errorf("normalizeKey(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	// FreeS/WAN ipsec.conf(5): "x-" and "x_" are reserved for the user.
	for _, k := range []string{"x-myparam", "x_note", "X-Foo"} {
		if !isUserParam(k) {
			t.Errorf("%s is a user parameter", k)
		}
	}
	if isUserParam("xauth") || isUserParam("x-") {
		t.Errorf("xauth and x- are not user parameters")
	}
}
