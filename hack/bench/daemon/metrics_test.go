package main

import (
	"math"
	"testing"
)

const exposition = `# HELP kubeproxy_network_programming_duration_seconds [ALPHA] In Cluster Network Programming Latency in seconds
# TYPE kubeproxy_network_programming_duration_seconds histogram
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="0.25"} 1
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="0.5"} 2
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="1"} 8
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="2"} 10
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv4",le="+Inf"} 10
kubeproxy_network_programming_duration_seconds_sum{ip_family="IPv4"} 7.5
kubeproxy_network_programming_duration_seconds_count{ip_family="IPv4"} 10
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv6",le="0.25"} 5
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv6",le="0.5"} 5
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv6",le="1"} 5
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv6",le="2"} 5
kubeproxy_network_programming_duration_seconds_bucket{ip_family="IPv6",le="+Inf"} 5
kubeproxy_network_programming_duration_seconds_sum{ip_family="IPv6"} 0.5
kubeproxy_network_programming_duration_seconds_count{ip_family="IPv6"} 5
# TYPE kubeproxy_sync_proxy_rules_endpoint_changes_total counter
kubeproxy_sync_proxy_rules_endpoint_changes_total 42
`

// The benchmark reads the IPv4 series only, and a histogram can only say which bucket
// holds a quantile.
func TestScrapeKeepsIPv4Histograms(t *testing.T) {
	s, err := parseScrape(exposition)
	if err != nil {
		t.Fatal(err)
	}
	if len(s) != 1 {
		t.Fatalf("got %d histograms, want 1: %v", len(s), s)
	}
	h := s[metricProgramming]
	if h.Count != 10 || h.Sum != 7.5 || len(h.Buckets) != 4 {
		t.Fatalf("got %+v, want the IPv4 series without its +Inf bucket", h)
	}
	for _, tc := range []struct{ q, want float64 }{{0.1, 0.25}, {0.5, 1}, {0.8, 1}, {0.9, 2}, {0.99, 2}} {
		if got := h.quantile(tc.q); got != tc.want {
			t.Errorf("quantile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
	earlier := histogram{Count: 2, Sum: 0.5, Buckets: []bucket{{0.25, 1}, {0.5, 2}, {1, 2}, {2, 2}}}
	d := h.since(earlier)
	if d.Count != 8 || d.Sum != 7 || d.quantile(0.5) != 1 || d.quantile(1) != 2 || d.mean() != 7.0/8 {
		t.Errorf("since: got %+v", d)
	}
	if beyond := (histogram{Count: 1, Buckets: []bucket{{1, 0}}}).quantile(0.5); !math.IsInf(beyond, 1) {
		t.Errorf("a sample beyond the last bucket: got %v, want +Inf", beyond)
	}
}
