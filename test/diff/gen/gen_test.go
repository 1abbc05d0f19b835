package gen

import (
	"fmt"
	"net/netip"
	"reflect"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/utils/ptr"
)

var testOptions = Options{
	ThisNode:    "node-1",
	NodeNames:   []string{"node-1", "node-2", "node-3"},
	Zones:       []string{"zone-a", "zone-b", "zone-c"},
	DualStack:   true,
	Namespaces:  []string{"diff-a", "diff-b"},
	MaxServices: 12,
}

const (
	coverageSeeds = 300
	stepsPerSeed  = 30
)

func TestSameSeedSameSequence(t *testing.T) {
	for _, seed := range []uint64{0, 42, 1 << 40} {
		a := NewSequence(seed, 60, testOptions)
		b := NewSequence(seed, 60, testOptions)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("two sequences from seed %d differ", seed)
		}
	}
	c, err := Corpus(testOptions)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := Corpus(testOptions)
	if !reflect.DeepEqual(c, d) {
		t.Fatal("two corpus loads differ")
	}
}

func TestDifferentSeedsDiffer(t *testing.T) {
	for seed := uint64(1); seed <= 20; seed++ {
		a := NewSequence(seed, 10, testOptions)
		b := NewSequence(seed+1, 10, testOptions)
		if apiequality.Semantic.DeepEqual(a.Steps, b.Steps) {
			t.Errorf("seeds %d and %d give the same steps", seed, seed+1)
		}
	}
}

func TestSequenceShape(t *testing.T) {
	seq := NewSequence(7, 25, testOptions)
	if seq.Seed != 7 || len(seq.Steps) != 25 {
		t.Fatalf("seed %d, %d steps; want 7, 25", seq.Seed, len(seq.Steps))
	}
	if !strings.HasPrefix(seq.Steps[0].Name, verbAdd+" ") {
		t.Errorf("first step %q does not add services", seq.Steps[0].Name)
	}
	for i, st := range seq.Steps {
		if len(st.Ops) == 0 {
			t.Errorf("step %d %q has no ops", i, st.Name)
		}
		for _, op := range st.Ops {
			if (op.Service == nil) == (op.Slice == nil) {
				t.Errorf("step %d %q: op with both or neither of Service and Slice", i, st.Name)
			}
		}
	}
	if got := len(NewSequence(7, 0, testOptions).Steps); got != 1 {
		t.Errorf("steps=0 gives %d steps, want the population step alone", got)
	}
}

// TestValidity replays sequences into a simulated apiserver store and checks every object
// against the validation rules the package doc lists, every update against the rules for
// updates, and every state against the duplicate-endpoint invariant.
func TestValidity(t *testing.T) {
	single := testOptions
	single.DualStack = false
	for _, o := range []Options{testOptions, single} {
		seeds := uint64(coverageSeeds)
		if !o.DualStack {
			seeds = 100
		}
		for seed := uint64(0); seed < seeds; seed++ {
			c := newStore(o)
			for i, st := range NewSequence(seed, stepsPerSeed, o).Steps {
				for _, p := range c.applyStep(st) {
					t.Errorf("dualStack=%v seed %d step %d %q: %s", o.DualStack, seed, i, st.Name, p)
				}
			}
			if t.Failed() {
				return
			}
		}
	}
}

func TestCorpus(t *testing.T) {
	for _, o := range []Options{testOptions, {DualStack: false}} {
		steps, err := Corpus(o)
		if err != nil {
			t.Fatal(err)
		}
		if len(steps) < 8 {
			t.Errorf("%d corpus files, want 8 or more", len(steps))
		}
		c := newStore(o)
		services := 0
		for _, st := range steps {
			for _, op := range st.Ops {
				if op.Service == nil {
					continue
				}
				services++
				if len(op.Service.Spec.Ports) == 0 {
					t.Errorf("%s: service %s has no ports", st.Name, op.Service.Name)
				}
				if op.Service.Spec.Selector != nil {
					t.Errorf("%s: service %s keeps its selector", st.Name, op.Service.Name)
				}
			}
			for _, p := range c.applyStep(st) {
				t.Errorf("%s: %s", st.Name, p)
			}
		}
		if services < 30 {
			t.Errorf("%d corpus services, want 30 or more", services)
		}
	}
}

// TestCoverage counts, over many seeds, how often each feature the generator must cover
// shows up in what it emits, and fails on any that never does.
func TestCoverage(t *testing.T) {
	counts := map[string]int{}
	for seed := uint64(0); seed < coverageSeeds; seed++ {
		c := newStore(testOptions)
		for _, st := range NewSequence(seed, stepsPerSeed, testOptions).Steps {
			c.applyStep(st)
			countStep(counts, st)
			c.countState(counts)
		}
	}
	var b strings.Builder
	for _, f := range features {
		fmt.Fprintf(&b, "%-45s %7d\n", f, counts[f])
		if counts[f] == 0 {
			t.Errorf("feature %q never generated", f)
		}
	}
	t.Logf("feature coverage over %d seeds x %d steps:\n%s", coverageSeeds, stepsPerSeed, b.String())
}

// features are what TestCoverage requires; countStep and countState name them.
var features = []string{
	"svc/type=ClusterIP", "svc/type=NodePort", "svc/type=LoadBalancer", "svc/type=ExternalName",
	"svc/headless", "svc/name-len=1", "svc/name-len=63", "svc/name-digit-first",
	"svc/ports=1", "svc/ports=8", "svc/port-unnamed",
	"svc/portname=tcp-prometheus-servicemonitor", "svc/portname=grpc--web",
	"svc/portname-len=1", "svc/portname-len=63",
	"svc/protocol=TCP", "svc/protocol=UDP", "svc/protocol=SCTP", "svc/same-port-tcp-udp",
	"svc/port=1", "svc/port=65535", "svc/port>32767",
	"svc/targetPort-named", "svc/targetPort-unset", "svc/targetPort-differs",
	"svc/nodePort-explicit", "svc/healthCheckNodePort-explicit",
	"svc/externalIPs-v4", "svc/externalIPs-v6", "svc/externalIPs-noncanonical",
	"svc/etp=Cluster", "svc/etp=Local", "svc/etp-defaulted", "svc/etp-clusterIP-with-externalIPs",
	"svc/itp=nil", "svc/itp=Cluster", "svc/itp=Local",
	"svc/affinity=ClientIP", "svc/affinity-timeout=nil", "svc/affinity-timeout=1",
	"svc/affinity-timeout=86400", "svc/affinity-timeout-other",
	"svc/sourceRanges-v4", "svc/sourceRanges-v6", "svc/sourceRanges-zero", "svc/sourceRanges-overlap",
	"svc/allocateLBNodePorts=false",
	"svc/families=nil", "svc/SingleStack-IPv4", "svc/SingleStack-IPv6",
	"svc/PreferDualStack", "svc/RequireDualStack", "svc/families=IPv4,IPv6", "svc/families=IPv6,IPv4",
	"svc/trafficDistribution=PreferClose", "svc/trafficDistribution=PreferSameZone",
	"svc/trafficDistribution=PreferSameNode",
	"svc/ingress-v4", "svc/ingress-v6", "svc/ingress-hostname-only", "svc/ingress-ip+hostname",
	"svc/ipMode=VIP", "svc/ipMode=Proxy", "svc/ipMode=nil", "svc/label-service-proxy-name",
	"slice/IPv4", "slice/IPv6", "slice/FQDN", "slice/0-endpoints", "slice/100-endpoints",
	"slice/no-ports", "slice/long-name", "slice/headless-label",
	"slice/port-name-nil", "slice/port-protocol-nil", "slice/port-number-nil", "slice/port-unmatched",
	"ep/multiple-addresses",
	"ep/ready=nil", "ep/ready=true", "ep/ready=false",
	"ep/serving=nil", "ep/serving=true", "ep/serving=false",
	"ep/terminating=nil", "ep/terminating=true", "ep/terminating=false",
	"ep/node=nil", "ep/node=this", "ep/node=other", "ep/zone=nil", "ep/zone-set",
	"ep/hints-forZones", "ep/hints-forNodes",
	"state/slices-per-service>1", "state/duplicate-across-slices", "state/duplicate-within-slice",
	"state/endpoint-in-two-services", "state/orphan-slice",
	"step/" + verbAdd, "step/" + verbDelete, "step/" + verbRecreate, "step/" + verbType,
	"step/" + verbToggle, "step/" + verbAddPort, "step/" + verbRemovePort, "step/" + verbRenamePort,
	"step/" + verbRenumber, "step/" + verbScaleUp, "step/" + verbScaleDown, "step/" + verbScaleZero,
	"step/" + verbFlip, "step/" + verbMove, "step/" + verbAddSlice, "step/" + verbRemoveSlice,
	"step/" + verbRelabel, "step/" + verbIngress, "step/" + verbHints, "step/" + verbHeadlessMark,
	"step/combined",
}

func countStep(counts map[string]int, st Step) {
	parts := strings.Split(st.Name, "; ")
	if len(parts) > 1 {
		counts["step/combined"]++
	}
	for _, p := range parts {
		for _, f := range features {
			v, ok := strings.CutPrefix(f, "step/")
			if !ok || !strings.HasPrefix(p, v) {
				continue
			}
			if v == verbAdd && !strings.HasSuffix(p, "service") && !strings.HasSuffix(p, "services") {
				continue // "add port", "add slice"
			}
			counts[f]++
		}
	}
	for _, op := range st.Ops {
		switch {
		case op.Delete:
		case op.Service != nil:
			countService(counts, op.Service)
		default:
			countSlice(counts, op.Slice)
		}
	}
}

func countService(counts map[string]int, svc *v1.Service) {
	spec := &svc.Spec
	add := func(f string, cond bool) {
		if cond {
			counts[f]++
		}
	}
	add("svc/type="+string(spec.Type), true)
	add("svc/headless", spec.ClusterIP == v1.ClusterIPNone)
	add("svc/name-len=1", len(svc.Name) == 1)
	add("svc/name-len=63", len(svc.Name) == 63)
	add("svc/name-digit-first", svc.Name[0] >= '0' && svc.Name[0] <= '9')
	add("svc/ports=1", len(spec.Ports) == 1)
	add("svc/ports=8", len(spec.Ports) == 8)
	add("svc/label-service-proxy-name", svc.Labels["service.kubernetes.io/service-proxy-name"] != "")
	seen := map[int32]v1.Protocol{}
	for _, p := range spec.Ports {
		add("svc/port-unnamed", p.Name == "")
		add("svc/portname="+p.Name, p.Name == "tcp-prometheus-servicemonitor" || p.Name == "grpc--web")
		add("svc/portname-len=1", len(p.Name) == 1)
		add("svc/portname-len=63", len(p.Name) == 63)
		add("svc/protocol="+string(p.Protocol), true)
		if other, ok := seen[p.Port]; ok && other != p.Protocol {
			add("svc/same-port-tcp-udp", true)
		}
		seen[p.Port] = p.Protocol
		add("svc/port=1", p.Port == 1)
		add("svc/port=65535", p.Port == 65535)
		add("svc/port>32767", p.Port > 32767)
		add("svc/targetPort-named", p.TargetPort.StrVal != "")
		add("svc/targetPort-unset", p.TargetPort.StrVal == "" && p.TargetPort.IntVal == 0)
		add("svc/targetPort-differs", p.TargetPort.IntVal != 0 && p.TargetPort.IntVal != p.Port)
		add("svc/nodePort-explicit", p.NodePort != 0)
	}
	add("svc/healthCheckNodePort-explicit", spec.HealthCheckNodePort != 0)
	for _, ip := range spec.ExternalIPs {
		add("svc/externalIPs-v4", !strings.Contains(ip, ":"))
		add("svc/externalIPs-v6", strings.Contains(ip, ":"))
		add("svc/externalIPs-noncanonical", netip.MustParseAddr(ip).String() != ip)
	}
	countPolicies(counts, svc)
	countFamilies(counts, svc)
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		add("svc/ingress-v4", ing.IP != "" && !strings.Contains(ing.IP, ":"))
		add("svc/ingress-v6", strings.Contains(ing.IP, ":"))
		add("svc/ingress-hostname-only", ing.IP == "" && ing.Hostname != "")
		add("svc/ingress-ip+hostname", ing.IP != "" && ing.Hostname != "")
		if ing.IP != "" {
			add("svc/ipMode="+string(ptr.Deref(ing.IPMode, "nil")), true)
		}
	}
}

func countPolicies(counts map[string]int, svc *v1.Service) {
	spec := &svc.Spec
	add := func(f string, cond bool) {
		if cond {
			counts[f]++
		}
	}
	add("svc/etp="+string(spec.ExternalTrafficPolicy), spec.ExternalTrafficPolicy != "")
	add("svc/etp-defaulted", spec.ExternalTrafficPolicy == "" && externallyAccessible(svc))
	add("svc/etp-clusterIP-with-externalIPs", spec.Type == v1.ServiceTypeClusterIP && len(spec.ExternalIPs) > 0 &&
		spec.ExternalTrafficPolicy != "")
	add("svc/itp="+string(ptr.Deref(spec.InternalTrafficPolicy, "nil")), true)
	if spec.SessionAffinity == v1.ServiceAffinityClientIP {
		add("svc/affinity=ClientIP", true)
		var timeout *int32
		if c := spec.SessionAffinityConfig; c != nil && c.ClientIP != nil {
			timeout = c.ClientIP.TimeoutSeconds
		}
		switch {
		case timeout == nil:
			add("svc/affinity-timeout=nil", true)
		case *timeout == 1 || *timeout == 86400:
			add(fmt.Sprintf("svc/affinity-timeout=%d", *timeout), true)
		default:
			add("svc/affinity-timeout-other", true)
		}
	}
	ranges := spec.LoadBalancerSourceRanges
	for i, r := range ranges {
		p := netip.MustParsePrefix(strings.TrimSpace(r))
		add("svc/sourceRanges-v4", p.Addr().Is4())
		add("svc/sourceRanges-v6", p.Addr().Is6())
		add("svc/sourceRanges-zero", p.Bits() == 0)
		for _, o := range ranges[i+1:] {
			q := netip.MustParsePrefix(strings.TrimSpace(o))
			add("svc/sourceRanges-overlap", p != q && p.Overlaps(q) && p.Bits() != 0 && q.Bits() != 0)
		}
	}
	add("svc/allocateLBNodePorts=false", spec.AllocateLoadBalancerNodePorts != nil && !*spec.AllocateLoadBalancerNodePorts)
	if td := spec.TrafficDistribution; td != nil {
		add("svc/trafficDistribution="+*td, true)
	}
}

func countFamilies(counts map[string]int, svc *v1.Service) {
	spec := &svc.Spec
	if spec.Type == v1.ServiceTypeExternalName {
		return
	}
	if len(spec.IPFamilies) == 0 {
		counts["svc/families=nil"]++
	}
	if len(spec.IPFamilies) == 2 {
		counts[fmt.Sprintf("svc/families=%s,%s", spec.IPFamilies[0], spec.IPFamilies[1])]++
	}
	switch p := ptr.Deref(spec.IPFamilyPolicy, ""); {
	case p == v1.IPFamilyPolicySingleStack && len(spec.IPFamilies) == 1:
		counts["svc/SingleStack-"+string(spec.IPFamilies[0])]++
	case p != "" && p != v1.IPFamilyPolicySingleStack:
		counts["svc/"+string(p)]++
	}
}

func countSlice(counts map[string]int, es *discovery.EndpointSlice) {
	add := func(f string, cond bool) {
		if cond {
			counts[f]++
		}
	}
	add("slice/"+string(es.AddressType), true)
	add("slice/0-endpoints", len(es.Endpoints) == 0)
	add("slice/100-endpoints", len(es.Endpoints) >= 100)
	add("slice/no-ports", len(es.Ports) == 0)
	add("slice/long-name", len(es.Name) > 63 || strings.Contains(es.Name, "."))
	_, headless := es.Labels[v1.IsHeadlessService]
	add("slice/headless-label", headless)
	for _, p := range es.Ports {
		add("slice/port-name-nil", p.Name == nil)
		add("slice/port-protocol-nil", p.Protocol == nil)
		add("slice/port-number-nil", p.Port == nil)
	}
	tri := func(b *bool) string {
		if b == nil {
			return "nil"
		}
		return fmt.Sprint(*b)
	}
	for _, ep := range es.Endpoints {
		add("ep/multiple-addresses", len(ep.Addresses) > 1)
		add("ep/ready="+tri(ep.Conditions.Ready), true)
		add("ep/serving="+tri(ep.Conditions.Serving), true)
		add("ep/terminating="+tri(ep.Conditions.Terminating), true)
		add("ep/node=nil", ep.NodeName == nil)
		add("ep/node=this", ptr.Deref(ep.NodeName, "") == testOptions.ThisNode)
		add("ep/node=other", ep.NodeName != nil && *ep.NodeName != testOptions.ThisNode)
		add("ep/zone=nil", ep.Zone == nil)
		add("ep/zone-set", ep.Zone != nil)
		add("ep/hints-forZones", ep.Hints != nil && len(ep.Hints.ForZones) > 0)
		add("ep/hints-forNodes", ep.Hints != nil && len(ep.Hints.ForNodes) > 0)
	}
}

// store is what the apiserver holds after each step, as far as the checks need.
type store struct {
	o      Options
	svcs   map[svcKey]*v1.Service
	slices map[svcKey]*discovery.EndpointSlice
}

func newStore(o Options) *store {
	return &store{o: o.withDefaults(), svcs: map[svcKey]*v1.Service{}, slices: map[svcKey]*discovery.EndpointSlice{}}
}

// applyStep applies a step's ops and returns every rule they break.
func (c *store) applyStep(st Step) []string {
	var problems []string
	for _, op := range st.Ops {
		switch {
		case op.Service != nil:
			k := svcKey{op.Service.Namespace, op.Service.Name}
			if op.Delete {
				delete(c.svcs, k)
				continue
			}
			problems = append(problems, prefix(k, checkService(op.Service, c.o))...)
			if old := c.svcs[k]; old != nil {
				problems = append(problems, prefix(k, checkServiceUpdate(old, op.Service))...)
			}
			c.svcs[k] = op.Service
		default:
			k := svcKey{op.Slice.Namespace, op.Slice.Name}
			if op.Delete {
				delete(c.slices, k)
				continue
			}
			problems = append(problems, prefix(k, checkSlice(op.Slice))...)
			if old := c.slices[k]; old != nil && old.AddressType != op.Slice.AddressType {
				problems = append(problems, fmt.Sprintf("slice %s: addressType changed", k))
			}
			c.slices[k] = op.Slice
		}
	}
	return append(problems, c.checkState()...)
}

func prefix(k svcKey, ps []string) []string {
	for i := range ps {
		ps[i] = k.String() + ": " + ps[i]
	}
	return ps
}

// checkService checks a desired Service against the v1.37 create validation (see the
// package doc), as far as it can be checked without the apiserver.
func checkService(svc *v1.Service, o Options) []string {
	var ps []string
	bad := func(cond bool, format string, args ...any) {
		if cond {
			ps = append(ps, fmt.Sprintf(format, args...))
		}
	}
	spec := &svc.Spec
	bad(len(validation.IsDNS1123Label(svc.Name)) > 0, "name %q is not a DNS label", svc.Name)
	bad(!slices.Contains(o.Namespaces, svc.Namespace), "namespace %q not pre-created", svc.Namespace)
	bad(spec.Selector != nil, "selector set")
	bad(spec.ClusterIP != "" && spec.ClusterIP != v1.ClusterIPNone, "clusterIP %q set", spec.ClusterIP)
	headless := spec.ClusterIP == v1.ClusterIPNone
	switch spec.Type {
	case "", v1.ServiceTypeClusterIP, v1.ServiceTypeNodePort, v1.ServiceTypeLoadBalancer: // "" defaults to ClusterIP
		bad(headless && spec.Type != v1.ServiceTypeClusterIP && spec.Type != "", "headless %s", spec.Type)
	case v1.ServiceTypeExternalName:
		bad(spec.ClusterIP != "" || spec.IPFamilies != nil || spec.IPFamilyPolicy != nil, "ExternalName with cluster IP fields")
		bad(len(validation.IsDNS1123Subdomain(strings.TrimSuffix(spec.ExternalName, "."))) > 0, "externalName %q", spec.ExternalName)
	default:
		bad(true, "type %q", spec.Type)
	}
	ps = append(ps, checkServicePorts(svc)...)
	ps = append(ps, checkServicePolicies(svc, o)...)
	ps = append(ps, checkLoadBalancer(svc)...)
	return ps
}

func checkServicePorts(svc *v1.Service) []string {
	var ps []string
	bad := func(cond bool, format string, args ...any) {
		if cond {
			ps = append(ps, fmt.Sprintf(format, args...))
		}
	}
	spec := &svc.Spec
	bad(len(spec.Ports) == 0 && spec.ClusterIP != v1.ClusterIPNone && spec.Type != v1.ServiceTypeExternalName, "no ports")
	names, pairs, nodePorts := map[string]bool{}, map[string]bool{}, map[string]bool{}
	for _, p := range spec.Ports {
		bad(p.Name == "" && len(spec.Ports) > 1, "unnamed port among %d", len(spec.Ports))
		bad(p.Name != "" && len(validation.IsDNS1123Label(p.Name)) > 0, "port name %q", p.Name)
		bad(names[p.Name], "duplicate port name %q", p.Name)
		names[p.Name] = true
		bad(len(validation.IsValidPortNum(int(p.Port))) > 0, "port %d", p.Port)
		bad(!slices.Contains([]v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP, ""}, p.Protocol), "protocol %q", p.Protocol)
		pair := fmt.Sprint(p.Protocol, p.Port)
		bad(pairs[pair], "duplicate port %s", pair)
		pairs[pair] = true
		if tp := p.TargetPort; tp.StrVal != "" {
			bad(len(validation.IsValidPortName(tp.StrVal)) > 0, "targetPort %q", tp.StrVal)
		} else if tp.IntVal != 0 {
			bad(len(validation.IsValidPortNum(int(tp.IntVal))) > 0, "targetPort %d", tp.IntVal)
		}
		if p.NodePort != 0 {
			bad(spec.Type != v1.ServiceTypeNodePort && spec.Type != v1.ServiceTypeLoadBalancer, "nodePort on %s", spec.Type)
			bad(p.NodePort < 30000 || p.NodePort > 32767, "nodePort %d out of range", p.NodePort)
			np := fmt.Sprint(p.Protocol, p.NodePort)
			bad(nodePorts[np], "duplicate nodePort %s", np)
			nodePorts[np] = true
		}
	}
	return ps
}

func checkServicePolicies(svc *v1.Service, o Options) []string {
	var ps []string
	bad := func(cond bool, format string, args ...any) {
		if cond {
			ps = append(ps, fmt.Sprintf(format, args...))
		}
	}
	spec := &svc.Spec
	for _, ip := range spec.ExternalIPs {
		ps = append(ps, checkIP(ip, false)...)
	}
	if externallyAccessible(svc) {
		bad(!slices.Contains([]v1.ServiceExternalTrafficPolicy{"", "Cluster", "Local"}, spec.ExternalTrafficPolicy),
			"externalTrafficPolicy %q", spec.ExternalTrafficPolicy)
	} else {
		bad(spec.ExternalTrafficPolicy != "", "externalTrafficPolicy on a service not externally accessible")
	}
	needsHC := spec.Type == v1.ServiceTypeLoadBalancer && spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	bad(spec.HealthCheckNodePort != 0 && !needsHC, "healthCheckNodePort without LoadBalancer/Local")
	bad(spec.HealthCheckNodePort != 0 && (spec.HealthCheckNodePort < 30000 || spec.HealthCheckNodePort > 32767), "healthCheckNodePort %d", spec.HealthCheckNodePort)
	if itp := spec.InternalTrafficPolicy; itp != nil {
		bad(*itp != v1.ServiceInternalTrafficPolicyCluster && *itp != v1.ServiceInternalTrafficPolicyLocal, "internalTrafficPolicy %q", *itp)
	}
	switch spec.SessionAffinity {
	case v1.ServiceAffinityNone, "":
		bad(spec.SessionAffinityConfig != nil, "affinity config with affinity None")
	case v1.ServiceAffinityClientIP:
		if c := spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
			to := *c.ClientIP.TimeoutSeconds
			bad(to < 1 || to > 86400, "affinity timeout %d", to)
		}
	default:
		bad(true, "sessionAffinity %q", spec.SessionAffinity)
	}
	if td := spec.TrafficDistribution; td != nil {
		bad(!slices.Contains([]string{"PreferClose", "PreferSameZone", "PreferSameNode"}, *td), "trafficDistribution %q", *td)
	}
	fams, policy := spec.IPFamilies, ptr.Deref(spec.IPFamilyPolicy, "")
	bad(len(fams) > 2 || (len(fams) == 2 && fams[0] == fams[1]), "ipFamilies %v", fams)
	bad(len(fams) == 2 && (policy == "" || policy == v1.IPFamilyPolicySingleStack), "two families with policy %q", policy)
	if !o.DualStack {
		bad(slices.Contains(fams, v1.IPv6Protocol), "IPv6 family on a single-stack cluster")
		bad(policy != "" && policy != v1.IPFamilyPolicySingleStack, "policy %s on a single-stack cluster", policy)
	}
	return ps
}

func checkLoadBalancer(svc *v1.Service) []string {
	var ps []string
	bad := func(cond bool, format string, args ...any) {
		if cond {
			ps = append(ps, fmt.Sprintf(format, args...))
		}
	}
	spec := &svc.Spec
	lb := spec.Type == v1.ServiceTypeLoadBalancer
	bad(!lb && len(spec.LoadBalancerSourceRanges) > 0, "source ranges on %s", spec.Type)
	bad(!lb && spec.AllocateLoadBalancerNodePorts != nil, "allocateLoadBalancerNodePorts on %s", spec.Type)
	bad(!lb && len(svc.Status.LoadBalancer.Ingress) > 0, "ingress on %s", spec.Type)
	for i, r := range spec.LoadBalancerSourceRanges {
		errs := validation.IsValidCIDRForLegacyField(field.NewPath("r").Index(i), strings.TrimSpace(r), true, nil)
		bad(len(errs) > 0, "source range %q: %v", r, errs)
	}
	for _, ing := range svc.Status.LoadBalancer.Ingress {
		if ing.IP != "" {
			bad(len(validation.IsValidIPForLegacyField(field.NewPath("ip"), ing.IP, true, nil)) > 0, "ingress IP %q", ing.IP)
		}
		bad(ing.IPMode != nil && ing.IP == "", "ipMode without ip")
		if ing.IPMode != nil {
			bad(*ing.IPMode != v1.LoadBalancerIPModeVIP && *ing.IPMode != v1.LoadBalancerIPModeProxy, "ipMode %q", *ing.IPMode)
		}
		if ing.Hostname != "" {
			_, err := netip.ParseAddr(ing.Hostname)
			bad(len(validation.IsDNS1123Subdomain(ing.Hostname)) > 0 || err == nil, "ingress hostname %q", ing.Hostname)
		}
		bad(ing.IP == "" && ing.Hostname == "", "empty ingress entry")
	}
	return ps
}

// checkIP applies the legacy-field rules (strict) and ValidateEndpointIP's exclusions; with
// canonical, the strict rules of EndpointSlice IPv6 addresses.
func checkIP(ip string, canonical bool) []string {
	var errs field.ErrorList
	if canonical {
		errs = validation.IsValidIP(field.NewPath("ip"), ip)
	} else {
		errs = validation.IsValidIPForLegacyField(field.NewPath("ip"), ip, true, nil)
	}
	if len(errs) > 0 {
		return []string{fmt.Sprintf("IP %q: %v", ip, errs)}
	}
	a := netip.MustParseAddr(ip)
	if a.IsUnspecified() || a.IsLoopback() || a.IsLinkLocalUnicast() || a.IsLinkLocalMulticast() {
		return []string{fmt.Sprintf("IP %q is special", ip)}
	}
	return nil
}

// checkServiceUpdate checks what an update may not change: a healthCheckNodePort that
// stays needed, whether the Service is headless, and (stricter than the apiserver, which
// allows adding or dropping a secondary family) its IP families and policy.
func checkServiceUpdate(old, svc *v1.Service) []string {
	var ps []string
	needsHC := func(s *v1.Service) bool {
		return s.Spec.Type == v1.ServiceTypeLoadBalancer && s.Spec.ExternalTrafficPolicy == v1.ServiceExternalTrafficPolicyLocal
	}
	if needsHC(old) && needsHC(svc) && svc.Spec.HealthCheckNodePort != 0 && svc.Spec.HealthCheckNodePort != old.Spec.HealthCheckNodePort {
		ps = append(ps, "healthCheckNodePort changed")
	}
	if (old.Spec.ClusterIP == v1.ClusterIPNone) != (svc.Spec.ClusterIP == v1.ClusterIPNone) {
		ps = append(ps, "headless changed")
	}
	en := v1.ServiceTypeExternalName
	if old.Spec.Type != en && svc.Spec.Type != en && (!slices.Equal(old.Spec.IPFamilies, svc.Spec.IPFamilies) ||
		!reflect.DeepEqual(old.Spec.IPFamilyPolicy, svc.Spec.IPFamilyPolicy)) {
		ps = append(ps, "IP families or policy changed") // the generator keeps them; the primary may not change
	}
	return ps
}

func checkSlice(es *discovery.EndpointSlice) []string {
	var ps []string
	bad := func(cond bool, format string, args ...any) {
		if cond {
			ps = append(ps, fmt.Sprintf(format, args...))
		}
	}
	bad(len(validation.IsDNS1123Subdomain(es.Name)) > 0, "slice name %q", es.Name)
	bad(len(validation.IsValidLabelValue(es.Labels[discovery.LabelServiceName])) > 0, "service-name label %q", es.Labels[discovery.LabelServiceName])
	bad(es.Labels[discovery.LabelManagedBy] != ManagedBy, "managed-by label %q", es.Labels[discovery.LabelManagedBy])
	bad(len(es.Endpoints) > 1000, "%d endpoints", len(es.Endpoints))
	names := map[string]bool{}
	for _, p := range es.Ports {
		n := ptr.Deref(p.Name, "")
		bad(n != "" && len(validation.IsDNS1123Label(n)) > 0, "slice port name %q", n)
		bad(names[n], "duplicate slice port name %q", n)
		names[n] = true
		if p.Protocol != nil {
			bad(!slices.Contains([]v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP}, *p.Protocol), "slice protocol %q", *p.Protocol)
		}
	}
	for _, ep := range es.Endpoints {
		bad(len(ep.Addresses) == 0 || len(ep.Addresses) > 100, "%d addresses", len(ep.Addresses))
		for _, a := range ep.Addresses {
			switch es.AddressType {
			case discovery.AddressTypeIPv4:
				ps = append(ps, checkIP(a, false)...)
				bad(!strings.Contains(a, ".") || strings.Contains(a, ":"), "%q in an IPv4 slice", a)
			case discovery.AddressTypeIPv6:
				ps = append(ps, checkIP(a, true)...)
				bad(!strings.Contains(a, ":"), "%q in an IPv6 slice", a)
			case discovery.AddressTypeFQDN:
				bad(len(validation.IsFullyQualifiedDomainName(field.NewPath("a"), a)) > 0, "FQDN %q", a)
			default:
				bad(true, "addressType %q", es.AddressType)
			}
		}
		if ep.NodeName != nil {
			bad(len(validation.IsDNS1123Subdomain(*ep.NodeName)) > 0, "nodeName %q", *ep.NodeName)
		}
		if h := ep.Hints; h != nil {
			bad(len(h.ForZones) > 8 || len(h.ForNodes) > 8, "too many hints")
			zones := map[string]bool{}
			for _, z := range h.ForZones {
				bad(zones[z.Name] || len(validation.IsValidLabelValue(z.Name)) > 0, "zone hint %q", z.Name)
				zones[z.Name] = true
			}
		}
	}
	return ps
}

// checkState checks what spans objects: explicit node ports are not shared between
// Services, and every copy of an endpoint address agrees (see the package doc).
func (c *store) checkState() []string {
	var ps []string
	ports := map[int32]svcKey{}
	for k, svc := range c.svcs {
		used := []int32{svc.Spec.HealthCheckNodePort}
		for _, p := range svc.Spec.Ports {
			used = append(used, p.NodePort)
		}
		for _, p := range used {
			if other, ok := ports[p]; ok && p != 0 && other != k {
				ps = append(ps, fmt.Sprintf("node port %d used by %s and %s", p, k, other))
			}
			ports[p] = k
		}
	}
	first := map[string]discovery.Endpoint{}
	for _, es := range c.slices {
		for _, ep := range es.Endpoints {
			a := ep.Addresses[0]
			if f, ok := first[a]; ok && !apiequality.Semantic.DeepEqual(f, ep) {
				ps = append(ps, fmt.Sprintf("two copies of endpoint %s differ: %+v and %+v", a, f, ep))
			}
			first[a] = ep
		}
	}
	return ps
}

// countState counts the features that only the whole state shows.
func (c *store) countState(counts map[string]int) {
	perService := map[svcKey]int{}
	owners := map[string]map[svcKey]bool{}
	for _, es := range c.slices {
		k := svcKey{es.Namespace, es.Labels[discovery.LabelServiceName]}
		perService[k]++
		svc := c.svcs[k]
		if svc == nil {
			counts["state/orphan-slice"]++
		} else {
			for _, p := range es.Ports {
				if !slices.ContainsFunc(svc.Spec.Ports, func(sp v1.ServicePort) bool { return sp.Name == ptr.Deref(p.Name, "") }) {
					counts["slice/port-unmatched"]++
				}
			}
		}
		inSlice := map[string]bool{}
		for _, ep := range es.Endpoints {
			a := ep.Addresses[0]
			if inSlice[a] {
				counts["state/duplicate-within-slice"]++
				continue
			}
			inSlice[a] = true
			if owners[a] == nil {
				owners[a] = map[svcKey]bool{}
			}
			if owners[a][k] {
				counts["state/duplicate-across-slices"]++
			}
			owners[a][k] = true
		}
	}
	for _, n := range perService {
		if n > 1 {
			counts["state/slices-per-service>1"]++
		}
	}
	for _, o := range owners {
		if len(o) > 1 {
			counts["state/endpoint-in-two-services"]++
		}
	}
}
