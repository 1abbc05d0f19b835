// Package healthcheck serves kproxy's own health endpoints, /healthz and
// /livez, with the semantics and JSON bodies of upstream kube-proxy so that
// load balancers and probes configured for kube-proxy keep working.
//
// Health is tracked per IP family: a family is unhealthy when a sync was
// requested and has not completed within the timeout. /livez reports only
// that. /healthz additionally requires the node to be eligible for traffic,
// so that cloud load balancers drain a node that is being deleted or scaled
// down before its proxy goes away.
//
// ServiceHealthServer answers on the healthCheckNodePort of each
// LoadBalancer service with externalTrafficPolicy Local, so that cloud load
// balancers send such a service's traffic only to nodes with local endpoints.
package healthcheck

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kproxy-dev/kproxy/pkg/metrics"
)

// toBeDeletedTaint is put on a node by the cluster autoscaler just before it
// removes the node.
const toBeDeletedTaint = "ToBeDeletedByClusterAutoscaler"

// ProxyHealth tracks the health of each proxier (one per IP family) and the
// eligibility of the node. It is safe for concurrent use.
type ProxyHealth struct {
	timeout time.Duration
	clk     clock.PassiveClock

	mu sync.RWMutex
	// lastUpdated holds, per family, the time of the last successful sync. A
	// family absent from it has not started its sync loop and is ignored.
	lastUpdated map[v1.IPFamily]time.Time
	// oldestPending holds, per family, when the oldest sync request not yet
	// served was made; absent means nothing is pending.
	oldestPending map[v1.IPFamily]time.Time
	// nodeEligible is false until the node object has been seen.
	nodeEligible bool
}

// Status is the proxy's health, the JSON body of /livez and /healthz.
type Status struct {
	// LastUpdated is the latest successful sync of any family; in a
	// healthy response it is replaced by CurrentTime (see Handler).
	LastUpdated time.Time `json:"lastUpdated"`
	// CurrentTime is when the status was computed.
	CurrentTime time.Time `json:"currentTime"`
	// NodeEligible is set on /healthz only.
	NodeEligible *bool `json:"nodeEligible,omitempty"`
	// Healthy is true iff every family is healthy; node eligibility does not
	// enter into it.
	Healthy bool `json:"healthy"`
	// Families maps each family that has started syncing to its health.
	Families map[v1.IPFamily]FamilyStatus `json:"status"`
}

// FamilyStatus is the health of one IP family's proxier.
type FamilyStatus struct {
	// LastUpdated is the time of this family's last successful sync.
	LastUpdated time.Time `json:"lastUpdated"`
	// Healthy is false when a sync request has been pending longer than the
	// timeout.
	Healthy bool `json:"healthy"`
}

// NewProxyHealth returns a tracker that reports a family unhealthy once a sync
// request has been pending for timeout, which callers set to twice the sync
// period: a failed sync is retried after one sync period, so only a second
// miss counts. The node starts out ineligible until SyncNode is called.
func NewProxyHealth(timeout time.Duration, clk clock.PassiveClock) *ProxyHealth {
	return &ProxyHealth{
		timeout:       timeout,
		clk:           clk,
		lastUpdated:   map[v1.IPFamily]time.Time{},
		oldestPending: map[v1.IPFamily]time.Time{},
	}
}

// QueuedUpdate records that a sync was requested for family. Only the first
// request since the last successful sync is remembered, so the health
// timeout measures how long the oldest request has waited.
func (h *ProxyHealth) QueuedUpdate(family v1.IPFamily) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, pending := h.oldestPending[family]; !pending {
		h.oldestPending[family] = h.clk.Now()
	}
}

// Updated records a successful sync of family, which serves every request
// pending for it. The first call for a family also makes it part of the
// reported health.
func (h *ProxyHealth) Updated(family v1.IPFamily) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.oldestPending, family)
	h.lastUpdated[family] = h.clk.Now()
}

// SyncNode records the current state of this proxy's node: it is eligible
// for traffic unless it is being deleted or the cluster autoscaler has marked
// it for removal. A nil node is treated as deleted.
func (h *ProxyHealth) SyncNode(node *v1.Node) {
	eligible := node != nil && node.DeletionTimestamp.IsZero() && !hasTaint(node, toBeDeletedTaint)
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nodeEligible = eligible
}

// DeleteNode records that this proxy's node object was deleted.
func (h *ProxyHealth) DeleteNode() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.nodeEligible = false
}

// Health returns the health of every family that has started syncing. It
// leaves NodeEligible unset: only /healthz reports it.
func (h *ProxyHealth) Health() Status {
	h.mu.RLock()
	defer h.mu.RUnlock()

	now := h.clk.Now()
	s := Status{
		CurrentTime: now,
		Healthy:     true,
		Families:    make(map[v1.IPFamily]FamilyStatus, len(h.lastUpdated)),
	}
	for family, last := range h.lastUpdated {
		if last.After(s.LastUpdated) {
			s.LastUpdated = last
		}
		// A request younger than the timeout may just be waiting for the
		// runner's minimum interval; only an older one means syncs are stuck.
		queued, pending := h.oldestPending[family]
		healthy := !pending || now.Sub(queued) < h.timeout
		s.Families[family] = FamilyStatus{LastUpdated: last, Healthy: healthy}
		s.Healthy = s.Healthy && healthy
	}
	return s
}

// isNodeEligible reports whether the node should receive load-balancer
// traffic.
func (h *ProxyHealth) isNodeEligible() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.nodeEligible
}

// Handler returns the health mux: /healthz (proxy health and node
// eligibility) and /livez (proxy health only), any method, 200 when healthy
// and 503 otherwise, each response counted in the metrics package.
func (h *ProxyHealth) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		s := h.Health()
		eligible := h.isNodeEligible()
		s.NodeEligible = &eligible
		writeStatus(r.Context(), w, s, s.Healthy && eligible, metrics.ProxyHealthzTotal)
	})
	mux.HandleFunc("/livez", func(w http.ResponseWriter, r *http.Request) {
		s := h.Health()
		writeStatus(r.Context(), w, s, s.Healthy, metrics.ProxyLivezTotal)
	})
	return mux
}

// writeStatus writes s as JSON with a 200 or 503 status and counts the
// response in counter.
func writeStatus(ctx context.Context, w http.ResponseWriter, s Status, healthy bool, counter *prometheus.CounterVec) {
	code := http.StatusServiceUnavailable
	if healthy {
		code = http.StatusOK
		// Clients written for old kube-proxy releases read lastUpdated as
		// "the sync loop is alive", which it was then updated for even when
		// nothing changed; a healthy proxy reports now to keep that meaning.
		s.LastUpdated = s.CurrentTime
	}
	body, err := json.Marshal(s)
	if err != nil {
		// Only a clock outside years 0-9999 can get here. Probes act on the
		// status code alone, so keep it and send an empty object.
		klog.FromContext(ctx).Error(err, "Encoding health status")
		body = []byte(`{}`)
	}
	counter.WithLabelValues(strconv.Itoa(code)).Inc()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	// A failed write means the client went away; there is no one left to
	// report it to.
	_, _ = w.Write(body)
}

// hasTaint reports whether node carries a taint with the given key, whatever
// its value and effect.
func hasTaint(node *v1.Node, key string) bool {
	for _, t := range node.Spec.Taints {
		if t.Key == key {
			return true
		}
	}
	return false
}
