package iptables

import (
	"context"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// CanaryChain is the name of the empty chain kube-proxy keeps in the mangle,
// nat and filter tables to notice that another program deleted its rules.
// kproxy uses the same name so that either can clean up after the other.
const CanaryChain = "KUBE-PROXY-CANARY"

const (
	// flushPollInterval and flushTimeout bound the wait for the rest of a
	// flush once the first canary is gone: a flush of every table (firewalld
	// reload, "iptables -F; iptables -X" per table) deletes the tables one
	// after another, and a reload in the middle would be wiped out by the
	// rest of the flush.
	flushPollInterval = 100 * time.Millisecond
	flushTimeout      = 5 * time.Second
)

// canaryState is what one check of a canary found.
type canaryState int

const (
	canaryPresent canaryState = iota
	canaryGone
	// canaryUnknown means the check could not tell: the lock or the kernel
	// was busy, or ctx is done.
	canaryUnknown
)

// Monitor detects that another program has flushed the iptables tables
// (firewalld reload, "iptables -F -X", iptables-restore without --noflush), so
// the caller can rewrite all of its rules rather than trust --noflush partial
// syncs to chains that no longer exist.
//
// It creates the empty chain canary in each of tables (kube-proxy uses
// CanaryChain in mangle, nat and filter), retrying every interval until all
// exist. It then checks every interval that the canary in tables[0] still
// exists. Once it is gone, Monitor polls every 100ms, for up to 5s, until the
// canaries in the other tables are gone too, because a flush empties the
// tables one at a time; if some survive it logs "Inconsistent iptables state
// detected" and carries on. It then calls reloadFunc, which must force a full
// sync, re-creates the canaries and starts over.
//
// A check that fails because the lock or the kernel was busy (exit status 4,
// *BusyError) is not a flush; any other failed check counts as a missing
// canary, as in kube-proxy, since a needless full sync costs less than a
// missed flush.
//
// reloadFunc runs on Monitor's goroutine, so a slow reload delays the next
// check. Monitor blocks until ctx is done; run it on a goroutine of its own.
// It logs through the logger in ctx and never returns an error: flush
// detection is best effort and must not stop the proxy.
func Monitor(ctx context.Context, ipt Interface, canary string, tables []string, reloadFunc func(), interval time.Duration, clk clock.Clock) {
	logger := klog.FromContext(ctx)
	if ipt == nil || clk == nil {
		logger.Error(nil, "Not monitoring for iptables flushes: no iptables Interface or clock")
		return
	}
	logger = logger.WithValues("ipFamily", ipt.Family(), "chain", canary)
	ctx = klog.NewContext(ctx, logger)
	if len(tables) == 0 || canary == "" || reloadFunc == nil || interval <= 0 {
		logger.Error(nil, "Not monitoring for iptables flushes: invalid arguments",
			"tables", tables, "interval", interval, "haveReloadFunc", reloadFunc != nil)
		return
	}
	m := &monitor{ipt: ipt, canary: canary, tables: tables, interval: interval, clk: clk}
	for {
		if !m.ensureCanaries(ctx) {
			return
		}
		if !m.waitForDeletion(ctx) {
			return
		}
		if !m.waitForFlushToFinish(ctx) {
			return
		}
		logger.V(2).Info("Reloading after iptables flush")
		reloadFunc()
	}
}

// monitor holds Monitor's arguments for its steps.
type monitor struct {
	ipt      Interface
	canary   string
	tables   []string
	interval time.Duration
	clk      clock.Clock
}

// ensureCanaries creates the canaries, retrying every interval until all of
// them exist. It returns false when ctx is done first.
func (m *monitor) ensureCanaries(ctx context.Context) bool {
	logger := klog.FromContext(ctx)
	for {
		ok := true
		for _, table := range m.tables {
			if err := m.ipt.EnsureChain(ctx, table, m.canary); err != nil {
				if ctx.Err() != nil {
					return false
				}
				logger.Error(err, "Could not set up iptables canary", "table", table)
				ok = false
				break
			}
		}
		if ok {
			return true
		}
		if !sleep(ctx, m.clk, m.interval) {
			return false
		}
	}
}

// waitForDeletion checks the first table's canary every interval until it is
// gone. It returns false when ctx is done first.
func (m *monitor) waitForDeletion(ctx context.Context) bool {
	for {
		if !sleep(ctx, m.clk, m.interval) {
			return false
		}
		if m.check(ctx, m.tables[0]) == canaryGone {
			klog.FromContext(ctx).V(2).Info("iptables canary deleted", "table", m.tables[0])
			return true
		}
	}
}

// waitForFlushToFinish polls until every canary is gone or flushTimeout has
// passed. It returns false only when ctx is done first.
func (m *monitor) waitForFlushToFinish(ctx context.Context) bool {
	start := m.clk.Now()
	for {
		var remaining []string
		for _, table := range m.tables {
			if m.check(ctx, table) != canaryGone {
				remaining = append(remaining, table)
			}
		}
		if len(remaining) == 0 {
			return true
		}
		if ctx.Err() != nil {
			return false
		}
		if m.clk.Since(start) >= flushTimeout {
			// Reload anyway: the gone canary proves that rules were
			// deleted, whatever state the other tables are in.
			klog.FromContext(ctx).Info("Inconsistent iptables state detected", "tablesWithCanary", remaining, "waited", flushTimeout)
			return true
		}
		if !sleep(ctx, m.clk, flushPollInterval) {
			return false
		}
	}
}

// check reports whether the canary in table exists.
func (m *monitor) check(ctx context.Context, table string) canaryState {
	exists, err := m.ipt.ChainExists(ctx, table, m.canary)
	switch {
	case err == nil && exists:
		return canaryPresent
	case err == nil:
		return canaryGone
	case ctx.Err() != nil:
		return canaryUnknown
	case IsBusy(err):
		klog.FromContext(ctx).Error(err, "Error checking iptables canary; not a flush", "table", table)
		return canaryUnknown
	default:
		klog.FromContext(ctx).Error(err, "Error checking iptables canary; treating it as deleted", "table", table)
		return canaryGone
	}
}

// sleep waits d on clk. It returns false, at once, when ctx is done.
func sleep(ctx context.Context, clk clock.Clock, d time.Duration) bool {
	t := clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return ctx.Err() == nil
	}
}

// MonitorRule checks every interval that one rule is in place, and calls reloadFunc when
// it is gone. The canary chains of Monitor survive `iptables -t nat -F`, which deletes
// rules but not chains; watching the jump from a built-in chain into ours catches that
// flush too. Busy checks are ignored; a failed check counts as present, since a chain
// that cannot be listed is Monitor's business. It blocks until ctx is done.
func MonitorRule(ctx context.Context, ipt Interface, table, chain string, args []string, reloadFunc func(), interval time.Duration, clk clock.Clock) {
	logger := klog.FromContext(ctx).WithValues("table", table, "chain", chain)
	for sleep(ctx, clk, interval) {
		exists, err := ipt.RuleExists(ctx, table, chain, args...)
		if err != nil || exists {
			continue
		}
		logger.Info("Our jump from a built-in chain is gone (iptables flushed from outside?); resyncing")
		reloadFunc()
	}
}
