// Package model holds the immutable values that flow from the change trackers to the
// renderer: service ports, endpoints and the per-family snapshot of both. Nothing here
// changes after it is built, so a snapshot can be rendered while the trackers move on.
package model

import (
	"net"
	"net/netip"
	"sort"
	"strconv"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

// ServicePortName identifies one port of one Service, as upstream's proxy does.
type ServicePortName struct {
	types.NamespacedName
	Port     string
	Protocol v1.Protocol
}

// String is "ns/name:port", or "ns/name" for an unnamed port. It is the text that appears
// in rule comments and that chain names are hashed from, so it must match upstream's.
func (n ServicePortName) String() string {
	if n.Port == "" {
		return n.NamespacedName.String()
	}
	return n.NamespacedName.String() + ":" + n.Port
}

// ServicePort is one port of a Service as seen by one IP family's proxier. Address
// lists hold this family's addresses only.
type ServicePort struct {
	Name      ServicePortName
	ClusterIP netip.Addr
	Port      int32
	// NodePort is 0 when the service has no node port.
	NodePort    int32
	ExternalIPs []netip.Addr
	// LoadBalancerVIPs are the ingress IPs of the load balancer that deliver packets with
	// the VIP as destination (ipMode VIP or unset); ipMode Proxy ingresses are not here.
	LoadBalancerVIPs []netip.Addr
	// LoadBalancerSourceRanges restricts who may use the load balancer IPs; empty means
	// anyone (a /0 range also empties it, as upstream).
	LoadBalancerSourceRanges []netip.Prefix
	// StickyMaxAgeSeconds is the ClientIP session affinity timeout; 0 means no affinity.
	StickyMaxAgeSeconds int32
	// ExternalPolicyLocal: externalTrafficPolicy Local on an externally accessible service.
	ExternalPolicyLocal bool
	// InternalPolicyLocal: internalTrafficPolicy Local.
	InternalPolicyLocal bool
	// HealthCheckNodePort is served for LoadBalancer services with external policy Local.
	HealthCheckNodePort int32
}

// ExternallyAccessible reports whether traffic may come from outside the cluster: through
// a node port, a load balancer or an external IP.
func (s *ServicePort) ExternallyAccessible() bool {
	return s.NodePort != 0 || len(s.LoadBalancerVIPs) > 0 || len(s.ExternalIPs) > 0
}

// UsesClusterEndpoints reports whether some traffic to the service may go to any
// endpoint in the cluster.
func (s *ServicePort) UsesClusterEndpoints() bool {
	return !s.InternalPolicyLocal || s.ExternallyAccessible()
}

// UsesLocalEndpoints reports whether some traffic to the service goes only to endpoints
// on this node.
func (s *ServicePort) UsesLocalEndpoints() bool {
	return s.InternalPolicyLocal || (s.ExternalPolicyLocal && s.ExternallyAccessible())
}

// Endpoint is one backend of a service port, taken from an EndpointSlice.
type Endpoint struct {
	IP   netip.Addr
	Port int32
	// IsLocal is true when the endpoint runs on this node.
	IsLocal     bool
	Ready       bool
	Serving     bool
	Terminating bool
	// ZoneHints and NodeHints are the EndpointSlice topology hints (sorted).
	ZoneHints, NodeHints []string
}

// String is "ip:port" ("[ip]:port" for IPv6): the text in comments, DNAT targets and
// endpoint chain hashes.
func (e Endpoint) String() string {
	return net.JoinHostPort(e.IP.String(), strconv.Itoa(int(e.Port)))
}

// SortEndpoints orders endpoints by their "ip:port" string, as upstream does, so that the
// statistic rules (and so the share each endpoint gets) are the same on every node.
func SortEndpoints(eps []Endpoint) {
	sort.Slice(eps, func(i, j int) bool { return eps[i].String() < eps[j].String() })
}

// Snapshot is everything one family's renderer needs about services, frozen at one sync.
// Its maps and slices must not be modified once built.
type Snapshot struct {
	Services  map[ServicePortName]*ServicePort
	Endpoints map[ServicePortName][]Endpoint
}

// SortedServiceNames returns the snapshot's service ports in a stable order (by name, then
// protocol), which is what makes rendered payloads byte-for-byte reproducible.
func (s *Snapshot) SortedServiceNames() []ServicePortName {
	names := make([]ServicePortName, 0, len(s.Services))
	for n := range s.Services {
		names = append(names, n)
	}
	sort.Slice(names, func(i, j int) bool { return names[i].Less(names[j]) })
	return names
}

// Less orders service ports by String(), then protocol: the order of their rules in the
// shared dispatch chains. It compares without building the strings, as syncs of large
// clusters call it hundreds of thousands of times.
func (n ServicePortName) Less(o ServicePortName) bool {
	if c := compareJoined(n.parts(), o.parts()); c != 0 {
		return c < 0
	}
	return n.Protocol < o.Protocol
}

// parts are the pieces String() joins.
func (n ServicePortName) parts() [4]string {
	if n.Port == "" {
		return [4]string{n.Namespace, "/", n.Name, ""}
	}
	return [4]string{n.Namespace, "/", n.Name, ":" + n.Port}
}

// compareJoined compares the concatenations of a and b.
func compareJoined(a, b [4]string) int {
	ai, ap, bi, bp := 0, 0, 0, 0
	for {
		for ai < len(a) && ap == len(a[ai]) {
			ai, ap = ai+1, 0
		}
		for bi < len(b) && bp == len(b[bi]) {
			bi, bp = bi+1, 0
		}
		switch {
		case ai == len(a) && bi == len(b):
			return 0
		case ai == len(a):
			return -1
		case bi == len(b):
			return 1
		}
		if ca, cb := a[ai][ap], b[bi][bp]; ca != cb {
			if ca < cb {
				return -1
			}
			return 1
		}
		ap, bp = ap+1, bp+1
	}
}

// Node is what rendering and endpoint selection need to know about this node.
type Node struct {
	Name string
	// Zone is the node's topology.kubernetes.io/zone label, "" when unset.
	Zone string
	// IP is this family's primary node IP; invalid when unknown.
	IP netip.Addr
}

// HealthCheckNodePorts lists the health check node ports to serve, by service.
func (s *Snapshot) HealthCheckNodePorts() map[types.NamespacedName]int32 {
	ports := map[types.NamespacedName]int32{}
	for _, sp := range s.Services {
		if sp.HealthCheckNodePort != 0 {
			ports[sp.Name.NamespacedName] = sp.HealthCheckNodePort
		}
	}
	return ports
}

// LocalReadyEndpoints counts, for services with a health check node port, the distinct
// IPs of ready endpoints on this node: what load balancers are told. Terminating
// endpoints do not count, so a draining node stops receiving new traffic.
func (s *Snapshot) LocalReadyEndpoints() map[types.NamespacedName]int {
	seen := map[types.NamespacedName]map[netip.Addr]bool{}
	for spn, sp := range s.Services {
		if sp.HealthCheckNodePort == 0 {
			continue
		}
		if seen[spn.NamespacedName] == nil {
			seen[spn.NamespacedName] = map[netip.Addr]bool{}
		}
		for _, ep := range s.Endpoints[spn] {
			if ep.IsLocal && ep.Ready {
				seen[spn.NamespacedName][ep.IP] = true
			}
		}
	}
	counts := make(map[types.NamespacedName]int, len(seen))
	for nn, ips := range seen {
		counts[nn] = len(ips)
	}
	return counts
}
