package tracker

import (
	"fmt"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	discovery "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	netutils "k8s.io/utils/net"
)

// TestPortNamesAreDNSLabels checks that every port name the API server accepts on a
// Service or an EndpointSlice (a DNS-1123 label) is kept, and that nothing else is.
func TestPortNamesAreDNSLabels(t *testing.T) {
	longest := strings.Repeat("a", 30) + "-" + strings.Repeat("b", 32)
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"", true},
		{"http", true},
		{"tcp-prometheus-servicemonitor", true}, // cert-manager
		{"metrics-exporter-http", true},
		{"grpc--web", true}, // a DNS label, not an IANA service name
		{"8080", true},
		{longest, true},
		{longest + "c", false}, // 64 characters
		{`bad "quoted"`, false},
		{"has space", false},
		{"UPPER", false},
		{"-leading", false},
		{"trailing-", false},
	} {
		// The cases must agree with the API server's own rule.
		if apiOK := tc.name == "" || len(validation.IsDNS1123Label(tc.name)) == 0; apiOK != tc.ok {
			t.Fatalf("test case %q: the API server accepts it: %t", tc.name, apiOK)
		}
		rec := &recorder{}
		svcPorts := convertService(service("ns", "svc", []string{"172.30.0.1"}, port(tc.name, v1.ProtocolTCP, 80)), v1.IPv4Protocol, rec.invalid)
		svcNN := types.NamespacedName{Namespace: "ns", Name: "svc"}
		sliceEps := convertSlice(slice("ns", "svc-1", "svc", discovery.AddressTypeIPv4,
			[]discovery.EndpointPort{slicePort(tc.name, 8080)}, ep{addr: "10.0.0.1", ready: true}), svcNN, v1.IPv4Protocol, "node-1", rec.invalid)
		if got := len(svcPorts) == 1 && svcPorts[0].Name.Port == tc.name; got != tc.ok {
			t.Errorf("Service port %q kept: %t, want %t (reports %v)", tc.name, got, tc.ok, rec.got)
		}
		if got := len(sliceEps) == 1; got != tc.ok {
			t.Errorf("EndpointSlice port %q kept: %t, want %t (reports %v)", tc.name, got, tc.ok, rec.got)
		}
		wantReports := 0
		if !tc.ok {
			wantReports = 2
		}
		if len(rec.got) != wantReports || (wantReports > 0 && !strings.HasSuffix(rec.got[0], ReasonBadPortName)) {
			t.Errorf("port %q: reports %v, want %d bad_port_name", tc.name, rec.got, wantReports)
		}
	}
}

// TestLegacyAddressForms feeds address and range spellings that older API servers
// admitted (leading zeros, IPv4-mapped IPv6, host bits set) and checks that each converts
// to what upstream programs: netutils.ParseIPSloppy / ParseCIDRSloppy, then String(), in
// the family upstream assigns.
func TestLegacyAddressForms(t *testing.T) {
	for _, tc := range []struct {
		in         string
		v4, v6     string // the range each family's tracker programs; "" for none
		bad        bool
		upstreamV4 bool // the family upstream files the range under
	}{
		{in: "::ffff:10.0.0.0/104", v4: "10.0.0.0/8", upstreamV4: true},
		{in: "::ffff:10.1.2.3/120", v4: "10.1.2.0/24", upstreamV4: true},
		{in: "::ffff:10.1.2.3/128", v4: "10.1.2.3/32", upstreamV4: true},
		// A 96-bit mask is not a /0 to upstream (it checks the parsed mask), so the range
		// stays, written as 0.0.0.0/0.
		{in: "::ffff:0.0.0.0/96", v4: "0.0.0.0/0", upstreamV4: true},
		// Masking below 96 bits clears the ::ffff: marker: an IPv6 range.
		{in: "::ffff:10.0.0.0/64", v6: "::/64"},
		{in: "::ffff:10.0.0.0/90", v6: "::ffc0:0:0/90"},
		{in: "010.0.0.0/8", v4: "10.0.0.0/8", upstreamV4: true},
		{in: "10.0.0.1/8", v4: "10.0.0.0/8", upstreamV4: true},
		{in: "192.168.001.010/031", v4: "192.168.1.10/31", upstreamV4: true},
		{in: "  203.0.113.7/24 ", v4: "203.0.113.0/24", upstreamV4: true},
		{in: "2001:db8::1/64", v6: "2001:db8::/64"},
		{in: "::ffff:10.0.0.0/129", bad: true},
		{in: "10.0.0.0/33", bad: true},
		{in: "10.0.0.0", bad: true},
		{in: "bogus/8", bad: true},
	} {
		t.Run(strings.TrimSpace(tc.in), func(t *testing.T) {
			trimmed := strings.TrimSpace(tc.in)
			// The expectations are upstream's: derive them the way upstream does.
			if _, ipnet, err := netutils.ParseCIDRSloppy(trimmed); err != nil {
				if !tc.bad {
					t.Fatalf("upstream refuses %q: %v", trimmed, err)
				}
			} else {
				want := tc.v6
				if netutils.IsIPv4CIDR(ipnet) {
					want = tc.v4
				}
				if tc.bad || ipnet.String() != want || netutils.IsIPv4CIDR(ipnet) != tc.upstreamV4 {
					t.Fatalf("test case disagrees with upstream: %q is %s (IPv4: %t)", trimmed, ipnet, netutils.IsIPv4CIDR(ipnet))
				}
			}
			for _, f := range []struct {
				family v1.IPFamily
				want   string
			}{{v1.IPv4Protocol, tc.v4}, {v1.IPv6Protocol, tc.v6}} {
				svc := service("ns", "lb", []string{"172.30.0.1", "fd00::1"}, v1.ServicePort{Name: "p", Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30080})
				svc.Spec.Type = v1.ServiceTypeLoadBalancer
				svc.Spec.LoadBalancerSourceRanges = []string{tc.in}
				rec := &recorder{}
				ports := convertService(svc, f.family, rec.invalid)
				if len(ports) != 1 {
					t.Fatalf("%s: no service port (reports %v)", f.family, rec.got)
				}
				var got []string
				for _, p := range ports[0].LoadBalancerSourceRanges {
					if !p.IsValid() {
						t.Errorf("%s: invalid prefix %v", f.family, p)
					}
					got = append(got, p.String())
				}
				if strings.Join(got, ",") != f.want {
					t.Errorf("%s: ranges %v, want %q", f.family, got, f.want)
				}
				wantReports := ""
				if tc.bad {
					wantReports = "Service ns/lb " + ReasonBadSourceRange
				}
				if strings.Join(rec.got, ";") != wantReports {
					t.Errorf("%s: reports %v, want %q", f.family, rec.got, wantReports)
				}
			}
		})
	}

	// Addresses: what upstream writes is ParseIPSloppy(s).String(), in the family of
	// that IP (IPv4-mapped counts as IPv4).
	svc := service("ns", "old", []string{"::ffff:172.30.0.041"}, v1.ServicePort{Name: "p", Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30080})
	svc.Spec.Type = v1.ServiceTypeLoadBalancer
	svc.Spec.ExternalIPs = []string{"::ffff:192.168.99.11", "010.000.000.001"}
	svc.Status.LoadBalancer.Ingress = []v1.LoadBalancerIngress{{IP: "::ffff:1.2.3.4"}, {IP: "005.006.007.008"}}
	rec := &recorder{}
	ports := convertService(svc, v1.IPv4Protocol, rec.invalid)
	eps := convertSlice(slice("ns", "old-1", "old", discovery.AddressTypeIPv4, []discovery.EndpointPort{slicePort("p", 80)},
		ep{addr: "::ffff:10.180.0.1", ready: true}, ep{addr: "10.180.00.002", ready: true}),
		types.NamespacedName{Namespace: "ns", Name: "old"}, v1.IPv4Protocol, "node-1", rec.invalid)
	if len(ports) != 1 || len(rec.got) != 0 {
		t.Fatalf("ports %v, reports %v", ports, rec.got)
	}
	var epStrings []string
	for _, list := range eps {
		for _, e := range list {
			epStrings = append(epStrings, e.String())
		}
	}
	got := fmt.Sprintf("%s %v %v %v", ports[0].ClusterIP, ports[0].ExternalIPs, ports[0].LoadBalancerVIPs, epStrings)
	if want := "172.30.0.41 [192.168.99.11 10.0.0.1] [1.2.3.4 5.6.7.8] [10.180.0.1:80 10.180.0.2:80]"; got != want {
		t.Errorf("addresses %s, want %s", got, want)
	}
	for _, s := range []string{"::ffff:172.30.0.041", "::ffff:192.168.99.11", "010.000.000.001", "::ffff:1.2.3.4", "::ffff:10.180.0.1", "10.180.00.002"} {
		if ip := netutils.ParseIPSloppy(s); ip == nil || ip.To4() == nil || !strings.Contains(got, ip.String()) {
			t.Errorf("upstream reads %q as %v, which is not in %s", s, ip, got)
		}
	}
}

// TestHealthCheckNodePortRange checks that a health check node port outside 1-65535 is
// reported and left out, while the rest of the service is still programmed.
func TestHealthCheckNodePortRange(t *testing.T) {
	for _, tc := range []struct {
		hcnp   int32
		want   int32
		report bool
	}{
		{30000, 30000, false},
		{65535, 65535, false},
		{0, 0, true}, // upstream logs "Service has no healthcheck nodeport" and serves none
		{-1, 0, true},
		{65536, 0, true},
		{1 << 30, 0, true},
	} {
		svc := service("ns", "lb", []string{"172.30.0.1"}, v1.ServicePort{Name: "p", Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30080})
		svc.Spec.Type = v1.ServiceTypeLoadBalancer
		svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		svc.Spec.HealthCheckNodePort = tc.hcnp
		rec := &recorder{}
		ports := convertService(svc, v1.IPv4Protocol, rec.invalid)
		if len(ports) != 1 || ports[0].NodePort != 30080 || !ports[0].ExternalPolicyLocal {
			t.Errorf("hcnp %d: the service was not kept whole: %+v", tc.hcnp, ports)
			continue
		}
		if ports[0].HealthCheckNodePort != tc.want {
			t.Errorf("hcnp %d: got %d, want %d", tc.hcnp, ports[0].HealthCheckNodePort, tc.want)
		}
		if got := strings.Join(rec.got, ";") == "Service ns/lb "+ReasonBadPort; got != tc.report {
			t.Errorf("hcnp %d: reports %v, want a bad_port report: %t", tc.hcnp, rec.got, tc.report)
		}
	}

	// eTP Cluster needs no health check: whatever the field says is not looked at.
	svc := service("ns", "cluster", []string{"172.30.0.1"}, v1.ServicePort{Name: "p", Protocol: v1.ProtocolTCP, Port: 80, NodePort: 30080})
	svc.Spec.Type = v1.ServiceTypeLoadBalancer
	svc.Spec.HealthCheckNodePort = -1
	rec := &recorder{}
	if ports := convertService(svc, v1.IPv4Protocol, rec.invalid); len(ports) != 1 || ports[0].HealthCheckNodePort != 0 || len(rec.got) != 0 {
		t.Errorf("eTP Cluster: %+v, reports %v", ports, rec.got)
	}
}
