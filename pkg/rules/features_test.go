package rules_test

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/rules"
)

// Fixture addresses, as upstream's tests use them.
const (
	externalClient = "203.0.113.2"   // inside the LB source range 203.0.113.0/25
	blockedClient  = "203.0.113.130" // outside it
	podIP          = "10.0.0.2"
	node           = "192.168.0.2"
)

// TestRenderFeatures covers the features of behaviour spec §1.4-1.6 with a golden ruleset,
// packet traces and rule counts each. The traces reproduce upstream's packet-flow tables
// (TestOverallIPTablesRules, TestLoadBalancer, TestNoEndpointsReject,
// TestExternalTrafficPolicyLocal/Cluster, TestInternalTrafficPolicy,
// TestTerminatingEndpointsTrafficPolicy*, TestNodePorts) as kproxy's own cases.
func TestRenderFeatures(t *testing.T) {
	runRenderCases(t, []renderCase{{
		// Upstream's TestOverallIPTablesRules fixture: six services of every kind.
		name: "overall",
		build: func(b *snapshotBuilder) {
			b.port(&model.ServicePort{Name: spn("ns1", "svc1"), ClusterIP: netip.MustParseAddr("172.30.0.41"), Port: 80},
				ep("10.180.0.1:80"))
			b.port(&model.ServicePort{Name: spn("ns2", "svc2"), ClusterIP: netip.MustParseAddr("172.30.0.42"), Port: 80,
				NodePort: 3001, ExternalIPs: addrs("192.168.99.22"), LoadBalancerVIPs: addrs("1.2.3.4"),
				ExternalPolicyLocal: true, HealthCheckNodePort: 30000},
				ep("10.180.0.2:80"))
			b.port(&model.ServicePort{Name: spn("ns3", "svc3"), ClusterIP: netip.MustParseAddr("172.30.0.43"), Port: 80, NodePort: 3003},
				ep("10.180.0.3:80"))
			b.port(&model.ServicePort{Name: spn("ns4", "svc4"), ClusterIP: netip.MustParseAddr("172.30.0.44"), Port: 80,
				ExternalIPs: addrs("192.168.99.33")},
				ep("10.180.0.4:80"), ep("10.180.0.5:80"))
			b.port(&model.ServicePort{Name: spn("ns5", "svc5"), ClusterIP: netip.MustParseAddr("172.30.0.45"), Port: 80,
				NodePort: 3002, LoadBalancerVIPs: addrs("5.6.7.8"),
				LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("203.0.113.0/25")}, StickyMaxAgeSeconds: 10800},
				ep("10.180.0.3:80"))
			b.port(&model.ServicePort{Name: spn("ns6", "svc6"), ClusterIP: netip.MustParseAddr("172.30.0.46"), Port: 80})
		},
		traces: []traceCase{
			{name: "svc1 cluster IP", src: podIP, dst: "172.30.0.41", proto: "tcp", port: 80, want: "endpoints=10.180.0.1:80 masq=false verdict=ACCEPT"},
			{name: "svc2 external client to LB IP: no local endpoint", src: externalClient, dst: "1.2.3.4", proto: "tcp", port: 80, want: "endpoints= masq=false verdict=DROP"},
			{name: "svc2 pod to LB IP short-circuits to the cluster", src: podIP, dst: "1.2.3.4", proto: "tcp", port: 80, want: "endpoints=10.180.0.2:80 masq=false verdict=ACCEPT"},
			{name: "svc2 external client to external IP", src: externalClient, dst: "192.168.99.22", proto: "tcp", port: 80, want: "endpoints= masq=false verdict=DROP"},
			{name: "svc2 external client to node port", src: externalClient, dst: node, proto: "tcp", port: 3001, want: "endpoints= masq=false verdict=DROP"},
			{name: "svc3 node port", src: externalClient, dst: node, proto: "tcp", port: 3003, want: "endpoints=10.180.0.3:80 masq=true verdict=ACCEPT"},
			{name: "svc4 external IP", src: externalClient, dst: "192.168.99.33", proto: "tcp", port: 80, want: "endpoints=10.180.0.4:80,10.180.0.5:80 masq=true verdict=ACCEPT"},
			{name: "svc5 LB from allowed range", src: externalClient, dst: "5.6.7.8", proto: "tcp", port: 80, want: "endpoints=10.180.0.3:80 masq=true verdict=ACCEPT"},
			{name: "svc5 LB from blocked source", src: blockedClient, dst: "5.6.7.8", proto: "tcp", port: 80, want: "endpoints= masq=false verdict=DROP"},
			{name: "svc5 node port bypasses source ranges", src: blockedClient, dst: node, proto: "tcp", port: 3002, want: "endpoints=10.180.0.3:80 masq=true verdict=ACCEPT"},
			{name: "svc6 has no endpoints", src: podIP, dst: "172.30.0.46", proto: "tcp", port: 80, want: "endpoints= masq=false verdict=REJECT"},
		},
		// filter: 4 fixed + HCNP accept + svc2 DROP x3 + svc5 firewall DROP + svc6 REJECT.
		// nat: 5 fixed + svc1 5 + svc2 (3 SERVICES + NODEPORTS + masq + 3 EXT + SVC->SEP + 2 SEP = 11)
		//    + svc3 (SERVICES + NODEPORTS + masq + 2 EXT + 3 = 8) + svc4 (2 SERVICES + masq + 2 EXT + 6 = 11)
		//    + svc5 (2 SERVICES + NODEPORTS + masq + 2 EXT + 2 FW + affinity + SVC->SEP + 2 SEP = 12).
		filterRules: 4 + 1 + 3 + 1 + 1, natRules: 5 + 5 + 11 + 8 + 11 + 12,
	}, {
		// Upstream's TestNoEndpointsReject: every way in is rejected at once.
		name: "no-endpoints-every-destination",
		build: func(b *snapshotBuilder) {
			b.port(&model.ServicePort{Name: spn("ns1", "svc1"), ClusterIP: netip.MustParseAddr("172.30.0.41"), Port: 80, NodePort: 3001,
				ExternalIPs: addrs("192.168.99.11"), LoadBalancerVIPs: addrs("1.2.3.4")})
		},
		traces: []traceCase{
			{name: "pod to cluster IP", src: podIP, dst: "172.30.0.41", proto: "tcp", port: 80, want: "endpoints= masq=false verdict=REJECT"},
			{name: "external to external IP", src: externalClient, dst: "192.168.99.11", proto: "tcp", port: 80, want: "endpoints= masq=false verdict=REJECT"},
			{name: "pod to node port", src: podIP, dst: node, proto: "tcp", port: 3001, want: "endpoints= masq=false verdict=REJECT"},
			{name: "external to node port", src: externalClient, dst: node, proto: "tcp", port: 3001, want: "endpoints= masq=false verdict=REJECT"},
			{name: "pod to LB IP", src: podIP, dst: "1.2.3.4", proto: "tcp", port: 80, want: "endpoints= masq=false verdict=REJECT"},
			{name: "external to LB IP", src: externalClient, dst: "1.2.3.4", proto: "tcp", port: 80, want: "endpoints= masq=false verdict=REJECT"},
		},
		filterRules: 4 + 4, natRules: 5,
	}, {
		name: "loadbalancer-source-ranges",
		build: func(b *snapshotBuilder) {
			b.port(&model.ServicePort{Name: spn("ns1", "svc1"), ClusterIP: netip.MustParseAddr("172.30.0.41"), Port: 80, NodePort: 3001,
				LoadBalancerVIPs:         addrs("1.2.3.4", "5.6.7.8"),
				LoadBalancerSourceRanges: []netip.Prefix{netip.MustParsePrefix("192.168.0.0/24"), netip.MustParsePrefix("203.0.113.0/25")}},
				ep("10.180.0.1:80"))
		},
		traces: []traceCase{
			{name: "pod to cluster IP", src: podIP, dst: "172.30.0.41", proto: "tcp", port: 80, want: "endpoints=10.180.0.1:80 masq=false verdict=ACCEPT"},
			{name: "external to node port", src: externalClient, dst: node, proto: "tcp", port: 3001, want: "endpoints=10.180.0.1:80 masq=true verdict=ACCEPT"},
			{name: "node port bypasses source ranges", src: blockedClient, dst: node, proto: "tcp", port: 3001, want: "endpoints=10.180.0.1:80 masq=true verdict=ACCEPT"},
			{name: "allowed external to LB IP", src: externalClient, dst: "1.2.3.4", proto: "tcp", port: 80, want: "endpoints=10.180.0.1:80 masq=true verdict=ACCEPT"},
			{name: "blocked external to LB IP", src: blockedClient, dst: "5.6.7.8", proto: "tcp", port: 80, want: "endpoints= masq=false verdict=DROP"},
			{name: "pod to LB IP is not in the ranges", src: podIP, dst: "1.2.3.4", proto: "tcp", port: 80, want: "endpoints= masq=false verdict=DROP"},
			{name: "node in a range may use the LB IP", src: node, dst: "5.6.7.8", proto: "tcp", port: 80, fromLocal: true, want: "endpoints=10.180.0.1:80 masq=true verdict=ACCEPT"},
			{name: "the LB IP itself as source is allowed when the node is", src: "1.2.3.4", dst: "5.6.7.8", proto: "tcp", port: 80, want: "endpoints=10.180.0.1:80 masq=true verdict=ACCEPT"},
		},
		// nat: 5 + SERVICES(1+2) + NODEPORTS + masq + EXT 2 + FW (2 ranges + 2 self-allow + counter) + SVC->SEP + 2 SEP.
		filterRules: 4 + 2, natRules: 5 + 3 + 1 + 1 + 2 + 5 + 1 + 2,
	}, {
		name: "session-affinity",
		build: func(b *snapshotBuilder) {
			b.port(&model.ServicePort{Name: spn("ns1", "sticky"), ClusterIP: netip.MustParseAddr("172.30.0.41"), Port: 80, StickyMaxAgeSeconds: 600},
				ep("10.180.0.1:80"), ep("10.180.0.2:80"))
		},
		traces: []traceCase{
			// No client has a recent entry yet, so both endpoints are candidates.
			{name: "first connection picks any endpoint", src: podIP, dst: "172.30.0.41", proto: "tcp", port: 80, want: "endpoints=10.180.0.1:80,10.180.0.2:80 masq=false verdict=ACCEPT"},
		},
		filterRules: 4, natRules: 5 + 2 + 2 + 2 + 2*2,
	}, {
		name: "external-policy-local",
		build: func(b *snapshotBuilder) {
			b.port(&model.ServicePort{Name: spn("ns1", "svc1"), ClusterIP: netip.MustParseAddr("172.30.0.41"), Port: 80, NodePort: 3001,
				ExternalIPs: addrs("192.168.99.11"), LoadBalancerVIPs: addrs("1.2.3.4"), ExternalPolicyLocal: true, HealthCheckNodePort: 30000},
				ep("10.180.0.1:80", local), ep("10.180.2.1:80"))
		},
		traces: []traceCase{
			{name: "pod to cluster IP hits both endpoints", src: podIP, dst: "172.30.0.41", proto: "tcp", port: 80, want: "endpoints=10.180.0.1:80,10.180.2.1:80 masq=false verdict=ACCEPT"},
			{name: "external to external IP hits only the local endpoint, unmasqueraded", src: externalClient, dst: "192.168.99.11", proto: "tcp", port: 80, want: "endpoints=10.180.0.1:80 masq=false verdict=ACCEPT"},
			{name: "external to LB IP hits only the local endpoint", src: externalClient, dst: "1.2.3.4", proto: "tcp", port: 80, want: "endpoints=10.180.0.1:80 masq=false verdict=ACCEPT"},
			{name: "external to node port hits only the local endpoint", src: externalClient, dst: node, proto: "tcp", port: 3001, want: "endpoints=10.180.0.1:80 masq=false verdict=ACCEPT"},
			{name: "pod to LB IP hits both, unmasqueraded", src: podIP, dst: "1.2.3.4", proto: "tcp", port: 80, want: "endpoints=10.180.0.1:80,10.180.2.1:80 masq=false verdict=ACCEPT"},
			{name: "pod to node port hits both", src: podIP, dst: node, proto: "tcp", port: 3001, want: "endpoints=10.180.0.1:80,10.180.2.1:80 masq=false verdict=ACCEPT"},
			{name: "node to LB IP hits both, masqueraded", src: node, dst: "1.2.3.4", proto: "tcp", port: 80, fromLocal: true, want: "endpoints=10.180.0.1:80,10.180.2.1:80 masq=true verdict=ACCEPT"},
			{name: "node to node port hits both, masqueraded", src: node, dst: node, proto: "tcp", port: 3001, fromLocal: true, want: "endpoints=10.180.0.1:80,10.180.2.1:80 masq=true verdict=ACCEPT"},
		},
		filterRules: 4 + 1, natRules: 5 + 3 + 1 + 1 + 4 + 2 + 1 + 2*2,
	}, {
		name: "external-policy-local-no-local-endpoints",
		build: func(b *snapshotBuilder) {
			b.port(&model.ServicePort{Name: spn("ns1", "svc1"), ClusterIP: netip.MustParseAddr("172.30.0.41"), Port: 80, NodePort: 3001,
				LoadBalancerVIPs: addrs("1.2.3.4"), ExternalPolicyLocal: true},
				ep("10.180.2.1:80"))
		},
		traces: []traceCase{
			{name: "external to LB IP is dropped", src: externalClient, dst: "1.2.3.4", proto: "tcp", port: 80, want: "endpoints= masq=false verdict=DROP"},
			{name: "external to node port is dropped", src: externalClient, dst: node, proto: "tcp", port: 3001, want: "endpoints= masq=false verdict=DROP"},
			{name: "pod to LB IP still reaches the remote endpoint", src: podIP, dst: "1.2.3.4", proto: "tcp", port: 80, want: "endpoints=10.180.2.1:80 masq=false verdict=ACCEPT"},
			{name: "node to node port reaches it too", src: node, dst: node, proto: "tcp", port: 3001, fromLocal: true, want: "endpoints=10.180.2.1:80 masq=true verdict=ACCEPT"},
		},
		filterRules: 4 + 2, natRules: 5 + 2 + 1 + 1 + 3 + 1 + 2,
	}, {
		name: "internal-policy-local",
		build: func(b *snapshotBuilder) {
			b.port(&model.ServicePort{Name: spn("ns1", "svc1"), ClusterIP: netip.MustParseAddr("172.30.0.41"), Port: 80, InternalPolicyLocal: true},
				ep("10.180.0.1:80", local), ep("10.180.2.1:80"))
			b.port(&model.ServicePort{Name: spn("ns2", "svc2"), ClusterIP: netip.MustParseAddr("172.30.0.42"), Port: 80, InternalPolicyLocal: true},
				ep("10.180.2.2:80"))
		},
		traces: []traceCase{
			{name: "cluster IP reaches only the local endpoint", src: podIP, dst: "172.30.0.41", proto: "tcp", port: 80, want: "endpoints=10.180.0.1:80 masq=false verdict=ACCEPT"},
			{name: "no local endpoint: dropped, not rejected", src: podIP, dst: "172.30.0.42", proto: "tcp", port: 80, want: "endpoints= masq=false verdict=DROP"},
		},
		// svc1: SERVICES + masq in SVL + SVL->SEP + 2 SEP; svc2: filter DROP only.
		filterRules: 4 + 1, natRules: 5 + 1 + 1 + 1 + 2,
	}, {
		name: "terminating-endpoints",
		build: func(b *snapshotBuilder) {
			// Cluster policy: no ready endpoint anywhere, so serving terminating ones are used.
			b.port(&model.ServicePort{Name: spn("ns1", "cluster"), ClusterIP: netip.MustParseAddr("172.30.0.41"), Port: 80},
				ep("10.180.0.1:80", terminating, local), ep("10.180.2.1:80", terminating), ep("10.180.2.2:80", terminating, notReady))
			// Local policy: the local endpoint is terminating while a remote one is ready;
			// external traffic drains to the local one, internal goes to the ready one.
			b.port(&model.ServicePort{Name: spn("ns1", "local"), ClusterIP: netip.MustParseAddr("172.30.0.42"), Port: 80, NodePort: 3001,
				ExternalPolicyLocal: true},
				ep("10.180.0.3:80", terminating, local), ep("10.180.2.3:80"))
		},
		traces: []traceCase{
			{name: "cluster policy falls back to serving terminating endpoints", src: podIP, dst: "172.30.0.41", proto: "tcp", port: 80,
				want: "endpoints=10.180.0.1:80,10.180.2.1:80 masq=false verdict=ACCEPT"},
			{name: "cluster IP of the local-policy service uses the ready endpoint", src: podIP, dst: "172.30.0.42", proto: "tcp", port: 80,
				want: "endpoints=10.180.2.3:80 masq=false verdict=ACCEPT"},
			{name: "external traffic drains to the local terminating endpoint", src: externalClient, dst: node, proto: "tcp", port: 3001,
				want: "endpoints=10.180.0.3:80 masq=false verdict=ACCEPT"},
		},
		filterRules: 4, natRules: 5 + (2 + 2*3) + (2 + 1 + 4 + 1 + 1 + 2*2),
	}, {
		name: "topology-zone-hints",
		build: func(b *snapshotBuilder) {
			b.port(&model.ServicePort{Name: spn("ns1", "svc1"), ClusterIP: netip.MustParseAddr("172.30.0.41"), Port: 80},
				ep("10.180.0.1:80", zoneHints("zone-a")), ep("10.180.1.1:80", zoneHints("zone-b")), ep("10.180.2.1:80", zoneHints("zone-a")))
			// One endpoint without hints: hints are ignored for the whole service.
			b.port(&model.ServicePort{Name: spn("ns2", "svc2"), ClusterIP: netip.MustParseAddr("172.30.0.42"), Port: 80},
				ep("10.180.0.2:80", zoneHints("zone-a")), ep("10.180.1.2:80"))
		},
		request: func(r *rules.Request) { r.Node.Zone = "zone-a" },
		traces: []traceCase{
			{name: "only same-zone endpoints", src: podIP, dst: "172.30.0.41", proto: "tcp", port: 80, want: "endpoints=10.180.0.1:80,10.180.2.1:80 masq=false verdict=ACCEPT"},
			{name: "incomplete hints are ignored", src: podIP, dst: "172.30.0.42", proto: "tcp", port: 80, want: "endpoints=10.180.0.2:80,10.180.1.2:80 masq=false verdict=ACCEPT"},
		},
		filterRules: 4, natRules: 5 + (2 + 3*2) + (2 + 3*2),
	}, {
		name: "nodeport-addresses",
		build: func(b *snapshotBuilder) {
			b.port(&model.ServicePort{Name: spn("ns1", "svc1"), ClusterIP: netip.MustParseAddr("172.30.0.41"), Port: 80, NodePort: 3001},
				ep("10.180.0.1:80"))
		},
		opts: func(o *rules.Options) {
			o.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("192.168.0.0/24"), netip.MustParsePrefix("127.0.0.0/8")}
		},
		request: func(r *rules.Request) { r.LocalAddrs = addrs("10.9.9.9", "192.168.0.2", "127.0.0.1", "192.168.1.2") },
		traces: []traceCase{
			{name: "node port on an address in range", src: externalClient, dst: node, proto: "tcp", port: 3001, want: "endpoints=10.180.0.1:80 masq=true verdict=ACCEPT"},
			{name: "not on a local address outside the ranges", src: externalClient, dst: "10.9.9.9", proto: "tcp", port: 3001, want: "endpoints= masq=false verdict=ACCEPT"},
		},
		// Two tail rules: 127.0.0.1 and 192.168.0.2.
		filterRules: 4, natRules: 4 + 2 + 2 + 3 + 3,
	}})
}

// TestLargeClusterDropsEndpointComments checks upstream's large-cluster mode: above 1000
// endpoints the per-endpoint rules lose their comments, the service-level rules keep them.
func TestLargeClusterDropsEndpointComments(t *testing.T) {
	for _, n := range []int{rules.LargeClusterEndpoints, rules.LargeClusterEndpoints + 1} {
		snap := largeSnapshot(1, n)
		rs := rules.Render(rules.Request{Snapshot: snap}, defaultOptions())
		payload := string(rs.Payload())
		hasEndpointComments := strings.Contains(payload, "-m comment --comment ns0/svc0:http -m tcp -p tcp -j DNAT")
		if large := n > rules.LargeClusterEndpoints; rs.LargeCluster != large || hasEndpointComments == large {
			t.Errorf("%d endpoints: LargeCluster=%t, endpoint comments present=%t", n, rs.LargeCluster, hasEndpointComments)
		}
		if !strings.Contains(payload, `--comment "ns0/svc0:http cluster IP"`) {
			t.Errorf("%d endpoints: service comment missing", n)
		}
	}
}

// TestNoLocalEndpointsCounts feeds the sync_proxy_rules_no_local_endpoints_total gauge.
func TestNoLocalEndpointsCounts(t *testing.T) {
	b := newSnapshot()
	b.port(&model.ServicePort{Name: spn("ns1", "itp"), ClusterIP: netip.MustParseAddr("172.30.0.41"), Port: 80, InternalPolicyLocal: true}, ep("10.180.2.1:80"))
	b.port(&model.ServicePort{Name: spn("ns1", "etp"), ClusterIP: netip.MustParseAddr("172.30.0.42"), Port: 80, NodePort: 3001, ExternalPolicyLocal: true}, ep("10.180.2.2:80"))
	b.port(&model.ServicePort{Name: spn("ns1", "none"), ClusterIP: netip.MustParseAddr("172.30.0.43"), Port: 80, InternalPolicyLocal: true})
	rs := rules.Render(rules.Request{Snapshot: b.snap, Node: testNode}, defaultOptions())
	if rs.NoLocalEndpoints["internal"] != 1 || rs.NoLocalEndpoints["external"] != 1 {
		t.Errorf("no-local-endpoint counts %v, want internal=1 external=1", rs.NoLocalEndpoints)
	}
}
