package proxier

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/kproxy-dev/kproxy/pkg/metrics"
	"github.com/kproxy-dev/kproxy/pkg/model"
)

type recordingConntrack struct{ calls int }

func (r *recordingConntrack) CleanStaleEntries(context.Context, *model.Snapshot) error {
	r.calls++
	return nil
}

type recordingHealth struct {
	ports  map[types.NamespacedName]int32
	counts map[types.NamespacedName]int
}

func (r *recordingHealth) SyncServices(_ context.Context, ports map[types.NamespacedName]int32) error {
	r.ports = ports
	return nil
}
func (r *recordingHealth) SyncEndpoints(counts map[types.NamespacedName]int) { r.counts = counts }

func synced(t *testing.T, p *Proxier) {
	t.Helper()
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()
	if err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func TestConntrackCleanupOnlyAfterUDPEndpointChanges(t *testing.T) {
	p, _ := newTestProxier(t)
	ct := &recordingConntrack{}
	p.cfg.Conntrack = ct
	synced(t, p)

	p.OnServiceAdd(testService("web", "172.30.0.1", 80))
	p.OnEndpointSliceAdd(testSlice("web", "10.1.0.1"))
	if err := p.Sync(context.Background()); err != nil || ct.calls != 0 {
		t.Fatalf("TCP change: err=%v conntrack calls=%d", err, ct.calls)
	}
	dns := testService("dns", "172.30.0.10", 53)
	dns.Spec.Ports[0].Protocol = v1.ProtocolUDP
	slice := testSlice("dns", "10.1.0.2")
	slice.Ports[0].Protocol = ptr.To(v1.ProtocolUDP)
	p.OnServiceAdd(dns)
	p.OnEndpointSliceAdd(slice)
	if err := p.Sync(context.Background()); err != nil || ct.calls != 1 {
		t.Fatalf("UDP change: err=%v conntrack calls=%d", err, ct.calls)
	}
}

func TestHealthCheckNodePortsFollowServices(t *testing.T) {
	h := &recordingHealth{}
	p2, ipt := newTestProxierWith(t, func(c *Config) {
		c.ServiceHealth = h
		c.Node = model.Node{Name: "node-1"}
	})
	lb := testService("lb", "172.30.0.5", 80)
	lb.Spec.Type = v1.ServiceTypeLoadBalancer
	lb.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	lb.Spec.HealthCheckNodePort = 30000
	lb.Spec.Ports[0].NodePort = 30080
	s := testSlice("lb", "10.1.0.1", "10.1.0.2")
	s.Endpoints[0].NodeName = ptr.To("node-1")
	p2.OnServiceAdd(lb)
	p2.OnEndpointSliceAdd(s)
	synced(t, p2)
	nn := types.NamespacedName{Namespace: "ns", Name: "lb"}
	if h.ports[nn] != 30000 || h.counts[nn] != 1 {
		t.Errorf("health ports %v counts %v", h.ports, h.counts)
	}
	if got := trace(t, ipt, "172.30.0.5", 80); got != "endpoints=10.1.0.1:8080,10.1.0.2:8080 masq=false verdict=ACCEPT" {
		t.Errorf("cluster IP: %s", got)
	}
	p2.OnServiceDelete(lb)
	if err := p2.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(h.ports) != 0 {
		t.Errorf("health port still served after the service went: %v", h.ports)
	}
}

func TestZoneChangeForcesFullSync(t *testing.T) {
	p, ipt := newTestProxier(t)
	synced(t, p)
	calls := ipt.RestoreCalls()
	p.SetNodeZone("")
	if p.forceFull.Load() {
		t.Error("an unchanged zone forced a full sync")
	}
	p.SetNodeZone("zone-b")
	if !p.forceFull.Load() {
		t.Error("a zone change did not force a full sync")
	}
	if err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ipt.RestoreCalls() != calls+1 || p.needFullSync || p.lastFullSync.IsZero() {
		t.Errorf("sync after zone change: restores=%d", ipt.RestoreCalls()-calls)
	}
}

func TestRuleCountMetricsAndLargeClusterMode(t *testing.T) {
	p, ipt := newTestProxier(t)
	clk := p.cfg.Clock.(*clocktesting.FakeClock)
	p.OnServiceAdd(testService("big", "172.30.0.9", 80))
	big := testSlice("big")
	for i := 0; i < 1001; i++ {
		big.Endpoints = append(big.Endpoints, discovery.Endpoint{Addresses: []string{fmt.Sprintf("10.2.%d.%d", i/250, i%250+1)}})
	}
	p.OnEndpointSliceAdd(big)
	synced(t, p)
	nat := testutil.ToFloat64(metrics.IPTablesRulesTotal.WithLabelValues("nat", "IPv4"))
	if got := ipt.Tables().RuleCount("nat") - 3; int(nat) != got {
		t.Errorf("nat rules metric %v, kernel holds %d (without the 3 built-in jumps)", nat, got)
	}
	if !p.largeCluster {
		t.Fatal("1001 endpoints did not switch to large-cluster mode")
	}
	// In large clusters the hourly full sync is skipped: two hours on, an endpoint
	// change is still applied incrementally.
	clk.Step(2 * FullSyncPeriod)
	big.Endpoints = append(big.Endpoints, discovery.Endpoint{Addresses: []string{"10.3.0.1"}})
	p.OnEndpointSliceUpdate(big)
	before := ipt.RestoreCalls()
	if err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if ipt.RestoreCalls() != before+1 || !p.lastFullSync.Before(clk.Now().Add(-FullSyncPeriod)) {
		t.Error("large-cluster mode ran the hourly full sync")
	}
	if bytes.Contains(ipt.LastPayload(), []byte(":KUBE-SERVICES")) {
		t.Error("the incremental sync rewrote KUBE-SERVICES")
	}
}
