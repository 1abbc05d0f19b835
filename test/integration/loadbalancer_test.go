package integration

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// lbIngressIP is the load balancer IP of the LoadBalancer test service. As with a
// VIP-style load balancer, packets reach the node with it as their destination: the
// client routes it to the node.
const lbIngressIP = "198.18.0.10"

// loadBalancer turns svc (with node ports) into a LoadBalancer service whose load
// balancer has ingress IP ip and admits sourceRanges.
func loadBalancer(svc *v1.Service, ip string, sourceRanges ...string) *v1.Service {
	svc.Spec.Type = v1.ServiceTypeLoadBalancer
	svc.Spec.LoadBalancerSourceRanges = sourceRanges
	svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: ip}}
	return svc
}

// TestLoadBalancerSourceRanges: connections to the load balancer IP are served when the
// client is in loadBalancerSourceRanges and silently dropped when it is not, while the
// service's node port (which source ranges do not cover) and cluster IP keep serving
// that client.
func TestLoadBalancerSourceRanges(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 2)
		for _, p := range c.pods {
			p.serve(t, 8080, 5353)
		}
		c.client.Run(t, "ip", "route", "add", lbIngressIP+"/32", "via", nodeAddr.String())
		k := newKproxy(t, c, backend)
		ports := []port{httpPort.withNodePort(30060)}
		slice := endpointSlice("lb", ports, c.pods...)
		svc := loadBalancer(service("lb", "172.30.0.60", ports...), lbIngressIP, clientAddr.String()+"/32")
		k.load(svc, slice)
		k.sync(t)
		lbAddr := hostPort(lbIngressIP, 80)
		nodePortAddr := hostPort(nodeAddr.String(), 30060)

		// Allowed: served, masqueraded (externalTrafficPolicy Cluster).
		reachesAll(t, c.client, "tcp", lbAddr, c.pods, podGateway)

		// Only other sources allowed: the client's packets are not DNATed and are
		// dropped. Without the DROP, they would be routed on to the gw namespace,
		// which answers "host unreachable".
		next := loadBalancer(service("lb", "172.30.0.60", ports...), lbIngressIP, "203.0.113.0/24")
		k.OnServiceUpdate(svc, next)
		k.sync(t)
		if nat := k.save(t, "nat"); !strings.Contains(nat, "-s 203.0.113.0/24 -j KUBE-EXT-") || strings.Contains(nat, clientAddr.String()+"/32") {
			t.Fatalf("the load balancer firewall chain does not admit exactly 203.0.113.0/24:\n%s", nat)
		}
		wantDropped(t, c.client, lbAddr)
		reachesAll(t, c.client, "tcp", nodePortAddr, c.pods, podGateway)
		reachesAll(t, c.client, "tcp", "172.30.0.60:80", c.pods, podGateway)
	})
}
