package diff

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/kproxy-dev/kproxy/test/diff/gen"
	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

// proxyConfig is the KubeProxyConfiguration both proxies get: the shipped one's settings,
// with syncs as fast as they go (so a step settles quickly), a short sync period (kproxy's
// drift check and both proxies' canary checks run at it), and no node-wide conntrack
// sysctls (nf_conntrack_max is not per network namespace).
const proxyConfig = `apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: %s
hostnameOverride: %s
bindAddress: 0.0.0.0
healthzBindAddress: 0.0.0.0:10256
metricsBindAddress: 127.0.0.1:10249
iptables:
  masqueradeBit: 14
  minSyncPeriod: 0s
  syncPeriod: 2s
conntrack:
  maxPerCore: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
clientConnection:
  kubeconfig: %s
`

// proxy is one proxy process in its node namespace.
type proxy struct {
	name, netns, backend string
	// args is the command line, "ip netns exec ..." included, to start it again.
	args    []string
	cmd     *exec.Cmd
	log     string
	logFile *os.File
}

// startProxy starts bin in netns as node nodeName, with the iptables backend forced: for
// kproxy by its flag, for upstream, which runs whatever "iptables" is on PATH, by a PATH
// whose iptables commands are the backend's.
func startProxy(t *testing.T, c *framework.Cluster, name, bin, netns, backend, nodeName string, upstream bool) *proxy {
	t.Helper()
	dir := filepath.Join(c.StateDir, name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "config.conf")
	kubeconfig := filepath.Join(c.StateDir, "kube-proxy.kubeconfig")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf(proxyConfig, c.ClusterCIDR, nodeName, kubeconfig)), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"XTABLES_LOCKFILE=" + filepath.Join(dir, "xtables.lock")}
	args := []string{"--config=" + conf, "--hostname-override=" + nodeName, "-v=2"}
	if upstream {
		pathDir := filepath.Join(dir, "path")
		if err := backendPath(pathDir, backend); err != nil {
			t.Fatal(err)
		}
		env = append(env, "PATH="+pathDir+":"+os.Getenv("PATH"))
	} else {
		args = append(args, "--iptables-backend="+backend)
	}
	logPath := filepath.Join(c.StateDir, "logs", name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmdArgs := append(append(append([]string{"netns", "exec", netns, "env"}, env...), bin), args...)
	p := &proxy{name: name, netns: netns, backend: backend, args: cmdArgs, log: logPath, logFile: logFile}
	if err := p.start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		p.stop()
		logFile.Close()
		if t.Failed() {
			dst := filepath.Join(c.RepoRoot, "_output", "diff", "logs", name+".log")
			_ = os.MkdirAll(filepath.Dir(dst), 0o755)
			if data, err := os.ReadFile(logPath); err == nil {
				_ = os.WriteFile(dst, data, 0o644)
				t.Logf("log of %s kept in %s", name, dst)
			}
		}
	})
	return p
}

func (p *proxy) start() error {
	cmd := exec.Command("ip", p.args...)
	cmd.Stdout, cmd.Stderr = p.logFile, p.logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return err
	}
	p.cmd = cmd
	return nil
}

func (p *proxy) stop() {
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	_ = p.cmd.Wait()
}

// restart stops the proxy and starts it again from scratch, keeping the rules it wrote
// (as a restarted kube-proxy finds them), and waits for its first sync.
func (p *proxy) restart(ctx context.Context) error {
	p.stop()
	if err := p.start(); err != nil {
		return err
	}
	return p.waitHealthy(ctx, 60*time.Second)
}

// backendPath fills dir with iptables commands that run backend's binaries.
func backendPath(dir, backend string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for _, family := range []string{"iptables", "ip6tables"} {
		for _, suffix := range []string{"", "-save", "-restore"} {
			target, err := exec.LookPath(family + "-" + backend + suffix)
			if err != nil {
				return err
			}
			link := filepath.Join(dir, family+suffix)
			_ = os.Remove(link)
			if err := os.Symlink(target, link); err != nil {
				return err
			}
		}
	}
	return nil
}

// waitHealthy waits until the proxy answers /healthz with 200: it has synced once.
func (p *proxy) waitHealthy(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if p.cmd.ProcessState != nil {
			return fmt.Errorf("%s exited: %s", p.name, p.cmd.ProcessState)
		}
		if _, err := framework.Exec(ctx, p.netns, "curl", "-fsS", "-m", "2", "http://127.0.0.1:10256/healthz"); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not healthy after %s; log %s", p.name, timeout, p.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// rules returns the canonical filter, nat and mangle tables of the proxy's namespace.
func (p *proxy) rules(ctx context.Context) (string, error) {
	var all strings.Builder
	for _, table := range []string{"filter", "nat", "mangle"} {
		out, err := p.save(ctx, table)
		if err != nil {
			return "", err
		}
		all.WriteString(out)
	}
	return Canonical(all.String())
}

// save returns the proxy namespace's table as iptables-save prints it on stdout; stderr
// is kept apart, as iptables-nft-save warns there about legacy tables left by an earlier
// run, in the middle of its output.
func (p *proxy) save(ctx context.Context, table string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var stdout, stderr strings.Builder
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", p.netns, "iptables-"+p.backend+"-save", "-t", table)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("iptables-%s-save -t %s in %s: %w: %s", p.backend, table, p.netns, err, stderr.String())
	}
	return stdout.String(), nil
}

// restore feeds payload to the backend's iptables-restore --noflush in the namespace.
func (p *proxy) restore(ctx context.Context, payload string) error {
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", p.netns, "iptables-"+p.backend+"-restore", "--noflush")
	cmd.Stdin = strings.NewReader(payload)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iptables-%s-restore in %s: %w: %s", p.backend, p.netns, err, out)
	}
	return nil
}

// iptables runs the backend's iptables command in the proxy's namespace.
func (p *proxy) iptables(ctx context.Context, args ...string) error {
	_, err := framework.Exec(ctx, p.netns, append([]string{"iptables-" + p.backend}, args...)...)
	return err
}

// applier writes a generator's Ops to the API server and counts what it refused.
type applier struct {
	client  kubernetes.Interface
	refused map[string]int
	applied int
}

// apply writes one Op: create, or update what exists (the API server keeps what it
// allocated, cluster IPs and node ports, when the desired object leaves them empty), and
// the load-balancer status through its subresource. What the API server refuses is not
// fair input and is dropped from the run, counted by reason.
func (a *applier) apply(ctx context.Context, op gen.Op) error {
	err := a.write(ctx, op)
	var status apierrors.APIStatus
	if err != nil && errors.As(err, &status) && (apierrors.IsInvalid(err) || apierrors.IsBadRequest(err) || apierrors.IsForbidden(err)) {
		a.refused[string(status.Status().Reason)]++
		return nil
	}
	if err == nil {
		a.applied++
	}
	return err
}

func (a *applier) write(ctx context.Context, op gen.Op) error {
	switch {
	case op.Service != nil:
		want := op.Service.DeepCopy()
		api := a.client.CoreV1().Services(want.Namespace)
		if op.Delete {
			return ignoreNotFound(api.Delete(ctx, want.Name, metav1.DeleteOptions{}))
		}
		status := want.Status
		cur, err := api.Get(ctx, want.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			cur, err = api.Create(ctx, want, metav1.CreateOptions{})
		case err == nil:
			want.ResourceVersion = cur.ResourceVersion
			cur, err = api.Update(ctx, want, metav1.UpdateOptions{})
		}
		if err != nil {
			return err
		}
		if !equalIngress(cur.Status.LoadBalancer.Ingress, status.LoadBalancer.Ingress) {
			cur.Status = status
			_, err = api.UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		}
		return err
	case op.Slice != nil:
		want := op.Slice.DeepCopy()
		api := a.client.DiscoveryV1().EndpointSlices(want.Namespace)
		if op.Delete {
			return ignoreNotFound(api.Delete(ctx, want.Name, metav1.DeleteOptions{}))
		}
		cur, err := api.Get(ctx, want.Name, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			_, err = api.Create(ctx, want, metav1.CreateOptions{})
		case err == nil:
			want.ResourceVersion = cur.ResourceVersion
			_, err = api.Update(ctx, want, metav1.UpdateOptions{})
		}
		return err
	}
	return errors.New("an Op with neither a Service nor a Slice")
}

func equalIngress(a, b []v1.LoadBalancerIngress) bool {
	return apiequality.Semantic.DeepEqual(a, b)
}

func ignoreNotFound(err error) error {
	if apierrors.IsNotFound(err) {
		return nil
	}
	return err
}

// deleteAll removes every generated object from the namespaces.
func deleteAll(ctx context.Context, client kubernetes.Interface, namespaces []string) error {
	for _, ns := range namespaces {
		svcs, err := client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		for _, s := range svcs.Items {
			if err := ignoreNotFound(client.CoreV1().Services(ns).Delete(ctx, s.Name, metav1.DeleteOptions{})); err != nil {
				return err
			}
		}
		err = client.DiscoveryV1().EndpointSlices(ns).DeleteCollection(ctx, metav1.DeleteOptions{},
			metav1.ListOptions{LabelSelector: discovery.LabelManagedBy + "=" + gen.ManagedBy})
		if err != nil {
			return err
		}
	}
	return nil
}
