// Package synth is the synthetic cluster kproxy's benchmarks measure: N services of E
// endpoints each, every object a pure function of its index, so that a benchmark can feed
// a proxier (hack/bench) or an API server (hack/bench/daemon) without keeping the objects,
// and rebuild any object later to change or delete it.
package synth

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

const (
	// NodeName is the node the proxy runs on; endpoints are spread over NodeCount nodes,
	// this one included.
	NodeName  = "node-1"
	NodeCount = 100
	// MaxSliceEndpoints is the EndpointSlice controller's default cut (--max-endpoints-per-slice).
	MaxSliceEndpoints = 100
	// firstNodePort is the start of the default node port range (30000-32767).
	firstNodePort = 30000
	lastNodePort  = 32767
	// Addresses of objects the partial syncs add, apart from the cluster's own.
	ChangedEndpointBase = 200 // 10.200.0.0/16 and up: replacement endpoints
	newEndpointBase     = 220 // 10.220.0.0/16 and up: endpoints of added services
)

// Shape is one cluster size: Services, each with Endpoints ready endpoints.
type Shape struct {
	Services  int `json:"services"`
	Endpoints int `json:"endpoints"`
}

func (s Shape) String() string { return fmt.Sprintf("%dx%d", s.Services, s.Endpoints) }

// ParseShapes parses "1000x5,10kx5".
func ParseShapes(s string) ([]Shape, error) {
	var shapes []Shape
	for _, f := range strings.Split(s, ",") {
		svcs, eps, ok := strings.Cut(strings.TrimSpace(f), "x")
		sh := Shape{}
		var err1, err2 error
		sh.Services, err1 = parseCount(svcs)
		sh.Endpoints, err2 = parseCount(eps)
		if !ok || err1 != nil || err2 != nil || sh.Services < 1 || sh.Endpoints < 1 {
			return nil, fmt.Errorf("bad size %q: want SERVICESxENDPOINTS, such as 1000x5 or 10kx5", f)
		}
		// Addresses are generated in 10.1.0.0-10.199.255.255 and 172.16.0.0/12.
		if sh.Services*sh.Endpoints > 199<<16 || sh.Services > 15<<16 {
			return nil, fmt.Errorf("size %q is too large for the generated address ranges", f)
		}
		shapes = append(shapes, sh)
	}
	return shapes, nil
}

func parseCount(s string) (int, error) {
	mult := 1
	if n, ok := strings.CutSuffix(s, "k"); ok {
		s, mult = n, 1000
	}
	n, err := strconv.Atoi(s)
	return n * mult, err
}

// Service is the i-th Service: namespace ns<i%100>, one TCP port "http" 80 -> 8080, a
// cluster IP in 172.16.0.0/12 and, for every fourth service while the default range lasts,
// a node port (so the payload has KUBE-NODEPORTS and KUBE-EXT chains, as real clusters do).
func Service(i int) *v1.Service {
	ns, name := ServiceName(i)
	return newService(ns, name, clusterIP(i), nodePort(i))
}

// ServiceName is the namespace and name of the i-th Service.
func ServiceName(i int) (namespace, name string) {
	return fmt.Sprintf("ns%d", i%100), fmt.Sprintf("svc%d", i)
}

func clusterIP(i int) string {
	return netip.AddrFrom4([4]byte{172, byte(16 + i>>16), byte(i >> 8), byte(i)}).String()
}

func nodePort(i int) int32 {
	if i%4 != 0 || firstNodePort+i/4 > lastNodePort {
		return 0
	}
	return int32(firstNodePort + i/4)
}

func newService(namespace, name, ip string, nodePort int32) *v1.Service {
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  ip,
			ClusterIPs: []string{ip},
			IPFamilies: []v1.IPFamily{v1.IPv4Protocol},
			Ports: []v1.ServicePort{{
				Name: "http", Protocol: v1.ProtocolTCP, Port: 80, NodePort: nodePort,
			}},
		},
	}
	if nodePort != 0 {
		svc.Spec.Type = v1.ServiceTypeNodePort
	}
	return svc
}

// Slices are the EndpointSlices of the i-th service of a cluster of shape s: s.Endpoints
// endpoints at 10.1.0.0 and up (numbered across the cluster), cut into slices of
// MaxSliceEndpoints.
func (s Shape) Slices(i int) []*discovery.EndpointSlice {
	ns, name := ServiceName(i)
	first := i * s.Endpoints
	addrs := make([]netip.Addr, s.Endpoints)
	for e := range addrs {
		addrs[e] = EndpointIP(1, first+e)
	}
	return newSlices(ns, name, addrs)
}

// EndpointIP is the n-th address of 10.<base>.0.0 and up.
func EndpointIP(base, n int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(base + n>>16), byte(n >> 8), byte(n)})
}

func newSlices(namespace, service string, addrs []netip.Addr) []*discovery.EndpointSlice {
	var slices []*discovery.EndpointSlice
	for start := 0; start < len(addrs); start += MaxSliceEndpoints {
		end := min(start+MaxSliceEndpoints, len(addrs))
		s := &discovery.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: namespace,
				Name:      fmt.Sprintf("%s-%d", service, start/MaxSliceEndpoints),
				Labels:    map[string]string{discovery.LabelServiceName: service},
			},
			AddressType: discovery.AddressTypeIPv4,
			Ports: []discovery.EndpointPort{{
				Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](8080),
			}},
		}
		for _, a := range addrs[start:end] {
			// The node is a function of the address, so it stays put when objects are rebuilt.
			node := fmt.Sprintf("node-%d", int(a.As4()[3])%NodeCount+1)
			s.Endpoints = append(s.Endpoints, discovery.Endpoint{
				Addresses:  []string{a.String()},
				NodeName:   ptr.To(node),
				Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
			})
		}
		slices = append(slices, s)
	}
	return slices
}

// AddedService is the k-th service a partial sync adds: namespace "bench", cluster IP in
// 172.31.0.0/16 (above any generated cluster's), as many endpoints as the cluster's
// services have, in 10.220.0.0 and up.
func (s Shape) AddedService(k int) (*v1.Service, []*discovery.EndpointSlice) {
	name := fmt.Sprintf("added%d", k)
	ip := netip.AddrFrom4([4]byte{172, 31, byte(k >> 8), byte(k)}).String()
	addrs := make([]netip.Addr, s.Endpoints)
	for e := range addrs {
		addrs[e] = EndpointIP(newEndpointBase, k*s.Endpoints+e)
	}
	return newService("bench", name, ip, 0), newSlices("bench", name, addrs)
}

// ChangedSlice returns the first EndpointSlice of service i after its first endpoint
// moves to a new address, the k-th in 10.200.0.0 and up: the update a rolling
// restart of one pod makes.
func (s Shape) ChangedSlice(i, k int) *discovery.EndpointSlice {
	after := s.Slices(i)[0]
	after.Endpoints[0].Addresses = []string{EndpointIP(ChangedEndpointBase, k).String()}
	return after
}
