package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/hack/bench/internal/measure"
	"github.com/kproxy-dev/kproxy/hack/bench/internal/synth"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// config is one benchmark invocation.
type config struct {
	Shapes   []synth.Shape      `json:"shapes"`
	Backends []iptables.Backend `json:"backends"`
	// Runs is how many times each shape and backend is measured (the table shows medians).
	Runs int `json:"runs"`
	// Renders is how many timed renders each run makes; Reps how many partial syncs of
	// each kind.
	Renders int `json:"renders"`
	Reps    int `json:"reps"`
	// Timeout bounds each sync and each bare restore.
	Timeout time.Duration `json:"timeout"`
	// MaxTotal, when not zero, bounds the whole benchmark: what has not run by then is
	// left out of the table.
	MaxTotal time.Duration `json:"maxTotal"`
	// NFTMaxChainsPerBatch is rules.Options.MaxChainsPerBatch on the nft backend (the
	// legacy backend gets one batch), as the kproxy command sets it.
	NFTMaxChainsPerBatch int `json:"nftMaxChainsPerBatch"`
	// Note is a free-form line for the table's header (what is being measured, and why).
	Note string `json:"note,omitempty"`
}

// defaultNFTMaxChainsPerBatch mirrors nftMaxChainsPerBatch in pkg/app, which the kproxy
// command uses on the nft backend; it is not exported, so keep the two in step (or pass
// -nft-batch to measure another value).
const defaultNFTMaxChainsPerBatch = 500

// smokeConfig is the CI smoke: the smallest shape once on both backends, quickly.
func smokeConfig() config {
	return config{
		Shapes:               []synth.Shape{{Services: 1000, Endpoints: 5}},
		Backends:             []iptables.Backend{iptables.BackendLegacy, iptables.BackendNFT},
		Runs:                 1,
		Renders:              2,
		Reps:                 1,
		Timeout:              15 * time.Second,
		MaxTotal:             45 * time.Second,
		NFTMaxChainsPerBatch: defaultNFTMaxChainsPerBatch,
	}
}

// cell is one shape on one backend: one table row.
type cell struct {
	Shape   synth.Shape      `json:"shape"`
	Backend iptables.Backend `json:"backend"`
	Runs    []runResult      `json:"runs"`
}

// runResult is one run of a cell.
type runResult struct {
	Run int `json:"run"`
	// Child is nil when the child failed (ChildErr) or was not run (Skipped).
	Child    *childResult `json:"child,omitempty"`
	ChildErr string       `json:"childErr,omitempty"`
	Skipped  bool         `json:"skipped,omitempty"`
	// FullInherited: the full sync timed out in an earlier run, so it was not repeated
	// and counts as timed out here too; BareInherited likewise.
	FullInherited bool             `json:"fullInherited,omitempty"`
	Bare          measure.Timing   `json:"bare"`
	BareInherited bool             `json:"bareInherited,omitempty"`
	BareCPU       measure.CPUTimes `json:"bareCPU"`
	// Floor are restores of one chain with one rule into the namespace the bare restore
	// filled (restoreFloor).
	Floor []measure.Timing `json:"floor,omitempty"`
	// Load is how busy the machine was while the cell ran.
	Load measure.Load `json:"load"`
}

// full is the run's full-sync measurement, whether measured or inherited.
func (r runResult) full() measure.Timing {
	if r.FullInherited {
		return measure.Timing{TimedOut: true}
	}
	if r.Child == nil {
		return measure.Timing{Skipped: true}
	}
	return r.Child.Full
}

// timedOut reports whether the full sync (bare false) or the bare restore (bare true)
// timed out in any run so far.
func (c *cell) timedOut(bare bool) bool {
	for _, r := range c.Runs {
		m := r.full()
		if bare {
			m = r.Bare
		}
		if m.TimedOut {
			return true
		}
	}
	return false
}

// harness runs cells and owns what they leave behind: network namespaces and payload
// files. Both are removed when run returns, including after a signal.
type harness struct {
	cfg      config
	deadline time.Time
	dir      string
	progress io.Writer
	ns       *measure.Namespaces
}

// run measures every cell cfg asks for. Progress goes to progress; the result is returned
// even when some measurements failed, with an error saying so.
func run(ctx context.Context, cfg config, progress io.Writer) (*report, error) {
	if err := preflight(cfg); err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "kproxy-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	h := &harness{
		cfg: cfg, dir: dir, progress: progress,
		ns: measure.NewNamespaces(fmt.Sprintf("kbench-%d", os.Getpid())),
	}
	defer func() {
		if err := h.ns.Cleanup(); err != nil {
			fmt.Fprintf(progress, "bench: cleanup: %v\n", err)
		}
	}()
	measure.BecomeSubreaper()
	rep := &report{Config: cfg, Machine: measure.DescribeMachine(), Started: time.Now()}
	if cfg.MaxTotal > 0 {
		h.deadline = rep.Started.Add(cfg.MaxTotal)
	}
	cpu0 := measure.ReadCPU()
	for _, s := range cfg.Shapes {
		for _, b := range cfg.Backends {
			rep.Cells = append(rep.Cells, &cell{Shape: s, Backend: b})
		}
	}
	// Runs are the outer loop, so that slow drifts of the machine's load spread over
	// every cell instead of biasing some.
	var failures []string
	for r := 1; r <= cfg.Runs; r++ {
		for _, c := range rep.Cells {
			if err := ctx.Err(); err != nil {
				return rep, err
			}
			rr := h.runCell(ctx, c, r)
			c.Runs = append(c.Runs, rr)
			failures = append(failures, rr.failures(c)...)
			fmt.Fprintf(progress, "bench: run %d/%d %s %s: %s\n", r, cfg.Runs, c.Shape, c.Backend, rr.summary(cfg.Timeout))
		}
	}
	rep.Finished = time.Now()
	rep.Load = measure.ReadCPU().Since(cpu0, 0)
	if len(failures) > 0 {
		return rep, fmt.Errorf("%d measurements failed:\n  %s", len(failures), strings.Join(failures, "\n  "))
	}
	return rep, nil
}

// preflight checks what every cell needs, so that a missing binary is one clear error
// rather than a failure per cell.
func preflight(cfg config) error {
	if os.Geteuid() != 0 {
		return errors.New("the benchmark creates network namespaces and must run as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return fmt.Errorf("the benchmark needs the ip command (iproute2): %w", err)
	}
	for _, b := range cfg.Backends {
		for _, tool := range []string{"", "restore", "save"} {
			if _, err := exec.LookPath(iptables.BinaryName(v1.IPv4Protocol, b, tool)); err != nil {
				return fmt.Errorf("backend %s: %w", b, err)
			}
		}
	}
	if len(cfg.Shapes) == 0 || len(cfg.Backends) == 0 || cfg.Runs < 1 || cfg.Renders < 1 || cfg.Reps < 0 || cfg.Timeout <= 0 {
		return fmt.Errorf("nothing to measure: %+v", cfg)
	}
	for _, s := range cfg.Shapes {
		// Each partial sync changes a different service, and none of them is deleted.
		if s.Services < 2*cfg.Reps {
			return fmt.Errorf("size %s: %d partial syncs of each kind need at least %d services", s, cfg.Reps, 2*cfg.Reps)
		}
	}
	return nil
}

// runCell runs one cell once: the child (render, full and partial syncs) in one fresh
// namespace, then the bare restore of the same payload in another.
func (h *harness) runCell(ctx context.Context, c *cell, run int) (rr runResult) {
	rr.Run = run
	if !h.deadline.IsZero() && time.Now().After(h.deadline) {
		rr.Skipped, rr.Bare.Skipped = true, true
		return rr
	}
	cpu0 := measure.ReadCPU()
	defer func() { rr.Load = measure.ReadCPU().Since(cpu0, 0) }()

	payload := filepath.Join(h.dir, fmt.Sprintf("payload-%s-%s-%d", c.Shape, c.Backend, run))
	defer os.Remove(payload)
	spec := childSpec{
		Shape: c.Shape, Backend: c.Backend,
		Renders: h.cfg.Renders, Reps: h.cfg.Reps,
		Timeout: h.cfg.Timeout, Deadline: h.deadline,
		SkipSync:    c.timedOut(false),
		PayloadFile: payload,
	}
	if c.Backend == iptables.BackendNFT {
		spec.MaxChainsPerBatch = h.cfg.NFTMaxChainsPerBatch
	}
	rr.FullInherited = spec.SkipSync
	if err := h.ns.With(func(ns string) error {
		var err error
		rr.Child, err = h.runChild(ctx, ns, spec)
		return err
	}); err != nil {
		rr.ChildErr = err.Error()
		rr.Bare.Skipped = true
		return rr
	}
	if c.timedOut(true) {
		rr.Bare, rr.BareInherited = measure.Timing{TimedOut: true}, true
		return rr
	}
	if err := h.ns.With(func(ns string) error {
		rr.Bare, rr.BareCPU = h.bareRestore(ctx, ns, c.Backend, payload)
		if rr.Bare.OK() {
			rr.Floor = measure.RestoreFloor(ctx, ns, c.Backend, max(1, h.cfg.Reps), h.bound())
		}
		return nil
	}); err != nil {
		rr.Bare = measure.Timing{Err: err.Error()}
	}
	return rr
}

// runChild runs this binary as a child inside namespace ns ("ip netns exec" switches the
// whole process, so no goroutine of the proxier can reach the host's rules).
func (h *harness) runChild(ctx context.Context, ns string, spec childSpec) (*childResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	js, err := json.Marshal(spec)
	if err != nil {
		return nil, err
	}
	// The child enforces each timeout itself; this bound is for a child that hangs anyway.
	limit := spec.Timeout*time.Duration(2+3*spec.Reps) + 5*time.Minute
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", ns, exe)
	cmd.Env = append(os.Environ(), childEnv+"="+string(js))
	var stdout bytes.Buffer
	stderr := &measure.Tail{Max: 8 << 10}
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	measure.InOwnGroup(cmd, true)
	err = cmd.Run()
	measure.KillGroup(cmd)
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", err, ctx.Err())
		}
		return nil, fmt.Errorf("child %s %s: %w: %s", spec.Shape, spec.Backend, err, stderr)
	}
	var res childResult
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil {
		return nil, fmt.Errorf("child %s %s: reading its result: %w", spec.Shape, spec.Backend, err)
	}
	return &res, nil
}

// bareRestore times "iptables-<backend>-restore -w 5 --noflush" of the payload file in
// namespace ns: the same command kproxy runs, without kproxy.
func (h *harness) bareRestore(ctx context.Context, ns string, backend iptables.Backend, payload string) (measure.Timing, measure.CPUTimes) {
	f, err := os.Open(payload)
	if err != nil {
		return measure.Timing{Err: err.Error()}, measure.CPUTimes{}
	}
	defer f.Close()
	return measure.Restore(ctx, ns, backend, f, h.bound(), "--noflush")
}

// bound is what limits each bare restore.
func (h *harness) bound() measure.Bound {
	return measure.Bound{Timeout: h.cfg.Timeout, Deadline: h.deadline}
}

// failures lists the run's failed measurements (not timeouts), for the exit status.
func (r runResult) failures(c *cell) []string {
	var out []string
	add := func(what, err string) {
		out = append(out, fmt.Sprintf("run %d %s %s %s: %s", r.Run, c.Shape, c.Backend, what, err))
	}
	if r.ChildErr != "" {
		add("child", r.ChildErr)
	}
	if r.Bare.Err != "" {
		add("bare restore", r.Bare.Err)
	}
	for _, m := range r.Floor {
		if m.Err != "" {
			add("one-rule restore", m.Err)
		}
	}
	if r.Child != nil {
		if r.Child.Full.Err != "" {
			add("full sync", r.Child.Full.Err)
		}
		for _, k := range partialKinds {
			for _, m := range r.Child.Partials[k] {
				if m.Err != "" {
					add("partial sync ("+k+")", m.Err)
				}
			}
		}
	}
	return out
}

// summary is the run's one-line progress report.
func (r runResult) summary(timeout time.Duration) string {
	if r.Skipped {
		return "skipped (out of time)"
	}
	if r.ChildErr != "" {
		return "child failed: " + r.ChildErr
	}
	ch := r.Child
	var b strings.Builder
	if len(ch.Renders) > 0 {
		fmt.Fprintf(&b, "render %s", measure.FmtSeconds(ch.Renders[len(ch.Renders)-1].Seconds))
	}
	fmt.Fprintf(&b, ", full %s, bare %s", measure.FmtTiming(r.full(), timeout), measure.FmtTiming(r.Bare, timeout))
	for _, k := range partialKinds {
		for _, m := range ch.Partials[k] {
			fmt.Fprintf(&b, ", %s %s", k, measure.FmtTiming(m, timeout))
		}
	}
	for _, m := range r.Floor {
		fmt.Fprintf(&b, ", one-rule restore %s", measure.FmtTiming(m, timeout))
	}
	if ch.RSSKiB > 0 {
		fmt.Fprintf(&b, ", RSS %.0f MiB", float64(ch.RSSKiB)/1024)
	}
	fmt.Fprintf(&b, ", others' CPU %.0f%%", 100*r.Load.Others)
	return b.String()
}
