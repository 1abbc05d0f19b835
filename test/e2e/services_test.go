package e2e

// Scenarios after upstream's "[sig-network] Services" e2e list (test/e2e/network/service.go,
// conntrack.go, networking.go in Kubernetes v1.37.2), as far as they apply without a real
// kubelet. Each runs on the shared cluster in a namespace of its own.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

// TestServiceServesBasicEndpointFromPods: "should serve a basic endpoint from pods". The
// cluster IP reaches exactly the ready pods, from a pod on each node, as pods come and go.
func TestServiceServesBasicEndpointFromPods(t *testing.T) {
	c := framework.Shared(t)
	ctx := context.Background()
	ns := c.CreateNamespace(t, "basic")
	labels := map[string]string{"app": "basic"}
	svc := c.CreateService(t, tcpService(ns, "basic", v1.ServiceTypeClusterIP, labels, 80, 8080))
	addr := framework.HostPort(svc.Spec.ClusterIP, 80)
	clients := []string{podNS(c, "n1-p3"), podNS(c, "n2-p3")}

	// No pods: nothing answers.
	for _, from := range clients {
		c.WaitForBackends(t, from, "tcp", addr)
	}
	c.RunPods(t, ns, labels, "n1-p1")
	for _, from := range clients {
		c.WaitForBackends(t, from, "tcp", addr, "n1-p1")
	}
	c.RunPods(t, ns, labels, "n2-p1", "n2-p2")
	for _, from := range clients {
		c.WaitForBackends(t, from, "tcp", addr, "n1-p1", "n2-p1", "n2-p2")
	}
	if err := c.DeletePod(ctx, ns, "n1-p1"); err != nil {
		t.Fatal(err)
	}
	for _, from := range clients {
		c.WaitForBackends(t, from, "tcp", addr, "n2-p1", "n2-p2")
	}
	if r := request(t, clients[0], "tcp", addr); r.Port != 8080 {
		t.Errorf("answer %v: want target port 8080", r)
	}
}

// TestServiceServesMultiportEndpointsFromPods: "should serve multiport endpoints from
// pods". Each service port reaches its own target port (by number and by name).
func TestServiceServesMultiportEndpointsFromPods(t *testing.T) {
	c := framework.Shared(t)
	ns := c.CreateNamespace(t, "multiport")
	labels := map[string]string{"app": "multiport"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	svc := tcpService(ns, "multiport", v1.ServiceTypeClusterIP, labels, 80, 8080)
	svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{
		Name: "tcp2", Protocol: v1.ProtocolTCP, Port: 81, TargetPort: intstr.FromString("tcp-9090")})
	svc = c.CreateService(t, svc)
	from := podNS(c, "n1-p2")
	for port, target := range map[int32]int{80: 8080, 81: 9090} {
		addr := framework.HostPort(svc.Spec.ClusterIP, port)
		c.WaitForBackends(t, from, "tcp", addr, "n1-p1", "n2-p1")
		if r := request(t, from, "tcp", addr); r.Port != target {
			t.Errorf("port %d: answer %v, want target port %d", port, r, target)
		}
	}
}

// TestServiceUpdatedAfterAddingOrDeletingPorts: "should be updated after adding or
// deleting ports".
func TestServiceUpdatedAfterAddingOrDeletingPorts(t *testing.T) {
	c := framework.Shared(t)
	ns := c.CreateNamespace(t, "ports")
	labels := map[string]string{"app": "ports"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	svc := c.CreateService(t, tcpService(ns, "ports", v1.ServiceTypeClusterIP, labels, 80, 8080))
	from := podNS(c, "n2-p2")
	addr80, addr81 := framework.HostPort(svc.Spec.ClusterIP, 80), framework.HostPort(svc.Spec.ClusterIP, 81)
	c.WaitForBackends(t, from, "tcp", addr80, "n1-p1", "n2-p1")

	updateService(t, c, ns, "ports", func(s *v1.Service) {
		s.Spec.Ports = append(s.Spec.Ports, v1.ServicePort{
			Name: "added", Protocol: v1.ProtocolTCP, Port: 81, TargetPort: intstr.FromInt32(9090)})
	})
	c.WaitForBackends(t, from, "tcp", addr81, "n1-p1", "n2-p1")
	if r := request(t, from, "tcp", addr81); r.Port != 9090 {
		t.Errorf("added port: answer %v, want target port 9090", r)
	}

	updateService(t, c, ns, "ports", func(s *v1.Service) { s.Spec.Ports = s.Spec.Ports[1:] })
	c.WaitForBackends(t, from, "tcp", addr80) // deleted: no longer served
	c.WaitForBackends(t, from, "tcp", addr81, "n1-p1", "n2-p1")
}

// TestServiceUpAndDown: "should be able to up and down services" and "should work after
// the service has been recreated". Deleting one service leaves the other alone; recreating
// it makes it work again.
func TestServiceUpAndDown(t *testing.T) {
	c := framework.Shared(t)
	ns := c.CreateNamespace(t, "updown")
	labels := map[string]string{"app": "updown"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	from := podNS(c, "n1-p2")
	svc1 := c.CreateService(t, tcpService(ns, "up-down-1", v1.ServiceTypeClusterIP, labels, 80, 8080))
	svc2 := c.CreateService(t, tcpService(ns, "up-down-2", v1.ServiceTypeClusterIP, labels, 80, 9090))
	addr1, addr2 := framework.HostPort(svc1.Spec.ClusterIP, 80), framework.HostPort(svc2.Spec.ClusterIP, 80)
	c.WaitForBackends(t, from, "tcp", addr1, "n1-p1", "n2-p1")
	c.WaitForBackends(t, from, "tcp", addr2, "n1-p1", "n2-p1")

	deleteService(t, c, ns, "up-down-1")
	c.WaitForBackends(t, from, "tcp", addr1)
	c.WaitForBackends(t, from, "tcp", addr2, "n1-p1", "n2-p1")

	// Recreated with the same cluster IP (if still free) and the same name.
	re := tcpService(ns, "up-down-1", v1.ServiceTypeClusterIP, labels, 80, 8080)
	re.Spec.ClusterIP = svc1.Spec.ClusterIP
	svc1 = c.CreateService(t, re)
	c.WaitForBackends(t, from, "tcp", framework.HostPort(svc1.Spec.ClusterIP, 80), "n1-p1", "n2-p1")
	c.WaitForBackends(t, from, "tcp", addr2, "n1-p1", "n2-p1")
}

// TestNodePortFromExternalClient: "should be able to create a functioning NodePort
// service". The external client reaches both pods through either node's port, over TCP
// and UDP, masqueraded (externalTrafficPolicy Cluster).
func TestNodePortFromExternalClient(t *testing.T) {
	c := framework.Shared(t)
	ns := c.CreateNamespace(t, "nodeport")
	labels := map[string]string{"app": "nodeport"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	svc := framework.ClusterIPService(ns, "nodeport", labels, 80, 8080)
	svc.Spec.Type = v1.ServiceTypeNodePort
	svc = c.CreateService(t, svc)
	ext := c.External.NetNS
	for i, p := range svc.Spec.Ports {
		proto := strings.ToLower(string(p.Protocol))
		if p.NodePort == 0 {
			t.Fatalf("port %d has no node port", i)
		}
		for _, node := range c.Nodes {
			addr := framework.HostPort(node.IP, p.NodePort)
			c.WaitForBackends(t, ext, proto, addr, "n1-p1", "n2-p1")
			r := request(t, ext, proto, addr)
			if r.Client.Addr().String() == c.External.IP || r.Port != 8080 {
				t.Errorf("%s %s: answer %v, want target port 8080 and a masqueraded source", proto, addr, r)
			}
		}
	}
}

// TestServiceRejectedWhenNoEndpointsExist: "should be rejected when no endpoints exist".
// A connection to the cluster IP (from a pod) and to the node port (from outside) is
// refused at once, not left to time out.
func TestServiceRejectedWhenNoEndpointsExist(t *testing.T) {
	c := framework.Shared(t)
	ns := c.CreateNamespace(t, "noendpoints")
	svc := c.CreateService(t, tcpService(ns, "noendpoints", v1.ServiceTypeNodePort, map[string]string{"app": "nothing"}, 80, 8080))
	clusterAddr := framework.HostPort(svc.Spec.ClusterIP, 80)
	eventually(t, 30*time.Second, "cluster IP refused from a pod", func() error {
		return refusedFast(podNS(c, "n1-p2"), clusterAddr)
	})
	eventually(t, 30*time.Second, "cluster IP refused from a pod on the other node", func() error {
		return refusedFast(podNS(c, "n2-p2"), clusterAddr)
	})
	nodeAddr := framework.HostPort(c.Node("node-2").IP, svc.Spec.Ports[0].NodePort)
	eventually(t, 30*time.Second, "node port refused from the external client", func() error {
		return refusedFast(c.External.NetNS, nodeAddr)
	})
}

// TestSessionAffinityClientIPAndSwitching: "should have session affinity work for service
// with type clusterIP" and "should be able to switch session affinity".
func TestSessionAffinityClientIPAndSwitching(t *testing.T) {
	c := framework.Shared(t)
	ns := c.CreateNamespace(t, "affinity")
	labels := map[string]string{"app": "affinity"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1", "n2-p2")
	svc := tcpService(ns, "affinity", v1.ServiceTypeClusterIP, labels, 80, 8080)
	svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	svc = c.CreateService(t, svc)
	addr := framework.HostPort(svc.Spec.ClusterIP, 80)
	from := podNS(c, "n1-p2")

	// sticky tells whether 20 new connections all reach one pod.
	sticky := func() (map[string]int, bool) {
		seen, errs := framework.Backends(context.Background(), from, "tcp", addr, 20)
		return seen, len(errs) == 0 && len(seen) == 1
	}
	eventually(t, 60*time.Second, "affinity on: one backend", func() error {
		if seen, ok := sticky(); !ok {
			return fmt.Errorf("answers %v", seen)
		}
		return nil
	})
	updateService(t, c, ns, "affinity", func(s *v1.Service) {
		s.Spec.SessionAffinity = v1.ServiceAffinityNone
		s.Spec.SessionAffinityConfig = nil
	})
	c.WaitForBackends(t, from, "tcp", addr, "n1-p1", "n2-p1", "n2-p2")
	updateService(t, c, ns, "affinity", func(s *v1.Service) { s.Spec.SessionAffinity = v1.ServiceAffinityClientIP })
	eventually(t, 60*time.Second, "affinity on again: one backend", func() error {
		if seen, ok := sticky(); !ok {
			return fmt.Errorf("answers %v", seen)
		}
		return nil
	})
}

// TestServiceProxyNameAndHeadlessLabels: "should implement
// service.kubernetes.io/service-proxy-name" and "should implement
// service.kubernetes.io/headless". A service carrying either label is not programmed (no
// rule mentions it, its cluster IP does not answer); removing the label programs it.
func TestServiceProxyNameAndHeadlessLabels(t *testing.T) {
	c := framework.Shared(t)
	ns := c.CreateNamespace(t, "labels")
	labels := map[string]string{"app": "labels"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	from := podNS(c, "n1-p2")

	for _, label := range []struct{ name, key, value string }{
		{"proxy-name", "service.kubernetes.io/service-proxy-name", "some-other-proxy"},
		{"headless", "service.kubernetes.io/headless", ""},
	} {
		t.Run(label.name, func(t *testing.T) {
			control := c.CreateService(t, tcpService(ns, label.name+"-control", v1.ServiceTypeClusterIP, labels, 80, 8080))
			s := tcpService(ns, label.name, v1.ServiceTypeClusterIP, labels, 80, 8080)
			s.Labels = map[string]string{label.key: label.value}
			s = c.CreateService(t, s)
			// Once the control service (created first) is programmed, the labelled one
			// would have been too.
			c.WaitForBackends(t, from, "tcp", framework.HostPort(control.Spec.ClusterIP, 80), "n1-p1", "n2-p1")
			addr := framework.HostPort(s.Spec.ClusterIP, 80)
			if r, err := framework.Request(context.Background(), from, "tcp", addr); err == nil {
				t.Errorf("service labelled %s=%q answers: %v", label.key, label.value, r)
			}
			for _, node := range c.Nodes {
				if l := natRulesMentioning(t, c, node.Name, ns+"/"+label.name+":"); len(l) > 0 {
					t.Errorf("%s: nat rules for the labelled service:\n%s", node.Name, strings.Join(l, "\n"))
				}
			}
			updateService(t, c, ns, label.name, func(s *v1.Service) { delete(s.Labels, label.key) })
			c.WaitForBackends(t, from, "tcp", addr, "n1-p1", "n2-p1")
		})
	}
}

// TestExternalTrafficPolicyLocal: "should support externalTrafficPolicy=Local for
// type=NodePort" (on a LoadBalancer service, which gets the health check node port): the
// node with a local endpoint keeps the client's address; the other node drops the
// traffic; the health check node port, served by kproxy on the node address, says 200
// with local endpoints and 503 without.
func TestExternalTrafficPolicyLocal(t *testing.T) {
	c := framework.Shared(t)
	ctx := context.Background()
	ns := c.CreateNamespace(t, "etp-local")
	labels := map[string]string{"app": "etp-local"}
	c.RunPods(t, ns, labels, "n1-p1")
	svc := tcpService(ns, "etp-local", v1.ServiceTypeLoadBalancer, labels, 80, 8080)
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	svc = c.CreateService(t, svc)
	np, hc := svc.Spec.Ports[0].NodePort, svc.Spec.HealthCheckNodePort
	if np == 0 || hc == 0 {
		t.Fatalf("service has node port %d and health check node port %d", np, hc)
	}
	ext := c.External.NetNS
	n1, n2 := c.Node("node-1"), c.Node("node-2")

	c.WaitForBackends(t, ext, "tcp", framework.HostPort(n1.IP, np), "n1-p1")
	if r := request(t, ext, "tcp", framework.HostPort(n1.IP, np)); r.Client.Addr().String() != c.External.IP {
		t.Errorf("node-1: answer %v, want the client address %s preserved", r, c.External.IP)
	}
	c.WaitForBackends(t, ext, "tcp", framework.HostPort(n2.IP, np)) // no local endpoint

	health := func(node framework.Node, want int) error {
		code, body, err := c.HTTPGet(ctx, ext, framework.HostPort(node.IP, hc), "/")
		if err != nil {
			return err
		}
		if code != want {
			return fmt.Errorf("%s health check node port %d: status %d (%s), want %d", node.Name, hc, code, strings.TrimSpace(body), want)
		}
		return nil
	}
	eventually(t, 30*time.Second, "node-1 health check", func() error { return health(n1, http.StatusOK) })
	eventually(t, 30*time.Second, "node-2 health check", func() error { return health(n2, http.StatusServiceUnavailable) })

	// The endpoint moves to node-2: both answers flip.
	c.RunPods(t, ns, labels, "n2-p1")
	if err := c.DeletePod(ctx, ns, "n1-p1"); err != nil {
		t.Fatal(err)
	}
	c.WaitForBackends(t, ext, "tcp", framework.HostPort(n2.IP, np), "n2-p1")
	c.WaitForBackends(t, ext, "tcp", framework.HostPort(n1.IP, np))
	eventually(t, 30*time.Second, "node-1 health check", func() error { return health(n1, http.StatusServiceUnavailable) })
	eventually(t, 30*time.Second, "node-2 health check", func() error { return health(n2, http.StatusOK) })
}

// TestInternalTrafficPolicyLocal: "should respect internalTrafficPolicy=Local Pod to Pod".
// A pod reaches only endpoints on its own node, and nothing when there is none.
func TestInternalTrafficPolicyLocal(t *testing.T) {
	c := framework.Shared(t)
	ns := c.CreateNamespace(t, "itp-local")
	labels := map[string]string{"app": "itp-local"}
	c.RunPods(t, ns, labels, "n1-p1", "n1-p2")
	svc := tcpService(ns, "itp-local", v1.ServiceTypeClusterIP, labels, 80, 8080)
	svc.Spec.InternalTrafficPolicy = ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	svc = c.CreateService(t, svc)
	addr := framework.HostPort(svc.Spec.ClusterIP, 80)
	c.WaitForBackends(t, podNS(c, "n1-p3"), "tcp", addr, "n1-p1", "n1-p2")
	c.WaitForBackends(t, podNS(c, "n2-p3"), "tcp", addr)
	c.RunPods(t, ns, labels, "n2-p1")
	c.WaitForBackends(t, podNS(c, "n2-p3"), "tcp", addr, "n2-p1")
	c.WaitForBackends(t, podNS(c, "n1-p3"), "tcp", addr, "n1-p1", "n1-p2")
}

// TestTerminatingEndpointsFallback: "should fallback to terminating endpoints when there
// are no ready endpoints with internalTrafficPolicy=Cluster". Terminating endpoints get no
// new connections while a ready one exists; once none is ready, the serving terminating
// ones do; a terminating endpoint that stops serving gets none.
func TestTerminatingEndpointsFallback(t *testing.T) {
	c := framework.Shared(t)
	ctx := context.Background()
	ns := c.CreateNamespace(t, "terminating")
	labels := map[string]string{"app": "terminating"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	svc := c.CreateService(t, tcpService(ns, "terminating", v1.ServiceTypeClusterIP, labels, 80, 8080))
	addr := framework.HostPort(svc.Spec.ClusterIP, 80)
	from := podNS(c, "n1-p3")
	c.WaitForBackends(t, from, "tcp", addr, "n1-p1", "n2-p1")

	if err := c.TerminatePod(ctx, ns, "n1-p1"); err != nil {
		t.Fatal(err)
	}
	c.WaitForBackends(t, from, "tcp", addr, "n2-p1")
	if err := c.TerminatePod(ctx, ns, "n2-p1"); err != nil {
		t.Fatal(err)
	}
	c.WaitForBackends(t, from, "tcp", addr, "n1-p1", "n2-p1")
	if err := c.SetPodReady(ctx, ns, "n1-p1", false); err != nil {
		t.Fatal(err)
	}
	c.WaitForBackends(t, from, "tcp", addr, "n2-p1")
}

// TestServeSamePortDifferentProtocols: "should serve endpoints on same port and different
// protocols". TCP and UDP on port 80 go to different target ports.
func TestServeSamePortDifferentProtocols(t *testing.T) {
	c := framework.Shared(t)
	ns := c.CreateNamespace(t, "protocols")
	labels := map[string]string{"app": "protocols"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	svc := framework.ClusterIPService(ns, "protocols", labels, 80, 8080)
	svc.Spec.Ports[1].TargetPort = intstr.FromInt32(9090)
	svc = c.CreateService(t, svc)
	addr := framework.HostPort(svc.Spec.ClusterIP, 80)
	from := podNS(c, "n2-p2")
	for proto, target := range map[string]int{"tcp": 8080, "udp": 9090} {
		c.WaitForBackends(t, from, proto, addr, "n1-p1", "n2-p1")
		if r := request(t, from, proto, addr); r.Port != target {
			t.Errorf("%s: answer %v, want target port %d", proto, r, target)
		}
	}
}

// TestServiceTypeChanges: "should be able to change the type from ExternalName to
// ClusterIP", "...ClusterIP to NodePort", "...NodePort to ClusterIP", "...ClusterIP to
// ExternalName". Each change is programmed and the previous type's addresses stop
// answering.
func TestServiceTypeChanges(t *testing.T) {
	c := framework.Shared(t)
	ns := c.CreateNamespace(t, "types")
	labels := map[string]string{"app": "types"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	from, ext := podNS(c, "n1-p2"), c.External.NetNS
	c.CreateService(t, &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "types", Namespace: ns},
		Spec:       v1.ServiceSpec{Type: v1.ServiceTypeExternalName, ExternalName: "example.invalid"},
	})

	// ExternalName -> ClusterIP
	svc := updateService(t, c, ns, "types", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeClusterIP
		s.Spec.ExternalName = ""
		s.Spec.Selector = labels
		s.Spec.Ports = tcpService(ns, "", v1.ServiceTypeClusterIP, nil, 80, 8080).Spec.Ports
	})
	clusterAddr := framework.HostPort(svc.Spec.ClusterIP, 80)
	c.WaitForBackends(t, from, "tcp", clusterAddr, "n1-p1", "n2-p1")

	// ClusterIP -> NodePort
	svc = updateService(t, c, ns, "types", func(s *v1.Service) { s.Spec.Type = v1.ServiceTypeNodePort })
	nodeAddr := framework.HostPort(c.Node("node-2").IP, svc.Spec.Ports[0].NodePort)
	c.WaitForBackends(t, ext, "tcp", nodeAddr, "n1-p1", "n2-p1")
	c.WaitForBackends(t, from, "tcp", clusterAddr, "n1-p1", "n2-p1")

	// NodePort -> ClusterIP
	updateService(t, c, ns, "types", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeClusterIP
		s.Spec.Ports[0].NodePort = 0
	})
	c.WaitForBackends(t, ext, "tcp", nodeAddr)
	c.WaitForBackends(t, from, "tcp", clusterAddr, "n1-p1", "n2-p1")

	// ClusterIP -> ExternalName
	updateService(t, c, ns, "types", func(s *v1.Service) {
		s.Spec.Type = v1.ServiceTypeExternalName
		s.Spec.ExternalName = "example.invalid"
		s.Spec.ClusterIP, s.Spec.ClusterIPs = "", nil
		s.Spec.Selector = nil
		s.Spec.IPFamilies, s.Spec.IPFamilyPolicy, s.Spec.InternalTrafficPolicy = nil, nil, nil
	})
	c.WaitForBackends(t, from, "tcp", clusterAddr)
	for _, node := range c.Nodes {
		if l := natRulesMentioning(t, c, node.Name, ns+"/types:"); len(l) > 0 {
			t.Errorf("%s: nat rules left for the ExternalName service:\n%s", node.Name, strings.Join(l, "\n"))
		}
	}
}

// TestUDPConntrackWhenServerPodCycles: Conntrack "should be able to preserve UDP traffic
// when server pod cycles for a ClusterIP service" (and NodePort). A client keeps sending
// from one UDP socket; the server pod goes away and another takes over: the client's flow
// must reach the new pod, not stay stuck on the stale conntrack entry.
func TestUDPConntrackWhenServerPodCycles(t *testing.T) {
	c := framework.Shared(t)
	ns := c.CreateNamespace(t, "conntrack")
	labels := map[string]string{"app": "conntrack"}
	c.RunPods(t, ns, labels, "n1-p1")
	svc := framework.ClusterIPService(ns, "conntrack", labels, 80, 8080)
	svc.Spec.Type = v1.ServiceTypeNodePort
	svc = c.CreateService(t, svc)
	udpNodePort := svc.Spec.Ports[1].NodePort

	for _, tc := range []struct{ name, from, addr string }{
		{"ClusterIP", podNS(c, "n2-p3"), framework.HostPort(svc.Spec.ClusterIP, 80)},
		{"NodePort", c.External.NetNS, framework.HostPort(c.Node("node-2").IP, udpNodePort)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			old, next := "n1-p1", "n2-p1"
			if tc.name == "NodePort" {
				old, next = "n2-p1", "n1-p1"
			}
			c.WaitForBackends(t, tc.from, "udp", tc.addr, old)
			conn, err := framework.Dial(ctx, tc.from, "udp", tc.addr)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ping := func() (framework.Reply, error) {
				_ = conn.SetDeadline(time.Now().Add(time.Second))
				return framework.Ping(conn)
			}
			if r, err := ping(); err != nil || r.Pod != old {
				t.Fatalf("before cycling: answer %v, %v; want %s", r, err, old)
			}
			// The old pod goes away for good (its server too); the new one starts.
			if err := c.Stop(framework.Echo(old)); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Start(framework.Echo(old)) })
			if err := c.DeletePod(ctx, ns, old); err != nil {
				t.Fatal(err)
			}
			c.RunPods(t, ns, labels, next)
			took := eventually(t, 30*time.Second, "the client's UDP flow reaches "+next, func() error {
				r, err := ping()
				if err != nil {
					return err
				}
				if r.Pod != next {
					return fmt.Errorf("answered by %s", r.Pod)
				}
				return nil
			})
			t.Logf("the flow reached the new pod %s after %s", next, took.Round(time.Millisecond))
			if err := c.Start(framework.Echo(old)); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// TestRecreatesIPTablesRulesIfDeleted: Networking "should recreate its iptables rules if
// they are deleted". As upstream's test does, every KUBE-* chain and every jump to one is
// removed from node-1's tables (mangle, nat, filter: the canaries too); kproxy notices
// (its flush monitor checks every sync period, 30 s) and puts everything back, and the
// service works again.
func TestRecreatesIPTablesRulesIfDeleted(t *testing.T) {
	c := framework.Shared(t)
	ns := c.CreateNamespace(t, "recreate")
	labels := map[string]string{"app": "recreate"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	svc := c.CreateService(t, tcpService(ns, "recreate", v1.ServiceTypeClusterIP, labels, 80, 8080))
	addr := framework.HostPort(svc.Spec.ClusterIP, 80)
	from := podNS(c, "n1-p2")
	c.WaitForBackends(t, from, "tcp", addr, "n1-p1", "n2-p1")

	node := c.Node("node-1")
	restore := "iptables-" + c.KProxyBackend + "-restore"
	save := "iptables-" + c.KProxyBackend + "-save"
	for _, table := range []string{"mangle", "nat", "filter"} {
		script := fmt.Sprintf("XTABLES_LOCKFILE=%s %s -t %s | grep -v -- KUBE- | XTABLES_LOCKFILE=%s %s -w 5",
			c.XTablesLock(node.Name), save, table, c.XTablesLock(node.Name), restore)
		if out, err := framework.Exec(context.Background(), node.NetNS, "sh", "-c", script); err != nil {
			t.Fatalf("deleting KUBE-* from %s: %v\n%s", table, err, out)
		}
	}
	if l := natRulesMentioning(t, c, node.Name, "KUBE-"); len(l) > 0 {
		t.Fatalf("KUBE-* rules survived the deletion:\n%s", strings.Join(l, "\n"))
	}
	took := eventually(t, 50*time.Second, "the service's rules are back", func() error {
		if len(natRulesMentioning(t, c, node.Name, ns+"/recreate:tcp")) == 0 {
			return fmt.Errorf("no nat rule for %s/recreate yet", ns)
		}
		return nil
	})
	t.Logf("rules recreated %s after the deletion", took.Round(time.Millisecond))
	if took > 40*time.Second {
		t.Errorf("rules recreated after %s, more than the sync period (30s) plus slack", took)
	}
	c.WaitForBackends(t, from, "tcp", addr, "n1-p1", "n2-p1")
}

// TestServiceWithoutSelectorAndHandWrittenEndpoints is the seed article's case: a Service
// without a selector and a hand-written v1 Endpoints object naming a pod and an address
// outside the pod network (the external client). kube-controller-manager mirrors it into
// an EndpointSlice and kproxy routes to both.
func TestServiceWithoutSelectorAndHandWrittenEndpoints(t *testing.T) {
	c := framework.Shared(t)
	ctx := context.Background()
	ns := c.CreateNamespace(t, "manual")
	c.RunPods(t, ns, map[string]string{"app": "manual"}, "n1-p1")
	svc := c.CreateService(t, tcpService(ns, "manual", v1.ServiceTypeClusterIP, nil, 80, 8080))
	_, err := c.Client.CoreV1().Endpoints(ns).Create(ctx, &v1.Endpoints{
		ObjectMeta: metav1.ObjectMeta{Name: "manual", Namespace: ns},
		Subsets: []v1.EndpointSubset{{
			Addresses: []v1.EndpointAddress{{IP: c.Pod("n1-p1").IP}, {IP: c.External.IP}},
			Ports:     []v1.EndpointPort{{Name: "tcp", Port: 8080, Protocol: v1.ProtocolTCP}},
		}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the mirrored EndpointSlice", func() error {
		slices, err := c.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
			LabelSelector: discoveryv1.LabelServiceName + "=manual"})
		if err != nil {
			return err
		}
		var addrs []string
		for _, s := range slices.Items {
			if s.Labels[discoveryv1.LabelManagedBy] != "endpointslicemirroring-controller.k8s.io" {
				return fmt.Errorf("slice %s managed by %q", s.Name, s.Labels[discoveryv1.LabelManagedBy])
			}
			for _, e := range s.Endpoints {
				addrs = append(addrs, e.Addresses...)
			}
		}
		if len(addrs) != 2 {
			return fmt.Errorf("mirrored addresses %v", addrs)
		}
		return nil
	})
	addr := framework.HostPort(svc.Spec.ClusterIP, 80)
	// From node-2 itself (host network): traffic leaving a node for an address outside
	// the cluster is masqueraded, so the external backend can answer; the harness's pods
	// have no route back from outside the pod network.
	c.WaitForBackends(t, nodeNS(c, "node-2"), "tcp", addr, "n1-p1", "external")
	// A pod reaches the pod endpoint. (Its requests that go to the external endpoint get
	// no answer: pod-to-service traffic keeps the pod's source address, as upstream's, and
	// the external client has no route back to the pod network; a real cluster's egress
	// SNAT is not kproxy's job.) Backends stops at the first answer of n1-p1.
	seen, _ := framework.Backends(ctx, podNS(c, "n2-p2"), "tcp", addr, 20, "n1-p1")
	if seen["n1-p1"] == 0 {
		t.Errorf("from pod n2-p2: answers %v, want n1-p1 among them", seen)
	}
}

// TestServicePortNamesAsTheAPIAllowsThem: port names are DNS labels of up to 63
// characters, not 15-character IANA names: cert-manager's "tcp-prometheus-servicemonitor",
// a name with a double hyphen and one of 63 characters all reach their pods.
func TestServicePortNamesAsTheAPIAllowsThem(t *testing.T) {
	c := framework.Shared(t)
	ns := c.CreateNamespace(t, "portnames")
	labels := map[string]string{"app": "portnames"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	long := "p" + strings.Repeat("0123456789", 6) + "-x" // 63 characters
	svc := tcpService(ns, "portnames", v1.ServiceTypeClusterIP, labels, 80, 8080)
	svc.Spec.Ports[0].Name = "tcp-prometheus-servicemonitor"
	svc.Spec.Ports = append(svc.Spec.Ports,
		v1.ServicePort{Name: "grpc--web", Protocol: v1.ProtocolTCP, Port: 81, TargetPort: intstr.FromInt32(9090)},
		v1.ServicePort{Name: long, Protocol: v1.ProtocolTCP, Port: 82, TargetPort: intstr.FromInt32(8080)})
	svc = c.CreateService(t, svc)
	from := podNS(c, "n1-p2")
	for port, target := range map[int32]int{80: 8080, 81: 9090, 82: 8080} {
		addr := framework.HostPort(svc.Spec.ClusterIP, port)
		c.WaitForBackends(t, from, "tcp", addr, "n1-p1", "n2-p1")
		if r := request(t, from, "tcp", addr); r.Port != target {
			t.Errorf("port %d: answer %v, want target port %d", port, r, target)
		}
	}
}
