// Package debugstate is the document of kproxy's debug endpoint (--debug-endpoint, on the
// metrics address): what the daemon last programmed, per IP family, so that
// `kproxy diagnose` compares the node with the truth rather than a re-derivation from the
// API. The daemon writes it (pkg/app); diagnose reads it.
package debugstate

import "time"

// Path is the endpoint's path on the metrics address.
const Path = "/debug/kproxy/state"

// State is the debug endpoint's JSON document: what this kproxy last programmed,
// so that `kproxy diagnose` compares the kernel with the truth rather than with a
// re-derivation from the API.
type State struct {
	Node    string `json:"node"`
	Backend string `json:"backend,omitempty"`
	// Families has one entry per proxied IP family, primary first; empty until the
	// proxiers exist.
	Families []Family `json:"families"`
}

// Family is one IP family's last successful sync.
type Family struct {
	Family string `json:"family"`
	// Synced is false until the first successful sync; the fields below are then empty.
	Synced   bool      `json:"synced"`
	LastSync time.Time `json:"lastSync,omitzero"`
	// LastSyncFull says whether that sync was a full one.
	LastSyncFull bool `json:"lastSyncFull,omitempty"`
	// LocalhostNodePorts says whether node ports answer on loopback (IPv4), which
	// needs route_localnet.
	LocalhostNodePorts bool `json:"localhostNodePorts,omitempty"`
	// ServicePorts counts the service ports programmed.
	ServicePorts int `json:"servicePorts,omitempty"`
	// Rejected maps each Service left out because the kernel rejected its rules to the
	// line it rejected.
	Rejected map[string]string `json:"rejected,omitempty"`
	// Services are the service ports programmed, sorted by name, with their endpoints.
	Services []ServicePort `json:"services,omitempty"`
	// Rules is an iptables-restore payload of every rule kproxy's chains should hold
	// now (the jumps from the built-in chains are ensured outside it).
	Rules string `json:"rules,omitempty"`
}

// ServicePort is one service port as kproxy programmed it.
type ServicePort struct {
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
	Endpoints []Endpoint `json:"endpoints"`
}

// Endpoint is one endpoint with the conditions kproxy chose by.
type Endpoint struct {
	Address     string `json:"address"`
	Local       bool   `json:"local"`
	Ready       bool   `json:"ready"`
	Serving     bool   `json:"serving"`
	Terminating bool   `json:"terminating"`
}
