package metrics

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/component-base/metrics/legacyregistry"
	// Registered on component-base's registry at import, as in upstream kube-proxy:
	// client-go's rest_client_* metrics (the kubernetes-mixin dashboard's API panels)
	// and kubernetes_build_info, with upstream's names, labels and buckets.
	_ "k8s.io/component-base/metrics/prometheus/restclient"
	_ "k8s.io/component-base/metrics/prometheus/version"
)

// NewGatherer returns what /metrics serves: kproxy's collectors and extra on a registry
// of their own, plus component-base's registry, which holds what upstream kube-proxy
// exposes besides its own metrics (process_*, go_*, rest_client_*, kubernetes_build_info
// and the registry's meta metrics).
func NewGatherer(extra ...prometheus.Collector) (prometheus.Gatherer, error) {
	reg := prometheus.NewRegistry()
	if err := Register(reg); err != nil {
		return nil, err
	}
	for _, c := range extra {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("registering a kproxy collector: %w", err)
		}
	}
	return prometheus.Gatherers{reg, legacyregistry.DefaultGatherer}, nil
}
