package conntrack_test

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy-dev/kproxy/pkg/conntrack"
	"github.com/kproxy-dev/kproxy/pkg/conntrack/fake"
	"github.com/kproxy-dev/kproxy/pkg/metrics"
	"github.com/kproxy-dev/kproxy/pkg/model"
)

// Addresses as in upstream's cleanup tests, plus a node IP for node ports and
// a client address.
const (
	clusterIP   = "172.30.1.1"
	externalIP  = "192.168.99.100"
	lbIP        = "1.2.3.4"
	nodeIP      = "192.168.0.2"
	clientIP    = "10.0.0.99"
	servingIP   = "10.240.0.4"
	notServIP   = "10.240.1.5"
	deletedIP   = "10.240.2.6"
	svcPort     = 8000
	nodePort    = 32000
	nonSvcPort  = 3000
	targetPort  = 8080
	clientPort  = 40000
	otherTarget = 9090
)

// svcDef is one service port and its endpoints, the unit tests build
// snapshots from.
type svcDef struct {
	name     string
	protocol v1.Protocol
	port     model.ServicePort
	eps      []model.Endpoint
}

func snapshot(defs ...svcDef) *model.Snapshot {
	snap := &model.Snapshot{
		Services:  map[model.ServicePortName]*model.ServicePort{},
		Endpoints: map[model.ServicePortName][]model.Endpoint{},
	}
	for _, d := range defs {
		name := model.ServicePortName{
			NamespacedName: types.NamespacedName{Namespace: "test", Name: d.name},
			Port:           strings.ToLower(string(d.protocol)),
			Protocol:       d.protocol,
		}
		sp := d.port
		sp.Name = name
		snap.Services[name] = &sp
		if d.eps != nil {
			snap.Endpoints[name] = d.eps
		}
	}
	return snap
}

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func ep(ip string, port int32, serving bool) model.Endpoint {
	return model.Endpoint{IP: netip.MustParseAddr(ip), Port: port, Ready: serving, Serving: serving}
}

// flow is an entry from a client to dst that the rules DNATed to backend (or
// not, when backend is dst). Ports go with the addresses as "ip:port".
func flow(proto v1.Protocol, src, dst, backend string) conntrack.Flow {
	s, d, b := netip.MustParseAddrPort(src), netip.MustParseAddrPort(dst), netip.MustParseAddrPort(backend)
	return conntrack.Flow{Protocol: proto, OrigSrc: s, OrigDst: d, ReplySrc: b, ReplyDst: s}
}

func udp(dst, backend string) conntrack.Flow {
	return flow(v1.ProtocolUDP, hostPort(clientIP, clientPort), dst, backend)
}

func hostPort(ip string, port int) string {
	return netip.AddrPortFrom(netip.MustParseAddr(ip), uint16(port)).String()
}

// fullService is upstream's test service: one port per protocol on the same
// addresses, UDP and SCTP with a node port, one serving and one non-serving
// endpoint.
func fullService(protocol v1.Protocol, eps ...model.Endpoint) svcDef {
	d := svcDef{
		name:     "cleanup-test",
		protocol: protocol,
		port: model.ServicePort{
			ClusterIP:        netip.MustParseAddr(clusterIP),
			Port:             svcPort,
			ExternalIPs:      addrs(externalIP),
			LoadBalancerVIPs: addrs(lbIP),
		},
		eps: eps,
	}
	if protocol != v1.ProtocolTCP {
		d.port.NodePort = nodePort
	}
	return d
}

func deletedTotal(t *testing.T, family v1.IPFamily) float64 {
	t.Helper()
	return testutil.ToFloat64(metrics.ConntrackReconcilerDeletedEntriesTotal.WithLabelValues(string(family)))
}

func durationCount(t *testing.T, family v1.IPFamily) uint64 {
	t.Helper()
	var m dto.Metric
	h, ok := metrics.ConntrackReconcilerSyncDuration.WithLabelValues(string(family)).(prometheus.Histogram)
	if !ok {
		t.Fatal("conntrack_reconciler_sync_duration_seconds is not a histogram")
	}
	if err := h.Write(&m); err != nil {
		t.Fatalf("reading the duration histogram: %v", err)
	}
	return m.GetHistogram().GetSampleCount()
}

func sortFlows(flows []conntrack.Flow) []conntrack.Flow {
	out := slices.Clone(flows)
	slices.SortFunc(out, func(a, b conntrack.Flow) int { return strings.Compare(a.String(), b.String()) })
	return out
}

// diffFlows describes how got differs from want, or returns "".
func diffFlows(got, want []conntrack.Flow) string {
	got, want = sortFlows(got), sortFlows(want)
	var b strings.Builder
	for _, f := range want {
		if !slices.Contains(got, f) {
			fmt.Fprintf(&b, "\n  deleted, want kept: %s", f)
		}
	}
	for _, f := range got {
		if !slices.Contains(want, f) {
			fmt.Fprintf(&b, "\n  kept, want deleted: %s", f)
		}
	}
	return b.String()
}

// runCleanup runs one cleanup over a fake holding keep and drop, and checks
// that exactly drop was deleted and counted.
func runCleanup(t *testing.T, family v1.IPFamily, snap *model.Snapshot, keep, drop []conntrack.Flow) {
	t.Helper()
	ct := fake.New(family, append(slices.Clone(keep), drop...)...)
	before, beforeObs := deletedTotal(t, family), durationCount(t, family)

	if err := conntrack.NewReconciler(family, ct).CleanStaleEntries(context.Background(), snap); err != nil {
		t.Fatalf("CleanStaleEntries: %v", err)
	}

	if d := diffFlows(ct.Flows(), keep); d != "" {
		t.Errorf("table after cleanup:%s", d)
	}
	if got, want := deletedTotal(t, family)-before, float64(len(drop)); got != want {
		t.Errorf("conntrack_reconciler_deleted_entries_total grew by %v, want %v", got, want)
	}
	if got := durationCount(t, family) - beforeObs; got != 1 {
		t.Errorf("conntrack_reconciler_sync_duration_seconds observed %d times, want 1", got)
	}
}

// TestCleanStaleEntriesUpstreamMatrix mirrors upstream's TestCleanStaleEntries:
// every combination of backend (serving, not serving, deleted), protocol,
// frontend address and port, plus node port entries and entries that were
// never DNATed.
func TestCleanStaleEntriesUpstreamMatrix(t *testing.T) {
	eps := []model.Endpoint{ep(servingIP, targetPort, true), ep(notServIP, targetPort, false)}
	snap := snapshot(
		fullService(v1.ProtocolTCP, eps...),
		fullService(v1.ProtocolUDP, eps...),
		fullService(v1.ProtocolSCTP, eps...),
	)

	var keep, drop []conntrack.Flow
	for _, backend := range []string{servingIP, notServIP, deletedIP} {
		for _, proto := range []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP, v1.ProtocolSCTP} {
			for _, vip := range []string{clusterIP, lbIP, externalIP} {
				for _, port := range []int{svcPort, nonSvcPort} {
					f := flow(proto, hostPort(clientIP, clientPort), hostPort(vip, port), hostPort(backend, targetPort))
					if proto == v1.ProtocolUDP && port == svcPort && backend != servingIP {
						drop = append(drop, f)
					} else {
						keep = append(keep, f)
					}
				}
			}
			f := flow(proto, hostPort(clientIP, clientPort), hostPort(nodeIP, nodePort), hostPort(backend, targetPort))
			if proto == v1.ProtocolUDP && backend != servingIP {
				drop = append(drop, f)
			} else {
				keep = append(keep, f)
			}
		}
	}
	// Entries created while a frontend had no DNAT rule: the reply comes from
	// the frontend itself. On the service port they are stale.
	for _, vip := range []string{clusterIP, lbIP, externalIP} {
		for _, port := range []int{svcPort, nonSvcPort} {
			f := udp(hostPort(vip, port), hostPort(vip, port))
			if port == svcPort {
				drop = append(drop, f)
			} else {
				keep = append(keep, f)
			}
		}
	}
	if len(keep)+len(drop) != 69 {
		t.Fatalf("built %d entries, want upstream's 63 + 6", len(keep)+len(drop))
	}
	runCleanup(t, v1.IPv4Protocol, snap, keep, drop)
}

func TestCleanStaleEntries(t *testing.T) {
	serving := ep(servingIP, targetPort, true)
	notServing := ep(notServIP, targetPort, false)
	terminating := model.Endpoint{IP: netip.MustParseAddr(notServIP), Port: targetPort, Serving: true, Terminating: true}
	cip := hostPort(clusterIP, svcPort)
	np := hostPort(nodeIP, nodePort)
	toServing := hostPort(servingIP, targetPort)
	toDeleted := hostPort(deletedIP, targetPort)

	tests := []struct {
		name       string
		snap       *model.Snapshot
		keep, drop []conntrack.Flow
	}{
		{
			name: "cluster IP flow to a removed endpoint is deleted, to a serving one kept",
			snap: snapshot(fullService(v1.ProtocolUDP, serving)),
			keep: []conntrack.Flow{udp(cip, toServing)},
			drop: []conntrack.Flow{udp(cip, toDeleted)},
		},
		{
			name: "flow to an endpoint that is no longer serving is deleted",
			snap: snapshot(fullService(v1.ProtocolUDP, serving, notServing)),
			keep: []conntrack.Flow{udp(cip, toServing)},
			drop: []conntrack.Flow{udp(cip, hostPort(notServIP, targetPort))},
		},
		{
			name: "terminating but serving endpoint keeps its flows",
			snap: snapshot(fullService(v1.ProtocolUDP, serving, terminating)),
			keep: []conntrack.Flow{udp(cip, toServing), udp(cip, hostPort(notServIP, targetPort))},
		},
		{
			name: "readiness does not matter, serving does",
			snap: snapshot(fullService(v1.ProtocolUDP, model.Endpoint{IP: netip.MustParseAddr(servingIP), Port: targetPort, Serving: true})),
			keep: []conntrack.Flow{udp(cip, toServing)},
		},
		{
			name: "endpoint IP still serving on another port: the old port's flow is stale",
			snap: snapshot(fullService(v1.ProtocolUDP, ep(servingIP, otherTarget, true))),
			keep: []conntrack.Flow{udp(cip, hostPort(servingIP, otherTarget))},
			drop: []conntrack.Flow{udp(cip, toServing)},
		},
		{
			name: "node port flow to a removed endpoint is deleted whatever the node address",
			snap: snapshot(fullService(v1.ProtocolUDP, serving)),
			keep: []conntrack.Flow{udp(np, toServing)},
			drop: []conntrack.Flow{
				udp(np, toDeleted),
				udp(hostPort("127.0.0.1", nodePort), toDeleted),
				udp(hostPort("203.0.113.7", nodePort), toDeleted),
			},
		},
		{
			name: "no serving endpoint: node port flows are kept, frontend flows deleted",
			snap: snapshot(fullService(v1.ProtocolUDP, notServing)),
			keep: []conntrack.Flow{udp(np, toDeleted), udp(np, hostPort(notServIP, targetPort))},
			drop: []conntrack.Flow{
				udp(cip, toDeleted),
				udp(hostPort(lbIP, svcPort), toDeleted),
				udp(hostPort(externalIP, svcPort), toDeleted),
				udp(cip, cip),
			},
		},
		{
			name: "no endpoints at all: node port flows are kept, frontend flows deleted",
			snap: snapshot(fullService(v1.ProtocolUDP)),
			keep: []conntrack.Flow{udp(np, toServing), udp(np, toDeleted)},
			drop: []conntrack.Flow{udp(cip, toServing), udp(cip, toDeleted)},
		},
		{
			name: "load balancer VIP and external IP flows",
			snap: snapshot(fullService(v1.ProtocolUDP, serving)),
			keep: []conntrack.Flow{
				udp(hostPort(lbIP, svcPort), toServing),
				udp(hostPort(externalIP, svcPort), toServing),
			},
			drop: []conntrack.Flow{
				udp(hostPort(lbIP, svcPort), toDeleted),
				udp(hostPort(externalIP, svcPort), toDeleted),
			},
		},
		{
			name: "TCP and SCTP entries are never touched",
			snap: snapshot(fullService(v1.ProtocolTCP, serving), fullService(v1.ProtocolSCTP, serving), fullService(v1.ProtocolUDP, serving)),
			keep: []conntrack.Flow{
				flow(v1.ProtocolTCP, hostPort(clientIP, clientPort), cip, toDeleted),
				flow(v1.ProtocolSCTP, hostPort(clientIP, clientPort), cip, toDeleted),
				flow(v1.ProtocolSCTP, hostPort(clientIP, clientPort), np, toDeleted),
			},
			drop: []conntrack.Flow{udp(cip, toDeleted)},
		},
		{
			name: "a TCP-only service does not make UDP flows to its frontend stale",
			snap: snapshot(fullService(v1.ProtocolTCP, serving)),
			keep: []conntrack.Flow{udp(cip, toDeleted)},
		},
		{
			name: "flows to other ports and other addresses are kept",
			snap: snapshot(fullService(v1.ProtocolUDP, serving)),
			keep: []conntrack.Flow{
				udp(hostPort(clusterIP, nonSvcPort), toDeleted),
				udp(hostPort("172.30.9.9", svcPort), toDeleted),
				udp(hostPort(deletedIP, targetPort), toDeleted),
			},
		},
		{
			name: "every UDP service port is reconciled, not only one",
			snap: snapshot(
				fullService(v1.ProtocolUDP, serving),
				svcDef{name: "dns", protocol: v1.ProtocolUDP, port: model.ServicePort{ClusterIP: netip.MustParseAddr("172.30.0.10"), Port: 53},
					eps: []model.Endpoint{ep("10.240.3.3", 5353, true)}},
			),
			keep: []conntrack.Flow{udp("172.30.0.10:53", "10.240.3.3:5353")},
			drop: []conntrack.Flow{udp("172.30.0.10:53", "10.240.3.4:5353"), udp(cip, toDeleted)},
		},
		{
			name: "two services sharing an external IP and port: a flow to either's endpoint is kept",
			snap: snapshot(
				svcDef{name: "a", protocol: v1.ProtocolUDP, port: model.ServicePort{ClusterIP: netip.MustParseAddr("172.30.0.1"), Port: 53, ExternalIPs: addrs(externalIP)},
					eps: []model.Endpoint{ep("10.240.3.1", 53, true)}},
				svcDef{name: "b", protocol: v1.ProtocolUDP, port: model.ServicePort{ClusterIP: netip.MustParseAddr("172.30.0.2"), Port: 53, ExternalIPs: addrs(externalIP)},
					eps: []model.Endpoint{ep("10.240.3.2", 53, true)}},
			),
			keep: []conntrack.Flow{udp(hostPort(externalIP, 53), "10.240.3.1:53"), udp(hostPort(externalIP, 53), "10.240.3.2:53")},
			drop: []conntrack.Flow{udp(hostPort(externalIP, 53), "10.240.3.3:53"), udp("172.30.0.1:53", "10.240.3.2:53")},
		},
		{
			// Upstream's two tests are independent; this pins that down.
			name: "a cluster IP port equal to another service's node port is also judged as that node port",
			snap: snapshot(
				svcDef{name: "a", protocol: v1.ProtocolUDP, port: model.ServicePort{ClusterIP: netip.MustParseAddr("172.30.0.1"), Port: nodePort},
					eps: []model.Endpoint{ep("10.240.3.1", 53, true)}},
				fullService(v1.ProtocolUDP, serving),
			),
			keep: []conntrack.Flow{udp(np, toServing)},
			drop: []conntrack.Flow{udp(hostPort("172.30.0.1", nodePort), "10.240.3.1:53")},
		},
		{
			name: "entries in another conntrack zone are judged the same way",
			snap: snapshot(fullService(v1.ProtocolUDP, serving)),
			keep: []conntrack.Flow{withZone(udp(cip, toServing), 7)},
			drop: []conntrack.Flow{withZone(udp(cip, toDeleted), 7)},
		},
		{
			name: "empty snapshot deletes nothing",
			snap: snapshot(),
			keep: []conntrack.Flow{udp(cip, toDeleted), udp(np, toDeleted)},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			runCleanup(t, v1.IPv4Protocol, tt.snap, tt.keep, tt.drop)
		})
	}
}

func withZone(f conntrack.Flow, zone uint16) conntrack.Flow {
	f.Zone = zone
	return f
}

// TestServiceWithoutEndpoints mirrors upstream's test of the same name: the
// service's endpoints belong to another service, so it has no serving
// endpoint. Node port entries stay, as upstream requires. Entries to the
// frontend addresses are deleted (§6: their serving set is empty); see the
// report on how the newest upstream differs.
func TestServiceWithoutEndpoints(t *testing.T) {
	svc := fullService(v1.ProtocolUDP)
	other := svcDef{name: "non-existing-service", protocol: v1.ProtocolUDP,
		port: model.ServicePort{ClusterIP: netip.MustParseAddr("172.30.0.77"), Port: svcPort},
		eps:  []model.Endpoint{ep(servingIP, targetPort, true), ep(notServIP, targetPort, false)}}
	snap := snapshot(svc, other)

	keep := []conntrack.Flow{
		udp(hostPort(nodeIP, nodePort), hostPort(servingIP, targetPort)),
		udp(hostPort(nodeIP, nodePort), hostPort(deletedIP, targetPort)),
	}
	drop := []conntrack.Flow{
		udp(hostPort(externalIP, svcPort), hostPort(servingIP, targetPort)),
		udp(hostPort(externalIP, svcPort), hostPort(deletedIP, targetPort)),
	}
	runCleanup(t, v1.IPv4Protocol, snap, keep, drop)
}

func TestCleanStaleEntriesIPv6(t *testing.T) {
	const (
		cip6  = "fd00:10:96::1"
		lb6   = "2001:db8:1::4"
		ext6  = "2001:db8:99::100"
		node6 = "2001:db8:0::2"
		cli6  = "2001:db8:77::9"
		srv6  = "fd00:10:244::4"
		del6  = "fd00:10:244::6"
	)
	snap := snapshot(svcDef{name: "v6", protocol: v1.ProtocolUDP,
		port: model.ServicePort{ClusterIP: netip.MustParseAddr(cip6), Port: svcPort, NodePort: nodePort,
			ExternalIPs: addrs(ext6), LoadBalancerVIPs: addrs(lb6)},
		eps: []model.Endpoint{ep(srv6, targetPort, true)}})
	f := func(dst, backend string, port int) conntrack.Flow {
		return flow(v1.ProtocolUDP, hostPort(cli6, clientPort), hostPort(dst, port), hostPort(backend, targetPort))
	}

	var keep, drop []conntrack.Flow
	for _, vip := range []string{cip6, lb6, ext6} {
		keep = append(keep, f(vip, srv6, svcPort), f(vip, del6, nonSvcPort))
		drop = append(drop, f(vip, del6, svcPort))
	}
	keep = append(keep, f(node6, srv6, nodePort), flow(v1.ProtocolTCP, hostPort(cli6, clientPort), hostPort(cip6, svcPort), hostPort(del6, targetPort)))
	drop = append(drop, f(node6, del6, nodePort))
	// An IPv4 entry that would be stale to an IPv4 reconciler is not in the
	// IPv6 table, so it stays.
	keep = append(keep, udp(hostPort(clusterIP, svcPort), hostPort(deletedIP, targetPort)))

	runCleanup(t, v1.IPv6Protocol, snap, keep, drop)
}

func TestCleanStaleEntriesErrors(t *testing.T) {
	ctx := context.Background()
	snap := snapshot(fullService(v1.ProtocolUDP, ep(servingIP, targetPort, true)))
	stale := udp(hostPort(clusterIP, svcPort), hostPort(deletedIP, targetPort))
	errBoom := errors.New("boom")

	t.Run("list fails", func(t *testing.T) {
		ct := fake.New(v1.IPv4Protocol, stale)
		ct.FailList(errBoom)
		before := deletedTotal(t, v1.IPv4Protocol)
		err := conntrack.NewReconciler(v1.IPv4Protocol, ct).CleanStaleEntries(ctx, snap)
		if !errors.Is(err, errBoom) {
			t.Fatalf("CleanStaleEntries = %v, want it to wrap %v", err, errBoom)
		}
		if !ct.Has(stale) {
			t.Error("entry deleted although listing failed")
		}
		if got := deletedTotal(t, v1.IPv4Protocol) - before; got != 0 {
			t.Errorf("deleted counter grew by %v, want 0", got)
		}
		// The next cleanup succeeds and catches up.
		if err := conntrack.NewReconciler(v1.IPv4Protocol, ct).CleanStaleEntries(ctx, snap); err != nil {
			t.Fatalf("second CleanStaleEntries: %v", err)
		}
		if ct.Has(stale) {
			t.Error("stale entry survived the second cleanup")
		}
	})

	t.Run("delete fails", func(t *testing.T) {
		ct := fake.New(v1.IPv4Protocol, stale)
		ct.FailDelete(errBoom)
		err := conntrack.NewReconciler(v1.IPv4Protocol, ct).CleanStaleEntries(ctx, snap)
		if !errors.Is(err, errBoom) {
			t.Fatalf("CleanStaleEntries = %v, want it to wrap %v", err, errBoom)
		}
	})

	t.Run("nil snapshot", func(t *testing.T) {
		ct := fake.New(v1.IPv4Protocol, stale)
		if err := conntrack.NewReconciler(v1.IPv4Protocol, ct).CleanStaleEntries(ctx, nil); err == nil {
			t.Error("CleanStaleEntries(nil) succeeded")
		}
		if !ct.Has(stale) {
			t.Error("entry deleted with a nil snapshot")
		}
	})

	t.Run("no UDP service does not list the table", func(t *testing.T) {
		ct := fake.New(v1.IPv4Protocol, stale)
		// A listing would fail; a cleanup that does not list succeeds.
		ct.FailList(errBoom)
		if err := conntrack.NewReconciler(v1.IPv4Protocol, ct).CleanStaleEntries(ctx, snapshot(fullService(v1.ProtocolTCP))); err != nil {
			t.Errorf("CleanStaleEntries = %v, want nil", err)
		}
	})

	t.Run("cancelled context", func(t *testing.T) {
		ct := fake.New(v1.IPv4Protocol, stale)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		err := conntrack.NewReconciler(v1.IPv4Protocol, ct).CleanStaleEntries(cctx, snap)
		if !errors.Is(err, context.Canceled) {
			t.Errorf("CleanStaleEntries = %v, want context.Canceled", err)
		}
		if !ct.Has(stale) {
			t.Error("entry deleted with a cancelled context")
		}
	})
}
