package integration

import (
	"strconv"
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

// packets sums the packet counters of the rules in table's chain that contain match.
func packets(t *testing.T, k *kproxy, table, chain, match string) uint64 {
	t.Helper()
	bin := iptables.BinaryName(k.ipt.Family(), k.ipt.Backend(), "save")
	var sum uint64
	for line := range strings.Lines(k.node.Run(t, bin, "-c", "-t", table)) {
		// "[packets:bytes] -A CHAIN ..."
		counters, rule, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok || !strings.HasPrefix(rule, "-A "+chain+" ") || !strings.Contains(rule, match) {
			continue
		}
		n, _, ok := strings.Cut(strings.Trim(counters, "[]"), ":")
		v, err := strconv.ParseUint(n, 10, 64)
		if !ok || err != nil {
			t.Fatalf("malformed counters in %q", line)
		}
		sum += v
	}
	return sum
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
		// dropped. Without kproxy's DROP they would be routed on to the gw namespace,
		// which drops them too, so the DROP rule's counter proves who did.
		next := loadBalancer(service("lb", "172.30.0.60", ports...), lbIngressIP, "203.0.113.0/24")
		k.OnServiceUpdate(next)
		k.sync(t)
		var admitted []string
		nat := k.save(t, "nat")
		for line := range strings.Lines(nat) {
			if strings.HasPrefix(line, "-A KUBE-FW-") && strings.Contains(line, "-j KUBE-EXT-") {
				admitted = append(admitted, strings.Fields(line)[3])
			}
		}
		if len(admitted) != 1 || admitted[0] != "203.0.113.0/24" {
			t.Fatalf("the load balancer firewall admits %v, want only 203.0.113.0/24:\n%s", admitted, nat)
		}
		before := packets(t, k, "filter", "KUBE-PROXY-FIREWALL", "-j DROP")
		wantDropped(t, c.client, lbAddr)
		if after := packets(t, k, "filter", "KUBE-PROXY-FIREWALL", "-j DROP"); after <= before {
			t.Errorf("TCP %s timed out, but KUBE-PROXY-FIREWALL's DROP counted %d packets before and %d after", lbAddr, before, after)
		}
		reachesAll(t, c.client, "tcp", nodePortAddr, c.pods, podGateway)
		reachesAll(t, c.client, "tcp", "172.30.0.60:80", c.pods, podGateway)
	})
}
