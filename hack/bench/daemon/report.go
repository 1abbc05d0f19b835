package main

import (
	"cmp"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/kproxy-dev/kproxy/hack/bench/internal/measure"
	"github.com/kproxy-dev/kproxy/hack/bench/internal/synth"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// report is everything the benchmark measured; report.json holds it whole.
type report struct {
	Machine measure.Machine `json:"machine"`
	// Versions are what the two binaries say of themselves.
	Versions map[string]string `json:"versions"`
	Config   config            `json:"config"`
	Started  time.Time         `json:"started"`
	Finished time.Time         `json:"finished"`
	Sizes    []*sizeResult     `json:"sizes"`
}

// write prints the markdown to w and writes it, with the JSON, into dir.
func (r *report) write(w io.Writer, dir string) error {
	var md strings.Builder
	r.writeMarkdown(&md)
	if _, err := io.WriteString(w, md.String()); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "report.md"), []byte(md.String()), 0o644); err != nil {
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "report.json"), append(js, '\n'), 0o644)
}

func (r *report) writeMarkdown(w io.Writer) {
	m, cfg := r.Machine, r.Config
	fmt.Fprintf(w, "## Daemon benchmark: kproxy and upstream kube-proxy on a cluster node\n\n")
	var ipt []string
	for _, b := range []string{"legacy", "nft"} {
		if v := m.IPTables[b]; v != "" {
			ipt = append(ipt, v)
		}
	}
	fmt.Fprintf(w, "- machine: %d cores (%s), %.1f GiB RAM, kernel %s, %s\n", m.Cores, m.CPU, m.MemoryGiB, m.Kernel, strings.Join(ipt, " and "))
	fmt.Fprintf(w, "- kproxy: %s; upstream: %s\n", firstLine(r.Versions[proxyKProxy]), firstLine(r.Versions[proxyUpstream]))
	if cfg.Note != "" {
		fmt.Fprintf(w, "- note: %s\n", cfg.Note)
	}
	fmt.Fprintf(w, "- run: %s, took %s; %d partial sync(s) of each kind; churn %g changes/s for %s; timeout %s per wait; steady RSS read %s after the first sync\n",
		r.Started.Format("2006-01-02 15:04 MST"), r.Finished.Sub(r.Started).Round(time.Second), cfg.Reps, cfg.ChurnRate, cfg.ChurnDuration, cfg.Timeout, cfg.Settle)
	fmt.Fprintf(w, "- load average %s at start\n", m.LoadAtStart)
	for _, s := range r.Sizes {
		fmt.Fprintf(w, "- %s: objects loaded in %s, the size took %s in all", shapeName(s.Shape), measure.FmtSeconds(s.LoadSeconds), time.Duration(s.Seconds*float64(time.Second)).Round(time.Second))
		if s.Err != "" {
			fmt.Fprintf(w, "; error: %s", firstLine(s.Err))
		}
		fmt.Fprintln(w)
	}
	for _, b := range cfg.Backends {
		r.writeBackend(w, b)
	}
	r.writeGrowth(w)
	fmt.Fprintln(w)
	fmt.Fprintln(w, "- start: from the daemon's process start until nat KUBE-SERVICES jumps to the last service's chain, seen from outside (legacy: the nat table read from the kernel with IPT_SO_GET_ENTRIES; nft: the chains listed over netlink, then `iptables-nft -S KUBE-SERVICES`), polled every 100 ms or twice the look's own time.")
	fmt.Fprintln(w, "- full sync: the daemon's own `kubeproxy_sync_full_proxy_rules_duration_seconds` (sum of its first sync). bare restore: `iptables-<backend>-restore -w 5` of the `iptables-save` output the daemon left (all tables), into fresh namespaces, median. iptables binaries' CPU: utime and stime of the children the daemon waited for through its first sync (on an empty node, nearly all of it the restore), beside the median bare restore's.")
	fmt.Fprintln(w, "- peak RSS: VmHWM once the rules were visible; steady RSS: VmRSS after the settle time; CPU: utime+stime of the daemon and of the iptables binaries it waited for, from its start until settled.")
	fmt.Fprintln(w, "- partial syncs: once the daemon is quiet (no sync for 1.5 s plus twice its partial syncs' mean so far), one API change; the daemon's own `kubeproxy_sync_partial_proxy_rules_duration_seconds` for the sync that followed, and in brackets the time from the API write until the change was in the kernel (endpoint: its new KUBE-SEP chain; service: the jump from KUBE-SERVICES there or gone). Medians.")
	fmt.Fprintln(w, "- one-rule floor: a restore of one new chain with one rule (`--noflush`) into a namespace holding the ruleset: the least any partial sync can cost there.")
	fmt.Fprintln(w, "- churn: endpoint changes at a steady rate, each on the next service, each stamping the slice's `endpoints.kubernetes.io/last-change-trigger-time`; latency from that time until the new endpoint's KUBE-SEP chain is in the kernel (nearest-rank percentiles; in brackets the resolution, the median time between two looks at the node). Beside it the daemon's own `kubeproxy_network_programming_duration_seconds` over the churn: the bucket bounds holding p50/p90/p99, and the mean.")
	fmt.Fprintln(w, "- others' CPU: the machine's busy time less the daemon's and the benchmark's, over the run: mostly the control plane answering the daemon.")
	fmt.Fprintf(w, "- >%s: timed out; —: not measured.\n", measure.FmtSeconds(cfg.Timeout.Seconds()))
	var notes []string
	for _, s := range r.Sizes {
		for _, run := range s.Runs {
			if run.Err != "" {
				notes = append(notes, fmt.Sprintf("%s %s %s: %s", shapeName(s.Shape), run.Backend, run.Proxy, firstLine(run.Err)))
			}
			for _, k := range partialKinds {
				for _, p := range run.Partials[k] {
					if p.FullSyncs > 0 {
						notes = append(notes, fmt.Sprintf("%s %s %s: a full sync ran during a partial sync of kind %s", shapeName(s.Shape), run.Backend, run.Proxy, k))
					}
				}
			}
		}
	}
	for _, n := range slices.Compact(notes) {
		fmt.Fprintf(w, "- %s\n", n)
	}
}

// column is one column of a backend's table: a daemon at a size.
type column struct {
	shape synth.Shape
	run   *runResult
}

// writeBackend prints one backend's table: a row per measure, kproxy and upstream side by
// side for every size.
func (r *report) writeBackend(w io.Writer, backend iptables.Backend) {
	var cols []column
	for _, s := range r.Sizes {
		for _, run := range s.Runs {
			if run.Backend == backend {
				cols = append(cols, column{s.Shape, run})
			}
		}
	}
	if len(cols) == 0 {
		return
	}
	timeout := r.Config.Timeout
	fmt.Fprintf(w, "\n### %s\n\n", backend)
	header := []string{string(backend)}
	for _, c := range cols {
		header = append(header, fmt.Sprintf("%s %s", shapeName(c.shape), c.run.Proxy))
	}
	fmt.Fprintln(w, "| "+strings.Join(header, " | ")+" |")
	fmt.Fprintln(w, "|"+strings.Repeat("---|", len(header)))
	for _, row := range rows(timeout, r.Config.Settle) {
		cells := []string{row.name}
		for _, c := range cols {
			cells = append(cells, row.cell(c.run))
		}
		fmt.Fprintln(w, "| "+strings.Join(cells, " | ")+" |")
	}
}

type row struct {
	name string
	cell func(*runResult) string
}

func rows(timeout, settle time.Duration) []row {
	mib := func(kib int64) string {
		if kib <= 0 {
			return "—"
		}
		return measure.FmtBytes(float64(kib) * 1024)
	}
	partial := func(kind string) func(*runResult) string {
		return func(r *runResult) string {
			var syncs, kernel []measure.Timing
			for _, p := range r.Partials[kind] {
				kernel = append(kernel, p.Kernel)
				if p.Sync.Count > 0 {
					syncs = append(syncs, measure.Timing{Seconds: p.Sync.mean()})
				}
			}
			if len(kernel) == 0 {
				return "—"
			}
			return fmt.Sprintf("%s (%s)", measure.FmtMedian(syncs, timeout), measure.FmtMedian(kernel, timeout))
		}
	}
	return []row{
		{"process start → last service in the kernel", func(r *runResult) string { return measure.FmtTiming(r.Start, timeout) }},
		{"full sync (own metric)", func(r *runResult) string { return fullSync(r, timeout) }},
		{"bare restore of the ruleset left", func(r *runResult) string { return measure.FmtMedian(r.Bare, timeout) }},
		{"full sync / bare", ratio},
		{"iptables binaries' CPU, user + sys: first sync / bare restore", restoreCPU},
		{"ruleset left (iptables-save)", func(r *runResult) string {
			if r.RulesetBytes == 0 {
				return "—"
			}
			return fmt.Sprintf("%s, %s lines", measure.FmtBytes(float64(r.RulesetBytes)), measure.FmtCount(float64(r.RulesetLines)))
		}},
		{"peak RSS (VmHWM) after the first sync", func(r *runResult) string { return mib(r.AfterSync.PeakRSSKiB) }},
		{fmt.Sprintf("steady RSS (VmRSS %s later)", settle), func(r *runResult) string { return mib(r.Settled.RSSKiB) }},
		{"CPU until settled: daemon + iptables binaries", func(r *runResult) string {
			if r.Settled.RSSKiB == 0 {
				return "—"
			}
			return fmt.Sprintf("%s + %s", measure.FmtSeconds(r.Settled.CPU.Self), measure.FmtSeconds(r.Settled.CPU.Children))
		}},
		{"1 endpoint changed: own metric (in the kernel)", partial("endpoint")},
		{"1 service added: own metric (in the kernel)", partial("added")},
		{"1 service removed: own metric (in the kernel)", partial("removed")},
		{"one-rule restore floor", func(r *runResult) string { return measure.FmtMedian(r.Floor, timeout) }},
		{"churn: changes seen in the kernel / written", func(r *runResult) string {
			c := r.Churn
			if c == nil {
				return "—"
			}
			return fmt.Sprintf("%d / %d in %s", len(c.latencies()), len(c.Changes), measure.FmtSeconds(c.Seconds))
		}},
		{"churn latency in the kernel p50 / p90 / p99 (resolution)", func(r *runResult) string {
			c := r.Churn
			if c == nil || len(c.latencies()) == 0 {
				return "—"
			}
			lat := c.latencies()
			s := fmt.Sprintf("%s / %s / %s (%s)", measure.FmtSeconds(measure.Quantile(lat, 0.5)), measure.FmtSeconds(measure.Quantile(lat, 0.9)),
				measure.FmtSeconds(measure.Quantile(lat, 0.99)), measure.FmtSeconds(c.LookInterval))
			if n := c.unseen(); n > 0 {
				s += fmt.Sprintf(", %d not seen within %s", n, measure.FmtSeconds(timeout.Seconds()))
			}
			return s
		}},
		{"churn latency, own histogram p50 / p90 / p99 (mean)", func(r *runResult) string {
			c := r.Churn
			if c == nil || c.Programming.Count == 0 {
				return "—"
			}
			h := c.Programming
			return fmt.Sprintf("≤%s / ≤%s / ≤%s (%s)", bound(h.quantile(0.5)), bound(h.quantile(0.9)), bound(h.quantile(0.99)), measure.FmtSeconds(h.mean()))
		}},
		{"churn: syncs, daemon + iptables CPU", func(r *runResult) string {
			c := r.Churn
			if c == nil {
				return "—"
			}
			return fmt.Sprintf("%d, %s + %s", c.Syncs, measure.FmtSeconds(c.CPU.Self), measure.FmtSeconds(c.CPU.Children))
		}},
		{"peak RSS (VmHWM) at the end", func(r *runResult) string { return mib(r.End.PeakRSSKiB) }},
		{"others' CPU during the run", func(r *runResult) string {
			if r.Load.Busy == 0 {
				return "—"
			}
			return fmt.Sprintf("%.0f%%", 100*r.Load.Others)
		}},
	}
}

func fullSync(r *runResult, timeout time.Duration) string {
	switch {
	case r.Start.TimedOut:
		return ">" + measure.FmtSeconds(timeout.Seconds())
	case r.FullSync.Count == 0:
		return "—"
	case r.FullSync.Count == 1:
		return measure.FmtSeconds(r.FullSync.Sum)
	}
	// A failed first sync is retried in full: the mean hides which was which.
	return fmt.Sprintf("%s (mean of %d)", measure.FmtSeconds(r.FullSync.mean()), r.FullSync.Count)
}

// restoreCPU sets the CPU the daemon's iptables binaries took through its first sync
// (its restore, and on an empty node little else) beside the bare restore's (the median
// run's): the same work, so a first sync that took longer than the bare restore for as
// much CPU waited for a core, and one that took more CPU did the work slower.
func restoreCPU(r *runResult) string {
	c := r.FirstSync.CPU
	if c.Children == 0 || len(r.BareCPU) == 0 {
		return "—"
	}
	bare := slices.Clone(r.BareCPU)
	slices.SortFunc(bare, func(a, b measure.CPUTimes) int {
		return cmp.Compare(a.BinariesUser+a.BinariesSys, b.BinariesUser+b.BinariesSys)
	})
	m := bare[len(bare)/2]
	return fmt.Sprintf("%s + %s / %s + %s", measure.FmtSeconds(c.Children-c.ChildrenSys), measure.FmtSeconds(c.ChildrenSys),
		measure.FmtSeconds(m.BinariesUser), measure.FmtSeconds(m.BinariesSys))
}

func ratio(r *runResult) string {
	bare := measure.MedianOf(r.Bare)
	if r.FullSync.Count == 0 || math.IsNaN(bare) || math.IsInf(bare, 0) || bare <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f", r.FullSync.mean()/bare)
}

// bound shows a histogram bucket's upper bound.
func bound(v float64) string {
	if math.IsInf(v, 1) {
		return "+Inf"
	}
	return measure.FmtSeconds(v)
}

// growth is how one cost grows with the number of services.
type growth struct {
	name string
	cost func(*runResult) float64
}

var growths = []growth{
	{"process start → rules", func(r *runResult) float64 { return okSeconds(r.Start) }},
	{"full sync", func(r *runResult) float64 {
		if r.FullSync.Count == 0 {
			return math.NaN()
		}
		return r.FullSync.mean()
	}},
	{"bare restore", func(r *runResult) float64 { return measure.MedianOf(r.Bare) }},
	{"peak RSS", func(r *runResult) float64 { return float64(r.AfterSync.PeakRSSKiB) }},
	{"steady RSS", func(r *runResult) float64 { return float64(r.Settled.RSSKiB) }},
	{"CPU until settled", func(r *runResult) float64 { return r.Settled.CPU.Self + r.Settled.CPU.Children }},
	{"1 endpoint changed (own metric)", func(r *runResult) float64 {
		var v []float64
		for _, p := range r.Partials["endpoint"] {
			if p.Sync.Count > 0 {
				v = append(v, p.Sync.mean())
			}
		}
		if len(v) == 0 {
			return math.NaN()
		}
		return measure.Median(v)
	}},
	{"one-rule floor", func(r *runResult) float64 { return measure.MedianOf(r.Floor) }},
	{"churn p99 in the kernel", func(r *runResult) float64 {
		if r.Churn == nil || len(r.Churn.latencies()) == 0 {
			return math.NaN()
		}
		return measure.Quantile(r.Churn.latencies(), 0.99)
	}},
}

func okSeconds(m measure.Timing) float64 {
	if !m.OK() {
		return math.NaN()
	}
	return m.Seconds
}

// writeGrowth prints, for sizes with the same endpoints per service, the exponent k of
// cost ∝ services^k between consecutive sizes: 1 is linear.
func (r *report) writeGrowth(w io.Writer) {
	type pair struct{ a, b *sizeResult }
	var pairs []pair
	for i, a := range r.Sizes {
		for _, b := range r.Sizes[i+1:] {
			if a.Shape.Endpoints == b.Shape.Endpoints && a.Shape.Services != b.Shape.Services {
				pairs = append(pairs, pair{a, b})
				break
			}
		}
	}
	if len(pairs) == 0 {
		return
	}
	fmt.Fprintf(w, "\n### How the costs grow\n\nk in cost ∝ services^k between two sizes (1: linear, 0: flat).\n\n")
	header := []string{"cost"}
	type col struct {
		p       pair
		backend iptables.Backend
		proxy   string
	}
	var cols []col
	for _, p := range pairs {
		for _, b := range r.Config.Backends {
			for _, proxy := range r.Config.Proxies {
				cols = append(cols, col{p, b, proxy})
				header = append(header, fmt.Sprintf("%s→%s %s %s", shortShape(p.a.Shape), shortShape(p.b.Shape), b, proxy))
			}
		}
	}
	fmt.Fprintln(w, "| "+strings.Join(header, " | ")+" |")
	fmt.Fprintln(w, "|"+strings.Repeat("---|", len(header)))
	find := func(s *sizeResult, b iptables.Backend, proxy string) *runResult {
		for _, run := range s.Runs {
			if run.Backend == b && run.Proxy == proxy {
				return run
			}
		}
		return nil
	}
	for _, g := range growths {
		cells := []string{g.name}
		for _, c := range cols {
			ra, rb := find(c.p.a, c.backend, c.proxy), find(c.p.b, c.backend, c.proxy)
			cell := "—"
			if ra != nil && rb != nil {
				ca, cb := g.cost(ra), g.cost(rb)
				if ca > 0 && cb > 0 && !math.IsInf(ca, 0) && !math.IsInf(cb, 0) {
					k := math.Log(cb/ca) / math.Log(float64(c.p.b.Shape.Services)/float64(c.p.a.Shape.Services))
					cell = fmt.Sprintf("%.2f", k)
				}
			}
			cells = append(cells, cell)
		}
		fmt.Fprintln(w, "| "+strings.Join(cells, " | ")+" |")
	}
}

func shapeName(s synth.Shape) string {
	return fmt.Sprintf("%s × %s", measure.FmtInt(s.Services), measure.FmtInt(s.Endpoints))
}

// shortShape is 10k×5.
func shortShape(s synth.Shape) string {
	n := fmt.Sprint(s.Services)
	if s.Services%1000 == 0 {
		n = fmt.Sprintf("%dk", s.Services/1000)
	}
	return fmt.Sprintf("%s×%d", n, s.Endpoints)
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	if len(line) > 300 {
		line = line[:300] + "..."
	}
	return line
}

// summary is the run's one-line progress report.
func (r *runResult) summary(timeout time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "start %s, full sync %s, bare %s, peak RSS %d MiB, steady RSS %d MiB",
		measure.FmtTiming(r.Start, timeout), fullSync(r, timeout), measure.FmtMedian(r.Bare, timeout),
		r.AfterSync.PeakRSSKiB/1024, r.Settled.RSSKiB/1024)
	for _, row := range rows(timeout, 0)[8:11] {
		fmt.Fprintf(&b, "; %s %s", strings.SplitN(row.name, ":", 2)[0], row.cell(r))
	}
	if c := r.Churn; c != nil && len(c.latencies()) > 0 {
		lat := c.latencies()
		fmt.Fprintf(&b, "; churn p50/p99 %s/%s", measure.FmtSeconds(measure.Quantile(lat, 0.5)), measure.FmtSeconds(measure.Quantile(lat, 0.99)))
	}
	if r.Err != "" {
		fmt.Fprintf(&b, "; error: %s", firstLine(r.Err))
	}
	return b.String()
}
