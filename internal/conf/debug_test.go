package conf

import "testing"

func TestSetupLogLevel(t *testing.T) {
	for _, tc := range []struct {
		setup map[string]string
		want  string
		ok    bool
	}{
		{setup: map[string]string{}, ok: false},
		{setup: map[string]string{"charondebug": "ike 2, knl 1"}, want: "debug", ok: true},
		{setup: map[string]string{"charondebug": "ike 0"}, want: "warn", ok: true},
		{setup: map[string]string{"plutodebug": "none"}, want: "info", ok: true},
		{setup: map[string]string{"plutodebug": "all"}, want: "debug", ok: true},
		// Both: the more verbose wins.
		{setup: map[string]string{"charondebug": "ike 0", "plutodebug": "control"}, want: "debug", ok: true},
		{setup: map[string]string{"charondebug": "ike -1", "plutodebug": "none"}, want: "info", ok: true},
	} {
		got, ok := (&Config{Setup: tc.setup}).SetupLogLevel()
		if got != tc.want || ok != tc.ok {
			t.Errorf("%v: SetupLogLevel = %q, %v; want %q, %v", tc.setup, got, ok, tc.want, tc.ok)
		}
	}
}
