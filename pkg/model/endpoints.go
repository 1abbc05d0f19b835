package model

// Endpoint selection, as upstream does it (behaviour spec §5.3): which endpoints serve
// traffic under the cluster policy, which under the local policy, and whether the
// service has any usable endpoint at all.

import "slices"

// Topology modes derived from EndpointSlice hints.
const (
	topologyNone = iota
	topologyPreferSameZone
	topologyPreferSameNode
)

// Categorized is the result of endpoint selection for one service port.
type Categorized struct {
	// Cluster are the endpoints for cluster-policy traffic (empty when the service never
	// uses the cluster policy).
	Cluster []Endpoint
	// Local are the endpoints for local-policy traffic (empty when unused).
	Local []Endpoint
	// AllReachable are the endpoints either policy may pick: each needs a DNAT chain.
	AllReachable []Endpoint
	// HasAny reports whether some endpoint anywhere is usable (ready, or serving while
	// terminating). Without one, traffic is rejected rather than dropped.
	HasAny bool
}

// CategorizeEndpoints selects the endpoints of a service port (eps sorted as in the
// snapshot). Ready endpoints are preferred; serving-but-terminating ones are used only
// when none is ready (separately for each policy), so that connections drain instead of
// failing during a rollout. Topology hints narrow cluster-policy endpoints only.
func CategorizeEndpoints(eps []Endpoint, svc *ServicePort, node Node) Categorized {
	var c Categorized
	useTopology := false
	if svc.UsesClusterEndpoints() {
		mode := topologyMode(eps, node)
		useTopology = mode != topologyNone
		c.Cluster = filter(eps, func(ep Endpoint) bool { return ep.Ready && availableForTopology(ep, mode, node) })
		if len(c.Cluster) == 0 {
			c.Cluster = filter(eps, servingTerminating)
		}
		c.HasAny = len(c.Cluster) > 0
	}
	if !svc.UsesLocalEndpoints() {
		c.AllReachable = c.Cluster
		return c
	}

	hasLocalReady, hasLocalServingTerminating := false, false
	for _, ep := range eps {
		switch {
		case ep.Ready:
			c.HasAny = true
			hasLocalReady = hasLocalReady || ep.IsLocal
		case servingTerminating(ep):
			c.HasAny = true
			hasLocalServingTerminating = hasLocalServingTerminating || ep.IsLocal
		}
	}
	usesTerminating := false
	switch {
	case hasLocalReady:
		c.Local = filter(eps, func(ep Endpoint) bool { return ep.IsLocal && ep.Ready })
	case hasLocalServingTerminating:
		usesTerminating = true
		c.Local = filter(eps, func(ep Endpoint) bool { return ep.IsLocal && servingTerminating(ep) })
	}

	if !svc.UsesClusterEndpoints() {
		c.AllReachable = c.Local
		return c
	}
	if !useTopology && !usesTerminating {
		// Local holds only ready endpoints and Cluster every ready one: Cluster is a
		// superset of Local.
		c.AllReachable = c.Cluster
		return c
	}
	seen := map[string]bool{}
	for _, list := range [][]Endpoint{c.Cluster, c.Local} {
		for _, ep := range list {
			if !seen[ep.String()] {
				seen[ep.String()] = true
				c.AllReachable = append(c.AllReachable, ep)
			}
		}
	}
	SortEndpoints(c.AllReachable)
	return c
}

func servingTerminating(ep Endpoint) bool { return ep.Serving && ep.Terminating }

func filter(eps []Endpoint, keep func(Endpoint) bool) []Endpoint {
	var out []Endpoint
	for _, ep := range eps {
		if keep(ep) {
			out = append(out, ep)
		}
	}
	return out
}

// topologyMode follows the hints only when every ready endpoint carries them and at least
// one is meant for this node (or its zone); otherwise a node could be left with no
// endpoint at all.
func topologyMode(eps []Endpoint, node Node) int {
	allNode, anyForNode := true, false
	allZone, anyForZone := true, false
	for _, ep := range eps {
		if !ep.Ready {
			continue
		}
		if len(ep.NodeHints) == 0 {
			allNode = false
		} else if slices.Contains(ep.NodeHints, node.Name) {
			anyForNode = true
		}
		if len(ep.ZoneHints) == 0 {
			allZone = false
		} else if node.Zone != "" && slices.Contains(ep.ZoneHints, node.Zone) {
			anyForZone = true
		}
	}
	switch {
	case allNode && anyForNode:
		return topologyPreferSameNode
	case allZone && anyForZone:
		return topologyPreferSameZone
	}
	return topologyNone
}

func availableForTopology(ep Endpoint, mode int, node Node) bool {
	switch mode {
	case topologyPreferSameNode:
		return slices.Contains(ep.NodeHints, node.Name)
	case topologyPreferSameZone:
		return slices.Contains(ep.ZoneHints, node.Zone)
	}
	return true
}
