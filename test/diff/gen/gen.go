package gen

import (
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ManagedBy is the value of the endpointslice.kubernetes.io/managed-by label on every
// generated EndpointSlice; the EndpointSlice controller leaves such slices alone.
const ManagedBy = "kproxy-diff"

// Options describe the cluster the generated objects go to. The zero value works: see
// withDefaults for what empty fields become.
type Options struct {
	// ThisNode is the node whose rules are compared (endpoints on it are "local").
	// Empty: the first of NodeNames, or "node-1".
	ThisNode string
	// NodeNames are the nodes endpoints sit on; ThisNode is added if missing.
	NodeNames []string
	// Zones are the topology zones of endpoints and zone hints. Empty: zone-a, zone-b.
	Zones []string
	// DualStack says the apiserver serves both families (IPv4 primary). When false every
	// Service is IPv4 single-stack.
	DualStack bool
	// Namespaces are created beforehand by the harness. Empty: "default".
	Namespaces []string
	// MaxServices bounds the live Services of a sequence (and the initial population).
	// Zero or less: 10.
	MaxServices int
}

// Op is one desired object. Exactly one of Service and Slice is set. For Delete only the
// namespace and name matter. For a create or update the object is the whole desired state:
// the harness creates it if absent, otherwise updates it, keeping what the server allocated
// (clusterIP/clusterIPs, nodePorts, healthCheckNodePort, resourceVersion) where the desired
// object leaves it empty, and writes Service status.loadBalancer through the status
// subresource. A desired ExternalName Service has no clusterIP on purpose: copying the old
// one is harmless (the apiserver drops an unchanged clusterIP when the type stops needing
// it) but not needed.
type Op struct {
	Delete  bool
	Service *v1.Service
	Slice   *discovery.EndpointSlice
}

// Step is a named batch of Ops applied together, e.g. "add 3 services" or
// "scale ns/x slice x-abcde to 0". The harness compares the two proxies after each step.
type Step struct {
	Name string
	Ops  []Op
	// RelabelsSlice is set when the step changes a slice's kubernetes.io/service-name
	// label. Upstream files a slice's endpoints under the service its label names and never
	// takes them from the old one (pkg/proxy/endpointslicecache.go), so until it restarts it
	// keeps serving the old service with them; kproxy moves them, on purpose (issue 8). The
	// harness compares such a step against an upstream started from scratch.
	RelabelsSlice bool
}

// Sequence is the whole input of one differential run.
type Sequence struct {
	Seed  uint64
	Steps []Step
}

// NewSequence returns steps (at least one) steps generated from seed. The first step
// creates the initial population of 1..MaxServices Services with their slices; every later
// step mutates what exists. Every step has at least one Op.
func NewSequence(seed uint64, steps int, o Options) Sequence {
	g := newGenerator(seed, o)
	seq := Sequence{Seed: seed}
	seq.Steps = append(seq.Steps, g.populate())
	for len(seq.Steps) < steps {
		seq.Steps = append(seq.Steps, g.step())
	}
	return seq
}

// withDefaults fills the empty fields of o (see Options).
func (o Options) withDefaults() Options {
	o.NodeNames = slices.Clone(o.NodeNames)
	if o.ThisNode == "" {
		o.ThisNode = "node-1"
		if len(o.NodeNames) > 0 {
			o.ThisNode = o.NodeNames[0]
		}
	}
	if !slices.Contains(o.NodeNames, o.ThisNode) {
		o.NodeNames = append(o.NodeNames, o.ThisNode)
	}
	if len(o.Zones) == 0 {
		o.Zones = []string{"zone-a", "zone-b"}
	}
	if len(o.Namespaces) == 0 {
		o.Namespaces = []string{"default"}
	}
	if o.MaxServices <= 0 {
		o.MaxServices = 10
	}
	return o
}

// generator holds the desired state of the cluster (the model) and what was last emitted
// for each object, so that a step's Ops are exactly the objects it changed.
type generator struct {
	r *rand.Rand
	o Options

	svcs   []*svcModel   // live Services, in creation order
	slices []*sliceModel // live slices, in creation order; some may name no live Service

	eps     map[string]*epModel // per address (IP or FQDN): conditions, node, zone, hints
	v4, v6  []string            // addresses of eps by family, in creation order: reuse picks
	extIPs  []string            // external and LB IPs handed out so far: sharing picks
	deleted []svcKey            // names of deleted Services: recreation picks

	svcNames   map[svcKey]bool // live Service names
	sliceNames map[svcKey]bool // live slice names
	nodePorts  map[int32]bool  // explicit node ports ever written (never reused)

	emitted map[objKey]any // last emitted *v1.Service or *discovery.EndpointSlice
}

// svcKey is a namespace/name pair.
type svcKey struct{ ns, name string }

func (k svcKey) String() string { return k.ns + "/" + k.name }

// objKey names an emitted object; kind is "service" or "slice".
type objKey struct {
	kind string
	svcKey
}

func newGenerator(seed uint64, o Options) *generator {
	return &generator{
		// The second PCG word is fixed so that the seed alone picks the stream.
		r:          rand.New(rand.NewPCG(seed, 0x6b70726f78792d64)),
		o:          o.withDefaults(),
		eps:        map[string]*epModel{},
		svcNames:   map[svcKey]bool{},
		sliceNames: map[svcKey]bool{},
		nodePorts:  map[int32]bool{},
		emitted:    map[objKey]any{},
	}
}

// populate creates the initial 1..MaxServices Services.
func (g *generator) populate() Step {
	n := 1 + g.r.IntN(g.o.MaxServices)
	for range n {
		g.addService()
	}
	return Step{Name: verbAdd + " " + plural(n, "service"), Ops: g.flush()}
}

// step applies one mutation (or, now and then, several) and returns its Ops. A mutation
// that does not apply (no Service to delete) or changes nothing is retried with another.
func (g *generator) step() Step {
	var names []string
	n := 1
	if g.chance(0.08) {
		n = 2 + g.r.IntN(2)
	}
	for len(names) < n {
		if name, ok := g.mutate(); ok {
			names = append(names, name)
		}
	}
	ops := g.flush()
	for len(ops) == 0 {
		// The mutations ended where they started (a value set to what it was): go on
		// until something changes. Some mutation always applies: adding a Service when
		// there is none, toggling a policy when there is one.
		if name, ok := g.mutate(); ok {
			names = append(names, name)
			ops = g.flush()
		}
	}
	relabels := slices.ContainsFunc(names, func(n string) bool { return strings.HasPrefix(n, verbRelabel) })
	return Step{Name: strings.Join(names, "; "), Ops: ops, RelabelsSlice: relabels}
}

// flush renders the model, compares it with what was emitted before and returns the Ops
// for the difference: Service creates and updates, then slice creates and updates, then
// slice deletes, then Service deletes, each group sorted by namespace/name.
func (g *generator) flush() []Op {
	want := map[objKey]any{}
	for _, s := range g.svcs {
		want[objKey{"service", s.key()}] = s.render()
	}
	for _, s := range g.slices {
		want[objKey{"slice", s.key()}] = g.renderSlice(s)
	}
	var upsert, del []objKey
	for k, obj := range want {
		if old, ok := g.emitted[k]; !ok || !apiequality.Semantic.DeepEqual(old, obj) {
			upsert = append(upsert, k)
		}
	}
	for k := range g.emitted {
		if _, ok := want[k]; !ok {
			del = append(del, k)
		}
	}
	sortKeys(upsert, "service")
	sortKeys(del, "slice")
	var ops []Op
	for _, k := range upsert {
		ops = append(ops, opFor(k, want[k], false))
	}
	for _, k := range del {
		ops = append(ops, opFor(k, nil, true))
	}
	g.emitted = want
	return ops
}

// sortKeys orders keys of kind first, then the other kind, each by namespace and name.
func sortKeys(keys []objKey, first string) {
	slices.SortFunc(keys, func(a, b objKey) int {
		if a.kind != b.kind {
			if a.kind == first {
				return -1
			}
			return 1
		}
		return strings.Compare(a.String(), b.String())
	})
}

// opFor builds the Op for key; obj is the desired object (nil for a delete).
func opFor(k objKey, obj any, del bool) Op {
	meta := metav1.ObjectMeta{Namespace: k.ns, Name: k.name}
	switch {
	case del && k.kind == "service":
		return Op{Delete: true, Service: &v1.Service{ObjectMeta: meta}}
	case del:
		return Op{Delete: true, Slice: &discovery.EndpointSlice{ObjectMeta: meta}}
	case k.kind == "service":
		return Op{Service: obj.(*v1.Service).DeepCopy()}
	default:
		return Op{Slice: obj.(*discovery.EndpointSlice).DeepCopy()}
	}
}

// chance reports true with probability p.
func (g *generator) chance(p float64) bool { return g.r.Float64() < p }

// pick returns a random element of xs, which must not be empty.
func pick[T any](r *rand.Rand, xs []T) T { return xs[r.IntN(len(xs))] }

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return strconv.Itoa(n) + " " + what + "s"
}
