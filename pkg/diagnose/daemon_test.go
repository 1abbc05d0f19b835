package diagnose

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kproxy-dev/kproxy/pkg/healthcheck"
	"github.com/kproxy-dev/kproxy/pkg/metrics"
)

func TestParseExposition(t *testing.T) {
	text := `# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds Unix time of the last "successful" sync.
# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7e+09
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"} 1.700000001e+09 1700000002000

kubeproxy_sync_proxy_rules_endpoint_changes_pending 3
weird{a="x\"y\\z\nw",b="}{,=",} NaN
	spaced { a = "1" , b="2" }	+Inf
`
	e, err := parseExposition([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if got := e.byFamily(metricLastSync); got["IPv4"] != 1.7e9 || got["IPv6"] != 1.700000001e9 || len(got) != 2 {
		t.Errorf("byFamily = %v", got)
	}
	if n, ok := e.sum(metricEndpointChangesPending); n != 3 || !ok {
		t.Errorf("sum = %v, %t; want 3, true", n, ok)
	}
	if _, ok := e.sum(metricDrift); ok {
		t.Error("an absent metric was found")
	}
	w := e["weird"]
	if len(w) != 1 || w[0].labels["a"] != "x\"y\\z\nw" || w[0].labels["b"] != "}{,=" || !math.IsNaN(w[0].value) {
		t.Errorf("escapes: %+v", w)
	}
	if s := e["spaced"]; len(s) != 1 || s[0].labels["a"] != "1" || s[0].labels["b"] != "2" || !math.IsInf(s[0].value, 1) {
		t.Errorf("spacing: %+v", s)
	}

	for _, bad := range []string{
		"novalue",
		`m{a="1"`,
		`m{a="1} 2`,
		`m{a=1} 2`,
		`m{a="1" b="2"} 2`,
		"m one",
		"m 1 2 3",
	} {
		if _, err := parseExposition([]byte(bad + "\n")); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestSyncFinding(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	pending := []string{"2 Service changes pending"}
	const period = 30 * time.Second // so the limit is 1m
	for _, tc := range []struct {
		name           string
		synced, queued time.Time
		sev            Severity
		title          string
	}{
		{"synced after the last request", ago(10 * time.Second), ago(20 * time.Second), OK, "IPv4 rules synced 10s ago"},
		{"synced in the second of the request", ago(10 * time.Second), ago(10 * time.Second), OK, "synced 10s ago"},
		{"idle for an hour", ago(time.Hour), ago(2 * time.Hour), OK, "synced 1h0m0s ago"},
		{"pending, within the limit", ago(time.Hour), ago(5 * time.Second), OK, "IPv4 sync pending for 5s, within 1m0s"},
		{"pending, at the limit", ago(time.Hour), ago(time.Minute), OK, "pending for 1m0s"},
		{"pending, past the limit", ago(time.Hour), ago(61 * time.Second), Problem,
			"IPv4 changes requested 1m1s ago are not synced (limit 1m0s, twice the sync period)"},
		{"never synced, starting", time.Time{}, ago(5 * time.Second), Warning, "IPv4 rules not synced yet, 5s after the first request"},
		{"never synced, past the limit", time.Time{}, ago(5 * time.Minute), Problem, "IPv4 rules were never synced, 5m0s after the first request"},
		{"nothing at all", time.Time{}, time.Time{}, Warning, "IPv4 rules not synced yet"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := syncFinding(v1.IPv4Protocol, tc.synced, tc.queued, pending, period, now)
			checkFinding(t, f, tc.sev, tc.title, "2 Service changes pending", "")
		})
	}
	f := syncFinding(v1.IPv4Protocol, ago(time.Hour), ago(2*time.Minute), nil, period, now)
	checkFinding(t, f, Problem, "not synced", "last successful sync: 2023-11-14T21:13:20Z (1h0m0s ago)\nlast sync request: 2023-11-14T22:11:20Z (2m0s ago)",
		"read /readyz's lastError")
	// A longer sync period moves the limit.
	f = syncFinding(v1.IPv4Protocol, ago(time.Hour), ago(2*time.Minute), nil, 5*time.Minute, now)
	checkFinding(t, f, OK, "pending for 2m0s, within 10m0s", "", "")
}

// exposed renders metric lines as an exposition.
func exposed(t *testing.T, lines ...string) exposition {
	t.Helper()
	e, err := parseExposition([]byte(strings.Join(lines, "\n") + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func TestMetricsFindings(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	healthy := []string{
		`kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1699999990`,
		`kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv4"} 1699999980`,
		`kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"} 1699999990`,
		`kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv6"} 1699999980`,
		`kubeproxy_sync_proxy_rules_service_changes_pending 0`,
		`kubeproxy_sync_proxy_rules_endpoint_changes_pending 0`,
	}
	got := metricsFindings(exposed(t, healthy...), 30*time.Second, now)
	want := []string{"daemon/sync/IPv4", "daemon/sync/IPv6", "daemon/restore-failures", "daemon/kernel-rejected", "daemon/drift"}
	if !slices.Equal(ids(got), want) {
		t.Fatalf("findings %v, want %v", ids(got), want)
	}
	for _, f := range got {
		if f.Severity != OK {
			t.Errorf("%s: %v %q from healthy metrics", f.ID, f.Severity, f.Title)
		}
	}

	bad := []string{
		`kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1699999990`,
		`kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv4"} 1699999980`,
		// IPv6 requested a sync 5 minutes ago and has not synced since.
		`kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"} 1699999600`,
		`kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv6"} 1699999700`,
		`kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv4"} 1`,
		`kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv6"} 2`,
		`kproxy_kernel_rejected_services_total{ip_family="IPv4"} 1`,
		`kproxy_rules_drift_total{ip_family="IPv4"} 4`,
		`kproxy_rules_drift_total{ip_family="IPv6"} 3`,
		`kubeproxy_sync_proxy_rules_service_changes_pending 2`,
		`kubeproxy_sync_proxy_rules_endpoint_changes_pending 7`,
	}
	e := exposed(t, bad...)
	got = metricsFindings(e, 30*time.Second, now)
	checkFinding(t, find(t, got, "daemon/sync/IPv4"), OK, "IPv4 rules synced 10s ago", "2 Service changes pending\n7 EndpointSlice changes pending", "")
	checkFinding(t, find(t, got, "daemon/sync/IPv6"), Problem, "IPv6 changes requested 5m0s ago are not synced", "7 EndpointSlice changes pending", "lastError")
	checkFinding(t, find(t, got, "daemon/restore-failures"), Warning, "iptables-restore failed 3 times since kproxy started",
		`kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv6"} = 2`, "failing line")
	checkFinding(t, find(t, got, "daemon/kernel-rejected"), Warning, "kproxy left a Service out once because the kernel rejected its rules",
		"kproxy_kernel_rejected_services_total = 1", "names the Service")
	checkFinding(t, find(t, got, "daemon/drift"), Warning, "another program changed kproxy's rules 7 times", "kproxy_rules_drift_total = 7", "firewalld")

	got = metricsFindings(exposed(t, "go_goroutines 12"), 30*time.Second, now)
	checkFinding(t, find(t, got, "daemon/sync"), Warning, "kproxy's metrics show no sync yet", "no kubeproxy_sync_proxy_rules_last_timestamp_seconds", "started")
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// healthBody is a /livez or /readyz body as kproxy writes it.
func healthBody(t *testing.T, families map[v1.IPFamily]healthcheck.FamilyStatus) []byte {
	t.Helper()
	return fmt.Appendf(nil, `{"lastUpdated":"2023-11-14T22:13:20Z","currentTime":"2023-11-14T22:13:20Z","healthy":false,"status":%s}`,
		mustJSON(t, families))
}

func TestHealthFinding(t *testing.T) {
	now := time.Date(2023, 11, 14, 22, 13, 20, 0, time.UTC)
	synced := healthcheck.FamilyStatus{LastUpdated: now.Add(-10 * time.Second), Healthy: true, Synced: true}
	failed := healthcheck.FamilyStatus{LastUpdated: now.Add(-3 * time.Minute), Healthy: false, Synced: true,
		LastError: "iptables restore failed: line 12 failed"}
	stuck := healthcheck.FamilyStatus{LastUpdated: now.Add(-5 * time.Minute), Stuck: true,
		LastError: "waiting for the initial list of Services and EndpointSlices from the API server"}
	const url = "http://127.0.0.1:10256"
	for _, tc := range []struct {
		name     string
		path     string
		status   int
		body     []byte
		err      error
		sev      Severity
		title    string
		evidence string
		fix      string
	}{
		{"live", "/livez", 200, healthBody(t, map[v1.IPFamily]healthcheck.FamilyStatus{"IPv4": synced}), nil,
			OK, "kproxy's sync loop is alive", "IPv4: synced=true healthy=true stuck=false, last update 2023-11-14T22:13:10Z (10s ago)", ""},
		{"stuck", "/livez", 503, healthBody(t, map[v1.IPFamily]healthcheck.FamilyStatus{"IPv4": synced, "IPv6": stuck}), nil,
			Problem, "kproxy's IPv6 sync loop is stuck: a restart fixes this", "IPv6: synced=false healthy=false stuck=true", "restart kproxy"},
		{"ready", "/readyz", 200, healthBody(t, map[v1.IPFamily]healthcheck.FamilyStatus{"IPv4": synced, "IPv6": synced}), nil,
			OK, "kproxy is ready", url + "/readyz: HTTP 200", ""},
		{"not ready", "/readyz", 503, healthBody(t, map[v1.IPFamily]healthcheck.FamilyStatus{"IPv4": failed}), nil,
			Problem, "kproxy is not ready", "lastError: iptables restore failed: line 12 failed", "act on lastError"},
		{"ready, last attempt failed", "/readyz", 200, healthBody(t, map[v1.IPFamily]healthcheck.FamilyStatus{"IPv4": synced, "IPv6": failed}), nil,
			Warning, "kproxy is ready, but its last IPv6 sync failed", "IPv6: synced=true healthy=false", "retries"},
		{"not running", "/livez", 0, nil, errors.New("dial tcp 127.0.0.1:10256: connect: connection refused"),
			Problem, "nothing answers at " + url + "/livez: kproxy is not running", "connection refused", "kubectl -n kube-system get pods"},
		{"not kproxy", "/readyz", 404, []byte("404 page not found"), nil,
			Warning, "answered HTTP 404, not kproxy's health status", "404 page not found", "--healthz-bind-address"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := healthFinding(url+tc.path, tc.path, tc.status, tc.body, tc.err, now)
			if want := "daemon" + tc.path; f.ID != want {
				t.Errorf("ID %q, want %q", f.ID, want)
			}
			checkFinding(t, f, tc.sev, tc.title, tc.evidence, tc.fix)
		})
	}
}

// fakeFetcher answers from its map by URL; other URLs are refused, as a closed port.
type fakeFetcher map[string]struct {
	status int
	body   string
}

func (f fakeFetcher) Fetch(_ context.Context, url string) (int, []byte, error) {
	r, ok := f[url]
	if !ok {
		return 0, nil, fmt.Errorf("GET %s: connection refused", url)
	}
	return r.status, []byte(r.body), nil
}

func TestDaemonChecksDefaultsAndFailures(t *testing.T) {
	ctx := context.Background()
	// Nothing listens: the metrics are a warning, the health endpoints problems.
	got := DaemonChecks(ctx, DaemonInputs{Fetcher: fakeFetcher{}})
	if want := []string{"daemon/metrics", "daemon/livez", "daemon/readyz"}; !slices.Equal(ids(got), want) {
		t.Fatalf("findings %v, want %v", ids(got), want)
	}
	checkFinding(t, got[0], Warning, "cannot read kproxy's metrics at http://127.0.0.1:10249/metrics", "connection refused", "--metrics-bind-address")
	checkFinding(t, got[1], Problem, "nothing answers at http://127.0.0.1:10256/livez", "", "")

	// A metrics endpoint that fails, at the URLs given.
	f := fakeFetcher{"http://10.0.0.1:9999/metrics": {500, "collector failed"}}
	got = DaemonChecks(ctx, DaemonInputs{Fetcher: f, MetricsURL: "http://10.0.0.1:9999/metrics", HealthURL: "http://10.0.0.1:8888/"})
	checkFinding(t, got[0], Warning, "cannot read kproxy's metrics", "HTTP 500: collector failed", "")
	checkFinding(t, got[1], Problem, "nothing answers at http://10.0.0.1:8888/livez", "", "")

	// Metrics that are not the text format.
	f = fakeFetcher{DefaultMetricsURL: {200, "<html>hello</html>"}}
	got = DaemonChecks(ctx, DaemonInputs{Fetcher: f})
	checkFinding(t, got[0], Warning, "cannot read kproxy's metrics", "parsing metrics", "")
}

// TestMetricNamesMatchPkgMetrics runs DaemonChecks against kproxy's real metrics and
// health handlers, so a metric renamed in pkg/metrics, or a health body changed in
// pkg/healthcheck, fails here rather than in a diagnosis that silently finds nothing.
func TestMetricNamesMatchPkgMetrics(t *testing.T) {
	now := time.Now().Truncate(time.Second)
	// The collectors are package-level: start from zero, whatever ran before.
	for _, v := range []interface{ Reset() }{metrics.SyncProxyRulesLastTimestamp, metrics.SyncProxyRulesLastQueuedTimestamp,
		metrics.IPTablesRestoreFailuresTotal, metrics.KernelRejectedServicesTotal, metrics.RulesDriftTotal} {
		v.Reset()
	}
	reg := prometheus.NewRegistry()
	if err := metrics.Register(reg); err != nil {
		t.Fatal(err)
	}
	metrics.SyncProxyRulesLastTimestamp.WithLabelValues("IPv4").Set(float64(now.Add(-5 * time.Minute).Unix()))
	metrics.SyncProxyRulesLastQueuedTimestamp.WithLabelValues("IPv4").Set(float64(now.Add(-3 * time.Minute).Unix()))
	metrics.IPTablesRestoreFailuresTotal.WithLabelValues("IPv4").Add(2)
	metrics.KernelRejectedServicesTotal.WithLabelValues("IPv4").Inc()
	metrics.RulesDriftTotal.WithLabelValues("IPv4").Add(3)
	metrics.ServiceChangesPending.Set(4)
	metrics.EndpointChangesPending.Set(5)
	metricsServer := httptest.NewServer(metrics.Handler(reg, "iptables", false))
	defer metricsServer.Close()

	clk := clocktesting.NewFakeClock(now.Add(-5 * time.Minute))
	health := healthcheck.NewProxyHealth(time.Minute, clk)
	health.Started(v1.IPv4Protocol)
	health.Updated(v1.IPv4Protocol)
	clk.Step(2 * time.Minute)
	health.QueuedUpdate(v1.IPv4Protocol)
	health.SyncStarted(v1.IPv4Protocol)
	health.SyncEnded(v1.IPv4Protocol, errors.New("iptables restore failed: line 7 failed"))
	clk.Step(3 * time.Minute)
	healthServer := httptest.NewServer(health.Handler())
	defer healthServer.Close()

	got := DaemonChecks(context.Background(), DaemonInputs{Fetcher: HTTPFetcher{},
		MetricsURL: metricsServer.URL + "/metrics", HealthURL: healthServer.URL, Now: now})
	want := []string{"daemon/sync/IPv4", "daemon/restore-failures", "daemon/kernel-rejected", "daemon/drift", "daemon/livez", "daemon/readyz"}
	if !slices.Equal(ids(got), want) {
		t.Fatalf("findings %v, want %v", ids(got), want)
	}
	checkFinding(t, got[0], Problem, "IPv4 changes requested 3m0s ago are not synced (limit 1m0s", "4 Service changes pending\n5 EndpointSlice changes pending", "")
	checkFinding(t, got[1], Warning, "iptables-restore failed 2 times", "", "")
	checkFinding(t, got[2], Warning, "left a Service out once", "", "")
	checkFinding(t, got[3], Warning, "changed kproxy's rules 3 times", "", "")
	checkFinding(t, got[4], OK, "kproxy's sync loop is alive", "lastError: iptables restore failed: line 7 failed", "")
	checkFinding(t, got[5], Problem, "kproxy is not ready", "IPv4: synced=true healthy=false stuck=false, last update", "act on lastError")
}

// TestHTTPFetcher gets a real answer, and a refused connection is an error.
func TestHTTPFetcher(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
		fmt.Fprint(w, r.Header.Get("Accept"))
	}))
	status, body, err := HTTPFetcher{}.Fetch(context.Background(), srv.URL)
	if err != nil || status != http.StatusTeapot || !strings.HasPrefix(string(body), "text/plain") {
		t.Errorf("Fetch = %d, %q, %v", status, body, err)
	}
	srv.Close()
	if _, _, err := (HTTPFetcher{}).Fetch(context.Background(), srv.URL); err == nil {
		t.Error("Fetch from a closed server succeeded")
	}
}
