package framework

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"text/tabwriter"

	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"
)

// ClusterIPService returns a ClusterIP Service selecting selector with one TCP port and
// one UDP port, both named after their protocol, port -> targetPort.
func ClusterIPService(ns, name string, selector map[string]string, port, targetPort int32) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1.ServiceSpec{
			Type:     v1.ServiceTypeClusterIP,
			Selector: selector,
			Ports: []v1.ServicePort{
				{Name: "tcp", Protocol: v1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(targetPort)},
				{Name: "udp", Protocol: v1.ProtocolUDP, Port: port, TargetPort: intstr.FromInt32(targetPort)},
			},
		},
	}
}

// CreateService creates svc and returns it as stored (with its cluster IP and node
// ports), failing the test on error.
func (c *Cluster) CreateService(t testing.TB, svc *v1.Service) *v1.Service {
	t.Helper()
	created, err := c.Client.CoreV1().Services(svc.Namespace).Create(context.Background(), svc, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating service %s/%s: %v", svc.Namespace, svc.Name, err)
	}
	return created
}

// DescribeEndpointSlices writes one line per endpoint of the EndpointSlices in namespace
// ns: slice, service, address, ports, node, zone and conditions.
func (c *Cluster) DescribeEndpointSlices(ctx context.Context, ns string) (string, error) {
	list, err := c.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return "", err
	}
	var b strings.Builder
	tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SLICE\tSERVICE\tADDRESS\tPORTS\tNODE\tZONE\tREADY\tSERVING\tTERMINATING")
	for _, s := range list.Items {
		var ports []string
		for _, p := range s.Ports {
			ports = append(ports, fmt.Sprintf("%d/%s", ptr.Deref(p.Port, 0), ptr.Deref(p.Protocol, "")))
		}
		if len(s.Endpoints) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t-\t%s\t-\t-\t-\t-\t-\n", s.Name, s.Labels[discoveryv1.LabelServiceName], strings.Join(ports, ","))
		}
		for _, e := range s.Endpoints {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%v\t%v\t%v\n", s.Name, s.Labels[discoveryv1.LabelServiceName],
				strings.Join(e.Addresses, ","), strings.Join(ports, ","), ptr.Deref(e.NodeName, "-"), ptr.Deref(e.Zone, "-"),
				ptr.Deref(e.Conditions.Ready, false), ptr.Deref(e.Conditions.Serving, false), ptr.Deref(e.Conditions.Terminating, false))
		}
	}
	err = tw.Flush()
	return b.String(), err
}
