package app

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"k8s.io/utils/ptr"

	"github.com/kproxy-dev/kproxy/pkg/debugstate"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/iptables/fake"
	"github.com/kproxy-dev/kproxy/pkg/proxier"
	"github.com/kproxy-dev/kproxy/pkg/rules"
)

// TestDebugEndpointServesWhatWasApplied: the debug endpoint answers before the proxiers
// exist, then serves each family's last sync with the rules it should hold; every other
// path still reaches the metrics handler.
func TestDebugEndpointServesWhatWasApplied(t *testing.T) {
	d := &debugEndpoint{node: "node-1"}
	h := withDebugEndpoint(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("metrics")) }), d)
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		return rec.Code, rec.Body.String()
	}
	decode := func() debugstate.State {
		t.Helper()
		code, body := get(debugstate.Path)
		var s debugstate.State
		if err := json.Unmarshal([]byte(body), &s); code != 200 || err != nil {
			t.Fatalf("%s: %d %v: %s", debugstate.Path, code, err, body)
		}
		return s
	}
	if s := decode(); s.Node != "node-1" || len(s.Families) != 0 {
		t.Errorf("before the proxiers: %+v", s)
	}
	if code, body := get("/metrics"); code != 200 || body != "metrics" {
		t.Errorf("/metrics: %d %q", code, body)
	}

	ipt := fake.New(v1.IPv4Protocol, iptables.BackendNFT)
	p := proxier.New(context.Background(), proxier.Config{
		Family: v1.IPv4Protocol, IPTables: ipt,
		Rules:         rules.Options{Family: v1.IPv4Protocol, MasqueradeBit: 14, LocalDetector: rules.DetectByCIDR(netip.MustParsePrefix("10.0.0.0/8"))},
		MinSyncPeriod: time.Second, SyncPeriod: 30 * time.Second,
		Clock: clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
	})
	d.setProxiers("nft", []*proxier.Proxier{p})
	if s := decode(); len(s.Families) != 1 || s.Families[0].Synced || s.Families[0].Rules != "" {
		t.Errorf("before the first sync: %+v", s)
	}
	p.OnServiceAdd(&v1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "web"},
		Spec: v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: "172.30.0.1", ClusterIPs: []string{"172.30.0.1"},
			Ports: []v1.ServicePort{{Name: "http", Protocol: v1.ProtocolTCP, Port: 80}}}})
	p.OnEndpointSliceAdd(&discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: "ns", Name: "web-1", Labels: map[string]string{discovery.LabelServiceName: "web"}},
		AddressType: discovery.AddressTypeIPv4,
		Ports:       []discovery.EndpointPort{{Name: ptr.To("http"), Port: ptr.To[int32](8080), Protocol: ptr.To(v1.ProtocolTCP)}},
		Endpoints:   []discovery.Endpoint{{Addresses: []string{"10.1.0.1"}, Conditions: discovery.EndpointConditions{Ready: ptr.To(true)}}},
	})
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()
	if err := p.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	s := decode()
	f := s.Families[0]
	if s.Backend != "nft" || f.Family != "IPv4" || !f.Synced || !f.LastSyncFull || f.ServicePorts != 1 || f.LastSync.IsZero() {
		t.Errorf("after the first sync: %+v", s)
	}
	if len(f.Services) != 1 || f.Services[0].Name != "ns/web:http" || f.Services[0].ClusterIP != "172.30.0.1" ||
		len(f.Services[0].Endpoints) != 1 || f.Services[0].Endpoints[0] != (debugstate.Endpoint{Address: "10.1.0.1:8080", Ready: true, Serving: true}) {
		t.Errorf("services: %+v", f.Services)
	}
	for _, want := range []string{"*nat\n", `"ns/web:http cluster IP"`, "--to-destination 10.1.0.1:8080", "COMMIT\n"} {
		if !strings.Contains(f.Rules, want) {
			t.Errorf("rules lack %q:\n%s", want, f.Rules)
		}
	}
}
