package diagnose

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strings"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/healthcheck"
)

// Where kproxy serves its metrics and health by default (--metrics-bind-address
// 127.0.0.1:10249, --healthz-bind-address 0.0.0.0:10256), and its default
// --iptables-sync-period.
const (
	DefaultMetricsURL = "http://127.0.0.1:10249/metrics"
	DefaultHealthURL  = "http://127.0.0.1:10256"
	DefaultSyncPeriod = 30 * time.Second
)

// The metrics DaemonChecks reads; pkg/metrics defines them (TestMetricNamesMatchPkgMetrics).
const (
	metricLastSync               = "kubeproxy_sync_proxy_rules_last_timestamp_seconds"
	metricLastQueued             = "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds"
	metricRestoreFailures        = "kubeproxy_sync_proxy_rules_iptables_restore_failures_total"
	metricEndpointChangesPending = "kubeproxy_sync_proxy_rules_endpoint_changes_pending"
	metricServiceChangesPending  = "kubeproxy_sync_proxy_rules_service_changes_pending"
	metricKernelRejected         = "kproxy_kernel_rejected_services_total"
	metricDrift                  = "kproxy_rules_drift_total"
)

// Fetcher gets a URL.
type Fetcher interface {
	// Fetch GETs url and returns the response's status code and body; an error
	// means no response.
	Fetch(ctx context.Context, url string) (status int, body []byte, err error)
}

// fetchTimeout bounds each request of HTTPFetcher: kproxy answers its own endpoints at
// once, and a diagnosis must finish when it does not.
const fetchTimeout = 5 * time.Second

// maxBody bounds the bodies HTTPFetcher reads: kproxy's metrics are a few hundred
// kilobytes even in large clusters.
const maxBody = 16 << 20

// HTTPFetcher is the Fetcher over HTTP. Its zero value is ready to use.
type HTTPFetcher struct {
	// Client makes the requests; a client with a 5s timeout when nil.
	Client *http.Client
}

// Fetch implements Fetcher. It asks for the text exposition format, the one
// parseExposition reads; health endpoints ignore the header.
func (h HTTPFetcher) Fetch(ctx context.Context, url string) (int, []byte, error) {
	client := h.Client
	if client == nil {
		client = &http.Client{Timeout: fetchTimeout}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, fmt.Errorf("GET %s: %w", url, err)
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, fmt.Errorf("GET %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return resp.StatusCode, nil, fmt.Errorf("GET %s: reading the body: %w", url, err)
	}
	return resp.StatusCode, body, nil
}

// DaemonInputs are where DaemonChecks finds kproxy and what it checks against.
type DaemonInputs struct {
	// Fetcher gets the endpoints (HTTPFetcher{} in production); required.
	Fetcher Fetcher
	// MetricsURL is kproxy's /metrics; DefaultMetricsURL when empty.
	MetricsURL string
	// HealthURL is the base of kproxy's /livez and /readyz; DefaultHealthURL when
	// empty.
	HealthURL string
	// SyncPeriod is kproxy's --iptables-sync-period; DefaultSyncPeriod when zero. A
	// sync request older than twice this is late, as /healthz judges it: a failed
	// sync is retried after one period, so only a second miss counts.
	SyncPeriod time.Duration
	// Now is the time to measure ages against; time.Now() when zero.
	Now time.Time
}

// DaemonChecks checks the health of the kproxy daemon on this node from its metrics
// (sync age against the last request, restore failures, Services the kernel rejected,
// drift) and from its /livez and /readyz bodies.
func DaemonChecks(ctx context.Context, in DaemonInputs) []Finding {
	metricsURL, healthURL, period, now := in.MetricsURL, in.HealthURL, in.SyncPeriod, in.Now
	if metricsURL == "" {
		metricsURL = DefaultMetricsURL
	}
	if healthURL == "" {
		healthURL = DefaultHealthURL
	}
	if period <= 0 {
		period = DefaultSyncPeriod
	}
	if now.IsZero() {
		now = time.Now()
	}
	var out []Finding
	status, body, err := in.Fetcher.Fetch(ctx, metricsURL)
	e, err := scrape(status, body, err)
	if err != nil {
		out = append(out, Finding{ID: "daemon/metrics", Severity: Warning,
			Title:    "cannot read kproxy's metrics at " + metricsURL,
			Evidence: []string{err.Error()},
			Fix:      "pass the address of --metrics-bind-address, and run the diagnosis in the node's network namespace"})
	} else {
		out = append(out, metricsFindings(e, period, now)...)
	}
	base := strings.TrimSuffix(healthURL, "/")
	for _, path := range []string{"/livez", "/readyz"} {
		status, body, err := in.Fetcher.Fetch(ctx, base+path)
		out = append(out, healthFinding(base+path, path, status, body, err, now))
	}
	return out
}

// scrape parses a /metrics answer.
func scrape(status int, body []byte, err error) (exposition, error) {
	if err != nil {
		return nil, err
	}
	if status != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d: %s", status, snippet(body))
	}
	return parseExposition(body)
}

// snippet is the start of body, for evidence.
func snippet(body []byte) string {
	const n = 200
	s := strings.TrimSpace(string(body))
	if len(s) > n {
		s = s[:n] + "..."
	}
	return s
}

// metricsFindings judges kproxy's metrics: one sync finding per family, then restore
// failures, kernel-rejected Services and drift.
func metricsFindings(e exposition, period time.Duration, now time.Time) []Finding {
	synced, queued := e.byFamily(metricLastSync), e.byFamily(metricLastQueued)
	all := maps.Clone(synced)
	maps.Copy(all, queued)
	families := slices.Sorted(maps.Keys(all))
	var pending []string
	if n, ok := e.sum(metricServiceChangesPending); ok {
		pending = append(pending, fmt.Sprintf("%g Service changes pending", n))
	}
	if n, ok := e.sum(metricEndpointChangesPending); ok {
		pending = append(pending, fmt.Sprintf("%g EndpointSlice changes pending", n))
	}

	var out []Finding
	if len(families) == 0 {
		out = append(out, Finding{ID: "daemon/sync", Severity: Warning,
			Title:    "kproxy's metrics show no sync yet",
			Evidence: append([]string{fmt.Sprintf("no %s nor %s", metricLastSync, metricLastQueued)}, pending...),
			Fix:      "check that the metrics are kproxy's and that it has started (its log)"})
	}
	for _, f := range families {
		out = append(out, syncFinding(v1.IPFamily(f), timestamp(synced[f]), timestamp(queued[f]), pending, period, now))
	}
	out = append(out,
		restoreFailuresFinding(e.byFamily(metricRestoreFailures)),
		counterFinding(e, metricKernelRejected, Finding{ID: "daemon/kernel-rejected",
			Title: "kproxy left a Service out %s because the kernel rejected its rules",
			Fix:   `kproxy's log names the Service and the line ("The kernel rejected a Service's rules"); correct that Service`},
			"no Service rejected by the kernel"),
		counterFinding(e, metricDrift, Finding{ID: "daemon/drift",
			Title: "another program changed kproxy's rules %s (kproxy restored them each time)",
			Fix:   `find the program that edits the KUBE-* chains (firewalld reload, another kube-proxy, a CNI plugin): kproxy logs each time as "Rules changed by another program"`},
			"no other program changed kproxy's rules"))
	return out
}

// timestamp is a Unix-seconds metric as a time, the zero time when absent or zero (a
// gauge that was never set).
func timestamp(v float64) time.Time {
	if v <= 0 {
		return time.Time{}
	}
	return time.Unix(int64(v), 0)
}

// when is t and its age, for evidence.
func when(t, now time.Time) string {
	if t.IsZero() {
		return "never"
	}
	return fmt.Sprintf("%s (%v ago)", t.UTC().Format(time.RFC3339), now.Sub(t).Round(time.Second))
}

// syncFinding judges one family's sync from the time of its last successful sync and
// of its last sync request. A request later than the last sync is pending; it is late
// when it is older than twice the sync period. The last request is the newest, so its
// age is a lower bound of how long the changes have waited: the check never calls a
// healthy loop late, and /readyz, which tracks the oldest request, covers a loop that
// requests keep arriving at.
func syncFinding(family v1.IPFamily, synced, queued time.Time, pending []string, period time.Duration, now time.Time) Finding {
	id := "daemon/sync/" + string(family)
	limit := 2 * period
	evidence := append([]string{"last successful sync: " + when(synced, now), "last sync request: " + when(queued, now)}, pending...)
	switch {
	case queued.IsZero() && synced.IsZero():
		return Finding{ID: id, Severity: Warning, Evidence: evidence, Title: fmt.Sprintf("%s rules not synced yet", family),
			Fix: "wait up to " + limit.String() + " and diagnose again; kproxy syncs once it has listed Services and EndpointSlices"}
	case !queued.After(synced):
		return Finding{ID: id, Severity: OK, Title: fmt.Sprintf("%s rules synced %v ago", family, now.Sub(synced).Round(time.Second)), Evidence: evidence}
	}
	waited := now.Sub(queued)
	const fix = "read /readyz's lastError and kproxy's log: the API server out of reach, the xtables lock held, or a restore the kernel refuses are the usual causes"
	switch {
	case waited > limit && synced.IsZero():
		return Finding{ID: id, Severity: Problem, Evidence: evidence, Fix: fix,
			Title: fmt.Sprintf("%s rules were never synced, %v after the first request (limit %v, twice the sync period)", family, waited.Round(time.Second), limit)}
	case waited > limit:
		return Finding{ID: id, Severity: Problem, Evidence: evidence, Fix: fix,
			Title: fmt.Sprintf("%s changes requested %v ago are not synced (limit %v, twice the sync period)", family, waited.Round(time.Second), limit)}
	case synced.IsZero():
		return Finding{ID: id, Severity: Warning, Evidence: evidence,
			Title: fmt.Sprintf("%s rules not synced yet, %v after the first request", family, waited.Round(time.Second)),
			Fix:   "wait up to " + limit.String() + " and diagnose again; kproxy syncs once it has listed Services and EndpointSlices"}
	}
	return Finding{ID: id, Severity: OK, Evidence: evidence,
		Title: fmt.Sprintf("%s sync pending for %v, within %v", family, waited.Round(time.Second), limit)}
}

// restoreFailuresFinding reports iptables-restore failures per family. They are a
// warning, not a problem: the counter is cumulative, kproxy keeps the old rules and
// retries in full, and the sync findings say whether it is behind now.
func restoreFailuresFinding(failures map[string]float64) Finding {
	const id = "daemon/restore-failures"
	var total float64
	var evidence []string
	for _, f := range slices.Sorted(maps.Keys(failures)) {
		total += failures[f]
		evidence = append(evidence, fmt.Sprintf("%s{ip_family=%q} = %g", metricRestoreFailures, f, failures[f]))
	}
	if total == 0 {
		return Finding{ID: id, Severity: OK, Title: "no iptables-restore failure", Evidence: evidence}
	}
	return Finding{ID: id, Severity: Warning, Evidence: evidence,
		Title: fmt.Sprintf("iptables-restore failed %s since kproxy started", times(total)),
		Fix:   `kproxy logs each failure with the failing line and its neighbours ("iptables-restore failed")`}
}

// counterFinding reports a kproxy counter that counts something worth a warning: tmpl
// is the warning, whose title has a %s for the count; okTitle the finding when the
// counter is zero or absent (it appears at its first increment).
func counterFinding(e exposition, metric string, tmpl Finding, okTitle string) Finding {
	n, _ := e.sum(metric)
	evidence := []string{fmt.Sprintf("%s = %g", metric, n)}
	if n == 0 {
		return Finding{ID: tmpl.ID, Severity: OK, Title: okTitle, Evidence: evidence}
	}
	tmpl.Severity, tmpl.Title, tmpl.Evidence = Warning, fmt.Sprintf(tmpl.Title, times(n)), evidence
	return tmpl
}

// times is "once" or "3 times".
func times(n float64) string {
	if n == 1 {
		return "once"
	}
	return fmt.Sprintf("%g times", n)
}

// healthFinding judges one health endpoint's answer. /livez fails only when the sync
// loop is stuck, which a restart fixes; /readyz fails until the rules are applied and
// while they are not current, and its lastError says why (healthcheck package).
func healthFinding(url, path string, status int, body []byte, err error, now time.Time) Finding {
	id := "daemon" + path
	if err != nil {
		return Finding{ID: id, Severity: Problem,
			Title:    "nothing answers at " + url + ": kproxy is not running, or its health server listens elsewhere",
			Evidence: []string{err.Error()},
			Fix:      "check kproxy's pod on this node (kubectl -n kube-system get pods -o wide) and its --healthz-bind-address"}
	}
	var st healthcheck.Status
	if jerr := json.Unmarshal(body, &st); jerr != nil || status != http.StatusOK && status != http.StatusServiceUnavailable {
		return Finding{ID: id, Severity: Warning,
			Title:    fmt.Sprintf("%s answered HTTP %d, not kproxy's health status", url, status),
			Evidence: []string{snippet(body)},
			Fix:      "check that the health port is kproxy's (--healthz-bind-address); upstream kube-proxy has no /readyz"}
	}
	evidence := []string{fmt.Sprintf("%s: HTTP %d", url, status)}
	var stuck, failing []string
	for _, f := range slices.Sorted(maps.Keys(st.Families)) {
		fs := st.Families[f]
		line := fmt.Sprintf("%s: synced=%t healthy=%t stuck=%t, last update %s", f, fs.Synced, fs.Healthy, fs.Stuck, when(fs.LastUpdated, now))
		if fs.LastError != "" {
			line += ", lastError: " + fs.LastError
			failing = append(failing, string(f))
		}
		if fs.Stuck {
			stuck = append(stuck, string(f))
		}
		evidence = append(evidence, line)
	}
	f := Finding{ID: id, Evidence: evidence}
	switch {
	case path == "/livez" && status != http.StatusOK:
		f.Severity = Problem
		f.Title = "kproxy's sync loop is stuck: a restart fixes this"
		if len(stuck) > 0 {
			f.Title = fmt.Sprintf("kproxy's %s sync loop is stuck: a restart fixes this", strings.Join(stuck, " and "))
		}
		f.Fix = "restart kproxy (delete its pod on this node) after saving its log, which says where it hung"
	case path == "/livez":
		f.Title = "kproxy's sync loop is alive"
	case status != http.StatusOK:
		f.Severity = Problem
		f.Title = "kproxy is not ready: its rules are not applied, or not current"
		f.Fix = "act on lastError above; without one, read kproxy's log"
	case len(failing) > 0:
		f.Severity = Warning
		f.Title = fmt.Sprintf("kproxy is ready, but its last %s sync failed", strings.Join(failing, " and "))
		f.Fix = "act on lastError above; kproxy retries after the sync period"
	default:
		f.Title = "kproxy is ready: its rules are applied and current"
	}
	return f
}
