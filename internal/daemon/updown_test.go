package daemon

import (
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestUpdownScript: the local end's updown command runs with Pluto's
// environment on up-client and down-client, in order, and a failing
// script neither blocks nor undoes the SA.
func TestUpdownScript(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "events")
	spec := ikeSpec("site", "add", ts1, ts2)
	spec.IKE.RemoteID = "@gw2"
	spec.UpDown = `{ echo "$PLUTO_VERB $PLUTO_CONNECTION $PLUTO_ME $PLUTO_PEER $PLUTO_PEER_ID $PLUTO_MY_CLIENT $PLUTO_PEER_CLIENT_NET/$PLUTO_PEER_CLIENT_MASK $PLUTO_REQID $PLUTO_PROTO $PLUTO_INTERFACE"; } >> ` + out
	d, _, _ := testDaemon(t, spec)
	d.opts.TUNName = "gosec0"
	d.updown = newUpdownRunner(d.log)
	ch := child("site", ts1, ts2)
	install(t, d, ch)
	ikeInstaller{d}.Remove(ch)
	d.updown.close()
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	reqid := d.reqids[childSel(ch)]
	want := []string{
		"up-client site 192.0.2.1 192.0.2.2 @gw2 10.1.0.0/24 10.2.0.0/255.255.255.0 " + itoa(reqid) + " esp gosec0",
		"down-client site 192.0.2.1 192.0.2.2 @gw2 10.1.0.0/24 10.2.0.0/255.255.255.0 " + itoa(reqid) + " esp gosec0",
	}
	if got := strings.Split(strings.TrimSpace(string(b)), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("updown events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}

	// A failing, slow script does not block the installer.
	spec.UpDown = "sleep 2; exit 3"
	d.updown = newUpdownRunner(d.log)
	start := time.Now()
	ch2 := child("site", ts1, ts2)
	install(t, d, ch2)
	if el := time.Since(start); el > time.Second {
		t.Fatalf("install waited %v for the updown script", el)
	}
	if spi, _ := outSPI(t, d, "10.2.0.2"); spi != ch2.OutSPI {
		t.Fatalf("SA not in use while its updown script fails")
	}
	d.updown.close()
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

func TestUpdownVerb(t *testing.T) {
	tunnel := child("c", ts1, ts2)
	hosts := child("c", ts1, ts2)
	hosts.LocalTS, hosts.RemoteTS = prefix32(gw1.String()), prefix32(gw2.String())
	for _, tc := range []struct {
		up   bool
		ch   string
		want string
	}{{true, "tunnel", "up-client"}, {false, "tunnel", "down-client"}, {true, "hosts", "up-host"}, {false, "hosts", "down-host"}} {
		ch := tunnel
		if tc.ch == "hosts" {
			ch = hosts
		}
		if got := updownVerb(tc.up, ch); got != tc.want {
			t.Errorf("%s up=%v: %s, want %s", tc.ch, tc.up, got, tc.want)
		}
	}
}

func prefix32(a string) netip.Prefix { return netip.MustParsePrefix(a + "/32") }
