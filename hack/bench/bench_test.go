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
		if !ch.Full.ok() || !r.Bare.ok() {
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

func TestParseShapes(t *testing.T) {
	got, err := parseShapes("1000x5, 10kx5,100x1000")
	if err != nil {
		t.Fatal(err)
	}
	want := []shape{{1000, 5}, {10000, 5}, {100, 1000}}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("shape %d: got %v, want %v", i, got[i], want[i])
		}
	}
	for _, bad := range []string{"", "1000", "x5", "0x5", "1000x", "ax5", "20000000x1"} {
		if _, err := parseShapes(bad); err == nil {
			t.Errorf("parseShapes(%q): no error", bad)
		}
	}
}

func TestMedianCells(t *testing.T) {
	timeout := 120 * time.Second
	for _, tc := range []struct {
		name string
		ms   []measurement
		want string
	}{
		{"odd", []measurement{{Seconds: 3}, {Seconds: 1}, {Seconds: 2}}, "2.00 s"},
		{"timeout is slowest", []measurement{{Seconds: 1}, {TimedOut: true}, {Seconds: 2}}, "2.00 s"},
		{"mostly timeouts", []measurement{{Seconds: 1}, {TimedOut: true}, {TimedOut: true}}, ">120 s"},
		{"skips ignored", []measurement{{Skipped: true}, {Seconds: 0.25}}, "250 ms"},
		{"nothing", []measurement{{Skipped: true}}, "—"},
		{"error shows", []measurement{{Seconds: 1}, {Err: "boom"}}, "error"},
	} {
		if got := fmtMedian(tc.ms, timeout); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

// The generated addresses must not collide: a clash would merge endpoints and make the
// payload smaller than the shape says.
func TestGeneratedAddressesAreDistinct(t *testing.T) {
	s := shape{Services: 300, Endpoints: 5}
	seen := map[string]string{}
	add := func(addr, what string) {
		if prev, ok := seen[addr]; ok {
			t.Fatalf("%s has address %s, as %s", what, addr, prev)
		}
		seen[addr] = what
	}
	for i := range s.Services {
		add(service(i).Spec.ClusterIP, "service")
		for _, sl := range s.slices(i) {
			for _, ep := range sl.Endpoints {
				add(ep.Addresses[0], "endpoint")
			}
		}
	}
	svc, slices := s.addedService(3)
	add(svc.Spec.ClusterIP, "added service")
	for _, ep := range slices[0].Endpoints {
		add(ep.Addresses[0], "added endpoint")
	}
	_, after := s.changedSlice(2, 2)
	add(after.Endpoints[0].Addresses[0], "changed endpoint")
}
