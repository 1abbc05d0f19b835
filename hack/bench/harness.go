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
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// config is one benchmark invocation.
type config struct {
	Shapes   []shape            `json:"shapes"`
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
		Shapes:               []shape{{1000, 5}},
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
	Shape   shape            `json:"shape"`
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
	FullInherited bool        `json:"fullInherited,omitempty"`
	Bare          measurement `json:"bare"`
	BareInherited bool        `json:"bareInherited,omitempty"`
	BareCPU       cpuTimes    `json:"bareCPU"`
	// Floor are restores of one chain with one rule into the namespace the bare restore
	// filled (restoreFloor).
	Floor []measurement `json:"floor,omitempty"`
	// Load is how busy the machine was while the cell ran.
	Load load `json:"load"`
}

// full is the run's full-sync measurement, whether measured or inherited.
func (r runResult) full() measurement {
	if r.FullInherited {
		return measurement{TimedOut: true}
	}
	if r.Child == nil {
		return measurement{Skipped: true}
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
// files. cleanup removes whatever is left, including after a signal.
type harness struct {
	cfg      config
	deadline time.Time
	dir      string
	progress io.Writer

	mu     sync.Mutex
	prefix string
	n      int
	live   map[string]bool
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
		prefix: fmt.Sprintf("kbench-%d", os.Getpid()),
		live:   map[string]bool{},
	}
	defer h.cleanup()
	becomeSubreaper()
	rep := &report{Config: cfg, Machine: describeMachine(), Started: time.Now()}
	if cfg.MaxTotal > 0 {
		h.deadline = rep.Started.Add(cfg.MaxTotal)
	}
	cpu0 := readCPU()
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
	rep.Load = readCPU().since(cpu0)
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
	cpu0 := readCPU()
	defer func() { rr.Load = readCPU().since(cpu0) }()

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
	if err := h.inNamespace(func(ns string) error {
		var err error
		rr.Child, err = h.runChild(ctx, ns, spec)
		return err
	}); err != nil {
		rr.ChildErr = err.Error()
		rr.Bare.Skipped = true
		return rr
	}
	if c.timedOut(true) {
		rr.Bare, rr.BareInherited = measurement{TimedOut: true}, true
		return rr
	}
	if err := h.inNamespace(func(ns string) error {
		rr.Bare, rr.BareCPU = h.bareRestore(ctx, ns, c.Backend, payload)
		if rr.Bare.ok() {
			rr.Floor = h.restoreFloor(ctx, ns, c.Backend, max(1, h.cfg.Reps))
		}
		return nil
	}); err != nil {
		rr.Bare = measurement{Err: err.Error()}
	}
	return rr
}

// inNamespace runs fn with the name of a fresh network namespace, deleted afterwards.
func (h *harness) inNamespace(fn func(ns string) error) error {
	h.mu.Lock()
	h.n++
	name := fmt.Sprintf("%s-%d", h.prefix, h.n)
	h.mu.Unlock()
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns add %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	h.mu.Lock()
	h.live[name] = true
	h.mu.Unlock()
	err := fn(name)
	return errors.Join(err, h.deleteNamespace(name))
}

func (h *harness) deleteNamespace(name string) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !h.live[name] {
		return nil
	}
	delete(h.live, name)
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("ip netns del %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

// cleanup deletes every namespace still alive. Processes were killed with their process
// group before, so nothing keeps a namespace (or its rules) alive.
func (h *harness) cleanup() {
	h.mu.Lock()
	var names []string
	for n := range h.live {
		names = append(names, n)
	}
	h.mu.Unlock()
	for _, n := range names {
		if err := h.deleteNamespace(n); err != nil {
			fmt.Fprintf(h.progress, "bench: cleanup: %v\n", err)
		}
	}
}

// inOwnGroup makes cmd the leader of a new process group, so that killGroup can end it
// and everything it started. Cancellation (or a timeout) sends SIGTERM when graceful (a
// bench child then kills and waits for its iptables binaries itself), else SIGKILL to the
// whole group; a process still there after the grace period is killed.
func inOwnGroup(cmd *exec.Cmd, graceful bool) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	if graceful {
		cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	}
	cmd.WaitDelay = 10 * time.Second
}

// killGroup kills whatever is left of cmd's process group after cmd exited, and reaps
// what the harness inherited of it (run makes the harness a child subreaper): no iptables
// binary outlives its measurement, not even as a zombie.
func killGroup(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	pgid := cmd.Process.Pid
	if syscall.Kill(-pgid, syscall.SIGKILL) != nil {
		return // the group is empty
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		pid, err := syscall.Wait4(-pgid, nil, syscall.WNOHANG, nil)
		if err != nil {
			return // no child of ours left in the group
		}
		if pid == 0 {
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// becomeSubreaper makes processes orphaned below this one (an iptables binary whose bench
// child was killed) its children rather than init's, so that killGroup can reap them.
func becomeSubreaper() {
	const prSetChildSubreaper = 36 // PR_SET_CHILD_SUBREAPER, <linux/prctl.h>; not in package syscall
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, prSetChildSubreaper, 1, 0)
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
	stderr := &tail{max: 8 << 10}
	cmd.Stdout, cmd.Stderr = &stdout, stderr
	inOwnGroup(cmd, true)
	err = cmd.Run()
	killGroup(cmd)
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
func (h *harness) bareRestore(ctx context.Context, ns string, backend iptables.Backend, payload string) (measurement, cpuTimes) {
	f, err := os.Open(payload)
	if err != nil {
		return measurement{Err: err.Error()}, cpuTimes{}
	}
	defer f.Close()
	return h.restoreIn(ctx, ns, backend, f)
}

// restoreFloor times restores of one new chain holding one rule into namespace ns, which
// holds the full ruleset: the least any partial sync can cost on this backend at this
// size (the legacy backend, for one, reads and replaces the whole table on every commit).
// Each probe adds a chain of its own, so none repeats another.
func (h *harness) restoreFloor(ctx context.Context, ns string, backend iptables.Backend, n int) []measurement {
	var ms []measurement
	for k := range n {
		chain := fmt.Sprintf("KBENCH-PROBE-%d", k)
		probe := fmt.Sprintf("*nat\n:%s - [0:0]\n-A %s -j RETURN\nCOMMIT\n", chain, chain)
		m, _ := h.restoreIn(ctx, ns, backend, strings.NewReader(probe))
		ms = append(ms, m)
		if !m.ok() {
			break
		}
	}
	return ms
}

// restoreIn times one "iptables-<backend>-restore -w 5 --noflush" of stdin in namespace ns.
func (h *harness) restoreIn(ctx context.Context, ns string, backend iptables.Backend, stdin io.Reader) (measurement, cpuTimes) {
	bin, err := exec.LookPath(iptables.BinaryName(v1.IPv4Protocol, backend, "restore"))
	if err != nil {
		return measurement{Err: err.Error()}, cpuTimes{}
	}
	var cmd *exec.Cmd
	out := &tail{max: 4 << 10}
	m := timed(ctx, h.cfg.Timeout, h.deadline, func(ctx context.Context) error {
		cmd = exec.CommandContext(ctx, "ip", "netns", "exec", ns, bin, "-w", "5", "--noflush")
		cmd.Stdin, cmd.Stdout, cmd.Stderr = stdin, out, out
		inOwnGroup(cmd, false)
		err := cmd.Run()
		killGroup(cmd)
		if err != nil {
			return fmt.Errorf("%s: %w: %s", bin, err, out)
		}
		return nil
	})
	var cpu cpuTimes
	if cmd != nil && cmd.ProcessState != nil {
		cpu.BinariesUser = cmd.ProcessState.UserTime().Seconds()
		cpu.BinariesSys = cmd.ProcessState.SystemTime().Seconds()
	}
	return m, cpu
}

// tail keeps the last max bytes written to it: the end of a failing command's output.
type tail struct {
	max int
	mu  sync.Mutex
	buf []byte
}

func (t *tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.max {
		t.buf = t.buf[len(t.buf)-t.max:]
	}
	return len(p), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
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
		fmt.Fprintf(&b, "render %s", fmtSeconds(ch.Renders[len(ch.Renders)-1].Seconds))
	}
	fmt.Fprintf(&b, ", full %s, bare %s", fmtMeasurement(r.full(), timeout), fmtMeasurement(r.Bare, timeout))
	for _, k := range partialKinds {
		for _, m := range ch.Partials[k] {
			fmt.Fprintf(&b, ", %s %s", k, fmtMeasurement(m, timeout))
		}
	}
	for _, m := range r.Floor {
		fmt.Fprintf(&b, ", one-rule restore %s", fmtMeasurement(m, timeout))
	}
	if ch.RSSKiB > 0 {
		fmt.Fprintf(&b, ", RSS %.0f MiB", float64(ch.RSSKiB)/1024)
	}
	fmt.Fprintf(&b, ", others' CPU %.0f%%", 100*r.Load.Others)
	return b.String()
}
