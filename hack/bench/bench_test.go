package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// TestMain lets the test binary serve as the harness's child: the smoke test re-executes
// it inside a namespace, as the bench binary re-executes itself.
func TestMain(m *testing.M) {
	if isChild() {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

// TestSmoke runs the CI smoke (hack/bench.sh -smoke) in-process, so that `go test ./...`
// keeps the harness from rotting: it must measure every cell without an error, print its
// table and leave no namespace behind. Timeouts are logged, not failed: this is a test of
// the harness, and timing goals belong to the benchmark, never to tests.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("skipping: the benchmark smoke runs real iptables-restore at 1,000 services (-short)")
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: the benchmark smoke creates network namespaces and must run as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("skipping: the benchmark smoke needs the ip command: %v", err)
	}
	cfg := smokeConfig()
	var backends []iptables.Backend
	for _, b := range cfg.Backends {
		if _, err := exec.LookPath(iptables.BinaryName(v1.IPv4Protocol, b, "restore")); err != nil {
			t.Logf("backend %s not installed: %v", b, err)
			continue
		}
		backends = append(backends, b)
	}
	if len(backends) == 0 {
		t.Skip("skipping: no iptables backend installed")
	}
	cfg.Backends = backends

	start := time.Now()
	var progress bytes.Buffer
	rep, err := run(context.Background(), cfg, &progress)
	t.Logf("progress:\n%s", progress.String())
	if err != nil {
		t.Fatalf("smoke benchmark: %v", err)
	}
	var table bytes.Buffer
	rep.writeMarkdown(&table)
	t.Logf("table (%s):\n%s", time.Since(start).Round(time.Millisecond), table.String())

	if len(rep.Cells) != len(backends) {
		t.Fatalf("got %d cells, want one per backend (%d)", len(rep.Cells), len(backends))
	}
	for _, c := range rep.Cells {
		if len(c.Runs) != 1 || c.Runs[0].Child == nil {
			t.Errorf("%s %s: no measurement: %+v", c.Shape, c.Backend, c.Runs)
			continue
		}
		r := c.Runs[0]
		ch := r.Child
		if ch.PayloadBytes == 0 || len(ch.Renders) != cfg.Renders || ch.NATRules < c.Shape.Services*c.Shape.Endpoints {
			t.Errorf("%s %s: render: %d bytes, %d renders, %d nat rules", c.Shape, c.Backend, ch.PayloadBytes, len(ch.Renders), ch.NATRules)
		}
		if !ch.Full.OK() || !r.Bare.OK() {
			t.Logf("%s %s: full sync %+v, bare restore %+v (timeouts are not failures)", c.Shape, c.Backend, ch.Full, r.Bare)
			continue
		}
		if len(r.Floor) != cfg.Reps {
			t.Errorf("%s %s: %d one-rule restores, want %d", c.Shape, c.Backend, len(r.Floor), cfg.Reps)
		}
		if ch.RSSKiB <= 0 {
			t.Errorf("%s %s: no RSS after the full sync", c.Shape, c.Backend)
		}
		for _, k := range partialKinds {
			if len(ch.Partials[k]) != cfg.Reps {
				t.Errorf("%s %s: %d partial syncs of kind %s, want %d", c.Shape, c.Backend, len(ch.Partials[k]), k, cfg.Reps)
			}
		}
		if row := "| 1,000 × 5 | " + string(c.Backend) + " |"; !strings.Contains(table.String(), row) {
			t.Errorf("table has no row starting %q", row)
		}
	}

	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	if prefix := "kbench-" + strconv.Itoa(os.Getpid()) + "-"; strings.Contains(string(out), prefix) {
		t.Errorf("namespaces left behind:\n%s", out)
	}
}
