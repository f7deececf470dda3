package conf

import (
	"fmt"
	"log/slog"

	"github.com/gosec-ipsec/gosec/internal/loglevel"
)

// The log levels: charondebug= and plutodebug= in config setup set the
// global level, debug= a conn's own. The daemon applies them at start and
// on every reload (internal/loglevel); `gosec debug` changes them until the
// next reload.

// setupChecks check the values of config setup keywords gosec implements,
// so that a bad value is reported at its line.
var setupChecks = map[string]func(v string) error{
	"charondebug": func(v string) error { _, _, err := loglevel.ParseCharon(v); return err },
	"plutodebug": func(v string) error {
		if _, err := loglevel.ParsePluto(v); err != nil {
			return fmt.Errorf("plutodebug: %w", err)
		}
		return nil
	},
}

// SetupLogLevel is the global log level config setup asks for (charondebug=
// or plutodebug=; with both, the more verbose); ok is false when neither
// is given. The values were checked when the file loaded.
func (c *Config) SetupLogLevel() (name string, ok bool) {
	var lv slog.Level
	if v, given := c.Setup["charondebug"]; given {
		if l, has, err := loglevel.ParseCharon(v); err == nil && has {
			lv, ok = l, true
		}
	}
	if v, given := c.Setup["plutodebug"]; given {
		if l, err := loglevel.ParsePluto(v); err == nil && (!ok || l < lv) {
			lv, ok = l, true
		}
	}
	if !ok {
		return "", false
	}
	return loglevel.Name(lv), true
}

func init() {
	// Libreswan: debug= is the conn's plutodebug=; gosec also takes its
	// own level names and strongSwan's numbers.
	connKeywords["debug"] = func(c *Conn, v string, _ *resolver) error {
		lv, err := loglevel.Parse(v)
		if err != nil {
			return err
		}
		c.Debug = loglevel.Name(lv)
		return nil
	}
}
