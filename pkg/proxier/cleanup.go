package proxier

import (
	"context"
	"errors"
	"fmt"

	"k8s.io/klog/v2"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/metrics"
	"github.com/kproxy-dev/kproxy/pkg/rules"
)

// Cleanup removes every rule and chain kproxy (or upstream kube-proxy in iptables mode)
// owns in one family, and nothing else: jumps from built-in chains first, so no packet is
// sent to a chain being deleted, then our chains in one restore. Kubelet's KUBE-FIREWALL
// and its jumps are kept. All steps are attempted; the errors are joined.
func Cleanup(ctx context.Context, ipt iptables.Interface) error {
	logger := klog.FromContext(ctx).WithValues("ipFamily", ipt.Family())
	var errs []error
	for _, j := range rules.CleanupJumps() {
		if err := ipt.DeleteRule(ctx, j.Table, j.From, j.RuleArgs()...); err != nil {
			errs = append(errs, fmt.Errorf("deleting jump %s/%s -> %s: %w", j.Table, j.From, j.To, err))
		}
	}
	existing := map[string][]string{}
	for _, table := range []string{"filter", "nat", "mangle"} {
		chains, err := ipt.SaveChains(ctx, table)
		if err != nil {
			errs = append(errs, fmt.Errorf("listing %s chains: %w", table, err))
			continue
		}
		existing[table] = chains
	}
	if payload := rules.CleanupPayload(existing); len(payload) > 0 {
		if err := ipt.Restore(ctx, payload); err != nil {
			metrics.IPTablesRestoreFailuresTotal.WithLabelValues(string(ipt.Family())).Inc()
			errs = append(errs, fmt.Errorf("deleting chains: %w", err))
		}
	}
	err := errors.Join(errs...)
	if err == nil {
		logger.Info("Removed kproxy's iptables rules")
	}
	return err
}
