package proxier

import (
	"context"
	"io"
	"time"

	"k8s.io/klog/v2"

	"github.com/kproxy-dev/kproxy/pkg/metrics"
)

// watchDrift checks every interval that the kernel still holds the rules of the last
// sync (rules.State.Drift) and forces a full sync when it does not. Partial syncs edit
// the dispatch chains in place, so unlike upstream, which rewrites them on every sync,
// kproxy would otherwise keep another program's rules in them, or miss a deleted chain,
// until the next full sync. Checking costs one iptables-save per table per interval, off
// the sync's path.
func (p *Proxier) watchDrift(ctx context.Context, interval time.Duration) {
	ticker := p.cfg.Clock.NewTicker(interval)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C():
		}
		if drift := p.checkDrift(ctx); len(drift) > 0 {
			klog.FromContext(ctx).Info("Rules changed by another program; resyncing in full", "ipFamily", p.cfg.Family, "drift", drift)
			metrics.RulesDriftTotal.WithLabelValues(p.family).Inc()
			p.ForceFullSync()
		}
	}
}

// checkDrift compares the kernel's nat and filter tables with the last applied state. A
// check that a restore overlapped finds nothing: the next one will look again.
func (p *Proxier) checkDrift(ctx context.Context) []string {
	restores := p.restores.Load()
	st := p.applied.Load()
	if st == nil {
		return nil
	}
	var drift []string
	for _, table := range []string{"nat", "filter"} {
		// Parsed as iptables-save prints it: the table is never held whole.
		save, printer := io.Pipe()
		go func() { printer.CloseWithError(p.cfg.IPTables.SaveTo(ctx, table, printer)) }()
		d, err := st.Drift(table, save)
		// Stops the printer if the parse ended early.
		save.Close()
		if err != nil {
			klog.FromContext(ctx).V(2).Info("Drift check could not read the rules", "table", table, "err", err)
			return nil
		}
		drift = append(drift, d...)
	}
	if p.restores.Load() != restores {
		return nil
	}
	return drift
}
