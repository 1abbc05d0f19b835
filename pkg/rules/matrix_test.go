package rules_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

// masqFixture is upstream's TestInternalExternalMasquerade setup: a Cluster-policy
// service, a Local-policy one and an iTP=Local one, each with a local and a remote
// endpoint, reachable by cluster IP, node port and load balancer IP.
func masqFixture() *model.Snapshot {
	b := newSnapshot()
	eps := func(n int) []model.Endpoint {
		return []model.Endpoint{ep(fmt.Sprintf("10.180.0.%d:80", n), local), ep(fmt.Sprintf("10.180.1.%d:80", n))}
	}
	b.port(&model.ServicePort{Name: spn("ns1", "svc1"), ClusterIP: netip.MustParseAddr("172.30.0.41"), Port: 80, NodePort: 3001,
		LoadBalancerVIPs: addrs("9.10.11.12")}, eps(1)...)
	b.port(&model.ServicePort{Name: spn("ns2", "svc2"), ClusterIP: netip.MustParseAddr("172.30.0.42"), Port: 80, NodePort: 3002,
		LoadBalancerVIPs: addrs("9.10.11.13"), ExternalPolicyLocal: true}, eps(2)...)
	b.port(&model.ServicePort{Name: spn("ns3", "svc3"), ClusterIP: netip.MustParseAddr("172.30.0.43"), Port: 80, NodePort: 3003,
		LoadBalancerVIPs: addrs("9.10.11.14"), InternalPolicyLocal: true}, eps(3)...)
	return b.snap
}

// TestInternalExternalMasquerade checks who gets masqueraded, for every source (pod, node,
// external host) and destination kind, under the four combinations of --masquerade-all
// and local-traffic detection. Expectations follow upstream's table of the same name.
func TestInternalExternalMasquerade(t *testing.T) {
	type flow struct {
		name      string
		src, dst  string
		port      int
		fromLocal bool
		// masq per config: base, no detector, masqueradeAll, masqueradeAll without detector.
		masq [4]bool
		// eps is the endpoint set under the base config (detector present).
		eps string
	}
	const both1, both2, both3 = "10.180.0.1:80,10.180.1.1:80", "10.180.0.2:80,10.180.1.2:80", "10.180.0.3:80,10.180.1.3:80"
	flows := []flow{
		{"pod to cluster IP", podIP, "172.30.0.41", 80, false, [4]bool{false, false, true, true}, both1},
		{"pod to cluster IP, eTP Local", podIP, "172.30.0.42", 80, false, [4]bool{false, false, true, true}, both2},
		{"pod to cluster IP, iTP Local", podIP, "172.30.0.43", 80, false, [4]bool{false, false, true, true}, "10.180.0.3:80"},
		{"pod to node port", podIP, node, 3001, false, [4]bool{true, true, true, true}, both1},
		{"pod to node port, eTP Local", podIP, node, 3002, false, [4]bool{false, false, false, false}, both2},
		{"pod to LB", podIP, "9.10.11.12", 80, false, [4]bool{true, true, true, true}, both1},
		{"pod to LB, eTP Local", podIP, "9.10.11.13", 80, false, [4]bool{false, false, false, false}, both2},
		{"node to cluster IP", node, "172.30.0.41", 80, true, [4]bool{true, false, true, true}, both1},
		{"node to cluster IP, iTP Local", node, "172.30.0.43", 80, true, [4]bool{true, false, true, true}, "10.180.0.3:80"},
		{"node to node port", node, node, 3001, true, [4]bool{true, true, true, true}, both1},
		{"node to node port, eTP Local", node, node, 3002, true, [4]bool{true, true, true, true}, both2},
		{"node to LB, eTP Local", node, "9.10.11.13", 80, true, [4]bool{true, true, true, true}, both2},
		{"external to cluster IP", externalClient, "172.30.0.41", 80, false, [4]bool{true, false, true, true}, both1},
		{"external to node port", externalClient, node, 3001, false, [4]bool{true, true, true, true}, both1},
		{"external to node port, eTP Local", externalClient, node, 3002, false, [4]bool{false, false, false, false}, "10.180.0.2:80"},
		{"external to LB", externalClient, "9.10.11.12", 80, false, [4]bool{true, true, true, true}, both1},
		{"external to LB, eTP Local", externalClient, "9.10.11.13", 80, false, [4]bool{false, false, false, false}, "10.180.0.2:80"},
		{"external to node port, iTP Local", externalClient, node, 3003, false, [4]bool{true, true, true, true}, both3},
	}
	configs := []struct {
		name          string
		detector      bool
		masqueradeAll bool
	}{{"base", true, false}, {"no detector", false, false}, {"masquerade all", true, true}, {"masquerade all, no detector", false, true}}
	for ci, c := range configs {
		opts := defaultOptions()
		opts.MasqueradeAll = c.masqueradeAll
		if !c.detector {
			opts.LocalDetector = rules.LocalDetector{}
		}
		tables, _ := applied(t, rules.Request{Snapshot: masqFixture(), Node: testNode}, opts)
		tracer := &ruleset.Tracer{Tables: tables, LocalAddrs: []netip.Addr{nodeIP}, MasqueradeMark: 0x4000}
		for _, f := range flows {
			res, err := tracer.Trace(ruleset.Packet{Src: netip.MustParseAddr(f.src), Dst: netip.MustParseAddr(f.dst), Proto: "tcp", DPort: f.port, FromLocal: f.fromLocal})
			if err != nil {
				t.Fatalf("%s / %s: %v", c.name, f.name, err)
			}
			if res.Masquerade != f.masq[ci] {
				t.Errorf("%s / %s: masquerade=%t, want %t", c.name, f.name, res.Masquerade, f.masq[ci])
			}
			// Without a detector, pod traffic to Local-policy external destinations is
			// not short-circuited: it is treated as external.
			if c.detector && strings.Join(res.Endpoints, ",") != f.eps {
				t.Errorf("%s / %s: endpoints %v, want %s", c.name, f.name, res.Endpoints, f.eps)
			}
		}
	}
}

// TestNodePortsMatrix covers upstream's TestNodePorts combinations: family x localhost
// node ports x nodePortAddresses, checking which addresses accept node ports and whether
// the KUBE-FIREWALL guard is written.
func TestNodePortsMatrix(t *testing.T) {
	for _, tc := range []struct {
		name         string
		family       v1.IPFamily
		localhost    bool
		nodePortCIDR []string
		localAddrs   []string
		// accepts and refuses are destination addresses tried against node port 3001.
		accepts, refuses []string
		firewall         bool
	}{
		{"ipv4, localhost, all", v1.IPv4Protocol, true, nil, nil, []string{"192.168.0.2", "127.0.0.1"}, []string{"192.168.0.99"}, true},
		{"ipv4, no localhost, all", v1.IPv4Protocol, false, nil, nil, []string{"192.168.0.2"}, []string{"127.0.0.1"}, false},
		{"ipv4, localhost, limited", v1.IPv4Protocol, true, []string{"192.168.0.0/24", "127.0.0.0/8"}, []string{"192.168.0.2", "127.0.0.1", "192.168.1.2"},
			[]string{"192.168.0.2", "127.0.0.1"}, []string{"192.168.1.2"}, true},
		{"ipv4, no localhost, limited", v1.IPv4Protocol, false, []string{"192.168.0.0/24"}, []string{"192.168.0.2", "127.0.0.1", "192.168.1.2"},
			[]string{"192.168.0.2"}, []string{"127.0.0.1", "192.168.1.2"}, false},
		{"ipv6, all", v1.IPv6Protocol, true, nil, nil, []string{"2001:db8::1"}, []string{"::1"}, false},
		{"ipv6, limited", v1.IPv6Protocol, true, []string{"2001:db8::/64", "::1/128"}, []string{"2001:db8::1", "::1", "2001:db8:1::2"},
			[]string{"2001:db8::1"}, []string{"::1", "2001:db8:1::2"}, false},
		{"ipv4, limited to nothing local", v1.IPv4Protocol, false, []string{"10.99.0.0/16"}, []string{"192.168.0.2"}, nil, []string{"192.168.0.2"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newSnapshot()
			clusterIP, epAddr := "172.30.0.41", "10.180.0.1:80"
			if tc.family == v1.IPv6Protocol {
				clusterIP, epAddr = "fd00:172:30::41", "[fd00:10:180::1]:80"
			}
			b.port(&model.ServicePort{Name: spn("ns1", "svc1"), ClusterIP: netip.MustParseAddr(clusterIP), Port: 80, NodePort: 3001}, ep(epAddr))
			opts := defaultOptions()
			opts.Family, opts.LocalhostNodePorts, opts.LocalDetector = tc.family, tc.localhost, rules.LocalDetector{}
			for _, c := range tc.nodePortCIDR {
				opts.NodePortAddresses = append(opts.NodePortAddresses, netip.MustParsePrefix(c))
			}
			tables, _ := applied(t, rules.Request{Snapshot: b.snap, LocalAddrs: addrs(tc.localAddrs...)}, opts)
			local := addrs("192.168.0.2", "192.168.1.2", "2001:db8::1", "2001:db8:1::2")
			tracer := &ruleset.Tracer{Tables: tables, LocalAddrs: local, MasqueradeMark: 0x4000}
			want := netip.MustParseAddrPort(epAddr).String()
			for _, dst := range append(append([]string{}, tc.accepts...), tc.refuses...) {
				src := "203.0.113.2"
				if tc.family == v1.IPv6Protocol {
					src = "2001:db8:99::2"
				}
				if netip.MustParseAddr(dst).IsLoopback() {
					src = dst
				}
				res, err := tracer.Trace(ruleset.Packet{Src: netip.MustParseAddr(src), Dst: netip.MustParseAddr(dst), Proto: "tcp", DPort: 3001, FromLocal: netip.MustParseAddr(dst).IsLoopback()})
				if err != nil {
					t.Fatal(err)
				}
				accepted := strings.Join(res.Endpoints, ",") == want
				if accepted != slices.Contains(tc.accepts, dst) {
					t.Errorf("node port on %s: reached endpoint=%t, want %t", dst, accepted, slices.Contains(tc.accepts, dst))
				}
			}
			if _, ok := tables["filter"].Chains["KUBE-FIREWALL"]; ok != true || (len(tables["filter"].Chains["KUBE-FIREWALL"]) > 0) != tc.firewall {
				t.Errorf("KUBE-FIREWALL rule present=%t, want %t", len(tables["filter"].Chains["KUBE-FIREWALL"]) > 0, tc.firewall)
			}
		})
	}
}
