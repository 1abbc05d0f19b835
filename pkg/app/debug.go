package app

import (
	"cmp"
	"encoding/json"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"

	"k8s.io/klog/v2"

	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/proxier"
)

// debugStatePath is the debug endpoint's path on the metrics address (--debug-endpoint).
const debugStatePath = "/debug/kproxy/state"

// DebugState is the debug endpoint's JSON document: what this kproxy last programmed,
// so that `kproxy diagnose` compares the kernel with the truth rather than with a
// re-derivation from the API.
type DebugState struct {
	Node    string `json:"node"`
	Backend string `json:"backend,omitempty"`
	// Families has one entry per proxied IP family, primary first; empty until the
	// proxiers exist.
	Families []DebugFamily `json:"families"`
}

// DebugFamily is one IP family's last successful sync.
type DebugFamily struct {
	Family string `json:"family"`
	// Synced is false until the first successful sync; the fields below are then empty.
	Synced   bool      `json:"synced"`
	LastSync time.Time `json:"lastSync,omitzero"`
	// LastSyncFull says whether that sync was a full one.
	LastSyncFull bool `json:"lastSyncFull,omitempty"`
	// ServicePorts counts the service ports programmed.
	ServicePorts int `json:"servicePorts,omitempty"`
	// Rejected maps each Service left out because the kernel rejected its rules to the
	// line it rejected.
	Rejected map[string]string `json:"rejected,omitempty"`
	// Services are the service ports programmed, sorted by name, with their endpoints.
	Services []DebugServicePort `json:"services,omitempty"`
	// Rules is an iptables-restore payload of every rule kproxy's chains should hold
	// now (the jumps from the built-in chains are ensured outside it).
	Rules string `json:"rules,omitempty"`
}

// DebugServicePort is one service port as kproxy programmed it.
type DebugServicePort struct {
	// Name is "namespace/name:port", the text of the rules' comments.
	Name                string   `json:"name"`
	Protocol            string   `json:"protocol"`
	ClusterIP           string   `json:"clusterIP,omitempty"`
	Port                int32    `json:"port"`
	NodePort            int32    `json:"nodePort,omitempty"`
	ExternalIPs         []string `json:"externalIPs,omitempty"`
	LoadBalancerIPs     []string `json:"loadBalancerIPs,omitempty"`
	ExternalPolicyLocal bool     `json:"externalPolicyLocal,omitempty"`
	InternalPolicyLocal bool     `json:"internalPolicyLocal,omitempty"`
	// Endpoints are all the port's endpoints, whatever their conditions.
	Endpoints []DebugEndpoint `json:"endpoints"`
}

// DebugEndpoint is one endpoint with the conditions kproxy chose by.
type DebugEndpoint struct {
	Address     string `json:"address"`
	Local       bool   `json:"local"`
	Ready       bool   `json:"ready"`
	Serving     bool   `json:"serving"`
	Terminating bool   `json:"terminating"`
}

// debugEndpoint serves DebugState. The daemon starts serving before its proxiers exist
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
func (d *debugEndpoint) state() DebugState {
	d.mu.RLock()
	defer d.mu.RUnlock()
	s := DebugState{Node: d.node, Backend: d.backend, Families: []DebugFamily{}}
	for _, p := range d.proxiers {
		f := DebugFamily{Family: string(p.Family())}
		if a := p.LastApplied(); a != nil {
			f.Synced, f.LastSync, f.LastSyncFull = true, a.At, a.Full
			f.ServicePorts = len(a.Request.Snapshot.Services)
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
	mux.Handle(debugStatePath, d)
	mux.Handle("/", metricsHandler)
	return mux
}

// debugServicePorts lists snap's service ports, sorted by name, with their endpoints.
func debugServicePorts(snap *model.Snapshot) []DebugServicePort {
	out := make([]DebugServicePort, 0, len(snap.Services))
	for name, sp := range snap.Services {
		d := DebugServicePort{
			Name: name.String(), Protocol: string(name.Protocol), Port: sp.Port, NodePort: sp.NodePort,
			ExternalIPs: addrStrings(sp.ExternalIPs), LoadBalancerIPs: addrStrings(sp.LoadBalancerVIPs),
			ExternalPolicyLocal: sp.ExternalPolicyLocal, InternalPolicyLocal: sp.InternalPolicyLocal,
			Endpoints: []DebugEndpoint{},
		}
		if sp.ClusterIP.IsValid() {
			d.ClusterIP = sp.ClusterIP.String()
		}
		for _, ep := range snap.Endpoints[name] {
			d.Endpoints = append(d.Endpoints, DebugEndpoint{Address: ep.String(), Local: ep.IsLocal,
				Ready: ep.Ready, Serving: ep.Serving, Terminating: ep.Terminating})
		}
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b DebugServicePort) int { return cmp.Compare(a.Name+"/"+a.Protocol, b.Name+"/"+b.Protocol) })
	return out
}

func addrStrings(addrs []netip.Addr) []string {
	var out []string
	for _, a := range addrs {
		out = append(out, a.String())
	}
	return out
}
