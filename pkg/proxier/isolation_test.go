package proxier

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kproxy-dev/kproxy/pkg/metrics"
	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/rules/rulestest"
	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

// TestKernelRejectedServiceLeavesOthersProgrammed: a Service whose rules the kernel
// refuses is left out, reported, and every other Service is still programmed, on the
// first sync and on later partial ones; once it changes it is tried again.
func TestKernelRejectedServiceLeavesOthersProgrammed(t *testing.T) {
	ctx := context.Background()
	p, ipt := newTestProxier(t)
	// The kernel refuses anything about "poison" (its cluster IP rule, its chains).
	ipt.RejectLines(func(line string) bool { return strings.Contains(line, "ns/poison") })
	p.OnServiceAdd(testService("a", "172.30.0.1", 80))
	p.OnServiceAdd(testService("poison", "172.30.0.9", 80))
	p.OnEndpointSliceAdd(testSlice("a", "10.1.0.1"))
	p.OnEndpointSliceAdd(testSlice("poison", "10.1.0.9"))
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()
	rejectedBefore := testutil.ToFloat64(metrics.KernelRejectedServicesTotal.WithLabelValues("IPv4"))

	if err := p.Sync(ctx); err != nil {
		t.Fatalf("sync failed although only one Service was refused: %v", err)
	}
	if got := trace(t, ipt, "172.30.0.1", 80); !strings.Contains(got, "10.1.0.1:8080") {
		t.Errorf("service a not programmed: %s", got)
	}
	if dump := ipt.Tables().Dump(); strings.Contains(dump, "ns/poison") {
		t.Errorf("rejected service still has rules:\n%s", dump)
	}
	if got := testutil.ToFloat64(metrics.KernelRejectedServicesTotal.WithLabelValues("IPv4")) - rejectedBefore; got != 1 {
		t.Errorf("kproxy_kernel_rejected_services_total grew by %v, want 1", got)
	}

	// A partial sync for another service works without retrying the rejected one.
	p.OnServiceAdd(testService("b", "172.30.0.2", 80))
	p.OnEndpointSliceAdd(testSlice("b", "10.1.0.2"))
	calls := ipt.RestoreCalls()
	if err := p.Sync(ctx); err != nil {
		t.Fatalf("partial sync: %v", err)
	}
	if n := ipt.RestoreCalls() - calls; n != 1 {
		t.Errorf("partial sync ran %d restores, want 1", n)
	}
	if got := trace(t, ipt, "172.30.0.2", 80); !strings.Contains(got, "10.1.0.2:8080") {
		t.Errorf("service b not programmed: %s", got)
	}

	// The kernel now accepts it, and the Service changes: it is programmed.
	ipt.RejectLines(nil)
	p.OnEndpointSliceUpdate(testSlice("poison", "10.1.0.9", "10.1.0.10"))
	if err := p.Sync(ctx); err != nil {
		t.Fatalf("sync after the change: %v", err)
	}
	if got := trace(t, ipt, "172.30.0.9", 80); !strings.Contains(got, "10.1.0.") {
		t.Errorf("changed service not programmed again: %s", got)
	}
}

// TestFailedSyncKeepsPendingUDPCleanup: the stale UDP conntrack cleanup a change asks for
// must survive a failed sync and run after the next successful one.
func TestFailedSyncKeepsPendingUDPCleanup(t *testing.T) {
	ctx := context.Background()
	cleaner := &countingCleaner{}
	p, ipt := newTestProxierWith(t, func(c *Config) { c.Conntrack = cleaner })
	udp := testService("dns", "172.30.0.10", 53)
	udp.Spec.Ports[0].Protocol = v1.ProtocolUDP
	slice := testSlice("dns", "10.1.0.1")
	slice.Ports[0].Protocol = &udp.Spec.Ports[0].Protocol
	p.OnServiceAdd(udp)
	p.OnEndpointSliceAdd(slice)
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	base := cleaner.calls

	moved := slice.DeepCopy()
	moved.Endpoints[0].Addresses = []string{"10.1.0.2"}
	p.OnEndpointSliceUpdate(moved)
	ipt.SetLockHeld(true)
	if err := p.Sync(ctx); err == nil {
		t.Fatal("sync succeeded with the lock held")
	}
	ipt.SetLockHeld(false)
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if cleaner.calls != base+1 {
		t.Errorf("conntrack cleanups after the retried sync: %d, want 1", cleaner.calls-base)
	}
}

// TestDriftForcesFullSync: a rule another program inserts into KUBE-SERVICES, or a
// service chain it deletes, is found by the drift check and gone after the full sync it
// forces; without drift the check finds nothing.
func TestDriftForcesFullSync(t *testing.T) {
	ctx := context.Background()
	p, ipt := newTestProxier(t)
	p.OnServiceAdd(testService("a", "172.30.0.1", 80))
	p.OnEndpointSliceAdd(testSlice("a", "10.1.0.1"))
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if d := p.checkDrift(ctx); len(d) != 0 {
		t.Fatalf("drift found right after a sync: %v", d)
	}
	want := ipt.Tables().Dump()

	for name, edit := range map[string]func(ruleset.Tables){
		"foreign rule in nat KUBE-SERVICES": func(tb ruleset.Tables) {
			c := tb["nat"].Chains
			c[rules.ChainServices] = append([]ruleset.Rule{{"-j", "RETURN"}}, c[rules.ChainServices]...)
		},
		"foreign rule in filter KUBE-EXTERNAL-SERVICES": func(tb ruleset.Tables) {
			c := tb["filter"].Chains
			c[rules.ChainExternalServices] = append(c[rules.ChainExternalServices], ruleset.Rule{"-j", "ACCEPT"})
		},
		"foreign rule in filter KUBE-FORWARD": func(tb ruleset.Tables) {
			c := tb["filter"].Chains
			c[rules.ChainForward] = append([]ruleset.Rule{{"-j", "ACCEPT"}}, c[rules.ChainForward]...)
		},
		"nat OUTPUT jump deleted": func(tb ruleset.Tables) {
			tb["nat"].Chains["OUTPUT"] = nil
		},
		"service chain flushed": func(tb ruleset.Tables) {
			for c := range tb["nat"].Chains {
				if strings.HasPrefix(c, "KUBE-SEP-") {
					tb["nat"].Chains[c] = nil
				}
			}
		},
	} {
		tables := ipt.Tables()
		edit(tables)
		ipt.SetTables(tables)
		drift := p.checkDrift(ctx)
		if len(drift) == 0 {
			t.Errorf("%s: no drift found", name)
			continue
		}
		p.ForceFullSync()
		if err := p.Sync(ctx); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := ipt.Tables().Dump(); got != want {
			t.Errorf("%s: not repaired by the full sync:\n%s", name, rulestest.Diff(want, got))
		}
	}
}

// TestDriftWatcherTicks: the watcher checks every sync period and asks for a full sync.
func TestDriftWatcherTicks(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	p, ipt := newTestProxierWith(t, func(c *Config) { c.Clock = clk })
	p.OnServiceAdd(testService("a", "172.30.0.1", 80))
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	tables := ipt.Tables()
	tables["nat"].Chains[rules.ChainServices] = append([]ruleset.Rule{{"-j", "RETURN"}}, tables["nat"].Chains[rules.ChainServices]...)
	ipt.SetTables(tables)
	before := testutil.ToFloat64(metrics.RulesDriftTotal.WithLabelValues("IPv4"))
	go p.watchDrift(ctx, time.Minute)
	deadline := time.Now().Add(10 * time.Second)
	for !p.forceFull.Load() && time.Now().Before(deadline) {
		clk.Step(time.Minute)
		time.Sleep(10 * time.Millisecond)
	}
	if !p.forceFull.Load() {
		t.Fatal("the drift watcher did not ask for a full sync")
	}
	if got := testutil.ToFloat64(metrics.RulesDriftTotal.WithLabelValues("IPv4")) - before; got < 1 {
		t.Errorf("kproxy_rules_drift_total did not grow")
	}
}

type countingCleaner struct{ calls int }

func (c *countingCleaner) CleanStaleEntries(context.Context, *model.Snapshot) error {
	c.calls++
	return nil
}

// fakeAcct is an nfacct.Interface whose counters can be made unavailable.
type fakeAcct struct {
	broken  bool
	created map[string]bool
}

func (f *fakeAcct) Ensure(name string) error {
	if f.broken {
		return errors.New("nfnetlink_acct not in this kernel")
	}
	f.created[name] = true
	return nil
}

func (f *fakeAcct) Packets(string) (uint64, error) { return 0, nil }

// TestNFAcctRulesFollowCounters: like upstream, the INVALID drop and localhost node port
// rules count into nfacct only when the counters could be created on the full sync.
func TestNFAcctRulesFollowCounters(t *testing.T) {
	for _, broken := range []bool{false, true} {
		acct := &fakeAcct{broken: broken, created: map[string]bool{}}
		p, ipt := newTestProxierWith(t, func(c *Config) {
			c.NFAcct = acct
			c.Rules.DropInvalid = true
			c.Rules.LocalhostNodePorts = true
		})
		svc := testService("np", "172.30.0.5", 80)
		svc.Spec.Type = v1.ServiceTypeNodePort
		svc.Spec.Ports[0].NodePort = 30005
		p.OnServiceAdd(svc)
		p.OnEndpointSliceAdd(testSlice("np", "10.1.0.5"))
		p.OnServicesSynced()
		p.OnEndpointSlicesSynced()
		if err := p.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		dump := ipt.Tables().Dump()
		want := 2
		if broken {
			want = 0
		}
		if got := strings.Count(dump, "-m nfacct"); got != want {
			t.Errorf("broken=%t: %d nfacct rules, want %d:\n%s", broken, got, want, dump)
		}
		if !broken && (!acct.created["ct_state_invalid_dropped_pkts"] || !acct.created["localhost_nps_accepted_pkts"]) {
			t.Errorf("counters created: %v", acct.created)
		}
	}
}

// TestPartialSyncOnDriftIsNotBlamedOnTheService: when another program deleted a rule that
// a partial sync deletes, the edit fails; that is drift, not a bad Service. The sync
// retries in full at once and programs the Service, which is not left out. (The first run
// of the differential test found kproxy blaming, and so dropping, such a Service.)
func TestPartialSyncOnDriftIsNotBlamedOnTheService(t *testing.T) {
	ctx := context.Background()
	p, ipt := syncedTwoServices(t)
	tables := ipt.Tables()
	var kept []ruleset.Rule
	for _, r := range tables["nat"].Chains[rules.ChainServices] {
		if !strings.Contains(r.String(), "ns/a:p") {
			kept = append(kept, r)
		}
	}
	tables["nat"].Chains[rules.ChainServices] = kept
	ipt.SetTables(tables)
	rejectedBefore := testutil.ToFloat64(metrics.KernelRejectedServicesTotal.WithLabelValues("IPv4"))

	// A new port: the partial sync deletes a's old KUBE-SERVICES rule, which is gone.
	p.OnServiceUpdate(testService("a", "172.30.0.1", 81))
	calls := ipt.RestoreCalls()
	if err := p.Sync(ctx); err != nil {
		t.Fatalf("sync over drift: %v", err)
	}
	if n := ipt.RestoreCalls() - calls; n != 2 {
		t.Errorf("%d restores, want 2 (the failed partial one, then the full one)", n)
	}
	if got := trace(t, ipt, "172.30.0.1", 81); !strings.Contains(got, "10.1.0.1:8080") {
		t.Errorf("service a not programmed after the full retry: %s", got)
	}
	if len(p.rejected) != 0 || testutil.ToFloat64(metrics.KernelRejectedServicesTotal.WithLabelValues("IPv4")) != rejectedBefore {
		t.Errorf("drift was blamed on a Service: rejected %v", p.rejected)
	}
}
