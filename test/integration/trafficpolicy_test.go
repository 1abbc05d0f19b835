package integration

import (
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// onNodes sets the nodeName of the slice's endpoints, in order, and returns the slice.
func onNodes(s *discovery.EndpointSlice, nodes ...string) *discovery.EndpointSlice {
	for i, n := range nodes {
		s.Endpoints[i].NodeName = ptr.To(n)
	}
	return s
}

// withExternalPolicy sets the service's externalTrafficPolicy.
func withExternalPolicy(svc *v1.Service, policy v1.ServiceExternalTrafficPolicy) *v1.Service {
	svc.Spec.ExternalTrafficPolicy = policy
	return svc
}

// TestExternalTrafficPolicyLocal: a NodePort service with externalTrafficPolicy Local
// sends external clients only to the endpoints on this node, without masquerading, so
// the pod sees the client's own address. With policy Cluster the same connections reach
// every endpoint, masqueraded. With no endpoint on this node, external connections are
// dropped (not refused: a load balancer should time out and try another node), while
// pods still reach the endpoints elsewhere, through the cluster IP and the node port.
func TestExternalTrafficPolicyLocal(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 2)
		for _, p := range c.pods {
			p.serve(t, 8080, 5353)
		}
		pod1, pod2 := c.pods[0], c.pods[1]
		k := newKproxy(t, c, backend)
		ports := []port{httpPort.withNodePort(30090)}
		svc := withExternalPolicy(service("local", "172.30.0.90", ports...), v1.ServiceExternalTrafficPolicyLocal)
		slice := onNodes(endpointSlice("local", ports, pod1, pod2), nodeName, "node-2")
		k.load(svc, slice)
		k.sync(t)
		nodePortAddr := hostPort(nodeAddr.String(), 30090)
		update := func(nextSvc *v1.Service, nextSlice *discovery.EndpointSlice) {
			t.Helper()
			k.OnServiceUpdate(nextSvc)
			k.OnEndpointSliceUpdate(nextSlice)
			svc, slice = nextSvc, nextSlice
			k.sync(t)
		}

		// Only the local endpoint, and it sees the client. Under the Cluster policy, 20
		// connections all reaching pod1 would have odds of 2^-20.
		replies := exchanges(t, c.client, "tcp", nodePortAddr, 20, nil)
		if got := answered(replies); got[pod1.name] != len(replies) {
			t.Errorf("TCP %s from the client with policy Local: answered by %v, want only %s (the local endpoint)", nodePortAddr, got, pod1.name)
		}
		for _, r := range replies {
			if r.src.Addr() != clientAddr {
				t.Errorf("TCP %s with policy Local: %s saw source %s, want the client's %s", nodePortAddr, r.pod, r.src.Addr(), clientAddr)
				break
			}
		}
		// The internal policy is still Cluster: the cluster IP reaches both.
		reachesAll(t, c.client, "tcp", "172.30.0.90:80", c.pods, podGateway)

		// Policy Cluster: every endpoint, masqueraded to the node.
		update(withExternalPolicy(service("local", "172.30.0.90", ports...), v1.ServiceExternalTrafficPolicyCluster), slice)
		reachesAll(t, c.client, "tcp", nodePortAddr, c.pods, podGateway)

		// Policy Local and no local endpoint: pod2 alone, on another node. Nothing
		// listens on the node port on the node, so without kproxy's DROP the node
		// would refuse the connection.
		update(withExternalPolicy(service("local", "172.30.0.90", ports...), v1.ServiceExternalTrafficPolicyLocal),
			onNodes(endpointSlice("local", ports, pod2), "node-2"))
		wantDropped(t, c.client, nodePortAddr)
		// A pod (pod1, not an endpoint now) reaches pod2 both ways and is not
		// masqueraded: pods are short-circuited to the cluster policy.
		fromPod1 := func(*pod) netip.Addr { return pod1.ip }
		reachesAll(t, pod1.ns, "tcp", "172.30.0.90:80", []*pod{pod2}, fromPod1)
		reachesAll(t, pod1.ns, "tcp", nodePortAddr, []*pod{pod2}, fromPod1)
		allTo(t, pod1.ns, "tcp", nodePortAddr, 5, pod2)
	})
}
