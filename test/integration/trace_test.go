package integration

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/utils/ptr"

	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/app"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// traceDoc is the part of `kproxy trace -o json` a tool reads, decoded as a tool would:
// from the documented field names, not from kproxy's types.
type traceDoc struct {
	Endpoints []struct {
		Address     string  `json:"address"`
		Probability float64 `json:"probability"`
	} `json:"endpoints"`
	Paths []struct {
		Endpoint   string `json:"endpoint"`
		Masquerade bool   `json:"masquerade"`
	} `json:"paths"`
	Verdict struct {
		Action string `json:"action"`
		Reason string `json:"reason"`
	} `json:"verdict"`
}

// trace runs `kproxy trace SRC DST --proto proto` inside the node namespace, where it
// reads the rules with the backend's iptables-save and the node's addresses from its
// interfaces, as on a real node.
func (k *kproxy) trace(t *testing.T, src, dst, proto string) traceDoc {
	t.Helper()
	var out, errOut bytes.Buffer
	args := []string{"trace", src, dst, "--proto", proto, "--iptables-backend", string(k.ipt.Backend()), "-o", "json"}
	if err := k.node.Do(func() error {
		cmd := app.NewCommand()
		cmd.SetOut(&out)
		cmd.SetErr(&errOut)
		cmd.SetArgs(args)
		return cmd.ExecuteContext(k.ctx)
	}); err != nil {
		t.Fatalf("kproxy %s: %v (stderr %s)", strings.Join(args, " "), err, errOut.String())
	}
	var doc traceDoc
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil {
		t.Fatalf("kproxy %s: decoding its output: %v\n%s", strings.Join(args, " "), err, out.String())
	}
	t.Logf("trace %s -> %s/%s: %s", src, dst, proto, doc.Verdict.Reason)
	return doc
}

// agrees sends the traced connection for real, from inside from, and checks that the
// traffic does what the trace's verdict says: answered by every endpoint the trace lists
// and by no other, each seeing the node's address exactly when the trace's path to it
// masquerades (src otherwise); refused for REJECT; dropped for DROP and for an address
// that is no Service (nothing routes it anywhere in this topology).
func agrees(t *testing.T, c *cluster, from *netnstest.NS, src netip.Addr, network, addr string, doc traceDoc) {
	t.Helper()
	switch doc.Verdict.Action {
	case "DNAT":
		masq := map[netip.Addr]bool{}
		for _, p := range doc.Paths {
			masq[netip.MustParseAddrPort(p.Endpoint).Addr()] = p.Masquerade
		}
		var pods []*pod
		for _, e := range doc.Endpoints {
			ep := netip.MustParseAddrPort(e.Address)
			i := slices.IndexFunc(c.pods, func(p *pod) bool { return p.ip == ep.Addr() })
			if i < 0 {
				t.Fatalf("%s %s: the trace lists endpoint %s, which is no pod", network, addr, e.Address)
			}
			pods = append(pods, c.pods[i])
		}
		// reachesAll fails on a reply from a pod the trace did not list, on a listed pod
		// that never answers, and on a source the trace did not predict.
		reachesAll(t, from, network, addr, pods, func(p *pod) netip.Addr {
			if masq[p.ip] {
				return p.gateway
			}
			return src
		})
	case "REJECT":
		if network == "udp" {
			wantRefusedUDP(t, from, addr)
		} else {
			wantRefused(t, from, addr)
		}
	case "DROP", "NOT_A_SERVICE":
		wantDropped(t, from, addr)
	default:
		t.Errorf("%s %s: verdict %s (%s), which this test cannot check against traffic", network, addr, doc.Verdict.Action, doc.Verdict.Reason)
	}
}

// TestTrace: `kproxy trace` on the live rules of both backends predicts what real
// traffic does, for a pod, the node itself and an outside client, to a cluster IP with
// endpoints (including a pod reaching itself), a node port, a Service without endpoints,
// externalTrafficPolicy Local without a local endpoint and an address that is no Service.
func TestTrace(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 2)
		for _, p := range c.pods {
			p.serve(t, 8080, 5353)
		}
		pod1, pod2 := c.pods[0], c.pods[1]
		k := newKproxy(t, c, backend)
		web := []port{httpPort.withNodePort(30080), dnsPort}
		pending := []port{httpPort.withNodePort(30081)}
		pendingSlice := endpointSlice("pending", pending, pod1)
		pendingSlice.Endpoints[0].Conditions = discovery.EndpointConditions{Ready: ptr.To(false), Serving: ptr.To(false), Terminating: ptr.To(false)}
		local := []port{httpPort.withNodePort(30090)}
		k.load(
			service("web", "172.30.0.10", web...), endpointSlice("web", web, c.pods...),
			service("pending", "172.30.0.30", pending...), pendingSlice,
			withExternalPolicy(service("local", "172.30.0.90", local...), v1.ServiceExternalTrafficPolicyLocal),
			onNodes(endpointSlice("local", local, pod2), "node-2"),
		)
		k.sync(t)

		// The node sends from the address of its route to the cluster IP (the gateway
		// link's), the trace from its first address; both are outside the pod network.
		nodeSrc := netip.MustParseAddr("198.51.100.1")
		for _, tc := range []struct {
			name       string
			from       *netnstest.NS
			src        string
			srcAddr    netip.Addr // the source an endpoint sees unless masqueraded
			network    string
			dst        string
			wantAction string
		}{
			{"pod to cluster IP", pod2.ns, pod2.ip.String(), pod2.ip, "tcp", "172.30.0.10:80", "DNAT"},
			{"pod to cluster IP over UDP", pod2.ns, pod2.ip.String(), pod2.ip, "udp", "172.30.0.10:53", "DNAT"},
			{"node to cluster IP", c.node, "node", nodeSrc, "tcp", "172.30.0.10:80", "DNAT"},
			{"outside client to node port", c.client, clientAddr.String(), clientAddr, "tcp", hostPort(nodeAddr.String(), 30080), "DNAT"},
			{"no endpoints", c.client, clientAddr.String(), clientAddr, "tcp", "172.30.0.30:80", "REJECT"},
			{"node port without endpoints", c.client, clientAddr.String(), clientAddr, "tcp", hostPort(nodeAddr.String(), 30081), "REJECT"},
			{"policy Local without a local endpoint", c.client, clientAddr.String(), clientAddr, "tcp", hostPort(nodeAddr.String(), 30090), "DROP"},
			{"no Service", pod1.ns, pod1.ip.String(), pod1.ip, "tcp", "172.30.0.99:80", "NOT_A_SERVICE"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				doc := k.trace(t, tc.src, tc.dst, tc.network)
				if doc.Verdict.Action != tc.wantAction {
					t.Errorf("trace verdict %s (%s), want %s", doc.Verdict.Action, doc.Verdict.Reason, tc.wantAction)
				}
				agrees(t, c, tc.from, tc.srcAddr, tc.network, tc.dst, doc)
			})
		}
	})
}
