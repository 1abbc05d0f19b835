// Package integration drives the real kproxy pipeline (proxier -> tracker -> rules ->
// iptables-restore) against the real iptables binaries of both backends and checks the
// result with real traffic.
//
// Every test builds a throwaway topology of network namespaces (internal/netnstest):
//
//	client 192.0.2.10 ---- 192.0.2.1   node   10.244.1.1 ---- 10.244.1.2 pod1
//	                         198.51.100.1     10.244.2.1 ---- 10.244.2.2 pod2
//	                              |
//	                       198.51.100.2 gw (a dead end: no forwarding, no routes)
//
// kproxy's rules are applied in the node namespace, which forwards between the others.
// The client is an "external" host outside the pod network 10.244.0.0/16. The gw
// namespace stands for the node's default gateway: a real node has a route to every
// destination, so packets for a cluster IP without endpoints reach the FORWARD chain
// (where kproxy rejects them) instead of failing the route lookup first. Nothing routes
// out of the namespaces, and the root namespace is never touched.
//
// The proxier runs as node "node-1": endpoints with that nodeName are local, which
// traffic-policy tests use. TestIPv6 builds the same topology in IPv6 (ipv6_test.go),
// with duplicate address detection off so addresses are usable at once.
//
// Echo servers run in-process inside the pod namespaces and answer with the pod's name
// and the source address they saw, so tests can assert both load balancing and
// masquerading. The tests need root and skip without it, or without a backend's
// binaries.
package integration
