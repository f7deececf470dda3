package daemon

import (
	"context"
	"errors"
)

// Healthy reports whether the daemon still works: the key manager answers
// (its goroutine is not stuck). The systemd watchdog asks it.
func (d *Daemon) Healthy(ctx context.Context) error {
	if d.ike == nil {
		return errors.New("the key manager is not running")
	}
	_, _, err := d.ike.Status(ctx)
	return err
}
