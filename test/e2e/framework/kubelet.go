package framework

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
)

// EchoPorts are the ports kpx-echo serves, over TCP and UDP, in every pod slot.
var EchoPorts = []int32{80, 8080, 8443, 9090, 5353, 9376}

// apiTimeout bounds the waits of this file.
const apiTimeout = time.Minute

// NewPod returns a Pod for the slot called name (such as "n1-p1"), in namespace ns, with
// labels, bound to the slot's node, with a container declaring every echo port (named
// tcp-PORT and udp-PORT, for named target ports). Change it before RunPod as needed.
func (l *Layout) NewPod(ns, name string, labels map[string]string) *v1.Pod {
	slot := l.Pod(name)
	var ports []v1.ContainerPort
	for _, p := range EchoPorts {
		ports = append(ports,
			v1.ContainerPort{Name: fmt.Sprintf("tcp-%d", p), ContainerPort: p, Protocol: v1.ProtocolTCP},
			v1.ContainerPort{Name: fmt.Sprintf("udp-%d", p), ContainerPort: p, Protocol: v1.ProtocolUDP})
	}
	return &v1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec: v1.PodSpec{
			NodeName:                      slot.Node,
			AutomountServiceAccountToken:  ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To[int64](30),
			Containers: []v1.Container{{
				Name:  "echo",
				Image: "kpx-echo", // never pulled: the slot's namespace runs it already
				Args:  []string{"-name", name},
				Ports: ports,
			}},
		},
	}
}

// RunPod creates pod, whose name must be a slot's, on the slot's node and then, as the
// kubelet would, reports it Running and Ready with the slot's IP, so the EndpointSlice
// controller publishes it. It returns the pod as stored. A slot holds one pod at a time:
// it fails while a pod of that name exists in another namespace.
func (c *Cluster) RunPod(ctx context.Context, pod *v1.Pod) (*v1.Pod, error) {
	slot, ok := c.slot(pod.Name)
	if !ok {
		return nil, fmt.Errorf("pod %s/%s: the name must be one of the cluster's pod slots (nI-pJ)", pod.Namespace, pod.Name)
	}
	// One slot, one pod: two Pod objects on one namespace would both be answered by it.
	others, err := c.Client.CoreV1().Pods("").List(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + pod.Name})
	if err != nil {
		return nil, err
	}
	for _, o := range others.Items {
		if o.Namespace != pod.Namespace {
			return nil, fmt.Errorf("pod %s/%s: slot %s is taken by pod %s/%s; delete it first (DeletePod)",
				pod.Namespace, pod.Name, pod.Name, o.Namespace, o.Name)
		}
	}
	pod = pod.DeepCopy()
	pod.Spec.NodeName = slot.Node
	return c.startPod(ctx, pod, c.Node(slot.Node).IP, slot.IP, v1.PodQOSBestEffort, slot.NetNS)
}

// startPod creates pod and then, as the kubelet would, reports it Running and Ready on a
// node at hostIP with podIP, every container running (their IDs name netns, where the
// test harness runs them). It returns the pod as stored.
func (c *Cluster) startPod(ctx context.Context, pod *v1.Pod, hostIP, podIP string, qos v1.PodQOSClass, netns string) (*v1.Pod, error) {
	var created *v1.Pod
	// Until the service account controller has made the namespace's "default" service
	// account, admission refuses pods.
	err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, apiTimeout, true, func(ctx context.Context) (bool, error) {
		var err error
		created, err = c.Client.CoreV1().Pods(pod.Namespace).Create(ctx, pod, metav1.CreateOptions{})
		if err != nil && strings.Contains(err.Error(), "service account") {
			return false, nil
		}
		return err == nil, err
	})
	if err != nil {
		return nil, fmt.Errorf("creating pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	now := metav1.Now()
	created.Status = v1.PodStatus{
		Phase:     v1.PodRunning,
		HostIP:    hostIP,
		HostIPs:   []v1.HostIP{{IP: hostIP}},
		PodIP:     podIP,
		PodIPs:    []v1.PodIP{{IP: podIP}},
		StartTime: &now,
		QOSClass:  qos,
		Conditions: []v1.PodCondition{
			{Type: v1.PodScheduled, Status: v1.ConditionTrue, LastTransitionTime: now},
			{Type: v1.PodInitialized, Status: v1.ConditionTrue, LastTransitionTime: now},
			{Type: v1.ContainersReady, Status: v1.ConditionTrue, LastTransitionTime: now},
			{Type: v1.PodReady, Status: v1.ConditionTrue, LastTransitionTime: now},
		},
	}
	for _, ctr := range created.Spec.Containers {
		created.Status.ContainerStatuses = append(created.Status.ContainerStatuses, v1.ContainerStatus{
			Name: ctr.Name, Ready: true, Started: ptr.To(true), Image: ctr.Image, ImageID: ctr.Image,
			ContainerID: "kpx://" + netns + "/" + ctr.Name,
			State:       v1.ContainerState{Running: &v1.ContainerStateRunning{StartedAt: now}},
		})
	}
	updated, err := c.Client.CoreV1().Pods(pod.Namespace).UpdateStatus(ctx, created, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("reporting pod %s/%s running: %w", pod.Namespace, pod.Name, err)
	}
	return updated, nil
}

// RunPods runs the slots names in namespace ns with labels, failing the test on error.
func (c *Cluster) RunPods(t testing.TB, ns string, labels map[string]string, names ...string) {
	t.Helper()
	for _, n := range names {
		if _, err := c.RunPod(context.Background(), c.NewPod(ns, n, labels)); err != nil {
			t.Fatal(err)
		}
	}
}

// SetPodReady sets the pod's Ready and ContainersReady conditions, as the kubelet does
// when a readiness probe starts failing or passes again.
func (c *Cluster) SetPodReady(ctx context.Context, ns, name string, ready bool) error {
	status := v1.ConditionFalse
	if ready {
		status = v1.ConditionTrue
	}
	return retry.RetryOnConflict(retry.DefaultRetry, func() error {
		pod, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		now := metav1.Now()
		for i, cond := range pod.Status.Conditions {
			if (cond.Type == v1.PodReady || cond.Type == v1.ContainersReady) && cond.Status != status {
				pod.Status.Conditions[i].Status = status
				pod.Status.Conditions[i].LastTransitionTime = now
			}
		}
		for i := range pod.Status.ContainerStatuses {
			pod.Status.ContainerStatuses[i].Ready = ready
		}
		_, err = c.Client.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{})
		return err
	})
}

// TerminatePod deletes the pod gracefully: it gets a deletion timestamp and, with no real
// kubelet to finish the job, stays Terminating (still Running, its echo server still
// serving) until DeletePod. The EndpointSlice controller marks its endpoint terminating,
// serving while the pod is Ready.
func (c *Cluster) TerminatePod(ctx context.Context, ns, name string) error {
	return c.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{})
}

// DeletePod removes the pod at once (grace period 0), as the kubelet does once its
// containers are gone, and waits until it is gone. The slot's echo server keeps running;
// stop it with Stop(Echo(name)) to make the backend go away too.
func (c *Cluster) DeletePod(ctx context.Context, ns, name string) error {
	err := c.Client.CoreV1().Pods(ns).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)})
	if err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, apiTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
}

// CreateNamespace creates a namespace named prefix plus a random suffix and returns its
// name; it is deleted when the test ends (with every pod in it removed at once, since no
// kubelet would finish their graceful deletion).
func (c *Cluster) CreateNamespace(t testing.TB, prefix string) string {
	t.Helper()
	ctx := context.Background()
	ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &v1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: prefix + "-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating namespace: %v", err)
	}
	t.Cleanup(func() {
		_ = c.Client.CoreV1().Pods(ns.Name).DeleteCollection(ctx,
			metav1.DeleteOptions{GracePeriodSeconds: ptr.To[int64](0)}, metav1.ListOptions{})
		_ = c.Client.CoreV1().Namespaces().Delete(ctx, ns.Name, metav1.DeleteOptions{})
	})
	return ns.Name
}
