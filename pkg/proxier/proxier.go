// Package proxier runs one IP family's service proxy: event handlers feed the change
// tracker and ask the runner for a sync; each sync checkpoints the tracker, renders the
// snapshot and applies it with one iptables-restore. The sync never reads informers and
// the handlers never render.
package proxier

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"runtime/debug"
	"sync/atomic"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kproxy-dev/kproxy/pkg/healthcheck"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/metrics"
	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/nfacct"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/runner"
	"github.com/kproxy-dev/kproxy/pkg/tracker"
)

// FullSyncPeriod bounds how long partial syncs may run without a full one; a full sync
// rewrites every chain and re-ensures the jumps from the built-in chains, repairing any
// drift another program caused.
const FullSyncPeriod = time.Hour

// ConntrackCleaner removes conntrack entries that still send traffic to endpoints that
// are gone (pkg/conntrack).
type ConntrackCleaner interface {
	CleanStaleEntries(ctx context.Context, snap *model.Snapshot) error
}

// ServiceHealth serves the health check node ports of services (pkg/healthcheck).
type ServiceHealth interface {
	SyncServices(ctx context.Context, ports map[types.NamespacedName]int32) error
	SyncEndpoints(counts map[types.NamespacedName]int)
}

// Config is what a proxier needs; every field is required unless noted.
type Config struct {
	Family   v1.IPFamily
	IPTables iptables.Interface
	Rules    rules.Options
	// Node is this node at start; its zone may change later (SetNodeZone).
	Node model.Node
	// LocalAddrs lists the node's addresses of this family; it is called on every sync,
	// but only when Rules.NodePortAddresses restricts node ports.
	LocalAddrs func() ([]netip.Addr, error)
	// Conntrack, ServiceHealth and NFAcct are optional.
	Conntrack     ConntrackCleaner
	ServiceHealth ServiceHealth
	// NFAcct creates upstream's accounting counters on every full sync; the rules count
	// into those that exist (rules.Options.Count*).
	NFAcct nfacct.Interface
	// MinSyncPeriod spaces syncs apart; SyncPeriod is the retry interval after a failure.
	MinSyncPeriod, SyncPeriod time.Duration
	// Health is told when syncs are queued and done; nil disables health reporting.
	Health *healthcheck.ProxyHealth
	Clock  clock.WithTicker
}

// Proxier programs one IP family. Its exported On* methods are the informer handlers.
type Proxier struct {
	cfg     Config
	tracker *tracker.Tracker
	runner  *runner.Runner
	family  string

	servicesSynced, slicesSynced atomic.Bool
	// forceFull asks the next sync to be full (external flush, node zone change).
	forceFull atomic.Bool
	zone      atomic.Pointer[string]

	// Sync state, touched only by the runner's goroutine.
	needFullSync bool
	lastFullSync time.Time
	// largeCluster is the previous sync's large-cluster mode: it skips the hourly full
	// sync.
	largeCluster bool
	// rulesOpts are cfg.Rules with the nfacct counters found on the last full sync.
	rulesOpts rules.Options
	// udpCleanupPending is set by a change that may leave UDP conntrack entries pointing
	// at gone endpoints, and cleared once a successful sync has cleaned them: a failed
	// sync must not lose it.
	udpCleanupPending bool
	// rejected are Services whose rules iptables-restore rejected, with the line it
	// blamed; they are left out of every sync until they change.
	rejected map[types.NamespacedName]string

	// applied is what the last successful sync rendered, which the kernel now holds: an
	// incremental sync edits it, and the drift check (its own goroutine, hence atomic)
	// compares the kernel with it. nil while a restore runs or after a failed one, which
	// forces a full sync. restores counts restores started, so that a drift check that
	// overlapped one is discarded.
	applied  atomic.Pointer[rules.State]
	restores atomic.Uint64
	// lastApplied is what the last successful sync programmed, for the debug endpoint.
	lastApplied atomic.Pointer[Applied]
}

// Applied is what a successful sync programmed: the inputs of its render and when it
// happened. Its Expected is the ruleset the kernel should hold in kproxy's chains.
type Applied struct {
	// At is when the restore succeeded.
	At time.Time
	// Full says whether that sync was a full one.
	Full bool
	// Request holds the snapshot (Services the kernel rejected left out), the node and
	// its addresses, as a full render's request.
	Request rules.Request
	Options rules.Options
	// Rejected are the Services left out, with the line the kernel rejected.
	Rejected map[types.NamespacedName]string
}

// Expected renders, in one batch, the rules the kernel should hold in kproxy's chains
// after the sync a describes: a full render of the same inputs, which every partial
// sync equals (pkg/rules TestPartialRenderMatchesFull). It renders anew at each call.
func (a *Applied) Expected() *rules.Ruleset {
	opts := a.Options
	opts.MaxChainsPerBatch = 0
	return rules.Render(a.Request, opts)
}

// Family is the IP family this proxier programs.
func (p *Proxier) Family() v1.IPFamily { return p.cfg.Family }

// LastApplied returns what the last successful sync programmed; nil before the first.
func (p *Proxier) LastApplied() *Applied { return p.lastApplied.Load() }

// freeMemoryAbove is the payload size above which a full sync returns its transient
// memory to the OS at once; below it, a forced collection costs more than it returns.
const freeMemoryAbove = 4 << 20

// maxRejectedPerSync bounds how many Services one sync may leave out and retry without:
// a failure that keeps blaming new Services is not about any one of them.
const maxRejectedPerSync = 8

// New builds a proxier; call Run to start syncing.
func New(ctx context.Context, cfg Config) *Proxier {
	logger := klog.FromContext(ctx).WithValues("ipFamily", cfg.Family)
	family := string(cfg.Family)
	p := &Proxier{cfg: cfg, family: family, needFullSync: true, rulesOpts: cfg.Rules, rejected: map[types.NamespacedName]string{}}
	zone := cfg.Node.Zone
	p.zone.Store(&zone)
	p.tracker = tracker.New(cfg.Family, cfg.Node.Name, cfg.Clock.Now(), func(kind string, obj types.NamespacedName, reason, detail string) {
		logger.Info("Skipping malformed part of object", "kind", kind, "object", obj, "reason", reason, "detail", detail)
		metrics.InvalidObjectsTotal.WithLabelValues(kind, reason).Inc()
	})
	p.runner = runner.New("sync-"+family, p.Sync, cfg.MinSyncPeriod, cfg.SyncPeriod, FullSyncPeriod, cfg.Clock)
	return p
}

// Run drives syncs until ctx is done.
func (p *Proxier) Run(ctx context.Context) {
	ctx = klog.NewContext(ctx, klog.FromContext(ctx).WithValues("ipFamily", p.cfg.Family))
	if p.cfg.Health != nil {
		// Health counts from here: the sync queued next must complete within the health
		// timeout, so a proxy that never manages a first sync turns unhealthy.
		p.cfg.Health.Started(p.cfg.Family)
	}
	p.requestSync()
	if p.cfg.SyncPeriod > 0 {
		go p.watchDrift(ctx, p.cfg.SyncPeriod)
	}
	p.runner.Loop(ctx)
}

// ForceFullSync makes the next sync full and requests it; the canary monitor calls it
// when another program flushed our chains.
func (p *Proxier) ForceFullSync() {
	p.forceFull.Store(true)
	p.requestSync()
}

// SetNodeZone records this node's zone label. Topology hints are evaluated against it, so
// a change rewrites every service (a full sync).
func (p *Proxier) SetNodeZone(zone string) {
	if old := p.zone.Swap(&zone); *old != zone {
		p.ForceFullSync()
	}
}

func (p *Proxier) requestSync() {
	if p.cfg.Health != nil {
		p.cfg.Health.QueuedUpdate(p.cfg.Family)
	}
	metrics.SyncProxyRulesLastQueuedTimestamp.WithLabelValues(p.family).Set(float64(p.cfg.Clock.Now().Unix()))
	p.runner.Run()
}

// OnServiceAdd implements sources.ServiceHandler.
func (p *Proxier) OnServiceAdd(svc *v1.Service) { p.serviceChanged(svc, false) }

// OnServiceUpdate implements sources.ServiceHandler.
func (p *Proxier) OnServiceUpdate(svc *v1.Service) { p.serviceChanged(svc, false) }

// OnServiceDelete implements sources.ServiceHandler.
func (p *Proxier) OnServiceDelete(svc *v1.Service) { p.serviceChanged(svc, true) }

// OnServicesSynced implements sources.ServiceHandler.
func (p *Proxier) OnServicesSynced() {
	p.servicesSynced.Store(true)
	p.requestSync()
}

func (p *Proxier) serviceChanged(svc *v1.Service, deleted bool) {
	metrics.ServiceChangesTotal.Inc()
	if p.tracker.ServiceChanged(svc, deleted) {
		p.updatePendingGauges()
		p.requestSyncOnceListed()
	}
}

// OnEndpointSliceAdd implements sources.EndpointSliceHandler.
func (p *Proxier) OnEndpointSliceAdd(s *discovery.EndpointSlice) { p.sliceChanged(s, false) }

// OnEndpointSliceUpdate implements sources.EndpointSliceHandler.
func (p *Proxier) OnEndpointSliceUpdate(s *discovery.EndpointSlice) { p.sliceChanged(s, false) }

// OnEndpointSliceDelete implements sources.EndpointSliceHandler.
func (p *Proxier) OnEndpointSliceDelete(s *discovery.EndpointSlice) { p.sliceChanged(s, true) }

// OnEndpointSlicesSynced implements sources.EndpointSliceHandler.
func (p *Proxier) OnEndpointSlicesSynced() {
	p.slicesSynced.Store(true)
	p.requestSync()
}

func (p *Proxier) sliceChanged(s *discovery.EndpointSlice, deleted bool) {
	if p.tracker.EndpointSliceChanged(s, deleted) {
		metrics.EndpointChangesTotal.Inc()
		p.updatePendingGauges()
		p.requestSyncOnceListed()
	}
}

// requestSyncOnceListed requests a sync for a change, unless the initial lists are still
// arriving: a sync could not run yet, and the lists' end requests one anyway. Without
// this, every event of the initial lists made the runner attempt a sync (thousands at
// 10k Services, each logged), since attempts before the lists no longer wait out
// minSyncPeriod.
func (p *Proxier) requestSyncOnceListed() {
	if p.servicesSynced.Load() && p.slicesSynced.Load() {
		p.requestSync()
	}
}

func (p *Proxier) updatePendingGauges() {
	svcs, eps := p.tracker.Pending()
	metrics.ServiceChangesPending.Set(float64(svcs))
	metrics.EndpointChangesPending.Set(float64(eps))
}

// errNotListed ends a sync attempt made before Services and EndpointSlices were listed.
var errNotListed = errors.New("waiting for the initial list of Services and EndpointSlices from the API server")

// Sync programs the current state and tells the health tracker how the attempt went.
// Until both Services and EndpointSlices have been listed once it does nothing: a sync
// from half the picture would delete the rules of every service whose endpoints are not
// known yet. That is waiting, not failing: the lists' arrival requests the next sync.
func (p *Proxier) Sync(ctx context.Context) error {
	if p.cfg.Health != nil {
		p.cfg.Health.SyncStarted(p.cfg.Family)
	}
	err := p.sync(ctx)
	if p.cfg.Health != nil {
		p.cfg.Health.SyncEnded(p.cfg.Family, err)
	}
	if errors.Is(err, errNotListed) {
		klog.FromContext(ctx).V(2).Info("Not syncing until Services and EndpointSlices have been listed")
		// The lists' arrival requests the next sync, which must not wait out the
		// minimum sync period because of this attempt.
		return fmt.Errorf("%w: %w", runner.ErrNotReady, err)
	}
	return err
}

func (p *Proxier) sync(ctx context.Context) error {
	logger := klog.FromContext(ctx)
	if !p.servicesSynced.Load() || !p.slicesSynced.Load() {
		return errNotListed
	}
	start := p.cfg.Clock.Now()
	if p.forceFull.Swap(false) {
		p.needFullSync = true
	}
	// The hourly full sync is skipped in large clusters, where it costs seconds; partial
	// syncs keep them right, and any failure still forces a full one.
	full := p.needFullSync || (!p.largeCluster && start.Sub(p.lastFullSync) > FullSyncPeriod)
	defer func() {
		elapsed := p.cfg.Clock.Since(start).Seconds()
		metrics.SyncProxyRulesLatency.WithLabelValues(p.family).Observe(elapsed)
		if full {
			metrics.SyncFullProxyRulesLatency.WithLabelValues(p.family).Observe(elapsed)
		} else {
			metrics.SyncPartialProxyRulesLatency.WithLabelValues(p.family).Observe(elapsed)
		}
	}()

	laps := newStopwatch(p.cfg.Clock, start)
	snap, changes := p.tracker.Checkpoint()
	p.updatePendingGauges()
	// From here on the checkpointed changes are consumed: if anything fails, only a full
	// sync can be sure to write them.
	p.needFullSync = true
	p.udpCleanupPending = p.udpCleanupPending || changes.UDPEndpointsChanged
	for nn := range changes.Services {
		delete(p.rejected, nn) // changed: worth another try
	}

	if full {
		p.ensureCounters(ctx)
	}
	laps.lap("prepare")
	var localAddrs []netip.Addr
	if len(p.cfg.Rules.NodePortAddresses) > 0 {
		addrs, err := p.cfg.LocalAddrs()
		if err != nil {
			return fmt.Errorf("listing local addresses for node ports: %w", err)
		}
		localAddrs = addrs
	}
	node := p.cfg.Node
	node.Zone = *p.zone.Load()

	var rs *rules.Ruleset
	var req rules.Request
	for leftOut := 0; ; {
		req = rules.Request{
			Snapshot:   p.withoutRejected(snap),
			Changed:    changes.Services,
			Node:       node,
			LocalAddrs: localAddrs,
		}
		if full {
			existing, jumps, err := p.readKernel(ctx)
			if err != nil {
				return err
			}
			req.ExistingNATChains, req.Jumps = existing, jumps
			laps.lap("readKernel")
		} else {
			req.Previous, req.Partial = p.applied.Load(), true
		}
		rs = rules.Render(req, p.rulesOpts)
		laps.lap("render")
		err := p.restore(ctx, rs, full)
		laps.lap("restore")
		if err == nil {
			break
		}
		var perr *iptables.ParseError
		if !full && errors.As(err, &perr) {
			// A partial sync edits what the kernel held after the last one; when another
			// program removed or moved a rule it edits, the edit fails. That says nothing
			// about the Service on that line, and a full sync does not depend on what the
			// kernel held: retry in full at once.
			logger.Info("Partial sync failed on rules changed behind kproxy's back; retrying in full", "line", perr.Line)
			full = true
			p.ensureCounters(ctx)
			continue
		}
		// A full sync's payload stands on its own: a line the kernel rejects is wrong in
		// itself, and its Service is to blame.
		culprit, line, ok := blame(err, rs)
		if !full || !ok || leftOut == maxRejectedPerSync {
			return err
		}
		leftOut++
		// One Service's rules must not stop every other Service's: leave it out and
		// retry at once. The failed restore may have applied some batches, so the
		// retry is full.
		p.rejected[culprit] = line
		logger.Error(err, "The kernel rejected a Service's rules; programming the others without it until it changes",
			"service", culprit, "line", line)
		metrics.KernelRejectedServicesTotal.WithLabelValues(p.family).Inc()
		metrics.InvalidObjectsTotal.WithLabelValues(tracker.KindService, ReasonRejectedByKernel).Inc()
	}

	now := p.cfg.Clock.Now()
	p.needFullSync = false
	if full {
		p.lastFullSync = now
	}
	p.applied.Store(rs.State)
	p.largeCluster = rs.LargeCluster
	p.lastApplied.Store(&Applied{At: now, Full: full, Options: p.rulesOpts, Rejected: maps.Clone(p.rejected),
		Request: rules.Request{Snapshot: req.Snapshot, Node: req.Node, LocalAddrs: req.LocalAddrs}})

	metrics.IPTablesRulesTotal.WithLabelValues("filter", p.family).Set(float64(rs.FilterRules))
	metrics.IPTablesRulesTotal.WithLabelValues("nat", p.family).Set(float64(rs.NATRules))
	metrics.IPTablesRulesLastSync.WithLabelValues("filter", p.family).Set(float64(rs.FilterRules))
	metrics.IPTablesRulesLastSync.WithLabelValues("nat", p.family).Set(float64(rs.WrittenNATRules - rs.DeletedNATChains))
	for _, policy := range []string{"internal", "external"} {
		metrics.SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues(policy, p.family).Set(float64(rs.NoLocalEndpoints[policy]))
	}
	metrics.SyncProxyRulesLastTimestamp.WithLabelValues(p.family).Set(float64(now.Unix()))
	for _, t := range changes.TriggerTimes {
		metrics.NetworkProgrammingLatency.WithLabelValues(p.family).Observe(now.Sub(t).Seconds())
	}
	p.afterSync(ctx, snap)
	laps.lap("afterSync")
	if full && rs.PayloadBytes() > freeMemoryAbove {
		// A full sync of a large cluster allocates the whole payload a few times over;
		// hand that memory back now rather than keep it as idle heap until the next one
		// (an hour away): the node's memory is the workloads'. Off the sync's path: the
		// forced collection took 0.3-0.7 s at 10k services (daemon benchmark), and
		// neither this sync nor the other family's need wait for it.
		go debug.FreeOSMemory()
	}
	logger.V(2).Info("Synced rules", "full", full, "changedServices", len(changes.Services),
		"services", len(snap.Services), "natRules", rs.NATRules, "filterRules", rs.FilterRules,
		"deletedChains", rs.DeletedNATChains, "batches", len(rs.Batches), "largeCluster", rs.LargeCluster,
		"elapsed", p.cfg.Clock.Since(start), "phases", laps)
	return nil
}

// afterSync does what must follow a successful restore. Its failures do not fail the
// sync: the rules are right, and each step is retried on the next sync.
func (p *Proxier) afterSync(ctx context.Context, snap *model.Snapshot) {
	logger := klog.FromContext(ctx)
	if p.cfg.ServiceHealth != nil {
		if err := p.cfg.ServiceHealth.SyncServices(ctx, snap.HealthCheckNodePorts()); err != nil {
			logger.Error(err, "Some health check node ports could not be served")
		}
		p.cfg.ServiceHealth.SyncEndpoints(snap.LocalReadyEndpoints())
	}
	// Only now do the new rules send new UDP flows to live endpoints; deleting the old
	// entries earlier would let the next packet recreate them.
	if p.cfg.Conntrack != nil && p.udpCleanupPending {
		if err := p.cfg.Conntrack.CleanStaleEntries(ctx, snap); err != nil {
			logger.Error(err, "Removing stale UDP conntrack entries failed")
			return
		}
		p.udpCleanupPending = false
	}
}

// ensureCounters creates upstream's nfacct counters, as upstream does on every full sync,
// and lets the rules count into those that exist: a rule naming a missing counter would
// make the kernel reject the whole table.
func (p *Proxier) ensureCounters(ctx context.Context) {
	opts := p.cfg.Rules
	if p.cfg.NFAcct != nil {
		ensure := func(name string) bool {
			if err := p.cfg.NFAcct.Ensure(name); err != nil {
				klog.FromContext(ctx).V(2).Info("nfacct counter unavailable; its rules are written without accounting", "counter", name, "err", err)
				return false
			}
			return true
		}
		// Both are created whatever the options, as upstream does; the renderer uses
		// each only where its rule exists.
		opts.CountInvalidDropped = ensure(nfacct.InvalidDropped)
		opts.CountLocalhostNodePorts = ensure(nfacct.LocalhostNodePortsAccepted)
	}
	p.rulesOpts = opts
}
