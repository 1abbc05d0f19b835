package integration

import (
	"testing"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// TestHairpin: a pod that is the only endpoint of a service reaches itself through the
// service's cluster IP (TCP and UDP) and node port. Its packets leave the node by the
// link they came in on, masqueraded: the pod sees the node's address on its link, so
// its answer goes back through the node to be un-NATed. Were the source left alone, the
// pod would answer itself directly from its own address, and the client socket, talking
// to the cluster IP, would never accept the answer.
func TestHairpin(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 1)
		pod1 := c.pods[0]
		pod1.serve(t, 8080, 5353)
		k := newKproxy(t, c, backend)
		ports := []port{httpPort.withNodePort(30070), dnsPort}
		k.load(service("self", "172.30.0.70", ports...), endpointSlice("self", ports, pod1))
		k.sync(t)

		for _, tc := range []struct{ network, addr string }{
			{"tcp", "172.30.0.70:80"},
			{"udp", "172.30.0.70:53"},
			{"tcp", hostPort(nodeAddr.String(), 30070)},
		} {
			replies := exchanges(t, pod1.ns, tc.network, tc.addr, 5, nil)
			for _, r := range replies {
				if r.pod != pod1.name || r.src.Addr() != pod1.gateway {
					t.Errorf("%s %s from %s: got %s, want %s seeing the node's %s", tc.network, tc.addr, pod1.name, r, pod1.name, pod1.gateway)
					break
				}
			}
		}
	})
}
