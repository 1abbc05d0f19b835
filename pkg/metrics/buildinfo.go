package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/version"
)

// buildInfoLabels are upstream's label names for kubernetes_build_info, in
// upstream's order.
var buildInfoLabels = []string{"major", "minor", "git_version", "git_commit", "git_tree_state", "build_date", "go_version", "compiler", "platform"}

// NewBuildInfo returns upstream's kubernetes_build_info gauge, a constant 1
// labelled with info, so that dashboards and alerts that track which version
// each node's proxy runs see kproxy's. Upstream registers it on component-base's
// global registry at import; kproxy serves its own registry, so the caller
// registers this next to Register's collectors.
func NewBuildInfo(info version.Info) prometheus.Collector {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "kubernetes_build_info",
		Help: "A metric with a constant '1' value labeled by major, minor, git version, git commit, git tree state, build date, Go version, and compiler from which Kubernetes was built, and platform on which it is running.",
	}, buildInfoLabels)
	g.WithLabelValues(info.Major, info.Minor, info.GitVersion, info.GitCommit, info.GitTreeState,
		info.BuildDate, info.GoVersion, info.Compiler, info.Platform).Set(1)
	return g
}
