package proxier

import (
	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
)

// Fanout hands every event to each family's proxier; each keeps what concerns its family
// (its cluster IPs, its address type's EndpointSlices).
type Fanout []*Proxier

// OnServiceAdd implements sources.ServiceHandler.
func (f Fanout) OnServiceAdd(svc *v1.Service) {
	for _, p := range f {
		p.OnServiceAdd(svc)
	}
}

// OnServiceUpdate implements sources.ServiceHandler.
func (f Fanout) OnServiceUpdate(svc *v1.Service) {
	for _, p := range f {
		p.OnServiceUpdate(svc)
	}
}

// OnServiceDelete implements sources.ServiceHandler.
func (f Fanout) OnServiceDelete(svc *v1.Service) {
	for _, p := range f {
		p.OnServiceDelete(svc)
	}
}

// OnServicesSynced implements sources.ServiceHandler.
func (f Fanout) OnServicesSynced() {
	for _, p := range f {
		p.OnServicesSynced()
	}
}

// OnEndpointSliceAdd implements sources.EndpointSliceHandler.
func (f Fanout) OnEndpointSliceAdd(s *discovery.EndpointSlice) {
	for _, p := range f {
		p.OnEndpointSliceAdd(s)
	}
}

// OnEndpointSliceUpdate implements sources.EndpointSliceHandler.
func (f Fanout) OnEndpointSliceUpdate(s *discovery.EndpointSlice) {
	for _, p := range f {
		p.OnEndpointSliceUpdate(s)
	}
}

// OnEndpointSliceDelete implements sources.EndpointSliceHandler.
func (f Fanout) OnEndpointSliceDelete(s *discovery.EndpointSlice) {
	for _, p := range f {
		p.OnEndpointSliceDelete(s)
	}
}

// OnEndpointSlicesSynced implements sources.EndpointSliceHandler.
func (f Fanout) OnEndpointSlicesSynced() {
	for _, p := range f {
		p.OnEndpointSlicesSynced()
	}
}
