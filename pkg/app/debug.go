package app

import (
	"cmp"
	"encoding/json"
	"net/http"
	"net/netip"
	"slices"
	"sync"

	"k8s.io/klog/v2"

	"github.com/kproxy-dev/kproxy/pkg/debugstate"
	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/proxier"
)

// debugEndpoint serves debugstate.State. The daemon starts serving before its proxiers exist
// (the probes must answer while it waits for the API server), so they are set later.
type debugEndpoint struct {
	node string

	mu       sync.RWMutex
	backend  string
	proxiers []*proxier.Proxier
}

func (d *debugEndpoint) setProxiers(backend string, proxiers []*proxier.Proxier) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.backend, d.proxiers = backend, proxiers
}

// state renders the document; each family's rules are rendered anew from its last
// applied inputs (pure, and as costly as a full render: this is a debugging aid).
func (d *debugEndpoint) state() debugstate.State {
	d.mu.RLock()
	defer d.mu.RUnlock()
	s := debugstate.State{Node: d.node, Backend: d.backend, Families: []debugstate.Family{}}
	for _, p := range d.proxiers {
		f := debugstate.Family{Family: string(p.Family())}
		if a := p.LastApplied(); a != nil {
			f.Synced, f.LastSync, f.LastSyncFull = true, a.At, a.Full
			f.ServicePorts = len(a.Request.Snapshot.Services)
			f.LocalhostNodePorts = a.Options.LocalhostNodePorts
			if len(a.Rejected) > 0 {
				f.Rejected = map[string]string{}
				for nn, line := range a.Rejected {
					f.Rejected[nn.String()] = line
				}
			}
			f.Services = debugServicePorts(a.Request.Snapshot)
			f.Rules = string(a.Expected().Payload())
		}
		s.Families = append(s.Families, f)
	}
	return s
}

func (d *debugEndpoint) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := json.MarshalIndent(d.state(), "", "  ")
	if err != nil {
		klog.FromContext(r.Context()).Error(err, "Encoding the debug state")
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	// A failed write means the client went away.
	_, _ = w.Write(append(body, '\n'))
}

// withDebugEndpoint adds the debug endpoint to the metrics server's handler.
func withDebugEndpoint(metricsHandler http.Handler, d *debugEndpoint) http.Handler {
	mux := http.NewServeMux()
	mux.Handle(debugstate.Path, d)
	mux.Handle("/", metricsHandler)
	return mux
}

// debugServicePorts lists snap's service ports, sorted by name, with their endpoints.
func debugServicePorts(snap *model.Snapshot) []debugstate.ServicePort {
	out := make([]debugstate.ServicePort, 0, len(snap.Services))
	for name, sp := range snap.Services {
		d := debugstate.ServicePort{
			Name: name.String(), Protocol: string(name.Protocol), Port: sp.Port, NodePort: sp.NodePort,
			ExternalIPs: addrStrings(sp.ExternalIPs), LoadBalancerIPs: addrStrings(sp.LoadBalancerVIPs),
			ExternalPolicyLocal: sp.ExternalPolicyLocal, InternalPolicyLocal: sp.InternalPolicyLocal,
			Endpoints: []debugstate.Endpoint{},
		}
		if sp.ClusterIP.IsValid() {
			d.ClusterIP = sp.ClusterIP.String()
		}
		for _, ep := range snap.Endpoints[name] {
			d.Endpoints = append(d.Endpoints, debugstate.Endpoint{Address: ep.String(), Local: ep.IsLocal,
				Ready: ep.Ready, Serving: ep.Serving, Terminating: ep.Terminating})
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b debugstate.ServicePort) int {
		return cmp.Compare(a.Name+"/"+a.Protocol, b.Name+"/"+b.Protocol)
	})
	return out
}

func addrStrings(addrs []netip.Addr) []string {
	var out []string
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}
