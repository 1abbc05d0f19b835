package metrics

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// touchAll gives every vector a child so that it appears in a scrape; an
// empty vector exports nothing.
func touchAll() {
	SyncProxyRulesLatency.WithLabelValues("IPv4").Observe(0.02)
	SyncFullProxyRulesLatency.WithLabelValues("IPv4").Observe(0.02)
	SyncPartialProxyRulesLatency.WithLabelValues("IPv6").Observe(0.01)
	SyncProxyRulesLastTimestamp.WithLabelValues("IPv4").Set(1e9)
	SyncProxyRulesLastQueuedTimestamp.WithLabelValues("IPv4").Set(1e9)
	NetworkProgrammingLatency.WithLabelValues("IPv4").Observe(0.3)
	EndpointChangesPending.Set(0)
	EndpointChangesTotal.Add(0)
	ServiceChangesPending.Set(0)
	ServiceChangesTotal.Add(0)
	IPTablesRestoreFailuresTotal.WithLabelValues("IPv4").Add(0)
	IPTablesPartialRestoreFailuresTotal.WithLabelValues("IPv4").Add(0)
	IPTablesRulesTotal.WithLabelValues("nat", "IPv4").Set(42)
	IPTablesRulesLastSync.WithLabelValues("filter", "IPv6").Set(7)
	SyncProxyRulesNoLocalEndpointsTotal.WithLabelValues("internal", "IPv4").Set(0)
	ProxyHealthzTotal.WithLabelValues("200").Add(0)
	ProxyLivezTotal.WithLabelValues("503").Add(0)
	ConntrackReconcilerSyncDuration.WithLabelValues("IPv4").Observe(0.001)
	ConntrackReconcilerDeletedEntriesTotal.WithLabelValues("IPv4").Add(0)
	InvalidObjectsTotal.WithLabelValues("EndpointSlice", "BadAddress").Add(0)
	RulesDriftTotal.WithLabelValues("IPv4")
	KernelRejectedServicesTotal.WithLabelValues("IPv4")
}

func TestRegisterIsIdempotent(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if err := Register(reg); err != nil {
		t.Fatalf("first Register: %v", err)
	}
	if err := Register(reg); err != nil {
		t.Fatalf("second Register into the same registry: %v", err)
	}
	if err := Register(prometheus.NewPedanticRegistry()); err != nil {
		t.Fatalf("Register into a second registry: %v", err)
	}
}

func TestRegisterRejectsForeignCollector(t *testing.T) {
	reg := prometheus.NewRegistry()
	impostor := prometheus.NewCounter(prometheus.CounterOpts{
		Subsystem: "kubeproxy",
		Name:      "sync_proxy_rules_service_changes_total",
		Help:      "Not ours.",
	})
	reg.MustRegister(impostor)
	if err := Register(reg); err == nil {
		t.Fatalf("Register succeeded although the registry holds another collector with one of our names")
	}
}

// TestMetricNamesAndTypes pins the full set of exported metric families;
// adding, renaming or retyping one must be a deliberate change here.
func TestMetricNamesAndTypes(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if err := Register(reg); err != nil {
		t.Fatalf("Register: %v", err)
	}
	touchAll()
	families, err := reg.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	got := map[string]string{}
	for _, f := range families {
		got[f.GetName()] = f.GetType().String()
	}
	want := map[string]string{
		"kubeproxy_sync_proxy_rules_duration_seconds":                        "HISTOGRAM",
		"kubeproxy_sync_full_proxy_rules_duration_seconds":                   "HISTOGRAM",
		"kubeproxy_sync_partial_proxy_rules_duration_seconds":                "HISTOGRAM",
		"kubeproxy_sync_proxy_rules_last_timestamp_seconds":                  "GAUGE",
		"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds":           "GAUGE",
		"kubeproxy_network_programming_duration_seconds":                     "HISTOGRAM",
		"kubeproxy_sync_proxy_rules_endpoint_changes_pending":                "GAUGE",
		"kubeproxy_sync_proxy_rules_endpoint_changes_total":                  "COUNTER",
		"kubeproxy_sync_proxy_rules_service_changes_pending":                 "GAUGE",
		"kubeproxy_sync_proxy_rules_service_changes_total":                   "COUNTER",
		"kubeproxy_sync_proxy_rules_iptables_restore_failures_total":         "COUNTER",
		"kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total": "COUNTER",
		"kubeproxy_sync_proxy_rules_iptables_total":                          "GAUGE",
		"kubeproxy_sync_proxy_rules_iptables_last":                           "GAUGE",
		"kubeproxy_sync_proxy_rules_no_local_endpoints_total":                "GAUGE",
		"kubeproxy_proxy_healthz_total":                                      "COUNTER",
		"kubeproxy_proxy_livez_total":                                        "COUNTER",
		"kubeproxy_conntrack_reconciler_sync_duration_seconds":               "HISTOGRAM",
		"kubeproxy_conntrack_reconciler_deleted_entries_total":               "COUNTER",
		"kproxy_invalid_objects_total":                                       "COUNTER",
		"kproxy_rules_drift_total":                                           "COUNTER",
		"kproxy_kernel_rejected_services_total":                              "COUNTER",
	}
	for name, typ := range want {
		if got[name] != typ {
			t.Errorf("%s: got type %q, want %q", name, got[name], typ)
		}
	}
	for name := range got {
		if _, ok := want[name]; !ok {
			t.Errorf("unexpected metric family %s", name)
		}
	}
}

func TestSyncDurationBuckets(t *testing.T) {
	want := []float64{0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.024, 2.048, 4.096, 8.192, 16.384}
	if !slices.Equal(syncBuckets, want) {
		t.Fatalf("sync buckets = %v, want %v", syncBuckets, want)
	}
}

func TestNetworkProgrammingBuckets(t *testing.T) {
	want := []float64{0.25, 0.5}
	for b := 1; b <= 59; b++ {
		want = append(want, float64(b))
	}
	for b := 60; b <= 115; b += 5 {
		want = append(want, float64(b))
	}
	for b := 120; b <= 300; b += 30 {
		want = append(want, float64(b))
	}
	if !slices.Equal(networkProgrammingBuckets, want) {
		t.Fatalf("network programming buckets = %v, want %v", networkProgrammingBuckets, want)
	}
	if len(want) != 80 {
		t.Fatalf("test expectation has %d buckets, want 80", len(want))
	}
}

func get(t *testing.T, h http.Handler, path string) (int, http.Header, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	body, err := io.ReadAll(rec.Result().Body)
	if err != nil {
		t.Fatalf("reading %s: %v", path, err)
	}
	return rec.Code, rec.Result().Header, string(body)
}

func TestHandlerScrape(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	if err := Register(reg); err != nil {
		t.Fatalf("Register: %v", err)
	}
	// The collectors are global and other tests observe into them too; start
	// the histogram checked below from a known state.
	NetworkProgrammingLatency.Reset()
	touchAll()
	h := Handler(reg, "iptables", false)

	code, _, body := get(t, h, "/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: status %d, body %q", code, body)
	}
	for _, line := range []string{
		`kubeproxy_sync_proxy_rules_iptables_total{ip_family="IPv4",table="nat"} 42`,
		`kubeproxy_sync_proxy_rules_iptables_last{ip_family="IPv6",table="filter"} 7`,
		`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="0.25"} 0`,
		`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="0.5"} 1`,
		`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="115"} 1`,
		`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="300"} 1`,
		`kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="+Inf"} 1`,
		`kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="16.384"} `,
		`kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family="IPv4",traffic_policy="internal"} 0`,
		`kubeproxy_proxy_healthz_total{code="200"} `,
		`kproxy_invalid_objects_total{kind="EndpointSlice",reason="BadAddress"} 0`,
		`# TYPE kubeproxy_sync_proxy_rules_endpoint_changes_total counter`,
	} {
		if !strings.Contains(body, line) {
			t.Errorf("/metrics lacks %q", line)
		}
	}
	if n := strings.Count(body, "kubeproxy_network_programming_duration_seconds_bucket{"); n != 81 {
		t.Errorf("network programming histogram has %d bucket lines, want 81 (80 + Inf)", n)
	}

	code, hdr, body := get(t, h, "/healthz")
	if code != http.StatusOK || body != "ok" {
		t.Errorf("/healthz: got %d %q, want 200 \"ok\"", code, body)
	}
	if ct := hdr.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("/healthz Content-Type %q, want text/plain", ct)
	}

	code, _, body = get(t, h, "/proxyMode")
	if code != http.StatusOK || body != "iptables" {
		t.Errorf("/proxyMode: got %d %q, want 200 \"iptables\"", code, body)
	}

	if code, _, _ := get(t, h, "/nothing"); code != http.StatusNotFound {
		t.Errorf("/nothing: got %d, want 404", code)
	}
}

type fakeCounters map[string]uint64

func (f fakeCounters) Packets(name string) (uint64, error) {
	n, ok := f[name]
	if !ok {
		return 0, errors.New("no such counter")
	}
	return n, nil
}

// TestNFAcctCollector exports the counters that can be read, under upstream's names.
func TestNFAcctCollector(t *testing.T) {
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(NewNFAcctCollector(fakeCounters{"invalid": 7}, "invalid", "localhost"))
	want := `
# HELP kubeproxy_iptables_ct_state_invalid_dropped_packets_total packets dropped by iptables to work around conntrack problems
# TYPE kubeproxy_iptables_ct_state_invalid_dropped_packets_total counter
kubeproxy_iptables_ct_state_invalid_dropped_packets_total 7
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// TestGathererServesUpstreamsExtras: besides kproxy's own metrics, /metrics has what
// upstream kube-proxy gets from component-base: the build info, process and Go metrics, and
// client-go's request metrics once a request was made.
func TestGathererServesUpstreamsExtras(t *testing.T) {
	families := gatherAfterAnAPIRequest(t, NewNFAcctCollector(fakeCounters{"invalid": 1}, "invalid", "localhost"))
	got := map[string]bool{}
	for _, f := range families {
		got[f.GetName()] = true
	}
	for _, name := range []string{"kubernetes_build_info", "process_resident_memory_bytes", "go_goroutines",
		"rest_client_requests_total", "rest_client_request_duration_seconds",
		"kubeproxy_iptables_ct_state_invalid_dropped_packets_total", "kubeproxy_sync_proxy_rules_endpoint_changes_total"} {
		if !got[name] {
			t.Errorf("%s not gathered", name)
		}
	}
}

// gatherAfterAnAPIRequest gathers what /metrics serves, with extra, after one client-go
// request, which is what makes client-go's rest_client_* metrics appear.
func gatherAfterAnAPIRequest(t *testing.T, extra ...prometheus.Collector) []*dto.MetricFamily {
	t.Helper()
	g, err := NewGatherer(extra...)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write([]byte(`{"kind":"NodeList","apiVersion":"v1","items":[]}`))
	}))
	defer srv.Close()
	client, err := kubernetes.NewForConfig(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Nodes().List(context.Background(), metav1.ListOptions{}); err != nil {
		t.Fatal(err)
	}
	families, err := g.Gather()
	if err != nil {
		t.Fatal(err)
	}
	return families
}
