package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/hack/bench/internal/measure"
	"github.com/kproxy-dev/kproxy/hack/bench/internal/synth"
	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/nfacct"
	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

// minSyncPeriod is deploy/'s iptables.minSyncPeriod: a daemon syncs at most once per
// period, so a partial sync measured right after another would first wait it out.
const minSyncPeriod = time.Second

// Polling intervals: how often the node is looked at while a daemon starts, and at least
// between looks that found nothing new while a change is awaited.
const (
	startPoll = 100 * time.Millisecond
	churnPoll = 10 * time.Millisecond
)

// pause is how long to wait after a look that took spent and found nothing new: at least
// twice the look itself. On legacy a look copies the whole nat table out of the kernel
// (70-100 ms for the 59 MB of 10k x 5) under the kernel's x_tables mutex, which the
// daemon's iptables-restore also takes to read and to replace the table; on nft it lists
// 60,000 chains (60 ms). Looking back to back would take most of a core from the daemon
// and hold up its restores; this way the looks take a third of a core at most.
func pause(interval, spent time.Duration) time.Duration {
	return max(interval, 2*spent)
}

// run measures every size on a fresh cluster. What was measured is returned even when
// something failed, with an error saying what. Unlike hack/bench it does not become a
// subreaper: the cluster's processes, which hack/cluster-up.sh starts in sessions of
// their own, would be left to it as zombies; a daemon's iptables binaries die with its
// process group.
func run(ctx context.Context, cfg config, progress io.Writer) (*report, error) {
	if err := preflight(cfg); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return nil, err
	}
	nss := measure.NewNamespaces(fmt.Sprintf("kbd-%d", os.Getpid()))
	defer func() {
		if err := nss.Cleanup(); err != nil {
			fmt.Fprintf(progress, "bench-daemon: cleanup: %v\n", err)
		}
	}()
	rep := &report{
		Config: cfg, Machine: measure.DescribeMachine(), Started: time.Now(),
		Versions: map[string]string{proxyKProxy: version(cfg.KProxy), proxyUpstream: version(cfg.Upstream)},
	}
	var errs []error
	for _, shape := range cfg.Shapes {
		s, err := runSize(ctx, cfg, shape, nss, progress)
		rep.Sizes = append(rep.Sizes, s)
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	rep.Finished = time.Now()
	return rep, errors.Join(errs...)
}

// preflight checks what every size needs, so that a missing binary is one clear error.
func preflight(cfg config) error {
	if os.Geteuid() != 0 {
		return errors.New("the daemon benchmark starts a cluster in network namespaces and must run as root")
	}
	for _, bin := range []string{cfg.KProxy, cfg.Upstream} {
		if _, err := os.Stat(bin); err != nil {
			return fmt.Errorf("%w (hack/build.sh builds kproxy, hack/build-tools.sh upstream kube-proxy)", err)
		}
	}
	for _, b := range cfg.Backends {
		for _, tool := range []string{"", "restore", "save"} {
			if _, err := exec.LookPath(iptables.BinaryName(v1.IPv4Protocol, b, tool)); err != nil {
				return fmt.Errorf("backend %s: %w", b, err)
			}
		}
	}
	return nil
}

// sizeResult is everything measured at one size.
type sizeResult struct {
	Shape synth.Shape `json:"shape"`
	// LoadSeconds is how long writing the objects to the API server took.
	LoadSeconds float64      `json:"loadSeconds"`
	Runs        []*runResult `json:"runs"`
	// Seconds is the wall time of the whole size, cluster start and teardown included.
	Seconds float64 `json:"seconds"`
	Err     string  `json:"err,omitempty"`
}

// runSize starts a cluster, loads the shape and measures each backend and daemon in turn.
func runSize(ctx context.Context, cfg config, shape synth.Shape, nss *measure.Namespaces, progress io.Writer) (s *sizeResult, err error) {
	s = &sizeResult{Shape: shape}
	start := time.Now()
	logf := func(format string, args ...any) {
		fmt.Fprintf(progress, "[%s] bench-daemon %s: %s\n", time.Now().Format("15:04:05"), shape, fmt.Sprintf(format, args...))
	}
	defer func() {
		s.Seconds = time.Since(start).Seconds()
		if err != nil {
			err = fmt.Errorf("size %s: %w", shape, err)
			s.Err = err.Error()
		}
		logf("done in %s", time.Since(start).Round(time.Second))
	}()

	logf("starting cluster %s", cfg.Cluster)
	c, err := clusterUp(ctx, cfg)
	if err != nil {
		return s, err
	}
	defer func() {
		if derr := clusterDown(cfg); derr != nil {
			err = errors.Join(err, derr)
		}
	}()
	objs, err := newObjects(c, shape)
	if err != nil {
		return s, err
	}
	logf("loading %d services and their endpoint slices", shape.Services)
	t := time.Now()
	if err := objs.load(ctx); err != nil {
		return s, err
	}
	s.LoadSeconds = time.Since(t).Seconds()
	logf("loaded in %s", time.Since(t).Round(time.Millisecond))

	dir := filepath.Join(cfg.Out, shape.String())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return s, err
	}
	nodeInfo := c.Nodes[0]
	// The config file hack/cluster-up.sh wrote for kproxy on this node: deploy/'s, with a
	// kubeconfig for user system:kube-proxy. Both daemons read it; a copy goes with the
	// report.
	confPath := filepath.Join(c.StateDir, nodeInfo.Name, "config.conf")
	conf, err := os.ReadFile(confPath)
	if err != nil {
		return s, err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.conf"), conf, 0o644); err != nil {
		return s, err
	}
	var errs []error
	for _, backend := range cfg.Backends {
		n, err := newNode(nodeInfo.NetNS, backend, filepath.Join(c.StateDir, nodeInfo.Name, "xtables.lock"))
		if err != nil {
			return s, err
		}
		for _, proxy := range cfg.Proxies {
			b := &bench{cfg: cfg, cluster: c, objs: objs, node: n, nodeName: nodeInfo.Name, confPath: confPath, dir: dir, nss: nss, logf: logf}
			logf("%s on %s", proxy, backend)
			r := b.measure(ctx, proxy, backend)
			s.Runs = append(s.Runs, r)
			logf("%s on %s: %s", proxy, backend, r.summary(cfg.Timeout))
			if r.Err != "" {
				errs = append(errs, fmt.Errorf("%s on %s: %s", proxy, backend, r.Err))
			}
			if ctx.Err() != nil {
				n.close()
				return s, errors.Join(append(errs, ctx.Err())...)
			}
			// The next daemon starts from the cluster this one found.
			if err := objs.restore(ctx); err != nil {
				n.close()
				return s, errors.Join(append(errs, err)...)
			}
		}
		n.close()
	}
	return s, errors.Join(errs...)
}

// bench measures one daemon on one backend.
type bench struct {
	cfg      config
	cluster  *framework.Cluster
	objs     *objects
	node     *node
	nodeName string
	confPath string
	dir      string
	nss      *measure.Namespaces
	logf     func(string, ...any)
}

// runResult is everything measured of one daemon on one backend at one size.
type runResult struct {
	Proxy   string           `json:"proxy"`
	Backend iptables.Backend `json:"backend"`
	// Start is from the process's start until the last service's dispatch rule was in
	// the kernel.
	Start measure.Timing `json:"start"`
	// FullSync is the daemon's own full-sync histogram once the rules were visible.
	FullSync histogram `json:"fullSync"`
	// AfterSync is the daemon's usage once the rules were visible (its peak through the
	// first sync), FirstSync once it had observed that sync (so its children's CPU holds
	// the first sync's iptables binaries, reaped by then), Settled after cfg.Settle more,
	// End just before it was stopped.
	AfterSync usage `json:"afterSync"`
	FirstSync usage `json:"firstSync"`
	Settled   usage `json:"settled"`
	End       usage `json:"end"`
	// RulesetBytes and RulesetLines are the size of iptables-save's output once settled.
	RulesetBytes int `json:"rulesetBytes"`
	RulesetLines int `json:"rulesetLines"`
	// Bare are restores of that output into fresh namespaces, BareCPU their CPU times;
	// Floor restores of one new chain with one rule into the first of them.
	Bare    []measure.Timing   `json:"bare"`
	BareCPU []measure.CPUTimes `json:"bareCPU"`
	Floor   []measure.Timing   `json:"floor"`
	// Partials by kind (partialKinds).
	Partials map[string][]partialSample `json:"partials"`
	Churn    *churnResult               `json:"churn,omitempty"`
	// Load is how busy the machine was during the run; its Others counts the control
	// plane too, everything but the daemon and the benchmark.
	Load measure.Load `json:"load"`
	Err  string       `json:"err,omitempty"`
}

// The kinds of partial sync, in table order.
var partialKinds = []string{"endpoint", "added", "removed"}

// partialSample is one partial sync.
type partialSample struct {
	// Kernel is from the API write until the change was in the kernel; Write is how long
	// the API server took to answer the write.
	Kernel measure.Timing `json:"kernel"`
	Write  float64        `json:"write"`
	// Sync is the daemon's own partial-sync histogram over the change: normally one
	// sync. FullSyncs counts full syncs in the same window, which make the sample moot.
	Sync      histogram `json:"sync"`
	FullSyncs uint64    `json:"fullSyncs"`
	Err       string    `json:"err,omitempty"`
}

func (b *bench) measure(ctx context.Context, proxy string, backend iptables.Backend) *runResult {
	r := &runResult{Proxy: proxy, Backend: backend, Partials: map[string][]partialSample{}}
	if err := b.node.flush(ctx); err != nil {
		r.Err = err.Error()
		return r
	}
	cpu0 := measure.ReadCPU()
	p, err := startProxy(b.cfg, proxy, b.node.netns, b.nodeName, backend, b.confPath, b.node.lock, b.dir)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	var errs []error
	defer func() {
		if u, err := p.usage(); err == nil {
			r.End = u
		}
		p.stop()
		// Waited for, the daemon counts among this process's children: ours, not others'.
		r.Load = measure.ReadCPU().Since(cpu0, 0)
		if len(errs) > 0 {
			r.Err = errors.Join(errs...).Error()
		}
	}()

	// 1. Start to rules visible, and the full sync as the daemon saw it.
	lastService := serviceChain(b.objs.shape.Services - 1)
	visible, err := b.waitFor(ctx, p, startPoll, func(ctx context.Context) (bool, error) {
		return b.node.serviceProgrammed(ctx, lastService)
	})
	r.Start = sinceTiming(p.started, visible, err)
	if !r.Start.OK() {
		if !r.Start.TimedOut {
			errs = append(errs, fmt.Errorf("waiting for the first sync: %w", err))
		}
		if u, err := p.usage(); err == nil {
			r.AfterSync = u
		}
		return r
	}
	if u, err := p.usage(); err != nil {
		errs = append(errs, err)
	} else {
		r.AfterSync = u
	}
	// The daemon observes the sync right after its restore returns: wait for that.
	sc, err := b.scrapeUntil(ctx, func(s scrape) bool { return s[metricFullSync].Count > 0 })
	if err != nil {
		errs = append(errs, fmt.Errorf("reading the full sync: %w", err))
	}
	r.FullSync = sc[metricFullSync]
	if r.FirstSync, err = p.usage(); err != nil {
		errs = append(errs, err)
	}

	// 2. Settle, read the steady state and keep the ruleset for the bare restores.
	if err := sleep(ctx, b.cfg.Settle); err != nil {
		return r
	}
	if r.Settled, err = p.usage(); err != nil {
		errs = append(errs, err)
		return r
	}
	saved, err := b.node.save(ctx)
	if err != nil {
		errs = append(errs, err)
		return r
	}
	r.RulesetBytes, r.RulesetLines = len(saved), bytes.Count(saved, []byte{'\n'})
	rulesetPath := filepath.Join(b.dir, fmt.Sprintf("ruleset-%s-%s.txt", proxy, backend))
	if err := os.WriteFile(rulesetPath, saved, 0o644); err != nil {
		errs = append(errs, err)
		return r
	}
	saved = nil
	// Kept when a bare restore failed, to see why.
	defer func() {
		if measure.FmtMedian(r.Bare, b.cfg.Timeout) != "error" {
			os.Remove(rulesetPath)
		}
	}()

	// 3. Partial syncs, one change at a time. A service is added as its slices first, then
	// the service (the change measured), so that one sync programs it; it is removed as
	// the service (measured), then its slices.
	for k := range b.cfg.Reps {
		i := b.objs.shape.Services - 1 - k
		r.Partials["endpoint"] = append(r.Partials["endpoint"], b.partial(ctx, p, change{
			apply: func(ctx context.Context) (func(context.Context) (bool, error), error) {
				ch, err := b.objs.changeEndpoint(ctx, i)
				return b.hasChain(ch.Chain), err
			},
		}))
		added := b.objs.nextService()
		r.Partials["added"] = append(r.Partials["added"], b.partial(ctx, p, change{
			prepare: func(ctx context.Context) error { return b.objs.createSlices(ctx, added) },
			apply: func(ctx context.Context) (func(context.Context) (bool, error), error) {
				return b.programmed(added.chain, true), b.objs.createService(ctx, added)
			},
		}))
		r.Partials["removed"] = append(r.Partials["removed"], b.partial(ctx, p, change{
			apply: func(ctx context.Context) (func(context.Context) (bool, error), error) {
				return b.programmed(added.chain, false), b.objs.deleteService(ctx, added)
			},
			cleanup: func(ctx context.Context) error { return b.objs.deleteSlices(ctx, added) },
		}))
	}
	for _, k := range partialKinds {
		for _, s := range r.Partials[k] {
			if s.Err != "" {
				errs = append(errs, fmt.Errorf("partial sync (%s): %s", k, s.Err))
			}
		}
	}

	// 4. Network programming latency under churn.
	if b.cfg.ChurnRate > 0 && b.cfg.ChurnDuration > 0 {
		r.Churn = b.churn(ctx, p)
		if r.Churn.Err != "" {
			errs = append(errs, fmt.Errorf("churn: %s", r.Churn.Err))
		}
	}
	if err := p.alive(); err != nil {
		errs = append(errs, err)
	}
	if u, err := p.usage(); err == nil {
		r.End = u
	}

	// 5. With the daemon stopped, the bare restores of the ruleset it left, and the
	// one-rule floor in the first namespace they fill.
	p.stop()
	bound := measure.Bound{Timeout: b.cfg.Timeout}
	for run := range b.cfg.BareRuns {
		err := b.nss.With(func(ns string) error {
			f, err := os.Open(rulesetPath)
			if err != nil {
				return err
			}
			defer f.Close()
			// No --noflush: in a fresh namespace the result is the same, and with it
			// iptables-nft-restore turns every chain declaration into a flush of that
			// chain in one transaction, which is quadratic (62 s instead of 5.5 s for
			// 10k x 5 on this machine).
			// The daemons create upstream's nfacct counters before their rules count
			// into them; a fresh namespace needs them too (not timed).
			if err := netnstest.Do(ns, ensureCounters); err != nil {
				return err
			}
			m, cpu := measure.Restore(ctx, ns, backend, f, bound)
			r.Bare = append(r.Bare, m)
			r.BareCPU = append(r.BareCPU, cpu)
			if run == 0 && m.OK() {
				r.Floor = measure.RestoreFloor(ctx, ns, backend, max(3, b.cfg.Reps), bound)
			}
			return nil
		})
		if err != nil {
			errs = append(errs, err)
		}
	}
	for _, m := range append(r.Bare, r.Floor...) {
		if m.Err != "" {
			errs = append(errs, fmt.Errorf("bare restore: %s", m.Err))
		}
	}
	return r
}

// ensureCounters creates, in the calling thread's namespace, the nfacct counters that
// the rules of both daemons count into.
func ensureCounters() error {
	acct := nfacct.New()
	return errors.Join(acct.Ensure(nfacct.InvalidDropped), acct.Ensure(nfacct.LocalhostNodePortsAccepted))
}

// hasChain is a check that chain exists.
func (b *bench) hasChain(chain string) func(context.Context) (bool, error) {
	return func(ctx context.Context) (bool, error) {
		found, err := b.node.present(ctx, []string{chain})
		return found[chain], err
	}
}

// programmed is a check that the service of chain is reachable (want true) or not.
func (b *bench) programmed(chain string, want bool) func(context.Context) (bool, error) {
	return func(ctx context.Context) (bool, error) {
		ok, err := b.node.serviceProgrammed(ctx, chain)
		return ok == want, err
	}
}

// change is one change a partial sync programs: prepare (not measured), apply, which
// returns the check that tells when the change is in the kernel, and cleanup (not
// measured either).
type change struct {
	prepare func(context.Context) error
	apply   func(context.Context) (func(context.Context) (bool, error), error)
	cleanup func(context.Context) error
}

// partial makes one change and measures the sync that programs it: once the daemon is
// quiet (so that it syncs as soon as it sees the change, with nothing else to do), the
// time from the API write until the check passes, and the daemon's own partial-sync
// histogram over that window.
func (b *bench) partial(ctx context.Context, p *proxyProcess, c change) (s partialSample) {
	fail := func(err error) partialSample {
		s.Err = err.Error()
		return s
	}
	if c.prepare != nil {
		if err := c.prepare(ctx); err != nil {
			return fail(err)
		}
	}
	before, err := b.quiet(ctx)
	if err != nil {
		return fail(err)
	}
	start := time.Now()
	check, err := c.apply(ctx)
	s.Write = time.Since(start).Seconds()
	if err != nil {
		return fail(err)
	}
	seen, err := b.waitFor(ctx, p, churnPoll, check)
	s.Kernel = sinceTiming(start, seen, err)
	if !s.Kernel.OK() {
		s.Err = s.Kernel.Err
		return s
	}
	synced := func(sc scrape) bool {
		return sc[metricPartialSync].Count+sc[metricFullSync].Count > before[metricPartialSync].Count+before[metricFullSync].Count
	}
	after, err := b.scrapeUntil(ctx, synced)
	if err != nil {
		return fail(err)
	}
	s.Sync = after[metricPartialSync].since(before[metricPartialSync])
	s.FullSyncs = after[metricFullSync].Count - before[metricFullSync].Count
	if c.cleanup != nil {
		if err := c.cleanup(ctx); err != nil {
			return fail(err)
		}
	}
	return s
}

// quiet waits until whatever an earlier change asked for is synced and the next sync may
// start at once, and returns the last scrape. From outside, that is: the sync count has
// not moved for minSyncPeriod, half a second, and the longest a sync of this daemon may
// take (twice its partial syncs' mean so far, or its full sync's duration before any),
// because a sync in flight shows in the count only when it ends, and the one after it
// waits minSyncPeriod more.
func (b *bench) quiet(ctx context.Context) (scrape, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	var last uint64
	since := time.Now()
	for {
		s, err := b.scrape(ctx)
		if err != nil {
			return nil, err
		}
		if n := s[metricSync].Count; n != last {
			last, since = n, time.Now()
		}
		longest := s[metricFullSync].mean()
		if partial := s[metricPartialSync]; partial.Count > 0 {
			longest = 2 * partial.mean()
		}
		window := minSyncPeriod + 500*time.Millisecond
		if !math.IsNaN(longest) {
			window += time.Duration(longest * float64(time.Second))
		}
		if time.Since(since) >= window {
			return s, nil
		}
		if err := sleep(ctx, 200*time.Millisecond); err != nil {
			return nil, fmt.Errorf("waiting for the daemon to be quiet: %w", err)
		}
	}
}

// waitFor runs check every interval until it passes, the daemon
// exits or cfg.Timeout runs out, and returns when it passed.
func (b *bench) waitFor(ctx context.Context, p *proxyProcess, interval time.Duration, check func(context.Context) (bool, error)) (time.Time, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.Timeout)
	defer cancel()
	for {
		if err := p.alive(); err != nil {
			return time.Time{}, err
		}
		start := time.Now()
		ok, err := check(ctx)
		if ok {
			return time.Now(), nil
		}
		if err != nil && ctx.Err() == nil {
			return time.Time{}, err
		}
		if err := sleep(ctx, pause(interval, time.Since(start))); err != nil {
			return time.Time{}, err
		}
	}
}

// sinceTiming turns a waitFor result into a timing from start.
func sinceTiming(start, seen time.Time, err error) measure.Timing {
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return measure.Timing{TimedOut: true}
	case err != nil:
		return measure.Timing{Err: err.Error()}
	}
	return measure.Timing{Seconds: seen.Sub(start).Seconds()}
}

// scrape reads the daemon's histograms.
func (b *bench) scrape(ctx context.Context) (scrape, error) {
	text, err := b.cluster.Metrics(ctx, b.nodeName)
	if err != nil {
		return nil, err
	}
	return parseScrape(text)
}

// scrapeUntil scrapes until done holds, for at most 30 s: a daemon observes its metrics
// right after the restore whose result the benchmark saw.
func (b *bench) scrapeUntil(ctx context.Context, done func(scrape) bool) (scrape, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		s, err := b.scrape(ctx)
		if err == nil && done(s) {
			return s, nil
		}
		if time.Now().After(deadline) {
			if err == nil {
				err = errors.New("the daemon's metrics did not show the sync within 30 s")
			}
			return s, err
		}
		if err := sleep(ctx, 50*time.Millisecond); err != nil {
			return s, err
		}
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
