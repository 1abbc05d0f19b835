// Package tracker turns Service and EndpointSlice events into immutable snapshots. Event
// handlers only record what changed (cheap, under a lock); the sync takes a Checkpoint,
// which applies the pending changes and says which services they touched, so a sync can
// rewrite only those services' chains.
package tracker

import (
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
	// Pending events, applied at the next Checkpoint. A nil value records a deletion.
	pendingServices map[types.NamespacedName][]*model.ServicePort
	pendingSlices   map[types.NamespacedName]map[string]sliceEndpoints
	deletedSlices   map[types.NamespacedName]map[string]bool
	triggerTimes    map[types.NamespacedName][]time.Time
	serviceEvents   int
	sliceEvents     int

	// Applied state, owned by Checkpoint (which runs on the sync goroutine only).
	services  map[types.NamespacedName][]*model.ServicePort
	slices    map[types.NamespacedName]map[string]sliceEndpoints
	endpoints map[types.NamespacedName]map[model.ServicePortName][]model.Endpoint
}

// New returns an empty tracker for one family. Endpoints on nodeName are local. invalid is
// told about every skipped part of an object; trigger times older than started are
// ignored (they predate us).
func New(family v1.IPFamily, nodeName string, started time.Time, invalid Invalid) *Tracker {
	return &Tracker{
		family:          family,
		nodeName:        nodeName,
		invalid:         invalid,
		started:         started,
		pendingServices: map[types.NamespacedName][]*model.ServicePort{},
		pendingSlices:   map[types.NamespacedName]map[string]sliceEndpoints{},
		deletedSlices:   map[types.NamespacedName]map[string]bool{},
		triggerTimes:    map[types.NamespacedName][]time.Time{},
		services:        map[types.NamespacedName][]*model.ServicePort{},
		slices:          map[types.NamespacedName]map[string]sliceEndpoints{},
		endpoints:       map[types.NamespacedName]map[model.ServicePortName][]model.Endpoint{},
	}
}

// ServiceChanged records a Service add/update (svc set) or delete (deleted true). It
// reports whether a sync is needed.
func (t *Tracker) ServiceChanged(svc *v1.Service, deleted bool) bool {
	nn := types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
	var ports []*model.ServicePort
	if !deleted {
		ports = convertService(svc, t.family, t.invalid)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.serviceEvents++
	t.pendingServices[nn] = ports
	return true
}

// EndpointSliceChanged records an EndpointSlice add/update or delete. Slices of another
// address family are ignored. It reports whether a sync is needed.
func (t *Tracker) EndpointSliceChanged(slice *discovery.EndpointSlice, deleted bool) bool {
	if slice.AddressType != discovery.AddressType(t.family) {
		return false
	}
	svc, ok := serviceOfSlice(slice)
	if !ok {
		t.invalid(KindEndpointSlice, types.NamespacedName{Namespace: slice.Namespace, Name: slice.Name}, ReasonNoServiceLabel, "")
		return false
	}
	var eps sliceEndpoints
	if !deleted {
		eps = convertSlice(slice, svc, t.family, t.nodeName, t.invalid)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	t.sliceEvents++
	if deleted {
		// Latency is measured from the change that triggered a programming; a deletion
		// ends that service's pending measurements.
		delete(t.triggerTimes, svc)
		if t.deletedSlices[svc] == nil {
			t.deletedSlices[svc] = map[string]bool{}
		}
		t.deletedSlices[svc][slice.Name] = true
		delete(t.pendingSlices[svc], slice.Name)
		return true
	}
	if ts, ok := slice.Annotations[v1.EndpointsLastChangeTriggerTime]; ok {
		if tt, err := time.Parse(time.RFC3339Nano, ts); err == nil && tt.After(t.started) {
			t.triggerTimes[svc] = append(t.triggerTimes[svc], tt)
		}
	}
	if t.pendingSlices[svc] == nil {
		t.pendingSlices[svc] = map[string]sliceEndpoints{}
	}
	t.pendingSlices[svc][slice.Name] = eps
	delete(t.deletedSlices[svc], slice.Name)
	return true
}

// Pending reports how many services have unapplied service and endpoint changes.
func (t *Tracker) Pending() (services, endpoints int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	eps := len(t.pendingSlices)
	for svc := range t.deletedSlices {
		if _, ok := t.pendingSlices[svc]; !ok {
			eps++
		}
	}
	return len(t.pendingServices), eps
}

// Checkpoint applies the pending changes and returns a new immutable snapshot with what
// changed. It must be called from one goroutine at a time (the sync loop).
func (t *Tracker) Checkpoint() (*model.Snapshot, Changes) {
	t.mu.Lock()
	pendingServices, pendingSlices, deletedSlices, triggerTimes := t.pendingServices, t.pendingSlices, t.deletedSlices, t.triggerTimes
	ch := Changes{Services: map[types.NamespacedName]bool{}, ServiceEvents: t.serviceEvents, EndpointSliceEvents: t.sliceEvents}
	t.pendingServices = map[types.NamespacedName][]*model.ServicePort{}
	t.pendingSlices = map[types.NamespacedName]map[string]sliceEndpoints{}
	t.deletedSlices = map[types.NamespacedName]map[string]bool{}
	t.triggerTimes = map[types.NamespacedName][]time.Time{}
	t.serviceEvents, t.sliceEvents = 0, 0
	t.mu.Unlock()

	for nn, ports := range pendingServices {
		if reflect.DeepEqual(t.services[nn], ports) {
			continue
		}
		ch.Services[nn] = true
		if ports == nil {
			delete(t.services, nn)
		} else {
			t.services[nn] = ports
		}
	}

	touched := map[types.NamespacedName]bool{}
	for nn, names := range deletedSlices {
		for name := range names {
			delete(t.slices[nn], name)
		}
		touched[nn] = true
	}
	for nn, updates := range pendingSlices {
		if t.slices[nn] == nil {
			t.slices[nn] = map[string]sliceEndpoints{}
		}
		for name, eps := range updates {
			t.slices[nn][name] = eps
		}
		touched[nn] = true
	}
	for nn := range touched {
		var merged map[model.ServicePortName][]model.Endpoint
		if len(t.slices[nn]) == 0 {
			delete(t.slices, nn)
		} else {
			merged = mergeSlices(t.slices[nn])
		}
		if reflect.DeepEqual(t.endpoints[nn], merged) || (len(t.endpoints[nn]) == 0 && len(merged) == 0) {
			continue
		}
		ch.Services[nn] = true
		ch.UDPEndpointsChanged = ch.UDPEndpointsChanged || hasUDP(t.endpoints[nn]) || hasUDP(merged)
		if merged == nil {
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
	return t.snapshot(), ch
}

// snapshot copies the applied state into fresh maps. Values are shared: ServicePorts and
// endpoint slices are never modified after conversion.
func (t *Tracker) snapshot() *model.Snapshot {
	snap := &model.Snapshot{
		Services:  make(map[model.ServicePortName]*model.ServicePort, len(t.services)),
		Endpoints: map[model.ServicePortName][]model.Endpoint{},
	}
	for _, ports := range t.services {
		for _, p := range ports {
			snap.Services[p.Name] = p
		}
	}
	for _, byPort := range t.endpoints {
		for spn, eps := range byPort {
			// Endpoints of a port the Service does not (or no longer) declare are kept:
			// the renderer only looks up ports that exist.
			snap.Endpoints[spn] = eps
		}
	}
	return snap
}

func hasUDP(eps map[model.ServicePortName][]model.Endpoint) bool {
	for spn := range eps {
		if spn.Protocol == v1.ProtocolUDP {
			return true
		}
	}
	return false
}
