package diagnose

import (
	"net/netip"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/conntrack"
	"github.com/kproxy-dev/kproxy/pkg/debugstate"
)

func TestServiceChecks(t *testing.T) {
	kernel := []byte(`*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -d 10.96.0.10/32 -p udp -m comment --comment "kube-system/dns:dns cluster IP" -m udp --dport 53 -j KUBE-SVC-DNS
-A KUBE-SERVICES -d 10.96.0.20/32 -p tcp -m comment --comment "ns/empty:http has no endpoints" -m tcp --dport 80 -j REJECT
-A KUBE-SERVICES -d 10.96.0.30/32 -p tcp -m comment --comment "ns/local:http cluster IP" -m tcp --dport 80 -j KUBE-SVL-LOCAL
-A KUBE-SERVICES -d 10.96.0.40/32 -p tcp -m comment --comment "ns/lb:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-LB
COMMIT
`)
	state := debugstate.Family{Family: "IPv4", Synced: true,
		Rejected: map[string]string{"ns/bad": "-A KUBE-SERVICES ..."},
		Services: []debugstate.ServicePort{
			{Name: "kube-system/dns:dns", Protocol: "UDP", ClusterIP: "10.96.0.10", Port: 53,
				Endpoints: []debugstate.Endpoint{{Address: "10.244.1.3:53", Local: true, Ready: true, Serving: true}}},
			{Name: "ns/empty:http", Protocol: "TCP", ClusterIP: "10.96.0.20", Port: 80,
				Endpoints: []debugstate.Endpoint{{Address: "10.244.2.9:8080"}}},
			{Name: "ns/local:http", Protocol: "TCP", ClusterIP: "10.96.0.30", Port: 80, InternalPolicyLocal: true,
				Endpoints: []debugstate.Endpoint{{Address: "10.244.2.3:8080", Ready: true, Serving: true}}},
			{Name: "ns/lb:http", Protocol: "TCP", ClusterIP: "10.96.0.40", Port: 80, NodePort: 30080, ExternalPolicyLocal: true,
				Endpoints: []debugstate.Endpoint{{Address: "10.244.2.4:8080", Ready: true, Serving: true}}},
			{Name: "ns/gone:http", Protocol: "TCP", ClusterIP: "10.96.0.50", Port: 80,
				Endpoints: []debugstate.Endpoint{{Address: "10.244.2.5:8080", Ready: true, Serving: true}}},
		}}
	ap := netip.MustParseAddrPort
	flows := []conntrack.Flow{
		// To a pod that is gone, and to the live one.
		{Protocol: v1.ProtocolUDP, OrigSrc: ap("10.244.1.7:40000"), OrigDst: ap("10.96.0.10:53"), ReplySrc: ap("10.244.2.99:53"), ReplyDst: ap("10.244.1.7:40000")},
		{Protocol: v1.ProtocolUDP, OrigSrc: ap("10.244.1.8:40000"), OrigDst: ap("10.96.0.10:53"), ReplySrc: ap("10.244.1.3:53"), ReplyDst: ap("10.244.1.8:40000")},
	}
	for _, tc := range []struct {
		service string
		// want is "ID severity title-substring" per finding.
		want []string
	}{
		{"kube-system/dns", []string{
			"service/kube-system/dns:dns/IPv4 ok 1 usable endpoints, 1 on this node",
			"service/kube-system/dns:dns/IPv4/conntrack problem 1 UDP conntrack entries",
		}},
		{"ns/empty", []string{"service/ns/empty:http/IPv4 problem no serving endpoint: connections are rejected"}},
		{"ns/local", []string{"service/ns/local:http/IPv4 problem internalTrafficPolicy: Local"}},
		{"ns/lb", []string{"service/ns/lb:http/IPv4 warning drops external traffic"}},
		{"ns/gone", []string{"service/ns/gone:http/IPv4 problem no rule in the kernel carries it"}},
		{"ns/bad", []string{"service/ns/bad/IPv4 problem the kernel rejected"}},
		{"ns/nothing", []string{"service/ns/nothing/IPv4 problem kproxy programs no IPv4 port"}},
	} {
		t.Run(tc.service, func(t *testing.T) {
			got := ServiceChecks(ServiceInputs{Service: tc.service, Family: v1.IPv4Protocol, State: state, Kernel: kernel, UDPFlows: flows})
			if len(got) != len(tc.want) {
				t.Fatalf("%d findings, want %d: %+v", len(got), len(tc.want), got)
			}
			for i, w := range tc.want {
				id, rest, _ := strings.Cut(w, " ")
				sev, title, _ := strings.Cut(rest, " ")
				if got[i].ID != id || got[i].Severity.String() != sev || !strings.Contains(got[i].Title, title) {
					t.Errorf("finding %d: %s %s %q, want %s", i, got[i].ID, got[i].Severity, got[i].Title, w)
				}
			}
		})
	}
}
