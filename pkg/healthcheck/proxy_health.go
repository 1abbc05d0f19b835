// Package healthcheck serves kproxy's own health endpoints, /healthz and
// /livez, with the semantics and JSON bodies of upstream kube-proxy so that
// load balancers and probes configured for kube-proxy keep working.
//
// Health is tracked per IP family: a family is unhealthy when a sync was
// requested and has not completed within the timeout. /healthz reports that
// and, as upstream, requires the node to be eligible for traffic, so that
// cloud load balancers drain a node that is being deleted or scaled down
// before its proxy goes away.
//
// Probes need two other answers, because an unhealthy proxy is often one
// that is waiting rather than broken: for the API server at start, for a
// restore the kernel keeps refusing, for the xtables lock. Restarting it then
// fixes nothing, and a liveness probe that does it turns one outage into a
// crash loop on every node. So /livez fails only when the sync loop itself is
// stuck (an attempt that does not return, or requests that no attempt picks
// up), which a restart does fix; its body still says whether the proxy is
// healthy and why not. /readyz, for readiness probes and so for rollouts,
// is ready once every family has applied its rules and keeps them current;
// node eligibility does not enter into it, or a node marked for deletion
// would stall a DaemonSet rollout. Upstream's /livez is /readyz without the
// first-sync condition.
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
	// synced holds the families that have applied their rules at least once.
	synced map[v1.IPFamily]bool
	// attemptStarted holds, per family, when the sync attempt in progress
	// began; absent means none is in progress.
	attemptStarted map[v1.IPFamily]time.Time
	// unattemptedSince holds, per family, when the oldest request that no
	// attempt has begun to serve yet was made.
	unattemptedSince map[v1.IPFamily]time.Time
	// lastError holds, per family, why the last attempt applied nothing;
	// absent after a successful one.
	lastError map[v1.IPFamily]string
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
	// Synced is true once this family has applied its rules.
	Synced bool `json:"synced"`
	// LastError says why the last sync attempt applied nothing: waiting for
	// the API server, or the restore's error.
	LastError string `json:"lastError,omitempty"`
	// Stuck is true when the sync loop stopped making attempts: one has run
	// for longer than the stuck timeout, or requests are not being picked up.
	Stuck bool `json:"stuck,omitempty"`
}

// minStuckTimeout bounds the stuck timeout from below: a full sync of a large
// cluster behind a held xtables lock legitimately takes tens of seconds, and
// with a short sync period the health timeout alone would call that stuck.
const minStuckTimeout = time.Minute

// NewProxyHealth returns a tracker that reports a family unhealthy once a sync
// request has been pending for timeout, which callers set to twice the sync
// period: a failed sync is retried after one sync period, so only a second
// miss counts. The node starts out ineligible until SyncNode is called.
func NewProxyHealth(timeout time.Duration, clk clock.PassiveClock) *ProxyHealth {
	return &ProxyHealth{
		timeout:          timeout,
		clk:              clk,
		lastUpdated:      map[v1.IPFamily]time.Time{},
		oldestPending:    map[v1.IPFamily]time.Time{},
		synced:           map[v1.IPFamily]bool{},
		attemptStarted:   map[v1.IPFamily]time.Time{},
		unattemptedSince: map[v1.IPFamily]time.Time{},
		lastError:        map[v1.IPFamily]string{},
	}
}

// Started records that family's sync loop began: from here on its requests
// must be served within the timeout, as from upstream's first Updated call.
func (h *ProxyHealth) Started(family v1.IPFamily) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.lastUpdated[family] = h.clk.Now()
}

// QueuedUpdate records that a sync was requested for family. Only the first
// request since the last successful sync is remembered, so the health
// timeout measures how long the oldest request has waited.
func (h *ProxyHealth) QueuedUpdate(family v1.IPFamily) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.clk.Now()
	if _, pending := h.oldestPending[family]; !pending {
		h.oldestPending[family] = now
	}
	if _, waiting := h.unattemptedSince[family]; !waiting {
		h.unattemptedSince[family] = now
	}
}

// SyncStarted records that a sync attempt of family began, which picks up
// every request made so far.
func (h *ProxyHealth) SyncStarted(family v1.IPFamily) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.attemptStarted[family] = h.clk.Now()
	delete(h.unattemptedSince, family)
}

// SyncEnded records the end of family's attempt: nil means its rules were
// applied (Updated), anything else why not.
func (h *ProxyHealth) SyncEnded(family v1.IPFamily, err error) {
	if err == nil {
		h.Updated(family)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.attemptStarted, family)
	h.lastError[family] = err.Error()
}

// Updated records a successful sync of family, which serves every request
// pending for it. The first call for a family also makes it part of the
// reported health.
func (h *ProxyHealth) Updated(family v1.IPFamily) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.oldestPending, family)
	delete(h.attemptStarted, family)
	delete(h.lastError, family)
	h.synced[family] = true
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
		s.Families[family] = FamilyStatus{LastUpdated: last, Healthy: healthy, Synced: h.synced[family],
			LastError: h.lastError[family], Stuck: h.stuck(family, now)}
		s.Healthy = s.Healthy && healthy
	}
	return s
}

// stuck reports whether family's sync loop has stopped making attempts: the
// one in progress has run past the stuck timeout, or a request has waited
// longer than the health timeout without any attempt beginning (the runner
// starts one within the minimum sync interval, which is shorter). h.mu must
// be held.
func (h *ProxyHealth) stuck(family v1.IPFamily, now time.Time) bool {
	if started, ok := h.attemptStarted[family]; ok && now.Sub(started) >= max(h.timeout, minStuckTimeout) {
		return true
	}
	since, ok := h.unattemptedSince[family]
	return ok && now.Sub(since) >= h.timeout
}

// alive reports whether no family's sync loop is stuck.
func (s Status) alive() bool {
	for _, f := range s.Families {
		if f.Stuck {
			return false
		}
	}
	return true
}

// ready reports whether at least one family runs and every one has applied
// its rules and keeps them current.
func (s Status) ready() bool {
	if len(s.Families) == 0 || !s.Healthy {
		return false
	}
	for _, f := range s.Families {
		if !f.Synced {
			return false
		}
	}
	return true
}

// isNodeEligible reports whether the node should receive load-balancer
// traffic.
func (h *ProxyHealth) isNodeEligible() bool {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return h.nodeEligible
}

// Handler returns the health mux, any method, 200 or 503 with the status as
// JSON: /healthz (proxy health and node eligibility, as upstream), /livez
// (the sync loop is not stuck) and /readyz (rules applied and current). Each
// /healthz and /livez response is counted in the metrics package, as
// upstream's are.
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
		writeStatus(r.Context(), w, s, s.alive(), metrics.ProxyLivezTotal)
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		s := h.Health()
		writeStatus(r.Context(), w, s, s.ready(), nil)
	})
	return mux
}

// writeStatus writes s as JSON with a 200 (ok) or 503 status and counts the
// response in counter, if any.
func writeStatus(ctx context.Context, w http.ResponseWriter, s Status, ok bool, counter *prometheus.CounterVec) {
	code := http.StatusServiceUnavailable
	if ok {
		code = http.StatusOK
	}
	if ok && s.Healthy {
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
	if counter != nil {
		counter.WithLabelValues(strconv.Itoa(code)).Inc()
	}
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
