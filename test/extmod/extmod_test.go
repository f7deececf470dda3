// Package extmod checks that gosec's public packages (the data plane's
// esp, ah, sad, spd and the key manager ike) are usable from another Go
// module: every type their API needs has a public name (README: "Public
// Go API").
package extmod

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const program = `package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"sync"
	"time"

	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/ike"
	"github.com/gosec-ipsec/gosec/sad"
	"github.com/gosec-ipsec/gosec/spd"
)

// wire carries IKE messages between two engines by address.
type wire struct{ peers map[netip.Addr]*ike.Engine }

type port struct {
	w     *wire
	local netip.Addr
}

func (p port) Send(msg []byte, to netip.AddrPort, natt bool) error {
	from := netip.AddrPortFrom(p.local, 500)
	if natt {
		from = netip.AddrPortFrom(p.local, 4500)
	}
	if e := p.w.peers[to.Addr()]; e != nil {
		e.HandleMessage(msg, from, to, natt)
	}
	return nil
}

// installer is a data plane of this module: it keeps what it installed
// on its own side, keyed by the engine's *ike.ChildSA.
type installer struct {
	mu        sync.Mutex
	next      uint32
	installed map[*ike.ChildSA]string
}

func (i *installer) AllocSPI(proto ike.Proto) (uint32, error) {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.next++
	return 0x1000 + i.next, nil
}
func (i *installer) ReleaseSPI(ike.Proto, uint32)     {}
func (i *installer) InstallInbound(*ike.ChildSA) error { return nil }
func (i *installer) InstallOutbound(c *ike.ChildSA) error {
	i.mu.Lock()
	defer i.mu.Unlock()
	i.installed[c] = fmt.Sprintf("%v %v %s", c.Proto, c.Mode, c.Suite)
	return nil
}
func (i *installer) Remove(c *ike.ChildSA) {
	i.mu.Lock()
	defer i.mu.Unlock()
	delete(i.installed, c)
}

// negotiate runs Main Mode and Quick Mode between two engines.
func negotiate() string {
	a, b := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	suites := []ike.Suite{{Cipher: ike.Cipher{Encr: ike.EncrAESCBC, KeyBits: 128}, Integ: ike.IntegSHA1, DH: 14}}
	conn := func(local, remote netip.Addr, ls, rs string) *ike.Conn {
		return &ike.Conn{Name: "c", Local: local, Remote: remote, IKE: suites, ESP: suites, Mode: ike.ModeTunnel,
			LocalSubnets: []netip.Prefix{netip.MustParsePrefix(ls)}, RemoteSubnets: []netip.Prefix{netip.MustParsePrefix(rs)},
			IKELifetime: time.Hour, Lifetime: 20 * time.Minute, KeyingTries: 1, ReplayWindow: 64}
	}
	psk := func(string, string) ([]byte, bool) { return []byte("secret"), true }
	w := &wire{peers: map[netip.Addr]*ike.Engine{}}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ia := &installer{installed: map[*ike.ChildSA]string{}}
	var clk ike.Clock = sad.RealClock{}
	ea := ike.New(ike.Config{Transport: port{w, a}, Installer: ia, PSK: psk, Clock: clk, NATTPort: 4500})
	eb := ike.New(ike.Config{Transport: port{w, b}, Installer: &installer{installed: map[*ike.ChildSA]string{}}, PSK: psk, NATTPort: 4500})
	w.peers[a], w.peers[b] = ea, eb
	go ea.Run(ctx)
	go eb.Run(ctx)
	if err := ea.SetConns(ctx, []*ike.Conn{conn(a, b, "10.1.0.0/24", "10.2.0.0/24")}); err != nil {
		panic(err)
	}
	if err := eb.SetConns(ctx, []*ike.Conn{conn(b, a, "10.2.0.0/24", "10.1.0.0/24")}); err != nil {
		panic(err)
	}
	if err := ea.Initiate(ctx, "c", nil); err != nil {
		panic(err)
	}
	ia.mu.Lock()
	defer ia.mu.Unlock()
	for _, s := range ia.installed {
		return s
	}
	return "nothing installed"
}

func main() {
	s, err := esp.NewSuite(esp.Config{Cipher: esp.CipherAESCBC, EncKey: make([]byte, 16), Integ: esp.IntegSHA1_96, AuthKey: make([]byte, 20)})
	if s == nil || err != nil {
		panic(err)
	}
	if _, err := ah.NewSuite(ah.Config{Integ: ah.IntegSHA256128, Key: make([]byte, 32)}); err != nil {
		panic(err)
	}
	if sad.New(sad.RealClock{}, nil) == nil {
		panic("sad.New")
	}
	var e *esp.Error
	_ = esp.Outer{TTL: 64}
	fmt.Println(errors.As(fmt.Errorf("x: %w", esp.ErrICV), &e), esp.ReasonOf(esp.ErrICV), spd.ReasonOf(spd.ErrTuple))
	fmt.Println(negotiate())
}
`

func TestUsableFromAnotherModule(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mod := "module example.com/extuser\n\ngo 1.26.0\n\nrequire github.com/gosec-ipsec/gosec v0.0.0\n\nreplace github.com/gosec-ipsec/gosec => " + root + "\n"
	sum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	for name, body := range map[string]string{"go.mod": mod, "go.sum": string(sum), "main.go": program} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "run", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOPROXY=off")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("another module cannot use the public packages: %v\n%s", err, out)
	}
	if got, want := strings.TrimSpace(string(out)), "true icv malformed\nESP tunnel aes128-sha1-modp2048"; got != want {
		t.Fatalf("output %q, want %q", got, want)
	}
}
