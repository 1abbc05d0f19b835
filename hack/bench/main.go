// Command bench measures kproxy's syncs against the real iptables binaries, as issue 4
// asks, and prints one markdown table: for each cluster shape and backend, render time
// and allocations, kproxy's full sync against a bare iptables-restore of the same payload,
// partial syncs after one change, and kproxy's RSS.
//
// Every measurement happens in fresh network namespaces (ip netns add), never in the
// host's: each shape and backend runs in a child process of this binary, started with
// "ip netns exec", so that the whole child (any goroutine, any binary it runs) is inside
// the namespace and its RSS holds only one proxier. A measurement that outlives -timeout
// is killed with its process group and shown as ">timeout".
//
// Run it as root through hack/bench.sh (make bench); -smoke is the quick CI variant.
// The harness only uses the packages' public API (proxier.New, its handlers and Sync,
// tracker, rules.Render, iptables.New), so it keeps working while their insides change.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kproxy-dev/kproxy/hack/bench/internal/measure"
	"github.com/kproxy-dev/kproxy/hack/bench/internal/synth"
)

func main() {
	if isChild() {
		os.Exit(childMain())
	}
	os.Exit(benchMain(os.Args[1:]))
}

func benchMain(args []string) int {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: bench [flags]  (as root; prints a markdown table on stdout, progress on stderr)\n")
		fs.PrintDefaults()
	}
	def := config{Runs: 3, Renders: 5, Reps: 3, Timeout: 120 * time.Second, NFTMaxChainsPerBatch: defaultNFTMaxChainsPerBatch}
	sizes := fs.String("sizes", "1000x5,5000x5,10000x5,100x1000", "cluster shapes, services x endpoints per service, comma-separated (10kx5 works too)")
	backends := fs.String("backends", "legacy,nft", "iptables backends, comma-separated")
	runs := fs.Int("runs", def.Runs, "runs of each shape and backend; the table shows medians")
	renders := fs.Int("renders", def.Renders, "timed renders per run")
	reps := fs.Int("reps", def.Reps, "partial syncs of each kind per run")
	timeout := fs.Duration("timeout", def.Timeout, "bound on each sync and each bare restore")
	nftBatch := fs.Int("nft-batch", def.NFTMaxChainsPerBatch, "most per-service chains one batch declares on the nft backend (rules.Options.MaxChainsPerBatch; 0: one batch); the default is the kproxy command's")
	maxTotal := fs.Duration("max-total", 0, "bound on the whole benchmark (0: none); what has not run by then is left out")
	smoke := fs.Bool("smoke", false, "CI smoke: 1000x5 once on both backends, short timeouts (other flags still override)")
	jsonOut := fs.String("json", "", "also write every sample, as JSON, to this file")
	tsvOut := fs.String("tsv", "", "also write the full-sync medians, as TSV for hack/plot.sh, to this file")
	note := fs.String("note", "", "a line for the table's header, such as what the run is a baseline of")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "bench: unexpected arguments %q\n", fs.Args())
		return 2
	}

	cfg := def
	if *smoke {
		cfg = smokeConfig()
	}
	// Flags given explicitly win over the defaults and over -smoke's.
	var err error
	fs.Visit(func(f *flag.Flag) {
		switch f.Name {
		case "sizes":
			cfg.Shapes, err = synth.ParseShapes(*sizes)
		case "backends":
			cfg.Backends, err = measure.ParseBackends(*backends)
		case "runs":
			cfg.Runs = *runs
		case "renders":
			cfg.Renders = *renders
		case "reps":
			cfg.Reps = *reps
		case "timeout":
			cfg.Timeout = *timeout
		case "max-total":
			cfg.MaxTotal = *maxTotal
		case "nft-batch":
			cfg.NFTMaxChainsPerBatch = *nftBatch
		}
	})
	if err == nil && cfg.Shapes == nil {
		cfg.Shapes, err = synth.ParseShapes(*sizes)
	}
	if err == nil && cfg.Backends == nil {
		cfg.Backends, err = measure.ParseBackends(*backends)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 2
	}

	cfg.Note = *note

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	rep, err := run(ctx, cfg, os.Stderr)
	if rep != nil {
		rep.writeMarkdown(os.Stdout)
		if *jsonOut != "" {
			if werr := writeJSON(*jsonOut, rep); werr != nil {
				fmt.Fprintf(os.Stderr, "bench: %v\n", werr)
				return 1
			}
		}
		if *tsvOut != "" {
			if werr := writeTSV(*tsvOut, rep); werr != nil {
				fmt.Fprintf(os.Stderr, "bench: %v\n", werr)
				return 1
			}
		}
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		return 1
	}
	return 0
}

func writeJSON(path string, rep *report) error {
	b, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}
