package proxier

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/iptables/fake"
	"github.com/kproxy-dev/kproxy/pkg/metrics"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/ruleset"
	"github.com/kproxy-dev/kproxy/pkg/runner"
)

func newTestProxier(t *testing.T) (*Proxier, *fake.Fake) {
	return newTestProxierWith(t, nil)
}

// newTestProxierWith builds a proxier on a fake; configure may adjust the config first.
func newTestProxierWith(t *testing.T, configure func(*Config)) (*Proxier, *fake.Fake) {
	t.Helper()
	ipt := fake.New(v1.IPv4Protocol, iptables.BackendNFT)
	cfg := Config{
		Family:   v1.IPv4Protocol,
		IPTables: ipt,
		Rules: rules.Options{
			Family: v1.IPv4Protocol, MasqueradeBit: 14,
			LocalDetector: rules.DetectByCIDR(netip.MustParsePrefix("10.0.0.0/8")),
		},
		MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second,
		Clock: clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
	}
	if configure != nil {
		configure(&cfg)
	}
	return New(context.Background(), cfg), ipt
}

func testService(name, ip string, port int32) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: ip, ClusterIPs: []string{ip},
			Ports: []v1.ServicePort{{Name: "p", Protocol: v1.ProtocolTCP, Port: port}}},
	}
}

func testSlice(svc string, addrs ...string) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: svc + "-abc", Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("p"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
	}
	for _, a := range addrs {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{Addresses: []string{a}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}})
	}
	return s
}

func trace(t *testing.T, ipt *fake.Fake, dst string, port int) string {
	t.Helper()
	tr := &ruleset.Tracer{Tables: ipt.Tables(), LocalAddrs: []netip.Addr{netip.MustParseAddr("192.168.0.2")}, MasqueradeMark: 0x4000}
	res, err := tr.Trace(ruleset.Packet{Src: netip.MustParseAddr("10.0.0.2"), Dst: netip.MustParseAddr(dst), Proto: "tcp", DPort: port})
	if err != nil {
		t.Fatalf("trace: %v", err)
	}
	return res.String()
}

func TestNoSyncBeforeBothListsAreDone(t *testing.T) {
	p, ipt := newTestProxier(t)
	ctx := context.Background()
	p.OnServiceAdd(testService("a", "172.30.0.1", 80))
	p.OnServicesSynced()
	// Not ready: the runner neither retries nor holds the next sync back.
	if err := p.Sync(ctx); !errors.Is(err, runner.ErrNotReady) || ipt.RestoreCalls() != 0 {
		t.Fatalf("synced with only services listed: err=%v restores=%d", err, ipt.RestoreCalls())
	}
	p.OnEndpointSlicesSynced()
	if err := p.Sync(ctx); err != nil || ipt.RestoreCalls() != 1 {
		t.Fatalf("first sync: err=%v restores=%d", err, ipt.RestoreCalls())
	}
}

// TestInitialListEventsRequestNoSync: the events of the initial lists do not each ask the
// runner for a sync (it could not run, and would be attempted at once, thousands of
// times at 10k Services); the end of each list does, and every change after both.
func TestInitialListEventsRequestNoSync(t *testing.T) {
	clk := clocktesting.NewFakeClock(time.Date(2031, 1, 1, 0, 0, 0, 0, time.UTC))
	p, _ := newTestProxierWith(t, func(c *Config) { c.Clock = clk })
	gauge := metrics.SyncProxyRulesLastQueuedTimestamp.WithLabelValues(string(v1.IPv4Protocol))
	gauge.Set(0)
	var lastRequest time.Time // zero: none yet
	for _, step := range []struct {
		what     string
		event    func()
		requests bool
	}{
		{"a Service in the initial list", func() { p.OnServiceAdd(testService("a", "172.30.0.1", 80)) }, false},
		{"a slice in the initial list", func() { p.OnEndpointSliceAdd(testSlice("a", "10.1.0.1")) }, false},
		{"the end of the Services' list", p.OnServicesSynced, true},
		{"a slice before the slices' list ended", func() { p.OnEndpointSliceAdd(testSlice("b", "10.1.0.2")) }, false},
		{"the end of the slices' list", p.OnEndpointSlicesSynced, true},
		{"a change after both lists", func() { p.OnServiceAdd(testService("c", "172.30.0.3", 80)) }, true},
	} {
		clk.Step(time.Second)
		step.event()
		if step.requests {
			lastRequest = clk.Now()
		}
		want := float64(0)
		if !lastRequest.IsZero() {
			want = float64(lastRequest.Unix())
		}
		if got := testutil.ToFloat64(gauge); got != want {
			t.Errorf("after %s: last sync request at %v, want %v", step.what, got, want)
		}
	}
}

// syncedTwoServices returns a proxier that has synced services a (172.30.0.1:80 ->
// 10.1.0.1) and b (172.30.0.2:80 -> 10.1.0.2) onto its fake.
func syncedTwoServices(t *testing.T) (*Proxier, *fake.Fake) {
	t.Helper()
	p, ipt := newTestProxier(t)
	p.OnServiceAdd(testService("a", "172.30.0.1", 80))
	p.OnServiceAdd(testService("b", "172.30.0.2", 80))
	p.OnEndpointSliceAdd(testSlice("a", "10.1.0.1"))
	p.OnEndpointSliceAdd(testSlice("b", "10.1.0.2"))
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()
	if err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	return p, ipt
}

func TestSyncProgramsAndPartialSyncsTouchOnlyChangedServices(t *testing.T) {
	p, ipt := syncedTwoServices(t)
	ctx := context.Background()
	if got := trace(t, ipt, "172.30.0.1", 80); got != "endpoints=10.1.0.1:8080 masq=false verdict=ACCEPT" {
		t.Errorf("service a: %s", got)
	}
	// The first sync is full: it hooks our chains into the built-in ones.
	if !strings.Contains(ipt.Tables().Dump(), "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES") {
		t.Error("PREROUTING jump missing after a full sync")
	}

	// b gains an endpoint: the partial payload rewrites b's chains, not a's.
	p.OnEndpointSliceUpdate(testSlice("b", "10.1.0.2", "10.1.0.3"))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	payload := string(ipt.LastPayload())
	if strings.Contains(payload, "10.1.0.1") {
		t.Errorf("partial sync rewrote unchanged service a:\n%s", payload)
	}
	if got := trace(t, ipt, "172.30.0.2", 80); got != "endpoints=10.1.0.2:8080,10.1.0.3:8080 masq=false verdict=ACCEPT" {
		t.Errorf("service b after partial sync: %s", got)
	}
	if got := trace(t, ipt, "172.30.0.1", 80); got != "endpoints=10.1.0.1:8080 masq=false verdict=ACCEPT" {
		t.Errorf("service a after partial sync: %s", got)
	}

	// Deleting b removes its chains: the kernel state equals a fresh full render of a.
	p.OnServiceDelete(testService("b", "172.30.0.2", 80))
	p.OnEndpointSliceDelete(testSlice("b"))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if n := countPrefix(ipt.Tables(), "KUBE-SEP-"); n != 1 {
		t.Errorf("%d endpoint chains left, want 1 (service a's)", n)
	}
}

func countPrefix(t ruleset.Tables, prefix string) int {
	n := 0
	for c := range t["nat"].Chains {
		if strings.HasPrefix(c, prefix) {
			n++
		}
	}
	return n
}

func TestFailedRestoreKeepsOldRulesAndForcesFullSync(t *testing.T) {
	p, ipt := newTestProxier(t)
	ctx := context.Background()
	p.OnServiceAdd(testService("a", "172.30.0.1", 80))
	p.OnEndpointSliceAdd(testSlice("a", "10.1.0.1"))
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	before := ipt.Tables().Dump()
	failures := testutil.ToFloat64(metrics.IPTablesRestoreFailuresTotal.WithLabelValues("IPv4"))

	p.OnEndpointSliceUpdate(testSlice("a", "10.1.0.1", "10.1.0.9"))
	ipt.FailNextRestore(errors.New("xtables lock held"))
	if err := p.Sync(ctx); err == nil {
		t.Fatal("sync succeeded although restore failed")
	}
	if ipt.Tables().Dump() != before {
		t.Error("a failed restore changed the rules")
	}
	if got := testutil.ToFloat64(metrics.IPTablesRestoreFailuresTotal.WithLabelValues("IPv4")); got != failures+1 {
		t.Errorf("restore failures %v, want %v", got, failures+1)
	}
	// The retry has no pending change left in the tracker, so only a full sync can
	// program the lost update.
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := trace(t, ipt, "172.30.0.1", 80); got != "endpoints=10.1.0.1:8080,10.1.0.9:8080 masq=false verdict=ACCEPT" {
		t.Errorf("after retry: %s", got)
	}
}

func TestBadInputDoesNotBreakOtherServices(t *testing.T) {
	p, ipt := newTestProxier(t)
	ctx := context.Background()
	before := testutil.ToFloat64(metrics.InvalidObjectsTotal.WithLabelValues("EndpointSlice", "bad_address"))
	p.OnServiceAdd(testService("good", "172.30.0.1", 80))
	p.OnServiceAdd(testService("bad", "172.30.0.2", 80))
	p.OnEndpointSliceAdd(testSlice("good", "10.1.0.1"))
	p.OnEndpointSliceAdd(testSlice("bad", "10.1.0.300", "10.1.0.5"))
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	if got := trace(t, ipt, "172.30.0.1", 80); got != "endpoints=10.1.0.1:8080 masq=false verdict=ACCEPT" {
		t.Errorf("good service: %s", got)
	}
	if got := trace(t, ipt, "172.30.0.2", 80); got != "endpoints=10.1.0.5:8080 masq=false verdict=ACCEPT" {
		t.Errorf("bad service keeps its good endpoint: %s", got)
	}
	if got := testutil.ToFloat64(metrics.InvalidObjectsTotal.WithLabelValues("EndpointSlice", "bad_address")); got != before+1 {
		t.Errorf("invalid counter %v, want %v", got, before+1)
	}
}
