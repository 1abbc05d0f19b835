package integration

import (
	"net"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/conntrack"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/proxier"
)

// udpSocket is a connected UDP socket opened in a namespace. It stays there for its
// whole life, so it can be used from any goroutine; every datagram it sends has the
// same source port, so the node's conntrack sees one flow.
type udpSocket struct {
	net.Conn
}

// dialUDP opens a connected UDP socket from ns to addr; it is closed when the test ends.
func dialUDP(t *testing.T, ns *netnstest.NS, addr string) *udpSocket {
	t.Helper()
	var c net.Conn
	if err := ns.Do(func() error {
		var err error
		c, err = net.Dial("udp", addr)
		return err
	}); err != nil {
		t.Fatalf("UDP socket from %s to %s: %v", ns.Name(), addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return &udpSocket{c}
}

// ask sends one datagram and returns the answer, which must come within exchangeTimeout.
func (s *udpSocket) ask() (reply, error) {
	if err := s.SetDeadline(time.Now().Add(exchangeTimeout)); err != nil {
		return reply{}, err
	}
	if _, err := s.Write([]byte("ping\n")); err != nil {
		return reply{}, err
	}
	buf := make([]byte, 512)
	n, err := s.Read(buf)
	if err != nil {
		return reply{}, err
	}
	return parseReply(buf[:n])
}

// udpFlowTo opens UDP sockets from ns to addr until one is answered by want, and
// returns that socket: its flow's conntrack entry sends it to want for as long as the
// entry lives. With two endpoints, 40 sockets all landing elsewhere has odds of 2^-40.
func udpFlowTo(t *testing.T, ns *netnstest.NS, addr string, want *pod) *udpSocket {
	t.Helper()
	var got []string
	for range 40 {
		s := dialUDP(t, ns, addr)
		r, err := s.ask()
		if err != nil {
			t.Fatalf("UDP %s from %s: %v", addr, ns.Name(), err)
		}
		if r.pod == want.name {
			return s
		}
		got = append(got, r.pod)
		s.Close()
	}
	t.Fatalf("UDP %s from %s: 40 sockets, none answered by %s: %v", addr, ns.Name(), want.name, got)
	return nil
}

// TestUDPEndpointRemovalConntrack: a UDP flow keeps following its conntrack entry, so a
// client that keeps sending from one socket is stuck with the endpoint its first
// datagram reached, even after that endpoint has left the service: new rules only
// apply to new flows. With the conntrack cleanup wired into the proxier, the sync that
// removes the endpoint deletes the flow's entry, and the next datagram from the same
// socket is load balanced afresh, to the endpoint that is left. Flows to the cluster IP
// and to the node port are checked.
func TestUDPEndpointRemovalConntrack(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		for _, cleanup := range []bool{false, true} {
			name := "without-cleanup"
			if cleanup {
				name = "with-cleanup"
			}
			t.Run(name, func(t *testing.T) {
				c := newCluster(t, 2)
				for _, p := range c.pods {
					p.serve(t, 8080, 5353)
				}
				pod1, pod2 := c.pods[0], c.pods[1]
				var opts []func(*proxier.Config)
				if cleanup {
					// NewNetlink talks to the conntrack table of the namespace of the
					// thread that calls it: built here and, more to the point, used by
					// Sync on node.Do's thread, it only ever sees the node's table.
					var ct conntrack.Interface
					if err := c.node.Do(func() error {
						ct = conntrack.NewNetlink(v1.IPv4Protocol)
						return nil
					}); err != nil {
						t.Fatal(err)
					}
					opts = append(opts, func(cfg *proxier.Config) {
						cfg.Conntrack = conntrack.NewReconciler(v1.IPv4Protocol, ct)
					})
				}
				k := newKproxy(t, c, backend, opts...)
				ports := []port{dnsPort.withNodePort(30053)}
				slice := endpointSlice("dns", ports, c.pods...)
				k.load(service("dns", "172.30.0.80", ports...), slice)
				k.sync(t)

				// One flow to the cluster IP and one to the node port, each answered
				// by pod2 so far.
				addrs := []string{"172.30.0.80:53", hostPort(nodeAddr.String(), 30053)}
				var socks []*udpSocket
				for _, addr := range addrs {
					socks = append(socks, udpFlowTo(t, c.client, addr, pod2))
				}
				k.OnEndpointSliceUpdate(endpointSlice("dns", ports, pod1))
				k.sync(t)

				// pod2 still runs and answers whatever reaches it: only the conntrack
				// entry decides where the next datagrams go.
				want := pod2
				if cleanup {
					want = pod1
				}
				for i, sock := range socks {
					var got []string
					for range 3 {
						r, err := sock.ask()
						if err != nil {
							t.Fatalf("UDP %s from the same socket after the removal: %v (answers before: %v)", addrs[i], err, got)
						}
						got = append(got, r.pod)
					}
					for _, p := range got {
						if p != want.name {
							t.Errorf("UDP %s from the same socket after pod2's removal: answered by %v, want all by %s", addrs[i], got, want.name)
							break
						}
					}
					// A new flow never reaches the removed endpoint, either way.
					allTo(t, c.client, "udp", addrs[i], 5, pod1)
				}
			})
		}
	})
}
