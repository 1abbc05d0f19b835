// Command daemon is the daemon tier of kproxy's benchmarks (issue 11): it runs the real
// kproxy binary and upstream kube-proxy, one after the other, on a node of the e2e cluster
// (hack/cluster-up.sh: real kube-apiserver, etcd and kube-controller-manager in network
// namespaces) holding N services x E endpoints, and measures what an operator sees, from
// outside the process:
//
//   - process start until the last service's rules are in the node's kernel;
//   - the full sync by the daemon's own kubeproxy_sync_full_proxy_rules_duration_seconds,
//     against a bare iptables-restore of the ruleset it left (iptables-save form, fresh
//     namespaces, median of -bare-runs);
//   - peak RSS (VmHWM) after the first sync, steady RSS (VmRSS after -settle), CPU seconds
//     (utime+stime, and the iptables binaries the daemon waited for);
//   - partial syncs after one endpoint changed, one service added, one removed, by the
//     daemon's own metric and as seen in the kernel, against the one-rule-restore floor;
//   - network programming latency under churn: -churn-rate endpoint changes per second for
//     -churn-duration, each stamped with the EndpointSlice's last-change-trigger-time,
//     timed until the changed endpoint's KUBE-SEP chain is in the kernel (p50/p90/p99),
//     beside the daemon's own kubeproxy_network_programming_duration_seconds histogram.
//
// Every size gets a fresh cluster (CLUSTER_NAME -cluster, one node, kproxy stopped). The
// objects are Services without selectors and EndpointSlices labelled with a managed-by of
// this benchmark, so no controller touches them; they are loaded before each daemon starts
// and put back as they were after it stopped, so both daemons start from the same cluster.
// Both daemons are started as test/diff starts them: the config file of deploy/ with a
// kubeconfig, --hostname-override, the backend forced (kproxy by its flag, upstream by a
// PATH whose iptables commands are the backend's), and the node's rules flushed before.
//
// Output: one markdown table per backend, kproxy and upstream side by side (stdout and
// -out/report.md), how each cost grows with size, and every sample as JSON
// (-out/report.json). Run it as root through hack/bench-daemon.sh (make bench-daemon);
// -smoke is the CI variant. Every wait is bounded by -timeout and shows as ">timeout".
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kproxy-dev/kproxy/hack/bench/internal/measure"
	"github.com/kproxy-dev/kproxy/hack/bench/internal/synth"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// config is one benchmark invocation.
type config struct {
	Shapes   []synth.Shape      `json:"shapes"`
	Backends []iptables.Backend `json:"backends"`
	// Proxies are the daemons measured, in order: "kproxy", "upstream".
	Proxies []string `json:"proxies"`
	// Reps is how many partial syncs of each kind every daemon gets.
	Reps int `json:"reps"`
	// ChurnRate endpoint changes per second for ChurnDuration (0: no churn).
	ChurnRate     float64       `json:"churnRate"`
	ChurnDuration time.Duration `json:"churnDuration"`
	// Timeout bounds every wait: the first sync, each partial sync, the churn's last change,
	// each bare restore.
	Timeout time.Duration `json:"timeout"`
	// Settle is how long a daemon runs after its first sync before its steady RSS is read.
	Settle time.Duration `json:"settle"`
	// BareRuns is how many fresh namespaces the ruleset is restored into.
	BareRuns int `json:"bareRuns"`
	// Cluster is the e2e cluster's CLUSTER_NAME; Nodes its node count (the daemon runs on
	// node-1).
	Cluster string `json:"cluster"`
	Nodes   int    `json:"nodes"`
	// Repo is the kproxy checkout; KProxy and Upstream the two binaries.
	Repo     string `json:"repo"`
	KProxy   string `json:"kproxy"`
	Upstream string `json:"upstream"`
	// Out receives report.md, report.json and the daemons' logs.
	Out  string `json:"out"`
	Note string `json:"note,omitempty"`
}

// Proxy names.
const (
	proxyKProxy   = "kproxy"
	proxyUpstream = "upstream"
)

func defaultConfig(repo string) config {
	return config{
		Shapes:        []synth.Shape{{Services: 1000, Endpoints: 5}, {Services: 10000, Endpoints: 5}},
		Backends:      []iptables.Backend{iptables.BackendLegacy, iptables.BackendNFT},
		Proxies:       []string{proxyKProxy, proxyUpstream},
		Reps:          3,
		ChurnRate:     20,
		ChurnDuration: 2 * time.Minute,
		Timeout:       5 * time.Minute,
		Settle:        10 * time.Second,
		BareRuns:      3,
		Cluster:       "kpxbench",
		Nodes:         1,
		Repo:          repo,
		KProxy:        filepath.Join(repo, "bin", "kproxy"),
		Upstream:      filepath.Join(repo, "_output", "tools", "bin", "kube-proxy"),
		Out:           filepath.Join(repo, "_output", "bench-daemon"),
	}
}

// smoke is the CI variant: a small cluster, every measurement once, a short churn, so
// that the tier cannot rot (about 2 minutes on 2 cores).
func smoke(cfg config) config {
	cfg.Shapes = []synth.Shape{{Services: 200, Endpoints: 5}}
	cfg.Reps = 1
	cfg.ChurnRate = 10
	cfg.ChurnDuration = 5 * time.Second
	cfg.Timeout = time.Minute
	cfg.Settle = 2 * time.Second
	cfg.BareRuns = 3
	return cfg
}

func main() { os.Exit(benchMain(os.Args[1:])) }

func benchMain(args []string) int {
	repo, err := os.Getwd()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench-daemon: %v\n", err)
		return 1
	}
	def := defaultConfig(repo)
	fs := flag.NewFlagSet("bench-daemon", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: bench-daemon [flags]  (as root, from the checkout; markdown on stdout, progress on stderr)\n")
		fs.PrintDefaults()
	}
	sizes := fs.String("sizes", "1000x5,10000x5", "cluster shapes, services x endpoints per service, comma-separated (25kx5 and 100x1000 work too)")
	backends := fs.String("backends", "legacy,nft", "iptables backends, comma-separated")
	proxies := fs.String("proxies", "kproxy,upstream", "daemons to measure, in order, comma-separated")
	reps := fs.Int("reps", def.Reps, "partial syncs of each kind per daemon")
	rate := fs.Float64("churn-rate", def.ChurnRate, "endpoint changes per second during the churn (0: no churn)")
	churn := fs.Duration("churn-duration", def.ChurnDuration, "how long the churn lasts")
	timeout := fs.Duration("timeout", def.Timeout, "bound on every wait (first sync, each partial sync, the churn's last change, each bare restore)")
	settle := fs.Duration("settle", def.Settle, "how long a daemon runs after its first sync before its steady RSS is read")
	bareRuns := fs.Int("bare-runs", def.BareRuns, "fresh namespaces the ruleset is restored into (the table shows the median)")
	cluster := fs.String("cluster", def.Cluster, "CLUSTER_NAME of the benchmark's e2e cluster (torn down first if left over)")
	nodes := fs.Int("nodes", def.Nodes, "nodes of the cluster; the daemons run on node-1")
	kproxyBin := fs.String("kproxy", def.KProxy, "the kproxy binary (hack/build.sh)")
	upstreamBin := fs.String("upstream", def.Upstream, "upstream kube-proxy (hack/build-tools.sh)")
	out := fs.String("out", def.Out, "folder for report.md, report.json and the daemons' logs")
	note := fs.String("note", "", "a line for the report's header")
	smokeFlag := fs.Bool("smoke", false, "CI smoke: 200x5, one partial sync of each kind, 5 s of churn at 10/s, 1 min timeouts (other flags still override)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench-daemon: unexpected arguments %q\n", fs.Args())
		return 2
	}
	cfg := def
	if *smokeFlag {
		cfg = smoke(cfg)
	}
	// Flags given explicitly win over the defaults and over -smoke's.
	fs.Visit(func(f *flag.Flag) {
		if err != nil {
			return
		}
		switch f.Name {
		case "sizes":
			cfg.Shapes, err = synth.ParseShapes(*sizes)
		case "backends":
			cfg.Backends, err = measure.ParseBackends(*backends)
		case "proxies":
			cfg.Proxies, err = parseProxies(*proxies)
		case "reps":
			cfg.Reps = *reps
		case "churn-rate":
			cfg.ChurnRate = *rate
		case "churn-duration":
			cfg.ChurnDuration = *churn
		case "timeout":
			cfg.Timeout = *timeout
		case "settle":
			cfg.Settle = *settle
		case "bare-runs":
			cfg.BareRuns = *bareRuns
		case "cluster":
			cfg.Cluster = *cluster
		case "nodes":
			cfg.Nodes = *nodes
		case "kproxy":
			cfg.KProxy = *kproxyBin
		case "upstream":
			cfg.Upstream = *upstreamBin
		case "out":
			cfg.Out = *out
		}
	})
	if err == nil {
		err = validate(cfg)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench-daemon: %v\n", err)
		return 2
	}
	cfg.Note = *note

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, cfg, os.Stderr)
	if rep != nil {
		if werr := rep.write(os.Stdout, cfg.Out); werr != nil {
			fmt.Fprintf(os.Stderr, "bench-daemon: %v\n", werr)
			return 1
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench-daemon: %v\n", err)
		return 1
	}
	return 0
}

func validate(cfg config) error {
	switch {
	case len(cfg.Shapes) == 0 || len(cfg.Backends) == 0 || len(cfg.Proxies) == 0:
		return fmt.Errorf("nothing to measure")
	case cfg.Reps < 0 || cfg.ChurnRate < 0 || cfg.Timeout <= 0 || cfg.BareRuns < 1:
		return fmt.Errorf("-reps and -churn-rate must be at least 0, -timeout positive, -bare-runs at least 1")
	case cfg.Nodes < 1 || cfg.Nodes > 9:
		return fmt.Errorf("-nodes must be within 1..9 (hack/cluster-up.sh)")
	}
	for _, s := range cfg.Shapes {
		// Partial endpoint changes take services from the end, the churn from the start.
		if s.Services < 2*cfg.Reps+1 {
			return fmt.Errorf("size %s: %d partial syncs of each kind need at least %d services", s, cfg.Reps, 2*cfg.Reps+1)
		}
	}
	return nil
}

func parseProxies(s string) ([]string, error) {
	var out []string
	for _, f := range strings.Split(s, ",") {
		p := strings.TrimSpace(f)
		if p != proxyKProxy && p != proxyUpstream {
			return nil, fmt.Errorf("bad proxy %q: want kproxy or upstream", f)
		}
		out = append(out, p)
	}
	return out, nil
}
