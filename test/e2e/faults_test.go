package e2e

// Fault tests: each says in its comment what must not be lost.

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

// TestFaultAPIServerStoppedFor60s: kube-apiserver stops for 60 s and comes back. Not lost:
// the rules (every KUBE-SVC/KUBE-SEP chain stays, unchanged), the traffic (every request
// through the cluster IP and the node port succeeds during the outage), and the changes
// made after the restart (a new service and a new endpoint are programmed).
func TestFaultAPIServerStoppedFor60s(t *testing.T) {
	c := framework.Up(t, framework.Options{})
	ctx := context.Background()
	ns := c.CreateNamespace(t, "apiserver")
	labels := map[string]string{"app": "apiserver"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	svc := tcpService(ns, "before", v1.ServiceTypeNodePort, labels, 80, 8080)
	svc = c.CreateService(t, svc)
	clusterAddr := framework.HostPort(svc.Spec.ClusterIP, 80)
	nodeAddr := framework.HostPort(c.Node("node-2").IP, svc.Spec.Ports[0].NodePort)
	from := podNS(c, "n1-p2")
	c.WaitForBackends(t, from, "tcp", clusterAddr, "n1-p1", "n2-p1")
	c.WaitForBackends(t, c.External.NetNS, "tcp", nodeAddr, "n1-p1", "n2-p1")
	// The test's own service only: kube-apiserver takes its own address out of
	// default/kubernetes when it shuts down, and kproxy rightly follows.
	before := map[string]string{}
	for _, n := range c.Nodes {
		before[n.Name] = serviceChains(t, c, n.Name, ns)
	}

	if err := c.Stop("kube-apiserver"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Start("kube-apiserver") })
	outage := time.Now()
	var ok, failed int
	var firstErr error
	for time.Since(outage) < 60*time.Second {
		for _, target := range []struct{ from, addr string }{{from, clusterAddr}, {c.External.NetNS, nodeAddr}} {
			if _, err := framework.Request(ctx, target.from, "tcp", target.addr); err != nil {
				failed++
				if firstErr == nil {
					firstErr = fmt.Errorf("%s after %s: %w", target.addr, time.Since(outage).Round(time.Millisecond), err)
				}
			} else {
				ok++
			}
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Logf("during the 60s outage: %d requests answered, %d failed", ok, failed)
	if failed > 0 {
		t.Errorf("%d requests failed during the outage; first: %v", failed, firstErr)
	}
	for _, n := range c.Nodes {
		if after := serviceChains(t, c, n.Name, ns); after != before[n.Name] {
			t.Errorf("%s: service chains changed during the outage:\nbefore:\n%s\nafter:\n%s", n.Name, before[n.Name], after)
		}
	}
	for _, n := range c.Nodes {
		if !c.Running(framework.KProxy(n.Name)) {
			t.Errorf("kproxy on %s exited during the outage", n.Name)
		}
	}

	if err := c.Start("kube-apiserver"); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Minute, "kube-apiserver is ready again", func() error {
		body, err := c.Client.CoreV1().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		if err != nil {
			return fmt.Errorf("%w: %s", err, body)
		}
		return nil
	})
	t.Logf("kube-apiserver back %s after it was stopped", time.Since(outage).Round(time.Second))
	// Changes after the restart: a new service, and a new endpoint of the old one. The
	// controller manager's watches come back on their own schedule (client-go backoff);
	// wait for its EndpointSlices first, so that the time kproxy takes is measured alone.
	var after *v1.Service
	// Right after a restart the cluster-IP allocator may still say "range is full".
	eventually(t, time.Minute, "creating a service after the restart", func() error {
		var err error
		after, err = c.Client.CoreV1().Services(ns).Create(ctx,
			tcpService(ns, "after", v1.ServiceTypeClusterIP, labels, 80, 9090), metav1.CreateOptions{})
		return err
	})
	c.RunPods(t, ns, labels, "n2-p2")
	took := eventually(t, 3*time.Minute, "kube-controller-manager publishes the new endpoints", func() error {
		for _, name := range []string{"before", "after"} {
			slices, err := c.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
				LabelSelector: discoveryv1.LabelServiceName + "=" + name})
			if err != nil {
				return err
			}
			n := 0
			for _, s := range slices.Items {
				n += len(s.Endpoints)
			}
			if n != 3 {
				return fmt.Errorf("service %s has %d endpoints in its slices, want 3", name, n)
			}
		}
		return nil
	})
	t.Logf("kube-controller-manager published the new endpoints after %s", took.Round(time.Millisecond))
	programmed := time.Now()
	defer func() { t.Logf("kproxy programmed them %s later", time.Since(programmed).Round(time.Millisecond)) }()
	c.WaitForBackends(t, from, "tcp", framework.HostPort(after.Spec.ClusterIP, 80), "n1-p1", "n2-p1", "n2-p2")
	c.WaitForBackends(t, from, "tcp", clusterAddr, "n1-p1", "n2-p1", "n2-p2")
}

// TestFaultKProxyKilledMidTraffic: kproxy on node-1 is killed (SIGKILL, as a crash) and
// started again while a client holds a TCP connection through a cluster IP. Not lost: the
// established connection (it keeps being answered by the same pod throughout), new
// connections while kproxy is down, and the rules (the service's rules are never missing
// while kproxy stops and starts, and the nat and filter tables after the restart equal
// those before). The first sync of the new process is a full one.
func TestFaultKProxyKilledMidTraffic(t *testing.T) {
	c := framework.Up(t, framework.Options{})
	ctx := context.Background()
	ns := c.CreateNamespace(t, "kproxy-kill")
	labels := map[string]string{"app": "kproxy-kill"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	svc := c.CreateService(t, tcpService(ns, "kill", v1.ServiceTypeNodePort, labels, 80, 8080))
	addr := framework.HostPort(svc.Spec.ClusterIP, 80)
	from := podNS(c, "n1-p2")
	c.WaitForBackends(t, from, "tcp", addr, "n1-p1", "n2-p1")
	// Let the service's sync settle, so that the tables before are the final ones.
	time.Sleep(2 * time.Second)
	beforeNAT, beforeFilter := canonicalTable(t, c, "node-1", "nat"), canonicalTable(t, c, "node-1", "filter")

	conn, err := framework.Dial(ctx, from, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ping := func(when string) {
		t.Helper()
		_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
		r, err := framework.Ping(conn)
		if err != nil {
			t.Fatalf("established connection %s: %v", when, err)
		}
		t.Logf("established connection %s: %v", when, r)
	}
	ping("before the kill")

	// Watch the service's cluster-IP rule on node-1 from before the kill until after the
	// new process has synced.
	var watched, missing atomic.Int32
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		rule := ns + "/kill:tcp cluster IP"
		for {
			select {
			case <-stop:
				return
			default:
			}
			out, err := c.IPTablesSave(ctx, "node-1", "nat")
			if err == nil {
				watched.Add(1)
				if !strings.Contains(out, rule) {
					missing.Add(1)
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
	})
	defer func() { close(stop); wg.Wait() }()

	comp := framework.KProxy("node-1")
	if err := c.Kill(comp); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Start(comp) })
	ping("with kproxy dead")
	if r, err := framework.Request(ctx, from, "tcp", addr); err != nil {
		t.Errorf("new connection with kproxy dead: %v", err)
	} else {
		t.Logf("new connection with kproxy dead: %v", r)
	}
	time.Sleep(time.Second)
	if err := c.Start(comp); err != nil {
		t.Fatal(err)
	}
	eventually(t, 60*time.Second, "the restarted kproxy has synced", func() error {
		n, err := c.SyncCount(ctx, "node-1")
		if err != nil {
			return err
		}
		if n < 1 {
			return fmt.Errorf("no sync yet")
		}
		return nil
	})
	time.Sleep(2 * time.Second) // more syncs, if any, and more watching
	ping("after the restart")
	if m := missing.Load(); m > 0 {
		t.Errorf("the service's rule was missing in %d of %d iptables-save snapshots around the restart", m, watched.Load())
	} else {
		t.Logf("the service's rule was present in all %d snapshots around the restart", watched.Load())
	}
	if after := canonicalTable(t, c, "node-1", "nat"); after != beforeNAT {
		t.Errorf("nat table differs after the restart:\nbefore:\n%s\nafter:\n%s", beforeNAT, after)
	}
	if after := canonicalTable(t, c, "node-1", "filter"); after != beforeFilter {
		t.Errorf("filter table differs after the restart:\nbefore:\n%s\nafter:\n%s", beforeFilter, after)
	}

	// The first sync of the new process is full (its log since the last start).
	log, err := c.Log(comp)
	if err != nil {
		t.Fatal(err)
	}
	log = log[strings.LastIndex(log, "--- start "):]
	var first string
	for l := range strings.SplitSeq(log, "\n") {
		if strings.Contains(l, `"Synced rules"`) {
			first = l
			break
		}
	}
	if !strings.Contains(first, "full=true") {
		t.Errorf("first sync after the restart is not full: %q", first)
	}
	text, err := c.Metrics(ctx, "node-1")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := framework.MetricValue(text, `kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family="IPv4"}`); v < 1 {
		t.Errorf("no full sync counted after the restart")
	}
}

// TestFaultXTablesLockHeldLongerThanKProxyWaits: another process holds node-1's xtables
// lock for longer than kproxy's wait (5 s) while a service is created (legacy backend:
// iptables-nft takes no lock). Not lost: the change. The sync fails, is counted
// (kubeproxy_sync_proxy_rules_iptables_restore_failures_total), is retried, and succeeds
// once the lock is free; the old rules keep working throughout.
func TestFaultXTablesLockHeldLongerThanKProxyWaits(t *testing.T) {
	c := framework.Up(t, framework.Options{Backend: "legacy", Nodes: 1, PodsPerNode: 3})
	ctx := context.Background()
	ns := c.CreateNamespace(t, "lock")
	labels := map[string]string{"app": "lock"}
	c.RunPods(t, ns, labels, "n1-p1")
	old := c.CreateService(t, tcpService(ns, "old", v1.ServiceTypeClusterIP, labels, 80, 8080))
	from := podNS(c, "n1-p3")
	oldAddr := framework.HostPort(old.Spec.ClusterIP, 80)
	c.WaitForBackends(t, from, "tcp", oldAddr, "n1-p1")
	const failures = `kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv4"}`
	metric := func(name string) float64 {
		text, err := c.Metrics(ctx, "node-1")
		if err != nil {
			t.Fatal(err)
		}
		v, _ := framework.MetricValue(text, name)
		return v
	}
	failuresBefore := metric(failures)

	f, err := os.OpenFile(c.XTablesLock("node-1"), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	eventually(t, 30*time.Second, "taking the xtables lock", func() error {
		return syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	})
	locked := time.Now()
	unlock := func() { _ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN) }
	defer unlock()

	svc := c.CreateService(t, tcpService(ns, "new", v1.ServiceTypeClusterIP, labels, 80, 9090))
	addr := framework.HostPort(svc.Spec.ClusterIP, 80)
	eventually(t, 30*time.Second, "a failed restore is counted", func() error {
		if v := metric(failures); v <= failuresBefore {
			return fmt.Errorf("%s = %v", failures, v)
		}
		return nil
	})
	t.Logf("restore failure counted %s after taking the lock", time.Since(locked).Round(time.Millisecond))
	if r, err := framework.Request(ctx, from, "tcp", addr); err == nil {
		t.Errorf("the new service answers while the lock is held: %v", r)
	}
	if _, err := framework.Request(ctx, from, "tcp", oldAddr); err != nil {
		t.Errorf("the old service fails while the lock is held: %v", err)
	}
	// Hold it a little longer than one more wait, then let go.
	time.Sleep(6 * time.Second)
	unlock()
	released := time.Now()
	t.Logf("lock held for %s", released.Sub(locked).Round(time.Millisecond))
	if err := framework.WaitForBackends(ctx, 90*time.Second, from, "tcp", addr, "n1-p1"); err != nil {
		t.Fatalf("after releasing the lock: %v", err)
	}
	t.Logf("the new service works %s after the lock was released (retry interval: the sync period, 30s)",
		time.Since(released).Round(time.Millisecond))
	failuresAfter := metric(failures)
	time.Sleep(3 * time.Second)
	if v := metric(failures); v != failuresAfter {
		t.Errorf("restores still fail after the lock was released: %s went from %v to %v", failures, failuresAfter, v)
	}
	if code, body, err := c.Healthz(ctx, "node-1"); err != nil || code != 200 {
		t.Errorf("healthz after recovery: %d %s %v", code, body, err)
	}
}

// TestFaultNATTableFlushedFromOutside: another program runs "iptables -t nat -F" on
// node-1 (rules gone, chains and the canary left). Not lost for longer than the sync
// period (30 s): the service's DNAT rules; kproxy writes them back and traffic flows.
func TestFaultNATTableFlushedFromOutside(t *testing.T) {
	c := framework.Shared(t)
	ctx := context.Background()
	ns := c.CreateNamespace(t, "natflush")
	labels := map[string]string{"app": "natflush"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	svc := c.CreateService(t, tcpService(ns, "natflush", v1.ServiceTypeClusterIP, labels, 80, 8080))
	addr := framework.HostPort(svc.Spec.ClusterIP, 80)
	from := podNS(c, "n1-p2")
	c.WaitForBackends(t, from, "tcp", addr, "n1-p1", "n2-p1")

	if out, err := c.IPTables(ctx, "node-1", "-t", "nat", "-F"); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	flushed := time.Now()
	if l := natRulesMentioning(t, c, "node-1", ns+"/natflush:tcp"); len(l) > 0 {
		t.Fatalf("rules survived the flush: %v", l)
	}
	err := framework.WaitForBackends(ctx, 45*time.Second, from, "tcp", addr, "n1-p1", "n2-p1")
	took := time.Since(flushed)
	if err != nil {
		t.Fatalf("nat rules not repaired %s after the flush: %v", took.Round(time.Second), err)
	}
	t.Logf("repaired %s after the flush", took.Round(time.Millisecond))
	if took > 35*time.Second {
		t.Errorf("repaired after %s: more than the sync period (30 s) plus slack", took.Round(time.Second))
	}
}

// TestFaultThousandServicesBurst: 1,000 services created in one burst, then deleted in
// one. Not lost: any of them. Every one is programmed on every node (its cluster-IP rule
// in KUBE-SERVICES, a sample answers), then every one of their chains is gone.
func TestFaultThousandServicesBurst(t *testing.T) {
	const n = 1000
	c := framework.Up(t, framework.Options{PodsPerNode: 2})
	ctx := context.Background()
	ns := c.CreateNamespace(t, "burst")
	labels := map[string]string{"app": "burst"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	svcChains := func(node string) int {
		out, err := c.IPTablesSave(ctx, node, "nat")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(out, "\n:KUBE-SVC-")
	}
	baseline := map[string]int{}
	for _, node := range c.Nodes {
		baseline[node.Name] = svcChains(node.Name)
	}

	start := time.Now()
	created := make([]*v1.Service, n)
	parallel(t, n, func(i int) error {
		s, err := c.Client.CoreV1().Services(ns).Create(ctx,
			tcpService(ns, fmt.Sprintf("burst-%04d", i), v1.ServiceTypeClusterIP, labels, 80, 8080), metav1.CreateOptions{})
		created[i] = s
		return err
	})
	t.Logf("created %d services in %s", n, time.Since(start).Round(time.Millisecond))
	// kube-controller-manager writes the slices at its own client rate (20 QPS by
	// default), which bounds how soon the endpoints can be programmed.
	eventually(t, 5*time.Minute, "kube-controller-manager has written every EndpointSlice", func() error {
		slices, err := c.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{})
		if err != nil {
			return err
		}
		if len(slices.Items) < n {
			return fmt.Errorf("%d of %d slices", len(slices.Items), n)
		}
		return nil
	})
	t.Logf("every EndpointSlice written %s after the burst began", time.Since(start).Round(time.Millisecond))
	for _, node := range c.Nodes {
		eventually(t, 5*time.Minute, node.Name+": every service programmed with endpoints", func() error {
			rules := natRulesMentioning(t, c, node.Name, "cluster IP")
			with := 0
			for _, l := range rules {
				if strings.Contains(l, `"`+ns+"/burst-") && strings.Contains(l, "-j KUBE-SVC-") {
					with++
				}
			}
			if with != n {
				return fmt.Errorf("%d of %d services have a cluster-IP rule to a KUBE-SVC chain", with, n)
			}
			return nil
		})
		t.Logf("%s: all %d programmed %s after the burst began", node.Name, n, time.Since(start).Round(time.Millisecond))
	}
	from := podNS(c, "n1-p2")
	for _, i := range []int{0, 1, 499, 998, 999} {
		c.WaitForBackends(t, from, "tcp", framework.HostPort(created[i].Spec.ClusterIP, 80), "n1-p1", "n2-p1")
	}

	start = time.Now()
	parallel(t, n, func(i int) error {
		return c.Client.CoreV1().Services(ns).Delete(ctx, fmt.Sprintf("burst-%04d", i), metav1.DeleteOptions{})
	})
	t.Logf("deleted %d services in %s", n, time.Since(start).Round(time.Millisecond))
	for _, node := range c.Nodes {
		eventually(t, 5*time.Minute, node.Name+": every service's rules gone", func() error {
			if l := natRulesMentioning(t, c, node.Name, ns+"/burst-"); len(l) > 0 {
				return fmt.Errorf("%d nat rules still mention the services, such as %s", len(l), l[0])
			}
			if got := svcChains(node.Name); got != baseline[node.Name] {
				return fmt.Errorf("%d KUBE-SVC chains, %d before the burst", got, baseline[node.Name])
			}
			return nil
		})
		t.Logf("%s: all gone %s after the deletion began", node.Name, time.Since(start).Round(time.Millisecond))
	}
	for _, i := range []int{0, 999} {
		c.WaitForBackends(t, from, "tcp", framework.HostPort(created[i].Spec.ClusterIP, 80))
	}
}

// parallel runs fn(0..n-1) on 20 goroutines and fails the test with the first error.
func parallel(t testing.TB, n int, fn func(i int) error) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	next := atomic.Int64{}
	for range 20 {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					errs <- fmt.Errorf("item %d: %w", i, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	if err, ok := <-errs; ok {
		t.Fatal(err)
	}
}

var counters = regexp.MustCompile(`\[\d+:\d+\]`)

// canonicalTable returns node's table as iptables-save prints it without comments and
// counters, its chains sorted by name and each chain's rules kept in order.
func canonicalTable(t testing.TB, c *framework.Cluster, node, table string) string {
	t.Helper()
	out, err := c.IPTablesSave(context.Background(), node, table)
	if err != nil {
		t.Fatal(err)
	}
	var decls []string
	rules := map[string][]string{}
	for l := range strings.SplitSeq(out, "\n") {
		switch {
		case strings.HasPrefix(l, ":"):
			decls = append(decls, counters.ReplaceAllString(l, ""))
		case strings.HasPrefix(l, "-A "):
			chain := strings.Fields(l)[1]
			rules[chain] = append(rules[chain], l)
		}
	}
	sort.Strings(decls)
	var chains []string
	for ch := range rules {
		chains = append(chains, ch)
	}
	sort.Strings(chains)
	var b strings.Builder
	for _, d := range decls {
		b.WriteString(d + "\n")
	}
	for _, ch := range chains {
		b.WriteString(strings.Join(rules[ch], "\n") + "\n")
	}
	return b.String()
}

// serviceChains lists node's nat rules of the services in namespace ns.
func serviceChains(t testing.TB, c *framework.Cluster, node, ns string) string {
	t.Helper()
	var keep []string
	for l := range strings.SplitSeq(canonicalTable(t, c, node, "nat"), "\n") {
		if strings.Contains(l, `"`+ns+"/") || strings.Contains(l, " "+ns+"/") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}
