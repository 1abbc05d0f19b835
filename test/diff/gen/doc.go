// Package gen generates the inputs of the differential test: Services and EndpointSlices
// that kproxy and upstream kube-proxy both read from one real kube-apiserver, so that the
// iptables rules they write can be compared.
//
// NewSequence(seed, steps, options) is deterministic: the same seed and options always give
// the same Sequence (math/rand/v2 PCG; no map is ever iterated to make a choice). The
// generator keeps a model of the desired cluster state; each Step mutates the model (add or
// delete Services, change their type, policies, ports and load-balancer status, scale, flip
// and move endpoints, add, remove and relabel slices) and emits the objects that changed as
// Ops, declaratively: an Op holds the whole desired object, never a patch.
//
// What the harness does with an Op (see Op): create the object if it is absent, otherwise
// update it, keeping what the server allocated (clusterIP(s), nodePorts,
// healthCheckNodePort, resourceVersion) where the desired object leaves it empty, and write
// status.loadBalancer through the status subresource. The apiserver itself keeps those
// allocated values on an update that leaves them empty and drops them when a type change
// makes them meaningless (registry/core/service: patchAllocatedValues,
// dropTypeDependentFields), so copying them is a convenience, not a correctness need.
//
// The value space is what the v1.37 apiserver accepts, read from its validation
// (pkg/apis/core/validation, pkg/apis/discovery/validation) and the Service REST storage:
//   - Service names are DNS-1123 labels (RelaxedServiceNameValidation is GA and locked in
//     v1.37, so a name may start with a digit); port names are DNS-1123 labels, unique per
//     Service, and required once a Service has two ports.
//   - externalIPs, load-balancer ingress IPs and loadBalancerSourceRanges are "legacy"
//     fields: non-canonical IPv6 text ("2001:DB8::a", "2001:0db8::b") is accepted, leading
//     zeros in IPv4 octets and bits set past a CIDR's prefix are not (StrictIPCIDRValidation
//     is on by default). EndpointSlice IPv6 addresses must be canonical.
//   - ipFamilyPolicy left nil with two ipFamilies is refused, so the generator never writes
//     that; a selectorless headless Service with a nil policy becomes RequireDualStack.
//   - trafficDistribution accepts PreferClose, PreferSameZone and PreferSameNode.
//   - Explicit nodePorts come from the start of the range (30000-30085), the band the
//     allocator keeps for static picks, and are never reused within a sequence, so they do
//     not collide with the ports the apiserver allocates itself.
//
// Objects the apiserver refuses are dropped by the harness; the generator aims to produce
// none (the checks in gen_test.go mirror the validation rules above).
//
// Duplicate endpoints: an address may appear in several slices of one Service (overlapping
// slices, as during an EndpointSlice controller handover), twice in one slice, and in slices
// of different Services (one pod behind two Services). Every copy of an address carries the
// same conditions, nodeName, zone and hints, because the generator holds those per address
// (epModel) rather than per slice entry. This is deliberate: upstream kube-proxy
// (pkg/proxy/endpointslicecache.go addEndpoints) merges the slices of a Service by ranging
// over a Go map and keeps the first copy of an address unless a later one is not
// terminating, so two conflicting copies would make the oracle's rules depend on map order.
// Within one step the harness may apply the slices one by one, so copies can disagree
// transiently; they agree again once the whole step is applied.
//
// Corpus returns steps that create real-world Services (corpus/*.yaml, copied from the
// projects' published manifests) with generated EndpointSlices.
package gen
