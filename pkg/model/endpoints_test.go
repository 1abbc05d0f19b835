package model

import (
	"net/netip"
	"strings"
	"testing"
)

type epSpec struct {
	ip                          string
	ready, serving, term, local bool
	zones, nodes                []string
}

func mk(specs ...epSpec) []Endpoint {
	var eps []Endpoint
	for _, s := range specs {
		eps = append(eps, Endpoint{IP: netip.MustParseAddr(s.ip), Port: 80, Ready: s.ready, Serving: s.serving || s.ready,
			Terminating: s.term, IsLocal: s.local, ZoneHints: s.zones, NodeHints: s.nodes})
	}
	SortEndpoints(eps)
	return eps
}

func ips(eps []Endpoint) string {
	var s []string
	for _, e := range eps {
		s = append(s, e.IP.String())
	}
	return strings.Join(s, ",")
}

// TestCategorizeEndpoints is kproxy's version of upstream's topology table test: which
// endpoints each policy gets, with topology hints and terminating fallback.
func TestCategorizeEndpoints(t *testing.T) {
	node := Node{Name: "node-1", Zone: "zone-a"}
	clusterSvc := &ServicePort{}
	itpLocal := &ServicePort{InternalPolicyLocal: true}
	etpLocal := &ServicePort{NodePort: 30080, ExternalPolicyLocal: true}
	for _, tc := range []struct {
		name                  string
		svc                   *ServicePort
		eps                   []Endpoint
		cluster, local, reach string
		hasAny                bool
	}{
		{"ready endpoints, no hints", clusterSvc,
			mk(epSpec{ip: "10.0.0.1", ready: true}, epSpec{ip: "10.0.0.2", ready: true}), "10.0.0.1,10.0.0.2", "", "10.0.0.1,10.0.0.2", true},
		{"zone hints for our zone", clusterSvc,
			mk(epSpec{ip: "10.0.0.1", ready: true, zones: []string{"zone-a"}}, epSpec{ip: "10.0.0.2", ready: true, zones: []string{"zone-b"}}),
			"10.0.0.1", "", "10.0.0.1", true},
		{"zone hints, none for our zone: ignored", clusterSvc,
			mk(epSpec{ip: "10.0.0.1", ready: true, zones: []string{"zone-c"}}, epSpec{ip: "10.0.0.2", ready: true, zones: []string{"zone-b"}}),
			"10.0.0.1,10.0.0.2", "", "10.0.0.1,10.0.0.2", true},
		{"one endpoint without hints: ignored", clusterSvc,
			mk(epSpec{ip: "10.0.0.1", ready: true, zones: []string{"zone-a"}}, epSpec{ip: "10.0.0.2", ready: true}),
			"10.0.0.1,10.0.0.2", "", "10.0.0.1,10.0.0.2", true},
		{"node hints win over zone hints", clusterSvc,
			mk(epSpec{ip: "10.0.0.1", ready: true, zones: []string{"zone-a"}, nodes: []string{"node-2"}},
				epSpec{ip: "10.0.0.2", ready: true, zones: []string{"zone-a"}, nodes: []string{"node-1"}}),
			"10.0.0.2", "", "10.0.0.2", true},
		{"unready endpoints do not count for hints", clusterSvc,
			mk(epSpec{ip: "10.0.0.1", ready: true, zones: []string{"zone-a"}}, epSpec{ip: "10.0.0.2"}),
			"10.0.0.1", "", "10.0.0.1", true},
		{"no ready: serving terminating, topology ignored", clusterSvc,
			mk(epSpec{ip: "10.0.0.1", serving: true, term: true, zones: []string{"zone-b"}}, epSpec{ip: "10.0.0.2", term: true}),
			"10.0.0.1", "", "10.0.0.1", true},
		{"nothing usable", clusterSvc, mk(epSpec{ip: "10.0.0.1"}, epSpec{ip: "10.0.0.2", term: true}), "", "", "", false},
		{"internal local: local ready only", itpLocal,
			mk(epSpec{ip: "10.0.0.1", ready: true, local: true}, epSpec{ip: "10.0.0.2", ready: true}), "", "10.0.0.1", "10.0.0.1", true},
		{"internal local without local endpoints still has endpoints", itpLocal,
			mk(epSpec{ip: "10.0.0.2", ready: true}), "", "", "", true},
		{"internal local: local terminating when no local ready", itpLocal,
			mk(epSpec{ip: "10.0.0.1", serving: true, term: true, local: true}, epSpec{ip: "10.0.0.2", ready: true}), "", "10.0.0.1", "10.0.0.1", true},
		{"external local: both lists, cluster is a superset", etpLocal,
			mk(epSpec{ip: "10.0.0.1", ready: true, local: true}, epSpec{ip: "10.0.0.2", ready: true}),
			"10.0.0.1,10.0.0.2", "10.0.0.1", "10.0.0.1,10.0.0.2", true},
		{"external local: local terminating plus remote ready", etpLocal,
			mk(epSpec{ip: "10.0.0.1", serving: true, term: true, local: true}, epSpec{ip: "10.0.0.2", ready: true}),
			"10.0.0.2", "10.0.0.1", "10.0.0.1,10.0.0.2", true},
		{"external local with zone hints: union of both", etpLocal,
			mk(epSpec{ip: "10.0.0.1", ready: true, local: true, zones: []string{"zone-b"}}, epSpec{ip: "10.0.0.2", ready: true, zones: []string{"zone-a"}}),
			"10.0.0.2", "10.0.0.1", "10.0.0.1,10.0.0.2", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := CategorizeEndpoints(tc.eps, tc.svc, node)
			if ips(c.Cluster) != tc.cluster || ips(c.Local) != tc.local || ips(c.AllReachable) != tc.reach || c.HasAny != tc.hasAny {
				t.Errorf("cluster=%q local=%q reachable=%q hasAny=%t; want %q %q %q %t",
					ips(c.Cluster), ips(c.Local), ips(c.AllReachable), c.HasAny, tc.cluster, tc.local, tc.reach, tc.hasAny)
			}
		})
	}
}

// TestHealthCheckBookkeeping mirrors upstream's TestHealthCheckNodePortWhenTerminating and
// the health-check part of TestBuildServiceMap: ports by service, and local ready
// endpoints counted by distinct IP, terminating ones excluded.
func TestHealthCheckBookkeeping(t *testing.T) {
	lb := ServicePortName{Port: "p80", Protocol: "TCP"}
	lb.Namespace, lb.Name = "ns1", "lb"
	lb2 := lb
	lb2.Port = "p81"
	plain := lb
	plain.Name = "plain"
	snap := &Snapshot{
		Services: map[ServicePortName]*ServicePort{
			lb:    {Name: lb, HealthCheckNodePort: 30000},
			lb2:   {Name: lb2, HealthCheckNodePort: 30000},
			plain: {Name: plain},
		},
		Endpoints: map[ServicePortName][]Endpoint{
			lb: mk(epSpec{ip: "10.0.0.1", ready: true, local: true}, epSpec{ip: "10.0.0.2", ready: true, local: true},
				epSpec{ip: "10.0.0.3", serving: true, term: true, local: true}, epSpec{ip: "10.0.0.4", ready: true}),
			// Same IP on another port counts once.
			lb2:   mk(epSpec{ip: "10.0.0.1", ready: true, local: true}),
			plain: mk(epSpec{ip: "10.0.0.9", ready: true, local: true}),
		},
	}
	ports := snap.HealthCheckNodePorts()
	if len(ports) != 1 || ports[lb.NamespacedName] != 30000 {
		t.Errorf("health check ports %v", ports)
	}
	counts := snap.LocalReadyEndpoints()
	if len(counts) != 1 || counts[lb.NamespacedName] != 2 {
		t.Errorf("local ready endpoints %v, want ns1/lb: 2", counts)
	}
}

func TestServicePortNameOrder(t *testing.T) {
	mk := func(ns, name, port string, proto string) ServicePortName {
		n := ServicePortName{Port: port, Protocol: "TCP"}
		if proto != "" {
			n.Protocol = "UDP"
		}
		n.Namespace, n.Name = ns, name
		return n
	}
	names := []ServicePortName{
		mk("a", "x", "", ""), mk("a-b", "x", "", ""), mk("a", "x", "p", ""), mk("a", "x-y", "", ""),
		mk("a", "x", "p", "udp"), mk("b", "a", "", ""), mk("a", "xa", "", ""), mk("ab", "", "", ""),
	}
	for _, a := range names {
		for _, b := range names {
			want := a.String() < b.String() || (a.String() == b.String() && a.Protocol < b.Protocol)
			if got := a.Less(b); got != want {
				t.Errorf("%s/%s < %s/%s: %t, want %t", a, a.Protocol, b, b.Protocol, got, want)
			}
		}
	}
}
