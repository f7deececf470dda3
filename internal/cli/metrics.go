package cli

import (
	"context"
	"log/slog"

	"github.com/gosec-ipsec/gosec/internal/daemon"
	"github.com/gosec-ipsec/gosec/internal/metrics"
)

// startMetrics serves the Prometheus endpoint on addr (from --metrics)
// or else on metrics= of config setup; neither: the endpoint stays off.
func startMetrics(ctx context.Context, mx *metrics.Metrics, d *daemon.Daemon, addr string, log *slog.Logger) error {
	if addr == "" {
		addr = d.Setup()["metrics"]
	}
	if addr == "" {
		return nil
	}
	ln, err := metrics.Listen(addr)
	if err != nil {
		return err
	}
	mx.SetSource(d.Snapshot)
	go func() {
		if err := mx.Serve(ctx, ln, log); err != nil {
			log.Error("metrics endpoint failed", "err", err)
		}
	}()
	return nil
}
