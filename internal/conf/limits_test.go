package conf

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gosec-ipsec/gosec/internal/testutil"
)

// parseBounded parses text from memory with includes refused and checks
// that it finishes in time with a bounded number of diagnostics.
func parseBounded(t *testing.T, name string, data []byte, limit time.Duration) *Config {
	t.Helper()
	opts := testOptions()
	opts.NoInclude = true
	start := time.Now()
	cfg, _ := Parse(name, data, opts)
	if d := time.Since(start); d > limit {
		t.Errorf("%s: Parse took %v, want under %v", name, d, limit)
	}
	if cfg == nil {
		t.Fatalf("%s: no config", name)
	}
	if len(cfg.Diags) > MaxDiagnostics {
		t.Errorf("%s: %d diagnostics, cap is %d", name, len(cfg.Diags), MaxDiagnostics)
	}
	return cfg
}

func hasDiag(cfg *Config, sub string) bool {
	for _, d := range cfg.Diags {
		if strings.Contains(d.Msg, sub) {
			return true
		}
	}
	return false
}

// slow is the time limit for hostile inputs: generous for a loaded
// machine (a few seconds is normal), far below what the unbounded
// algorithms took (minutes to hours); four times more under -race.
var slow = func() time.Duration {
	if testutil.RaceEnabled {
		return 4 * time.Minute
	}
	return time.Minute
}()

func TestLimitHugeFile(t *testing.T) {
	data := bytes.Repeat([]byte("conn x\n\tleft=192.0.2.1\n"), 10<<20/23+1) // > 10 MB
	cfg := parseBounded(t, "huge.conf", data, slow)
	if !hasDiag(cfg, fmt.Sprintf("file larger than %d bytes", MaxFileSize)) {
		t.Errorf("10 MB file: diagnostics %v", cfg.Diags)
	}
	if len(cfg.Conns) != 0 {
		t.Errorf("10 MB file gave %d conns", len(cfg.Conns))
	}
	// The same through Load.
	p := filepath.Join(t.TempDir(), "huge.conf")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p, testOptions()); err == nil || !strings.Contains(err.Error(), "file larger than") {
		t.Errorf("Load of a 10 MB file: %v", err)
	}
}

func TestLimitAlsoChain(t *testing.T) {
	// 10,000 conns, each also= the next: every chain stops at
	// MaxAlsoDepth with an error, and the work stays linear.
	var b strings.Builder
	const n = 10000
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "conn c%d\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tauto=add\n", i)
		if i+1 < n {
			fmt.Fprintf(&b, "\talso=c%d\n", i+1)
		}
	}
	cfg := parseBounded(t, "chain.conf", []byte(b.String()), slow)
	if !hasDiag(cfg, fmt.Sprintf("also= chain deeper than %d", MaxAlsoDepth)) {
		t.Errorf("no also= depth error; first diagnostics: %v", head(cfg.Diags))
	}
}

func TestLimitAlsoDiamonds(t *testing.T) {
	// Each level names both conns of the next level: 2^30 paths, 60
	// sections. Merging each section once keeps this instant.
	var b strings.Builder
	const levels = 30
	for i := 0; i < levels; i++ {
		for _, s := range []string{"a", "b"} {
			fmt.Fprintf(&b, "conn %s%d\n\tauto=ignore\n", s, i)
			if i+1 < levels {
				fmt.Fprintf(&b, "\talso=a%d\n\talso=b%d\n", i+1, i+1)
			}
		}
	}
	b.WriteString("conn top\n\talso=a0\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tauto=add\n")
	cfg := parseBounded(t, "diamonds.conf", []byte(b.String()), slow)
	if err := cfg.Diags.Err(); err != nil {
		t.Errorf("diamonds: %v", err)
	}
}

func TestLimitDefaultTimesConns(t *testing.T) {
	// A huge conn %default applied to many conns: the merging stops at
	// MaxResolveWork with an error that says so.
	var b strings.Builder
	for i := 0; i < 5000; i++ {
		fmt.Fprintf(&b, "conn c%d\n\tleft=192.0.2.1\n\tright=192.0.2.2\n", i)
	}
	valid := "\tkeyingtries=3\n\tdpddelay=30s\n\trekey=yes\n\tleftid=@x\n\trightid=@y\n\tikelifetime=1h\n" +
		"\tkeylife=1h\n\trekeymargin=9m\n\trekeyfuzz=100%\n\tdpdtimeout=150s\n\tdpdaction=none\n" +
		"\ttype=tunnel\n\tauthby=secret\n\taggressive=no\n\tforceencaps=no\n\treplay_window=64\n\tesn=no\n"
	for i := 0; i < 1000; i++ {
		b.WriteString("conn %default\n" + valid)
	}
	cfg := parseBounded(t, "defaults.conf", []byte(b.String()), slow)
	if !hasDiag(cfg, "configuration too large to resolve") {
		t.Errorf("no resolve limit error: %v", head(cfg.Diags))
	}
	// 100,000 distinct unknown keywords in conn %default.
	b.Reset()
	b.WriteString("conn %default\n")
	for i := 0; i < 100000; i++ {
		fmt.Fprintf(&b, "\tk%d=v\n", i)
	}
	for i := 0; i < 5000; i++ {
		fmt.Fprintf(&b, "conn c%d\n\tleft=192.0.2.1\n\tright=192.0.2.2\n", i)
	}
	cfg = parseBounded(t, "unknown-defaults.conf", []byte(b.String()), slow)
	if cfg.Diags.Err() == nil {
		t.Errorf("no error for 100,000 unknown keywords")
	}
}

func TestLimitManyUnknownKeywords(t *testing.T) {
	// Suggestions for hundreds of thousands of distinct unknown keywords.
	var b strings.Builder
	b.WriteString("conn c\n\tleft=192.0.2.1\n\tright=192.0.2.2\n")
	for i := 0; b.Len() < MaxFileSize-100; i++ {
		fmt.Fprintf(&b, "\tleftsubnex%d=v\n", i)
	}
	parseBounded(t, "unknown.conf", []byte(b.String()), slow)
}

func TestLimitSections(t *testing.T) {
	var b strings.Builder
	for i := 0; i <= MaxSections; i++ {
		fmt.Fprintf(&b, "conn c%d\n", i)
	}
	cfg := parseBounded(t, "sections.conf", []byte(b.String()), slow)
	if !hasDiag(cfg, fmt.Sprintf("more than %d sections", MaxSections)) {
		t.Errorf("no section limit error: %v", head(cfg.Diags))
	}
}

func TestLimitIncludeSelf(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "self.conf")
	// 1,000,000 includes of itself are 17 MB: refused by size.
	big := strings.Repeat("include self.conf\n", 1000000)
	if err := os.WriteFile(p, []byte(big), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cfg, err := Load(p, testOptions())
	if err == nil || !hasDiag(cfg, "file larger than") {
		t.Errorf("1,000,000 includes: %v", err)
	}
	// As many as fit: each is an include loop, reported up to the cap.
	fit := strings.Repeat("include self.conf\n", MaxFileSize/len("include self.conf\n"))
	if err := os.WriteFile(p, []byte(fit), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err = Load(p, testOptions())
	if err == nil || !hasDiag(cfg, "include loop") {
		t.Errorf("self include: %v", err)
	}
	if len(cfg.Diags) > MaxDiagnostics {
		t.Errorf("%d diagnostics", len(cfg.Diags))
	}
	if d := time.Since(start); d > slow {
		t.Errorf("self includes took %v", d)
	}
}

func TestLimitIncludeDepthAndCount(t *testing.T) {
	dir := t.TempDir()
	// A chain of 20 files, each including the next.
	for i := 0; i < 20; i++ {
		text := fmt.Sprintf("include f%d.conf\n", i+1)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%d.conf", i)), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "f20.conf"), []byte("conn x\n\tleft=192.0.2.1\n\tright=192.0.2.2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err := Load(filepath.Join(dir, "f0.conf"), testOptions())
	if err == nil || !hasDiag(cfg, fmt.Sprintf("includes nested deeper than %d", MaxIncludeDepth)) {
		t.Errorf("include depth: %v", err)
	}
	// 300 files matched by one glob.
	sub := filepath.Join(dir, "many")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 300; i++ {
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("m%03d.conf", i)), []byte("# nothing\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "glob.conf"), []byte("include many/*.conf\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err = Load(filepath.Join(dir, "glob.conf"), testOptions())
	if err == nil || !hasDiag(cfg, fmt.Sprintf("more than %d files included", MaxFiles)) {
		t.Errorf("300 files: %v", head(cfg.Diags))
	}
	// Each of the 300 files including the glob again: a tree of 300^10
	// paths, cut by the depth and file limits.
	for i := 0; i < 300; i++ {
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("m%03d.conf", i)), []byte("include m*.conf\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	cfg, err = Load(filepath.Join(sub, "m000.conf"), testOptions())
	if err == nil || len(cfg.Diags) > MaxDiagnostics {
		t.Errorf("self-including glob: %d diagnostics, %v", len(cfg.Diags), head(cfg.Diags))
	}
	if d := time.Since(start); d > slow {
		t.Errorf("self-including glob took %v", d)
	}
}

func TestNoIncludeAndSpecialFiles(t *testing.T) {
	opts := testOptions()
	opts.NoInclude = true
	cfg, err := Parse("mem.conf", []byte("include /etc/*\nconn x\n\tleft=192.0.2.1\n\tright=192.0.2.2\n\tauthby=secret\n"), opts)
	if err == nil || !hasDiag(cfg, "include is not allowed here") {
		t.Errorf("NoInclude: %v", err)
	}
	if len(cfg.Conns) != 1 {
		t.Errorf("%d conns, want 1", len(cfg.Conns))
	}
	// An included device is refused instead of read (it could block).
	p := filepath.Join(t.TempDir(), "dev.conf")
	if err := os.WriteFile(p, []byte("include /dev/null\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg, err = Load(p, testOptions())
	if err == nil || !hasDiag(cfg, "/dev/null is not a regular file") {
		t.Errorf("include /dev/null: %v", err)
	}
}

func head(ds Diags) Diags {
	if len(ds) > 5 {
		return ds[:5]
	}
	return ds
}

// FuzzParse feeds arbitrary text to the parser (includes refused, names
// resolved by the test table): it must not panic, must report every
// problem as an error with a file and line, and must stay bounded.
func FuzzParse(f *testing.F) {
	if dir, err := filepath.Abs(filepath.Join("..", "..", "testdata", "conf")); err == nil {
		files, _ := filepath.Glob(filepath.Join(dir, "*.conf"))
		more, _ := filepath.Glob(filepath.Join(dir, "inc", "*"))
		for _, p := range append(files, more...) {
			if data, err := os.ReadFile(p); err == nil {
				f.Add(data)
			}
		}
	}
	f.Add([]byte("conn a\n\talso=b\nconn b\n\talso=a\n"))
	f.Add([]byte("conn %default\n\tleftspi=0x1000\n\tesp=aes128gcm16\nconn x\n\tleft=localhost\n\tright=%any\n"))
	f.Add([]byte("version 2\nconfig setup\n\tx=\"\nconn \"q q\"\n\tleft=\"1.2.3.4\" # c\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		opts := testOptions()
		opts.NoInclude = true
		cfg, err := Parse("fuzz.conf", data, opts)
		if cfg == nil {
			t.Fatal("no config")
		}
		if (err != nil) != (len(cfg.Diags.Errors()) > 0) {
			t.Fatalf("error %v with %d error diagnostics", err, len(cfg.Diags.Errors()))
		}
		if len(cfg.Diags) > MaxDiagnostics {
			t.Fatalf("%d diagnostics", len(cfg.Diags))
		}
		for _, d := range cfg.Diags {
			if d.File != "fuzz.conf" || d.Msg == "" {
				t.Fatalf("diagnostic without place or text: %+v", d)
			}
		}
		var b bytes.Buffer
		for _, c := range cfg.Conns {
			c.Dump(&b) // must not panic on any resolved conn
			_ = c.ManualSuite()
		}
	})
}
