// Package model holds the immutable values that flow from the change trackers to the
// renderer: service ports, endpoints and the per-family snapshot of both. Nothing here
// changes after it is built, so a snapshot can be rendered while the trackers move on.
package model

import (
	"net"
	"net/netip"
	"sort"
	"strconv"
	"strings"

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

// ServicePort is one port of a Service as seen by one IP family's proxier.
type ServicePort struct {
	Name      ServicePortName
	ClusterIP netip.Addr
	Port      int32
	// NodePort is 0 when the service has no node port.
	NodePort int32
}

// Endpoint is one backend of a service port, taken from an EndpointSlice.
type Endpoint struct {
	IP   netip.Addr
	Port int32
	// NodeName is the node the endpoint runs on, "" when the slice does not say.
	NodeName    string
	Ready       bool
	Serving     bool
	Terminating bool
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
	sort.Slice(names, func(i, j int) bool {
		if c := strings.Compare(names[i].String(), names[j].String()); c != 0 {
			return c < 0
		}
		return names[i].Protocol < names[j].Protocol
	})
	return names
}

// ReadyEndpoints picks the endpoints that should receive new connections: the ready ones,
// or, when none is ready, those still serving while terminating (so a rolling update or
// scale-down drains gracefully instead of rejecting).
func ReadyEndpoints(eps []Endpoint) []Endpoint {
	var ready, terminating []Endpoint
	for _, ep := range eps {
		switch {
		case ep.Ready:
			ready = append(ready, ep)
		case ep.Serving && ep.Terminating:
			terminating = append(terminating, ep)
		}
	}
	if len(ready) > 0 {
		return ready
	}
	return terminating
}
