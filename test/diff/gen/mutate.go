package gen

import (
	"fmt"
	"slices"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"
)

// Step names start with one of these verbs (a combined step joins names with "; ").
const (
	verbAdd          = "add"
	verbDelete       = "delete service"
	verbRecreate     = "recreate service"
	verbType         = "change type"
	verbToggle       = "toggle"
	verbAddPort      = "add port"
	verbRemovePort   = "remove port"
	verbRenamePort   = "rename port"
	verbRenumber     = "renumber port"
	verbScaleUp      = "scale up"
	verbScaleDown    = "scale down"
	verbScaleZero    = "scale to 0"
	verbFlip         = "flip conditions"
	verbMove         = "move endpoints"
	verbAddSlice     = "add slice"
	verbRemoveSlice  = "remove slice"
	verbRelabel      = "relabel slice"
	verbIngress      = "change lb ingress"
	verbHints        = "change hints"
	verbHeadlessMark = "set headless label"
)

// mutation is one kind of step; fn returns the step's name, or false if it does not apply
// to the current state.
type mutation struct {
	weight int
	fn     func() (string, bool)
}

// mutate applies one mutation picked by weight.
func (g *generator) mutate() (string, bool) {
	ms := []mutation{
		{10, g.mAddServices}, {5, g.mDeleteService}, {3, g.mRecreateService},
		{8, g.mChangeType}, {12, g.mToggle},
		{5, g.mAddPort}, {4, g.mRemovePort}, {4, g.mRenamePort}, {3, g.mRenumberPort},
		{7, g.mScaleUp}, {6, g.mScaleDown}, {4, g.mScaleToZero},
		{8, g.mFlipConditions}, {6, g.mMoveEndpoints},
		{5, g.mAddSlice}, {4, g.mRemoveSlice}, {4, g.mRelabelSlice},
		{6, g.mChangeIngress}, {4, g.mChangeHints}, {2, g.mToggleHeadlessLabel},
	}
	total := 0
	for _, m := range ms {
		total += m.weight
	}
	x := g.r.IntN(total)
	for _, m := range ms {
		if x < m.weight {
			return m.fn()
		}
		x -= m.weight
	}
	panic("unreachable")
}

// pickService returns a random live Service that ok accepts, or nil.
func (g *generator) pickService(ok func(*svcModel) bool) *svcModel {
	var c []*svcModel
	for _, s := range g.svcs {
		if ok == nil || ok(s) {
			c = append(c, s)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return pick(g.r, c)
}

// pickSlice returns a random live slice that ok accepts, or nil.
func (g *generator) pickSlice(ok func(*sliceModel) bool) *sliceModel {
	var c []*sliceModel
	for _, s := range g.slices {
		if ok == nil || ok(s) {
			c = append(c, s)
		}
	}
	if len(c) == 0 {
		return nil
	}
	return pick(g.r, c)
}

func hasEndpoints(s *sliceModel) bool { return len(s.addrs) > 0 }

func (g *generator) mAddServices() (string, bool) {
	room := g.o.MaxServices - len(g.svcs)
	if room <= 0 {
		return "", false
	}
	n := 1 + g.r.IntN(min(room, 3))
	for range n {
		g.addService()
	}
	return verbAdd + " " + plural(n, "service"), true
}

// mDeleteService deletes a Service and, most of the time, its slices; the slices left
// behind name a Service that no longer exists until one of that name comes back.
func (g *generator) mDeleteService() (string, bool) {
	s := g.pickService(nil)
	if s == nil {
		return "", false
	}
	k := s.key()
	g.svcs = slices.DeleteFunc(g.svcs, func(x *svcModel) bool { return x == s })
	delete(g.svcNames, k)
	g.deleted = append(g.deleted, k)
	if g.chance(0.12) {
		return fmt.Sprintf("%s %s, keep its slices", verbDelete, k), true
	}
	for _, sl := range g.slicesOf(s) {
		g.removeSlice(sl)
	}
	return fmt.Sprintf("%s %s", verbDelete, k), true
}

func (g *generator) removeSlice(sl *sliceModel) {
	g.slices = slices.DeleteFunc(g.slices, func(x *sliceModel) bool { return x == sl })
	delete(g.sliceNames, sl.key())
}

// mRecreateService brings back a deleted Service's name with a new spec: kube-proxy must
// not keep anything of the old one (and adopts slices left behind).
func (g *generator) mRecreateService() (string, bool) {
	var c []svcKey
	for _, k := range g.deleted {
		if g.nameFree("service", k) {
			c = append(c, k)
		}
	}
	if len(c) == 0 || len(g.svcs) >= g.o.MaxServices {
		return "", false
	}
	k := pick(g.r, c)
	g.addServiceNamed(k)
	g.deleted = slices.DeleteFunc(g.deleted, func(x svcKey) bool { return x == k })
	return fmt.Sprintf("%s %s", verbRecreate, k), true
}

// mChangeType moves a Service between ClusterIP, NodePort and LoadBalancer, and now and
// then to or from ExternalName. Headless Services stay ClusterIP (their clusterIP "None"
// cannot change).
func (g *generator) mChangeType() (string, bool) {
	s := g.pickService(func(s *svcModel) bool { return !s.headless() })
	if s == nil {
		return "", false
	}
	spec := &s.svc.Spec
	from, wasExternal := spec.Type, externallyAccessible(s.svc)
	types := []v1.ServiceType{v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort, v1.ServiceTypeLoadBalancer}
	if from != v1.ServiceTypeExternalName && g.chance(0.1) {
		types = []v1.ServiceType{v1.ServiceTypeExternalName}
	}
	types = slices.DeleteFunc(types, func(t v1.ServiceType) bool { return t == from })
	spec.Type = pick(g.r, types)
	g.setTypeFields(s)
	if externallyAccessible(s.svc) && (!wasExternal || g.chance(0.3)) {
		spec.ExternalTrafficPolicy = g.externalPolicy()
	}
	g.maybeStaticHealthCheckPort(s)
	s.normalize()
	return fmt.Sprintf("%s %s %s->%s", verbType, s.key(), from, spec.Type), true
}

// maybeStaticHealthCheckPort sometimes gives a Service that is about to need a
// healthCheckNodePort an explicit one. Changing it later is refused, so only a Service that
// has none yet gets one.
func (g *generator) maybeStaticHealthCheckPort(s *svcModel) {
	spec := &s.svc.Spec
	if spec.Type == v1.ServiceTypeLoadBalancer && spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal &&
		spec.HealthCheckNodePort == 0 && g.chance(0.15) {
		if p := g.staticNodePort(); p != 0 && !g.hadHealthCheck(s) {
			spec.HealthCheckNodePort = p
		}
	}
}

// hadHealthCheck reports whether the Service as last emitted needed a healthCheckNodePort
// (the apiserver then holds one, which an update must not change).
func (g *generator) hadHealthCheck(s *svcModel) bool {
	old, ok := g.emitted[objKey{"service", s.key()}].(*v1.Service)
	return ok && old.Spec.Type == v1.ServiceTypeLoadBalancer &&
		old.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
}

// mToggle changes one policy field of a Service.
func (g *generator) mToggle() (string, bool) {
	s := g.pickService(nil)
	if s == nil {
		return "", false
	}
	spec := &s.svc.Spec
	var what string
	switch x := g.r.IntN(8); x {
	case 0:
		if !externallyAccessible(s.svc) {
			return "", false
		}
		spec.ExternalTrafficPolicy = g.externalPolicy()
		g.maybeStaticHealthCheckPort(s)
		what = fmt.Sprintf("externalTrafficPolicy=%q", spec.ExternalTrafficPolicy)
	case 1:
		spec.InternalTrafficPolicy = g.internalPolicy()
		what = fmt.Sprintf("internalTrafficPolicy=%v", ptr.Deref(spec.InternalTrafficPolicy, "nil"))
	case 2:
		g.setAffinity(s)
		what = fmt.Sprintf("sessionAffinity=%s", spec.SessionAffinity)
	case 3:
		spec.TrafficDistribution = g.trafficDistribution()
		what = fmt.Sprintf("trafficDistribution=%v", ptr.Deref(spec.TrafficDistribution, "nil"))
	case 4:
		if spec.Type != v1.ServiceTypeLoadBalancer {
			return "", false
		}
		spec.AllocateLoadBalancerNodePorts = pick(g.r, []*bool{nil, ptr.To(true), ptr.To(false)})
		what = "allocateLoadBalancerNodePorts"
	case 5:
		if spec.Type != v1.ServiceTypeLoadBalancer {
			return "", false
		}
		spec.LoadBalancerSourceRanges = g.sourceRanges()
		what = fmt.Sprintf("loadBalancerSourceRanges=%v", spec.LoadBalancerSourceRanges)
	case 6:
		g.toggleExternalIPs(s)
		what = fmt.Sprintf("externalIPs=%v", spec.ExternalIPs)
	default:
		if s.svc.Labels == nil {
			s.svc.Labels = map[string]string{"service.kubernetes.io/service-proxy-name": "other-proxy"}
		} else {
			s.svc.Labels = nil
		}
		what = "service-proxy-name label"
	}
	s.normalize()
	return fmt.Sprintf("%s %s %s", verbToggle, s.key(), what), true
}

// toggleExternalIPs adds, removes or replaces externalIPs. A ClusterIP Service that gains
// its first one becomes externally accessible and needs a traffic policy.
func (g *generator) toggleExternalIPs(s *svcModel) {
	spec := &s.svc.Spec
	switch {
	case len(spec.ExternalIPs) > 0 && g.chance(0.4):
		spec.ExternalIPs = slices.Delete(slices.Clone(spec.ExternalIPs), 0, 1)
	case g.chance(0.3):
		spec.ExternalIPs = nil
	default:
		spec.ExternalIPs = append(slices.Clone(spec.ExternalIPs), g.externalIP(g.chance(0.35)))
	}
	if len(spec.ExternalIPs) == 0 {
		spec.ExternalIPs = nil
	}
	if externallyAccessible(s.svc) && spec.ExternalTrafficPolicy == "" {
		spec.ExternalTrafficPolicy = g.externalPolicy()
	}
}

// mAddPort adds one port (or a TCP/UDP pair) to a Service; most of its slices follow.
func (g *generator) mAddPort() (string, bool) {
	s := g.pickService(func(s *svcModel) bool { return len(s.svc.Spec.Ports) < 8 })
	if s == nil {
		return "", false
	}
	before := len(s.svc.Spec.Ports)
	n := 1
	if before < 7 && g.chance(0.3) {
		n = 2 // two ports, or a TCP and UDP pair on one number
	}
	g.addPorts(s, n)
	if len(s.svc.Spec.Ports) > 8 {
		s.svc.Spec.Ports = s.svc.Spec.Ports[:8]
	}
	added := s.svc.Spec.Ports[before:]
	for _, sl := range g.slicesOf(s) {
		if sl.ports == nil && g.chance(0.5) {
			continue // a slice without ports stays so
		}
		for _, p := range added {
			if g.chance(0.9) {
				setSlicePort(sl, g.slicePortFor(s, p))
			}
		}
	}
	s.normalize()
	return fmt.Sprintf("%s %s %q", verbAddPort, s.key(), added[len(added)-1].Name), true
}

// slicePortFor returns the slice port matching Service port p. An empty protocol (a
// published manifest that leaves it to the default) is TCP.
func (g *generator) slicePortFor(s *svcModel, p v1.ServicePort) discovery.EndpointPort {
	proto := p.Protocol
	if proto == "" {
		proto = v1.ProtocolTCP
	}
	return discovery.EndpointPort{Name: ptr.To(p.Name), Protocol: ptr.To(proto), Port: ptr.To(s.epPorts[p.Name])}
}

// mRemovePort removes a port of a Service with two or more; most slices follow, and a
// Service left with one port may unname it.
func (g *generator) mRemovePort() (string, bool) {
	s := g.pickService(func(s *svcModel) bool { return len(s.svc.Spec.Ports) >= 2 })
	if s == nil {
		return "", false
	}
	i := g.r.IntN(len(s.svc.Spec.Ports))
	name := s.svc.Spec.Ports[i].Name
	s.svc.Spec.Ports = slices.Delete(s.svc.Spec.Ports, i, i+1)
	delete(s.epPorts, name)
	for _, sl := range g.slicesOf(s) {
		if g.chance(0.9) {
			sl.ports = slices.DeleteFunc(sl.ports, hasPortName(name))
		}
	}
	if len(s.svc.Spec.Ports) == 1 && g.chance(0.25) {
		g.renamePortAt(s, 0, "")
	}
	s.normalize()
	return fmt.Sprintf("%s %s %q", verbRemovePort, s.key(), name), true
}

// mRenamePort renames a port; the slices follow, except now and then one that lags behind.
func (g *generator) mRenamePort() (string, bool) {
	s := g.pickService(func(s *svcModel) bool { return len(s.svc.Spec.Ports) > 0 })
	if s == nil {
		return "", false
	}
	i := g.r.IntN(len(s.svc.Spec.Ports))
	old := s.svc.Spec.Ports[i].Name
	name := g.portName(g.usedPortNames(s))
	if len(s.svc.Spec.Ports) == 1 && old != "" && g.chance(0.2) {
		name = ""
	}
	g.renamePortAt(s, i, name)
	if sl := g.pickSlice(func(sl *sliceModel) bool { return g.serviceFor(sl) == s }); sl != nil && g.chance(0.1) {
		sl.ports = slices.DeleteFunc(sl.ports, hasPortName(old))
		for j := range sl.ports {
			if ptr.Deref(sl.ports[j].Name, "") == name {
				sl.ports[j].Name = ptr.To(old) // this slice lags behind the rename
			}
		}
	}
	s.normalize()
	return fmt.Sprintf("%s %s %q->%q", verbRenamePort, s.key(), old, name), true
}

// mRenumberPort changes a port's number, protocol or target; the slices follow the
// protocol and target (the number they carry), except now and then one.
func (g *generator) mRenumberPort() (string, bool) {
	s := g.pickService(func(s *svcModel) bool { return len(s.svc.Spec.Ports) > 0 })
	if s == nil {
		return "", false
	}
	i := g.r.IntN(len(s.svc.Spec.Ports))
	p := &s.svc.Spec.Ports[i]
	var what string
	switch g.r.IntN(3) {
	case 0:
		num := g.portNumber()
		if g.hasPort(s, p.Protocol, num) {
			return "", false
		}
		p.Port, what = num, fmt.Sprintf("port=%d", num)
	case 1:
		proto := g.protocol()
		if proto == p.Protocol || g.hasPort(s, proto, p.Port) {
			return "", false
		}
		p.Protocol, what = proto, fmt.Sprintf("protocol=%s", proto)
	default:
		p.TargetPort, s.epPorts[p.Name] = g.targetPort(p.Port)
		what = fmt.Sprintf("targetPort=%s endpoints on %d", p.TargetPort.String(), s.epPorts[p.Name])
	}
	for _, sl := range g.slicesOf(s) {
		for j := range sl.ports {
			if ptr.Deref(sl.ports[j].Name, "") == p.Name && g.chance(0.9) {
				sl.ports[j] = g.slicePortFor(s, *p)
			}
		}
	}
	s.normalize()
	return fmt.Sprintf("%s %s %q %s", verbRenumber, s.key(), p.Name, what), true
}

// hintsFor returns the hint mode of the Service a slice belongs to (none for orphans).
func (g *generator) hintsFor(sl *sliceModel) hintMode {
	if s := g.serviceFor(sl); s != nil {
		return s.hints
	}
	return hintNone
}

// mScaleUp adds endpoints to a slice: a few, or now and then up to 100.
func (g *generator) mScaleUp() (string, bool) {
	sl := g.pickSlice(func(sl *sliceModel) bool { return len(sl.addrs) < 900 })
	if sl == nil {
		return "", false
	}
	n := 1 + g.r.IntN(5)
	if g.chance(0.05) && len(sl.addrs) < 100 {
		n = 100 - len(sl.addrs)
	}
	g.addEndpoints(g.hintsFor(sl), sl, n)
	return fmt.Sprintf("%s %s/%s to %d", verbScaleUp, sl.ns, sl.name, len(sl.addrs)), true
}

// mScaleDown removes some endpoints of a slice.
func (g *generator) mScaleDown() (string, bool) {
	sl := g.pickSlice(hasEndpoints)
	if sl == nil {
		return "", false
	}
	for range 1 + g.r.IntN(min(len(sl.addrs), 4)) {
		i := g.r.IntN(len(sl.addrs))
		sl.addrs = slices.Delete(sl.addrs, i, i+1)
	}
	return fmt.Sprintf("%s %s/%s to %d", verbScaleDown, sl.ns, sl.name, len(sl.addrs)), true
}

// mScaleToZero empties every slice of a Service (or one slice of it).
func (g *generator) mScaleToZero() (string, bool) {
	s := g.pickService(func(s *svcModel) bool { return slices.ContainsFunc(g.slicesOf(s), hasEndpoints) })
	if s == nil {
		return "", false
	}
	sls := g.slicesOf(s)
	if g.chance(0.3) {
		sl := g.pickSlice(func(sl *sliceModel) bool { return slices.Contains(sls, sl) && hasEndpoints(sl) })
		sl.addrs = nil
		return fmt.Sprintf("%s %s/%s", verbScaleZero, sl.ns, sl.name), true
	}
	for _, sl := range sls {
		sl.addrs = nil
	}
	return fmt.Sprintf("%s %s", verbScaleZero, s.key()), true
}

// pickAddrs returns 1..3 distinct addresses of sl.
func (g *generator) pickAddrs(sl *sliceModel) []string {
	var out []string
	for range 1 + g.r.IntN(3) {
		a := pick(g.r, sl.addrs)
		if !slices.Contains(out, a) {
			out = append(out, a)
		}
	}
	return out
}

// mFlipConditions changes the conditions of some endpoints: ready to terminating (serving
// or not), back to ready, or anything. Every slice listing them changes with them.
func (g *generator) mFlipConditions() (string, bool) {
	sl := g.pickSlice(hasEndpoints)
	if sl == nil {
		return "", false
	}
	addrs := g.pickAddrs(sl)
	t, f := ptr.To(true), ptr.To(false)
	var c discovery.EndpointConditions
	what := "ready->terminating"
	switch x := g.r.Float64(); {
	case x < 0.35:
		c = discovery.EndpointConditions{Ready: f, Serving: t, Terminating: t}
	case x < 0.50:
		c = discovery.EndpointConditions{Ready: f, Serving: f, Terminating: t}
	case x < 0.80:
		c, what = discovery.EndpointConditions{Ready: t, Serving: t, Terminating: f}, "->ready"
	default:
		c, what = g.conditions(), "->random"
	}
	for _, a := range addrs {
		g.eps[a].conditions = c
	}
	return fmt.Sprintf("%s %s/%s %v %s", verbFlip, sl.ns, sl.name, addrs, what), true
}

// mMoveEndpoints gives some endpoints another node and zone (hints stay as they were, as
// they would until the controller catches up).
func (g *generator) mMoveEndpoints() (string, bool) {
	sl := g.pickSlice(func(sl *sliceModel) bool { return hasEndpoints(sl) && sl.addrType != discovery.AddressTypeFQDN })
	if sl == nil {
		return "", false
	}
	addrs := g.pickAddrs(sl)
	for _, a := range addrs {
		g.placeEndpoint(g.eps[a])
	}
	return fmt.Sprintf("%s %s/%s %v", verbMove, sl.ns, sl.name, addrs), true
}

// mAddSlice adds a slice to a Service, or one that names no Service at all.
func (g *generator) mAddSlice() (string, bool) {
	s := g.pickService(nil)
	if s == nil {
		return "", false
	}
	fams := s.sliceFamilies(g.o.DualStack)
	at := addressType(pick(g.r, fams))
	if g.chance(0.03) {
		at = discovery.AddressTypeFQDN
	}
	sl := g.addSlice(s, at)
	if g.chance(0.1) {
		sl.service = "gone-" + g.label(1+g.r.IntN(20))
		return fmt.Sprintf("%s %s/%s for missing service %s", verbAddSlice, sl.ns, sl.name, sl.service), true
	}
	return fmt.Sprintf("%s %s/%s (%s, %d endpoints)", verbAddSlice, sl.ns, sl.name, at, len(sl.addrs)), true
}

func (g *generator) mRemoveSlice() (string, bool) {
	sl := g.pickSlice(nil)
	if sl == nil {
		return "", false
	}
	g.removeSlice(sl)
	return fmt.Sprintf("%s %s/%s", verbRemoveSlice, sl.ns, sl.name), true
}

// mRelabelSlice moves a slice to another Service of its namespace, or to a name no
// Service has; half the time its ports are redone for the new owner.
func (g *generator) mRelabelSlice() (string, bool) {
	sl := g.pickSlice(nil)
	if sl == nil {
		return "", false
	}
	from := sl.service
	to := g.pickService(func(s *svcModel) bool { return s.svc.Namespace == sl.ns && s.svc.Name != from })
	if to != nil && g.chance(0.7) {
		sl.service = to.svc.Name
		if g.chance(0.5) {
			sl.ports = g.slicePorts(to)
		}
	} else {
		sl.service = "gone-" + g.label(1+g.r.IntN(20))
	}
	return fmt.Sprintf("%s %s/%s %s->%s", verbRelabel, sl.ns, sl.name, from, sl.service), true
}

// mChangeIngress gives a LoadBalancer Service a new status.loadBalancer.ingress.
func (g *generator) mChangeIngress() (string, bool) {
	s := g.pickService(func(s *svcModel) bool { return s.svc.Spec.Type == v1.ServiceTypeLoadBalancer })
	if s == nil {
		return "", false
	}
	ing := s.svc.Status.LoadBalancer.Ingress
	if len(ing) > 0 && g.chance(0.3) {
		ing = slices.Clone(ing)
		i := g.r.IntN(len(ing))
		if ing[i].IP != "" {
			ing[i].IPMode = pick(g.r, []*v1.LoadBalancerIPMode{nil,
				ptr.To(v1.LoadBalancerIPModeVIP), ptr.To(v1.LoadBalancerIPModeProxy)})
		}
	} else {
		ing = g.lbIngress(s)
	}
	s.svc.Status.LoadBalancer.Ingress = ing
	return fmt.Sprintf("%s %s (%d entries)", verbIngress, s.key(), len(ing)), true
}

// mChangeHints gives a Service's endpoints hints under a new mode.
func (g *generator) mChangeHints() (string, bool) {
	s := g.pickService(func(s *svcModel) bool { return slices.ContainsFunc(g.slicesOf(s), hasEndpoints) })
	if s == nil {
		return "", false
	}
	s.hints = g.hintMode()
	for _, sl := range g.slicesOf(s) {
		for _, a := range sl.addrs {
			g.eps[a].hints = g.hints(s.hints, g.eps[a])
		}
	}
	return fmt.Sprintf("%s %s mode %d", verbHints, s.key(), s.hints), true
}

// mToggleHeadlessLabel flips service.kubernetes.io/headless on a slice (kube-proxy's
// informer does not see slices that carry it).
func (g *generator) mToggleHeadlessLabel() (string, bool) {
	sl := g.pickSlice(nil)
	if sl == nil {
		return "", false
	}
	sl.headlessLabel = !sl.headlessLabel
	return fmt.Sprintf("%s %s/%s=%v", verbHeadlessMark, sl.ns, sl.name, sl.headlessLabel), true
}
