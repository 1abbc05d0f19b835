package proxier

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/metrics"
	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/rules"
)

// ReasonRejectedByKernel labels kproxy_invalid_objects_total for a Service left out
// because iptables-restore rejected its rules.
const ReasonRejectedByKernel = "rejected_by_kernel"

// restore applies a ruleset's batches with one iptables-restore. On the nft backend one
// process with many commits is faster than a process per batch, which reloads the whole
// ruleset each time.
func (p *Proxier) restore(ctx context.Context, rs *rules.Ruleset, full bool) error {
	logger := klog.FromContext(ctx)
	// Until every batch is applied, the kernel holds neither the old state nor the new.
	p.applied.Store(nil)
	p.restores.Add(1)
	if len(rs.Batches) == 0 {
		return nil
	}
	if logger.V(9).Enabled() {
		logger.V(9).Info("Restoring", "batches", len(rs.Batches), "payload", string(rs.Payload()))
	}
	err := p.cfg.IPTables.Restore(ctx, rs.Pieces()...)
	if err == nil {
		return nil
	}
	metrics.IPTablesRestoreFailuresTotal.WithLabelValues(p.family).Inc()
	if !full {
		metrics.IPTablesPartialRestoreFailuresTotal.WithLabelValues(p.family).Inc()
	}
	var perr *iptables.ParseError
	if errors.As(err, &perr) {
		logger.Error(err, "iptables-restore failed; batches before the failing one are applied, each service whole", "line", perr.Line,
			"context", iptables.LinesAround(rs.Payload(), perr.Line, 3))
	} else {
		logger.Error(err, "iptables-restore failed", "batches", len(rs.Batches))
	}
	return fmt.Errorf("restoring %s rules: %w", p.family, err)
}

// blame finds the Service whose rule iptables-restore rejected: the binary names the
// failing line, and the line names its Service. A failure with no line (lock, kernel
// busy) or on a line of no single Service (COMMIT, shared chains) blames nobody.
func blame(err error, rs *rules.Ruleset) (types.NamespacedName, string, bool) {
	var perr *iptables.ParseError
	if !errors.As(err, &perr) || perr.Line < 1 {
		return types.NamespacedName{}, "", false
	}
	sc := bufio.NewScanner(bytes.NewReader(rs.Payload()))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for n := 1; sc.Scan(); n++ {
		if n == perr.Line {
			line := sc.Text()
			nn, ok := rs.State.Culprit(line)
			return nn, line, ok
		}
	}
	return types.NamespacedName{}, "", false
}

// withoutRejected returns snap without the ports of rejected Services (snap itself when
// there are none; snapshots are never modified).
func (p *Proxier) withoutRejected(snap *model.Snapshot) *model.Snapshot {
	if len(p.rejected) == 0 {
		return snap
	}
	out := &model.Snapshot{
		Services:  make(map[model.ServicePortName]*model.ServicePort, len(snap.Services)),
		Endpoints: make(map[model.ServicePortName][]model.Endpoint, len(snap.Endpoints)),
	}
	for name, sp := range snap.Services {
		if _, bad := p.rejected[name.NamespacedName]; !bad {
			out.Services[name] = sp
		}
	}
	for name, eps := range snap.Endpoints {
		if _, bad := p.rejected[name.NamespacedName]; !bad {
			out.Endpoints[name] = eps
		}
	}
	return out
}

// readKernel reads the nat and filter tables for a full sync, one iptables-save each:
// the nat chains, to delete leftovers of an earlier kproxy or kube-proxy (e.g. after a
// restart; partial syncs know from the previous state which chains their changes made
// stale), and which jumps from the built-in chains are missing, which the restore then
// inserts. Checking each jump with its own "iptables -C" cost about 30 processes, and on
// the legacy backend every one of them reads the whole table out of the kernel.
func (p *Proxier) readKernel(ctx context.Context) ([]string, rules.JumpState, error) {
	nat, err := p.cfg.IPTables.Save(ctx, "nat")
	if err != nil {
		return nil, rules.JumpState{}, fmt.Errorf("reading the nat table: %w", err)
	}
	filter, err := p.cfg.IPTables.Save(ctx, "filter")
	if err != nil {
		return nil, rules.JumpState{}, fmt.Errorf("reading the filter table: %w", err)
	}
	return iptables.ParseChains(nat), rules.ReadJumps(append(filter, nat...)), nil
}
