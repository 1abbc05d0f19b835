package iptables_test

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	testingclock "k8s.io/utils/clock/testing"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/iptables/fake"
)

var canaryTables = []string{"mangle", "nat", "filter"}

const monitorInterval = 30 * time.Second

// monitorHarness runs Monitor against a fake and a fake clock. Monitor waits
// on exactly one timer at a time, so one waiter on the clock means Monitor has
// finished reacting to the last Step and is waiting again: the tests step
// the clock only then, and need no sleeps.
type monitorHarness struct {
	t   *testing.T
	ipt *fake.Fake
	clk *testingclock.FakeClock
	buf ktesting.Buffer

	mu sync.Mutex
	// reloads holds, per reloadFunc call, the tables that still had a canary
	// at the time.
	reloads [][]string
}

// startMonitor runs Monitor on a goroutine until the test ends. setup, if
// not nil, runs before Monitor starts.
func startMonitor(t *testing.T, setup func(*fake.Fake)) *monitorHarness {
	t.Helper()
	return startMonitorWith(t, setup, nil)
}

// startMonitorWith is startMonitor with wrap, if not nil, wrapping the fake
// that Monitor is given.
func startMonitorWith(t *testing.T, setup func(*fake.Fake), wrap func(*fake.Fake) iptables.Interface) *monitorHarness {
	t.Helper()
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
	h := &monitorHarness{
		t:   t,
		ipt: fake.New(v1.IPv4Protocol, iptables.BackendNFT),
		clk: testingclock.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		buf: logger.GetSink().(ktesting.Underlier).GetBuffer(),
	}
	if setup != nil {
		setup(h.ipt)
	}
	var ipt iptables.Interface = h.ipt
	if wrap != nil {
		ipt = wrap(h.ipt)
	}
	ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
	done := make(chan struct{})
	go func() {
		defer close(done)
		iptables.Monitor(ctx, ipt, iptables.CanaryChain, canaryTables, h.reload, monitorInterval, h.clk)
	}()
	// Registered after the logger's own cleanup, so it runs first: Monitor
	// has returned before the logger stops.
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("Monitor did not return after its context was cancelled")
		}
	})
	h.waitIdle()
	return h
}

func (h *monitorHarness) reload() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.reloads = append(h.reloads, h.canaries())
}

// reloadCount is how often reloadFunc has been called.
func (h *monitorHarness) reloadCount() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.reloads)
}

// canariesAtReload returns the tables that had a canary when reloadFunc was
// called for the i-th time (from 0).
func (h *monitorHarness) canariesAtReload(i int) []string {
	h.t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if i >= len(h.reloads) {
		h.t.Fatalf("reloadFunc called %d times, want at least %d", len(h.reloads), i+1)
	}
	return h.reloads[i]
}

// canaries returns the tables that hold the canary chain now.
func (h *monitorHarness) canaries() []string {
	var have []string
	tables := h.ipt.Tables()
	for _, table := range canaryTables {
		if _, ok := tables[table].Chains[iptables.CanaryChain]; ok {
			have = append(have, table)
		}
	}
	return have
}

// waitIdle waits until Monitor is waiting on the clock.
func (h *monitorHarness) waitIdle() {
	h.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for h.clk.Waiters() != 1 {
		if time.Now().After(deadline) {
			h.t.Fatalf("Monitor is not waiting on the clock (%d waiters)", h.clk.Waiters())
		}
		time.Sleep(time.Millisecond)
	}
}

// step moves the clock by d and waits until Monitor has reacted.
func (h *monitorHarness) step(d time.Duration) {
	h.t.Helper()
	h.clk.Step(d)
	h.waitIdle()
}

// deleteCanaries deletes the canary from tables, as a flush by another
// program would.
func (h *monitorHarness) deleteCanaries(tables ...string) {
	h.t.Helper()
	var b strings.Builder
	for _, table := range tables {
		fmt.Fprintf(&b, "*%s\n-X %s\nCOMMIT\n", table, iptables.CanaryChain)
	}
	if err := h.ipt.Restore(context.Background(), []byte(b.String())); err != nil {
		h.t.Fatalf("deleting canaries from %v: %v", tables, err)
	}
}

func (h *monitorHarness) wantCanaries(want ...string) {
	h.t.Helper()
	if got := h.canaries(); strings.Join(got, ",") != strings.Join(want, ",") {
		h.t.Errorf("canary chain in tables %v, want %v", got, want)
	}
}

func (h *monitorHarness) wantReloads(want int) {
	h.t.Helper()
	if got := h.reloadCount(); got != want {
		h.t.Errorf("reloadFunc called %d times, want %d", got, want)
	}
}

func (h *monitorHarness) wantLog(substr string, want bool) {
	h.t.Helper()
	if got := strings.Contains(h.buf.String(), substr); got != want {
		h.t.Errorf("log contains %q = %v, want %v; log:\n%s", substr, got, want, h.buf.String())
	}
}

func TestMonitorCreatesCanariesAndLeavesThemAlone(t *testing.T) {
	h := startMonitor(t, nil)
	h.wantCanaries(canaryTables...)
	for range 5 {
		h.step(monitorInterval)
	}
	h.wantReloads(0)
	h.wantCanaries(canaryTables...)
}

func TestMonitorReloadsAfterFlush(t *testing.T) {
	h := startMonitor(t, nil)

	// Deleted between two checks: nothing happens until the next check.
	h.deleteCanaries(canaryTables...)
	h.step(monitorInterval - time.Second)
	h.wantReloads(0)
	h.step(time.Second)
	h.wantReloads(1)
	h.wantCanaries(canaryTables...)
	if got := h.canariesAtReload(0); len(got) != 0 {
		t.Errorf("canaries re-created before reloadFunc ran: %v", got)
	}

	// The re-created canaries are watched again.
	h.step(monitorInterval)
	h.wantReloads(1)
	h.deleteCanaries(canaryTables...)
	h.step(monitorInterval)
	h.wantReloads(2)
	h.wantCanaries(canaryTables...)
	h.wantLog("Inconsistent iptables state detected", false)
}

func TestMonitorWaitsForFlushToFinish(t *testing.T) {
	h := startMonitor(t, nil)

	// A table-by-table flush caught after the mangle table.
	h.deleteCanaries("mangle")
	h.step(monitorInterval)
	h.wantReloads(0)
	h.step(100 * time.Millisecond)
	h.deleteCanaries("nat")
	h.step(100 * time.Millisecond)
	h.wantReloads(0)
	h.deleteCanaries("filter")
	h.step(100 * time.Millisecond)
	h.wantReloads(1)
	h.wantCanaries(canaryTables...)
	h.wantLog("Inconsistent iptables state detected", false)
}

func TestMonitorReloadsOnInconsistentState(t *testing.T) {
	h := startMonitor(t, nil)

	// Only the mangle canary goes: Monitor gives the other tables 5s, then
	// reloads anyway.
	h.deleteCanaries("mangle")
	h.step(monitorInterval)
	var waited time.Duration
	for h.reloadCount() == 0 {
		if waited > time.Minute {
			t.Fatal("no reload a minute after the mangle canary was deleted")
		}
		h.step(100 * time.Millisecond)
		waited += 100 * time.Millisecond
	}
	if waited < 5*time.Second || waited > 5*time.Second+100*time.Millisecond {
		t.Errorf("reloaded %v after noticing the deletion, want 5s", waited)
	}
	h.wantReloads(1)
	if got := h.canariesAtReload(0); strings.Join(got, ",") != "nat,filter" {
		t.Errorf("canaries at reload = %v, want [nat filter]", got)
	}
	h.wantLog("Inconsistent iptables state detected", true)
	h.wantCanaries(canaryTables...)

	// Back to checking every interval.
	h.step(monitorInterval)
	h.wantReloads(1)
}

func TestMonitorIgnoresBusy(t *testing.T) {
	h := startMonitor(t, nil)

	// With the lock held the check cannot tell, which is not a flush.
	h.deleteCanaries(canaryTables...)
	h.ipt.SetLockHeld(true)
	h.step(monitorInterval)
	h.step(monitorInterval)
	h.wantReloads(0)
	h.wantLog("not a flush", true)

	h.ipt.SetLockHeld(false)
	h.step(monitorInterval)
	h.wantReloads(1)
	h.wantCanaries(canaryTables...)
}

func TestMonitorIgnoresBusyWhileWaitingForFlush(t *testing.T) {
	h := startMonitor(t, nil)

	// Busy answers from the other tables keep Monitor waiting.
	h.deleteCanaries(canaryTables...)
	h.step(monitorInterval) // mangle gone...
	h.wantReloads(1)        // ...and the rest at once

	h.deleteCanaries("mangle")
	h.step(monitorInterval)
	h.ipt.SetLockHeld(true)
	h.step(100 * time.Millisecond)
	h.wantReloads(1)
	h.ipt.SetLockHeld(false)
	h.deleteCanaries("nat", "filter")
	h.step(100 * time.Millisecond)
	h.wantReloads(2)
	h.wantCanaries(canaryTables...)
}

// brokenChainExists is a fake whose ChainExists fails, while broken is set,
// the way a broken iptables binary would: neither an answer nor busy.
type brokenChainExists struct {
	*fake.Fake
	broken atomic.Bool
}

func (b *brokenChainExists) ChainExists(ctx context.Context, table, chain string) (bool, error) {
	if b.broken.Load() {
		return false, fmt.Errorf("iptables -t %s -S %s 1: exit status 2: unknown option", table, chain)
	}
	return b.Fake.ChainExists(ctx, table, chain)
}

func TestMonitorTreatsOtherErrorsAsDeleted(t *testing.T) {
	var b *brokenChainExists
	h := startMonitorWith(t, nil, func(f *fake.Fake) iptables.Interface {
		b = &brokenChainExists{Fake: f}
		return b
	})

	// As kube-proxy: a check that fails for a reason other than a busy lock
	// reloads, since a needless full sync is cheaper than a missed flush.
	b.broken.Store(true)
	h.step(monitorInterval)
	h.wantReloads(1)
	h.wantLog("treating it as deleted", true)
	b.broken.Store(false)
	h.step(monitorInterval)
	h.wantReloads(1)
	h.wantCanaries(canaryTables...)
}

func TestMonitorRetriesCanaryCreation(t *testing.T) {
	h := startMonitor(t, func(f *fake.Fake) { f.SetLockHeld(true) })
	h.wantCanaries()
	h.wantLog("Could not set up iptables canary", true)

	h.ipt.SetLockHeld(false)
	h.step(monitorInterval)
	h.wantCanaries(canaryTables...)
	h.wantReloads(0)
}

func TestMonitorRejectsBadArguments(t *testing.T) {
	ipt := fake.New(v1.IPv4Protocol, iptables.BackendNFT)
	clk := testingclock.NewFakeClock(time.Now())
	logger := ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
	ctx := klog.NewContext(context.Background(), logger)
	for _, tc := range []struct {
		name     string
		tables   []string
		interval time.Duration
	}{
		{"no tables", nil, time.Second},
		{"no interval", canaryTables, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan struct{})
			go func() {
				defer close(done)
				iptables.Monitor(ctx, ipt, iptables.CanaryChain, tc.tables, func() {}, tc.interval, clk)
			}()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Monitor with bad arguments did not return")
			}
		})
	}
	if !strings.Contains(logger.GetSink().(ktesting.Underlier).GetBuffer().String(), "invalid arguments") {
		t.Error("bad arguments were not logged")
	}
}

func TestMonitorRuleReloadsWhenTheJumpIsGone(t *testing.T) {
	ipt := fake.New(v1.IPv4Protocol, iptables.BackendNFT)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	args := []string{"-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"}
	payload := "*nat\n:KUBE-SERVICES - [0:0]\n-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\nCOMMIT\n"
	if err := ipt.Restore(ctx, []byte(payload)); err != nil {
		t.Fatal(err)
	}
	clk := testingclock.NewFakeClock(time.Now())
	reloads := make(chan struct{}, 10)
	done := make(chan struct{})
	go func() {
		iptables.MonitorRule(ctx, ipt, "nat", "PREROUTING", args, func() { reloads <- struct{}{} }, time.Second, clk)
		close(done)
	}()
	step := func() {
		for !clk.HasWaiters() {
			time.Sleep(time.Millisecond)
		}
		clk.Step(time.Second)
	}
	step()
	step() // two checks with the jump in place
	select {
	case <-reloads:
		t.Fatal("reloaded while the jump was there")
	default:
	}
	if err := ipt.DeleteRule(ctx, "nat", "PREROUTING", args...); err != nil {
		t.Fatal(err)
	}
	step()
	select {
	case <-reloads:
	case <-time.After(5 * time.Second):
		t.Fatal("no reload after the jump went away")
	}
	cancel()
	<-done
}
