package tracker

import (
	"fmt"
	"math/rand"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"

	"github.com/kproxy-dev/kproxy/pkg/model"
)

type recorder struct{ got []string }

func (r *recorder) invalid(kind string, obj types.NamespacedName, reason, detail string) {
	r.got = append(r.got, fmt.Sprintf("%s %s %s", kind, obj, reason))
}

func service(ns, name string, ips []string, ports ...v1.ServicePort) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       v1.ServiceSpec{Type: v1.ServiceTypeClusterIP, ClusterIP: ips[0], ClusterIPs: ips, Ports: ports},
	}
}

func port(name string, proto v1.Protocol, p int32) v1.ServicePort {
	return v1.ServicePort{Name: name, Protocol: proto, Port: p}
}

type ep struct {
	addr  string
	node  string
	ready bool
	term  bool
}

func slice(ns, name, svc string, family discovery.AddressType, ports []discovery.EndpointPort, eps ...ep) *discovery.EndpointSlice {
	s := &discovery.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{discovery.LabelServiceName: svc}},
		AddressType: family,
		Ports:       ports,
	}
	for _, e := range eps {
		d := discovery.Endpoint{Addresses: []string{e.addr}, Conditions: discovery.EndpointConditions{
			Ready: ptr.To(e.ready), Serving: ptr.To(e.ready || e.term), Terminating: ptr.To(e.term)}}
		if e.node != "" {
			d.NodeName = ptr.To(e.node)
		}
		s.Endpoints = append(s.Endpoints, d)
	}
	return s
}

func slicePort(name string, p int32) discovery.EndpointPort {
	return discovery.EndpointPort{Name: ptr.To(name), Port: ptr.To(p), Protocol: ptr.To(v1.ProtocolTCP)}
}

// describe prints a snapshot compactly and in a stable order for comparisons.
func describe(s *model.Snapshot) string {
	var lines []string
	for spn, sp := range s.Services {
		var eps []string
		for _, e := range s.Endpoints[spn] {
			state := "ready"
			if !e.Ready {
				state = "notready"
			}
			if e.Terminating {
				state += "+terminating"
			}
			eps = append(eps, e.String()+"("+state+")")
		}
		lines = append(lines, fmt.Sprintf("%s/%s %s:%d -> %s", spn, spn.Protocol, sp.ClusterIP, sp.Port, strings.Join(eps, " ")))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func names(ch Changes) string {
	var n []string
	for nn := range ch.Services {
		n = append(n, nn.String())
	}
	sort.Strings(n)
	return strings.Join(n, ",")
}

func TestServicesAndSlicesMergeIntoSnapshot(t *testing.T) {
	rec := &recorder{}
	tr := New(v1.IPv4Protocol, "node-1", time.Time{}, rec.invalid)
	tr.ServiceChanged(service("ns1", "web", []string{"172.30.0.1"}, port("http", v1.ProtocolTCP, 80), port("dns", v1.ProtocolUDP, 53)), false)
	tr.EndpointSliceChanged(slice("ns1", "web-a", "web", discovery.AddressTypeIPv4,
		[]discovery.EndpointPort{slicePort("http", 8080)}, ep{addr: "10.0.0.2", ready: true}, ep{addr: "10.0.0.1", term: true}), false)
	// Overlapping slice: the non-terminating copy of 10.0.0.1 wins.
	tr.EndpointSliceChanged(slice("ns1", "web-b", "web", discovery.AddressTypeIPv4,
		[]discovery.EndpointPort{slicePort("http", 8080)}, ep{addr: "10.0.0.1", ready: true}), false)
	// Another family's slice is not ours.
	if tr.EndpointSliceChanged(slice("ns1", "web-v6", "web", discovery.AddressTypeIPv6,
		[]discovery.EndpointPort{slicePort("http", 8080)}, ep{addr: "fd00::1", ready: true}), false) {
		t.Error("an IPv6 slice asked the IPv4 tracker for a sync")
	}

	snap, ch := tr.Checkpoint()
	want := "ns1/web:dns/UDP 172.30.0.1:53 -> \nns1/web:http/TCP 172.30.0.1:80 -> 10.0.0.1:8080(ready) 10.0.0.2:8080(ready)"
	if got := describe(snap); got != want {
		t.Errorf("snapshot:\n%s\nwant:\n%s", got, want)
	}
	if names(ch) != "ns1/web" || ch.ServiceEvents != 1 || ch.EndpointSliceEvents != 2 {
		t.Errorf("changes %q svcEvents=%d sliceEvents=%d", names(ch), ch.ServiceEvents, ch.EndpointSliceEvents)
	}
	if len(rec.got) != 0 {
		t.Errorf("unexpected invalid reports %v", rec.got)
	}

	// Nothing pending: an empty change set, the same snapshot.
	snap2, ch2 := tr.Checkpoint()
	if len(ch2.Services) != 0 || describe(snap2) != want {
		t.Errorf("second checkpoint changed %q", names(ch2))
	}

	// A resync delivers the same objects again: no service counts as changed.
	tr.ServiceChanged(service("ns1", "web", []string{"172.30.0.1"}, port("http", v1.ProtocolTCP, 80), port("dns", v1.ProtocolUDP, 53)), false)
	tr.EndpointSliceChanged(slice("ns1", "web-b", "web", discovery.AddressTypeIPv4,
		[]discovery.EndpointPort{slicePort("http", 8080)}, ep{addr: "10.0.0.1", ready: true}), false)
	if _, ch := tr.Checkpoint(); len(ch.Services) != 0 {
		t.Errorf("no-op resync changed %q", names(ch))
	}

	// Deleting slice b leaves 10.0.0.1 terminating (from slice a).
	tr.EndpointSliceChanged(slice("ns1", "web-b", "web", discovery.AddressTypeIPv4, nil), true)
	snap, ch = tr.Checkpoint()
	if !strings.Contains(describe(snap), "10.0.0.1:8080(notready+terminating)") || names(ch) != "ns1/web" {
		t.Errorf("after slice delete: %s (changed %q)", describe(snap), names(ch))
	}

	// Deleting the service removes its ports.
	tr.ServiceChanged(service("ns1", "web", []string{"172.30.0.1"}), true)
	snap, ch = tr.Checkpoint()
	if len(snap.Services) != 0 || names(ch) != "ns1/web" {
		t.Errorf("after service delete: %s (changed %q)", describe(snap), names(ch))
	}
}

func TestServicesWithoutRules(t *testing.T) {
	tr := New(v1.IPv4Protocol, "node-1", time.Time{}, (&recorder{}).invalid)
	headless := service("ns", "headless", []string{v1.ClusterIPNone}, port("p", v1.ProtocolTCP, 80))
	external := service("ns", "ext", []string{""}, port("p", v1.ProtocolTCP, 80))
	external.Spec.Type = v1.ServiceTypeExternalName
	v6only := service("ns", "v6", []string{"fd00::1"}, port("p", v1.ProtocolTCP, 80))
	dual := service("ns", "dual", []string{"fd00::2", "172.30.0.2"}, port("p", v1.ProtocolTCP, 80))
	for _, s := range []*v1.Service{headless, external, v6only, dual} {
		tr.ServiceChanged(s, false)
	}
	snap, _ := tr.Checkpoint()
	if got, want := describe(snap), "ns/dual:p/TCP 172.30.0.2:80 -> "; got != want {
		t.Errorf("snapshot %q, want %q", got, want)
	}
}

// TestBadInputIsSkippedLocally feeds malformed objects: each bad part is reported and
// skipped, and everything else in the same objects is kept.
func TestBadInputIsSkippedLocally(t *testing.T) {
	rec := &recorder{}
	tr := New(v1.IPv4Protocol, "node-1", time.Time{}, rec.invalid)
	tr.ServiceChanged(service("ns", "svc", []string{"172.30.0.041"}, // leading zero: read as decimal, as upstream
		port("good", v1.ProtocolTCP, 80),
		port(`bad "quoted"`, v1.ProtocolTCP, 81),
		port("has space", v1.ProtocolTCP, 82),
		port("icmp", v1.Protocol("ICMP"), 83),
		port("zero", v1.ProtocolTCP, 0)), false)
	tr.ServiceChanged(service("ns", "badip", []string{"172.30.0.300"}, port("p", v1.ProtocolTCP, 80)), false)
	tr.ServiceChanged(service("ns", `we"ird`, []string{"172.30.0.9"}, port("p", v1.ProtocolTCP, 80)), false)
	tr.EndpointSliceChanged(slice("ns", "svc-1", "svc", discovery.AddressTypeIPv4,
		[]discovery.EndpointPort{
			slicePort("good", 8080),
			{Name: ptr.To("zero"), Port: ptr.To[int32](0)},
			{Name: ptr.To("missing")},
			slicePort(`bad "quoted"`, 8081),
		},
		ep{addr: "10.0.0.1", ready: true},
		ep{addr: "10.0.0.999", ready: true},
		ep{addr: "fd00::1", ready: true},
		ep{addr: "10.180.00.001", ready: true}), false)
	noLabel := slice("ns", "orphan", "", discovery.AddressTypeIPv4, []discovery.EndpointPort{slicePort("good", 80)}, ep{addr: "10.0.0.5", ready: true})
	tr.EndpointSliceChanged(noLabel, false)

	snap, _ := tr.Checkpoint()
	want := "ns/svc:good/TCP 172.30.0.41:80 -> 10.0.0.1:8080(ready) 10.180.0.1:8080(ready)"
	if got := describe(snap); got != want {
		t.Errorf("snapshot:\n%s\nwant:\n%s", got, want)
	}
	sort.Strings(rec.got)
	wantReports := []string{
		"EndpointSlice ns/orphan no_service_label",
		"EndpointSlice ns/svc-1 bad_address",
		"EndpointSlice ns/svc-1 bad_port",
		"EndpointSlice ns/svc-1 bad_port",
		"EndpointSlice ns/svc-1 bad_port_name",
		"EndpointSlice ns/svc-1 wrong_family",
		"Service ns/badip bad_cluster_ip",
		"Service ns/svc bad_port",
		"Service ns/svc bad_port_name",
		"Service ns/svc bad_port_name",
		"Service ns/svc bad_protocol",
		`Service ns/we"ird bad_name`,
	}
	if strings.Join(rec.got, "\n") != strings.Join(wantReports, "\n") {
		t.Errorf("reports:\n%s\nwant:\n%s", strings.Join(rec.got, "\n"), strings.Join(wantReports, "\n"))
	}
}

func TestTriggerTimes(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tr := New(v1.IPv4Protocol, "node-1", start, (&recorder{}).invalid)
	mk := func(name string, at time.Time, addr string) *discovery.EndpointSlice {
		s := slice("ns", name, "svc", discovery.AddressTypeIPv4, []discovery.EndpointPort{slicePort("p", 80)}, ep{addr: addr, ready: true})
		s.Annotations = map[string]string{v1.EndpointsLastChangeTriggerTime: at.Format(time.RFC3339Nano)}
		return s
	}
	tr.EndpointSliceChanged(mk("a", start.Add(-time.Minute), "10.0.0.1"), false) // before we started: ignored
	tr.EndpointSliceChanged(mk("b", start.Add(time.Second), "10.0.0.2"), false)
	_, ch := tr.Checkpoint()
	if len(ch.TriggerTimes) != 1 || !ch.TriggerTimes[0].Equal(start.Add(time.Second)) {
		t.Errorf("trigger times %v", ch.TriggerTimes)
	}
	// An unchanged resync carries no latency sample.
	tr.EndpointSliceChanged(mk("b", start.Add(2*time.Second), "10.0.0.2"), false)
	if _, ch := tr.Checkpoint(); len(ch.TriggerTimes) != 0 {
		t.Errorf("no-op change produced trigger times %v", ch.TriggerTimes)
	}
}

func TestServiceFeatureConversion(t *testing.T) {
	proxy, vip := v1.LoadBalancerIPModeProxy, v1.LoadBalancerIPModeVIP
	local := v1.ServiceInternalTrafficPolicyLocal
	svc := service("ns", "lb", []string{"172.30.0.1"}, v1.ServicePort{Name: "p", Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30080})
	svc.Spec.Type = v1.ServiceTypeLoadBalancer
	svc.Spec.ExternalIPs = []string{"192.168.99.11", "2001:db8::1", "bogus"}
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	svc.Spec.InternalTrafficPolicy = &local
	svc.Spec.HealthCheckNodePort = 30000
	svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	svc.Spec.LoadBalancerSourceRanges = []string{" 203.0.113.0/25", "2001:db8::/64", "192.168.0.0/024"}
	svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{
		{IP: "1.2.3.4"}, {IP: "5.6.7.8", IPMode: &vip}, {IP: "9.10.11.12", IPMode: &proxy}, {Hostname: "lb.example.com"},
	}
	rec := &recorder{}
	tr := New(v1.IPv4Protocol, "node-1", time.Time{}, rec.invalid)
	tr.ServiceChanged(svc, false)
	snap, _ := tr.Checkpoint()
	var sp *model.ServicePort
	for _, p := range snap.Services {
		sp = p
	}
	got := fmt.Sprintf("ext=%v lb=%v ranges=%v sticky=%d etpLocal=%t itpLocal=%t hcnp=%d",
		sp.ExternalIPs, sp.LoadBalancerVIPs, sp.LoadBalancerSourceRanges, sp.StickyMaxAgeSeconds,
		sp.ExternalPolicyLocal, sp.InternalPolicyLocal, sp.HealthCheckNodePort)
	want := "ext=[192.168.99.11] lb=[1.2.3.4 5.6.7.8] ranges=[203.0.113.0/25 192.168.0.0/24] sticky=10800 etpLocal=true itpLocal=true hcnp=30000"
	if got != want {
		t.Errorf("converted\n  %s\nwant\n  %s", got, want)
	}
	if strings.Join(rec.got, ";") != "Service ns/lb bad_external_ip" {
		t.Errorf("reports %v", rec.got)
	}

	// A /0 range means no filtering; eTP Local on a plain ClusterIP service means nothing.
	svc2 := service("ns", "open", []string{"172.30.0.2"}, port("p", v1.ProtocolTCP, 80))
	svc2.Spec.LoadBalancerSourceRanges = []string{"10.0.0.0/8", "0.0.0.0/0"}
	svc2.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	svc2.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	svc2.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To[int32](60)}}
	tr.ServiceChanged(svc2, false)
	snap, _ = tr.Checkpoint()
	for spn, p := range snap.Services {
		if spn.Name != "open" {
			continue
		}
		if len(p.LoadBalancerSourceRanges) != 0 || p.ExternalPolicyLocal || p.StickyMaxAgeSeconds != 60 {
			t.Errorf("open service: ranges=%v etpLocal=%t sticky=%d", p.LoadBalancerSourceRanges, p.ExternalPolicyLocal, p.StickyMaxAgeSeconds)
		}
	}
}

func TestEndpointLocalityAndHints(t *testing.T) {
	tr := New(v1.IPv4Protocol, "node-1", time.Time{}, (&recorder{}).invalid)
	s := slice("ns", "svc-1", "svc", discovery.AddressTypeIPv4, []discovery.EndpointPort{slicePort("p", 80)},
		ep{addr: "10.0.0.1", node: "node-1", ready: true}, ep{addr: "10.0.0.2", node: "node-2", ready: true}, ep{addr: "10.0.0.3", ready: true})
	s.Endpoints[0].Hints = &discovery.EndpointHints{ForZones: []discovery.ForZone{{Name: "b"}, {Name: "a"}}, ForNodes: []discovery.ForNode{{Name: "node-1"}}}
	tr.EndpointSliceChanged(s, false)
	snap, _ := tr.Checkpoint()
	var got []string
	for _, eps := range snap.Endpoints {
		for _, e := range eps {
			got = append(got, fmt.Sprintf("%s local=%t zones=%v nodes=%v", e.IP, e.IsLocal, e.ZoneHints, e.NodeHints))
		}
	}
	want := []string{"10.0.0.1 local=true zones=[a b] nodes=[node-1]", "10.0.0.2 local=false zones=[] nodes=[]", "10.0.0.3 local=false zones=[] nodes=[]"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("endpoints:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestUDPEndpointChangesAreFlagged(t *testing.T) {
	tr := New(v1.IPv4Protocol, "node-1", time.Time{}, (&recorder{}).invalid)
	udp := slice("ns", "dns-1", "dns", discovery.AddressTypeIPv4,
		[]discovery.EndpointPort{{Name: ptr.To("dns"), Port: ptr.To[int32](53), Protocol: ptr.To(v1.ProtocolUDP)}}, ep{addr: "10.0.0.1", ready: true})
	tcp := slice("ns", "web-1", "web", discovery.AddressTypeIPv4, []discovery.EndpointPort{slicePort("http", 80)}, ep{addr: "10.0.0.2", ready: true})
	tr.EndpointSliceChanged(tcp, false)
	if _, ch := tr.Checkpoint(); ch.UDPEndpointsChanged {
		t.Error("a TCP-only change asked for conntrack cleanup")
	}
	tr.EndpointSliceChanged(udp, false)
	if _, ch := tr.Checkpoint(); !ch.UDPEndpointsChanged {
		t.Error("a UDP endpoint change did not ask for conntrack cleanup")
	}
	tr.EndpointSliceChanged(udp, true)
	if _, ch := tr.Checkpoint(); !ch.UDPEndpointsChanged {
		t.Error("deleting UDP endpoints did not ask for conntrack cleanup")
	}
}

// TestBadIPsAreNormalised mirrors upstream's TestBadIPs: addresses written with leading
// zeros are read as decimal, as the API server once accepted them.
func TestBadIPsAreNormalised(t *testing.T) {
	svc := service("ns", "old", []string{"172.30.0.041"}, v1.ServicePort{Name: "p", Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30080})
	svc.Spec.Type = v1.ServiceTypeLoadBalancer
	svc.Spec.ExternalIPs = []string{"192.168.099.022"}
	svc.Spec.LoadBalancerSourceRanges = []string{"203.0.113.000/025"}
	svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "1.2.3.004"}}
	tr := New(v1.IPv4Protocol, "node-1", time.Time{}, (&recorder{}).invalid)
	tr.ServiceChanged(svc, false)
	tr.EndpointSliceChanged(slice("ns", "old-1", "old", discovery.AddressTypeIPv4, []discovery.EndpointPort{slicePort("p", 80)},
		ep{addr: "10.180.00.001", ready: true}), false)
	snap, _ := tr.Checkpoint()
	for spn, sp := range snap.Services {
		got := fmt.Sprintf("%s %v %v %v %s", sp.ClusterIP, sp.ExternalIPs, sp.LoadBalancerVIPs, sp.LoadBalancerSourceRanges, snap.Endpoints[spn][0])
		if want := "172.30.0.41 [192.168.99.22] [1.2.3.4] [203.0.113.0/25] 10.180.0.1:80"; got != want {
			t.Errorf("normalised to %q, want %q", got, want)
		}
	}
}

// TestSliceFollowsServiceLabel moves a slice from one service to another by relabelling
// it: its endpoints must leave the old service, and its deletion must remove them from
// wherever they are.
func TestSliceFollowsServiceLabel(t *testing.T) {
	tr := New(v1.IPv4Protocol, "node-1", time.Time{}, (&recorder{}).invalid)
	tr.ServiceChanged(service("ns", "a", []string{"172.30.0.1"}, port("p", v1.ProtocolTCP, 80)), false)
	tr.ServiceChanged(service("ns", "b", []string{"172.30.0.2"}, port("p", v1.ProtocolTCP, 80)), false)
	mk := func(svc string) *discovery.EndpointSlice {
		return slice("ns", "moving", svc, discovery.AddressTypeIPv4, []discovery.EndpointPort{slicePort("p", 8080)}, ep{addr: "10.0.0.1", ready: true})
	}
	tr.EndpointSliceChanged(mk("a"), false)
	snap, _ := tr.Checkpoint()
	if got, want := describe(snap), "ns/a:p/TCP 172.30.0.1:80 -> 10.0.0.1:8080(ready)\nns/b:p/TCP 172.30.0.2:80 -> "; got != want {
		t.Fatalf("before the move:\n%s\nwant:\n%s", got, want)
	}

	if !tr.EndpointSliceChanged(mk("b"), false) {
		t.Error("relabelling a slice asked for no sync")
	}
	if svcs, eps := tr.Pending(); svcs != 0 || eps != 2 {
		t.Errorf("pending %d services, %d endpoints; want 0, 2", svcs, eps)
	}
	snap, ch := tr.Checkpoint()
	if got, want := describe(snap), "ns/a:p/TCP 172.30.0.1:80 -> \nns/b:p/TCP 172.30.0.2:80 -> 10.0.0.1:8080(ready)"; got != want {
		t.Errorf("after the move:\n%s\nwant:\n%s", got, want)
	}
	if names(ch) != "ns/a,ns/b" {
		t.Errorf("changed %q, want both services", names(ch))
	}

	// The deleted object may still carry the old label (a missed update): the slice is
	// removed from where it is filed, whatever it says.
	if !tr.EndpointSliceChanged(mk("a"), true) {
		t.Error("deleting a slice asked for no sync")
	}
	snap, ch = tr.Checkpoint()
	if got, want := describe(snap), "ns/a:p/TCP 172.30.0.1:80 -> \nns/b:p/TCP 172.30.0.2:80 -> "; got != want || names(ch) != "ns/b" {
		t.Errorf("after the delete (changed %q):\n%s\nwant:\n%s", names(ch), got, want)
	}

	// Losing the label takes the endpoints away too.
	tr.EndpointSliceChanged(mk("a"), false)
	tr.Checkpoint()
	tr.EndpointSliceChanged(mk(""), false)
	if snap, ch := tr.Checkpoint(); len(snap.Endpoints) != 0 || names(ch) != "ns/a" {
		t.Errorf("after the label was removed (changed %q): %s", names(ch), describe(snap))
	}
}

// TestResyncIsNoChange re-delivers the objects the tracker already has, as an informer
// resync does: no sync may be asked for. Real changes still ask for one.
func TestResyncIsNoChange(t *testing.T) {
	tr := New(v1.IPv4Protocol, "node-1", time.Time{}, (&recorder{}).invalid)
	mkSvc := func(p int32) *v1.Service {
		return service("ns", "web", []string{"172.30.0.1"}, port("http", v1.ProtocolTCP, p))
	}
	mkSlice := func(addr string) *discovery.EndpointSlice {
		return slice("ns", "web-1", "web", discovery.AddressTypeIPv4, []discovery.EndpointPort{slicePort("http", 8080)}, ep{addr: addr, ready: true})
	}
	steps := []struct {
		what string
		do   func() bool
		want bool
	}{
		{"add service", func() bool { return tr.ServiceChanged(mkSvc(80), false) }, true},
		{"add slice", func() bool { return tr.EndpointSliceChanged(mkSlice("10.0.0.1"), false) }, true},
		{"resync service before a checkpoint", func() bool { return tr.ServiceChanged(mkSvc(80), false) }, false},
		{"resync slice before a checkpoint", func() bool { return tr.EndpointSliceChanged(mkSlice("10.0.0.1"), false) }, false},
		{"checkpoint", func() bool { tr.Checkpoint(); return false }, false},
		{"resync service", func() bool { return tr.ServiceChanged(mkSvc(80), false) }, false},
		{"resync slice", func() bool { return tr.EndpointSliceChanged(mkSlice("10.0.0.1"), false) }, false},
		{"change service", func() bool { return tr.ServiceChanged(mkSvc(81), false) }, true},
		{"change slice", func() bool { return tr.EndpointSliceChanged(mkSlice("10.0.0.2"), false) }, true},
		{"delete unknown service", func() bool {
			return tr.ServiceChanged(service("ns", "other", []string{"172.30.0.9"}, port("p", v1.ProtocolTCP, 80)), true)
		}, false},
		{"delete unknown slice", func() bool {
			return tr.EndpointSliceChanged(slice("ns", "other-1", "other", discovery.AddressTypeIPv4, nil), true)
		}, false},
		{"delete service", func() bool { return tr.ServiceChanged(mkSvc(81), true) }, true},
		{"delete slice", func() bool { return tr.EndpointSliceChanged(mkSlice("10.0.0.2"), true) }, true},
		{"delete slice again", func() bool { return tr.EndpointSliceChanged(mkSlice("10.0.0.2"), true) }, false},
	}
	for _, s := range steps {
		if got := s.do(); got != s.want {
			t.Errorf("%s: asked for a sync: %t, want %t", s.what, got, s.want)
		}
	}
	if _, ch := tr.Checkpoint(); names(ch) != "ns/web" {
		t.Errorf("changed %q", names(ch))
	}
}

// BenchmarkCheckpoint is one endpoint change and the Checkpoint that follows, with
// 10,000 services of 5 endpoints tracked: what every partial sync pays before it renders.
func BenchmarkCheckpoint(b *testing.B) {
	tr := New(v1.IPv4Protocol, "node-1", time.Time{}, func(string, types.NamespacedName, string, string) {})
	const services = 10000
	sliceOf := func(i, gen int) *discovery.EndpointSlice {
		var eps []ep
		for e := range 5 {
			eps = append(eps, ep{addr: fmt.Sprintf("10.%d.%d.%d", 1+i/250, i%250, 10*e+gen), ready: true})
		}
		return slice("ns", fmt.Sprintf("svc-%d-abcde", i), fmt.Sprintf("svc-%d", i), discovery.AddressTypeIPv4,
			[]discovery.EndpointPort{slicePort("http", 8080)}, eps...)
	}
	for i := range services {
		tr.ServiceChanged(service("ns", fmt.Sprintf("svc-%d", i), []string{fmt.Sprintf("172.30.%d.%d", i/250, i%250)}, port("http", v1.ProtocolTCP, 80)), false)
		tr.EndpointSliceChanged(sliceOf(i, 0), false)
	}
	tr.Checkpoint()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		// Every service in turn moves to generation 1 or 2 of its endpoints, never back
		// to the one it has.
		tr.EndpointSliceChanged(sliceOf(i%services, 1+(i/services)%2), false)
		if _, ch := tr.Checkpoint(); len(ch.Services) != 1 {
			b.Fatalf("changed %q, want one service", names(ch))
		}
	}
}

// TestCheckpointMatchesAFreshTracker drives random changes through one tracker, and at
// random points compares its snapshot with that of a new tracker given only the objects
// as they now are: Checkpoint edits its state service by service, and must end where a
// tracker that saw every object once starts.
func TestCheckpointMatchesAFreshTracker(t *testing.T) {
	for seed := range int64(50) {
		rng := rand.New(rand.NewSource(seed))
		tr := New(v1.IPv4Protocol, "node-1", time.Time{}, (&recorder{}).invalid)
		services := map[string]*v1.Service{}
		slices := map[string]*discovery.EndpointSlice{}
		svcNames := []string{"a", "b", "c"}
		for step := range 60 {
			if rng.Intn(2) == 0 {
				name := svcNames[rng.Intn(len(svcNames))]
				if rng.Intn(4) == 0 {
					if s, ok := services[name]; ok {
						tr.ServiceChanged(s, true)
						delete(services, name)
					}
					continue
				}
				var ports []v1.ServicePort
				for _, p := range []string{"p", "q"}[:1+rng.Intn(2)] {
					ports = append(ports, port(p, []v1.Protocol{v1.ProtocolTCP, v1.ProtocolUDP}[rng.Intn(2)], int32(80+rng.Intn(3))))
				}
				s := service("ns", name, []string{fmt.Sprintf("172.30.0.%d", 1+rng.Intn(3))}, ports...)
				services[name] = s
				tr.ServiceChanged(s, false)
			} else {
				name := fmt.Sprintf("slice-%d", rng.Intn(4))
				if rng.Intn(4) == 0 {
					if s, ok := slices[name]; ok {
						tr.EndpointSliceChanged(s, true)
						delete(slices, name)
					}
					continue
				}
				var eps []ep
				for range rng.Intn(3) {
					eps = append(eps, ep{addr: fmt.Sprintf("10.0.0.%d", 1+rng.Intn(4)), ready: rng.Intn(3) > 0, term: rng.Intn(4) == 0})
				}
				ports := []discovery.EndpointPort{slicePort([]string{"p", "q"}[rng.Intn(2)], int32(8080+rng.Intn(2)))}
				s := slice("ns", name, svcNames[rng.Intn(len(svcNames))], discovery.AddressTypeIPv4, ports, eps...)
				slices[name] = s
				tr.EndpointSliceChanged(s, false)
			}
			if rng.Intn(3) > 0 {
				continue
			}
			got, _ := tr.Checkpoint()
			fresh := New(v1.IPv4Protocol, "node-1", time.Time{}, (&recorder{}).invalid)
			for _, s := range services {
				fresh.ServiceChanged(s, false)
			}
			for _, s := range slices {
				fresh.EndpointSliceChanged(s, false)
			}
			want, _ := fresh.Checkpoint()
			if !reflect.DeepEqual(got.Services, want.Services) || !reflect.DeepEqual(got.Endpoints, want.Endpoints) {
				t.Fatalf("seed %d, step %d:\n%s\n%v\nwant:\n%s\n%v", seed, step, describe(got), got.Endpoints, describe(want), want.Endpoints)
			}
		}
	}
}
