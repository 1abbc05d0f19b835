// Package metrics holds every Prometheus collector kproxy exports.
//
// Names, types, labels and buckets match upstream kube-proxy (subsystem
// "kubeproxy", no namespace) so that existing dashboards and alerts keep
// working when kproxy replaces it. Collectors kproxy adds on top use the
// "kproxy" namespace so they can never clash with an upstream name.
//
// The collectors are package-level, like upstream's, so that any package can
// update them without plumbing; Register exposes them on a registry.
package metrics

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/pprof"
	"slices"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// subsystem is upstream kube-proxy's metric prefix.
const subsystem = "kubeproxy"

// Label names shared by several collectors.
const (
	// LabelIPFamily is the IP family of the proxier ("IPv4" or "IPv6").
	LabelIPFamily = "ip_family"
	// LabelTable is the iptables table ("filter" or "nat").
	LabelTable = "table"
	// LabelTrafficPolicy is "internal" or "external".
	LabelTrafficPolicy = "traffic_policy"
	// LabelCode is the HTTP status code of a health check response.
	LabelCode = "code"
	// LabelKind is the kind of an object skipped as invalid.
	LabelKind = "kind"
	// LabelReason says why an object was skipped as invalid.
	LabelReason = "reason"
)

// syncBuckets spans 1ms to ~16s, the range of a sync from a tiny cluster to
// a very large one.
var syncBuckets = prometheus.ExponentialBuckets(0.001, 2, 15)

// networkProgrammingBuckets are upstream's: fine-grained below a minute,
// coarser up to five minutes, because programming latency includes the
// (possibly long) time before kproxy even saw the change. Each range starts
// above the previous one ends, so the list stays sorted.
var networkProgrammingBuckets = slices.Concat(
	prometheus.LinearBuckets(0.25, 0.25, 2), // 0.25, 0.5
	prometheus.LinearBuckets(1, 1, 59),      // 1 .. 59
	prometheus.LinearBuckets(60, 5, 12),     // 60 .. 115
	prometheus.LinearBuckets(120, 30, 7),    // 120 .. 300
)

var (
	// SyncProxyRulesLatency observes every sync attempt, full or partial,
	// successful or not.
	SyncProxyRulesLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Subsystem: subsystem,
		Name:      "sync_proxy_rules_duration_seconds",
		Help:      "Duration of a proxy rules sync, in seconds.",
		Buckets:   syncBuckets,
	}, []string{LabelIPFamily})

	// SyncFullProxyRulesLatency observes full syncs only.
	SyncFullProxyRulesLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Subsystem: subsystem,
		Name:      "sync_full_proxy_rules_duration_seconds",
		Help:      "Duration of a full proxy rules sync, in seconds.",
		Buckets:   syncBuckets,
	}, []string{LabelIPFamily})

	// SyncPartialProxyRulesLatency observes partial syncs only.
	SyncPartialProxyRulesLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Subsystem: subsystem,
		Name:      "sync_partial_proxy_rules_duration_seconds",
		Help:      "Duration of a partial proxy rules sync, in seconds.",
		Buckets:   syncBuckets,
	}, []string{LabelIPFamily})

	// SyncProxyRulesLastTimestamp is set to the time of the last successful
	// sync.
	SyncProxyRulesLastTimestamp = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Subsystem: subsystem,
		Name:      "sync_proxy_rules_last_timestamp_seconds",
		Help:      "Unix time of the last successful proxy rules sync.",
	}, []string{LabelIPFamily})

	// SyncProxyRulesLastQueuedTimestamp is set whenever a sync is requested,
	// and when the sync loop starts.
	SyncProxyRulesLastQueuedTimestamp = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Subsystem: subsystem,
		Name:      "sync_proxy_rules_last_queued_timestamp_seconds",
		Help:      "Unix time of the last request for a proxy rules sync.",
	}, []string{LabelIPFamily})

	// NetworkProgrammingLatency observes, after each successful sync, the
	// time from each change's trigger time to the end of that sync.
	NetworkProgrammingLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Subsystem: subsystem,
		Name:      "network_programming_duration_seconds",
		Help:      "Time from a Service or EndpointSlice change to the proxy rules reflecting it, in seconds.",
		Buckets:   networkProgrammingBuckets,
	}, []string{LabelIPFamily})

	// EndpointChangesPending is the number of EndpointSlice changes not yet
	// synced.
	EndpointChangesPending = prometheus.NewGauge(prometheus.GaugeOpts{
		Subsystem: subsystem,
		Name:      "sync_proxy_rules_endpoint_changes_pending",
		Help:      "Number of pending endpoint changes.",
	})

	// EndpointChangesTotal counts every accepted EndpointSlice event.
	EndpointChangesTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Subsystem: subsystem,
		Name:      "sync_proxy_rules_endpoint_changes_total",
		Help:      "Cumulative number of endpoint changes.",
	})

	// ServiceChangesPending is the number of Service changes not yet synced.
	ServiceChangesPending = prometheus.NewGauge(prometheus.GaugeOpts{
		Subsystem: subsystem,
		Name:      "sync_proxy_rules_service_changes_pending",
		Help:      "Number of pending service changes.",
	})

	// ServiceChangesTotal counts every Service event handed to the tracker.
	ServiceChangesTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Subsystem: subsystem,
		Name:      "sync_proxy_rules_service_changes_total",
		Help:      "Cumulative number of service changes.",
	})

	// IPTablesRestoreFailuresTotal counts failed iptables-restore runs,
	// including those of --cleanup.
	IPTablesRestoreFailuresTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Subsystem: subsystem,
		Name:      "sync_proxy_rules_iptables_restore_failures_total",
		Help:      "Cumulative number of iptables restore failures.",
	}, []string{LabelIPFamily})

	// IPTablesPartialRestoreFailuresTotal counts failed restores of partial
	// syncs; each is also counted in IPTablesRestoreFailuresTotal.
	IPTablesPartialRestoreFailuresTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Subsystem: subsystem,
		Name:      "sync_proxy_rules_iptables_partial_restore_failures_total",
		Help:      "Cumulative number of iptables partial restore failures.",
	}, []string{LabelIPFamily})

	// IPTablesRulesTotal is the number of rules kproxy owns per table,
	// including those a partial sync left untouched. Despite its name it is a
	// gauge, as upstream's is.
	IPTablesRulesTotal = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Subsystem: subsystem,
		Name:      "sync_proxy_rules_iptables_total",
		Help:      "Total number of iptables rules owned by the proxy.",
	}, []string{LabelTable, LabelIPFamily})

	// IPTablesRulesLastSync is the number of rules written by the last sync
	// per table.
	IPTablesRulesLastSync = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Subsystem: subsystem,
		Name:      "sync_proxy_rules_iptables_last",
		Help:      "Number of iptables rules written by the last proxy rules sync.",
	}, []string{LabelTable, LabelIPFamily})

	// SyncProxyRulesNoLocalEndpointsTotal is the number of services with a
	// Local traffic policy that have endpoints elsewhere but none on this
	// node. Despite its name it is a gauge, as upstream's is.
	SyncProxyRulesNoLocalEndpointsTotal = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Subsystem: subsystem,
		Name:      "sync_proxy_rules_no_local_endpoints_total",
		Help:      "Number of services with a Local traffic policy and no local endpoints.",
	}, []string{LabelTrafficPolicy, LabelIPFamily})

	// ProxyHealthzTotal counts /healthz responses by status code.
	ProxyHealthzTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Subsystem: subsystem,
		Name:      "proxy_healthz_total",
		Help:      "Cumulative proxy /healthz responses by HTTP status code.",
	}, []string{LabelCode})

	// ProxyLivezTotal counts /livez responses by status code.
	ProxyLivezTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Subsystem: subsystem,
		Name:      "proxy_livez_total",
		Help:      "Cumulative proxy /livez responses by HTTP status code.",
	}, []string{LabelCode})

	// ConntrackReconcilerSyncDuration observes each stale-conntrack cleanup.
	ConntrackReconcilerSyncDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Subsystem: subsystem,
		Name:      "conntrack_reconciler_sync_duration_seconds",
		Help:      "Duration of a conntrack cleanup, in seconds.",
		Buckets:   syncBuckets,
	}, []string{LabelIPFamily})

	// ConntrackReconcilerDeletedEntriesTotal counts conntrack entries deleted
	// by the cleanup.
	ConntrackReconcilerDeletedEntriesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Subsystem: subsystem,
		Name:      "conntrack_reconciler_deleted_entries_total",
		Help:      "Cumulative number of conntrack entries deleted by the cleanup.",
	}, []string{LabelIPFamily})

	// InvalidObjectsTotal counts Services, EndpointSlices and endpoints that
	// kproxy skipped as malformed. Upstream has no equivalent; it exists so
	// that silently ignored objects show up on a dashboard.
	InvalidObjectsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kproxy",
		Name:      "invalid_objects_total",
		Help:      "Cumulative number of objects skipped as malformed, by kind and reason.",
	}, []string{LabelKind, LabelReason})

	// RulesDriftTotal counts drift checks that found the kernel's rules changed
	// behind kproxy's back (foreign rules in its dispatch chains, deleted or
	// flushed chains); each one forces a full sync. Upstream rewrites its
	// dispatch chains on every sync and has no equivalent.
	RulesDriftTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kproxy",
		Name:      "rules_drift_total",
		Help:      "Cumulative number of drift checks that found kproxy's rules changed by another program, by IP family.",
	}, []string{LabelIPFamily})

	// KernelRejectedServicesTotal counts services left out of a sync because
	// iptables-restore rejected their rules, so that the others could be
	// programmed.
	KernelRejectedServicesTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "kproxy",
		Name:      "kernel_rejected_services_total",
		Help:      "Cumulative number of times a Service was left out of a sync because the kernel rejected its rules, by IP family.",
	}, []string{LabelIPFamily})
)

// collectors lists everything Register registers.
var collectors = []prometheus.Collector{
	SyncProxyRulesLatency,
	SyncFullProxyRulesLatency,
	SyncPartialProxyRulesLatency,
	SyncProxyRulesLastTimestamp,
	SyncProxyRulesLastQueuedTimestamp,
	NetworkProgrammingLatency,
	EndpointChangesPending,
	EndpointChangesTotal,
	ServiceChangesPending,
	ServiceChangesTotal,
	IPTablesRestoreFailuresTotal,
	IPTablesPartialRestoreFailuresTotal,
	IPTablesRulesTotal,
	IPTablesRulesLastSync,
	SyncProxyRulesNoLocalEndpointsTotal,
	ProxyHealthzTotal,
	ProxyLivezTotal,
	ConntrackReconcilerSyncDuration,
	ConntrackReconcilerDeletedEntriesTotal,
	InvalidObjectsTotal,
	RulesDriftTotal,
	KernelRejectedServicesTotal,
}

// Register registers every kproxy collector with reg. Registering into a
// registry that already holds these collectors is a no-op, so callers need
// not guard against doing it twice; registering into several registries is
// allowed. It fails only if reg holds a different collector under one of our
// names.
func Register(reg prometheus.Registerer) error {
	for _, c := range collectors {
		err := reg.Register(c)
		var already prometheus.AlreadyRegisteredError
		if errors.As(err, &already) && already.ExistingCollector == c {
			continue
		}
		if err != nil {
			return fmt.Errorf("registering kproxy metrics: %w", err)
		}
	}
	return nil
}

// Handler returns the mux served on the metrics bind address: /metrics with
// everything reg gathers, /healthz answering "ok" while the process serves
// HTTP at all, and /proxyMode naming the proxy mode, as upstream's does; with profiling,
// also Go's /debug/pprof handlers (--profiling).
func Handler(reg prometheus.Gatherer, proxyMode string, profiling bool) http.Handler {
	mux := http.NewServeMux()
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	// ContinueOnError: one broken collector should cost its own series, not
	// the whole scrape.
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("/healthz", plainText("ok"))
	mux.HandleFunc("/proxyMode", plainText(proxyMode))
	return mux
}

// plainText returns a handler that always answers body as text/plain.
func plainText(body string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		// A failed write means the client went away; there is no one left
		// to report it to.
		_, _ = io.WriteString(w, body)
	}
}

// NFAcctReader reads an nfacct counter's packet count (pkg/nfacct).
type NFAcctReader interface {
	Packets(name string) (uint64, error)
}

var (
	ctStateInvalidDroppedDesc = prometheus.NewDesc("kubeproxy_iptables_ct_state_invalid_dropped_packets_total",
		"packets dropped by iptables to work around conntrack problems", nil, nil)
	localhostNodePortsAcceptedDesc = prometheus.NewDesc("kubeproxy_iptables_localhost_nodeports_accepted_packets_total",
		"Number of packets accepted on nodeports of loopback interface", nil, nil)
)

// NFAcctCollector exports upstream's two nfacct counters, read from the kernel at each
// scrape. A counter that cannot be read (no nfacct in the kernel, not created yet) is
// left out of that scrape, as upstream does.
type NFAcctCollector struct {
	reader NFAcctReader
	// names maps each counter's nfacct name to its metric.
	names map[string]*prometheus.Desc
}

// NewNFAcctCollector returns the collector for reader; register it next to Register's.
func NewNFAcctCollector(reader NFAcctReader, invalidDropped, localhostNodePortsAccepted string) *NFAcctCollector {
	return &NFAcctCollector{reader: reader, names: map[string]*prometheus.Desc{
		invalidDropped:             ctStateInvalidDroppedDesc,
		localhostNodePortsAccepted: localhostNodePortsAcceptedDesc,
	}}
}

// Describe implements prometheus.Collector.
func (c *NFAcctCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range c.names {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *NFAcctCollector) Collect(ch chan<- prometheus.Metric) {
	for name, d := range c.names {
		n, err := c.reader.Packets(name)
		if err != nil {
			continue
		}
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(n))
	}
}
