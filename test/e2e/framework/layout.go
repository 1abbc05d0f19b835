package framework

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Layout is a running cluster's topology, as hack/cluster-up.sh wrote it to
// $STATE_DIR/cluster.json.
type Layout struct {
	Name           string `json:"name"`
	StateDir       string `json:"stateDir"`
	ServiceCIDR    string `json:"serviceCIDR"`
	ClusterCIDR    string `json:"clusterCIDR"`
	APIServer      string `json:"apiServer"`
	KProxyBackend  string `json:"kproxyBackend"`
	KProxyIdentity string `json:"kproxyIdentity"`
	ControlPlane   Host   `json:"controlPlane"`
	// External is the client outside the pod network; it runs kpx-echo as "external" too.
	External Host   `json:"external"`
	Nodes    []Node `json:"nodes"`
}

// Host is a network namespace with one address on the nodes' LAN.
type Host struct {
	Name  string `json:"name"`
	NetNS string `json:"netns"`
	IP    string `json:"ip"`
}

// Node is a simulated node: a forwarding namespace with a pod bridge, running kproxy.
type Node struct {
	Name       string    `json:"name"`
	NetNS      string    `json:"netns"`
	IP         string    `json:"ip"`
	Zone       string    `json:"zone"`
	PodCIDR    string    `json:"podCIDR"`
	PodGateway string    `json:"podGateway"` // the node's address on its pod bridge
	Pods       []PodSlot `json:"pods"`
}

// PodSlot is a pod namespace on a node, running kpx-echo -name Name.
type PodSlot struct {
	Name  string `json:"name"`
	NetNS string `json:"netns"`
	IP    string `json:"ip"`
	Node  string `json:"-"`
}

// LoadLayout reads stateDir/cluster.json.
func LoadLayout(stateDir string) (*Layout, error) {
	data, err := os.ReadFile(filepath.Join(stateDir, "cluster.json"))
	if err != nil {
		return nil, err
	}
	var l Layout
	if err := json.Unmarshal(data, &l); err != nil {
		return nil, fmt.Errorf("parsing %s/cluster.json: %w", stateDir, err)
	}
	for i := range l.Nodes {
		for j := range l.Nodes[i].Pods {
			l.Nodes[i].Pods[j].Node = l.Nodes[i].Name
		}
	}
	return &l, nil
}

// Node returns the node called name; it panics on an unknown name, a bug in the test.
func (l *Layout) Node(name string) Node {
	for _, n := range l.Nodes {
		if n.Name == name {
			return n
		}
	}
	panic(fmt.Sprintf("framework: cluster %s has no node %q", l.Name, name))
}

// Pod returns the pod slot called name (such as "n1-p2"); it panics on an unknown name.
func (l *Layout) Pod(name string) PodSlot {
	if p, ok := l.slot(name); ok {
		return p
	}
	panic(fmt.Sprintf("framework: cluster %s has no pod slot %q", l.Name, name))
}

func (l *Layout) slot(name string) (PodSlot, bool) {
	for _, n := range l.Nodes {
		for _, p := range n.Pods {
			if p.Name == name {
				return p, true
			}
		}
	}
	return PodSlot{}, false
}

// Kubeconfig is the admin kubeconfig (user kpx-admin, group system:masters).
func (l *Layout) Kubeconfig() string { return filepath.Join(l.StateDir, "admin.kubeconfig") }
