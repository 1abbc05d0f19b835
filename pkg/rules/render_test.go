package rules_test

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

// Fixture conventions follow upstream's tests so rule text can be compared with theirs:
// pods in 10.0.0.0/8, cluster IPs in 172.30.0.0/16, the node at 192.168.0.2.
var (
	nodeIP      = netip.MustParseAddr("192.168.0.2")
	clusterCIDR = netip.MustParsePrefix("10.0.0.0/8")
)

func defaultOptions() rules.Options {
	return rules.Options{
		Family:             v1.IPv4Protocol,
		MasqueradeBit:      14,
		LocalDetector:      rules.DetectByCIDR(clusterCIDR),
		LocalhostNodePorts: true,
		DropInvalid:        true,
	}
}

type snapshotBuilder struct{ snap *model.Snapshot }

func newSnapshot() *snapshotBuilder {
	return &snapshotBuilder{snap: &model.Snapshot{
		Services:  map[model.ServicePortName]*model.ServicePort{},
		Endpoints: map[model.ServicePortName][]model.Endpoint{},
	}}
}

// svc adds a service port; eps are "ip:port" strings of ready endpoints.
func (b *snapshotBuilder) svc(ns, name, port string, proto v1.Protocol, clusterIP string, p, nodePort int32, eps ...string) model.ServicePortName {
	spn := model.ServicePortName{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}, Port: port, Protocol: proto}
	b.snap.Services[spn] = &model.ServicePort{Name: spn, ClusterIP: netip.MustParseAddr(clusterIP), Port: p, NodePort: nodePort}
	var list []model.Endpoint
	for _, e := range eps {
		ap := netip.MustParseAddrPort(e)
		list = append(list, model.Endpoint{IP: ap.Addr(), Port: int32(ap.Port()), Ready: true, Serving: true})
	}
	model.SortEndpoints(list)
	if len(list) > 0 {
		b.snap.Endpoints[spn] = list
	}
	return spn
}

// applied renders the snapshot as the first sync on a fresh node does (every jump from
// the built-in chains missing) and applies it to that node's tables.
func applied(t *testing.T, req rules.Request, opts rules.Options) (ruleset.Tables, *rules.Ruleset) {
	t.Helper()
	req.Jumps = rules.ReadJumps(nil)
	rs := rules.Render(req, opts)
	tables := ruleset.NewTables()
	if err := tables.Apply(rs.Payload()); err != nil {
		t.Fatalf("payload rejected: %v\n%s", err, rs.Payload())
	}
	return tables, rs
}

func TestChainNamesMatchUpstream(t *testing.T) {
	spn := model.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns1", Name: "svc1"}, Port: "p80", Protocol: v1.ProtocolTCP}
	for _, tc := range []struct{ got, want string }{
		{rules.ServiceChain(spn), "KUBE-SVC-XPGD46QRK7WJZT7O"},
		{rules.ExternalChain(spn), "KUBE-EXT-XPGD46QRK7WJZT7O"},
		{rules.EndpointChain(spn, "10.180.0.1:80"), "KUBE-SEP-SXIVWICOYRO3J4NJ"},
		{rules.EndpointChain(spn, "10.0.0.0:80"), "KUBE-SEP-DKGQUZGBKLTPAR56"},
		{rules.ServiceChain(model.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns2", Name: "svc2"}, Port: "p80", Protocol: v1.ProtocolTCP}), "KUBE-SVC-GNZBNJ2PO5MGZ6GT"},
	} {
		if tc.got != tc.want {
			t.Errorf("chain name %s, want %s", tc.got, tc.want)
		}
	}
}

func TestProbability(t *testing.T) {
	for n, want := range map[int]string{2: "0.5000000000", 3: "0.3333333333", 1000: "0.0010000000", 100001: "0.0000099999"} {
		if got := rules.Probability(n); got != want {
			t.Errorf("Probability(%d) = %s, want %s", n, got, want)
		}
	}
}

func TestMasqueradeMark(t *testing.T) {
	for bit, want := range map[int]string{0: "0x00000001", 14: "0x00004000", 31: "0x80000000"} {
		if got := (rules.Options{MasqueradeBit: bit}).MasqueradeMark(); got != want {
			t.Errorf("bit %d: mark %s, want %s", bit, got, want)
		}
	}
}

// upstreamShapedRules are rule lines copied from upstream's expected test output for the
// same inputs; they pin our text to theirs, byte for byte.
func TestRuleTextMatchesUpstream(t *testing.T) {
	b := newSnapshot()
	b.svc("ns1", "svc1", "p80", v1.ProtocolTCP, "172.30.0.41", 80, 0, "10.180.0.1:80")
	opts := defaultOptions()
	rs := rules.Render(rules.Request{Snapshot: b.snap}, opts)
	for _, want := range []string{
		`-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O`,
		`-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ`,
		`-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ`,
		`-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ`,
		`-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80`,
		`-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS`,
		`-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN`,
		`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`,
		`-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
		`-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`,
	} {
		if !strings.Contains(string(rs.Payload()), want+"\n") {
			t.Errorf("payload lacks upstream line\n  %s\npayload:\n%s", want, rs.Payload())
		}
	}
	// The node-ports tail must be the last rule of nat KUBE-SERVICES.
	tables := ruleset.NewTables()
	if err := tables.Apply(rs.Payload()); err != nil {
		t.Fatal(err)
	}
	svcRules := tables["nat"].Chains[rules.ChainServices]
	if last := svcRules[len(svcRules)-1].Target(); last != rules.ChainNodePorts {
		t.Errorf("last rule of KUBE-SERVICES jumps to %q, want the node-ports tail", last)
	}
}

func TestLocalDetectors(t *testing.T) {
	for _, tc := range []struct {
		d    rules.LocalDetector
		want string
	}{
		{rules.DetectByCIDR(netip.MustParsePrefix("10.0.0.0/8")), "! -s 10.0.0.0/8 -j KUBE-MARK-MASQ"},
		{rules.DetectByBridge("cbr0"), "! -i cbr0 -j KUBE-MARK-MASQ"},
		{rules.DetectByInterfacePrefix("veth"), "! -i veth+ -j KUBE-MARK-MASQ"},
	} {
		b := newSnapshot()
		b.svc("ns1", "svc1", "p80", v1.ProtocolTCP, "172.30.0.41", 80, 0, "10.180.0.1:80")
		opts := defaultOptions()
		opts.LocalDetector = tc.d
		rs := rules.Render(rules.Request{Snapshot: b.snap}, opts)
		if !strings.Contains(string(rs.Payload()), "--dport 80 "+tc.want+"\n") {
			t.Errorf("payload lacks %q:\n%s", tc.want, rs.Payload())
		}
	}
}

// port adds a service port built by the caller (for the fields svc does not cover) with
// the given endpoints.
func (b *snapshotBuilder) port(sp *model.ServicePort, eps ...model.Endpoint) {
	b.snap.Services[sp.Name] = sp
	model.SortEndpoints(eps)
	if len(eps) > 0 {
		b.snap.Endpoints[sp.Name] = eps
	}
}

// spn names port p80/TCP of ns/name, upstream's usual fixture port.
func spn(ns, name string) model.ServicePortName {
	return model.ServicePortName{NamespacedName: types.NamespacedName{Namespace: ns, Name: name}, Port: "p80", Protocol: v1.ProtocolTCP}
}

func addrs(s ...string) []netip.Addr {
	var out []netip.Addr
	for _, a := range s {
		out = append(out, netip.MustParseAddr(a))
	}
	return out
}

// epOpt tweaks an endpoint made by ep.
type epOpt func(*model.Endpoint)

var (
	local       epOpt = func(e *model.Endpoint) { e.IsLocal = true }
	terminating epOpt = func(e *model.Endpoint) { e.Ready, e.Serving, e.Terminating = false, true, true }
	notReady    epOpt = func(e *model.Endpoint) { e.Ready, e.Serving = false, false }
)

func zoneHints(z ...string) epOpt { return func(e *model.Endpoint) { e.ZoneHints = z } }

// ep is a ready, serving endpoint "ip:port" on another node unless opts say otherwise.
func ep(addrPort string, opts ...epOpt) model.Endpoint {
	ap := netip.MustParseAddrPort(addrPort)
	e := model.Endpoint{IP: ap.Addr(), Port: int32(ap.Port()), Ready: true, Serving: true}
	for _, o := range opts {
		o(&e)
	}
	return e
}
