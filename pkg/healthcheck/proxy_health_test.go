package healthcheck

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kproxy-dev/kproxy/pkg/metrics"
)

const timeout = 60 * time.Second

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func newTestHealth() (*ProxyHealth, *clocktesting.FakeClock) {
	clk := clocktesting.NewFakeClock(t0)
	return NewProxyHealth(timeout, clk), clk
}

func readyNode() *v1.Node {
	return &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}}
}

// response is a decoded /healthz or /livez answer.
type response struct {
	code   int
	header http.Header
	// raw keeps field presence visible (nodeEligible must be absent on
	// /livez), which decoding into Status would hide.
	raw    map[string]json.RawMessage
	status Status
}

func get(t *testing.T, h *ProxyHealth, path string) response {
	t.Helper()
	rec := httptest.NewRecorder()
	h.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	r := response{code: rec.Code, header: rec.Result().Header}
	if err := json.Unmarshal(rec.Body.Bytes(), &r.raw); err != nil {
		t.Fatalf("%s: body %q is not a JSON object: %v", path, rec.Body.String(), err)
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &r.status); err != nil {
		t.Fatalf("%s: decoding body %q: %v", path, rec.Body.String(), err)
	}
	return r
}

func TestHealthyAtStart(t *testing.T) {
	h, _ := newTestHealth()
	s := h.Health()
	if !s.Healthy {
		t.Fatalf("new ProxyHealth is unhealthy: %+v", s)
	}
	if len(s.Families) != 0 {
		t.Fatalf("new ProxyHealth reports families %v, want none", s.Families)
	}
	if r := get(t, h, "/livez"); r.code != http.StatusOK {
		t.Fatalf("/livez at start: %d, want 200", r.code)
	}
}

func TestQueuedUpdateTimesOut(t *testing.T) {
	h, clk := newTestHealth()
	h.Updated(v1.IPv4Protocol)
	clk.Step(time.Second)
	h.QueuedUpdate(v1.IPv4Protocol)
	queued := clk.Now()

	// Later requests must not move the deadline: it is the oldest one that
	// counts.
	clk.Step(timeout / 2)
	h.QueuedUpdate(v1.IPv4Protocol)

	clk.SetTime(queued.Add(timeout - time.Nanosecond))
	if s := h.Health(); !s.Healthy || !s.Families[v1.IPv4Protocol].Healthy {
		t.Fatalf("unhealthy before the timeout: %+v", s)
	}

	clk.SetTime(queued.Add(timeout))
	s := h.Health()
	if s.Healthy || s.Families[v1.IPv4Protocol].Healthy {
		t.Fatalf("healthy with an update pending for the whole timeout: %+v", s)
	}
	if got := s.Families[v1.IPv4Protocol].LastUpdated; !got.Equal(t0) {
		t.Errorf("family lastUpdated = %v, want %v", got, t0)
	}

	h.Updated(v1.IPv4Protocol)
	if s := h.Health(); !s.Healthy || !s.Families[v1.IPv4Protocol].Healthy {
		t.Fatalf("still unhealthy after Updated: %+v", s)
	}
}

func TestFamilyNotReportedBeforeUpdated(t *testing.T) {
	h, clk := newTestHealth()
	// The IPv6 proxier has not started its sync loop: its pending request
	// neither shows up nor makes the proxy unhealthy (upstream behaviour).
	h.QueuedUpdate(v1.IPv6Protocol)
	h.Updated(v1.IPv4Protocol)
	clk.Step(2 * timeout)

	s := h.Health()
	if !s.Healthy {
		t.Fatalf("unhealthy because of a family that never synced: %+v", s)
	}
	if _, ok := s.Families[v1.IPv6Protocol]; ok {
		t.Fatalf("IPv6 reported before its first Updated: %+v", s.Families)
	}

	// Once it starts, its old pending request counts from when it was made.
	h.Updated(v1.IPv6Protocol)
	h.QueuedUpdate(v1.IPv6Protocol)
	clk.Step(timeout)
	s = h.Health()
	if s.Healthy || !s.Families[v1.IPv4Protocol].Healthy || s.Families[v1.IPv6Protocol].Healthy {
		t.Fatalf("want IPv6 alone unhealthy: %+v", s)
	}
}

func TestHealthzNeedsEligibleNode(t *testing.T) {
	deleting := readyNode()
	now := metav1.NewTime(t0)
	deleting.DeletionTimestamp = &now

	tainted := readyNode()
	tainted.Spec.Taints = []v1.Taint{
		{Key: "other", Effect: v1.TaintEffectNoSchedule},
		{Key: "ToBeDeletedByClusterAutoscaler", Value: "1700000000", Effect: v1.TaintEffectNoSchedule},
	}

	otherTaint := readyNode()
	otherTaint.Spec.Taints = []v1.Taint{{Key: "node.kubernetes.io/unschedulable", Effect: v1.TaintEffectNoSchedule}}

	for _, tc := range []struct {
		name         string
		setup        func(h *ProxyHealth)
		wantEligible bool
	}{
		{name: "node not seen yet", setup: func(*ProxyHealth) {}},
		{name: "ready node", setup: func(h *ProxyHealth) { h.SyncNode(readyNode()) }, wantEligible: true},
		{name: "unrelated taint", setup: func(h *ProxyHealth) { h.SyncNode(otherTaint) }, wantEligible: true},
		{name: "node being deleted", setup: func(h *ProxyHealth) { h.SyncNode(deleting) }},
		{name: "autoscaler taint", setup: func(h *ProxyHealth) { h.SyncNode(tainted) }},
		{name: "node deleted", setup: func(h *ProxyHealth) { h.SyncNode(readyNode()); h.DeleteNode() }},
		{name: "nil node", setup: func(h *ProxyHealth) { h.SyncNode(readyNode()); h.SyncNode(nil) }},
		{name: "taint removed again", setup: func(h *ProxyHealth) { h.SyncNode(tainted); h.SyncNode(readyNode()) }, wantEligible: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := newTestHealth()
			h.Updated(v1.IPv4Protocol)
			tc.setup(h)

			hz := get(t, h, "/healthz")
			wantCode := http.StatusServiceUnavailable
			if tc.wantEligible {
				wantCode = http.StatusOK
			}
			if hz.code != wantCode {
				t.Errorf("/healthz: %d, want %d", hz.code, wantCode)
			}
			if hz.status.NodeEligible == nil || *hz.status.NodeEligible != tc.wantEligible {
				t.Errorf("/healthz nodeEligible = %s, want %v", hz.raw["nodeEligible"], tc.wantEligible)
			}
			// "healthy" is the proxy's own health, as upstream reports it;
			// node eligibility shows only in the status code and nodeEligible.
			if !hz.status.Healthy {
				t.Errorf("/healthz healthy = false, want true")
			}

			lz := get(t, h, "/livez")
			if lz.code != http.StatusOK {
				t.Errorf("/livez: %d, want 200 whatever the node", lz.code)
			}
			if _, ok := lz.raw["nodeEligible"]; ok {
				t.Errorf("/livez reports nodeEligible; only /healthz should")
			}
		})
	}
}

func TestResponseBodyAndHeaders(t *testing.T) {
	h, clk := newTestHealth()
	h.SyncNode(readyNode())
	h.Updated(v1.IPv4Protocol)
	clk.Step(time.Minute)
	h.Updated(v1.IPv6Protocol)
	ipv6Updated := clk.Now()
	clk.Step(time.Minute)

	for _, path := range []string{"/healthz", "/livez"} {
		r := get(t, h, path)
		if r.code != http.StatusOK {
			t.Fatalf("%s: %d, want 200", path, r.code)
		}
		if ct := r.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s Content-Type = %q, want application/json", path, ct)
		}
		if v := r.header.Get("X-Content-Type-Options"); v != "nosniff" {
			t.Errorf("%s X-Content-Type-Options = %q, want nosniff", path, v)
		}
		for _, field := range []string{"lastUpdated", "currentTime", "healthy", "status"} {
			if _, ok := r.raw[field]; !ok {
				t.Errorf("%s body lacks %q: %v", path, field, r.raw)
			}
		}
		// Healthy: lastUpdated is reported as now (upstream compatibility).
		if !r.status.CurrentTime.Equal(clk.Now()) || !r.status.LastUpdated.Equal(clk.Now()) {
			t.Errorf("%s currentTime = %v, lastUpdated = %v, want both %v", path, r.status.CurrentTime, r.status.LastUpdated, clk.Now())
		}
		want := map[v1.IPFamily]FamilyStatus{
			v1.IPv4Protocol: {LastUpdated: t0, Healthy: true},
			v1.IPv6Protocol: {LastUpdated: ipv6Updated, Healthy: true},
		}
		if len(r.status.Families) != len(want) {
			t.Errorf("%s status = %+v, want %+v", path, r.status.Families, want)
		}
		for fam, w := range want {
			got := r.status.Families[fam]
			if got.Healthy != w.Healthy || !got.LastUpdated.Equal(w.LastUpdated) {
				t.Errorf("%s status[%s] = %+v, want %+v", path, fam, got, w)
			}
		}
	}

	// Unhealthy: lastUpdated is the latest real sync.
	h.QueuedUpdate(v1.IPv4Protocol)
	clk.Step(timeout)
	r := get(t, h, "/livez")
	if r.code != http.StatusServiceUnavailable || r.status.Healthy {
		t.Fatalf("/livez: %d healthy=%v, want 503 healthy=false", r.code, r.status.Healthy)
	}
	if !r.status.LastUpdated.Equal(ipv6Updated) {
		t.Errorf("unhealthy lastUpdated = %v, want %v", r.status.LastUpdated, ipv6Updated)
	}
	if r.status.Families[v1.IPv4Protocol].Healthy || !r.status.Families[v1.IPv6Protocol].Healthy {
		t.Errorf("want IPv4 alone unhealthy: %+v", r.status.Families)
	}
	if r := get(t, h, "/healthz"); r.code != http.StatusServiceUnavailable {
		t.Errorf("/healthz: %d, want 503", r.code)
	}
}

func TestUnencodableTimeKeepsStatusCode(t *testing.T) {
	h, clk := newTestHealth()
	h.Updated(v1.IPv4Protocol)
	// JSON cannot encode years past 9999.
	clk.SetTime(time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC))
	r := get(t, h, "/livez")
	if r.code != http.StatusOK {
		t.Fatalf("/livez: %d, want 200", r.code)
	}
	if len(r.raw) != 0 {
		t.Fatalf("/livez body %v, want {}", r.raw)
	}
}

func TestOnlyHealthPathsServed(t *testing.T) {
	h, _ := newTestHealth()
	for _, path := range []string{"/", "/healthz/extra", "/readyz/extra", "/metrics"} {
		rec := httptest.NewRecorder()
		h.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		if rec.Code != http.StatusNotFound {
			t.Errorf("%s: %d, want 404", path, rec.Code)
		}
	}
}

func TestResponsesCounted(t *testing.T) {
	h, clk := newTestHealth()
	h.Updated(v1.IPv4Protocol)

	count := func() [4]float64 {
		return [4]float64{
			counterValue(t, metrics.ProxyHealthzTotal, "200"),
			counterValue(t, metrics.ProxyHealthzTotal, "503"),
			counterValue(t, metrics.ProxyLivezTotal, "200"),
			counterValue(t, metrics.ProxyLivezTotal, "503"),
		}
	}
	before := count()

	get(t, h, "/healthz") // 503: node not seen
	h.SyncNode(readyNode())
	get(t, h, "/healthz") // 200
	get(t, h, "/livez")   // 200
	h.QueuedUpdate(v1.IPv4Protocol)
	clk.Step(timeout)
	get(t, h, "/livez") // 503
	get(t, h, "/livez") // 503

	after := count()
	want := [4]float64{1, 1, 1, 2}
	for i := range want {
		if d := after[i] - before[i]; d != want[i] {
			t.Errorf("counter %d (healthz 200, healthz 503, livez 200, livez 503) grew by %v, want %v", i, d, want[i])
		}
	}
}

// counterValue reads one child of a counter vector. (testutil.ToFloat64 would
// do, but its diff dependency is not in go.mod.)
func counterValue(t *testing.T, vec *prometheus.CounterVec, code string) float64 {
	t.Helper()
	var m dto.Metric
	if err := vec.WithLabelValues(code).Write(&m); err != nil {
		t.Fatalf("reading counter: %v", err)
	}
	return m.GetCounter().GetValue()
}

// TestProbesTellWaitingFromBroken drives the health tracker through what a node goes
// through, with the proxier's calls in the proxier's order, and checks the three
// endpoints: /healthz as upstream (load balancers), /livez failing only when the sync
// loop is stuck (a restart helps), /readyz ready only with the rules applied and current.
func TestProbesTellWaitingFromBroken(t *testing.T) {
	const syncPeriod = timeout / 2
	v4 := v1.IPv4Protocol
	restoreErr := errors.New("iptables-restore: exit status 2: line 7 failed")
	waiting := errors.New("waiting for the initial list of Services and EndpointSlices")
	tainted := readyNode()
	tainted.Spec.Taints = []v1.Taint{{Key: toBeDeletedTaint, Effect: v1.TaintEffectNoSchedule}}

	for _, tc := range []struct {
		name string
		// run acts out the scenario, which lasts well past the timeouts.
		run func(h *ProxyHealth, clk *clocktesting.FakeClock)
		// want codes of /healthz, /livez, /readyz.
		healthz, livez, readyz int
		lastError              string
		stuck                  bool
	}{{
		name: "API server unreachable at start-up: waiting, not broken",
		run: func(h *ProxyHealth, clk *clocktesting.FakeClock) {
			// No Node object was ever read; the informers never list.
			h.Started(v4)
			h.QueuedUpdate(v4)
			h.SyncStarted(v4)
			h.SyncEnded(v4, waiting)
			clk.Step(10 * time.Minute)
		},
		healthz: 503, livez: 200, readyz: 503, lastError: waiting.Error(),
	}, {
		name: "every restore fails: waiting, not broken",
		run: func(h *ProxyHealth, clk *clocktesting.FakeClock) {
			h.SyncNode(readyNode())
			h.Started(v4)
			h.QueuedUpdate(v4)
			h.SyncStarted(v4)
			h.Updated(v4)
			h.QueuedUpdate(v4)
			for range 20 { // the runner retries every sync period
				h.SyncStarted(v4)
				h.SyncEnded(v4, restoreErr)
				clk.Step(syncPeriod)
				h.QueuedUpdate(v4)
			}
		},
		healthz: 503, livez: 200, readyz: 503, lastError: restoreErr.Error(),
	}, {
		name: "a restore that never returns: broken",
		run: func(h *ProxyHealth, clk *clocktesting.FakeClock) {
			h.SyncNode(readyNode())
			h.Started(v4)
			h.SyncStarted(v4)
			h.Updated(v4)
			h.QueuedUpdate(v4)
			h.SyncStarted(v4)
			clk.Step(max(timeout, minStuckTimeout))
		},
		healthz: 503, livez: 503, readyz: 503, stuck: true,
	}, {
		name: "requests no attempt picks up: broken",
		run: func(h *ProxyHealth, clk *clocktesting.FakeClock) {
			h.SyncNode(readyNode())
			h.Started(v4)
			h.SyncStarted(v4)
			h.Updated(v4)
			h.QueuedUpdate(v4)
			clk.Step(timeout)
		},
		healthz: 503, livez: 503, readyz: 503, stuck: true,
	}, {
		name: "node marked for deletion by the autoscaler: drained, still ready and alive",
		run: func(h *ProxyHealth, clk *clocktesting.FakeClock) {
			h.Started(v4)
			h.SyncStarted(v4)
			h.Updated(v4)
			h.SyncNode(tainted)
			clk.Step(10 * time.Minute)
		},
		healthz: 503, livez: 200, readyz: 200,
	}, {
		name: "a slow attempt within the timeouts: all good",
		run: func(h *ProxyHealth, clk *clocktesting.FakeClock) {
			h.SyncNode(readyNode())
			h.Started(v4)
			h.SyncStarted(v4)
			h.Updated(v4)
			h.QueuedUpdate(v4)
			h.SyncStarted(v4)
			clk.Step(timeout - time.Second)
		},
		healthz: 200, livez: 200, readyz: 200,
	}, {
		name: "before the sync loop starts: alive, not ready",
		run: func(h *ProxyHealth, clk *clocktesting.FakeClock) {
			clk.Step(10 * time.Minute)
		},
		healthz: 503, livez: 200, readyz: 503,
	}} {
		t.Run(tc.name, func(t *testing.T) {
			h, clk := newTestHealth()
			tc.run(h, clk)
			for path, want := range map[string]int{"/healthz": tc.healthz, "/livez": tc.livez, "/readyz": tc.readyz} {
				if r := get(t, h, path); r.code != want {
					t.Errorf("%s: %d, want %d; body %+v", path, r.code, want, r.status)
				}
			}
			f := h.Health().Families[v4]
			if f.LastError != tc.lastError || f.Stuck != tc.stuck {
				t.Errorf("family status %+v, want lastError %q, stuck %v", f, tc.lastError, tc.stuck)
			}
		})
	}
}
