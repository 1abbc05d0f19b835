package integration

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// allTo makes n requests from ns to addr and checks that every one reaches want.
func allTo(t *testing.T, ns *netnstest.NS, network, addr string, n int, want *pod) {
	t.Helper()
	replies := exchanges(t, ns, network, addr, n, nil)
	if got := answered(replies); len(replies) != n || got[want.name] != n {
		t.Errorf("%s %s from %s: answered by %v, want all %d by %s", network, addr, ns.Name(), got, n, want.name)
	}
}

// countLines counts the lines of save output that start with prefix.
func countLines(save, prefix string) int {
	n := 0
	for line := range strings.Lines(save) {
		if strings.HasPrefix(line, prefix) {
			n++
		}
	}
	return n
}

// TestClusterIP: connections to a cluster IP are spread over every endpoint and answered,
// for TCP and UDP, and masqueraded exactly when they come from outside the pod network or
// hairpin back to the pod that sent them.
func TestClusterIP(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 2)
		for _, p := range c.pods {
			p.serve(t, 8080, 5353)
		}
		k := newKproxy(t, c, backend)
		ports := []port{httpPort, dnsPort}
		k.load(service("web", "172.30.0.10", ports...), endpointSlice("web", ports, c.pods...))
		k.sync(t)

		// From outside the pod network: masqueraded, so each pod sees the node's address on
		// its link and its replies go back through the node, where the DNAT is undone.
		reachesAll(t, c.client, "tcp", "172.30.0.10:80", c.pods, podGateway)
		reachesAll(t, c.client, "udp", "172.30.0.10:53", c.pods, podGateway)
		// From the node itself (nat OUTPUT): its source is outside the pod network too.
		reachesAll(t, c.node, "tcp", "172.30.0.10:80", c.pods, podGateway)
		// From a pod: the other pod sees the real source; the pod reaching itself
		// (hairpin) must see the node, or it would answer its own packet directly and the
		// client, expecting the cluster IP, would reset the connection.
		from := c.pods[1]
		reachesAll(t, from.ns, "tcp", "172.30.0.10:80", c.pods, func(p *pod) netip.Addr {
			if p == from {
				return p.gateway
			}
			return from.ip
		})
	})
}

// TestNodePort: connections to the node's address on a node port reach every endpoint,
// and are always masqueraded, so replies return through the node.
func TestNodePort(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 2)
		for _, p := range c.pods {
			p.serve(t, 8080, 5353)
		}
		k := newKproxy(t, c, backend)
		ports := []port{httpPort.withNodePort(30080), dnsPort.withNodePort(30053)}
		k.load(service("web", "172.30.0.10", ports...), endpointSlice("web", ports, c.pods...))
		k.sync(t)

		reachesAll(t, c.client, "tcp", hostPort(nodeAddr.String(), 30080), c.pods, podGateway)
		reachesAll(t, c.client, "udp", hostPort(nodeAddr.String(), 30053), c.pods, podGateway)
		// The cluster IP of a NodePort service works as well.
		reachesAll(t, c.client, "tcp", "172.30.0.10:80", c.pods, podGateway)
	})
}

// TestNoEndpointsRejects: a service without ready endpoints refuses connections at once,
// on its cluster IP and its node port, instead of letting them time out.
func TestNoEndpointsRejects(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 1)
		// The pod listens, but is not ready: if kproxy sent traffic to it anyway, the
		// connections would succeed.
		pod1 := c.pods[0]
		pod1.serve(t, 8080, 5353)
		// Something listens on the node port on the node, too (as an older kube-proxy
		// did): a refusal therefore comes from kproxy's REJECT rule, not from the node
		// having no socket.
		var ln net.Listener
		if err := c.node.Do(func() error {
			var err error
			ln, err = net.Listen("tcp", "0.0.0.0:30081")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		nodePortAddr := hostPort(nodeAddr.String(), 30081)
		if err := dialErr(t, c.client, nodePortAddr, exchangeTimeout); err != nil {
			t.Fatalf("before any rule, the node's listener on %s: %v", nodePortAddr, err)
		}

		k := newKproxy(t, c, backend)
		ports := []port{httpPort.withNodePort(30081), dnsPort}
		slice := endpointSlice("empty", ports, pod1)
		slice.Endpoints[0].Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(false)}
		k.load(service("empty", "172.30.0.30", ports...), slice)
		k.sync(t)

		wantRefused(t, c.client, "172.30.0.30:80")
		wantRefused(t, c.client, nodePortAddr)
		wantRefusedUDP(t, c.client, "172.30.0.30:53")
	})
}

// TestEndpointRemoval: endpoint changes programmed by partial syncs. After an endpoint
// leaves the EndpointSlice, new connections go only to the remaining one and the removed
// endpoint's chains are deleted; an endpoint coming back is used again; without any
// endpoint left the service refuses connections. An unchanged service next to it, whose
// chains partial syncs do not rewrite, keeps working throughout; deleting it deletes its
// chains.
func TestEndpointRemoval(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 2)
		for _, p := range c.pods {
			p.serve(t, 8080, 5353)
		}
		pod1, pod2 := c.pods[0], c.pods[1]
		k := newKproxy(t, c, backend)
		ports := []port{httpPort, dnsPort}
		otherPorts := []port{httpPort.withNodePort(30082)}
		slice := endpointSlice("web", ports, c.pods...)
		k.load(
			service("web", "172.30.0.10", ports...), slice,
			service("other", "172.30.0.12", otherPorts...), endpointSlice("other", otherPorts, pod2),
		)
		k.sync(t)
		reachesAll(t, c.client, "tcp", "172.30.0.10:80", c.pods, podGateway)
		if n := countLines(k.save(t, "nat"), ":KUBE-SEP-"); n != 5 {
			t.Errorf("%d endpoint chains before the removal, want 5 (web: 2 ports x 2 endpoints, other: 1)", n)
		}
		otherWorks := func(t *testing.T) {
			t.Helper()
			allTo(t, c.client, "tcp", "172.30.0.12:80", 3, pod2)
			allTo(t, c.client, "tcp", hostPort(nodeAddr.String(), 30082), 3, pod2)
		}
		update := func(next *discovery.EndpointSlice) {
			t.Helper()
			k.OnEndpointSliceUpdate(next)
			slice = next
			k.sync(t)
		}

		update(endpointSlice("web", ports, pod1))
		// Only TCP: every new TCP connection is a new conntrack entry and is load balanced
		// afresh. A UDP flow reusing a source port of an earlier one would still follow
		// that flow's conntrack entry to the removed pod until it expires, which only a
		// conntrack cleanup (not part of the rules) prevents.
		allTo(t, c.client, "tcp", "172.30.0.10:80", 30, pod1)
		if n := countLines(k.save(t, "nat"), ":KUBE-SEP-"); n != 3 {
			t.Errorf("%d endpoint chains after the removal, want 3 (the removed endpoint's are deleted)", n)
		}
		otherWorks(t)

		update(endpointSlice("web", ports, c.pods...))
		reachesAll(t, c.client, "tcp", "172.30.0.10:80", c.pods, podGateway)
		otherWorks(t)

		update(endpointSlice("web", ports))
		wantRefused(t, c.client, "172.30.0.10:80")
		if n := countLines(k.save(t, "nat"), ":KUBE-SVC-"); n != 1 {
			t.Errorf("%d service chains without endpoints for web, want 1 (other's)", n)
		}
		otherWorks(t)

		// Deleting the other service deletes all its chains.
		k.OnServiceDelete(service("other", "172.30.0.12", otherPorts...))
		k.OnEndpointSliceDelete(endpointSlice("other", otherPorts, pod2))
		k.sync(t)
		nat := k.save(t, "nat")
		for _, prefix := range []string{":KUBE-SVC-", ":KUBE-EXT-", ":KUBE-SEP-"} {
			if n := countLines(nat, prefix); n != 0 {
				t.Errorf("%d %s chains left after deleting the last service with endpoints:\n%s", n, prefix[1:], nat)
			}
		}
	})
}

// TestBadInput: malformed objects next to a good one. The bad parts are skipped, the
// payload is accepted by the real iptables-restore, nothing of the bad parts reaches the
// kernel, and the good service (and the good endpoint of a partly bad slice) works.
func TestBadInput(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 2)
		for _, p := range c.pods {
			p.serve(t, 8080, 5353)
		}
		pod1, pod2 := c.pods[0], c.pods[1]
		http := []port{httpPort}

		// A slice whose only good endpoint is pod2, behind malformed addresses, an IPv6
		// address in an IPv4 slice and attempts to smuggle rules into the payload. None
		// of these have conditions, which means ready.
		mixed := endpointSlice("mixed", http, pod2)
		mixed.Endpoints = append([]discovery.Endpoint{
			{Addresses: []string{"10.244.1.300"}},
			{Addresses: []string{"not-an-ip"}},
			{Addresses: []string{"fd00::1"}},
			{Addresses: []string{"10.244.1.2\n-A INPUT -j DROP"}},
			{Addresses: []string{"10.244.1.2 -j DROP"}},
			{Addresses: []string{}},
		}, mixed.Endpoints...)

		// Service ports whose names have a space, a quote or a newline, and a good port
		// whose endpoints' ports are missing or 0 (so it has no usable endpoint).
		ok := port{name: "ok", proto: "TCP", port: 83, target: 8080}
		badPorts := service("ports", "172.30.0.42",
			port{name: "we b", proto: "TCP", port: 81, target: 8080},
			port{name: `q"uote`, proto: "TCP", port: 82, target: 8080},
			port{name: "nl\n-A INPUT -j DROP", proto: "TCP", port: 84, target: 8080},
			ok)
		portsBadNames := endpointSlice("ports", []port{
			{name: "we b", proto: "TCP", target: 8080},
			{name: `q"uote`, proto: "TCP", target: 8080},
		}, pod1)
		portsMissing := endpointSlice("ports", []port{ok}, pod1)
		portsMissing.Name = "ports-missing"
		portsMissing.Ports[0].Port = nil
		portsZero := endpointSlice("ports", []port{ok}, pod1)
		portsZero.Name = "ports-zero"
		portsZero.Ports[0].Port = ptr.To[int32](0)

		// A service whose name has a quote, and one with a malformed cluster IP.
		evil := service(`evil" -j DROP`, "172.30.0.43", httpPort)
		evilSlice := endpointSlice(`evil" -j DROP`, http, pod1)
		evilSlice.Name = "evil-1"
		badIP := service("badip", "172.30.0.999", httpPort)

		k := newKproxy(t, c, backend)
		k.load(
			service("good", "172.30.0.40", httpPort), endpointSlice("good", http, pod1),
			service("mixed", "172.30.0.41", httpPort), mixed,
			badPorts, portsBadNames, portsMissing, portsZero,
			evil, evilSlice,
			badIP, endpointSlice("badip", http, pod1),
		)
		k.sync(t) // fails the test unless iptables-restore accepted the payload

		reachesAll(t, c.client, "tcp", "172.30.0.40:80", []*pod{pod1}, podGateway)
		allTo(t, c.client, "tcp", "172.30.0.41:80", 10, pod2)
		wantRefused(t, c.client, "172.30.0.42:83")

		saved := k.save(t, "")
		for _, bad := range []string{"10.244.1.300", "not-an-ip", "fd00", "-A INPUT -j DROP", "we b", "uote", "evil", "badip", "172.30.0.999", "172.30.0.43"} {
			if strings.Contains(saved, bad) {
				t.Errorf("%q reached the kernel's rules:\n%s", bad, saved)
			}
		}
	})
}
