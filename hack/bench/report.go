package main

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// report is everything a benchmark measured; -json writes it whole, the table shows
// medians.
type report struct {
	Machine  machine   `json:"machine"`
	Config   config    `json:"config"`
	Started  time.Time `json:"started"`
	Finished time.Time `json:"finished"`
	// Load is how busy the machine was over the whole benchmark.
	Load  load    `json:"load"`
	Cells []*cell `json:"cells"`
}

// machine names the machine the figures belong to.
type machine struct {
	Cores     int               `json:"cores"`
	MemoryGiB float64           `json:"memoryGiB"`
	CPU       string            `json:"cpu"`
	Kernel    string            `json:"kernel"`
	IPTables  map[string]string `json:"iptables"`
	Go        string            `json:"go"`
	// Revision is the kproxy commit the binary was built from, "+dirty" when the tree had
	// changes; empty when the build carries no VCS stamp (go run, go test).
	Revision    string `json:"revision"`
	LoadAtStart string `json:"loadAtStart"`
}

func describeMachine() machine {
	m := machine{Cores: runtime.NumCPU(), Go: runtime.Version(), IPTables: map[string]string{}}
	if kb := procField("/proc/meminfo", "MemTotal:"); kb != "" {
		n, _ := strconv.ParseFloat(strings.Fields(kb)[0], 64)
		m.MemoryGiB = n / (1 << 20)
	}
	m.CPU = procField("/proc/cpuinfo", "model name")
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	for _, b := range []iptables.Backend{iptables.BackendLegacy, iptables.BackendNFT} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := exec.CommandContext(ctx, iptables.BinaryName(v1.IPv4Protocol, b, ""), "--version").Output()
		cancel()
		if err == nil {
			m.IPTables[string(b)] = strings.TrimSpace(string(out))
		}
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		var rev, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" && modified == "true" {
			rev += "+dirty"
		}
		m.Revision = rev
	}
	m.LoadAtStart = loadavg()
	return m
}

// procField returns the value after the colon of the first line of file that starts with
// key.
func procField(file, key string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, key) {
			_, v, _ := strings.Cut(line, ":")
			return strings.TrimSpace(v)
		}
	}
	return ""
}

func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// load is how busy the machine's CPUs were over an interval, as fractions of all of them.
type load struct {
	// Busy counts every CPU's non-idle time; Others is Busy less this process and its
	// descendants (the bench children and the iptables binaries): other programs, and
	// kernel work no process is billed for (such as freeing a deleted namespace's rules).
	Busy   float64 `json:"busy"`
	Others float64 `json:"others"`
	Steal  float64 `json:"steal"`
	// Loadavg is the 1, 5 and 15 minute load average at the end of the interval.
	Loadavg string `json:"loadavg"`
}

// cpuSample is a reading of the machine's and this process tree's CPU counters.
type cpuSample struct {
	at          time.Time
	busy, steal float64 // seconds, all CPUs, from /proc/stat
	ours        float64 // seconds, this process and its waited-for descendants
}

// userHZ is the unit of /proc/stat; it is 100 on every Linux architecture Go supports.
const userHZ = 100

func readCPU() cpuSample {
	s := cpuSample{at: time.Now()}
	if b, err := os.ReadFile("/proc/stat"); err == nil {
		line, _, _ := bytes.Cut(b, []byte{'\n'})
		f := strings.Fields(string(line)) // cpu user nice system idle iowait irq softirq steal
		val := func(i int) float64 {
			if i >= len(f) {
				return 0
			}
			n, _ := strconv.ParseFloat(f[i], 64)
			return n / userHZ
		}
		s.busy = val(1) + val(2) + val(3) + val(6) + val(7)
		s.steal = val(8)
	}
	for _, who := range []int{syscall.RUSAGE_SELF, syscall.RUSAGE_CHILDREN} {
		var ru syscall.Rusage
		if syscall.Getrusage(who, &ru) == nil {
			s.ours += tvDiff(ru.Utime, syscall.Timeval{}) + tvDiff(ru.Stime, syscall.Timeval{})
		}
	}
	return s
}

func (s cpuSample) since(o cpuSample) load {
	capacity := s.at.Sub(o.at).Seconds() * float64(runtime.NumCPU())
	if capacity <= 0 {
		return load{Loadavg: loadavg()}
	}
	busy := s.busy - o.busy
	return load{
		Busy:    busy / capacity,
		Others:  max(0, busy-(s.ours-o.ours)) / capacity,
		Steal:   (s.steal - o.steal) / capacity,
		Loadavg: loadavg(),
	}
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
		r.Started.Format("2006-01-02 15:04 MST"), r.Finished.Sub(r.Started).Round(time.Second), cfg.Runs, cfg.Runs, cfg.Reps, cfg.Renders, fmtSeconds(cfg.Timeout.Seconds()), cfg.NFTMaxChainsPerBatch)
	fmt.Fprintf(w, "- load: load average %s at start, %s at end; other programs used %.0f%% of the CPUs during the benchmark (steal %.0f%%)\n\n",
		m.LoadAtStart, r.Load.Loadavg, 100*r.Load.Others, 100*r.Load.Steal)

	fmt.Fprintln(w, "| services × endpoints | backend | payload | render | render allocs | kproxy full sync | bare restore | full / bare | 1 endpoint changed | 1 service added | 1 service deleted | bare one-rule restore | kproxy RSS (heap) | others' CPU |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	var notes []string
	objects := map[shape]bool{}
	for _, c := range r.Cells {
		row, objectsHeap, n := c.row(cfg.Timeout)
		fmt.Fprintln(w, "| "+strings.Join(row, " | ")+" |")
		if objectsHeap > 0 && !objects[c.Shape] {
			objects[c.Shape] = true
			notes = append(notes, fmt.Sprintf("%s: the cluster's API objects alone take %s of heap (what informer caches would add to the RSS).", shapeName(c.Shape), fmtBytes(objectsHeap)))
		}
		notes = append(notes, n...)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "- payload: the full sync's iptables-restore input; on nft, split into batches (one commit per table each) that keep every service whole.")
	fmt.Fprintln(w, "- render: one rules.Render of the whole snapshot, payload joined (median time; allocations and bytes allocated per render).")
	fmt.Fprintln(w, "- kproxy full sync: the first Sync() of a proxier fed the whole cluster, in a fresh namespace: ensure the jumps, list the nat chains, render, iptables-restore. This is what an operator waits for.")
	fmt.Fprintln(w, "- bare restore: `iptables-<backend>-restore -w 5 --noflush` of the same payload (same batches) into another fresh namespace (via `ip netns exec`): the physical limit of that restore. full / bare is the median of each run's ratio.")
	fmt.Fprintln(w, "- partial syncs: one Sync() after one change, each on a different service; an added service has as many endpoints as the others.")
	fmt.Fprintln(w, "- bare one-rule restore: a restore of one new chain with one rule into the namespace the bare restore filled: the least any partial sync can cost on that backend at that size.")
	fmt.Fprintln(w, "- kproxy RSS: VmRSS after the full sync and a GC, in a process holding the proxier and nothing else of size (heap: the Go heap in use then); a real kproxy adds its informer caches.")
	fmt.Fprintln(w, "- others' CPU: the share of the machine's CPUs used by other programs (and unbilled kernel work) while the row's runs went on.")
	fmt.Fprintf(w, "- >%s: timed out (the binary was killed, its namespace deleted); a measurement that timed out is not repeated in later runs; —: not measured.\n", fmtSeconds(cfg.Timeout.Seconds()))
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
		full, bare                     []measurement
		ratios                         []float64
		partials                       = map[string][]measurement{}
		rss, heap, others, objectsHeap []float64
		floor                          []measurement
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
		if r.full().ok() && r.Bare.ok() && r.Bare.Seconds > 0 {
			ratios = append(ratios, r.full().Seconds/r.Bare.Seconds)
		}
		ch := r.Child
		if ch == nil {
			continue
		}
		payload = fmt.Sprintf("%s, %s lines", fmtBytes(float64(ch.PayloadBytes)), fmtCount(float64(ch.PayloadLines)))
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
		if r.full().ok() {
			restores[ch.FullIO.Restores] = true
			payloadDiffers = payloadDiffers || (ch.FullIO.Restores == 1 && !ch.FullPayloadSame)
		}
	}
	name := shapeName(c.Shape)

	fullCell := fmtMedian(full, timeout)
	if len(restores) > 0 && !restores[1] || len(restores) > 1 {
		var ns []string
		for n := range restores {
			ns = append(ns, strconv.Itoa(n))
		}
		slices.Sort(ns)
		fullCell += fmt.Sprintf(" (%s restores)", strings.Join(ns, "/"))
	}
	ratio := "—"
	switch mf, mb := medianOf(full), medianOf(bare); {
	case len(ratios) > 0:
		ratio = fmt.Sprintf("%.2f", median(ratios))
	case !math.IsNaN(mf) && !math.IsInf(mf, 0) && math.IsInf(mb, 1):
		ratio = fmt.Sprintf("< %.2f", mf/timeout.Seconds())
	case math.IsInf(mf, 1) && !math.IsNaN(mb) && !math.IsInf(mb, 0) && mb > 0:
		ratio = fmt.Sprintf("> %.1f", timeout.Seconds()/mb)
	}
	row = []string{
		name, string(c.Backend), payload,
		fmtOr(renders, fmtSeconds),
		fmtOr(allocs, func(v float64) string {
			return fmt.Sprintf("%s, %s", fmtCount(v), fmtBytes(median(allocBytes)))
		}),
		fullCell, fmtMedian(bare, timeout), ratio,
		fmtMedian(partials["endpoint"], timeout),
		fmtMedian(partials["added"], timeout),
		fmtMedian(partials["deleted"], timeout),
		fmtMedian(floor, timeout),
		fmtOr(rss, func(v float64) string { return fmt.Sprintf("%s (%s)", fmtBytes(v), fmtBytes(median(heap))) }),
		fmtOr(others, func(v float64) string { return fmt.Sprintf("%.0f%%", 100*v) }),
	}
	if len(objectsHeap) > 0 {
		objectsHeapBytes = median(objectsHeap)
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

func shapeName(s shape) string {
	return fmt.Sprintf("%s × %s", fmtInt(s.Services), fmtInt(s.Endpoints))
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	if len(line) > 300 {
		line = line[:300] + "..."
	}
	return line
}

// medianOf is the median duration of ms, in seconds: timeouts count as +Inf, skipped and
// failed measurements not at all; NaN when nothing is left.
func medianOf(ms []measurement) float64 {
	var vals []float64
	for _, m := range ms {
		switch {
		case m.TimedOut:
			vals = append(vals, math.Inf(1))
		case m.ok():
			vals = append(vals, m.Seconds)
		}
	}
	if len(vals) == 0 {
		return math.NaN()
	}
	return median(vals)
}

// fmtMedian shows medianOf(ms), "error" if any measurement failed.
func fmtMedian(ms []measurement, timeout time.Duration) string {
	for _, m := range ms {
		if m.Err != "" {
			return "error"
		}
	}
	v := medianOf(ms)
	switch {
	case math.IsNaN(v):
		return "—"
	case math.IsInf(v, 1):
		return ">" + fmtSeconds(timeout.Seconds())
	}
	return fmtSeconds(v)
}

func fmtMeasurement(m measurement, timeout time.Duration) string {
	switch {
	case m.Err != "":
		return "error"
	case m.Skipped:
		return "—"
	case m.TimedOut && timeout > 0:
		return ">" + fmtSeconds(timeout.Seconds())
	case m.TimedOut:
		return "timed out"
	}
	return fmtSeconds(m.Seconds)
}

// median of vals (not empty); vals is sorted in place.
func median(vals []float64) float64 {
	slices.Sort(vals)
	n := len(vals)
	if n%2 == 1 {
		return vals[n/2]
	}
	return (vals[n/2-1] + vals[n/2]) / 2
}

func fmtOr(vals []float64, f func(float64) string) string {
	if len(vals) == 0 {
		return "—"
	}
	return f(median(vals))
}

func fmtSeconds(s float64) string {
	switch {
	case s < 0.01:
		return fmt.Sprintf("%.1f ms", s*1000)
	case s < 1:
		return fmt.Sprintf("%.0f ms", s*1000)
	case s < 10:
		return fmt.Sprintf("%.2f s", s)
	case s < 100:
		return fmt.Sprintf("%.1f s", s)
	}
	return fmt.Sprintf("%.0f s", s)
}

func fmtBytes(b float64) string {
	switch {
	case b < 1<<10:
		return fmt.Sprintf("%.0f B", b)
	case b < 1<<20:
		return fmt.Sprintf("%.0f KiB", b/(1<<10))
	case b < 100<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	}
	return fmt.Sprintf("%.0f MiB", b/(1<<20))
}

func fmtCount(n float64) string {
	switch {
	case n < 1000:
		return fmt.Sprintf("%.0f", n)
	case n < 10000:
		return fmt.Sprintf("%.1fk", n/1000)
	case n < 1e6:
		return fmt.Sprintf("%.0fk", n/1000)
	}
	return fmt.Sprintf("%.2fM", n/1e6)
}

// fmtInt writes n with thousands separators: 10,000.
func fmtInt(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
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
		var full, bare []measurement
		for _, r := range c.Runs {
			if !r.Skipped {
				full = append(full, r.full())
				bare = append(bare, r.Bare)
			}
		}
		cell := func(ms []measurement) string {
			if v := medianOf(ms); v > 0 && !math.IsInf(v, 0) {
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
