package integration

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/clock"
	"k8s.io/utils/ptr"

	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/proxier"
	"github.com/kproxy-dev/kproxy/pkg/rules"
)

// Addresses of the topology drawn in doc.go.
var (
	clusterCIDR = netip.MustParsePrefix("10.244.0.0/16")
	clientAddr  = netip.MustParseAddr("192.0.2.10")
	nodeAddr    = netip.MustParseAddr("192.0.2.1") // the node's address facing the client
)

const (
	// exchangeTimeout bounds one dial, and one request/reply on the connection.
	exchangeTimeout = 2 * time.Second
	// maxExchanges bounds loops that wait for every endpoint to answer. With two
	// endpoints picked at random, 200 exchanges all missing one has odds of 2^-199.
	maxExchanges = 200
	// svcNamespace is the Kubernetes namespace of every test Service.
	svcNamespace = "demo"
)

// pod is a backend namespace on its own /24 link to the node.
type pod struct {
	name string
	ns   *netnstest.NS
	ip   netip.Addr
	// gateway is the node's address on the pod's link: the pod's default route, and the
	// source address the pod sees for masqueraded traffic.
	gateway netip.Addr
}

// nodeName is the name of the node the proxier runs on (Config.Node.Name). Endpoints
// whose nodeName is this one are local; tests mark the other pods as on "node-2".
const nodeName = "node-1"

// cluster is one test's topology; see doc.go.
type cluster struct {
	node, client, gw *netnstest.NS
	pods             []*pod

	family      v1.IPFamily
	clusterCIDR netip.Prefix // the pod network
	nodeAddr    netip.Addr   // the node's address facing the client
}

// newCluster builds the topology with nPods pods (pod1 at 10.244.1.2, pod2 at 10.244.2.2,
// ...) and no iptables rules anywhere.
func newCluster(t *testing.T, nPods int) *cluster {
	t.Helper()
	c := &cluster{
		node:        netnstest.New(t, "kpx-node"),
		client:      netnstest.New(t, "kpx-client"),
		gw:          netnstest.New(t, "kpx-gw"),
		family:      v1.IPv4Protocol,
		clusterCIDR: clusterCIDR,
		nodeAddr:    nodeAddr,
	}
	// The node forwards. It sends no ICMP redirects: a hairpinned packet (a pod reaching
	// itself through a service) leaves by the link it came in on, and a redirect would
	// teach the pod a route for the cluster IP that bypasses the node. These are set
	// before any link exists, so every interface inherits them from "default".
	c.node.Run(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1",
		"net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.default.send_redirects=0")
	// Nothing else forwards, whatever a new namespace inherits from the host: in
	// particular the gw namespace is a dead end.
	c.client.Run(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
	c.gw.Run(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")

	netnstest.Link(t, c.node, nodeAddr.String()+"/24", c.client, clientAddr.String()+"/24")
	c.client.Run(t, "ip", "route", "add", "default", "via", nodeAddr.String())
	netnstest.Link(t, c.node, "198.51.100.1/24", c.gw, "198.51.100.2/24")
	c.node.Run(t, "ip", "route", "add", "default", "via", "198.51.100.2")

	for i := 1; i <= nPods; i++ {
		p := &pod{
			name:    fmt.Sprintf("pod%d", i),
			ns:      netnstest.New(t, fmt.Sprintf("kpx-pod%d", i)),
			ip:      netip.AddrFrom4([4]byte{10, 244, byte(i), 2}),
			gateway: netip.AddrFrom4([4]byte{10, 244, byte(i), 1}),
		}
		p.ns.Run(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=0")
		netnstest.Link(t, c.node, p.gateway.String()+"/24", p.ns, p.ip.String()+"/24")
		p.ns.Run(t, "ip", "route", "add", "default", "via", p.gateway.String())
		c.pods = append(c.pods, p)
	}
	return c
}

// serve starts a TCP and a UDP echo server on the pod's address. Each TCP connection
// gets one line "<pod> <remote addr:port>" and is closed; each UDP datagram is answered
// with the same line. The servers stop when the test ends.
func (p *pod) serve(t *testing.T, tcpPort, udpPort uint16) {
	t.Helper()
	var ln net.Listener
	var pc net.PacketConn
	if err := p.ns.Do(func() error {
		var err error
		if ln, err = net.Listen("tcp", netip.AddrPortFrom(p.ip, tcpPort).String()); err != nil {
			return err
		}
		if pc, err = net.ListenPacket("udp", netip.AddrPortFrom(p.ip, udpPort).String()); err != nil {
			ln.Close()
			return err
		}
		return nil
	}); err != nil {
		t.Fatalf("starting echo servers in %s: %v", p.name, err)
	}

	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return // closed by the cleanup
			}
			_ = c.SetDeadline(time.Now().Add(exchangeTimeout))
			_, _ = fmt.Fprintf(c, "%s %s\n", p.name, c.RemoteAddr())
			c.Close()
		}
	})
	wg.Go(func() {
		buf := make([]byte, 512)
		for {
			_, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return // closed by the cleanup
			}
			_, _ = pc.WriteTo(fmt.Appendf(nil, "%s %s\n", p.name, addr), addr)
		}
	})
	t.Cleanup(func() {
		ln.Close()
		pc.Close()
		wg.Wait()
	})
}

// reply is one echo server answer.
type reply struct {
	pod string         // the pod that answered
	src netip.AddrPort // the client address the pod saw
}

func (r reply) String() string { return r.pod + "<-" + r.src.String() }

// exchange makes one request from the calling thread's namespace: a TCP connection that
// reads the server's line, or a UDP datagram and its answer.
func exchange(network, addr string) (reply, error) {
	c, err := net.DialTimeout(network, addr, exchangeTimeout)
	if err != nil {
		return reply{}, err
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(exchangeTimeout)); err != nil {
		return reply{}, err
	}
	var data []byte
	switch network {
	case "udp":
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return reply{}, err
		}
		buf := make([]byte, 512)
		n, err := c.Read(buf)
		if err != nil {
			return reply{}, err
		}
		data = buf[:n]
	default:
		// The client sends nothing: a server closing with unread data would answer
		// with a RST instead of a FIN.
		if data, err = io.ReadAll(c); err != nil {
			return reply{}, err
		}
	}
	return parseReply(data)
}

// parseReply parses an echo server's line.
func parseReply(data []byte) (reply, error) {
	fields := strings.Fields(string(data))
	if len(fields) != 2 {
		return reply{}, fmt.Errorf("malformed reply %q", data)
	}
	src, err := netip.ParseAddrPort(fields[1])
	if err != nil {
		return reply{}, fmt.Errorf("malformed reply %q: %w", data, err)
	}
	return reply{pod: fields[0], src: src}, nil
}

// exchanges makes up to limit requests from inside ns, stopping early once done (if not
// nil) is true of the replies so far. The first failed exchange fails the test, so the
// loop takes at most limit round trips or one timeout.
func exchanges(t *testing.T, ns *netnstest.NS, network, addr string, limit int, done func([]reply) bool) []reply {
	t.Helper()
	var replies []reply
	err := ns.Do(func() error {
		for range limit {
			r, err := exchange(network, addr)
			if err != nil {
				return fmt.Errorf("exchange %d: %w", len(replies)+1, err)
			}
			replies = append(replies, r)
			if done != nil && done(replies) {
				return nil
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("%s %s from %s: %v (replies before: %v)", network, addr, ns.Name(), err, replies)
	}
	return replies
}

// answered counts replies by pod.
func answered(replies []reply) map[string]int {
	n := map[string]int{}
	for _, r := range replies {
		n[r.pod]++
	}
	return n
}

// reachesAll checks that requests from ns to addr are spread over every pod in pods
// (and reach no other), and that each pod sees the source address wantSrc(pod).
func reachesAll(t *testing.T, from *netnstest.NS, network, addr string, pods []*pod, wantSrc func(*pod) netip.Addr) {
	t.Helper()
	replies := exchanges(t, from, network, addr, maxExchanges, func(rs []reply) bool {
		return len(answered(rs)) >= len(pods)
	})
	seen := answered(replies)
	byName := map[string]*pod{}
	for _, p := range pods {
		byName[p.name] = p
		if seen[p.name] == 0 {
			t.Errorf("%s %s from %s: %s never answered in %d exchanges (%v)", network, addr, from.Name(), p.name, len(replies), seen)
		}
	}
	reported := map[string]bool{}
	for _, r := range replies {
		p, ok := byName[r.pod]
		switch {
		case !ok:
			t.Errorf("%s %s: answered by %q, want one of the endpoints", network, addr, r.pod)
		case r.src.Addr() != wantSrc(p) && !reported[p.name]:
			reported[p.name] = true
			t.Errorf("%s %s from %s: %s saw source %s, want %s", network, addr, from.Name(), p.name, r.src.Addr(), wantSrc(p))
		}
	}
	t.Logf("%s %s from %s: %d exchanges, %v", network, addr, from.Name(), len(replies), seen)
}

// dialErr makes one TCP dial from inside ns, waiting at most timeout, and returns its
// error.
func dialErr(t *testing.T, ns *netnstest.NS, addr string, timeout time.Duration) error {
	t.Helper()
	var dialErr error
	if err := ns.Do(func() error {
		c, err := net.DialTimeout("tcp", addr, timeout)
		if err == nil {
			c.Close()
		}
		dialErr = err
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return dialErr
}

// wantRefused asserts that a TCP connection from ns to addr is refused at once (a
// REJECT rule's ICMP port unreachable, or a RST), not dropped into a timeout.
func wantRefused(t *testing.T, ns *netnstest.NS, addr string) {
	t.Helper()
	if err := dialErr(t, ns, addr, exchangeTimeout); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("TCP %s from %s: got %v, want ECONNREFUSED", addr, ns.Name(), err)
	}
}

// wantRefusedUDP asserts that a UDP datagram from ns to addr is refused: the REJECT's
// ICMP port unreachable surfaces on the connected socket.
func wantRefusedUDP(t *testing.T, ns *netnstest.NS, addr string) {
	t.Helper()
	var udpErr error
	if err := ns.Do(func() error {
		_, udpErr = exchange("udp", addr)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(udpErr, syscall.ECONNREFUSED) {
		t.Errorf("UDP %s from %s: got %v, want ECONNREFUSED", addr, ns.Name(), udpErr)
	}
}

// dropTimeout is how long a dial waits before a connection counts as dropped. A dropped
// SYN is first retransmitted after a second, so a shorter wait sees a single attempt.
const dropTimeout = time.Second

// wantDropped asserts that a TCP connection from ns to addr is silently dropped: the
// dial times out, rather than being refused (by a REJECT rule, or by the node's RST for
// a port nothing listens on). A timeout alone does not say who dropped the packet: the
// gw namespace drops what no rule intercepted, too.
func wantDropped(t *testing.T, ns *netnstest.NS, addr string) {
	t.Helper()
	err := dialErr(t, ns, addr, dropTimeout)
	var nerr net.Error
	if !errors.As(err, &nerr) || !nerr.Timeout() {
		t.Errorf("TCP %s from %s: got %v, want a timeout (dropped)", addr, ns.Name(), err)
	}
}

// kproxy is a proxier for one IP family with the real iptables binaries of one backend,
// applying its rules in the node namespace.
type kproxy struct {
	*proxier.Proxier
	ipt  iptables.Interface
	node *netnstest.NS
	ctx  context.Context
}

// forEachBackend runs fn as subtest "legacy" and "nft", each skipped when not root or
// when the backend's IPv4 binaries are missing.
func forEachBackend(t *testing.T, fn func(t *testing.T, backend iptables.Backend)) {
	forEachBackendOf(t, v1.IPv4Protocol, fn)
}

// forEachBackendOf is forEachBackend for the binaries of family.
func forEachBackendOf(t *testing.T, family v1.IPFamily, fn func(t *testing.T, backend iptables.Backend)) {
	for _, backend := range []iptables.Backend{iptables.BackendLegacy, iptables.BackendNFT} {
		t.Run(string(backend), func(t *testing.T) {
			netnstest.RequireRoot(t)
			for _, tool := range []string{"", "restore", "save"} {
				name := iptables.BinaryName(family, backend, tool)
				if _, err := exec.LookPath(name); err != nil {
					t.Skipf("skipping: %s backend not installed: %v", backend, err)
				}
			}
			fn(t, backend)
		})
	}
}

// testContext carries a logger that writes to the test's log (shown with -v or on
// failure) at the proxier's per-sync verbosity.
func testContext(t *testing.T) context.Context {
	return klog.NewContext(context.Background(), ktesting.NewLogger(t, ktesting.NewConfig(ktesting.Verbosity(2))))
}

// newIPTables returns the real iptables Interface for family and backend. It is built
// inside the node namespace, although building it only runs "--version".
func newIPTables(t *testing.T, node *netnstest.NS, family v1.IPFamily, backend iptables.Backend) iptables.Interface {
	t.Helper()
	var ipt iptables.Interface
	if err := node.Do(func() error {
		var err error
		ipt, err = iptables.New(family, backend, 5*time.Second)
		return err
	}); err != nil {
		t.Fatalf("iptables.New(%s, %s): %v", family, backend, err)
	}
	return ipt
}

// newKproxy builds the proxier for the cluster's IP family as the kproxy command would
// for this node, named nodeName. opts then adjust the configuration (e.g. to add a
// conntrack cleaner). Nothing syncs until load and sync are called.
func newKproxy(t *testing.T, c *cluster, backend iptables.Backend, opts ...func(*proxier.Config)) *kproxy {
	t.Helper()
	ctx := testContext(t)
	cfg := proxier.Config{
		Family:   c.family,
		IPTables: newIPTables(t, c.node, c.family, backend),
		Rules: rules.Options{
			Family:        c.family,
			MasqueradeBit: 14,
			LocalDetector: rules.DetectByCIDR(c.clusterCIDR),
			// Localhost node ports exist for IPv4 only.
			LocalhostNodePorts: c.family == v1.IPv4Protocol,
			DropInvalid:        true,
		},
		Node:          model.Node{Name: nodeName, IP: c.nodeAddr},
		MinSyncPeriod: time.Second,
		SyncPeriod:    30 * time.Second,
		Clock:         clock.RealClock{},
	}
	for _, opt := range opts {
		opt(&cfg)
	}
	p := proxier.New(ctx, cfg)
	return &kproxy{Proxier: p, ipt: cfg.IPTables, node: c.node, ctx: ctx}
}

// load feeds the initial list of objects and marks both lists as synced, as the
// informers would at startup.
func (k *kproxy) load(objs ...any) {
	for _, o := range objs {
		switch o := o.(type) {
		case *v1.Service:
			k.OnServiceAdd(o)
		case *discovery.EndpointSlice:
			k.OnEndpointSliceAdd(o)
		default:
			panic(fmt.Sprintf("load: unexpected %T", o))
		}
	}
	k.OnServicesSynced()
	k.OnEndpointSlicesSynced()
}

// syncErr runs one sync inside the node namespace, where the iptables binaries it runs
// inherit the namespace.
func (k *kproxy) syncErr(t *testing.T) error {
	t.Helper()
	return k.node.Do(func() error { return k.Sync(k.ctx) })
}

// sync runs one sync and fails the test if it fails.
func (k *kproxy) sync(t *testing.T) {
	t.Helper()
	if err := k.syncErr(t); err != nil {
		t.Fatalf("sync: %v", err)
	}
}

// save returns "iptables-<backend>-save [-t table]" run in the node namespace; an empty
// table means all tables.
func (k *kproxy) save(t *testing.T, table string) string {
	t.Helper()
	args := []string{iptables.BinaryName(k.ipt.Family(), k.ipt.Backend(), "save")}
	if table != "" {
		args = append(args, "-t", table)
	}
	return k.node.Run(t, args...)
}

// port is one service port and where its endpoints listen.
type port struct {
	name     string
	proto    v1.Protocol
	port     int32
	nodePort int32 // 0: none
	target   int32 // the endpoints' port
}

// The ports of the "web" service most tests use.
var (
	httpPort = port{name: "http", proto: v1.ProtocolTCP, port: 80, target: 8080}
	dnsPort  = port{name: "dns", proto: v1.ProtocolUDP, port: 53, target: 5353}
)

// withNodePort returns p with a node port.
func (p port) withNodePort(n int32) port { p.nodePort = n; return p }

// service builds a Service in svcNamespace: of type NodePort if a port has a node port,
// ClusterIP otherwise. Its IP family is the cluster IP's (IPv4 if it is malformed).
func service(name, clusterIP string, ports ...port) *v1.Service {
	family := v1.IPv4Protocol
	if ip, err := netip.ParseAddr(clusterIP); err == nil && ip.Is6() {
		family = v1.IPv6Protocol
	}
	svc := &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: svcNamespace, Name: name},
		Spec: v1.ServiceSpec{
			Type:       v1.ServiceTypeClusterIP,
			ClusterIP:  clusterIP,
			ClusterIPs: []string{clusterIP},
			IPFamilies: []v1.IPFamily{family},
		},
	}
	for _, p := range ports {
		if p.nodePort != 0 {
			svc.Spec.Type = v1.ServiceTypeNodePort
		}
		svc.Spec.Ports = append(svc.Spec.Ports, v1.ServicePort{Name: p.name, Protocol: p.proto, Port: p.port, NodePort: p.nodePort})
	}
	return svc
}

// endpointSlice builds the one EndpointSlice of service svc, with a ready endpoint per
// pod, listening on every port's target port. It is an IPv6 slice if the pods are IPv6.
func endpointSlice(svc string, ports []port, pods ...*pod) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: svcNamespace, Name: svc + "-1",
			Labels: map[string]string{discovery.LabelServiceName: svc},
		},
		AddressType: discovery.AddressTypeIPv4,
	}
	if len(pods) > 0 && pods[0].ip.Is6() {
		s.AddressType = discovery.AddressTypeIPv6
	}
	for _, p := range ports {
		s.Ports = append(s.Ports, discovery.EndpointPort{Name: ptr.To(p.name), Protocol: ptr.To(p.proto), Port: ptr.To(p.target)})
	}
	for _, p := range pods {
		s.Endpoints = append(s.Endpoints, discovery.Endpoint{
			Addresses:  []string{p.ip.String()},
			Conditions: discovery.EndpointConditions{Ready: ptr.To(true), Serving: ptr.To(true), Terminating: ptr.To(false)},
		})
	}
	return s
}

// hostPort joins an address and a port.
func hostPort(addr string, port int32) string { return net.JoinHostPort(addr, fmt.Sprint(port)) }

// podGateway is the source a pod sees for masqueraded traffic: the node's address on
// the pod's link.
func podGateway(p *pod) netip.Addr { return p.gateway }
