package cli

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/gosec-ipsec/gosec/internal/daemon"
	"github.com/gosec-ipsec/gosec/internal/sdnotify"
)

// notifyStopping tells systemd that the daemon is stopping.
func notifyStopping() { sdnotify.Notify("STOPPING=1") }

// notifyReady tells systemd (Type=notify) that the daemon is up and, with
// WatchdogSec=, keeps its watchdog fed while the daemon stays healthy; a
// stuck key manager stops the keep-alives and systemd restarts gosec.
func notifyReady(ctx context.Context, d *daemon.Daemon, log *slog.Logger) error {
	sent, err := sdnotify.Notify(fmt.Sprintf("READY=1\nSTATUS=gosec %s running\nMAINPID=%d", daemon.Version, os.Getpid()))
	if err != nil {
		log.Warn("systemd notification", "err", err)
	}
	if !sent {
		return nil
	}
	interval, ok := sdnotify.WatchdogInterval()
	if !ok {
		return nil
	}
	go func() {
		tick := time.NewTicker(interval / 2)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				hctx, cancel := context.WithTimeout(ctx, interval/4)
				err := d.Healthy(hctx)
				cancel()
				if err != nil {
					log.Error("unhealthy: not feeding the systemd watchdog", "err", err)
					continue
				}
				if _, err := sdnotify.Notify("WATCHDOG=1"); err != nil {
					log.Warn("systemd watchdog", "err", err)
				}
			}
		}
	}()
	return nil
}
