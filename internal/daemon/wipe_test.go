package daemon

import (
	"bytes"
	"testing"

	"github.com/gosec-ipsec/gosec/ah"
	"github.com/gosec-ipsec/gosec/esp"
	"github.com/gosec-ipsec/gosec/internal/clock"
)

// TestWipeManualKeys: at stop the manual keys of the configuration (the
// very slices the specs hold) are zeros.
func TestWipeManualKeys(t *testing.T) {
	keys := [][]byte{bytes.Repeat([]byte{1}, 16), bytes.Repeat([]byte{2}, 20), bytes.Repeat([]byte{3}, 16), bytes.Repeat([]byte{4}, 20), bytes.Repeat([]byte{5}, 20), bytes.Repeat([]byte{6}, 20)}
	d := newDaemon(Options{Clock: clock.Real{}})
	d.conns = &Config{Conns: map[string]*ConnSpec{
		"esp": {Manual: &Manual{InESP: esp.Config{EncKey: keys[0], AuthKey: keys[1]}, OutESP: esp.Config{EncKey: keys[2], AuthKey: keys[3]}}},
		"ah":  {Manual: &Manual{InAH: ah.Config{Key: keys[4]}, OutAH: ah.Config{Key: keys[5]}}},
		"ike": {},
	}}
	d.wipeManualKeys()
	for i, k := range keys {
		if !bytes.Equal(k, make([]byte, len(k))) {
			t.Errorf("key %d not wiped: %x", i, k)
		}
	}
}
