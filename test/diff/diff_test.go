package diff

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kproxy-dev/kproxy/test/diff/gen"
	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

// Run size, from the environment (hack/diff.sh sets them; make test runs a small run).
func envInt(t *testing.T, name string, def int) int {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		t.Fatalf("%s=%q: %v", name, v, err)
	}
	return n
}

// settleTimeout bounds how long the two proxies may take to agree after a change; the
// drift check runs every 2 s (syncPeriod), so repairs fit well within it. After
// suspectAfter of disagreement the running upstream is replaced by a fresh one (see
// settle), and the proxies get settleTimeout again.
const (
	settleTimeout = 30 * time.Second
	suspectAfter  = 10 * time.Second
)

func firstLines(lines []string, n int) []string { return lines[:min(n, len(lines))] }

// TestDifferential runs KPROXY_DIFF_SEQUENCES seeded sequences of KPROXY_DIFF_STEPS steps
// (and the corpus) on each backend of KPROXY_DIFF_BACKENDS, and fails on the first step
// after which kproxy's rules differ from upstream kube-proxy's, printing the seed, the step
// and the differing lines.
func TestDifferential(t *testing.T) {
	name := os.Getenv("KPROXY_DIFF_CLUSTER")
	if name == "" {
		name = "kpxdiff"
	}
	c := framework.Up(t, framework.Options{Name: name, Nodes: 2, PodsPerNode: 1, NoKProxy: true})
	upstreamBin := filepath.Join(c.RepoRoot, "_output", "tools", "bin", "kube-proxy")
	if _, err := os.Stat(upstreamBin); err != nil {
		t.Fatalf("no upstream kube-proxy (hack/build-tools.sh builds it): %v", err)
	}
	sequences := envInt(t, "KPROXY_DIFF_SEQUENCES", 4)
	steps := envInt(t, "KPROXY_DIFF_STEPS", 6)
	firstSeed := uint64(envInt(t, "KPROXY_DIFF_SEED", 1))
	backends := strings.Split(os.Getenv("KPROXY_DIFF_BACKENDS"), ",")
	if backends[0] == "" {
		backends = []string{"legacy", "nft"}
	}
	ctx := context.Background()
	namespaces := []string{"diff-a", "diff-b", "diff-c"}
	corpusNS := []string{"diff-corpus"}
	for _, ns := range append(namespaces, corpusNS...) {
		_, err := c.Client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	node := c.Nodes[0]
	opts := gen.Options{
		ThisNode:    node.Name,
		NodeNames:   []string{c.Nodes[0].Name, c.Nodes[1].Name, "node-elsewhere"},
		Zones:       []string{c.Nodes[0].Zone, c.Nodes[1].Zone},
		Namespaces:  namespaces,
		MaxServices: 12,
	}
	kproxyBin := filepath.Join(c.RepoRoot, "bin", "kproxy")
	output := filepath.Join(c.RepoRoot, "_output", "diff")

	for _, backend := range backends {
		t.Run(backend, func(t *testing.T) {
			// kproxy on node-1's namespace; upstream, claiming to be node-1 too, on
			// node-2's. Node IPs come from the Node object, so both see the same node.
			var kp, up *proxy
			// Registered first, so it runs last, once both proxies are stopped.
			t.Cleanup(func() { flushAll(t, kp, up) })
			kp = startProxy(t, c, "kproxy-"+backend, kproxyBin, c.Nodes[0].NetNS, backend, node.Name, false)
			up = startProxy(t, c, "upstream-"+backend, upstreamBin, c.Nodes[1].NetNS, backend, node.Name, true)
			for _, p := range []*proxy{kp, up} {
				if err := p.waitHealthy(ctx, 60*time.Second); err != nil {
					t.Fatal(err)
				}
			}
			r := &run{t: t, ctx: ctx, output: output, kp: kp, up: up, a: &applier{client: c.Client, refused: map[string]int{}}}
			// Whatever an earlier backend's failed run left behind goes first.
			r.clear(append(namespaces, corpusNS...), "start")

			corpusOpts := opts
			corpusOpts.Namespaces = corpusNS
			corpus, err := gen.Corpus(corpusOpts)
			if err != nil {
				t.Fatal(err)
			}
			for i, step := range corpus {
				r.step(fmt.Sprintf("corpus step %d (%s)", i+1, step.Name), step)
			}
			r.clear(corpusNS, "corpus deleted")

			for i := range sequences {
				seed := firstSeed + uint64(i)
				seq := gen.NewSequence(seed, steps, opts)
				rnd := rand.New(rand.NewPCG(seed, 0xd1f7))
				for j, step := range seq.Steps {
					where := fmt.Sprintf("seed %d step %d/%d (%s)", seed, j+1, len(seq.Steps), step.Name)
					if j > 0 && rnd.IntN(2) == 0 {
						// Drift lands between steps, so the next partial sync runs on it.
						r.drift(rnd, where)
					}
					r.step(where, step)
				}
				r.clear(namespaces, fmt.Sprintf("seed %d: everything deleted", seed))
			}
			if r.drifts >= 5 && r.unequalReads == 0 {
				t.Errorf("%d drift injections and not one read in which the rules differed: the comparison does not see the kernel's rules", r.drifts)
			}
			t.Logf("%s: %d settled comparisons (%d objects written, refused by the API server: %v), %d drift injections %v, rules compared each time up to %d lines, %d unequal reads before settling, %d relabel steps and %d others compared against a fresh upstream; 0 differing lines after settling",
				backend, r.compared, r.a.applied, r.a.refused, r.drifts, r.driftKinds, r.maxLines, r.unequalReads, r.upstreamRestarts, len(r.fromScratch))
		})
	}
}

// run is one backend's run.
type run struct {
	t   *testing.T
	ctx context.Context
	// output is where the run leaves files for people: _output/diff in the checkout.
	output     string
	kp, up     *proxy
	a          *applier
	compared   int
	drifts     int
	driftKinds map[string]int
	maxLines   int
	// unequalReads counts reads in which the two rulesets differed before they settled.
	unequalReads int
	// upstreamRestarts counts the steps compared against a freshly started upstream.
	upstreamRestarts int
	// fromScratch lists the steps where only a freshly started upstream agreed with
	// kproxy, with the first lines in which the running one differed.
	fromScratch []string
}

// keep writes a file under _output/diff for a person to look at.
func (r *run) keep(name, content string) {
	out := filepath.Join(r.output, r.kp.backend+"-"+name)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err == nil {
		_ = os.WriteFile(out, []byte(content), 0o644)
	}
}

func (r *run) step(where string, step gen.Step) {
	r.t.Helper()
	for _, op := range step.Ops {
		if err := r.a.apply(r.ctx, op); err != nil {
			r.t.Fatalf("%s: writing to the API server: %v", where, err)
		}
	}
	if step.RelabelsSlice {
		// The oracle is what upstream writes from scratch for these objects: a running
		// upstream keeps a relabelled slice's endpoints under the old service (see
		// gen.Step.RelabelsSlice).
		time.Sleep(500 * time.Millisecond)
		if err := r.up.restart(r.ctx); err != nil {
			r.t.Fatalf("%s: restarting upstream: %v", where, err)
		}
		r.upstreamRestarts++
	}
	r.settle(where)
}

func (r *run) clear(namespaces []string, where string) {
	r.t.Helper()
	if err := deleteAll(r.ctx, r.a.client, namespaces); err != nil {
		r.t.Fatalf("%s: %v", where, err)
	}
	r.settle(where)
}

// settle waits until both namespaces hold the same rules in two reads in a row, the first
// half a second after the change (both proxies sync as soon as they see a change, and the
// API server is local), and fails with the difference when they do not within
// settleTimeout.
func (r *run) settle(where string) {
	r.t.Helper()
	time.Sleep(500 * time.Millisecond)
	start := time.Now()
	deadline := start.Add(settleTimeout)
	restarted := false
	equalReads := 0
	for {
		want, err := r.up.rules(r.ctx)
		if err != nil {
			r.t.Fatalf("%s: upstream's rules: %v", where, err)
		}
		got, err := r.kp.rules(r.ctx)
		if err != nil {
			r.t.Fatalf("%s: kproxy's rules: %v", where, err)
		}
		if want == got {
			equalReads++
			if equalReads == 2 {
				r.compared++
				if n := strings.Count(got, "\n"); n > r.maxLines {
					r.maxLines = n
					r.keep("largest-settled-rules.txt", got)
				}
				return
			}
		} else {
			// Proof that the comparison sees differences: they show while a proxy has
			// not caught up yet, and after every drift injection until kproxy repairs it.
			r.unequalReads++
			equalReads = 0
			if !restarted && time.Since(start) > suspectAfter {
				// The oracle is what upstream writes from scratch for these objects. A
				// running upstream's partial syncs keep some history kproxy does not
				// (chains of services it did not change keep their endpoint comments
				// across a switch into or out of large-cluster mode, a relabelled slice
				// its old service): ask a fresh one.
				r.fromScratch = append(r.fromScratch, fmt.Sprintf("%s: %s", where, strings.Join(firstLines(LineDiff(want, got), 2), " | ")))
				r.t.Logf("%s: no agreement after %s; asking a fresh upstream. Differing lines: %s", where, suspectAfter, strings.Join(firstLines(LineDiff(want, got), 6), " | "))
				if err := r.up.restart(r.ctx); err != nil {
					r.t.Fatalf("%s: restarting upstream: %v", where, err)
				}
				restarted = true
				deadline = time.Now().Add(settleTimeout)
				continue
			}
			if time.Now().After(deadline) {
				r.t.Fatalf("%s: kproxy's rules differ from upstream kube-proxy's after %s (- upstream, + kproxy):\n%s",
					where, settleTimeout, strings.Join(LineDiff(want, got), "\n"))
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// driftKinds are the ways another program changes kproxy's rules between syncs.
var driftKinds = []string{"foreign rules", "flushed service chain", "flushed nat table", "upstream's chains written over"}

// drift changes kproxy's rules behind its back.
func (r *run) drift(rnd *rand.Rand, where string) {
	r.t.Helper()
	kind := driftKinds[rnd.IntN(len(driftKinds))]
	var err error
	switch kind {
	case "foreign rules":
		// What another agent (or an operator) adds to chains kproxy owns.
		for _, tc := range [][2]string{{"nat", "KUBE-SERVICES"}, {"nat", "KUBE-NODEPORTS"}, {"filter", "KUBE-SERVICES"},
			{"filter", "KUBE-EXTERNAL-SERVICES"}, {"filter", "KUBE-FORWARD"}} {
			if err = r.kp.iptables(r.ctx, "-t", tc[0], "-I", tc[1], "1", "-s", "192.0.2.99/32", "-m", "comment", "--comment", "kpx-drift", "-j", "RETURN"); err != nil {
				break
			}
		}
	case "flushed service chain":
		var nat string
		if nat, err = r.kp.save(r.ctx, "nat"); err == nil {
			for _, line := range strings.Split(nat, "\n") {
				if strings.HasPrefix(line, ":KUBE-SVC-") {
					chain, _, _ := strings.Cut(line[1:], " ")
					err = r.kp.iptables(r.ctx, "-t", "nat", "-F", chain)
					break
				}
			}
		}
	case "flushed nat table":
		err = r.kp.iptables(r.ctx, "-t", "nat", "-F")
	case "upstream's chains written over":
		// A leftover kube-proxy during a swap: its chains, in its (map) order, written
		// into kproxy's namespace. Built-in chains are left out: kube-proxy ensures its
		// jumps there one by one instead of restoring them.
		var payload strings.Builder
		for _, table := range []string{"filter", "nat"} {
			var save string
			if save, err = r.up.save(r.ctx, table); err != nil {
				break
			}
			for _, line := range strings.Split(save, "\n") {
				if builtinLine(line) {
					continue
				}
				payload.WriteString(line + "\n")
			}
		}
		if err == nil {
			err = r.kp.restore(r.ctx, payload.String())
		}
	}
	if err != nil {
		r.t.Fatalf("%s: injecting drift (%s): %v", where, kind, err)
	}
	r.drifts++
	if r.driftKinds == nil {
		r.driftKinds = map[string]int{}
	}
	r.driftKinds[kind]++
}

// builtinLine reports whether an iptables-save line declares or writes a built-in chain.
func builtinLine(line string) bool {
	for _, c := range []string{"INPUT", "OUTPUT", "FORWARD", "PREROUTING", "POSTROUTING"} {
		if strings.HasPrefix(line, ":"+c+" ") || strings.HasPrefix(line, "-A "+c+" ") {
			return true
		}
	}
	return false
}

// flushAll empties the tables of both namespaces, so the next backend starts clean.
func flushAll(t *testing.T, ps ...*proxy) {
	for _, p := range ps {
		if p == nil {
			continue
		}
		for _, table := range []string{"filter", "nat", "mangle"} {
			for _, op := range []string{"-F", "-X"} {
				if err := p.iptables(context.Background(), "-t", table, op); err != nil {
					t.Logf("cleaning %s: %v", p.netns, err)
				}
			}
		}
	}
}
