// Package framework is the Go side of kproxy's e2e test cluster: a real kube-apiserver,
// etcd and kube-controller-manager, several simulated nodes and their pods, all in network
// namespaces on one machine (hack/cluster-up.sh builds them; hack/cluster/lib.sh draws the
// layout).
//
// The shell scripts do the plumbing (namespaces, links, routes, certificates, processes
// with pid files); this package does what needs the API, and gives tests one handle:
//
//	c := framework.Shared(t) // or Up(t, Options{...}) for a cluster of its own; both skip
//	                         // unless KPROXY_E2E=1, root and the binaries (make e2e)
//	ns := c.CreateNamespace(t, "basic")
//	labels := map[string]string{"app": "web"}
//	c.RunPods(t, ns, labels, "n1-p1", "n2-p1")
//	svc := c.CreateService(t, framework.ClusterIPService(ns, "web", labels, 80, 8080))
//	c.WaitForBackends(t, c.Pod("n1-p2").NetNS, "tcp", framework.HostPort(svc.Spec.ClusterIP, 80), "n1-p1", "n2-p1")
//
// The package's TestMain must call framework.Main(m), which tears the shared cluster down.
//
// Pods: every node has a fixed set of pod namespaces ("slots", named nI-pJ) that run
// kpx-echo from the start. A Pod object whose name is a slot's name is that pod: RunPod
// binds it to the slot's node and, acting as the kubelet, marks it Running and Ready with
// the slot's IP through the status API, so the real EndpointSlice controller publishes it.
// SetPodReady, TerminatePod and DeletePod play the kubelet's other parts; StopEcho and
// StartEcho make the server itself go away and come back.
//
// Processes: Stop, Start and Restart act on the components hack/cluster/ctl.sh knows
// (etcd, kube-apiserver, kube-controller-manager, kproxy-node-I, echo-nI-pJ, echo-external).
//
// Traffic: Request, Dial/Ping (long-lived connections) and WaitForBackends run from inside
// any of the cluster's namespaces (a pod's, a node's, External's); each answer names the
// pod, the client address it saw and the port it was reached on.
//
// Nodes: IPTables, IPTablesSave (kproxy's backend, the node's own xtables lock at
// XTablesLock), Metrics, SyncCount and Healthz (kproxy's servers inside the node), Exec.
//
// The API client talks to kube-apiserver from inside the control-plane namespace (its
// sockets are opened there), so the test process itself stays in the root namespace and
// nothing routes between the two.
package framework
