package proxier

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kproxy-dev/kproxy/pkg/healthcheck"
	"github.com/kproxy-dev/kproxy/pkg/runner"
)

// TestHealthWhileWaitingAndFailing drives a proxier through an API server that has not
// listed yet and an xtables lock that another program holds for many sync periods, and
// reads the probes as the kubelet would: neither makes /livez fail (restarting would not
// help), both keep /readyz and /healthz failing, and the first successful sync makes all
// three pass.
func TestHealthWhileWaitingAndFailing(t *testing.T) {
	const syncPeriod = 30 * time.Second
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	health := healthcheck.NewProxyHealth(2*syncPeriod, clk)
	health.SyncNode(&v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-a"}})
	p, ipt := newTestProxierWith(t, func(c *Config) { c.Health, c.Clock, c.SyncPeriod = health, clk, syncPeriod })
	ctx := context.Background()
	probe := func(when string, healthz, livez, readyz int, lastError string) {
		t.Helper()
		for path, want := range map[string]int{"/healthz": healthz, "/livez": livez, "/readyz": readyz} {
			rec := httptest.NewRecorder()
			health.Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			if rec.Code != want {
				t.Errorf("%s: %s answered %d, want %d: %s", when, path, rec.Code, want, rec.Body)
			}
		}
		if got := health.Health().Families[v1.IPv4Protocol].LastError; !strings.Contains(got, lastError) || (lastError == "") != (got == "") {
			t.Errorf("%s: lastError %q, want one containing %q", when, got, lastError)
		}
	}

	// Run's first steps, without its loop: the family starts, a sync is requested and
	// attempted before the lists are in.
	health.Started(v1.IPv4Protocol)
	p.requestSync()
	if err := p.Sync(ctx); !errors.Is(err, runner.ErrNotReady) {
		t.Fatalf("sync before the lists: %v, want not ready", err)
	}
	clk.Step(10 * syncPeriod)
	probe("API server not listed yet", 503, 200, 503, "waiting for the initial list")

	p.OnServiceAdd(testService("a", "172.30.0.1", 80))
	p.OnEndpointSliceAdd(testSlice("a", "10.1.0.1"))
	ipt.SetLockHeld(true)
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()
	for range 10 { // the runner's retries, one per sync period
		if err := p.Sync(ctx); err == nil {
			t.Fatal("sync succeeded while the xtables lock was held")
		}
		clk.Step(syncPeriod)
		p.requestSync()
	}
	probe("xtables lock held for 10 sync periods", 503, 200, 503, "xtables lock")

	ipt.SetLockHeld(false)
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	probe("lock released", 200, 200, 200, "")
}
