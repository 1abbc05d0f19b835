package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/utils/ptr"

	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

// TestHarnessKubeletDrivesEndpointSlices checks the harness's own kubelet, which the
// scenarios rely on: readiness and graceful deletion reported through the status API reach
// the EndpointSlice the real controller writes, with the conditions a kubelet would cause.
func TestHarnessKubeletDrivesEndpointSlices(t *testing.T) {
	c := framework.Shared(t)
	ctx := context.Background()
	ns := c.CreateNamespace(t, "harness")
	labels := map[string]string{"app": "harness"}
	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
	c.CreateService(t, framework.ClusterIPService(ns, "harness", labels, 80, 8080))

	type cond struct{ ready, serving, terminating bool }
	// waitSlice waits until the service's endpoints are exactly want (pod IP -> conditions).
	waitSlice := func(want map[string]cond) {
		t.Helper()
		var got map[string]cond
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			slices, err := c.Client.DiscoveryV1().EndpointSlices(ns).List(ctx, metav1.ListOptions{
				LabelSelector: discoveryv1.LabelServiceName + "=harness"})
			if err != nil {
				return false, err
			}
			got = map[string]cond{}
			for _, s := range slices.Items {
				for _, e := range s.Endpoints {
					got[e.Addresses[0]] = cond{ptr.Deref(e.Conditions.Ready, false),
						ptr.Deref(e.Conditions.Serving, false), ptr.Deref(e.Conditions.Terminating, false)}
				}
			}
			return fmt.Sprint(got) == fmt.Sprint(want), nil
		})
		if err != nil {
			t.Fatalf("endpoints: got %v, want %v", got, want)
		}
	}
	ip1, ip2 := c.Pod("n1-p1").IP, c.Pod("n2-p1").IP
	waitSlice(map[string]cond{ip1: {true, true, false}, ip2: {true, true, false}})

	if err := c.SetPodReady(ctx, ns, "n2-p1", false); err != nil {
		t.Fatal(err)
	}
	waitSlice(map[string]cond{ip1: {true, true, false}, ip2: {false, false, false}})
	if err := c.SetPodReady(ctx, ns, "n2-p1", true); err != nil {
		t.Fatal(err)
	}
	waitSlice(map[string]cond{ip1: {true, true, false}, ip2: {true, true, false}})

	if err := c.TerminatePod(ctx, ns, "n1-p1"); err != nil {
		t.Fatal(err)
	}
	waitSlice(map[string]cond{ip1: {false, true, true}, ip2: {true, true, false}})
	if err := c.DeletePod(ctx, ns, "n1-p1"); err != nil {
		t.Fatal(err)
	}
	waitSlice(map[string]cond{ip2: {true, true, false}})
}

// TestHarnessComponentsRestart checks Stop and Start on an echo server: the pod's server
// goes away (its port is closed) and comes back.
func TestHarnessComponentsRestart(t *testing.T) {
	c := framework.Shared(t)
	ctx := context.Background()
	pod := c.Pod("n2-p3")
	from := c.Pod("n2-p2").NetNS
	addr := framework.HostPort(pod.IP, 9376)
	if r, err := framework.Request(ctx, from, "tcp", addr); err != nil || r.Pod != pod.Name {
		t.Fatalf("before stopping: %v %v", r, err)
	}
	if err := c.Stop(framework.Echo(pod.Name)); err != nil {
		t.Fatal(err)
	}
	if c.Running(framework.Echo(pod.Name)) {
		t.Error("echo server still running after Stop")
	}
	if _, err := framework.Request(ctx, from, "tcp", addr); err == nil {
		t.Error("stopped echo server still answers")
	}
	if err := c.Start(framework.Echo(pod.Name)); err != nil {
		t.Fatal(err)
	}
	if err := framework.WaitForBackends(ctx, 10*time.Second, from, "tcp", addr, pod.Name); err != nil {
		t.Fatal(err)
	}
}
