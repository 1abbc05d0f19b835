package integration

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// The IPv6 topology mirrors the IPv4 one of doc.go:
//
//	client fd00:192::10 ---- fd00:192::1   node   fd00:10:244:1::1 ---- fd00:10:244:1::2 pod1
//	                   fd00:198:51:100::1         fd00:10:244:2::1 ---- fd00:10:244:2::2 pod2
//	                          |
//	                   fd00:198:51:100::2 gw (a dead end)
var (
	clusterCIDR6 = netip.MustParsePrefix("fd00:10:244::/48")
	clientAddr6  = netip.MustParseAddr("fd00:192::10")
	nodeAddr6    = netip.MustParseAddr("fd00:192::1")
)

// newCluster6 builds the IPv6 topology with nPods pods (pod1 at fd00:10:244:1::2, ...).
// Duplicate address detection is off in every namespace, so addresses are usable at
// once instead of "tentative" for a second or more.
func newCluster6(t *testing.T, nPods int) *cluster {
	t.Helper()
	c := &cluster{
		node:        netnstest.New(t, "kpx-node"),
		client:      netnstest.New(t, "kpx-client"),
		gw:          netnstest.New(t, "kpx-gw"),
		family:      v1.IPv6Protocol,
		clusterCIDR: clusterCIDR6,
		nodeAddr:    nodeAddr6,
	}
	// Set before any link exists, so every interface inherits them from "default".
	noDAD := []string{"net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"}
	setup := func(ns *netnstest.NS, forward string) {
		ns.Run(t, append([]string{"sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=" + forward}, noDAD...)...)
	}
	setup(c.node, "1")
	setup(c.client, "0")
	setup(c.gw, "0")

	netnstest.Link(t, c.node, nodeAddr6.String()+"/64", c.client, clientAddr6.String()+"/64")
	c.client.Run(t, "ip", "-6", "route", "add", "default", "via", nodeAddr6.String())
	netnstest.Link(t, c.node, "fd00:198:51:100::1/64", c.gw, "fd00:198:51:100::2/64")
	c.node.Run(t, "ip", "-6", "route", "add", "default", "via", "fd00:198:51:100::2")

	for i := 1; i <= nPods; i++ {
		p := &pod{
			name:    fmt.Sprintf("pod%d", i),
			ns:      netnstest.New(t, fmt.Sprintf("kpx-pod%d", i)),
			ip:      netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%d::2", i)),
			gateway: netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%d::1", i)),
		}
		setup(p.ns, "0")
		// IPv6 has no send_redirects to turn off on the node (which IPv4 hairpin
		// traffic needs), so the pods ignore redirects instead.
		p.ns.Run(t, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_redirects=0", "net.ipv6.conf.default.accept_redirects=0")
		netnstest.Link(t, c.node, p.gateway.String()+"/64", p.ns, p.ip.String()+"/64")
		p.ns.Run(t, "ip", "-6", "route", "add", "default", "via", p.gateway.String())
		c.pods = append(c.pods, p)
	}

	// With DAD off nothing is tentative. Should DAD run anyway, wait for it (boundedly)
	// here rather than fail later with a confusing connection error.
	all := []*netnstest.NS{c.node, c.client, c.gw}
	for _, p := range c.pods {
		all = append(all, p.ns)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, ns := range all {
		for {
			out := ns.Run(t, "ip", "-6", "-o", "addr", "show", "tentative")
			if strings.TrimSpace(out) == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("IPv6 addresses still tentative in %s after 5s:\n%s", ns.Name(), out)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	return c
}

// TestIPv6: the IPv6 proxier with ip6tables: a cluster IP and a node port spread
// connections over both endpoints, masqueraded for the external client (TCP, and UDP on
// the cluster IP); a pod reaches the other pod unmasqueraded and itself masqueraded; a
// service without endpoints refuses TCP connections and UDP datagrams.
func TestIPv6(t *testing.T) {
	forEachBackendOf(t, v1.IPv6Protocol, func(t *testing.T, backend iptables.Backend) {
		c := newCluster6(t, 2)
		for _, p := range c.pods {
			p.serve(t, 8080, 5353)
		}
		k := newKproxy(t, c, backend)
		ports := []port{httpPort.withNodePort(30080), dnsPort}
		k.load(
			service("web", "fd00:172:30::10", ports...), endpointSlice("web", ports, c.pods...),
			service("empty", "fd00:172:30::30", httpPort.withNodePort(30081), dnsPort),
		)
		k.sync(t)

		reachesAll(t, c.client, "tcp", "[fd00:172:30::10]:80", c.pods, podGateway)
		reachesAll(t, c.client, "udp", "[fd00:172:30::10]:53", c.pods, podGateway)
		reachesAll(t, c.client, "tcp", hostPort(nodeAddr6.String(), 30080), c.pods, podGateway)
		// From a pod: the other pod sees the real source, the pod itself (hairpin) the
		// node's.
		from := c.pods[0]
		reachesAll(t, from.ns, "tcp", "[fd00:172:30::10]:80", c.pods, func(p *pod) netip.Addr {
			if p == from {
				return p.gateway
			}
			return from.ip
		})

		// The REJECT answers the first SYN, but over veth its ICMPv6 error reaches the
		// client while connect() still holds the socket lock, and IPv6 TCP then keeps it
		// as a soft error (TcpExtLockDroppedIcmps): the dial fails with ECONNREFUSED on
		// the answer to the retransmitted SYN, a second later. IPv4 fails at once. A drop
		// would still time out.
		wantRefused(t, c.client, "[fd00:172:30::30]:80")
		wantRefused(t, c.client, hostPort(nodeAddr6.String(), 30081))
		wantRefusedUDP(t, c.client, "[fd00:172:30::30]:53")

		// The rules went to ip6tables alone.
		if nat := k.save(t, "nat"); !strings.Contains(nat, "-d fd00:172:30::10/128") {
			t.Errorf("ip6tables nat table lacks the cluster IP:\n%s", nat)
		}
		v4save := iptables.BinaryName(v1.IPv4Protocol, backend, "save")
		if v4 := c.node.Run(t, v4save, "-t", "nat"); strings.Contains(v4, "KUBE-") {
			t.Errorf("the IPv6 proxier wrote IPv4 rules:\n%s", v4)
		}
	})
}
