package framework

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

// RunHostNetworkPod creates pod, a host-network pod bound to one of the cluster's nodes
// (Spec.NodeName), and then, as the kubelet would, reports it Running and Ready with the
// node's address as its pod IP and every container running. It is RunPod for pods such as
// kproxy's own (deploy/daemonset.yaml), which run in the node's namespace rather than in a
// pod slot; nothing is started for it. It returns the pod as stored; delete it with
// DeletePod.
func (c *Cluster) RunHostNetworkPod(ctx context.Context, pod *v1.Pod) (*v1.Pod, error) {
	if !pod.Spec.HostNetwork {
		return nil, fmt.Errorf("pod %s/%s: not a host-network pod; use RunPod", pod.Namespace, pod.Name)
	}
	var node *Node
	for i := range c.Nodes {
		if c.Nodes[i].Name == pod.Spec.NodeName {
			node = &c.Nodes[i]
		}
	}
	if node == nil {
		return nil, fmt.Errorf("pod %s/%s: spec.nodeName %q is none of the cluster's nodes", pod.Namespace, pod.Name, pod.Spec.NodeName)
	}
	return c.startPod(ctx, pod, node.IP, node.IP, v1.PodQOSBurstable, node.NetNS)
}

// KubernetesSDAccess returns what a kubernetes_sd_configs entry needs to reach this
// cluster's API server from outside the cluster: api_server, tls_config (ca_file, the
// serving certificate kube-apiserver made, which holds its CA) and authorization (the
// admin token, written to a file in dir). Merge it into the entry of a shipped scrape job.
func (c *Cluster) KubernetesSDAccess(dir string) (map[string]any, error) {
	if c.RESTConfig.BearerToken == "" {
		return nil, fmt.Errorf("%s has no token", c.Kubeconfig())
	}
	tokenFile := filepath.Join(dir, "admin.token")
	if err := os.WriteFile(tokenFile, []byte(c.RESTConfig.BearerToken), 0o600); err != nil {
		return nil, err
	}
	return map[string]any{
		"api_server":    c.APIServer,
		"tls_config":    map[string]any{"ca_file": filepath.Join(c.StateDir, "pki", "apiserver", "apiserver.crt")},
		"authorization": map[string]any{"type": "Bearer", "credentials_file": tokenFile},
	}, nil
}

// Prometheus is a Prometheus server running in the cluster's control-plane namespace,
// started by StartPrometheus.
type Prometheus struct {
	// Binary is the server that runs.
	Binary string
	// Addr is its HTTP address, 127.0.0.1:PORT inside the control-plane namespace.
	Addr    string
	logPath string
	client  *http.Client
}

// FindPrometheus returns the Prometheus server the tests use: $PROMETHEUS when set, else
// _output/tools/bin/prometheus when built, else prometheus on $PATH. When there is none it
// skips the test, or fails it when $CI is true (CI must not skip it silently).
func (c *Cluster) FindPrometheus(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("PROMETHEUS"); p != "" {
		return p
	}
	if p := filepath.Join(c.RepoRoot, "_output", "tools", "bin", "prometheus"); isExecutable(p) {
		return p
	}
	p, err := exec.LookPath("prometheus")
	if err != nil {
		SkipUnlessCI(t, "no Prometheus server: set $PROMETHEUS, or put upstream's prometheus on $PATH or in _output/tools/bin")
	}
	return p
}

// SkipUnlessCI skips the test with msg, or fails it with msg when $CI is true: there a
// missing tool is a broken CI image, not a developer's machine without it.
func SkipUnlessCI(t testing.TB, msg string) {
	t.Helper()
	if ci, _ := strconv.ParseBool(os.Getenv("CI")); ci {
		t.Fatalf("%s (CI=%s: failing instead of skipping)", msg, os.Getenv("CI"))
	}
	t.Skipf("skipping: %s", msg)
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0
}

// StartPrometheus runs a Prometheus server (FindPrometheus) with config (a prometheus.yml)
// in the control-plane namespace, so it reaches the API server and the nodes as a
// monitoring host on the nodes' LAN would, and waits until it is ready. Its storage and
// log are in test-owned temporary folders. When the test ends it is stopped and, if the
// test failed, the end of its log goes to the test's output.
//
// A server built without Kubernetes service discovery (Debian's prometheus package
// removes it) cannot load a kubernetes_sd_configs job: the test is then skipped, or
// failed in CI, saying so.
func (c *Cluster) StartPrometheus(t testing.TB, config []byte) *Prometheus {
	t.Helper()
	bin := c.FindPrometheus(t)
	dir := t.TempDir() // before the Cleanup below, so removed after the server stopped
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, config, 0o600); err != nil {
		t.Fatal(err)
	}
	port, err := c.freeControlPlanePort()
	if err != nil {
		t.Fatal(err)
	}
	p := &Prometheus{
		Binary:  bin,
		Addr:    net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		logPath: filepath.Join(dir, "prometheus.log"),
	}
	logFile, err := os.Create(p.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close() // the child has its own descriptor
	cpNS := c.ControlPlane.NetNS
	cmd := exec.Command("ip", "netns", "exec", cpNS, bin,
		"--config.file="+cfgPath,
		"--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--storage.tsdb.retention.time=1h",
		"--web.listen-address="+p.Addr)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Killed with the test binary even when go test's timeout kills it and no Cleanup
	// runs. The signal follows the thread that started the child, not the process, so
	// that thread stays locked to the goroutine below for the child's whole life.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	started, exited := make(chan error, 1), make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := cmd.Start(); err != nil {
			started <- err
			close(exited)
			return
		}
		started <- nil
		_ = cmd.Wait()
		close(exited)
	}()
	if err := <-started; err != nil {
		t.Fatalf("starting %s: %v", bin, err)
	}
	t.Logf("prometheus %s in %s on %s", bin, cpNS, p.Addr)
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("prometheus log (last 60 lines):\n%s", p.logTail(60))
		}
	})
	p.client = &http.Client{
		Timeout: 10 * time.Second,
		Transport: &http.Transport{
			Proxy: nil, // the server is in the namespace, never behind $HTTP_PROXY
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return DialContext(ctx, cpNS, network, addr)
			},
			DisableKeepAlives: true,
		},
	}

	// Ready once it has loaded its configuration and opened its storage.
	deadline := time.Now().Add(60 * time.Second)
	for {
		select {
		case <-exited:
			log := p.logTail(20)
			if strings.Contains(log, "kubernetes_sd_configs not found") {
				SkipUnlessCI(t, bin+" is built without Kubernetes service discovery (Debian's package removes it); "+
					"use upstream's: CGO_ENABLED=0 go install -tags remove_all_sd,enable_kubernetes_sd "+
					"github.com/prometheus/prometheus/cmd/prometheus@v0.316.0 and set $PROMETHEUS or copy it to _output/tools/bin")
			}
			t.Fatalf("prometheus exited before it was ready (%v):\n%s", cmd.ProcessState, log)
		default:
		}
		code, _, err := p.get(context.Background(), "/-/ready", nil)
		if err == nil && code == http.StatusOK {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("prometheus not ready after 60s (last: status %d, %v):\n%s", code, err, p.logTail(20))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// freeControlPlanePort returns a TCP port free on 127.0.0.1 in the control-plane
// namespace (free when asked: another process may take it before the caller does).
func (c *Cluster) freeControlPlanePort() (int, error) {
	var port int
	err := InNetNS(c.ControlPlane.NetNS, func() error {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		port = l.Addr().(*net.TCPAddr).Port
		return l.Close()
	})
	return port, err
}

func (p *Prometheus) logTail(lines int) string {
	data, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error()
	}
	all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

func (p *Prometheus) get(ctx context.Context, path string, query url.Values) (int, []byte, error) {
	u := url.URL{Scheme: "http", Host: p.Addr, Path: path, RawQuery: query.Encode()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, body, err
}

// Sample is one element of an instant vector: its labels and value.
type Sample struct {
	Metric map[string]string
	Value  float64
}

func (s Sample) String() string {
	return fmt.Sprintf("%v => %g", s.Metric, s.Value)
}

// apiResponse is the envelope of Prometheus' HTTP API answers. The API's Go client
// (client_golang/api) returns prometheus/common/model values, which would make that module
// a direct dependency of kproxy for one test; the vector format is this small.
type apiResponse struct {
	Status    string          `json:"status"`
	ErrorType string          `json:"errorType"`
	Error     string          `json:"error"`
	Data      json.RawMessage `json:"data"`
}

// Query evaluates promql now (GET /api/v1/query) and returns the instant vector it gives
// and Prometheus' answer as it came. A result that is not a vector is an error.
func (p *Prometheus) Query(ctx context.Context, promql string) ([]Sample, []byte, error) {
	code, body, err := p.get(ctx, "/api/v1/query", url.Values{"query": {promql}})
	if err != nil {
		return nil, nil, fmt.Errorf("query %s: %w", promql, err)
	}
	var resp apiResponse
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, body, fmt.Errorf("query %s: status %d, %w: %s", promql, code, err, body)
	}
	if resp.Status != "success" {
		return nil, body, fmt.Errorf("query %s: %s: %s", promql, resp.ErrorType, resp.Error)
	}
	var data struct {
		ResultType string `json:"resultType"`
		Result     []struct {
			Metric map[string]string `json:"metric"`
			Value  [2]any            `json:"value"` // [unix time, "value"]
		} `json:"result"`
	}
	if err := json.Unmarshal(resp.Data, &data); err != nil {
		return nil, body, fmt.Errorf("query %s: %w", promql, err)
	}
	if data.ResultType != "vector" {
		return nil, body, fmt.Errorf("query %s: result type %s, want vector", promql, data.ResultType)
	}
	samples := make([]Sample, 0, len(data.Result))
	for _, r := range data.Result {
		s, ok := r.Value[1].(string)
		if !ok {
			return nil, body, fmt.Errorf("query %s: malformed sample value %v", promql, r.Value)
		}
		v, err := strconv.ParseFloat(s, 64) // also "NaN", "+Inf"
		if err != nil {
			return nil, body, fmt.Errorf("query %s: %w", promql, err)
		}
		samples = append(samples, Sample{Metric: r.Metric, Value: v})
	}
	return samples, body, nil
}

// Version returns the server's version (GET /api/v1/status/buildinfo).
func (p *Prometheus) Version(ctx context.Context) (string, error) {
	_, body, err := p.get(ctx, "/api/v1/status/buildinfo", nil)
	if err != nil {
		return "", err
	}
	var resp apiResponse
	var info struct {
		Version string `json:"version"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return "", err
	}
	if err := json.Unmarshal(resp.Data, &info); err != nil {
		return "", err
	}
	if info.Version == "" {
		return "", errors.New("no version in the build information")
	}
	return info.Version, nil
}
