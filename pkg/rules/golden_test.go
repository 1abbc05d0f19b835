package rules_test

import (
	"fmt"
	"net/netip"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/rules/rulestest"
	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

// traceCase is one row of a packet-trace table.
type traceCase struct {
	name      string
	src, dst  string
	proto     string
	port      int
	fromLocal bool
	// want is "endpoints=a,b masq=bool verdict=X", as ruleset.Result prints.
	want string
}

type renderCase struct {
	name  string
	build func(b *snapshotBuilder)
	opts  func(o *rules.Options)
	// request adjusts the render request (node, local addresses).
	request func(r *rules.Request)
	traces  []traceCase
	// filterRules and natRules pin the rule counts; a change must be deliberate.
	filterRules, natRules int
}

// testNode is upstream's fixture node.
var testNode = model.Node{Name: "test-node", IP: netip.MustParseAddr("192.168.0.2")}

var (
	tcp  = v1.ProtocolTCP
	udp  = v1.ProtocolUDP
	sctp = v1.ProtocolSCTP
)

func TestRenderGoldenTraceAndCounts(t *testing.T) {
	runRenderCases(t, basicCases)
}

func runRenderCases(t *testing.T, cases []renderCase) {
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { runRenderCase(t, tc) })
	}
}

var basicCases = []renderCase{{
	name: "clusterip-protocols",
	build: func(b *snapshotBuilder) {
		b.svc("ns1", "svc1", "p80", tcp, "172.30.0.41", 80, 0, "10.180.0.1:8080", "10.180.0.2:8080")
		b.svc("ns2", "dns", "dns", udp, "172.30.0.42", 53, 0, "10.180.0.3:53")
		b.svc("ns2", "dns", "dns-tcp", tcp, "172.30.0.42", 53, 0, "10.180.0.3:53")
		b.svc("ns3", "sctp", "", sctp, "172.30.0.43", 9999, 0, "10.180.0.4:9999")
	},
	traces: []traceCase{
		{name: "pod to tcp cluster IP reaches both endpoints unmasqueraded", src: "10.0.0.2", dst: "172.30.0.41", proto: "tcp", port: 80,
			want: "endpoints=10.180.0.1:8080,10.180.0.2:8080 masq=false verdict=ACCEPT"},
		{name: "node to cluster IP is masqueraded", src: "192.168.0.2", dst: "172.30.0.41", proto: "tcp", port: 80, fromLocal: true,
			want: "endpoints=10.180.0.1:8080,10.180.0.2:8080 masq=true verdict=ACCEPT"},
		{name: "external host to cluster IP is masqueraded", src: "203.0.113.2", dst: "172.30.0.41", proto: "tcp", port: 80,
			want: "endpoints=10.180.0.1:8080,10.180.0.2:8080 masq=true verdict=ACCEPT"},
		{name: "udp dns", src: "10.0.0.2", dst: "172.30.0.42", proto: "udp", port: 53, want: "endpoints=10.180.0.3:53 masq=false verdict=ACCEPT"},
		{name: "tcp dns on the same port", src: "10.0.0.2", dst: "172.30.0.42", proto: "tcp", port: 53, want: "endpoints=10.180.0.3:53 masq=false verdict=ACCEPT"},
		{name: "sctp", src: "10.0.0.2", dst: "172.30.0.43", proto: "sctp", port: 9999, want: "endpoints=10.180.0.4:9999 masq=false verdict=ACCEPT"},
		{name: "wrong protocol does not match", src: "10.0.0.2", dst: "172.30.0.43", proto: "tcp", port: 9999, want: "endpoints= masq=false verdict=ACCEPT"},
		{name: "wrong port does not match", src: "10.0.0.2", dst: "172.30.0.41", proto: "tcp", port: 81, want: "endpoints= masq=false verdict=ACCEPT"},
		{name: "hairpin: endpoint reaching itself is masqueraded", src: "10.180.0.3", dst: "172.30.0.42", proto: "udp", port: 53,
			want: "endpoints=10.180.0.3:53 masq=true verdict=ACCEPT"},
	},
	filterRules: 4, natRules: 5 + (2 + 3*2) + 3*(2+3*1),
}, {
	name: "multiport-and-sorting",
	build: func(b *snapshotBuilder) {
		// Endpoints sort by "ip:port" string, as upstream: 10.180.0.10:8080 < 10.180.0.1:8080.
		b.svc("ns1", "web", "http", tcp, "172.30.0.50", 80, 0, "10.180.0.2:8080", "10.180.0.10:8080", "10.180.0.1:8080")
		b.svc("ns1", "web", "https", tcp, "172.30.0.50", 443, 0, "10.180.0.2:8443", "10.180.0.10:8443", "10.180.0.1:8443")
	},
	traces: []traceCase{
		{name: "http port", src: "10.0.0.2", dst: "172.30.0.50", proto: "tcp", port: 80,
			want: "endpoints=10.180.0.10:8080,10.180.0.1:8080,10.180.0.2:8080 masq=false verdict=ACCEPT"},
		{name: "https port", src: "10.0.0.2", dst: "172.30.0.50", proto: "tcp", port: 443,
			want: "endpoints=10.180.0.10:8443,10.180.0.1:8443,10.180.0.2:8443 masq=false verdict=ACCEPT"},
	},
	filterRules: 4, natRules: 5 + 2*(2+3*3),
}, {
	name: "nodeport",
	build: func(b *snapshotBuilder) {
		b.svc("ns1", "np", "p80", tcp, "172.30.0.60", 80, 30080, "10.180.0.1:80", "10.180.0.2:80")
		b.svc("ns1", "np-udp", "", udp, "172.30.0.61", 53, 30053, "10.180.0.3:5353")
	},
	traces: []traceCase{
		{name: "external client to node port is masqueraded", src: "203.0.113.2", dst: "192.168.0.2", proto: "tcp", port: 30080,
			want: "endpoints=10.180.0.1:80,10.180.0.2:80 masq=true verdict=ACCEPT"},
		{name: "pod to node port is masqueraded", src: "10.0.0.2", dst: "192.168.0.2", proto: "tcp", port: 30080,
			want: "endpoints=10.180.0.1:80,10.180.0.2:80 masq=true verdict=ACCEPT"},
		{name: "udp node port", src: "203.0.113.2", dst: "192.168.0.2", proto: "udp", port: 30053,
			want: "endpoints=10.180.0.3:5353 masq=true verdict=ACCEPT"},
		{name: "node port on a non-local address does not match", src: "203.0.113.2", dst: "192.168.0.99", proto: "tcp", port: 30080,
			want: "endpoints= masq=false verdict=ACCEPT"},
		{name: "cluster IP still works", src: "10.0.0.2", dst: "172.30.0.60", proto: "tcp", port: 80,
			want: "endpoints=10.180.0.1:80,10.180.0.2:80 masq=false verdict=ACCEPT"},
	},
	filterRules: 4, natRules: 5 + (2 + 3 + 3*2) + (2 + 3 + 3*1),
}, {
	name: "no-endpoints",
	build: func(b *snapshotBuilder) {
		b.svc("ns1", "empty", "p80", tcp, "172.30.0.70", 80, 30070)
		b.svc("ns1", "empty-udp", "", udp, "172.30.0.71", 53, 0)
		b.svc("ns1", "full", "p80", tcp, "172.30.0.72", 80, 0, "10.180.0.1:80")
		// Not ready and not terminating: never used.
		spn := b.svc("ns1", "unready", "p80", tcp, "172.30.0.73", 80, 0)
		b.snap.Endpoints[spn] = []model.Endpoint{{IP: netip.MustParseAddr("10.180.0.5"), Port: 80}}
	},
	traces: []traceCase{
		{name: "cluster IP without endpoints is rejected", src: "10.0.0.2", dst: "172.30.0.70", proto: "tcp", port: 80, want: "endpoints= masq=false verdict=REJECT"},
		{name: "node port without endpoints is rejected", src: "203.0.113.2", dst: "192.168.0.2", proto: "tcp", port: 30070, want: "endpoints= masq=false verdict=REJECT"},
		{name: "udp without endpoints is rejected", src: "10.0.0.2", dst: "172.30.0.71", proto: "udp", port: 53, want: "endpoints= masq=false verdict=REJECT"},
		{name: "node itself is rejected too", src: "192.168.0.2", dst: "172.30.0.70", proto: "tcp", port: 80, fromLocal: true, want: "endpoints= masq=false verdict=REJECT"},
		{name: "unready endpoints are not used", src: "10.0.0.2", dst: "172.30.0.73", proto: "tcp", port: 80, want: "endpoints= masq=false verdict=REJECT"},
		{name: "other service unaffected", src: "10.0.0.2", dst: "172.30.0.72", proto: "tcp", port: 80, want: "endpoints=10.180.0.1:80 masq=false verdict=ACCEPT"},
	},
	filterRules: 4 + 2 + 1 + 1, natRules: 5 + (2 + 3),
}, {
	name: "terminating-fallback",
	build: func(b *snapshotBuilder) {
		spn := b.svc("ns1", "draining", "p80", tcp, "172.30.0.80", 80, 0)
		b.snap.Endpoints[spn] = []model.Endpoint{
			{IP: netip.MustParseAddr("10.180.0.1"), Port: 80, Serving: true, Terminating: true},
			{IP: netip.MustParseAddr("10.180.0.2"), Port: 80, Serving: false, Terminating: true},
		}
		spn = b.svc("ns1", "mixed", "p80", tcp, "172.30.0.81", 80, 0)
		b.snap.Endpoints[spn] = []model.Endpoint{
			{IP: netip.MustParseAddr("10.180.0.3"), Port: 80, Serving: true, Terminating: true},
			{IP: netip.MustParseAddr("10.180.0.4"), Port: 80, Ready: true, Serving: true},
		}
	},
	traces: []traceCase{
		{name: "only serving terminating endpoints are used when none is ready", src: "10.0.0.2", dst: "172.30.0.80", proto: "tcp", port: 80,
			want: "endpoints=10.180.0.1:80 masq=false verdict=ACCEPT"},
		{name: "ready endpoints win over terminating ones", src: "10.0.0.2", dst: "172.30.0.81", proto: "tcp", port: 80,
			want: "endpoints=10.180.0.4:80 masq=false verdict=ACCEPT"},
	},
	filterRules: 4, natRules: 5 + 2*(2+3),
}, {
	name: "masquerade-all",
	build: func(b *snapshotBuilder) {
		b.svc("ns1", "svc1", "p80", tcp, "172.30.0.41", 80, 0, "10.180.0.1:80")
	},
	opts: func(o *rules.Options) { o.MasqueradeAll = true },
	traces: []traceCase{
		{name: "pod traffic is masqueraded too", src: "10.0.0.2", dst: "172.30.0.41", proto: "tcp", port: 80, want: "endpoints=10.180.0.1:80 masq=true verdict=ACCEPT"},
	},
	filterRules: 4, natRules: 5 + 2 + 3,
}, {
	name: "no-local-detector",
	build: func(b *snapshotBuilder) {
		b.svc("ns1", "svc1", "p80", tcp, "172.30.0.41", 80, 0, "10.180.0.1:80")
	},
	opts: func(o *rules.Options) {
		o.LocalDetector = rules.LocalDetector{}
		o.LocalhostNodePorts = false
		o.DropInvalid = false
	},
	traces: []traceCase{
		{name: "without a cluster CIDR nothing is masqueraded on cluster IPs", src: "203.0.113.2", dst: "172.30.0.41", proto: "tcp", port: 80,
			want: "endpoints=10.180.0.1:80 masq=false verdict=ACCEPT"},
	},
	filterRules: 2, natRules: 5 + 1 + 3,
}, {
	// Upstream's nfacct accounting, as on a kernel with nfnetlink_acct: the INVALID drop
	// counts what it drops, and a node port reached on 127.0.0.0/8 is counted by a rule
	// of its own before the rule that handles it.
	name: "nfacct",
	build: func(b *snapshotBuilder) {
		b.svc("ns1", "svc1", "p80", tcp, "172.30.0.41", 80, 30080, "10.180.0.1:80")
		b.svc("ns1", "svc2", "p80", tcp, "172.30.0.42", 80, 30081)
	},
	opts: func(o *rules.Options) {
		o.CountInvalidDropped = true
		o.CountLocalhostNodePorts = true
	},
	traces: []traceCase{
		{name: "node port on localhost", src: "127.0.0.1", dst: "127.0.0.1", proto: "tcp", port: 30080, fromLocal: true,
			want: "endpoints=10.180.0.1:80 masq=true verdict=ACCEPT"},
		{name: "node port on the node IP", src: "203.0.113.2", dst: "192.168.0.2", proto: "tcp", port: 30080,
			want: "endpoints=10.180.0.1:80 masq=true verdict=ACCEPT"},
	},
	filterRules: 6, natRules: 14,
}, {
	name: "ipv6",
	build: func(b *snapshotBuilder) {
		b.svc("ns1", "svc1", "p80", tcp, "fd00:172:30::41", 80, 30080, "[fd00:10:180::1]:80", "[fd00:10:180::2]:80")
	},
	opts: func(o *rules.Options) {
		o.Family = v1.IPv6Protocol
		o.LocalDetector = rules.DetectByCIDR(netip.MustParsePrefix("fd00:10::/48"))
	},
	traces: []traceCase{
		{name: "pod to cluster IP", src: "fd00:10::2", dst: "fd00:172:30::41", proto: "tcp", port: 80,
			want: "endpoints=[fd00:10:180::1]:80,[fd00:10:180::2]:80 masq=false verdict=ACCEPT"},
		{name: "external to node port", src: "2001:db8:99::2", dst: "2001:db8::1", proto: "tcp", port: 30080,
			want: "endpoints=[fd00:10:180::1]:80,[fd00:10:180::2]:80 masq=true verdict=ACCEPT"},
	},
	// IPv6 has no localhost node ports, so no KUBE-FIREWALL rule.
	filterRules: 3, natRules: 5 + 2 + 3 + 3*2,
}}

func runRenderCase(t *testing.T, tc renderCase) {
	b := newSnapshot()
	tc.build(b)
	opts := defaultOptions()
	if tc.opts != nil {
		tc.opts(&opts)
	}
	req := rules.Request{Snapshot: b.snap, Node: testNode}
	if tc.request != nil {
		tc.request(&req)
	}
	tables, rs := applied(t, req, opts)
	rulestest.Golden(t, tc.name, tables.Dump())

	if rs.FilterRules != tc.filterRules || rs.NATRules != tc.natRules {
		t.Errorf("rule counts filter=%d nat=%d, want filter=%d nat=%d", rs.FilterRules, rs.NATRules, tc.filterRules, tc.natRules)
	}
	if got := tables.RuleCount("filter") - len(rules.BuiltinJumps()) + natJumps(); got != rs.FilterRules {
		t.Errorf("reported %d filter rules, kernel would hold %d", rs.FilterRules, got)
	}
	if got := tables.RuleCount("nat") - natJumps(); got != rs.NATRules {
		t.Errorf("reported %d nat rules, kernel would hold %d", rs.NATRules, got)
	}

	local := []netip.Addr{nodeIP, netip.MustParseAddr("2001:db8::1")}
	tracer := &ruleset.Tracer{Tables: tables, LocalAddrs: local, MasqueradeMark: 1 << opts.MasqueradeBit}
	for _, tr := range tc.traces {
		res, err := tracer.Trace(ruleset.Packet{
			Src: netip.MustParseAddr(tr.src), Dst: netip.MustParseAddr(tr.dst), Proto: tr.proto, DPort: tr.port, FromLocal: tr.fromLocal,
		})
		if err != nil {
			t.Errorf("%s: trace failed: %v", tr.name, err)
			continue
		}
		if res.String() != tr.want {
			t.Errorf("%s:\n  got  %s\n  want %s", tr.name, res, tr.want)
		}
	}
}

func natJumps() int {
	n := 0
	for _, j := range rules.BuiltinJumps() {
		if j.Table == "nat" {
			n++
		}
	}
	return n
}

// TestRuleCountScaling reproduces upstream's rule-count expectations for ClusterIP
// services: 5 fixed nat rules plus 2 + 3E per service with E endpoints.
func TestRuleCountScaling(t *testing.T) {
	for _, tc := range []struct{ services, endpoints, nat int }{
		{1, 1, 10}, {1, 2, 13}, {1, 10, 37}, {10, 1, 55}, {10, 2, 85}, {10, 10, 325},
	} {
		b := newSnapshot()
		for s := 0; s < tc.services; s++ {
			var eps []string
			for e := 0; e < tc.endpoints; e++ {
				eps = append(eps, fmt.Sprintf("10.%d.%d.%d:80", s/250, s%250, e+1))
			}
			b.svc("ns", fmt.Sprintf("svc%d", s), "p80", tcp, fmt.Sprintf("172.30.%d.%d", s/250, s%250+1), 80, 0, eps...)
		}
		rs := rules.Render(rules.Request{Snapshot: b.snap}, defaultOptions())
		if rs.NATRules != tc.nat || rs.FilterRules != 4 {
			t.Errorf("%dx%d: nat=%d filter=%d, want nat=%d filter=4", tc.services, tc.endpoints, rs.NATRules, rs.FilterRules, tc.nat)
		}
	}
}
