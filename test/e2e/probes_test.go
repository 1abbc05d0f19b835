package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

// TestFaultKProxyStartsDuringAPIServerOutage: kproxy on node-1 restarts while
// kube-apiserver is down, and stays down past the health timeout (2 x syncPeriod, 60 s
// with deploy/'s config). Not lost: liveness (/livez answers 200 from the moment it
// listens to the end, so a liveness probe would not restart a proxy that is only
// waiting), the rules (traffic through an existing service keeps being answered), and
// readiness once the API server is back (/readyz is 503 while waiting and 200 after the
// first sync).
func TestFaultKProxyStartsDuringAPIServerOutage(t *testing.T) {
	c := framework.Up(t, framework.Options{})
	ctx := context.Background()
	ns := c.CreateNamespace(t, "outage-start")
	labels := map[string]string{"app": "outage-start"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	svc := c.CreateService(t, tcpService(ns, "web", v1.ServiceTypeClusterIP, labels, 80, 8080))
	addr := framework.HostPort(svc.Spec.ClusterIP, 80)
	from := podNS(c, "n1-p2")
	c.WaitForBackends(t, from, "tcp", addr, "n1-p1", "n2-p1")

	if err := c.Stop("kube-apiserver"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Start("kube-apiserver") })
	node := c.Nodes[0].Name
	if err := c.Restart(framework.KProxy(node)); err != nil {
		t.Fatal(err)
	}
	probe := func(path string) (int, error) {
		code, _, err := c.HTTPGet(ctx, c.Node(node).NetNS, "127.0.0.1:10256", path)
		return code, err
	}
	eventually(t, 10*time.Second, "kproxy listens on its health port", func() error {
		_, err := probe("/livez")
		return err
	})
	// Past the health timeout, with margin for the 30 s wait for the Node object.
	start := time.Now()
	var requests, failed int
	for time.Since(start) < 100*time.Second {
		if code, err := probe("/livez"); code != 200 {
			t.Fatalf("/livez after %s of waiting for the API server: %d %v", time.Since(start).Round(time.Second), code, err)
		}
		if code, err := probe("/readyz"); code != 503 {
			t.Fatalf("/readyz after %s of waiting for the API server: %d %v, want 503", time.Since(start).Round(time.Second), code, err)
		}
		requests++
		if _, err := framework.Request(ctx, from, "tcp", addr); err != nil {
			failed++
		}
		time.Sleep(time.Second)
	}
	if !c.Running(framework.KProxy(node)) {
		t.Fatal("kproxy exited while waiting for the API server")
	}
	if failed > 0 {
		t.Errorf("%d of %d requests through %s failed while kproxy waited for the API server", failed, requests, addr)
	}
	_, body, _ := c.HTTPGet(ctx, c.Node(node).NetNS, "127.0.0.1:10256", "/livez")
	t.Logf("/livez while waiting: %s", body)

	if err := c.Start("kube-apiserver"); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, 3*time.Minute, "kproxy ready after the API server is back", func() error {
		if !c.Running(framework.KProxy(node)) {
			// It carried on without the Node object, so its node IP arrives as a change,
			// which (as upstream) it answers by exiting; the kubelet would start it again.
			log, _ := c.Log(framework.KProxy(node))
			if !strings.Contains(log, "node IPs changed") {
				t.Fatalf("kproxy exited, and not for its node IPs:\n%s", tail(log, 20))
			}
			t.Log("kproxy exited when its Node object arrived with node IPs (as upstream); starting it again as the kubelet would")
			if err := c.Start(framework.KProxy(node)); err != nil {
				return err
			}
		}
		if code, err := probe("/readyz"); code != 200 {
			return fmt.Errorf("/readyz: %d %v", code, err)
		}
		return nil
	})
	t.Logf("kproxy ready %s after kube-apiserver was started again", took.Round(time.Second))
	c.WaitForBackends(t, from, "tcp", addr, "n1-p1", "n2-p1")
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
