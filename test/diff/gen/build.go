package gen

import (
	"fmt"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// Builders: a new Service with its slices, and the parts of both.

// addService creates a Service with a fresh name and its slices.
func (g *generator) addService() *svcModel {
	k := g.freshServiceName()
	return g.addServiceNamed(k)
}

// addServiceNamed creates a Service named k and its slices.
func (g *generator) addServiceNamed(k svcKey) *svcModel {
	s := &svcModel{
		svc: &v1.Service{
			ObjectMeta: metav1.ObjectMeta{Namespace: k.ns, Name: k.name},
			Spec:       v1.ServiceSpec{Type: v1.ServiceTypeClusterIP},
		},
		epPorts: map[string]int32{},
		hints:   g.hintMode(),
	}
	spec := &s.svc.Spec
	switch x := g.r.Float64(); {
	case x < 0.07:
		spec.ClusterIP = v1.ClusterIPNone
	case x < 0.11:
		spec.Type = v1.ServiceTypeExternalName
	case x < 0.35:
		spec.Type = v1.ServiceTypeNodePort
	case x < 0.60:
		spec.Type = v1.ServiceTypeLoadBalancer
	}
	s.families, s.policy = g.ipFamilies()
	g.addPorts(s, 1+g.portCount())
	if g.chance(0.03) {
		s.svc.Labels = map[string]string{"service.kubernetes.io/service-proxy-name": "other-proxy"}
	}
	g.setTypeFields(s)
	g.setPolicies(s)
	s.normalize()
	g.svcs = append(g.svcs, s)
	g.svcNames[k] = true
	g.addSlicesFor(s)
	return s
}

// freshServiceName returns an unused namespace/name.
func (g *generator) freshServiceName() svcKey {
	for {
		k := svcKey{pick(g.r, g.o.Namespaces), g.serviceName()}
		if g.nameFree("service", k) {
			return k
		}
	}
}

// nameFree reports whether an object of kind may take the name k now: nothing live has it,
// and nothing of that name was deleted since the last flush (a delete and a create of one
// name in one step would reach the apiserver as an update, which may be refused).
func (g *generator) nameFree(kind string, k svcKey) bool {
	live := g.svcNames[k]
	if kind == "slice" {
		live = g.sliceNames[k]
	}
	_, emitted := g.emitted[objKey{kind, k}]
	return !live && !emitted
}

// portCount returns 0..7 (ports beyond the first), most Services having one or two ports.
func (g *generator) portCount() int {
	if g.chance(0.5) {
		return 0
	}
	if g.chance(0.15) {
		return 7
	}
	return g.r.IntN(8)
}

func (g *generator) hintMode() hintMode {
	switch x := g.r.Float64(); {
	case x < 0.60:
		return hintNone
	case x < 0.80:
		return hintZone
	case x < 0.90:
		return hintNode
	default:
		return hintPartial
	}
}

// ipFamilies picks ipFamilies and ipFamilyPolicy. A nil policy with two families is refused
// by the apiserver and never chosen.
func (g *generator) ipFamilies() ([]v1.IPFamily, *v1.IPFamilyPolicy) {
	v4, v6 := v1.IPv4Protocol, v1.IPv6Protocol
	single := ptr.To(v1.IPFamilyPolicySingleStack)
	if !g.o.DualStack {
		switch x := g.r.Float64(); {
		case x < 0.55:
			return nil, nil
		case x < 0.70:
			return nil, single
		case x < 0.85:
			return []v1.IPFamily{v4}, single
		default:
			return []v1.IPFamily{v4}, nil
		}
	}
	prefer := ptr.To(v1.IPFamilyPolicyPreferDualStack)
	require := ptr.To(v1.IPFamilyPolicyRequireDualStack)
	choices := []struct {
		fams   []v1.IPFamily
		policy *v1.IPFamilyPolicy
	}{
		{nil, nil}, {nil, nil}, {nil, nil},
		{[]v1.IPFamily{v4}, single}, {[]v1.IPFamily{v6}, single}, {[]v1.IPFamily{v6}, nil},
		{nil, prefer}, {[]v1.IPFamily{v4, v6}, prefer}, {[]v1.IPFamily{v6, v4}, prefer},
		{nil, require}, {[]v1.IPFamily{v4, v6}, require}, {[]v1.IPFamily{v6, v4}, require},
		{[]v1.IPFamily{v6}, prefer},
	}
	c := pick(g.r, choices)
	return c.fams, c.policy
}

// addPorts adds n ports to s, sometimes as a TCP and UDP pair on one number (DNS-style). A
// Service left with a single port may keep it unnamed.
func (g *generator) addPorts(s *svcModel, n int) {
	spec := &s.svc.Spec
	if len(spec.Ports) == 1 && spec.Ports[0].Name == "" && n > 0 {
		g.renamePortAt(s, 0, g.portName(g.usedPortNames(s)))
	}
	for added := 0; added < n; added++ {
		proto, num := g.protocol(), g.portNumber()
		if added+1 < n && g.chance(0.15) {
			g.addPort(s, v1.ProtocolTCP, num)
			g.addPort(s, v1.ProtocolUDP, num)
			added++
			continue
		}
		g.addPort(s, proto, num)
	}
	if n == 1 && len(spec.Ports) == 1 && g.chance(0.35) {
		g.renamePortAt(s, 0, "")
	}
}

// addPort adds one port (protocol, number), moving to another number if that pair is taken.
func (g *generator) addPort(s *svcModel, proto v1.Protocol, num int32) {
	for g.hasPort(s, proto, num) {
		num = 1 + g.r.Int32N(65535)
	}
	name := g.portName(g.usedPortNames(s))
	tp, ep := g.targetPort(num)
	p := v1.ServicePort{Name: name, Protocol: proto, Port: num, TargetPort: tp}
	if t := s.svc.Spec.Type; (t == v1.ServiceTypeNodePort || t == v1.ServiceTypeLoadBalancer) && g.chance(0.1) {
		p.NodePort = g.staticNodePort()
	}
	s.svc.Spec.Ports = append(s.svc.Spec.Ports, p)
	s.epPorts[name] = ep
}

func (g *generator) hasPort(s *svcModel, proto v1.Protocol, num int32) bool {
	for _, p := range s.svc.Spec.Ports {
		if p.Protocol == proto && p.Port == num {
			return true
		}
	}
	return false
}

func (g *generator) usedPortNames(s *svcModel) map[string]bool {
	used := map[string]bool{"": true}
	for _, p := range s.svc.Spec.Ports {
		used[p.Name] = true
	}
	return used
}

// renamePortAt renames port i of s, and the matching port of its slices (the
// EndpointSlice controller would follow a rename).
func (g *generator) renamePortAt(s *svcModel, i int, name string) {
	old := s.svc.Spec.Ports[i].Name
	s.svc.Spec.Ports[i].Name = name
	s.epPorts[name] = s.epPorts[old]
	delete(s.epPorts, old)
	for _, sl := range g.slicesOf(s) {
		if !slices.ContainsFunc(sl.ports, hasPortName(old)) {
			continue
		}
		sl.ports = slices.DeleteFunc(sl.ports, hasPortName(name)) // a stray port of that name
		for j := range sl.ports {
			if ptr.Deref(sl.ports[j].Name, "") == old {
				sl.ports[j].Name = ptr.To(name)
			}
		}
	}
}

// hasPortName returns a test for slice ports named name (a nil name is "").
func hasPortName(name string) func(discovery.EndpointPort) bool {
	return func(p discovery.EndpointPort) bool { return ptr.Deref(p.Name, "") == name }
}

// setSlicePort puts p in sl's ports, replacing any port of the same name.
func setSlicePort(sl *sliceModel, p discovery.EndpointPort) {
	sl.ports = append(slices.DeleteFunc(sl.ports, hasPortName(ptr.Deref(p.Name, ""))), p)
}

// setTypeFields sets what only some types have: the ExternalName, allocateLoadBalancer-
// NodePorts, source ranges and the load-balancer status.
func (g *generator) setTypeFields(s *svcModel) {
	spec := &s.svc.Spec
	if spec.Type == v1.ServiceTypeExternalName && spec.ExternalName == "" {
		spec.ExternalName = g.label(1+g.r.IntN(20)) + ".example.com"
		if g.chance(0.3) {
			spec.ExternalName += "." // fully qualified
		}
	}
	if spec.Type != v1.ServiceTypeLoadBalancer {
		return
	}
	switch x := g.r.Float64(); {
	case x < 0.2:
		spec.AllocateLoadBalancerNodePorts = ptr.To(false)
	case x < 0.4:
		spec.AllocateLoadBalancerNodePorts = ptr.To(true)
	}
	spec.LoadBalancerSourceRanges = g.sourceRanges()
	s.svc.Status.LoadBalancer.Ingress = g.lbIngress(s)
}

func (g *generator) sourceRanges() []string {
	if g.chance(0.6) {
		return nil
	}
	var out []string
	for range 1 + g.r.IntN(4) {
		out = append(out, g.sourceRange(g.chance(0.4)))
	}
	if g.chance(0.1) {
		out = append(out, out[0]) // the same range twice
	}
	return out
}

// lbIngress returns 0..3 ingress entries: IPs of either family with ipMode VIP, Proxy or
// unset (defaulted to VIP), hostname-only entries, and IP plus hostname. Sometimes an IP is
// also one of the Service's externalIPs.
func (g *generator) lbIngress(s *svcModel) []v1.LoadBalancerIngress {
	var out []v1.LoadBalancerIngress
	for range g.r.IntN(4) {
		var ing v1.LoadBalancerIngress
		switch x := g.r.Float64(); {
		case x < 0.15:
			ing.Hostname = "lb-" + g.label(1+g.r.IntN(10)) + ".example.com"
		case x < 0.20 && len(s.svc.Spec.ExternalIPs) > 0:
			ing.IP = pick(g.r, s.svc.Spec.ExternalIPs)
		default:
			ing.IP = g.externalIP(g.chance(0.35))
			if g.chance(0.1) {
				ing.Hostname = "lb-" + g.label(5) + ".example.com"
			}
		}
		if ing.IP != "" {
			switch x := g.r.Float64(); {
			case x < 0.35:
				ing.IPMode = ptr.To(v1.LoadBalancerIPModeVIP)
			case x < 0.55:
				ing.IPMode = ptr.To(v1.LoadBalancerIPModeProxy)
			}
		}
		out = append(out, ing)
	}
	return out
}

// setPolicies sets externalIPs, the traffic policies, session affinity and traffic
// distribution; normalize then clears what the type does not allow.
func (g *generator) setPolicies(s *svcModel) {
	spec := &s.svc.Spec
	spec.ExternalIPs = nil
	if g.chance(0.3) {
		for range 1 + g.r.IntN(3) {
			spec.ExternalIPs = append(spec.ExternalIPs, g.externalIP(g.chance(0.35)))
		}
	}
	spec.ExternalTrafficPolicy = g.externalPolicy()
	spec.InternalTrafficPolicy = g.internalPolicy()
	g.setAffinity(s)
	spec.TrafficDistribution = g.trafficDistribution()
	if spec.Type == v1.ServiceTypeLoadBalancer && g.chance(0.15) {
		spec.HealthCheckNodePort = g.staticNodePort()
	}
}

func (g *generator) externalPolicy() v1.ServiceExternalTrafficPolicy {
	switch x := g.r.Float64(); {
	case x < 0.3:
		return "" // defaulted to Cluster when externally accessible
	case x < 0.6:
		return v1.ServiceExternalTrafficPolicyCluster
	default:
		return v1.ServiceExternalTrafficPolicyLocal
	}
}

func (g *generator) internalPolicy() *v1.ServiceInternalTrafficPolicy {
	switch x := g.r.Float64(); {
	case x < 0.4:
		return nil
	case x < 0.7:
		return ptr.To(v1.ServiceInternalTrafficPolicyCluster)
	default:
		return ptr.To(v1.ServiceInternalTrafficPolicyLocal)
	}
}

// setAffinity sets None or ClientIP, the latter with no timeout (defaulted to 10800), the
// extremes 1 and 86400, or anything between.
func (g *generator) setAffinity(s *svcModel) {
	spec := &s.svc.Spec
	spec.SessionAffinity, spec.SessionAffinityConfig = v1.ServiceAffinityNone, nil
	if !g.chance(0.3) {
		return
	}
	spec.SessionAffinity = v1.ServiceAffinityClientIP
	var t *int32
	switch x := g.r.Float64(); {
	case x < 0.25:
	case x < 0.40:
		t = ptr.To[int32](1)
	case x < 0.55:
		t = ptr.To[int32](86400)
	default:
		t = ptr.To(1 + g.r.Int32N(86400))
	}
	if t != nil || g.chance(0.5) {
		spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: t}}
	}
}

func (g *generator) trafficDistribution() *string {
	switch x := g.r.Float64(); {
	case x < 0.70:
		return nil
	case x < 0.82:
		return ptr.To(v1.ServiceTrafficDistributionPreferClose)
	case x < 0.91:
		return ptr.To(v1.ServiceTrafficDistributionPreferSameZone)
	default:
		return ptr.To(v1.ServiceTrafficDistributionPreferSameNode)
	}
}

// addSlicesFor creates the slices of a new Service: one to three per family it has,
// sometimes none, sometimes one of the wrong family or an FQDN one (kube-proxy ignores both).
func (g *generator) addSlicesFor(s *svcModel) {
	if g.chance(0.03) {
		return
	}
	for _, fam := range s.sliceFamilies(g.o.DualStack) {
		n := 1
		if x := g.r.Float64(); x < 0.08 {
			n = 3
		} else if x < 0.30 {
			n = 2
		}
		for range n {
			g.addSlice(s, addressType(fam))
		}
	}
	if g.chance(0.04) {
		g.addSlice(s, addressType(otherFamily(s.sliceFamilies(g.o.DualStack)[0])))
	}
	if g.chance(0.03) {
		g.addSlice(s, discovery.AddressTypeFQDN)
	}
}

// addSlice adds a slice of address type at to s, with 0..12 endpoints (now and then 100),
// sharing some endpoints with a sibling slice (overlap) now and then.
func (g *generator) addSlice(s *svcModel, at discovery.AddressType) *sliceModel {
	sl := &sliceModel{
		ns:            s.svc.Namespace,
		name:          g.sliceName(s.svc.Namespace, s.svc.Name),
		service:       s.svc.Name,
		addrType:      at,
		ports:         g.slicePorts(s),
		headlessLabel: g.chance(0.02),
	}
	n := g.r.IntN(13)
	if x := g.r.Float64(); x < 0.015 {
		n = 100
	} else if x < 0.06 {
		n = 0
	}
	if g.chance(0.25) {
		for _, sib := range g.slicesOf(s) {
			if sib.addrType == at && len(sib.addrs) > 0 {
				sl.addrs = append(sl.addrs, sib.addrs[:1+g.r.IntN(len(sib.addrs))]...)
				break
			}
		}
	}
	g.slices = append(g.slices, sl)
	g.sliceNames[sl.key()] = true
	g.addEndpoints(s.hints, sl, n)
	return sl
}

// sliceName returns a slice name unused in ns: the Service's name (cut to 57 characters)
// and a random suffix as the EndpointSlice controller would make, or, now and then, a long
// dotted DNS subdomain up to 253 characters.
func (g *generator) sliceName(ns, svc string) string {
	for {
		var name string
		if g.chance(0.05) {
			var parts []string
			for range 1 + g.r.IntN(4) {
				parts = append(parts, g.label(1+g.r.IntN(63)))
			}
			name = strings.Join(parts, ".")
		} else {
			name = strings.TrimRight(svc[:min(len(svc), 57)], "-") + "-" + g.label(5)
		}
		if g.nameFree("slice", svcKey{ns, name}) {
			return name
		}
	}
}

// slicePorts returns the slice ports for s: one per Service port with its name, protocol and
// number, with the variations kube-proxy must cope with: a nil name (the apiserver defaults
// it to "") or protocol (defaulted to TCP) where that means the same, a nil port number, a
// port that matches no Service port, a Service port left out, or no ports at all.
func (g *generator) slicePorts(s *svcModel) []discovery.EndpointPort {
	if g.chance(0.02) {
		return nil
	}
	var out []discovery.EndpointPort
	for _, p := range s.svc.Spec.Ports {
		if len(s.svc.Spec.Ports) > 1 && g.chance(0.04) {
			continue
		}
		ep := g.slicePortFor(s, p)
		if p.Name == "" && g.chance(0.5) {
			ep.Name = nil
		}
		if p.Protocol == v1.ProtocolTCP && g.chance(0.2) {
			ep.Protocol = nil
		}
		if g.chance(0.02) {
			ep.Port = nil
		}
		out = append(out, ep)
	}
	if g.chance(0.05) {
		used := map[string]bool{}
		for _, p := range out {
			used[ptr.Deref(p.Name, "")] = true
		}
		out = append(out, discovery.EndpointPort{
			Name:     ptr.To(g.portName(used)),
			Protocol: ptr.To(g.protocol()),
			Port:     ptr.To(g.portNumber()),
		})
	}
	return out
}

// addEndpoints appends n endpoints to sl: new addresses mostly, sometimes an address some
// other slice already has (a pod behind two Services), sometimes a repeat within sl.
func (g *generator) addEndpoints(mode hintMode, sl *sliceModel, n int) {
	for range n {
		switch {
		case len(sl.addrs) > 0 && g.chance(0.02):
			sl.addrs = append(sl.addrs, pick(g.r, sl.addrs))
		case sl.addrType != discovery.AddressTypeFQDN && g.chance(0.06) && len(g.pool(sl.addrType)) > 0:
			sl.addrs = append(sl.addrs, pick(g.r, g.pool(sl.addrType)))
		default:
			sl.addrs = append(sl.addrs, g.newEndpoint(mode, sl.addrType))
		}
	}
}

func (g *generator) pool(at discovery.AddressType) []string {
	if at == discovery.AddressTypeIPv6 {
		return g.v6
	}
	return g.v4
}

// newEndpoint creates an address of type at with its attributes (hints as mode says) and
// returns it.
func (g *generator) newEndpoint(mode hintMode, at discovery.AddressType) string {
	var addr string
	switch at {
	case discovery.AddressTypeFQDN:
		for addr == "" || g.eps[addr] != nil {
			addr = fmt.Sprintf("pod-%s.%s.example.com", g.label(6), g.label(4))
		}
	case discovery.AddressTypeIPv6:
		addr = g.newEndpointIP(true)
		g.v6 = append(g.v6, addr)
	default:
		addr = g.newEndpointIP(false)
		g.v4 = append(g.v4, addr)
	}
	e := &epModel{addresses: []string{addr}, conditions: g.conditions()}
	if at != discovery.AddressTypeFQDN && g.chance(0.05) {
		e.addresses = append(e.addresses, g.newEndpointIP(at == discovery.AddressTypeIPv6))
	}
	g.placeEndpoint(e)
	e.hints = g.hints(mode, e)
	g.eps[addr] = e
	return addr
}

// placeEndpoint picks the endpoint's node (this node about a third of the time, none now
// and then) and zone.
func (g *generator) placeEndpoint(e *epModel) {
	switch x := g.r.Float64(); {
	case x < 0.08:
		e.nodeName = nil
	case x < 0.40:
		e.nodeName = ptr.To(g.o.ThisNode)
	default:
		e.nodeName = ptr.To(pick(g.r, g.o.NodeNames))
	}
	e.zone = nil
	if g.chance(0.85) {
		e.zone = ptr.To(pick(g.r, g.o.Zones))
	}
}

// conditions returns endpoint conditions: mostly ready (explicitly or by leaving all nil),
// the real-world not-ready and terminating shapes, and every field nil/true/false at random.
func (g *generator) conditions() discovery.EndpointConditions {
	t, f := ptr.To(true), ptr.To(false)
	switch x := g.r.Float64(); {
	case x < 0.30:
		return discovery.EndpointConditions{}
	case x < 0.60:
		return discovery.EndpointConditions{Ready: t, Serving: t, Terminating: f}
	case x < 0.70:
		return discovery.EndpointConditions{Ready: f, Serving: f, Terminating: f}
	case x < 0.80:
		return discovery.EndpointConditions{Ready: f, Serving: t, Terminating: t}
	case x < 0.85:
		return discovery.EndpointConditions{Ready: f, Serving: f, Terminating: t}
	default:
		tri := func() *bool { return pick(g.r, []*bool{nil, ptr.To(true), ptr.To(false)}) }
		return discovery.EndpointConditions{Ready: tri(), Serving: tri(), Terminating: tri()}
	}
}

// hints returns the endpoint's hints under mode: for zones (its own zone, sometimes another
// or one no node is in) and, for PreferSameNode, for nodes too.
func (g *generator) hints(mode hintMode, e *epModel) *discovery.EndpointHints {
	if mode == hintNone || (mode == hintPartial && g.chance(0.5)) {
		return nil
	}
	h := &discovery.EndpointHints{}
	zone := pick(g.r, g.o.Zones)
	if e.zone != nil && g.chance(0.8) {
		zone = *e.zone
	}
	h.ForZones = []discovery.ForZone{{Name: zone}}
	if g.chance(0.15) {
		h.ForZones = append(h.ForZones, discovery.ForZone{Name: "zone-elsewhere"})
	}
	if mode == hintNode || (mode == hintPartial && g.chance(0.5)) {
		node := pick(g.r, g.o.NodeNames)
		if e.nodeName != nil && g.chance(0.8) {
			node = *e.nodeName
		}
		h.ForNodes = []discovery.ForNode{{Name: node}}
	}
	return h
}
