package framework

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// Cluster is a running e2e cluster and an admin client for it.
type Cluster struct {
	*Layout
	// Client is an admin client (group system:masters).
	Client kubernetes.Interface
	// RESTConfig is Client's configuration; its Dial opens sockets in the control-plane
	// namespace unless the process already runs there.
	RESTConfig *rest.Config
	// RepoRoot is the kproxy checkout the scripts come from.
	RepoRoot string
}

// Connect returns a handle on the cluster whose state is in stateDir. With dialInNetNS
// the API client dials from inside the control-plane namespace; without it the calling
// process must already run there (ip netns exec).
func Connect(stateDir string, dialInNetNS bool) (*Cluster, error) {
	l, err := LoadLayout(stateDir)
	if err != nil {
		return nil, err
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", l.Kubeconfig())
	if err != nil {
		return nil, err
	}
	cfg.QPS, cfg.Burst = 200, 400 // scenarios create hundreds of objects at once
	cfg.Timeout = 30 * time.Second
	if dialInNetNS {
		cpNS := l.ControlPlane.NetNS
		cfg.Dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			return DialContext(ctx, cpNS, network, addr)
		}
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	return &Cluster{Layout: l, Client: client, RESTConfig: cfg, RepoRoot: root}, nil
}

// Options shape the cluster Up starts.
type Options struct {
	// Name prefixes every namespace; default "kpxe2e-own" (Shared's is "kpxe2e", the
	// demo's "kpx-demo", so all can run at once).
	Name string
	// Nodes (default 2) and PodsPerNode (default 3).
	Nodes, PodsPerNode int
	// NoKProxy leaves kproxy stopped; start it with c.Start("kproxy-node-1").
	NoKProxy bool
	// Backend is kproxy's --iptables-backend (default nft).
	Backend string
	// Identity is "kube-proxy" (default, user system:kube-proxy) or "serviceaccount"
	// (ServiceAccount kube-system/kproxy bound by deploy/rbac.yaml).
	Identity string
	// ExtraArgs are appended to every kproxy's command line.
	ExtraArgs []string
}

// Up starts a cluster of its own for the test with hack/cluster-up.sh and tears it down
// with hack/cluster-down.sh when the test ends, keeping the logs in
// _output/e2e/logs/<test> when it failed. Use it for tests that change the cluster in ways
// others must not see (options, faults that are not undone); other tests share one
// cluster (Shared). It skips the test, saying what is missing, unless KPROXY_E2E=1, it
// runs as root and the binaries are built (hack/e2e.sh sees to all three). A cluster of
// the same name left over by a killed run is torn down first.
func Up(t *testing.T, o Options) *Cluster {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if missing := Missing(root); len(missing) > 0 {
		t.Skipf("skipping e2e: %s (make e2e, as root, builds everything and runs them)", strings.Join(missing, "; "))
	}
	if o.Name == "" {
		o.Name = "kpxe2e-own"
	}
	start := time.Now()
	c, err := up(root, o)
	if c != nil {
		t.Cleanup(func() {
			if t.Failed() {
				c.keepLogs(strings.ReplaceAll(t.Name(), "/", "_"), t.Logf)
			}
			if err := c.Down(); err != nil {
				t.Error(err)
			}
		})
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster %s up in %s", o.Name, time.Since(start).Round(time.Second))
	return c
}

var shared struct {
	sync.Mutex
	c      *Cluster
	err    error
	failed bool
}

// Shared returns the cluster the package's tests share (name "kpxe2e", default options),
// starting it on first use; Main tears it down after the last test. Tests using it must
// leave it as they found it: their own namespace (CreateNamespace), pods and services in
// it, and components they stop started again. It skips like Up.
func Shared(t *testing.T) *Cluster {
	t.Helper()
	root, err := repoRoot()
	if err != nil {
		t.Fatal(err)
	}
	if missing := Missing(root); len(missing) > 0 {
		t.Skipf("skipping e2e: %s (make e2e, as root, builds everything and runs them)", strings.Join(missing, "; "))
	}
	shared.Lock()
	defer shared.Unlock()
	if shared.c == nil && shared.err == nil {
		start := time.Now()
		shared.c, shared.err = up(root, Options{Name: "kpxe2e"})
		if shared.err == nil {
			t.Logf("shared cluster kpxe2e up in %s", time.Since(start).Round(time.Second))
		}
	}
	if shared.err != nil {
		t.Fatalf("shared cluster: %v", shared.err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			shared.Lock()
			shared.failed = true
			shared.Unlock()
		}
	})
	return shared.c
}

// Main runs the package's tests and then tears down the shared cluster, keeping its logs
// in _output/e2e/logs/shared when a test failed. Call it from TestMain.
func Main(m *testing.M) {
	code := m.Run()
	shared.Lock()
	if c := shared.c; c != nil {
		if shared.failed || code != 0 {
			c.keepLogs("shared", func(f string, a ...any) { fmt.Printf(f+"\n", a...) })
		}
		if err := c.Down(); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	shared.Unlock()
	os.Exit(code)
}

// up runs hack/cluster-up.sh; on error the returned cluster, if any, still needs Down.
func up(root string, o Options) (*Cluster, error) {
	stateDir := filepath.Join(os.TempDir(), "kproxy-cluster", o.Name)
	env := append(os.Environ(), "CLUSTER_NAME="+o.Name, "STATE_DIR="+stateDir)
	if o.Nodes > 0 {
		env = append(env, "NODES="+strconv.Itoa(o.Nodes))
	}
	if o.PodsPerNode > 0 {
		env = append(env, "PODS_PER_NODE="+strconv.Itoa(o.PodsPerNode))
	}
	if o.NoKProxy {
		env = append(env, "KPROXY=0")
	}
	if o.Backend != "" {
		env = append(env, "KPROXY_BACKEND="+o.Backend)
	}
	if o.Identity != "" {
		env = append(env, "KPROXY_IDENTITY="+o.Identity)
	}
	env = append(env, "KPROXY_EXTRA_ARGS="+strings.Join(o.ExtraArgs, " "))

	if _, err := os.Stat(stateDir); err == nil {
		if out, err := script(root, env, 3*time.Minute, "hack/cluster-down.sh"); err != nil {
			return nil, fmt.Errorf("tearing down the leftover cluster %s: %w\n%s", o.Name, err, out)
		}
	}
	if out, err := script(root, env, 5*time.Minute, "hack/cluster-up.sh"); err != nil {
		// cluster-up tears down by itself on failure, keeping the logs.
		logs := tailLogs(filepath.Join(stateDir, "logs"), 30)
		_, _ = script(root, env, 3*time.Minute, "hack/cluster-down.sh")
		return nil, fmt.Errorf("cluster-up: %w\n%s\n%s", err, out, logs)
	}
	c, err := Connect(stateDir, true)
	if err != nil {
		_, _ = script(root, env, 3*time.Minute, "hack/cluster-down.sh")
		return nil, err
	}
	c.RepoRoot = root
	return c, nil
}

// Down tears the cluster down with hack/cluster-down.sh.
func (c *Cluster) Down() error {
	env := append(os.Environ(), "CLUSTER_NAME="+c.Name, "STATE_DIR="+c.StateDir)
	if out, err := script(c.RepoRoot, env, 3*time.Minute, "hack/cluster-down.sh"); err != nil {
		return fmt.Errorf("cluster-down %s: %w\n%s", c.Name, err, out)
	}
	return nil
}

// keepLogs copies the components' logs to _output/e2e/logs/<name>.
func (c *Cluster) keepLogs(name string, logf func(string, ...any)) {
	dst := filepath.Join(c.RepoRoot, "_output", "e2e", "logs", name)
	_ = os.RemoveAll(dst)
	if err := copyDir(filepath.Join(c.StateDir, "logs"), dst); err == nil {
		logf("component logs of cluster %s kept in %s", c.Name, dst)
	}
}

// Missing lists what Up needs and does not have, in words a person can act on.
func Missing(root string) []string {
	var missing []string
	// Opt-in: each test starts whole clusters, which make test (go test ./...) should not
	// do behind its callers' backs.
	if os.Getenv("KPROXY_E2E") != "1" {
		missing = append(missing, "KPROXY_E2E=1 is not set")
	}
	if os.Geteuid() != 0 {
		missing = append(missing, "not root (the cluster lives in network namespaces)")
	}
	for _, cmd := range []string{"ip", "openssl", "curl", "setsid", "iptables-nft", "iptables-legacy"} {
		if _, err := exec.LookPath(cmd); err != nil {
			missing = append(missing, "no "+cmd+" command")
		}
	}
	for _, f := range []struct{ path, how string }{
		{"_output/tools/bin/kube-apiserver", "hack/build-tools.sh"},
		{"_output/tools/bin/kube-controller-manager", "hack/build-tools.sh"},
		{"_output/tools/bin/etcd", "hack/build-tools.sh"},
		{"_output/e2e/bin/kpx-echo", "hack/build-e2e.sh"},
		{"_output/e2e/bin/kpx-cluster", "hack/build-e2e.sh"},
		{"bin/kproxy", "hack/build.sh"},
	} {
		if _, err := os.Stat(filepath.Join(root, f.path)); err != nil {
			missing = append(missing, fmt.Sprintf("no %s (built by %s)", f.path, f.how))
		}
	}
	return missing
}

// Stop stops a component (etcd, kube-apiserver, kube-controller-manager, kproxy-node-I,
// echo-nI-pJ, echo-external) with SIGTERM, or SIGKILL after 10 s.
func (c *Cluster) Stop(component string) error { return c.ctl("stop", component) }

// Kill stops a component with SIGKILL, as a crash would.
func (c *Cluster) Kill(component string) error { return c.ctl("stop", component, "KILL") }

// Start starts a stopped component again, with the command line it had.
func (c *Cluster) Start(component string) error { return c.ctl("start", component) }

// Restart stops and starts a component.
func (c *Cluster) Restart(component string) error { return c.ctl("restart", component) }

// Running tells whether a component runs.
func (c *Cluster) Running(component string) bool { return c.ctl("pid", component) == nil }

// KProxy is the component name of kproxy on node (such as "node-1").
func KProxy(node string) string { return "kproxy-" + node }

// Echo is the component name of a pod slot's echo server.
func Echo(pod string) string { return "echo-" + pod }

// Log returns a component's log so far.
func (c *Cluster) Log(component string) (string, error) {
	data, err := os.ReadFile(filepath.Join(c.StateDir, "logs", component+".log"))
	return string(data), err
}

func (c *Cluster) ctl(args ...string) error {
	env := append(os.Environ(), "CLUSTER_NAME="+c.Name, "STATE_DIR="+c.StateDir)
	out, err := script(c.RepoRoot, env, 2*time.Minute, "hack/cluster/ctl.sh", args...)
	if err != nil {
		return fmt.Errorf("ctl.sh %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return nil
}

func script(root string, env []string, timeout time.Duration, name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root, name), args...)
	cmd.Dir = root
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// repoRoot finds the checkout from the working directory (go test runs in the package's
// folder) or from $KPROXY_REPO.
func repoRoot() (string, error) {
	if r := os.Getenv("KPROXY_REPO"); r != "" {
		return r, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for range 10 {
		if _, err := os.Stat(filepath.Join(dir, "hack", "cluster-up.sh")); err == nil {
			return dir, nil
		}
		dir = filepath.Dir(dir)
	}
	return "", errors.New("framework: cannot find the kproxy checkout (hack/cluster-up.sh) above the working directory; set KPROXY_REPO")
}

func tailLogs(dir string, lines int) string {
	var b strings.Builder
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		all := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
		if len(all) > lines {
			all = all[len(all)-lines:]
		}
		fmt.Fprintf(&b, "=== %s (last %d lines)\n%s\n", e.Name(), len(all), strings.Join(all, "\n"))
	}
	return b.String()
}

func copyDir(src, dst string) error {
	return filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, path)
		target := filepath.Join(dst, rel)
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		return os.WriteFile(target, data, 0o644)
	})
}
