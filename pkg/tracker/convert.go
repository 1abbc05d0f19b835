package tracker

import (
	"fmt"
	"net/netip"
	"sort"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	netutils "k8s.io/utils/net"

	"github.com/kproxy-dev/kproxy/pkg/model"
)

// Reasons an object or part of one is skipped; they label kproxy_invalid_objects_total.
const (
	ReasonBadName        = "bad_name"
	ReasonBadPortName    = "bad_port_name"
	ReasonBadProtocol    = "bad_protocol"
	ReasonBadPort        = "bad_port"
	ReasonBadClusterIP   = "bad_cluster_ip"
	ReasonBadAddress     = "bad_address"
	ReasonWrongFamily    = "wrong_family"
	ReasonNoServiceLabel = "no_service_label"
	ReasonBadExternalIP  = "bad_external_ip"
	ReasonBadIngressIP   = "bad_ingress_ip"
	ReasonBadSourceRange = "bad_source_range"
)

// defaultStickyMaxAgeSeconds is the API's default ClientIP affinity timeout (3 hours).
const defaultStickyMaxAgeSeconds = 10800

// Kinds of objects counted when skipped.
const (
	KindService       = "Service"
	KindEndpointSlice = "EndpointSlice"
)

// Invalid reports a part of an object that was skipped, so the caller can log and count
// it. Skipping is always local: one bad port or address never hides the rest.
type Invalid func(kind string, obj types.NamespacedName, reason, detail string)

// parseAddr parses an IP the way the API server historically accepted them (leading
// zeros allowed and read as decimal), as upstream does, so old objects keep working.
func parseAddr(s string) (netip.Addr, bool) {
	ip := netutils.ParseIPSloppy(s)
	if ip == nil {
		return netip.Addr{}, false
	}
	a, ok := netip.AddrFromSlice(ip)
	return a.Unmap(), ok
}

func familyOf(a netip.Addr) v1.IPFamily {
	if a.Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

// validName reports whether a namespace and name are DNS labels/subdomains. Names reach
// rule comments and chain hashes, so anything else (spaces, quotes) is refused here
// rather than escaped later.
func validName(n types.NamespacedName) bool {
	return len(validation.IsDNS1123Label(n.Namespace)) == 0 && len(validation.IsDNS1123Subdomain(n.Name)) == 0
}

// validPortName accepts what the API server accepts for Service and EndpointSlice port
// names: "" (a lone unnamed port) or a DNS-1123 label. Upstream checks nothing; kproxy
// refuses the rest because names reach rule comments and chain hashes, where quotes or
// spaces would break the restore payload. (The 15-character IANA rule is for container
// port names, not these.)
func validPortName(name string) bool {
	return name == "" || len(validation.IsDNS1123Label(name)) == 0
}

func validProtocol(p v1.Protocol) bool {
	return p == v1.ProtocolTCP || p == v1.ProtocolUDP || p == v1.ProtocolSCTP
}

// clusterIPFor picks the service's cluster IP of one family; ok is false when the service
// has none (headless, ExternalName, or single-stack in the other family).
func clusterIPFor(svc *v1.Service, family v1.IPFamily) (ip netip.Addr, ok bool, malformed bool) {
	ips := svc.Spec.ClusterIPs
	if len(ips) == 0 && svc.Spec.ClusterIP != "" {
		ips = []string{svc.Spec.ClusterIP}
	}
	for _, s := range ips {
		if s == "" || s == v1.ClusterIPNone {
			return netip.Addr{}, false, false
		}
		a, good := parseAddr(s)
		if !good {
			malformed = true
			continue
		}
		if familyOf(a) == family {
			return a, true, false
		}
	}
	return netip.Addr{}, false, malformed
}

// convertService turns a Service into this family's service ports, skipping (and
// reporting) what is malformed. A nil result means the service has no rules here.
func convertService(svc *v1.Service, family v1.IPFamily, invalid Invalid) []*model.ServicePort {
	nn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	if svc.Spec.Type == v1.ServiceTypeExternalName {
		return nil
	}
	if !validName(nn) {
		invalid(KindService, nn, ReasonBadName, "namespace or name is not a DNS name")
		return nil
	}
	clusterIP, ok, malformed := clusterIPFor(svc, family)
	if malformed && !ok {
		invalid(KindService, nn, ReasonBadClusterIP, strings.Join(svc.Spec.ClusterIPs, ","))
	}
	if !ok {
		return nil
	}
	shared := serviceWide(svc, nn, family, invalid)
	ports := make([]*model.ServicePort, 0, len(svc.Spec.Ports))
	for _, p := range svc.Spec.Ports {
		switch {
		case !validPortName(p.Name):
			invalid(KindService, nn, ReasonBadPortName, p.Name)
			continue
		case !validProtocol(p.Protocol):
			invalid(KindService, nn, ReasonBadProtocol, string(p.Protocol))
			continue
		case p.Port < 1 || p.Port > 65535 || p.NodePort < 0 || p.NodePort > 65535:
			invalid(KindService, nn, ReasonBadPort, p.Name)
			continue
		}
		sp := shared
		sp.Name = model.ServicePortName{NamespacedName: nn, Port: p.Name, Protocol: p.Protocol}
		sp.ClusterIP = clusterIP
		sp.Port = p.Port
		sp.NodePort = p.NodePort
		ports = append(ports, &sp)
	}
	if len(ports) == 0 {
		return nil
	}
	return ports
}

// serviceWide converts the settings all ports of a service share. The address lists are
// shared (read-only) by the ports' values.
func serviceWide(svc *v1.Service, nn types.NamespacedName, family v1.IPFamily, invalid Invalid) model.ServicePort {
	var sp model.ServicePort
	for _, s := range svc.Spec.ExternalIPs {
		a, ok := parseAddr(s)
		if !ok {
			invalid(KindService, nn, ReasonBadExternalIP, s)
			continue
		}
		if familyOf(a) == family {
			sp.ExternalIPs = append(sp.ExternalIPs, a)
		}
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		// A Proxy-mode load balancer rewrites the destination itself; capturing its IP
		// here would bypass it (and the features it provides, e.g. PROXY protocol).
		if ing.IP == "" || (ing.IPMode != nil && *ing.IPMode != v1.LoadBalancerIPModeVIP) {
			continue
		}
		a, ok := parseAddr(ing.IP)
		if !ok {
			invalid(KindService, nn, ReasonBadIngressIP, ing.IP)
			continue
		}
		if familyOf(a) == family {
			sp.LoadBalancerVIPs = append(sp.LoadBalancerVIPs, a)
		}
	}
	for _, r := range svc.Spec.LoadBalancerSourceRanges {
		r = strings.TrimSpace(r)
		prefix, ones, ok := parseSourceRange(r)
		if !ok {
			invalid(KindService, nn, ReasonBadSourceRange, r)
			continue
		}
		if familyOf(prefix.Addr()) != family {
			continue
		}
		if ones == 0 {
			// Any /0 range lets everyone in: no filtering at all.
			sp.LoadBalancerSourceRanges = nil
			break
		}
		sp.LoadBalancerSourceRanges = append(sp.LoadBalancerSourceRanges, prefix)
	}
	if svc.Spec.SessionAffinity == v1.ServiceAffinityClientIP {
		sp.StickyMaxAgeSeconds = defaultStickyMaxAgeSeconds
		if c := svc.Spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			sp.StickyMaxAgeSeconds = *c.ClientIP.TimeoutSeconds
		}
	}
	externallyAccessible := svc.Spec.Type == v1.ServiceTypeLoadBalancer || svc.Spec.Type == v1.ServiceTypeNodePort ||
		len(svc.Spec.ExternalIPs) > 0
	sp.ExternalPolicyLocal = externallyAccessible && svc.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	sp.InternalPolicyLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == v1.ServiceInternalTrafficPolicyLocal
	if svc.Spec.Type == v1.ServiceTypeLoadBalancer && sp.ExternalPolicyLocal {
		// Upstream logs a missing (0) port as an error and serves none. Out of range, the
		// port would make the restore payload fail on every node; only this rule is lost.
		switch p := svc.Spec.HealthCheckNodePort; {
		case p == 0:
			invalid(KindService, nn, ReasonBadPort, "healthCheckNodePort missing")
		case p < 0 || p > 65535:
			invalid(KindService, nn, ReasonBadPort, fmt.Sprintf("healthCheckNodePort %d", p))
		default:
			sp.HealthCheckNodePort = p
		}
	}
	return sp
}

// parseSourceRange reads a loadBalancerSourceRanges entry as upstream does
// (netutils.ParseCIDRSloppy: leading zeros are decimal, host bits are masked) and returns
// the prefix upstream writes (net.IPNet.String()). ones is the parsed mask's length, which
// is what upstream's "/0 means everyone" check looks at.
//
// An IPv4-mapped IPv6 range such as ::ffff:10.0.0.0/104 parses to a 16-byte address with
// a 128-bit mask; upstream counts it as IPv4 and writes it as 10.0.0.0/8, so the address
// is unmapped and the 96 mapping bits taken off the length. ok is false when no valid
// prefix results: a zero netip.Prefix would reach the payload as "invalid Prefix".
func parseSourceRange(s string) (prefix netip.Prefix, ones int, ok bool) {
	_, ipnet, err := netutils.ParseCIDRSloppy(s)
	if err != nil {
		return netip.Prefix{}, 0, false
	}
	ones, _ = ipnet.Mask.Size()
	// A slice of the wrong length gives the zero Addr, and so an invalid prefix below.
	addr, _ := netip.AddrFromSlice(ipnet.IP)
	length := ones
	if addr.Is4In6() {
		addr, length = addr.Unmap(), ones-96
	}
	prefix = netip.PrefixFrom(addr, length)
	return prefix, ones, prefix.IsValid()
}

// sliceEndpoints is what one EndpointSlice contributes: endpoints per service port.
type sliceEndpoints map[model.ServicePortName][]model.Endpoint

// serviceOfSlice is the service an EndpointSlice belongs to, from its well-known label.
func serviceOfSlice(slice *discovery.EndpointSlice) (types.NamespacedName, bool) {
	name := slice.Labels[discovery.LabelServiceName]
	return types.NamespacedName{Namespace: slice.Namespace, Name: name}, name != ""
}

// convertSlice extracts this family's endpoints from a slice, skipping (and reporting)
// malformed ports and addresses.
func convertSlice(slice *discovery.EndpointSlice, svc types.NamespacedName, family v1.IPFamily, nodeName string, invalid Invalid) sliceEndpoints {
	out := sliceEndpoints{}
	report := func(reason, detail string) {
		invalid(KindEndpointSlice, types.NamespacedName{Namespace: slice.Namespace, Name: slice.Name}, reason, detail)
	}
	var eps []model.Endpoint
	for _, ep := range slice.Endpoints {
		if len(ep.Addresses) == 0 {
			continue
		}
		// Like upstream, only the first address counts: the API allows more but every
		// controller writes one.
		a, ok := parseAddr(ep.Addresses[0])
		if !ok {
			report(ReasonBadAddress, ep.Addresses[0])
			continue
		}
		if familyOf(a) != family {
			report(ReasonWrongFamily, ep.Addresses[0])
			continue
		}
		e := model.Endpoint{
			IP:          a,
			Ready:       ep.Conditions.Ready == nil || *ep.Conditions.Ready,
			Serving:     ep.Conditions.Serving == nil || *ep.Conditions.Serving,
			Terminating: ep.Conditions.Terminating != nil && *ep.Conditions.Terminating,
		}
		e.IsLocal = ep.NodeName != nil && *ep.NodeName == nodeName && nodeName != ""
		if ep.Hints != nil {
			for _, z := range ep.Hints.ForZones {
				e.ZoneHints = append(e.ZoneHints, z.Name)
			}
			for _, n := range ep.Hints.ForNodes {
				e.NodeHints = append(e.NodeHints, n.Name)
			}
			sort.Strings(e.ZoneHints)
			sort.Strings(e.NodeHints)
		}
		eps = append(eps, e)
	}
	for _, p := range slice.Ports {
		name := ""
		if p.Name != nil {
			name = *p.Name
		}
		proto := v1.ProtocolTCP
		if p.Protocol != nil {
			proto = *p.Protocol
		}
		switch {
		case !validPortName(name):
			report(ReasonBadPortName, name)
			continue
		case !validProtocol(proto):
			report(ReasonBadProtocol, string(proto))
			continue
		case p.Port == nil || *p.Port < 1 || *p.Port > 65535:
			report(ReasonBadPort, name)
			continue
		}
		spn := model.ServicePortName{NamespacedName: svc, Port: name, Protocol: proto}
		list := make([]model.Endpoint, len(eps))
		for i, e := range eps {
			e.Port = *p.Port
			list[i] = e
		}
		out[spn] = append(out[spn], list...)
	}
	return out
}

// mergeSlices combines all slices of a service. An endpoint listed twice (slices overlap
// briefly while the controller moves endpoints) is kept once, preferring the copy that is
// not terminating. Lists are sorted by "ip:port" as upstream sorts them.
func mergeSlices(slices map[string]sliceEndpoints) map[model.ServicePortName][]model.Endpoint {
	merged := map[model.ServicePortName][]model.Endpoint{}
	index := map[model.ServicePortName]map[string]int{}
	// Slices are visited in name order so that duplicates resolve the same way every time.
	names := make([]string, 0, len(slices))
	for n := range slices {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for spn, eps := range slices[n] {
			idx := index[spn]
			if idx == nil {
				idx = map[string]int{}
				index[spn] = idx
			}
			for _, e := range eps {
				key := e.String()
				if i, dup := idx[key]; dup {
					if merged[spn][i].Terminating && !e.Terminating {
						merged[spn][i] = e
					}
					continue
				}
				idx[key] = len(merged[spn])
				merged[spn] = append(merged[spn], e)
			}
		}
	}
	for _, eps := range merged {
		model.SortEndpoints(eps)
	}
	return merged
}
