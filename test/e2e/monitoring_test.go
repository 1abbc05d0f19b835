package e2e

import (
	"context"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"

	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

// The shipped monitoring manifests, relative to the repository root.
const (
	scrapeConfigPath = "deploy/monitoring/prometheus-scrape-config.yaml"
	daemonSetPath    = "deploy/daemonset.yaml"
)

// readmeQuery is the PromQL the README quotes: the mean duration of a rules sync per node
// over the last 5 minutes. It has a value for every node once a change has made each
// kproxy sync while Prometheus watched. Not the kubernetes-mixin's p99
// (histogram_quantile over the _bucket rates): on a Prometheus seconds old, rate()
// extrapolates the buckets that were already non-zero at the first scrape (the first
// full sync's) further back than the others, and that phantom mass in the upper buckets
// puts the p99 at ~2 s when every sync it saw took tens of milliseconds; the sum/count
// ratio is extrapolated alike in both halves, so the mean is right.
const readmeQuery = `sum by (node) (rate(kubeproxy_sync_proxy_rules_duration_seconds_sum{job="kube-proxy"}[5m]))` +
	` / sum by (node) (rate(kubeproxy_sync_proxy_rules_duration_seconds_count{job="kube-proxy"}[5m]))`

// TestPrometheusScrapesEveryNode runs a real Prometheus with the shipped scrape job
// (deploy/monitoring/prometheus-scrape-config.yaml) against the cluster, with only what a
// Prometheus outside the cluster needs added (API server address, CA, token). It
// discovers kproxy's pods, made from the shipped DaemonSet's pod template (with no
// kubelet, the test plays its part), and must scrape every node's kproxy under job
// "kube-proxy" with instance and node labels naming the node, as kubernetes-mixin's
// alerts and dashboards expect.
func TestPrometheusScrapesEveryNode(t *testing.T) {
	c := framework.Shared(t)
	ctx := context.Background()

	config := prometheusConfig(t, c)
	pods := runKProxyPods(t, c)
	p := c.StartPrometheus(t, config)

	// Every node is a target that is up and whose syncs are counted.
	const timeout = 90 * time.Second
	upQuery := `up{job="kube-proxy"}`
	syncQuery := `sum by (node) (kubeproxy_sync_proxy_rules_duration_seconds_count{job="kube-proxy"})`
	took := eventually(t, timeout, "Prometheus scraping every node's kproxy", func() error {
		up, _, err := p.Query(ctx, upQuery)
		if err != nil {
			return err
		}
		if err := checkUp(c, pods, up); err != nil {
			return fmt.Errorf("%s: %w; got %v", upQuery, err, up)
		}
		syncs, _, err := p.Query(ctx, syncQuery)
		if err != nil {
			return err
		}
		if err := checkPerNode(c, syncs, func(v float64) bool { return v > 0 }); err != nil {
			return fmt.Errorf("%s: %w; got %v", syncQuery, err, syncs)
		}
		return nil
	})
	t.Logf("every node scraped, up and syncing after %s", took.Round(time.Second))

	// A change while Prometheus watches: a Service over a pod on each node makes every
	// kproxy sync, so the sync histogram's rates have a value per node.
	ns := c.CreateNamespace(t, "monitoring")
	labels := map[string]string{"app": "monitoring"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	svc := c.CreateService(t, framework.ClusterIPService(ns, "web", labels, 80, 8080))
	c.WaitForBackends(t, podNS(c, "n1-p2"), "tcp", framework.HostPort(svc.Spec.ClusterIP, 80), "n1-p1", "n2-p1")

	var answer []byte
	var samples []framework.Sample
	eventually(t, timeout, "the README query giving a value per node", func() error {
		var err error
		samples, answer, err = p.Query(ctx, readmeQuery)
		if err != nil {
			return err
		}
		if err := checkPerNode(c, samples, func(v float64) bool { return v > 0 && !math.IsNaN(v) && !math.IsInf(v, 0) }); err != nil {
			return fmt.Errorf("%w; got %v", err, samples)
		}
		return nil
	})
	writeREADMEQuery(t, c, p, samples, answer)
}

// prometheusConfig returns the prometheus.yml the test runs: a 2 s scrape and evaluation
// interval and the shipped scrape job, unchanged but for the access a Prometheus outside
// the cluster needs, added to its kubernetes_sd_configs entries.
func prometheusConfig(t *testing.T, c *framework.Cluster) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(c.RepoRoot, scrapeConfigPath))
	if err != nil {
		t.Fatal(err)
	}
	var shipped struct {
		ScrapeConfigs []map[string]any `json:"scrape_configs"`
	}
	if err := yaml.UnmarshalStrict(data, &shipped); err != nil {
		t.Fatalf("%s: %v", scrapeConfigPath, err)
	}
	if len(shipped.ScrapeConfigs) != 1 || shipped.ScrapeConfigs[0]["job_name"] != "kube-proxy" {
		t.Fatalf("%s: want one scrape job named kube-proxy, got %v", scrapeConfigPath, shipped.ScrapeConfigs)
	}
	job := shipped.ScrapeConfigs[0]
	sds, _ := job["kubernetes_sd_configs"].([]any)
	if len(sds) == 0 {
		t.Fatalf("%s: job kube-proxy has no kubernetes_sd_configs", scrapeConfigPath)
	}
	access, err := c.KubernetesSDAccess(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, sd := range sds {
		entry, ok := sd.(map[string]any)
		if !ok {
			t.Fatalf("%s: kubernetes_sd_configs entry %v is not a mapping", scrapeConfigPath, sd)
		}
		for k, v := range access {
			if _, set := entry[k]; set {
				t.Fatalf("%s: the shipped kubernetes_sd_configs entry sets %s, which depends on where Prometheus runs", scrapeConfigPath, k)
			}
			entry[k] = v
		}
	}
	out, err := yaml.Marshal(map[string]any{
		"global":         map[string]any{"scrape_interval": "2s", "evaluation_interval": "2s"},
		"scrape_configs": []any{job},
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// runKProxyPods makes, on every node, the pod kproxy's DaemonSet would run there: its pod
// template from deploy/daemonset.yaml, bound to the node, reported Running and Ready with
// the node's address (it uses the host network). They are deleted when the test ends. It
// returns the pods' names by node name.
func runKProxyPods(t *testing.T, c *framework.Cluster) map[string]string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(c.RepoRoot, daemonSetPath))
	if err != nil {
		t.Fatal(err)
	}
	obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(data, nil, nil)
	if err != nil {
		t.Fatalf("%s: %v", daemonSetPath, err)
	}
	ds, ok := obj.(*appsv1.DaemonSet)
	if !ok {
		t.Fatalf("%s: a %T, want a DaemonSet", daemonSetPath, obj)
	}
	names := map[string]string{}
	for _, n := range c.Nodes {
		pod := &v1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Name:        ds.Name + "-" + n.Name,
				Namespace:   ds.Namespace,
				Labels:      maps.Clone(ds.Spec.Template.Labels),
				Annotations: maps.Clone(ds.Spec.Template.Annotations),
			},
			Spec: *ds.Spec.Template.Spec.DeepCopy(),
		}
		pod.Spec.NodeName = n.Name
		t.Cleanup(func() {
			if err := c.DeletePod(context.Background(), pod.Namespace, pod.Name); err != nil {
				t.Errorf("deleting pod %s/%s: %v", pod.Namespace, pod.Name, err)
			}
		})
		if _, err := c.RunHostNetworkPod(context.Background(), pod); err != nil {
			t.Fatal(err)
		}
		names[n.Name] = pod.Name
	}
	return names
}

// checkUp checks that up has one sample per node, 1, labelled with the node's name as
// instance and node and with its kproxy pod's name, and nothing else.
func checkUp(c *framework.Cluster, pods map[string]string, up []framework.Sample) error {
	if err := checkPerNode(c, up, func(v float64) bool { return v == 1 }); err != nil {
		return err
	}
	for _, s := range up {
		node := s.Metric["node"]
		if s.Metric["instance"] != node || s.Metric["pod"] != pods[node] || s.Metric["namespace"] != "kube-system" {
			return fmt.Errorf("target %v: want instance=%q, pod=%q, namespace=kube-system", s.Metric, node, pods[node])
		}
	}
	return nil
}

// checkPerNode checks that samples hold exactly one sample per node, by its node label,
// and that every value is ok.
func checkPerNode(c *framework.Cluster, samples []framework.Sample, ok func(float64) bool) error {
	seen := map[string]float64{}
	for _, s := range samples {
		node := s.Metric["node"]
		if _, dup := seen[node]; dup {
			return fmt.Errorf("two samples for node %q", node)
		}
		seen[node] = s.Value
	}
	var want []string
	for _, n := range c.Nodes {
		want = append(want, n.Name)
		v, found := seen[n.Name]
		if !found {
			return fmt.Errorf("no sample for node %s", n.Name)
		}
		if !ok(v) {
			return fmt.Errorf("node %s: value %g", n.Name, v)
		}
	}
	if len(seen) != len(want) {
		return fmt.Errorf("samples for nodes %v, want only %v", slices.Sorted(maps.Keys(seen)), want)
	}
	return nil
}

// writeREADMEQuery writes the README query, Prometheus' answer and a summary to
// _output/e2e/monitoring-query.txt, for the README to quote, and logs them.
func writeREADMEQuery(t *testing.T, c *framework.Cluster, p *framework.Prometheus, samples []framework.Sample, answer []byte) {
	t.Helper()
	version, err := p.Version(context.Background())
	if err != nil {
		version = "unknown (" + err.Error() + ")"
	}
	slices.SortFunc(samples, func(a, b framework.Sample) int { return strings.Compare(a.Metric["node"], b.Metric["node"]) })
	var b strings.Builder
	fmt.Fprintf(&b, "# Prometheus %s, job %q of %s, %d nodes, after one Service change\n",
		version, "kube-proxy", scrapeConfigPath, len(c.Nodes))
	fmt.Fprintf(&b, "# query\n%s\n", readmeQuery)
	fmt.Fprintf(&b, "# answer (GET /api/v1/query)\n%s\n", strings.TrimSpace(string(answer)))
	fmt.Fprintf(&b, "# per node\n")
	for _, s := range samples {
		fmt.Fprintf(&b, "%s\t%.1f ms\n", s.Metric["node"], s.Value*1000)
	}
	path := filepath.Join(c.RepoRoot, "_output", "e2e", "monitoring-query.txt")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("written to %s:\n%s", path, b.String())
}
