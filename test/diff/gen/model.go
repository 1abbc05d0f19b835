package gen

import (
	"slices"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// svcModel is one desired Service. The Service object is the desired state itself; the
// other fields are what the generator needs to keep it and its slices consistent.
type svcModel struct {
	svc *v1.Service
	// epPorts maps a Service port name to the port number its slices carry (the resolved
	// targetPort; kube-proxy reads only the slices' number).
	epPorts map[string]int32
	// families and policy are the ipFamilies and ipFamilyPolicy chosen at creation. They
	// stay fixed (changing the primary family is refused) except while the Service is an
	// ExternalName, which must have neither.
	families []v1.IPFamily
	policy   *v1.IPFamilyPolicy
	// hints decides the topology hints of endpoints created for this Service.
	hints hintMode
}

// hintMode is how a Service's endpoints carry topology hints. kube-proxy uses zone (or
// node) hints only when every ready endpoint of a service port has them.
type hintMode int

const (
	hintNone    hintMode = iota // no hints
	hintZone                    // forZones on every endpoint
	hintNode                    // forNodes and forZones on every endpoint (PreferSameNode)
	hintPartial                 // hints on some endpoints only: kube-proxy ignores them
)

func (s *svcModel) key() svcKey { return svcKey{s.svc.Namespace, s.svc.Name} }

func (s *svcModel) render() *v1.Service { return s.svc.DeepCopy() }

func (s *svcModel) headless() bool { return s.svc.Spec.ClusterIP == v1.ClusterIPNone }

// externallyAccessible mirrors the apiserver's rule for when externalTrafficPolicy must be
// set (pkg/api/service ExternallyAccessible).
func externallyAccessible(svc *v1.Service) bool {
	t := svc.Spec.Type
	return t == v1.ServiceTypeLoadBalancer || t == v1.ServiceTypeNodePort ||
		(t == v1.ServiceTypeClusterIP && len(svc.Spec.ExternalIPs) > 0)
}

// normalize makes the Service consistent after a mutation, clearing what its type and
// policies make invalid, the way a careful user would (the apiserver refuses, for example,
// externalTrafficPolicy on a Service that is not externally accessible).
func (s *svcModel) normalize() {
	spec := &s.svc.Spec
	if spec.Type == v1.ServiceTypeExternalName {
		spec.ClusterIP, spec.ClusterIPs = "", nil
		spec.IPFamilies, spec.IPFamilyPolicy = nil, nil
	} else {
		spec.ExternalName = ""
		spec.IPFamilies = slices.Clone(s.families)
		spec.IPFamilyPolicy = s.policy
	}
	if spec.Type != v1.ServiceTypeNodePort && spec.Type != v1.ServiceTypeLoadBalancer {
		for i := range spec.Ports {
			spec.Ports[i].NodePort = 0
		}
	}
	if spec.Type != v1.ServiceTypeLoadBalancer {
		spec.LoadBalancerSourceRanges = nil
		spec.AllocateLoadBalancerNodePorts = nil
		s.svc.Status.LoadBalancer = v1.LoadBalancerStatus{}
	}
	if !externallyAccessible(s.svc) {
		spec.ExternalTrafficPolicy = ""
	}
	if spec.Type != v1.ServiceTypeLoadBalancer || spec.ExternalTrafficPolicy != v1.ServiceExternalTrafficPolicyLocal {
		spec.HealthCheckNodePort = 0
	}
	if spec.SessionAffinity != v1.ServiceAffinityClientIP {
		spec.SessionAffinity = v1.ServiceAffinityNone
		spec.SessionAffinityConfig = nil
	}
}

// sliceFamilies returns the families the Service ends up with on the apiserver (see the
// allocator's initIPFamilyFields), which are the address types its slices carry.
func (s *svcModel) sliceFamilies(dualStack bool) []v1.IPFamily {
	fams := slices.Clone(s.families)
	if len(fams) == 0 {
		fams = []v1.IPFamily{v1.IPv4Protocol}
	}
	single := s.policy == nil || *s.policy == v1.IPFamilyPolicySingleStack
	if s.headless() && s.policy == nil {
		single = false // selectorless headless: nil policy becomes RequireDualStack
	}
	if len(fams) == 1 && !single && (dualStack || s.headless()) {
		fams = append(fams, otherFamily(fams[0]))
	}
	return fams
}

func otherFamily(f v1.IPFamily) v1.IPFamily {
	if f == v1.IPv4Protocol {
		return v1.IPv6Protocol
	}
	return v1.IPv4Protocol
}

func addressType(f v1.IPFamily) discovery.AddressType {
	if f == v1.IPv6Protocol {
		return discovery.AddressTypeIPv6
	}
	return discovery.AddressTypeIPv4
}

// sliceModel is one desired EndpointSlice. Its endpoints are addresses whose attributes
// live in generator.eps, so every copy of an address agrees (see the package doc).
type sliceModel struct {
	ns, name string
	service  string // kubernetes.io/service-name: may name no live Service
	addrType discovery.AddressType
	ports    []discovery.EndpointPort
	addrs    []string // first address of each endpoint, in order; may repeat
	// headlessLabel sets service.kubernetes.io/headless, which makes kube-proxy's
	// informer skip the slice.
	headlessLabel bool
}

func (s *sliceModel) key() svcKey { return svcKey{s.ns, s.name} }

// epModel is what every copy of one endpoint address carries.
type epModel struct {
	addresses  []string // addresses[0] is the key; kube-proxy reads only that one
	conditions discovery.EndpointConditions
	nodeName   *string
	zone       *string
	hints      *discovery.EndpointHints
}

func (e *epModel) render() discovery.Endpoint {
	ep := discovery.Endpoint{
		Addresses: slices.Clone(e.addresses),
		NodeName:  clonePtr(e.nodeName),
		Zone:      clonePtr(e.zone),
		Conditions: discovery.EndpointConditions{
			Ready:       clonePtr(e.conditions.Ready),
			Serving:     clonePtr(e.conditions.Serving),
			Terminating: clonePtr(e.conditions.Terminating),
		},
	}
	if e.hints != nil {
		ep.Hints = e.hints.DeepCopy()
	}
	return ep
}

func (g *generator) renderSlice(s *sliceModel) *discovery.EndpointSlice {
	es := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: s.ns,
			Name:      s.name,
			Labels: map[string]string{
				discovery.LabelServiceName: s.service,
				discovery.LabelManagedBy:   ManagedBy,
			},
		},
		AddressType: s.addrType,
		Endpoints:   []discovery.Endpoint{},
		Ports:       []discovery.EndpointPort{},
	}
	if s.headlessLabel {
		es.Labels[v1.IsHeadlessService] = ""
	}
	for _, p := range s.ports {
		es.Ports = append(es.Ports, *p.DeepCopy())
	}
	for _, a := range s.addrs {
		es.Endpoints = append(es.Endpoints, g.eps[a].render())
	}
	return es
}

func clonePtr[T any](p *T) *T {
	if p == nil {
		return nil
	}
	v := *p
	return &v
}

// serviceFor returns the live Service a slice belongs to, or nil.
func (g *generator) serviceFor(s *sliceModel) *svcModel {
	for _, svc := range g.svcs {
		if svc.svc.Namespace == s.ns && svc.svc.Name == s.service {
			return svc
		}
	}
	return nil
}

// slicesOf returns the live slices labelled with the Service's name.
func (g *generator) slicesOf(s *svcModel) []*sliceModel {
	var out []*sliceModel
	for _, sl := range g.slices {
		if sl.ns == s.svc.Namespace && sl.service == s.svc.Name {
			out = append(out, sl)
		}
	}
	return out
}
