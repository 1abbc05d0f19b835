package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/util/retry"

	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

// tcpService returns a Service of type typ selecting selector with one TCP port
// port -> targetPort named "tcp".
func tcpService(ns, name string, typ v1.ServiceType, selector map[string]string, port, targetPort int32) *v1.Service {
	return &v1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1.ServiceSpec{
			Type:     typ,
			Selector: selector,
			Ports: []v1.ServicePort{
				{Name: "tcp", Protocol: v1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(targetPort)},
			},
		},
	}
}

// updateService applies mutate to the stored Service and returns the result, retrying on
// conflicts; it fails the test on error.
func updateService(t testing.TB, c *framework.Cluster, ns, name string, mutate func(*v1.Service)) *v1.Service {
	t.Helper()
	var out *v1.Service
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		svc, err := c.Client.CoreV1().Services(ns).Get(context.Background(), name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		mutate(svc)
		out, err = c.Client.CoreV1().Services(ns).Update(context.Background(), svc, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("updating service %s/%s: %v", ns, name, err)
	}
	return out
}

// deleteService deletes a Service, failing the test on error.
func deleteService(t testing.TB, c *framework.Cluster, ns, name string) {
	t.Helper()
	if err := c.Client.CoreV1().Services(ns).Delete(context.Background(), name, metav1.DeleteOptions{}); err != nil {
		t.Fatalf("deleting service %s/%s: %v", ns, name, err)
	}
}

// request sends one request and fails the test when it gets no answer.
func request(t testing.TB, from, proto, addr string) framework.Reply {
	t.Helper()
	r, err := framework.Request(context.Background(), from, proto, addr)
	if err != nil {
		t.Fatalf("%s %s from %s: %v", proto, addr, from, err)
	}
	return r
}

// eventually polls cond every 250ms until it returns nil or timeout passes, and fails
// the test with cond's last error. It returns how long it took.
func eventually(t testing.TB, timeout time.Duration, what string, cond func() error) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		err := cond()
		if err == nil {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not so after %s: %v", what, timeout, err)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// refusedFast tells whether a TCP connection to addr from namespace from is refused at
// once (a REJECT with tcp-reset or icmp-port-unreachable), as opposed to answered or
// timing out. It returns an error describing what happened otherwise.
func refusedFast(from, addr string) error {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), framework.RequestTimeout)
	defer cancel()
	conn, err := framework.DialContext(ctx, from, "tcp", addr)
	took := time.Since(start)
	if err == nil {
		r, perr := framework.Ping(conn)
		conn.Close()
		return fmt.Errorf("connection to %s accepted (answer %v, %v)", addr, r, perr)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("connection to %s failed after %s with %v, want connection refused", addr, took.Round(time.Millisecond), err)
	}
	if took > time.Second {
		return fmt.Errorf("connection to %s refused only after %s", addr, took.Round(time.Millisecond))
	}
	return nil
}

// natRulesMentioning returns the lines of node's nat table whose text contains s (such
// as a namespace name, which kproxy's rule comments carry).
func natRulesMentioning(t testing.TB, c *framework.Cluster, node, s string) []string {
	t.Helper()
	out, err := c.IPTablesSave(context.Background(), node, "nat")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for l := range strings.SplitSeq(out, "\n") {
		if strings.Contains(l, s) {
			lines = append(lines, l)
		}
	}
	return lines
}

// podNS returns the network namespace of pod slot name.
func podNS(c *framework.Cluster, name string) string { return c.Pod(name).NetNS }

// nodeNS returns the network namespace of node name.
func nodeNS(c *framework.Cluster, name string) string { return c.Node(name).NetNS }
