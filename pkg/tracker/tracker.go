// Package tracker turns Service and EndpointSlice events into immutable snapshots. Event
// handlers only record what changed (cheap, under a lock); the sync takes a Checkpoint,
// which applies the pending changes and says which services they touched, so a sync can
// rewrite only those services' chains.
package tracker

import (
	"maps"
	"reflect"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy-dev/kproxy/pkg/model"
)

// Changes describes what a Checkpoint applied.
type Changes struct {
	// Services whose ports or endpoints differ from the previous checkpoint.
	Services map[types.NamespacedName]bool
	// ServiceEvents and EndpointSliceEvents count the events folded into this checkpoint.
	ServiceEvents, EndpointSliceEvents int
	// TriggerTimes are the EndpointSlice last-change-trigger-times of the changes, for the
	// network-programming latency metric.
	TriggerTimes []time.Time
	// UDPEndpointsChanged reports an endpoint change on a service with a UDP port: stale
	// UDP conntrack entries may now point at endpoints that are gone.
	UDPEndpointsChanged bool
}

// Tracker keeps one IP family's view of services and their endpoints.
type Tracker struct {
	family   v1.IPFamily
	nodeName string
	invalid  Invalid
	started  time.Time

	mu sync.Mutex
	// Latest state, as the events left it; handlers compare against it to tell a real
	// change from a resync. Slices are filed by service, then slice name; sliceService
	// says where each slice (by namespace/name) is filed, so that a slice whose service
	// label changes leaves its old service, and a deletion finds it whatever its label.
	services     map[types.NamespacedName][]*model.ServicePort
	slices       map[types.NamespacedName]map[string]sliceEndpoints
	sliceService map[types.NamespacedName]types.NamespacedName
	// Services whose ports or slices changed since the last Checkpoint.
	changedServices  map[types.NamespacedName]bool
	changedEndpoints map[types.NamespacedName]bool
	triggerTimes     map[types.NamespacedName][]time.Time
	serviceEvents    int
	sliceEvents      int

	// Applied state, owned by Checkpoint (which runs on the sync goroutine only). snap
	// holds the same state by service port, as the render reads it; Checkpoint edits it
	// for the changed services only: rebuilding it inserted every service port on every
	// sync.
	appliedServices map[types.NamespacedName][]*model.ServicePort
	endpoints       map[types.NamespacedName]map[model.ServicePortName][]model.Endpoint
	snap            *model.Snapshot
}

// New returns an empty tracker for one family. Endpoints on nodeName are local. invalid is
// told about every skipped part of an object; trigger times older than started are
// ignored (they predate us).
func New(family v1.IPFamily, nodeName string, started time.Time, invalid Invalid) *Tracker {
	return &Tracker{
		family:           family,
		nodeName:         nodeName,
		invalid:          invalid,
		started:          started,
		services:         map[types.NamespacedName][]*model.ServicePort{},
		slices:           map[types.NamespacedName]map[string]sliceEndpoints{},
		sliceService:     map[types.NamespacedName]types.NamespacedName{},
		changedServices:  map[types.NamespacedName]bool{},
		changedEndpoints: map[types.NamespacedName]bool{},
		triggerTimes:     map[types.NamespacedName][]time.Time{},
		appliedServices:  map[types.NamespacedName][]*model.ServicePort{},
		endpoints:        map[types.NamespacedName]map[model.ServicePortName][]model.Endpoint{},
		snap:             &model.Snapshot{Services: map[model.ServicePortName]*model.ServicePort{}, Endpoints: map[model.ServicePortName][]model.Endpoint{}},
	}
}

// ServiceChanged records a Service add/update (svc set) or delete (deleted true). It
// reports whether a sync is needed: false when the service converts to what is already
// tracked (an informer resync, or a change to fields kproxy does not use).
func (t *Tracker) ServiceChanged(svc *v1.Service, deleted bool) bool {
	nn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	var ports []*model.ServicePort
	if !deleted {
		ports = convertService(svc, t.family, t.invalid)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.serviceEvents++
	if reflect.DeepEqual(t.services[nn], ports) {
		return false
	}
	if ports == nil {
		delete(t.services, nn)
	} else {
		t.services[nn] = ports
	}
	t.changedServices[nn] = true
	return true
}

// EndpointSliceChanged records an EndpointSlice add/update or delete. Slices of another
// address family are ignored. It reports whether a sync is needed: false when the slice
// converts to what is already tracked for it.
func (t *Tracker) EndpointSliceChanged(slice *discovery.EndpointSlice, deleted bool) bool {
	if slice.AddressType != discovery.AddressType(t.family) {
		return false
	}
	key := types.NamespacedName{Namespace: slice.Namespace, Name: slice.Name}
	svc, labelled := serviceOfSlice(slice)
	var eps sliceEndpoints
	switch {
	case deleted:
	case !labelled:
		t.invalid(KindEndpointSlice, key, ReasonNoServiceLabel, "")
	default:
		eps = convertSlice(slice, svc, t.family, t.nodeName, t.invalid)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sliceEvents++
	changed := false
	if old, tracked := t.sliceService[key]; tracked && (deleted || !labelled || old != svc) {
		// Deleted, or no longer labelled for that service: its endpoints leave with it.
		t.removeSlice(old, key)
		changed = true
	}
	if deleted || !labelled {
		return changed
	}
	if prev, tracked := t.slices[svc][key.Name]; tracked && reflect.DeepEqual(prev, eps) {
		return changed
	}
	if ts, ok := slice.Annotations[v1.EndpointsLastChangeTriggerTime]; ok {
		if tt, err := time.Parse(time.RFC3339Nano, ts); err == nil && tt.After(t.started) {
			t.triggerTimes[svc] = append(t.triggerTimes[svc], tt)
		}
	}
	if t.slices[svc] == nil {
		t.slices[svc] = map[string]sliceEndpoints{}
	}
	t.slices[svc][key.Name] = eps
	t.sliceService[key] = svc
	t.changedEndpoints[svc] = true
	return true
}

// removeSlice forgets a slice filed under svc. Callers hold mu.
func (t *Tracker) removeSlice(svc, key types.NamespacedName) {
	delete(t.slices[svc], key.Name)
	if len(t.slices[svc]) == 0 {
		delete(t.slices, svc)
	}
	delete(t.sliceService, key)
	t.changedEndpoints[svc] = true
	// Latency is measured from the change that triggered a programming; a removal ends
	// that service's pending measurements.
	delete(t.triggerTimes, svc)
}

// Pending reports how many services have unapplied service and endpoint changes.
func (t *Tracker) Pending() (services, endpoints int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.changedServices), len(t.changedEndpoints)
}

// Checkpoint applies the pending changes and returns a new immutable snapshot with what
// changed. It must be called from one goroutine at a time (the sync loop).
func (t *Tracker) Checkpoint() (*model.Snapshot, Changes) {
	t.mu.Lock()
	ch := Changes{Services: map[types.NamespacedName]bool{}, ServiceEvents: t.serviceEvents, EndpointSliceEvents: t.sliceEvents}
	ports := make(map[types.NamespacedName][]*model.ServicePort, len(t.changedServices))
	for nn := range t.changedServices {
		ports[nn] = t.services[nn]
	}
	// The per-service slice maps change under later events; the copies are ours. Their
	// values are never modified once converted.
	slicesOf := make(map[types.NamespacedName]map[string]sliceEndpoints, len(t.changedEndpoints))
	for nn := range t.changedEndpoints {
		slicesOf[nn] = maps.Clone(t.slices[nn])
	}
	triggerTimes := t.triggerTimes
	t.changedServices = map[types.NamespacedName]bool{}
	t.changedEndpoints = map[types.NamespacedName]bool{}
	t.triggerTimes = map[types.NamespacedName][]time.Time{}
	t.serviceEvents, t.sliceEvents = 0, 0
	t.mu.Unlock()

	for nn, p := range ports {
		if reflect.DeepEqual(t.appliedServices[nn], p) {
			continue
		}
		ch.Services[nn] = true
		// A service's ports are named after it (ServicePortName holds nn), so no other
		// service's entries are touched.
		for _, sp := range t.appliedServices[nn] {
			delete(t.snap.Services, sp.Name)
		}
		for _, sp := range p {
			t.snap.Services[sp.Name] = sp
		}
		if p == nil {
			delete(t.appliedServices, nn)
		} else {
			t.appliedServices[nn] = p
		}
	}
	for nn, slices := range slicesOf {
		var merged map[model.ServicePortName][]model.Endpoint
		if len(slices) > 0 {
			merged = mergeSlices(slices)
		}
		if reflect.DeepEqual(t.endpoints[nn], merged) || (len(t.endpoints[nn]) == 0 && len(merged) == 0) {
			continue
		}
		ch.Services[nn] = true
		ch.UDPEndpointsChanged = ch.UDPEndpointsChanged || hasUDP(t.endpoints[nn]) || hasUDP(merged)
		// Endpoints of a port the Service does not (or no longer) declare are kept: the
		// renderer only looks up ports that exist.
		for spn := range t.endpoints[nn] {
			delete(t.snap.Endpoints, spn)
		}
		maps.Copy(t.snap.Endpoints, merged)
		if len(merged) == 0 {
			delete(t.endpoints, nn)
		} else {
			t.endpoints[nn] = merged
		}
	}
	for nn, times := range triggerTimes {
		if ch.Services[nn] {
			ch.TriggerTimes = append(ch.TriggerTimes, times...)
		}
	}
	// A copy: callers keep snapshots past the next Checkpoint (the debug endpoint reads
	// the last applied one from another goroutine). Cloning a map copies its storage
	// whole, far cheaper than inserting every service port again.
	return &model.Snapshot{Services: maps.Clone(t.snap.Services), Endpoints: maps.Clone(t.snap.Endpoints)}, ch
}

func hasUDP(eps map[model.ServicePortName][]model.Endpoint) bool {
	for spn := range eps {
		if spn.Protocol == v1.ProtocolUDP {
			return true
		}
	}
	return false
}
