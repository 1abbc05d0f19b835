package main

import (
	"fmt"
	"net/netip"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// The synthetic cluster's shape. Every object is a pure function of its index, so the
// child process can feed a proxier without keeping the objects (its RSS is then the
// proxier's alone) and rebuild any object later to change or delete it.
const (
	// nodeName is the node the proxier runs on; endpoints are spread over nodeCount nodes,
	// this one included.
	nodeName  = "node-1"
	nodeCount = 100
	// maxSliceEndpoints is the EndpointSlice controller's default cut (--max-endpoints-per-slice).
	maxSliceEndpoints = 100
	// firstNodePort is the start of the default node port range (30000-32767).
	firstNodePort = 30000
	lastNodePort  = 32767
	// Addresses of objects the partial syncs add, apart from the cluster's own.
	changedEndpointBase = 200 // 10.200.0.0/16: replacement endpoints
	newEndpointBase     = 220 // 10.220.0.0/16 and up: endpoints of added services
)

var (
	nodeIP      = netip.MustParseAddr("192.0.2.1")
	clusterCIDR = netip.MustParsePrefix("10.0.0.0/8")
)

// shape is one cluster size: services, each with endpoints ready endpoints.
type shape struct {
	Services  int `json:"services"`
	Endpoints int `json:"endpoints"`
}

func (s shape) String() string { return fmt.Sprintf("%dx%d", s.Services, s.Endpoints) }

// service is the i-th Service: namespace ns<i%100>, one TCP port 80 -> 8080, a cluster IP
// in 172.16.0.0/12 and, for every fourth service while the default range lasts, a node
// port (so the payload has KUBE-NODEPORTS and KUBE-EXT chains, as real clusters do).
func service(i int) *v1.Service {
	ns, name := serviceName(i)
	return newService(ns, name, clusterIP(i), nodePort(i))
}

func serviceName(i int) (namespace, name string) {
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

// slices are the EndpointSlices of the i-th service of a cluster of shape s: s.Endpoints
// endpoints at 10.1.0.0 and up (numbered across the cluster), cut into slices of
// maxSliceEndpoints.
func (s shape) slices(i int) []*discovery.EndpointSlice {
	ns, name := serviceName(i)
	first := i * s.Endpoints
	addrs := make([]netip.Addr, s.Endpoints)
	for e := range addrs {
		addrs[e] = endpointIP(1, first+e)
	}
	return newSlices(ns, name, addrs)
}

// endpointIP is the n-th address of 10.<base>.0.0 and up.
func endpointIP(base, n int) netip.Addr {
	return netip.AddrFrom4([4]byte{10, byte(base + n>>16), byte(n >> 8), byte(n)})
}

func newSlices(namespace, service string, addrs []netip.Addr) []*discovery.EndpointSlice {
	var slices []*discovery.EndpointSlice
	for start := 0; start < len(addrs); start += maxSliceEndpoints {
		end := min(start+maxSliceEndpoints, len(addrs))
		s := &discovery.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Namespace: namespace,
				Name:      fmt.Sprintf("%s-%d", service, start/maxSliceEndpoints),
				Labels:    map[string]string{discovery.LabelServiceName: service},
			},
			AddressType: discovery.AddressTypeIPv4,
			Ports: []discovery.EndpointPort{{
				Name: ptr.To("http"), Protocol: ptr.To(v1.ProtocolTCP), Port: ptr.To[int32](8080),
			}},
		}
		for _, a := range addrs[start:end] {
			// The node is a function of the address, so it stays put when objects are rebuilt.
			node := fmt.Sprintf("node-%d", int(a.As4()[3])%nodeCount+1)
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

// addedService is the k-th service a partial sync adds: namespace "bench", cluster IP in
// 172.31.0.0/16 (above any generated cluster's), endpoints as many as the cluster's
// services have, in 10.220.0.0 and up.
func (s shape) addedService(k int) (*v1.Service, []*discovery.EndpointSlice) {
	name := fmt.Sprintf("added%d", k)
	ip := netip.AddrFrom4([4]byte{172, 31, byte(k >> 8), byte(k)}).String()
	addrs := make([]netip.Addr, s.Endpoints)
	for e := range addrs {
		addrs[e] = endpointIP(newEndpointBase, k*s.Endpoints+e)
	}
	return newService("bench", name, ip, 0), newSlices("bench", name, addrs)
}

// changedSlice returns the first EndpointSlice of service i before and after its first
// endpoint moves to a new address (the k-th change): the update a rolling restart of one
// pod makes.
func (s shape) changedSlice(i, k int) (before, after *discovery.EndpointSlice) {
	before = s.slices(i)[0]
	after = before.DeepCopy()
	after.Endpoints[0].Addresses = []string{endpointIP(changedEndpointBase, k).String()}
	return before, after
}
