package framework

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/utils/ptr"
)

// Bootstrap makes a fresh cluster look like one with kubelets and kproxy's DaemonSet
// installed; hack/cluster-up.sh runs it (kpx-cluster bootstrap). It registers every node
// (labels, pod CIDR, addresses, Ready), creates the objects of rbacPath (deploy/rbac.yaml),
// and, for identity "serviceaccount", writes kproxy-sa.kubeconfig with a token of the
// ServiceAccount kube-system/kproxy. It waits until pods can be created in "default".
func (c *Cluster) Bootstrap(ctx context.Context, rbacPath, identity string) error {
	for _, n := range c.Nodes {
		if err := c.registerNode(ctx, n); err != nil {
			return err
		}
	}
	if rbacPath != "" {
		data, err := os.ReadFile(rbacPath)
		if err != nil {
			return err
		}
		if err := c.Apply(ctx, data); err != nil {
			return fmt.Errorf("%s: %w", rbacPath, err)
		}
	}
	if identity == "serviceaccount" {
		if err := c.writeServiceAccountKubeconfig(ctx); err != nil {
			return err
		}
	}
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, apiTimeout, true, func(ctx context.Context) (bool, error) {
		_, err := c.Client.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for ServiceAccount default/default (made by kube-controller-manager's serviceaccount-controller): %w", err)
	}
	return nil
}

func (c *Cluster) registerNode(ctx context.Context, n Node) error {
	node := &v1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name: n.Name,
			Labels: map[string]string{
				"kubernetes.io/hostname":        n.Name,
				"kubernetes.io/os":              "linux",
				"kubernetes.io/arch":            "amd64",
				v1.LabelTopologyZone:            n.Zone,
				v1.LabelTopologyRegion:          "region-1",
				"node.kubernetes.io/kproxy-e2e": "true",
			},
		},
		Spec: v1.NodeSpec{PodCIDR: n.PodCIDR, PodCIDRs: []string{n.PodCIDR}},
	}
	created, err := c.Client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("creating node %s: %w", n.Name, err)
	}
	now := metav1.Now()
	created.Status = v1.NodeStatus{
		Addresses: []v1.NodeAddress{
			{Type: v1.NodeInternalIP, Address: n.IP},
			{Type: v1.NodeHostName, Address: n.Name},
		},
		Conditions: []v1.NodeCondition{{
			Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady",
			Message: "kproxy e2e harness", LastHeartbeatTime: now, LastTransitionTime: now,
		}},
		NodeInfo: v1.NodeSystemInfo{OperatingSystem: "linux", Architecture: "amd64", KubeletVersion: "v1.37.2"},
	}
	if _, err := c.Client.CoreV1().Nodes().UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("reporting node %s status: %w", n.Name, err)
	}
	return nil
}

// Apply creates the objects of a YAML stream: Namespaces, ServiceAccounts, ClusterRoles,
// ClusterRoleBindings, Services, Endpoints, EndpointSlices and Pods. A Pod is run as
// RunPod does, so its name must be a pod slot's; one without containers gets NewPod's
// spec. Objects that exist already are left alone.
func (c *Cluster) Apply(ctx context.Context, data []byte) error {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var raw runtime.RawExtension
		if err := dec.Decode(&raw); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if len(bytes.TrimSpace(raw.Raw)) == 0 || string(bytes.TrimSpace(raw.Raw)) == "null" {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(raw.Raw, nil, nil)
		if err != nil {
			return err
		}
		if err := c.create(ctx, obj); err != nil && !apierrors.IsAlreadyExists(err) {
			return err
		}
	}
}

func (c *Cluster) create(ctx context.Context, obj runtime.Object) error {
	cs, opts := c.Client, metav1.CreateOptions{}
	var err error
	switch o := obj.(type) {
	case *v1.Namespace:
		_, err = cs.CoreV1().Namespaces().Create(ctx, o, opts)
	case *v1.ServiceAccount:
		_, err = cs.CoreV1().ServiceAccounts(o.Namespace).Create(ctx, o, opts)
	case *rbacv1.ClusterRole:
		_, err = cs.RbacV1().ClusterRoles().Create(ctx, o, opts)
	case *rbacv1.ClusterRoleBinding:
		_, err = cs.RbacV1().ClusterRoleBindings().Create(ctx, o, opts)
	case *v1.Service:
		_, err = cs.CoreV1().Services(o.Namespace).Create(ctx, o, opts)
	case *v1.Endpoints:
		_, err = cs.CoreV1().Endpoints(o.Namespace).Create(ctx, o, opts)
	case *discoveryv1.EndpointSlice:
		_, err = cs.DiscoveryV1().EndpointSlices(o.Namespace).Create(ctx, o, opts)
	case *v1.Pod:
		if len(o.Spec.Containers) == 0 {
			// A Pod given by its name and labels only: the slot's default pod.
			o = c.NewPod(o.Namespace, o.Name, o.Labels)
		}
		_, err = c.RunPod(ctx, o)
	default:
		return fmt.Errorf("apply: unsupported kind %s", obj.GetObjectKind().GroupVersionKind().Kind)
	}
	return err
}

// writeServiceAccountKubeconfig writes kproxy-sa.kubeconfig: the admin kubeconfig's server
// and CA with a day-long token of ServiceAccount kube-system/kproxy.
func (c *Cluster) writeServiceAccountKubeconfig(ctx context.Context) error {
	var tr *authenticationv1.TokenRequest
	err := wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, apiTimeout, true, func(ctx context.Context) (bool, error) {
		var err error
		tr, err = c.Client.CoreV1().ServiceAccounts("kube-system").CreateToken(ctx, "kproxy",
			&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.To[int64](24 * 3600)}},
			metav1.CreateOptions{})
		return err == nil, nil
	})
	if err != nil {
		return fmt.Errorf("requesting a token for kube-system/kproxy (is it in deploy/rbac.yaml?): %w", err)
	}
	cfg, err := clientcmd.LoadFromFile(c.Kubeconfig())
	if err != nil {
		return err
	}
	for name, user := range cfg.AuthInfos {
		user.Token = tr.Status.Token
		cfg.AuthInfos[name] = user
	}
	return clientcmd.WriteToFile(*cfg, filepath.Join(c.StateDir, "kproxy-sa.kubeconfig"))
}
