package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kproxy-dev/kproxy/hack/bench/internal/measure"
	"github.com/kproxy-dev/kproxy/hack/bench/internal/synth"
)

// report is everything a benchmark measured; -json writes it whole, the table shows
// medians.
type report struct {
	Machine  measure.Machine `json:"machine"`
	Config   config          `json:"config"`
	Started  time.Time       `json:"started"`
	Finished time.Time       `json:"finished"`
	// Load is how busy the machine was over the whole benchmark.
	Load  measure.Load `json:"load"`
	Cells []*cell      `json:"cells"`
}

// writeMarkdown prints the report: a header naming the machine, one table of medians,
// and notes.
func (r *report) writeMarkdown(w io.Writer) {
	m, cfg := r.Machine, r.Config
	fmt.Fprintf(w, "## kproxy sync benchmark\n\n")
	var ipt []string
	for _, b := range []string{"legacy", "nft"} {
		if v := m.IPTables[b]; v != "" {
			ipt = append(ipt, v)
		}
	}
	fmt.Fprintf(w, "- machine: %d cores (%s), %.1f GiB RAM, kernel %s, %s, %s\n",
		m.Cores, m.CPU, m.MemoryGiB, m.Kernel, strings.Join(ipt, " and "), m.Go)
	rev := m.Revision
	if rev == "" {
		rev = "unknown (binary without VCS stamp)"
	}
	fmt.Fprintf(w, "- kproxy: %s\n", rev)
	if cfg.Note != "" {
		fmt.Fprintf(w, "- note: %s\n", cfg.Note)
	}
	fmt.Fprintf(w, "- run: %s, took %s; medians of %d run(s), partial syncs %d run(s) × %d change(s), %d renders per run; timeout %s per measurement; nft batches of at most %d chains\n",
		r.Started.Format("2006-01-02 15:04 MST"), r.Finished.Sub(r.Started).Round(time.Second), cfg.Runs, cfg.Runs, cfg.Reps, cfg.Renders, measure.FmtSeconds(cfg.Timeout.Seconds()), cfg.NFTMaxChainsPerBatch)
	fmt.Fprintf(w, "- load: load average %s at start, %s at end; other programs used %.0f%% of the CPUs during the benchmark (steal %.0f%%)\n\n",
		m.LoadAtStart, r.Load.Loadavg, 100*r.Load.Others, 100*r.Load.Steal)

	fmt.Fprintln(w, "| services × endpoints | backend | payload | render | render allocs | kproxy full sync | bare restore | full / bare | 1 endpoint changed | 1 service added | 1 service deleted | bare one-rule restore | kproxy RSS (heap) | others' CPU |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	var notes []string
	objects := map[synth.Shape]bool{}
	for _, c := range r.Cells {
		row, objectsHeap, n := c.row(cfg.Timeout)
		fmt.Fprintln(w, "| "+strings.Join(row, " | ")+" |")
		if objectsHeap > 0 && !objects[c.Shape] {
			objects[c.Shape] = true
			notes = append(notes, fmt.Sprintf("%s: the cluster's API objects alone take %s of heap (what informer caches would add to the RSS).", shapeName(c.Shape), measure.FmtBytes(objectsHeap)))
		}
		notes = append(notes, n...)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "- payload: the full sync's iptables-restore input; on nft, split into batches (one commit per table each) that keep every service whole.")
	fmt.Fprintln(w, "- render: one rules.Render of the whole snapshot, its payload in pieces as a sync restores it (median time; allocations and bytes allocated per render).")
	fmt.Fprintln(w, "- kproxy full sync: the first Sync() of a proxier fed the whole cluster, in a fresh namespace: ensure the jumps, list the nat chains, render, iptables-restore. This is what an operator waits for.")
	fmt.Fprintln(w, "- bare restore: `iptables-<backend>-restore -w 5 --noflush` of the same payload (same batches) into another fresh namespace (via `ip netns exec`): the physical limit of that restore. full / bare is the median of each run's ratio.")
	fmt.Fprintln(w, "- partial syncs: one Sync() after one change, each on a different service; an added service has as many endpoints as the others.")
	fmt.Fprintln(w, "- bare one-rule restore: a restore of one new chain with one rule into the namespace the bare restore filled: the least any partial sync can cost on that backend at that size.")
	fmt.Fprintln(w, "- kproxy RSS: VmRSS after the full sync and a GC, in a process holding the proxier and nothing else of size (heap: the Go heap in use then); a real kproxy adds its informer caches.")
	fmt.Fprintln(w, "- others' CPU: the share of the machine's CPUs used by other programs (and unbilled kernel work) while the row's runs went on.")
	fmt.Fprintf(w, "- >%s: timed out (the binary was killed, its namespace deleted); a measurement that timed out is not repeated in later runs; —: not measured.\n", measure.FmtSeconds(cfg.Timeout.Seconds()))
	seen := map[string]bool{}
	for _, n := range notes {
		if !seen[n] {
			seen[n] = true
			fmt.Fprintf(w, "- %s\n", n)
		}
	}
}

// row is the cell's table row, the heap its API objects take (0: not measured), and notes.
func (c *cell) row(timeout time.Duration) (row []string, objectsHeapBytes float64, notes []string) {
	var (
		renders                        []float64
		allocs, allocBytes             []float64
		full, bare                     []measure.Timing
		ratios                         []float64
		partials                       = map[string][]measure.Timing{}
		rss, heap, others, objectsHeap []float64
		floor                          []measure.Timing
		restores                       = map[int]bool{}
		payload                        = "—"
		payloadDiffers                 bool
	)
	for _, r := range c.Runs {
		if r.Skipped {
			continue
		}
		full = append(full, r.full())
		bare = append(bare, r.Bare)
		floor = append(floor, r.Floor...)
		others = append(others, r.Load.Others)
		if r.full().OK() && r.Bare.OK() && r.Bare.Seconds > 0 {
			ratios = append(ratios, r.full().Seconds/r.Bare.Seconds)
		}
		ch := r.Child
		if ch == nil {
			continue
		}
		payload = fmt.Sprintf("%s, %s lines", measure.FmtBytes(float64(ch.PayloadBytes)), measure.FmtCount(float64(ch.PayloadLines)))
		if ch.Batches > 1 {
			payload += fmt.Sprintf(", %d batches", ch.Batches)
		}
		for _, s := range ch.Renders {
			renders = append(renders, s.Seconds)
			allocs = append(allocs, float64(s.Allocs))
			allocBytes = append(allocBytes, float64(s.AllocBytes))
		}
		for _, k := range partialKinds {
			partials[k] = append(partials[k], ch.Partials[k]...)
		}
		if ch.RSSKiB > 0 {
			rss = append(rss, float64(ch.RSSKiB)*1024)
			heap = append(heap, float64(ch.HeapInuse))
			objectsHeap = append(objectsHeap, float64(ch.ObjectsHeap))
		}
		if r.full().OK() {
			restores[ch.FullIO.Restores] = true
			payloadDiffers = payloadDiffers || (ch.FullIO.Restores == 1 && !ch.FullPayloadSame)
		}
	}
	name := shapeName(c.Shape)

	fullCell := measure.FmtMedian(full, timeout)
	if len(restores) > 0 && !restores[1] || len(restores) > 1 {
		var ns []string
		for n := range restores {
			ns = append(ns, strconv.Itoa(n))
		}
		slices.Sort(ns)
		fullCell += fmt.Sprintf(" (%s restores)", strings.Join(ns, "/"))
	}
	ratio := "—"
	switch mf, mb := measure.MedianOf(full), measure.MedianOf(bare); {
	case len(ratios) > 0:
		ratio = fmt.Sprintf("%.2f", measure.Median(ratios))
	case !math.IsNaN(mf) && !math.IsInf(mf, 0) && math.IsInf(mb, 1):
		ratio = fmt.Sprintf("< %.2f", mf/timeout.Seconds())
	case math.IsInf(mf, 1) && !math.IsNaN(mb) && !math.IsInf(mb, 0) && mb > 0:
		ratio = fmt.Sprintf("> %.1f", timeout.Seconds()/mb)
	}
	row = []string{
		name, string(c.Backend), payload,
		measure.FmtOr(renders, measure.FmtSeconds),
		measure.FmtOr(allocs, func(v float64) string {
			return fmt.Sprintf("%s, %s", measure.FmtCount(v), measure.FmtBytes(measure.Median(allocBytes)))
		}),
		fullCell, measure.FmtMedian(bare, timeout), ratio,
		measure.FmtMedian(partials["endpoint"], timeout),
		measure.FmtMedian(partials["added"], timeout),
		measure.FmtMedian(partials["deleted"], timeout),
		measure.FmtMedian(floor, timeout),
		measure.FmtOr(rss, func(v float64) string {
			return fmt.Sprintf("%s (%s)", measure.FmtBytes(v), measure.FmtBytes(measure.Median(heap)))
		}),
		measure.FmtOr(others, func(v float64) string { return fmt.Sprintf("%.0f%%", 100*v) }),
	}
	if len(objectsHeap) > 0 {
		objectsHeapBytes = measure.Median(objectsHeap)
	}
	if payloadDiffers {
		notes = append(notes, fmt.Sprintf("%s %s: kproxy's full sync restored a payload other than the rendered one timed bare.", name, c.Backend))
	}
	for _, r := range c.Runs {
		for _, f := range r.failures(c) {
			notes = append(notes, "error: "+firstLine(f))
		}
	}
	return row, objectsHeapBytes, notes
}

func shapeName(s synth.Shape) string {
	return fmt.Sprintf("%s × %s", measure.FmtInt(s.Services), measure.FmtInt(s.Endpoints))
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	if len(line) > 300 {
		line = line[:300] + "..."
	}
	return line
}

// writeTSV writes one line per cell with 5 endpoints per service: services, backend, and
// the median kproxy full sync and bare restore in seconds ("-" when not measured). It is
// hack/plot.sh's input.
func writeTSV(path string, rep *report) error {
	var b strings.Builder
	b.WriteString("services\tbackend\tkproxy_seconds\tbare_seconds\n")
	for _, c := range rep.Cells {
		if c.Shape.Endpoints != 5 {
			continue
		}
		var full, bare []measure.Timing
		for _, r := range c.Runs {
			if !r.Skipped {
				full = append(full, r.full())
				bare = append(bare, r.Bare)
			}
		}
		cell := func(ms []measure.Timing) string {
			if v := measure.MedianOf(ms); v > 0 && !math.IsInf(v, 0) {
				return strconv.FormatFloat(v, 'f', 3, 64)
			}
			return "-"
		}
		fmt.Fprintf(&b, "%d\t%s\t%s\t%s\n", c.Shape.Services, c.Backend, cell(full), cell(bare))
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
