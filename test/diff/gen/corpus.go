package gen

import (
	"bytes"
	"embed"
	"fmt"
	"hash/fnv"
	"io/fs"
	"path"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"
)

// corpusFS holds one YAML file per project: the Service objects of its published
// manifests, each file headed by a comment naming the source. (go:embed cannot reach
// test/diff/corpus from here, so the corpus lives beside the package.)
//
//go:embed corpus/*.yaml
var corpusFS embed.FS

// corpusSeed makes the corpus's endpoints the same on every call.
const corpusSeed = 0x636f72707573

// Corpus returns one step per corpus file (in file name order) that creates its Services
// with generated EndpointSlices, the same for the same Options. Each Service is rewritten
// for a selectorless test: its namespace becomes one of o.Namespaces (another one, or a
// "-2" suffix, when the name is taken there), its selector is removed (so the
// EndpointSlice controller leaves its slices to us) and its clusterIP/clusterIPs are
// cleared for the apiserver to allocate, except "None" (headless stays headless). On a
// single-stack cluster IPv6 families are dropped. A LoadBalancer Service also gets a
// status.loadBalancer.ingress: its spec.loadBalancerIP if it asks for one (so Services
// sharing an IP share it here too), otherwise an address per family.
func Corpus(o Options) ([]Step, error) {
	g := newGenerator(corpusSeed, o)
	files, err := fs.Glob(corpusFS, "corpus/*.yaml")
	if err != nil {
		return nil, err
	}
	slices.Sort(files)
	var steps []Step
	next := 0 // round-robin over the namespaces
	for _, f := range files {
		data, err := corpusFS.ReadFile(f)
		if err != nil {
			return nil, err
		}
		svcs, err := parseServices(data)
		if err != nil {
			return nil, fmt.Errorf("corpus %s: %w", f, err)
		}
		for _, svc := range svcs {
			k := g.corpusName(svc.Name, next)
			next++
			g.adoptService(svc, k)
		}
		project := strings.TrimSuffix(path.Base(f), ".yaml")
		steps = append(steps, Step{
			Name: fmt.Sprintf("corpus %s: %s %s", project, verbAdd, plural(len(svcs), "service")),
			Ops:  g.flush(),
		})
	}
	return steps, nil
}

// parseServices decodes the YAML documents of a corpus file, strictly (an unknown field
// is a typo), and checks that each is a Service with at least one port.
func parseServices(data []byte) ([]*v1.Service, error) {
	var out []*v1.Service
	for i, doc := range bytes.Split(data, []byte("\n---")) {
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if tm.Kind == "" && tm.APIVersion == "" {
			continue // comments only
		}
		if tm.Kind != "Service" || tm.APIVersion != "v1" {
			return nil, fmt.Errorf("document %d: %s %s is not a v1 Service", i, tm.APIVersion, tm.Kind)
		}
		svc := &v1.Service{}
		if err := yaml.UnmarshalStrict(doc, svc); err != nil {
			return nil, fmt.Errorf("document %d: %w", i, err)
		}
		if len(svc.Spec.Ports) == 0 {
			return nil, fmt.Errorf("document %d: service %s has no ports", i, svc.Name)
		}
		out = append(out, svc)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no services")
	}
	return out, nil
}

// corpusName places name in the i-th namespace (round robin), or the next one where it is
// free, or gives it a numeric suffix when it is taken everywhere.
func (g *generator) corpusName(name string, i int) svcKey {
	nss := g.o.Namespaces
	for suffix := 1; ; suffix++ {
		n := name
		if suffix > 1 {
			n = fmt.Sprintf("%s-%d", name[:min(len(name), 60)], suffix)
		}
		for j := range nss {
			k := svcKey{nss[(i+j)%len(nss)], n}
			if g.nameFree("service", k) {
				return k
			}
		}
	}
}

// adoptService adds a corpus Service to the model under k, with a slice per family.
func (g *generator) adoptService(svc *v1.Service, k svcKey) {
	svc = svc.DeepCopy()
	svc.ObjectMeta = metav1.ObjectMeta{
		Namespace: k.ns, Name: k.name, Labels: svc.Labels, Annotations: svc.Annotations,
	}
	spec := &svc.Spec
	spec.Selector = nil
	if spec.ClusterIP != v1.ClusterIPNone {
		spec.ClusterIP = ""
	}
	spec.ClusterIPs = nil
	if !g.o.DualStack {
		spec.IPFamilies = slices.DeleteFunc(spec.IPFamilies, func(f v1.IPFamily) bool { return f == v1.IPv6Protocol })
		if p := spec.IPFamilyPolicy; p != nil && *p == v1.IPFamilyPolicyRequireDualStack {
			spec.IPFamilyPolicy = nil
		}
	}
	s := &svcModel{svc: svc, epPorts: map[string]int32{}, families: spec.IPFamilies, policy: spec.IPFamilyPolicy}
	for _, p := range spec.Ports {
		s.epPorts[p.Name] = corpusTarget(p)
	}
	g.svcs = append(g.svcs, s)
	g.svcNames[k] = true
	for _, fam := range s.sliceFamilies(g.o.DualStack) {
		g.addCorpusSlice(s, addressType(fam))
	}
	if spec.Type == v1.ServiceTypeLoadBalancer {
		svc.Status.LoadBalancer.Ingress = g.corpusIngress(s)
	}
}

// corpusTarget is the number a slice carries for Service port p: its numeric targetPort,
// its port when the target is unset, and a number derived from the name for a named target
// (the container port it names is in the workload's manifest, not here; any number does).
func corpusTarget(p v1.ServicePort) int32 {
	switch {
	case p.TargetPort.StrVal != "":
		h := fnv.New32a()
		h.Write([]byte(p.TargetPort.StrVal))
		return 1024 + int32(h.Sum32()%30000)
	case p.TargetPort.IntVal != 0:
		return p.TargetPort.IntVal
	default:
		return p.Port
	}
}

// addCorpusSlice adds a plain slice: every Service port, one to four ready endpoints on
// random nodes, no hints.
func (g *generator) addCorpusSlice(s *svcModel, at discovery.AddressType) {
	sl := &sliceModel{
		ns:       s.svc.Namespace,
		name:     g.sliceName(s.svc.Namespace, s.svc.Name),
		service:  s.svc.Name,
		addrType: at,
	}
	for _, p := range s.svc.Spec.Ports {
		sl.ports = append(sl.ports, g.slicePortFor(s, p))
	}
	for range 1 + g.r.IntN(4) {
		a := g.newEndpoint(hintNone, at)
		e := g.eps[a]
		e.addresses = e.addresses[:1]
		e.conditions = discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)}
		sl.addrs = append(sl.addrs, a)
	}
	g.slices = append(g.slices, sl)
	g.sliceNames[sl.key()] = true
}

// corpusIngress returns the load-balancer status of a corpus LoadBalancer Service.
func (g *generator) corpusIngress(s *svcModel) []v1.LoadBalancerIngress {
	if ip := s.svc.Spec.LoadBalancerIP; ip != "" {
		return []v1.LoadBalancerIngress{{IP: ip}}
	}
	var out []v1.LoadBalancerIngress
	for _, fam := range s.sliceFamilies(g.o.DualStack) {
		ip := g.externalIP(fam == v1.IPv6Protocol)
		out = append(out, v1.LoadBalancerIngress{IP: ip})
	}
	return out
}
