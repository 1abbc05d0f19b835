package e2e

import (
	"context"
	"testing"

	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

// TestSmokeClusterIPReachesPodsOnBothNodes is the harness's own smoke test: a ClusterIP
// Service over two pods, one per node, whose EndpointSlice comes from the real controller,
// is reached from a pod on node-1 over TCP and UDP, answered by both pods on the target
// port, and (pod-to-service traffic is not masqueraded) they see the client pod's address.
func TestSmokeClusterIPReachesPodsOnBothNodes(t *testing.T) {
	c := framework.Shared(t)
	ns := c.CreateNamespace(t, "smoke")
	labels := map[string]string{"app": "smoke"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	svc := c.CreateService(t, framework.ClusterIPService(ns, "smoke", labels, 80, 8080))
	client := c.Pod("n1-p2")
	addr := framework.HostPort(svc.Spec.ClusterIP, 80)

	for _, proto := range []string{"tcp", "udp"} {
		c.WaitForBackends(t, client.NetNS, proto, addr, "n1-p1", "n2-p1")
		r, err := framework.Request(context.Background(), client.NetNS, proto, addr)
		if err != nil {
			t.Fatalf("%s %s: %v", proto, addr, err)
		}
		if r.Port != 8080 || r.Client.Addr().String() != client.IP {
			t.Errorf("%s %s: answer %v, want target port 8080 and client address %s", proto, addr, r, client.IP)
		}
	}
}
