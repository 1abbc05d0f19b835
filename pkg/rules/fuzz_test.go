package rules_test

// FuzzRender decodes arbitrary bytes into a valid snapshot, options and sync request,
// renders it and checks the invariants the proxier relies on (see checkFuzzCase). As root,
// with iptables-nft-restore installed, every payload is also committed by the real binary
// inside a private network namespace, one per test process.

import (
	"bytes"
	"crypto/sha256"
	"encoding/base32"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/rules/rulestest"
	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

// TestMain deletes the fuzz namespace if FuzzRender created one; f.Cleanup does too, this
// covers a run that ends some other way.
func TestMain(m *testing.M) {
	code := m.Run()
	deleteFuzzNamespace()
	os.Exit(code)
}

// FuzzRender checks, for any decoded input:
//   - rendering is deterministic (twice, same bytes and counts) and leaves the snapshot as
//     it was;
//   - the payload declares each chain once, only chains we own, and applies cleanly to
//     fresh tables; every jump target exists, every owned chain is referenced (no
//     orphans), and the owned chains are exactly the render's State.Chains();
//   - every KUBE-SVC/SVL/EXT/FW/SEP chain is the documented hash of a service port (or
//     port and endpoint) of the snapshot, and only that port's rules lead to it;
//   - the node-ports jump(s) close nat KUBE-SERVICES;
//   - the Ruleset's rule counts equal the rules in the applied tables;
//   - traced packets (cluster IP, node port, external IP, load balancer IP) reach exactly
//     the endpoints endpoint selection picked, with the expected masquerade and verdict;
//   - a partial render on top of the previous sync's tables, and a full render with the
//     existing chains listed, both end identical to a fresh full render;
//   - as root: iptables-restore --test --noflush accepts every payload, the kernel
//     commits it, its tables have the same shape as ours, and partial and full syncs
//     leave the kernel in the same state.
//
// The real-binary part costs tens of milliseconds per input; KPROXY_FUZZ_KERNEL=0 turns
// it off to fuzz the pure invariants at full speed.
func FuzzRender(f *testing.F) {
	for _, seed := range fuzzSeeds() {
		f.Add(seed)
	}
	f.Cleanup(deleteFuzzNamespace)
	f.Fuzz(func(t *testing.T, data []byte) {
		c := decodeFuzzCase(data)
		t.Logf("decoded: %s", c)
		checkFuzzCase(t, c)
	})
}

// fuzzSeeds are the f.Add seeds: empty input (no services), saturated bytes, and
// pseudo-random streams long enough to fill many services.
func fuzzSeeds() [][]byte {
	return [][]byte{
		{},
		bytes.Repeat([]byte{0xff}, 512),
		bytes.Repeat([]byte{0x03, 0x7e, 0xc1}, 300), // IPv6
		fuzzLCG(1, 600),
		fuzzLCG(7, 1500),
		fuzzLCG(42, 3000),
	}
}

// fuzzLCG is a fixed pseudo-random byte stream, so seeds stay the same everywhere.
func fuzzLCG(seed uint64, n int) []byte {
	out := make([]byte, n)
	x := seed
	for i := range out {
		x = x*6364136223846793005 + 1442695040888963407
		out[i] = byte(x >> 56)
	}
	return out
}

// ---------------------------------------------------------------------------------------
// Decoding. Exhausted input reads as zeros, and every choice maps zero to the plainest
// option, so short inputs give small cases.

type fuzzDecoder struct {
	data []byte
	pos  int
}

func (d *fuzzDecoder) byte() byte {
	if d.pos >= len(d.data) {
		return 0
	}
	b := d.data[d.pos]
	d.pos++
	return b
}

// intn returns a value in [0, n).
func (d *fuzzDecoder) intn(n int) int {
	if n <= 1 {
		return 0
	}
	return int(d.byte()) % n
}

// chance is true with probability 1/n (false on exhausted input).
func (d *fuzzDecoder) chance(n int) bool { return d.intn(n) == n-1 }

func (d *fuzzDecoder) bool() bool { return d.byte()&1 == 1 }

var (
	fzNamespaces = []string{"ns1", "ns2", "kube-system", "ns-" + strings.Repeat("l", 60)}
	fzNames      = []string{"a", "b", "dns", "web-frontend", "svc-" + strings.Repeat("s", 59)}
	fzPortNames  = []string{"p80", "dns", "http", "https-metrics", "metrics-port-15"}
	fzProtocols  = []v1.Protocol{v1.ProtocolTCP, v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP}
	fzPorts      = []int32{80, 443, 53, 8080, 1, 65535}
	fzTargets    = []int32{80, 8080, 53, 9376}
	fzZoneHints  = [][]string{{"zone-a"}, {"zone-b"}, {"zone-a", "zone-b"}, nil}
	fzNodeHints  = [][]string{{"node-1"}, {"node-2"}, {"node-1", "node-2"}, nil}
)

const fzNodeName = "node-1"

// fzFamily holds one IP family's address plan; nothing in one range is in another, so a
// traced packet matches exactly one service port.
type fzFamily struct {
	v6                                 bool
	clusterIP, externalIP, vip, pod    netip.Addr // bases; addresses are base+n
	node, remote, extraLocal, loopback netip.Addr
	clusterCIDR                        netip.Prefix
	sourceRanges, nodePortAddresses    []netip.Prefix
}

func mustPrefixes(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, p := range s {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

var (
	fzV4 = &fzFamily{
		clusterIP: netip.MustParseAddr("172.30.0.0"), externalIP: netip.MustParseAddr("203.0.113.0"),
		vip: netip.MustParseAddr("198.51.100.0"), pod: netip.MustParseAddr("10.0.0.0"),
		node: netip.MustParseAddr("192.168.0.2"), remote: netip.MustParseAddr("192.0.2.77"),
		extraLocal: netip.MustParseAddr("100.64.0.5"), loopback: netip.MustParseAddr("127.0.0.1"),
		clusterCIDR: netip.MustParsePrefix("10.0.0.0/8"),
		// The remote client, the node, the pods, the VIPs, a part of the external IPs, one host.
		sourceRanges: mustPrefixes("192.0.2.0/24", "192.168.0.0/16", "10.0.0.0/8", "198.51.100.0/24",
			"203.0.113.128/25", "100.64.0.5/32"),
		nodePortAddresses: mustPrefixes("192.168.0.0/24", "127.0.0.0/8", "100.64.0.0/10", "198.18.0.0/15"),
	}
	fzV6 = &fzFamily{
		v6:        true,
		clusterIP: netip.MustParseAddr("fd00:30::"), externalIP: netip.MustParseAddr("2001:db8:e::"),
		vip: netip.MustParseAddr("2001:db8:1b::"), pod: netip.MustParseAddr("fd00:10::"),
		node: netip.MustParseAddr("2001:db8:ffff::2"), remote: netip.MustParseAddr("2001:db8:77::77"),
		extraLocal: netip.MustParseAddr("fd00:64::5"), loopback: netip.MustParseAddr("::1"),
		clusterCIDR: netip.MustParsePrefix("fd00:10::/48"),
		sourceRanges: mustPrefixes("2001:db8:77::/48", "2001:db8:ffff::/48", "fd00:10::/48", "2001:db8:1b::/48",
			"2001:db8:e::80/121", "fd00:64::5/128"),
		nodePortAddresses: mustPrefixes("2001:db8:ffff::/64", "::1/128", "fd00:64::/64", "2001:db8:abcd::/64"),
	}
)

// fzAdd returns base + n (n < 65536).
func fzAdd(base netip.Addr, n int) netip.Addr {
	if base.Is4() {
		b := base.As4()
		v := int(b[2])<<8 | int(b[3]) + n
		b[2], b[3] = byte(v>>8), byte(v)
		return netip.AddrFrom4(b)
	}
	b := base.As16()
	v := int(b[14])<<8 | int(b[15]) + n
	b[14], b[15] = byte(v>>8), byte(v)
	return netip.AddrFrom16(b)
}

// fzAlloc hands out addresses and node ports that are unique across a whole case,
// previous snapshot included.
type fzAlloc struct {
	clusterIP, externalIP, vip int
	nodePort, hcPort           int32
}

type fzPort struct {
	name     string
	proto    v1.Protocol
	port     int32
	nodePort int32
	eps      []model.Endpoint
}

type fzService struct {
	nn                types.NamespacedName
	typ               int // 0 ClusterIP, 1 NodePort, 2 LoadBalancer
	clusterIP         netip.Addr
	externalIPs, vips []netip.Addr
	sourceRanges      []netip.Prefix
	sticky            int32
	eLocal, iLocal    bool
	hcPort            int32
	ports             []*fzPort
}

type fzPartial struct {
	prev []*fzService
	// extraChanged are names added to the computed Changed set: a superset is allowed.
	extraChanged []types.NamespacedName
	// existingFromSave lists the previous tables' nat chains as ExistingNATChains (what
	// a listing returns); otherwise the previous render's State.Chains().
	existingFromSave bool
	// leftovers adds chains of an earlier proxy to the previous tables (only with a
	// listing, which is how they would be found), and foreign adds another component's
	// chain, which must survive.
	leftovers, foreign bool
}

type fuzzCase struct {
	fam        *fzFamily
	opts       rules.Options
	detector   string
	node       model.Node
	localAddrs []netip.Addr
	services   []*fzService
	partial    *fzPartial
}

func (c *fuzzCase) String() string {
	ports := 0
	for _, s := range c.services {
		ports += len(s.ports)
	}
	s := fmt.Sprintf("family=%s services=%d ports=%d detector=%s masqAll=%t bit=%d localhostNP=%t dropInvalid=%t npAddrs=%v node=%+v localAddrs=%v",
		c.opts.Family, len(c.services), ports, c.detector, c.opts.MasqueradeAll, c.opts.MasqueradeBit,
		c.opts.LocalhostNodePorts, c.opts.DropInvalid, c.opts.NodePortAddresses, c.node, c.localAddrs)
	if c.partial != nil {
		s += fmt.Sprintf(" partial(prev=%d extra=%v fromSave=%t leftovers=%t foreign=%t)", len(c.partial.prev),
			c.partial.extraChanged, c.partial.existingFromSave, c.partial.leftovers, c.partial.foreign)
	}
	return s
}

func decodeFuzzCase(data []byte) *fuzzCase {
	d := &fuzzDecoder{data: data}
	c := &fuzzCase{fam: fzV4}
	family := v1.IPv4Protocol
	if d.intn(4) == 3 {
		c.fam, family = fzV6, v1.IPv6Protocol
	}
	fam := c.fam

	c.opts = rules.Options{
		Family:             family,
		MasqueradeBit:      []int{14, 14, 0, 31}[d.intn(4)],
		MasqueradeAll:      d.chance(4),
		LocalhostNodePorts: d.bool(),
		DropInvalid:        d.bool(),
	}
	switch d.intn(5) {
	case 0, 1:
		c.detector, c.opts.LocalDetector = "cidr", rules.DetectByCIDR(fam.clusterCIDR)
	case 2:
		c.detector = "none"
	case 3:
		c.detector, c.opts.LocalDetector = "bridge", rules.DetectByBridge("cbr0")
	case 4:
		c.detector, c.opts.LocalDetector = "prefix", rules.DetectByInterfacePrefix("veth")
	}
	c.node = model.Node{Name: fzNodeName, Zone: []string{"", "zone-a", "zone-b"}[d.intn(3)]}
	if !d.chance(4) {
		c.node.IP = fam.node
	}
	if d.chance(3) {
		for _, p := range fam.nodePortAddresses {
			if d.bool() {
				c.opts.NodePortAddresses = append(c.opts.NodePortAddresses, p)
			}
		}
		if len(c.opts.NodePortAddresses) == 0 {
			c.opts.NodePortAddresses = fam.nodePortAddresses[:1]
		}
		// What the proxier lists: the node's addresses, in the kernel's order.
		c.localAddrs = []netip.Addr{fam.extraLocal, fam.loopback}
		if c.node.IP.IsValid() {
			c.localAddrs = append(c.localAddrs, c.node.IP)
		}
		if d.bool() {
			c.localAddrs[0], c.localAddrs[len(c.localAddrs)-1] = c.localAddrs[len(c.localAddrs)-1], c.localAddrs[0]
		}
	}

	al := &fzAlloc{nodePort: 30000, hcPort: 32000}
	c.services = decodeServices(d, fam, al, d.intn(31), nil)

	if d.bool() {
		p := &fzPartial{existingFromSave: d.bool(), foreign: d.bool()}
		p.leftovers = p.existingFromSave && d.bool()
		taken := map[types.NamespacedName]bool{}
		for _, s := range c.services {
			taken[s.nn] = true
			switch d.intn(5) {
			case 0, 1: // unchanged
				p.prev = append(p.prev, s)
			case 2: // endpoints changed
				ps := *s
				ps.ports = nil
				for _, port := range s.ports {
					pp := *port
					pp.eps = decodeEndpoints(d, fam)
					ps.ports = append(ps.ports, &pp)
				}
				p.prev = append(p.prev, &ps)
			case 3: // service changed: same name and cluster IP, all else redecoded
				ps := decodeService(d, fam, al, s.nn, 4)
				ps.clusterIP = s.clusterIP
				p.prev = append(p.prev, ps)
			case 4: // service added since the previous sync
			}
		}
		// Services deleted since the previous sync.
		p.prev = append(p.prev, decodeServices(d, fam, al, d.intn(8), taken)...)
		for i := d.intn(3); i > 0; i-- {
			p.extraChanged = append(p.extraChanged, types.NamespacedName{
				Namespace: fzNamespaces[d.intn(len(fzNamespaces))], Name: fzNames[d.intn(len(fzNames))]})
		}
		c.partial = p
	}
	return c
}

// decodeServices decodes services until they have about maxPorts ports, skipping names
// in taken (and marking the ones it uses).
func decodeServices(d *fuzzDecoder, fam *fzFamily, al *fzAlloc, maxPorts int, taken map[types.NamespacedName]bool) []*fzService {
	if taken == nil {
		taken = map[types.NamespacedName]bool{}
	}
	var out []*fzService
	ports := 0
	for attempts := 0; ports < maxPorts && attempts < 2*len(fzNamespaces)*len(fzNames); attempts++ {
		nn := types.NamespacedName{Namespace: fzNamespaces[d.intn(len(fzNamespaces))], Name: fzNames[d.intn(len(fzNames))]}
		if taken[nn] {
			continue
		}
		taken[nn] = true
		s := decodeService(d, fam, al, nn, maxPorts-ports)
		ports += len(s.ports)
		out = append(out, s)
	}
	return out
}

// decodeService decodes one valid service with at most maxPorts (>= 1) ports.
func decodeService(d *fuzzDecoder, fam *fzFamily, al *fzAlloc, nn types.NamespacedName, maxPorts int) *fzService {
	s := &fzService{nn: nn, typ: d.intn(3)}
	al.clusterIP++
	s.clusterIP = fzAdd(fam.clusterIP, al.clusterIP)
	if d.chance(3) {
		for i := 1 + d.intn(2); i > 0; i-- {
			// Usually an address of its own; sometimes one that other services share,
			// or the node's own address, which the API allows and users do.
			var ip netip.Addr
			switch d.intn(6) {
			case 4:
				ip = fzAdd(fam.externalIP, 200+d.intn(2))
			case 5:
				ip = fam.node
			default:
				al.externalIP++
				ip = fzAdd(fam.externalIP, al.externalIP)
			}
			if !slices.Contains(s.externalIPs, ip) {
				s.externalIPs = append(s.externalIPs, ip)
			}
		}
	}
	if s.typ == 2 {
		for i := d.intn(3); i > 0; i-- {
			al.vip++
			s.vips = append(s.vips, fzAdd(fam.vip, al.vip))
		}
	}
	// Source ranges are kept even on services that are not load balancers, as the API
	// does; the tracker has already dropped /0 ranges (and with them the whole list).
	if s.typ == 2 || d.chance(8) {
		for _, i := range []int{d.intn(8), d.intn(8), d.intn(8)} {
			if i < len(fam.sourceRanges) && !slices.Contains(s.sourceRanges, fam.sourceRanges[i]) {
				s.sourceRanges = append(s.sourceRanges, fam.sourceRanges[i])
			}
		}
	}
	switch d.intn(4) {
	case 2:
		s.sticky = 10800
	case 3:
		s.sticky = []int32{1, 86400}[d.intn(2)]
	}
	externallyAccessible := s.typ > 0 || len(s.externalIPs) > 0
	s.eLocal = externallyAccessible && d.bool()
	s.iLocal = d.chance(4)
	if s.typ == 2 && s.eLocal {
		al.hcPort++
		s.hcPort = al.hcPort
	}

	n := []int{1, 1, 1, 1, 2, 2, 3, 4}[d.intn(8)]
	if n > maxPorts {
		n = maxPorts
	}
	start := d.intn(len(fzPortNames))
	used := map[string]bool{}
	for i := 0; i < n; i++ {
		p := &fzPort{name: fzPortNames[(start+i)%len(fzPortNames)], proto: fzProtocols[d.intn(len(fzProtocols))]}
		if n == 1 && d.intn(3) == 2 {
			p.name = "" // only a single-port service may leave its port unnamed
		}
		for j := d.intn(len(fzPorts)); ; j++ {
			p.port = fzPorts[j%len(fzPorts)]
			if key := fmt.Sprint(p.port, p.proto); !used[key] {
				used[key] = true
				break
			}
		}
		if s.typ > 0 && !(s.typ == 2 && d.chance(4)) { // LBs may skip node ports
			al.nodePort++
			p.nodePort = al.nodePort
		}
		p.eps = decodeEndpoints(d, fam)
		s.ports = append(s.ports, p)
	}
	return s
}

// decodeEndpoints decodes 0-8 distinct endpoints, sorted as the snapshot keeps them.
// Conditions are those an EndpointSlice can carry: ready endpoints are serving and not
// terminating.
func decodeEndpoints(d *fuzzDecoder, fam *fzFamily) []model.Endpoint {
	n := d.intn(9)
	hintMode := d.intn(4) // 0, 1: none; 2: zone hints; 3: node hints
	var eps []model.Endpoint
	seen := map[string]bool{}
	for i := 0; i < n; i++ {
		ep := model.Endpoint{IP: fzAdd(fam.pod, 1+d.intn(24)), Port: fzTargets[d.intn(len(fzTargets))]}
		switch d.intn(8) {
		case 0, 1, 2, 3:
			ep.Ready, ep.Serving = true, true
		case 4:
			ep.Serving, ep.Terminating = true, true
		case 5:
			ep.Terminating = true
		case 6: // neither
		case 7:
			ep.Serving = true
		}
		ep.IsLocal = d.intn(3) == 2
		switch hintMode {
		case 2:
			ep.ZoneHints = fzZoneHints[d.intn(len(fzZoneHints))]
		case 3:
			ep.NodeHints = fzNodeHints[d.intn(len(fzNodeHints))]
		}
		if seen[ep.String()] {
			continue
		}
		seen[ep.String()] = true
		eps = append(eps, ep)
	}
	model.SortEndpoints(eps)
	return eps
}

// buildSnapshot turns decoded services into the snapshot the tracker would produce.
func buildSnapshot(services []*fzService) *model.Snapshot {
	snap := &model.Snapshot{
		Services:  map[model.ServicePortName]*model.ServicePort{},
		Endpoints: map[model.ServicePortName][]model.Endpoint{},
	}
	for _, s := range services {
		for _, p := range s.ports {
			name := model.ServicePortName{NamespacedName: s.nn, Port: p.name, Protocol: p.proto}
			snap.Services[name] = &model.ServicePort{
				Name: name, ClusterIP: s.clusterIP, Port: p.port, NodePort: p.nodePort,
				ExternalIPs: s.externalIPs, LoadBalancerVIPs: s.vips, LoadBalancerSourceRanges: s.sourceRanges,
				StickyMaxAgeSeconds: s.sticky, ExternalPolicyLocal: s.eLocal, InternalPolicyLocal: s.iLocal,
				HealthCheckNodePort: s.hcPort,
			}
			if len(p.eps) > 0 {
				snap.Endpoints[name] = p.eps
			}
		}
	}
	return snap
}

// copySnapshot deep-copies a snapshot, to notice a render that modifies its input.
func copySnapshot(s *model.Snapshot) *model.Snapshot {
	c := &model.Snapshot{
		Services:  map[model.ServicePortName]*model.ServicePort{},
		Endpoints: map[model.ServicePortName][]model.Endpoint{},
	}
	for n, sp := range s.Services {
		cp := *sp
		cp.ExternalIPs = append([]netip.Addr(nil), sp.ExternalIPs...)
		cp.LoadBalancerVIPs = append([]netip.Addr(nil), sp.LoadBalancerVIPs...)
		cp.LoadBalancerSourceRanges = append([]netip.Prefix(nil), sp.LoadBalancerSourceRanges...)
		c.Services[n] = &cp
	}
	for n, eps := range s.Endpoints {
		list := make([]model.Endpoint, len(eps))
		for i, ep := range eps {
			ep.ZoneHints = append([]string(nil), ep.ZoneHints...)
			ep.NodeHints = append([]string(nil), ep.NodeHints...)
			list[i] = ep
		}
		c.Endpoints[n] = list
	}
	return c
}

// changedServices is what the tracker reports: every service whose ports or endpoints
// differ between the two snapshots, added and deleted ones included.
func changedServices(prev, cur *model.Snapshot) map[types.NamespacedName]bool {
	changed := map[types.NamespacedName]bool{}
	for _, pair := range [][2]*model.Snapshot{{prev, cur}, {cur, prev}} {
		a, b := pair[0], pair[1]
		for name, sa := range a.Services {
			sb, ok := b.Services[name]
			if !ok || !reflect.DeepEqual(*sa, *sb) || !reflect.DeepEqual(a.Endpoints[name], b.Endpoints[name]) {
				changed[name.NamespacedName] = true
			}
		}
	}
	return changed
}

// ---------------------------------------------------------------------------------------
// Checks.

// fzFixedChains are the chains the payload may declare besides per-service ones.
var fzFixedChains = map[string]map[string]bool{
	"filter": {rules.ChainServices: true, rules.ChainExternalServices: true, rules.ChainForward: true,
		rules.ChainNodePorts: true, rules.ChainProxyFirewall: true, rules.ChainFirewall: true},
	"nat": {rules.ChainServices: true, rules.ChainNodePorts: true, rules.ChainPostrouting: true, rules.ChainMarkMasq: true},
}

const (
	leftoverSVC   = "KUBE-SVC-ZZZZLEFTOVER2345"
	leftoverSEP   = "KUBE-SEP-ZZZZLEFTOVER2345"
	foreignChain  = "CNI-HOSTPORT-DNAT"
	bogusExisting = "KUBE-SEP-ZZZZNOTTHERE2345"
)

// leftoverBody (nat lines) is what an earlier proxy left behind: owned chains, hooked
// into KUBE-SERVICES, that no current service renders. It goes on top of a sync's tables.
const leftoverBody = ":" + leftoverSVC + " - [0:0]\n:" + leftoverSEP + " - [0:0]\n" +
	"-A " + rules.ChainServices + " -j " + leftoverSVC + "\n-A " + leftoverSVC + " -j " + leftoverSEP + "\n" +
	"-A " + leftoverSEP + " -j " + rules.ChainMarkMasq + "\n"

// foreignBody (nat lines) is another component's chain, which our syncs must leave alone.
const foreignBody = ":" + foreignChain + " - [0:0]\n-A " + foreignChain + " -j RETURN\n"

var (
	leftoverPayload = []byte("*nat\n" + leftoverBody + "COMMIT\n")
	foreignPayload  = []byte("*nat\n" + foreignBody + "COMMIT\n")
)

// withNATLines appends nat lines to a rendered payload, whose last block is nat, so that
// one restore call applies both.
func withNATLines(payload []byte, lines string) []byte {
	i := bytes.LastIndex(payload, []byte("COMMIT\n"))
	out := append([]byte(nil), payload[:i]...)
	out = append(out, lines...)
	return append(out, payload[i:]...)
}

func checkFuzzCase(t *testing.T, c *fuzzCase) {
	snap := buildSnapshot(c.services)
	req := rules.Request{Snapshot: snap, Node: c.node, LocalAddrs: c.localAddrs}
	rs, fresh := checkFullRender(t, c, req)

	var kpartial *kernelPartial
	if c.partial != nil {
		kpartial = checkPartial(t, c, snap, rs, fresh)
	}
	checkKernel(t, c, rs, kpartial)
}

// checkFullRender renders req from scratch, checks it and returns the ruleset and the
// tables it leaves on a fresh node.
func checkFullRender(t *testing.T, c *fuzzCase, req rules.Request) (*rules.Ruleset, ruleset.Tables) {
	t.Helper()
	snap := req.Snapshot
	before := copySnapshot(snap)
	rs := rules.Render(req, c.opts)
	if !reflect.DeepEqual(before, snap) {
		t.Fatalf("Render modified its snapshot")
	}
	again := rules.Render(req, c.opts)
	if !bytes.Equal(rs.Payload(), again.Payload()) {
		t.Fatalf("render is not deterministic:\n%s", rulestest.Diff(string(rs.Payload()), string(again.Payload())))
	}
	if !reflect.DeepEqual(rs, again) {
		t.Fatalf("render is not deterministic: %+v vs %+v", rs, again)
	}

	checkDeclarations(t, rs.Payload(), nil)
	if len(rs.Batches) == 1 {
		checkOwnChainOrder(t, rs.Payload())
	}

	fresh := ruleset.NewTables()
	if err := fresh.Apply(rs.Payload()); err != nil {
		t.Fatalf("payload rejected by fresh tables: %v\n%s", err, payloadContext(rs.Payload(), err))
	}
	if err := fresh.CheckJumps(); err != nil {
		t.Fatalf("after apply: %v", err)
	}
	for _, table := range []string{"filter", "nat", "mangle", "raw"} {
		for _, ch := range fresh.ChainNames(table, func(c string) bool { return ruleset.IsBuiltin(table, c) }) {
			if n := len(fresh[table].Chains[ch]); n != 0 {
				t.Errorf("payload wrote %d rules into built-in chain %s %s", n, table, ch)
			}
		}
	}
	if got := fresh.RuleCount("filter"); got != rs.FilterRules {
		t.Errorf("Ruleset.FilterRules = %d, applied tables hold %d", rs.FilterRules, got)
	}
	if got := fresh.RuleCount("nat"); got != rs.NATRules {
		t.Errorf("Ruleset.NATRules = %d, applied tables hold %d", rs.NATRules, got)
	}
	owned := fresh.ChainNames("nat", rules.IsOwnedServiceChain)
	if !reflect.DeepEqual(nonNil(owned), nonNil(rs.State.Chains())) || !sort.StringsAreSorted(rs.State.Chains()) {
		t.Errorf("owned nat chains after apply differ from State.Chains():\n%s",
			rulestest.Diff(strings.Join(rs.State.Chains(), "\n"), strings.Join(owned, "\n")))
	}
	if rs.DeletedNATChains != 0 {
		t.Errorf("DeletedNATChains = %d without existing chains", rs.DeletedNATChains)
	}
	if orphans := rulestest.Unreferenced(fresh, "nat", rules.IsOwnedServiceChain); len(orphans) > 0 {
		t.Errorf("owned chains nothing jumps to: %v", orphans)
	}
	checkChainHashes(t, fresh, snap)
	checkNodePortsTail(t, c, fresh)
	checkNoLocalCounts(t, c, snap, rs)
	checkTraces(t, c, snap, fresh)
	if t.Failed() {
		t.Logf("payload:\n%s", rs.Payload())
		t.FailNow()
	}
	return rs, fresh
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}

func payloadContext(payload []byte, err error) string {
	var le *ruleset.LineError
	if errors.As(err, &le) {
		return rulestest.LinesAround(payload, le.Line, 5)
	}
	return string(payload)
}

// checkOwnChainOrder: a single batch declares the services' own chains in name order and
// writes each one's rules together, in the same order, which iptables-legacy-restore
// builds fastest.
func checkOwnChainOrder(t *testing.T, payload []byte) {
	t.Helper()
	var declared, written []string
	for line := range strings.Lines(string(payload)) {
		if name, ok := strings.CutPrefix(line, ":"); ok {
			if name, _, _ = strings.Cut(name, " "); rules.IsOwnedServiceChain(name) {
				declared = append(declared, name)
			}
		} else if rest, ok := strings.CutPrefix(line, "-A "); ok {
			if name, _, _ := strings.Cut(rest, " "); rules.IsOwnedServiceChain(name) && (len(written) == 0 || written[len(written)-1] != name) {
				written = append(written, name)
			}
		}
	}
	if !sort.StringsAreSorted(declared) {
		t.Errorf("own chains are not declared in name order: %v", declared)
	}
	// A chain whose rules came in two runs appears twice, with another chain between.
	if !sort.StringsAreSorted(written) {
		t.Errorf("own chains' rules are not grouped by chain in name order: %v", written)
	}
}

// checkDeclarations: each chain declared once per table, and only chains we own. For a
// partial payload, partialOwner maps an owned chain to its service and reports whether
// that service changed: live chains may be declared only for changed services, while
// stale chains (deleted with -X) may belong to anyone.
func checkDeclarations(t *testing.T, payload []byte, partialOwner func(chain string) (types.NamespacedName, bool)) {
	t.Helper()
	declared, err := rulestest.DeclaredChains(payload)
	if err != nil {
		t.Fatalf("parsing declarations: %v", err)
	}
	for table, chains := range declared {
		seen := map[string]bool{}
		for _, ch := range chains {
			if seen[ch] {
				t.Errorf("%s %s declared twice", table, ch)
			}
			seen[ch] = true
			if !fzFixedChains[table][ch] && !(table == "nat" && rules.IsOwnedServiceChain(ch)) {
				t.Errorf("payload declares %s %s, which is not ours", table, ch)
			}
		}
	}
	if partialOwner == nil {
		return
	}
	deleted := map[string]bool{}
	for _, line := range strings.Split(string(payload), "\n") {
		if strings.HasPrefix(line, "-X ") {
			deleted[strings.TrimPrefix(line, "-X ")] = true
		}
	}
	for _, ch := range declared["nat"] {
		if !rules.IsOwnedServiceChain(ch) || deleted[ch] {
			continue
		}
		if nn, ok := partialOwner(ch); !ok {
			t.Errorf("partial payload declares %s of an unchanged service (%s)", ch, nn)
		}
	}
}

// fzHash is the documented chain-name hash: the first 16 characters of the base32
// encoding of sha256(text).
func fzHash(text string) string {
	sum := sha256.Sum256([]byte(text))
	return base32.StdEncoding.EncodeToString(sum[:])[:16]
}

type chainOwner struct {
	name model.ServicePortName
	ep   *model.Endpoint // set for KUBE-SEP-*
}

// expectedChains recomputes every chain name the snapshot may use.
func expectedChains(t *testing.T, snap *model.Snapshot) map[string]chainOwner {
	t.Helper()
	m := map[string]chainOwner{}
	for name := range snap.Services {
		proto := strings.ToLower(string(name.Protocol))
		h := fzHash(name.String() + proto)
		if got, want := rules.ServiceChain(name), "KUBE-SVC-"+h; got != want {
			t.Fatalf("ServiceChain(%s) = %s, want %s", name, got, want)
		}
		if got, want := rules.ExternalChain(name), "KUBE-EXT-"+h; got != want {
			t.Fatalf("ExternalChain(%s) = %s, want %s", name, got, want)
		}
		for _, prefix := range []string{"KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-"} {
			m[prefix+h] = chainOwner{name: name}
		}
		for i := range snap.Endpoints[name] {
			ep := &snap.Endpoints[name][i]
			sep := "KUBE-SEP-" + fzHash(name.String()+proto+ep.String())
			if got := rules.EndpointChain(name, ep.String()); got != sep {
				t.Fatalf("EndpointChain(%s, %s) = %s, want %s", name, ep, got, sep)
			}
			m[sep] = chainOwner{name: name, ep: ep}
		}
	}
	return m
}

// checkChainHashes: every owned chain is named after a service port (and endpoint) of the
// snapshot, leads only to chains of the same port, and is entered from the dispatch
// chains only by rules that match that port's addresses and ports.
func checkChainHashes(t *testing.T, tables ruleset.Tables, snap *model.Snapshot) {
	t.Helper()
	want := expectedChains(t, snap)
	nat := tables["nat"]
	for _, ch := range tables.ChainNames("nat", rules.IsOwnedServiceChain) {
		o, ok := want[ch]
		if !ok {
			t.Errorf("chain %s is not the hash of any service port or endpoint of the snapshot", ch)
			continue
		}
		isSEP := strings.HasPrefix(ch, "KUBE-SEP-")
		if isSEP != (o.ep != nil) {
			t.Errorf("chain %s has the hash of the wrong kind of object", ch)
			continue
		}
		proto := strings.ToLower(string(o.name.Protocol))
		dnat := 0
		for _, r := range nat.Chains[ch] {
			tgt := r.Target()
			if rules.IsOwnedServiceChain(tgt) {
				if to, ok := want[tgt]; !ok || to.name != o.name {
					t.Errorf("%s (%s) jumps to %s of another service port: %s", ch, o.name, tgt, r)
				}
				if isSEP {
					t.Errorf("endpoint chain %s jumps to owned chain %s", ch, tgt)
				}
			}
			if isSEP && tgt == "DNAT" {
				dnat++
				if got := r.Value("--to-destination"); got != o.ep.String() {
					t.Errorf("%s (endpoint %s of %s) DNATs to %s", ch, o.ep, o.name, got)
				}
				if got := r.Value("-p"); got != proto {
					t.Errorf("%s DNAT rule matches protocol %q, want %q", ch, got, proto)
				}
			}
			if isSEP && tgt == rules.ChainMarkMasq && r.Value("-s") != o.ep.IP.String() {
				t.Errorf("%s hairpin rule matches source %q, want %s", ch, r.Value("-s"), o.ep.IP)
			}
		}
		if isSEP && dnat != 1 {
			t.Errorf("%s has %d DNAT rules, want 1", ch, dnat)
		}
	}

	for _, dispatch := range []string{rules.ChainServices, rules.ChainNodePorts} {
		for _, r := range nat.Chains[dispatch] {
			tgt := r.Target()
			if !rules.IsOwnedServiceChain(tgt) {
				continue
			}
			o, ok := want[tgt]
			if !ok || o.ep != nil {
				t.Errorf("nat %s jumps to %s, not a service port chain: %s", dispatch, tgt, r)
				continue
			}
			sp := snap.Services[o.name]
			proto := strings.ToLower(string(o.name.Protocol))
			if r.Value("-p") != proto {
				t.Errorf("nat %s rule for %s matches protocol %q: %s", dispatch, o.name, r.Value("-p"), r)
			}
			kind := tgt[:strings.LastIndexByte(tgt, '-')+1]
			dst, port, comment := r.Value("-d"), r.Value("--dport"), r.Comment()
			name := o.name.String()
			var ok2 bool
			if dispatch == rules.ChainNodePorts {
				ok2 = comment == name && port == strconv.Itoa(int(sp.NodePort)) && sp.NodePort != 0 && kind == "KUBE-EXT-"
			} else {
				portOK := port == strconv.Itoa(int(sp.Port))
				switch comment {
				case name + " cluster IP":
					ok2 = portOK && dst == sp.ClusterIP.String() && (kind == "KUBE-SVC-" || kind == "KUBE-SVL-")
				case name + " external IP":
					ok2 = portOK && containsAddrString(sp.ExternalIPs, dst) && kind == "KUBE-EXT-"
				case name + " loadbalancer IP":
					ok2 = portOK && containsAddrString(sp.LoadBalancerVIPs, dst) && (kind == "KUBE-EXT-" || kind == "KUBE-FW-")
				}
			}
			if !ok2 {
				t.Errorf("nat %s rule into %s does not match service port %s (%+v): %s", dispatch, tgt, o.name, *sp, r)
			}
		}
	}
}

func containsAddrString(list []netip.Addr, s string) bool {
	for _, a := range list {
		if a.String() == s {
			return true
		}
	}
	return false
}

// checkNodePortsTail: the jumps to nat KUBE-NODEPORTS are the last rules of nat
// KUBE-SERVICES: exactly one when node ports answer on every local address, else one per
// local address in NodePortAddresses (loopback only with IPv4 localhost node ports).
func checkNodePortsTail(t *testing.T, c *fuzzCase, tables ruleset.Tables) {
	t.Helper()
	svcRules := tables["nat"].Chains[rules.ChainServices]
	first := len(svcRules)
	for i, r := range svcRules {
		if r.Target() == rules.ChainNodePorts {
			first = i
			break
		}
	}
	for i := first; i < len(svcRules); i++ {
		if svcRules[i].Target() != rules.ChainNodePorts {
			t.Errorf("nat KUBE-SERVICES rule %d comes after the node-ports jump: %s", i+1, svcRules[i])
		}
	}
	tail := len(svcRules) - first
	want := 1
	if len(c.opts.NodePortAddresses) > 0 {
		want = 0
		for _, a := range c.localAddrs {
			if a.IsLoopback() && !(c.opts.LocalhostNodePorts && !c.fam.v6) {
				continue
			}
			for _, p := range c.opts.NodePortAddresses {
				if p.Contains(a) {
					want++
					break
				}
			}
		}
	}
	if tail != want {
		t.Errorf("nat KUBE-SERVICES ends with %d node-ports jumps, want %d", tail, want)
	}
}

// checkNoLocalCounts recomputes Ruleset.NoLocalEndpoints from endpoint selection.
func checkNoLocalCounts(t *testing.T, c *fuzzCase, snap *model.Snapshot, rs *rules.Ruleset) {
	t.Helper()
	want := map[string]int{}
	for name, sp := range snap.Services {
		cat := model.CategorizeEndpoints(snap.Endpoints[name], sp, c.node)
		if !cat.HasAny || len(cat.Local) > 0 {
			continue
		}
		if sp.InternalPolicyLocal {
			want["internal"]++
		}
		if sp.ExternalPolicyLocal {
			want["external"]++
		}
	}
	if !reflect.DeepEqual(want, rs.NoLocalEndpoints) {
		t.Errorf("NoLocalEndpoints = %v, want %v", rs.NoLocalEndpoints, want)
	}
}

// checkTraces follows the first packet of a connection from a remote client to each
// service port's cluster IP, node port, first external IP and first load balancer IP,
// and compares the outcome with what endpoint selection says. The tracer does not model
// interface matches, so cases with an interface-based detector are not traced.
func checkTraces(t *testing.T, c *fuzzCase, snap *model.Snapshot, fresh ruleset.Tables) {
	t.Helper()
	if c.detector == "bridge" || c.detector == "prefix" {
		return
	}
	tables := fresh.Clone()
	for _, j := range rules.BuiltinJumps() {
		tb := tables[j.Table]
		if _, ok := tb.Chains[j.To]; !ok {
			tb.Chains[j.To] = nil
		}
		tb.Chains[j.From] = append([]ruleset.Rule{j.RuleArgs()}, tb.Chains[j.From]...)
	}
	local := []netip.Addr{c.fam.extraLocal}
	if c.node.IP.IsValid() {
		local = append(local, c.node.IP)
	}
	tracer := &ruleset.Tracer{Tables: tables, LocalAddrs: local, MasqueradeMark: 1 << c.opts.MasqueradeBit}
	// External IPs may be shared; a destination two service ports claim is not traced.
	claims := map[string]int{}
	for _, sp := range snap.Services {
		for _, ip := range sp.ExternalIPs {
			claims[fmt.Sprint(ip, sp.Port, sp.Name.Protocol)]++
		}
	}

	for _, name := range snap.SortedServiceNames() {
		sp := snap.Services[name]
		cat := model.CategorizeEndpoints(snap.Endpoints[name], sp, c.node)
		proto := strings.ToLower(string(name.Protocol))
		pick := func(localPolicy bool) []model.Endpoint {
			if localPolicy {
				return cat.Local
			}
			return cat.Cluster
		}
		type expect struct {
			eps     []model.Endpoint
			masq    bool
			verdict string
		}
		outcome := func(localPolicy, masq bool) expect {
			switch {
			case !cat.HasAny:
				return expect{verdict: "REJECT"}
			case localPolicy && len(cat.Local) == 0:
				return expect{verdict: "DROP"}
			}
			return expect{eps: pick(localPolicy), masq: masq, verdict: "ACCEPT"}
		}
		trace := func(what string, dst netip.Addr, port int32, want expect) {
			pkt := ruleset.Packet{Src: c.fam.remote, Dst: dst, Proto: proto, DPort: int(port)}
			got, err := tracer.Trace(pkt)
			if err != nil {
				t.Errorf("%s %s: trace failed: %v", name, what, err)
				return
			}
			var wantEps []string
			for _, ep := range want.eps {
				wantEps = append(wantEps, ep.String())
			}
			gotEps := append([]string(nil), got.Endpoints...)
			sort.Strings(gotEps)
			sort.Strings(wantEps)
			if strings.Join(gotEps, ",") != strings.Join(wantEps, ",") || got.Verdict != want.verdict ||
				(want.verdict == "ACCEPT" && got.Masquerade != want.masq) {
				t.Errorf("%s %s (%s -> %s:%d): got %s, want endpoints=%s masq=%t verdict=%s (categorized %+v)",
					name, what, pkt.Src, dst, port, got, strings.Join(wantEps, ","), want.masq, want.verdict, cat)
			}
		}

		clusterMasq := c.opts.MasqueradeAll || c.detector == "cidr"
		trace("cluster IP", sp.ClusterIP, sp.Port, outcome(sp.InternalPolicyLocal, clusterMasq))
		external := outcome(sp.ExternalPolicyLocal, !sp.ExternalPolicyLocal)
		if sp.NodePort != 0 && c.node.IP.IsValid() && len(c.opts.NodePortAddresses) == 0 {
			trace("node port", c.node.IP, sp.NodePort, external)
		}
		for _, ip := range sp.ExternalIPs {
			if claims[fmt.Sprint(ip, sp.Port, sp.Name.Protocol)] == 1 {
				trace("external IP", ip, sp.Port, external)
			}
		}
		if len(sp.LoadBalancerVIPs) > 0 {
			lb := external
			if cat.HasAny && len(sp.LoadBalancerSourceRanges) > 0 {
				allowed := false
				for _, p := range sp.LoadBalancerSourceRanges {
					allowed = allowed || p.Contains(c.fam.remote)
				}
				if !allowed || lb.verdict == "DROP" {
					lb = expect{verdict: "DROP"}
				}
			}
			trace("load balancer IP", sp.LoadBalancerVIPs[0], sp.Port, lb)
		}
	}
}

// kernelPartial is what the real-binary check needs to replay a partial sync.
type kernelPartial struct {
	prevPayload, partialPayload, fullOnPrevPayload []byte
	leftovers, foreign                             bool
}

// checkPartial renders the previous snapshot in full, applies it, then renders the
// current one partially (and in full, with the existing chains listed) on top, and
// requires both to end as a fresh full render does.
func checkPartial(t *testing.T, c *fuzzCase, cur *model.Snapshot, full *rules.Ruleset, fresh ruleset.Tables) *kernelPartial {
	t.Helper()
	p := c.partial
	prevSnap := buildSnapshot(p.prev)
	prevRS := rules.Render(rules.Request{Snapshot: prevSnap, Node: c.node, LocalAddrs: c.localAddrs}, c.opts)
	prevTables := ruleset.NewTables()
	if err := prevTables.Apply(prevRS.Payload()); err != nil {
		t.Fatalf("previous payload rejected: %v\n%s", err, payloadContext(prevRS.Payload(), err))
	}
	if p.foreign {
		if err := prevTables.Apply(foreignPayload); err != nil {
			t.Fatalf("foreign payload: %v", err)
		}
	}
	// An incremental sync relies on the kernel holding exactly the previous state, which
	// is why the first sync after a start (when an earlier proxy may have left rules
	// behind) is always full. Leftovers are therefore only put under the full sync.
	prevPlain := prevTables.Clone()
	if p.leftovers {
		if err := prevTables.Apply(leftoverPayload); err != nil {
			t.Fatalf("leftover payload: %v", err)
		}
	}
	existing := prevRS.State.Chains()
	if p.existingFromSave {
		existing = prevTables.ChainNames("nat", nil)
	}
	// A chain the proxier believes exists but does not (deleted behind its back) must
	// not break the sync either.
	existing = append(append([]string(nil), existing...), bogusExisting)

	changed := changedServices(prevSnap, cur)
	for _, nn := range p.extraChanged {
		changed[nn] = true
	}
	want := fresh.Clone()
	foreignRules := 0
	if p.foreign {
		if err := want.Apply(foreignPayload); err != nil {
			t.Fatalf("foreign payload: %v", err)
		}
		foreignRules = 1
	}
	activeSet := map[string]bool{}
	for _, ch := range full.State.Chains() {
		activeSet[ch] = true
	}
	wantDeleted := 0
	for _, ch := range existing {
		if rules.IsOwnedServiceChain(ch) && !activeSet[ch] {
			wantDeleted++
		}
	}

	base := rules.Request{Snapshot: cur, Node: c.node, LocalAddrs: c.localAddrs, ExistingNATChains: existing}
	partialReq := base
	partialReq.Partial, partialReq.Changed, partialReq.Previous = true, changed, prevRS.State
	owners := expectedChains(t, cur)

	var payloads [][]byte
	for _, tc := range []struct {
		name string
		req  rules.Request
	}{{"partial", partialReq}, {"full with existing chains", base}} {
		before := copySnapshot(cur)
		rs := rules.Render(tc.req, c.opts)
		if again := rules.Render(tc.req, c.opts); !reflect.DeepEqual(rs, again) {
			t.Fatalf("%s render is not deterministic:\n%s", tc.name, rulestest.Diff(string(rs.Payload()), string(again.Payload())))
		}
		if !reflect.DeepEqual(before, cur) {
			t.Fatalf("%s render modified its snapshot", tc.name)
		}
		var owner func(string) (types.NamespacedName, bool)
		if tc.req.Partial {
			owner = func(ch string) (types.NamespacedName, bool) {
				o, ok := owners[ch]
				return o.name.NamespacedName, ok && changed[o.name.NamespacedName]
			}
		}
		checkDeclarations(t, rs.Payload(), owner)
		after := prevTables.Clone()
		if tc.req.Partial {
			after = prevPlain.Clone()
		}
		if err := after.Apply(rs.Payload()); err != nil {
			t.Fatalf("%s payload rejected on top of the previous sync: %v\n%s\nprevious payload:\n%s",
				tc.name, err, payloadContext(rs.Payload(), err), prevRS.Payload())
		}
		if got, w := after.Dump(), want.Dump(); got != w {
			t.Fatalf("%s sync on top of the previous one differs from a fresh full sync (changed %v):\n%s\npayload:\n%s\nprevious payload:\n%s",
				tc.name, changed, rulestest.Diff(w, got), rs.Payload(), prevRS.Payload())
		}
		if rs.NATRules != full.NATRules || rs.FilterRules != full.FilterRules {
			t.Errorf("%s counts nat=%d filter=%d, full render nat=%d filter=%d", tc.name, rs.NATRules, rs.FilterRules, full.NATRules, full.FilterRules)
		}
		if got := after.RuleCount("nat") - foreignRules; got != rs.NATRules {
			t.Errorf("%s: Ruleset.NATRules = %d, tables hold %d of ours", tc.name, rs.NATRules, got)
		}
		if !reflect.DeepEqual(rs.State.Chains(), full.State.Chains()) {
			t.Errorf("%s chains differ from the full render's:\n%s", tc.name,
				rulestest.Diff(strings.Join(full.State.Chains(), "\n"), strings.Join(rs.State.Chains(), "\n")))
		}
		if rs.DeletedNATChains != wantDeleted {
			t.Errorf("%s DeletedNATChains = %d, want %d", tc.name, rs.DeletedNATChains, wantDeleted)
		}
		if t.Failed() {
			t.FailNow()
		}
		payloads = append(payloads, rs.Payload())
	}
	return &kernelPartial{prevPayload: prevRS.Payload(), partialPayload: payloads[0],
		fullOnPrevPayload: payloads[1], leftovers: p.leftovers, foreign: p.foreign}
}

// ---------------------------------------------------------------------------------------
// The real binaries, in one private network namespace per test process.

const fuzzNSPrefix = "kproxy-fuzz-"

type fuzzKernel struct {
	name    string
	restore map[bool]string // by IPv6
	save    map[bool]string
	err     error
}

var (
	fuzzKernelMu sync.Mutex
	// fuzzKernelNS is set up once per process (and again after deleteFuzzNamespace, when
	// one process runs FuzzRender more than once, e.g. with -count).
	fuzzKernelNS    *fuzzKernel
	fuzzKernelSetUp bool
)

// realKernel returns the process's namespace, creating it on first use, or nil when the
// real-binary checks cannot run (not root, or no ip / iptables binaries).
func realKernel(t *testing.T) *fuzzKernel {
	t.Helper()
	fuzzKernelMu.Lock()
	defer fuzzKernelMu.Unlock()
	if !fuzzKernelSetUp {
		fuzzKernelNS, fuzzKernelSetUp = setupFuzzKernel(), true
	}
	k := fuzzKernelNS
	if k != nil && k.err != nil {
		t.Fatalf("setting up the fuzz network namespace: %v", k.err)
	}
	return k
}

func lookFirst(names ...string) string {
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	return ""
}

func setupFuzzKernel() *fuzzKernel {
	if os.Getenv("KPROXY_FUZZ_KERNEL") == "0" || os.Geteuid() != 0 || lookFirst("ip") == "" {
		return nil
	}
	k := &fuzzKernel{restore: map[bool]string{}, save: map[bool]string{}}
	for _, v6 := range []bool{false, true} {
		prefix := "iptables"
		if v6 {
			prefix = "ip6tables"
		}
		k.restore[v6] = lookFirst(prefix+"-nft-restore", prefix+"-restore")
		k.save[v6] = lookFirst(prefix+"-nft-save", prefix+"-save")
		if k.restore[v6] == "" || k.save[v6] == "" {
			return nil
		}
	}
	pruneFuzzNamespaces()
	k.name = fmt.Sprintf("%s%d", fuzzNSPrefix, os.Getpid())
	if out, err := exec.Command("ip", "netns", "add", k.name).CombinedOutput(); err != nil {
		k.err = fmt.Errorf("ip netns add %s: %v: %s", k.name, err, out)
		k.name = ""
		return k
	}
	if out, err := exec.Command("ip", "-n", k.name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		k.err = fmt.Errorf("ip -n %s link set lo up: %v: %s", k.name, err, out)
	}
	return k
}

// pruneFuzzNamespaces deletes namespaces that fuzz processes which died (a crashing
// input kills its worker before any cleanup runs) left behind.
func pruneFuzzNamespaces() {
	out, err := exec.Command("ip", "netns", "list").Output()
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Fields(line)
		if len(fields) == 0 || !strings.HasPrefix(fields[0], fuzzNSPrefix) {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimPrefix(fields[0], fuzzNSPrefix))
		if err != nil || pid == os.Getpid() {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			_ = exec.Command("ip", "netns", "del", fields[0]).Run()
		}
	}
}

func deleteFuzzNamespace() {
	fuzzKernelMu.Lock()
	defer fuzzKernelMu.Unlock()
	if fuzzKernelNS != nil && fuzzKernelNS.name != "" {
		_ = exec.Command("ip", "netns", "del", fuzzKernelNS.name).Run()
	}
	fuzzKernelNS, fuzzKernelSetUp = nil, false
}

var restoreErrorLine = regexp.MustCompile(`line:? (\d+)`)

func (k *fuzzKernel) run(v6 bool, payload []byte, args ...string) error {
	cmd := exec.Command("ip", append([]string{"netns", "exec", k.name, k.restore[v6]}, args...)...)
	cmd.Stdin = bytes.NewReader(payload)
	out, err := cmd.CombinedOutput()
	if err == nil {
		return nil
	}
	msg := fmt.Sprintf("%s %s: %v: %s", k.restore[v6], strings.Join(args, " "), err, bytes.TrimSpace(out))
	if m := restoreErrorLine.FindSubmatch(out); m != nil {
		n, _ := strconv.Atoi(string(m[1]))
		msg += "\n" + rulestest.LinesAround(payload, n, 5)
	}
	return errors.New(msg)
}

func (k *fuzzKernel) dump(v6 bool) (ruleset.Tables, error) {
	out, err := exec.Command("ip", "netns", "exec", k.name, k.save[v6]).Output()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", k.save[v6], err)
	}
	tables := ruleset.NewTables()
	if err := tables.Apply(out); err != nil {
		return nil, fmt.Errorf("parsing %s output: %w\n%s", k.save[v6], err, out)
	}
	return tables, nil
}

// checkKernel runs the payloads through the real binary: with --test --noflush, and
// committed for real, which (unlike --test with the nft backend, which only parses)
// checks jump targets and every match and target against the kernel. A restore without
// --noflush first flushes and deletes every chain of filter and nat, so each sequence
// starts from a clean namespace without a separate reset.
func checkKernel(t *testing.T, c *fuzzCase, rs *rules.Ruleset, kp *kernelPartial) {
	k := realKernel(t)
	if k == nil {
		return
	}
	v6 := c.fam.v6
	must := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("real iptables, %s: %v", what, err)
		}
	}
	state := func(what string) ruleset.Tables {
		t.Helper()
		tables, err := k.dump(v6)
		must(what, err)
		return tables
	}

	fake := ruleset.NewTables()
	must("fake apply", fake.Apply(rs.Payload()))
	payload := rs.Payload()
	if kp != nil && kp.foreign {
		payload = withNATLines(payload, foreignBody)
		must("fake foreign chain", fake.Apply(foreignPayload))
	}
	must("committing full payload to a clean namespace", k.run(v6, payload))
	must("--test --noflush full payload on top of itself", k.run(v6, rs.Payload(), "--test", "--noflush"))
	kFull := state("saving after full payload")
	if got, want := rulestest.Shape(kFull), rulestest.Shape(fake); got != want {
		t.Fatalf("kernel tables differ in shape from the fake's:\n%s", rulestest.Diff(want, got))
	}
	if kp == nil {
		return
	}
	for _, tc := range []struct {
		name      string
		payload   []byte
		leftovers bool
	}{{"partial payload", kp.partialPayload, false}, {"full payload with existing chains", kp.fullOnPrevPayload, kp.leftovers}} {
		prev := kp.prevPayload
		if tc.leftovers {
			prev = withNATLines(prev, leftoverBody)
		}
		if kp.foreign {
			prev = withNATLines(prev, foreignBody)
		}
		must("committing previous payload to a clean namespace", k.run(v6, prev))
		must("--test --noflush "+tc.name, k.run(v6, tc.payload, "--test", "--noflush"))
		must("committing "+tc.name, k.run(v6, tc.payload, "--noflush"))
		if got, want := state("saving after "+tc.name).Dump(), kFull.Dump(); got != want {
			t.Fatalf("kernel after the %s on top of the previous sync differs from a full sync:\n%s", tc.name, rulestest.Diff(want, got))
		}
	}
}
