package app

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/yaml"

	"github.com/kproxy-dev/kproxy/pkg/config"
)

// TestDeployManifestsAreValid keeps deploy/ honest: the ConfigMap's configuration passes
// kproxy's own validation and the DaemonSet's arguments parse as kproxy flags.
func TestDeployManifestsAreValid(t *testing.T) {
	decode := func(path string) []interface{} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var objs []interface{}
		for _, doc := range strings.Split(string(data), "\n---\n") {
			obj, _, err := scheme.Codecs.UniversalDeserializer().Decode([]byte(doc), nil, nil)
			if err != nil {
				t.Fatalf("%s: %v", path, err)
			}
			objs = append(objs, obj)
		}
		return objs
	}
	cm := decode("../../deploy/configmap.yaml")[0].(*v1.ConfigMap)
	// The shipped config must decode strictly: a warning there would greet every install.
	kpc, warning, err := config.Decode([]byte(cm.Data["config.conf"]))
	if err != nil || warning != nil {
		t.Fatalf("ConfigMap config: warning %v, err %v", warning, err)
	}
	if _, errs := config.FromV1Alpha1(kpc); len(errs) > 0 {
		t.Fatalf("ConfigMap config invalid: %v", errs)
	}
	// kproxy reaches the API server through the ConfigMap's kubeconfig.conf, mounted next
	// to config.conf, with the pod's token: never through the kubernetes Service IP, which
	// needs a proxy to work (a new node would never bootstrap).
	if want := "/var/lib/kproxy/kubeconfig.conf"; kpc.ClientConnection.Kubeconfig != want {
		t.Errorf("clientConnection.kubeconfig %q, want %q", kpc.ClientConnection.Kubeconfig, want)
	}
	kc, err := clientcmd.Load([]byte(cm.Data["kubeconfig.conf"]))
	if err != nil {
		t.Fatalf("ConfigMap kubeconfig.conf: %v", err)
	}
	cluster := kc.Clusters[kc.Contexts[kc.CurrentContext].Cluster]
	user := kc.AuthInfos[kc.Contexts[kc.CurrentContext].AuthInfo]
	if cluster == nil || user == nil || user.TokenFile != "/var/run/secrets/kubernetes.io/serviceaccount/token" ||
		strings.Contains(cluster.Server, "kubernetes.default") || strings.Contains(cluster.Server, "10.96.0.1") {
		t.Errorf("kubeconfig.conf: cluster %+v, user %+v; want the control plane's endpoint and the pod's token", cluster, user)
	}

	ds := decode("../../deploy/daemonset.yaml")[0].(*appsv1.DaemonSet)
	main := ds.Spec.Template.Spec.Containers[0]
	args := main.Args
	checkLeastPrivilege(t, ds.Spec.Template.Spec, append(append([]string(nil), main.Command...), args...), main.VolumeMounts)
	cmd := NewCommand()
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatalf("DaemonSet args %v: %v", args, err)
	}
	if got, _ := cmd.Flags().GetString("config"); got != "/var/lib/kproxy/config.conf" {
		t.Errorf("--config parsed as %q", got)
	}
	for _, path := range []string{"../../deploy/rbac.yaml", "../../deploy/kustomization.yaml"} {
		if _, err := os.Stat(path); err != nil {
			t.Error(err)
		}
	}
}

// TestReplaceKubeProxyPatch applies deploy/replace-kube-proxy's patch to kubeadm's
// kube-proxy DaemonSet as `kubectl patch` does (a strategic merge) and checks the swap
// changes what it must and keeps the rest: kproxy's image and probes, and kubeadm's
// command (which kproxy parses as its own flags), ConfigMap, service account and mounts.
func TestReplaceKubeProxyPatch(t *testing.T) {
	read := func(path string) []byte {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		js, err := yaml.YAMLToJSON(data)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return js
	}
	original := read("testdata/kubeadm-kube-proxy-daemonset.yaml")
	patched, err := strategicpatch.StrategicMergePatch(original, read("../../deploy/replace-kube-proxy/daemonset-patch.yaml"), appsv1.DaemonSet{})
	if err != nil {
		t.Fatal(err)
	}
	var before, after appsv1.DaemonSet
	if err := json.Unmarshal(original, &before); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(patched, &after); err != nil {
		t.Fatal(err)
	}
	if len(after.Spec.Template.Spec.Containers) != 1 {
		t.Fatalf("patched DaemonSet has %d containers, want 1 (the patch must merge by name)", len(after.Spec.Template.Spec.Containers))
	}
	c, was := after.Spec.Template.Spec.Containers[0], before.Spec.Template.Spec.Containers[0]
	if !strings.HasPrefix(c.Image, "ghcr.io/kproxy-dev/kproxy:") {
		t.Errorf("image %q, want kproxy's", c.Image)
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet.Path != "/readyz" || c.LivenessProbe == nil || c.LivenessProbe.HTTPGet.Path != "/livez" {
		t.Errorf("probes %+v / %+v, want /readyz and /livez", c.ReadinessProbe, c.LivenessProbe)
	}
	if !reflect.DeepEqual(c.Command, was.Command) || !reflect.DeepEqual(c.VolumeMounts, was.VolumeMounts) || !reflect.DeepEqual(c.Env, was.Env) ||
		!reflect.DeepEqual(after.Spec.Template.Spec.Volumes, before.Spec.Template.Spec.Volumes) ||
		after.Spec.Template.Spec.ServiceAccountName != "kube-proxy" {
		t.Errorf("the patch changed what it must keep:\nbefore %+v\nafter  %+v", was, c)
	}
	if c.Command[0] != "/usr/local/bin/kube-proxy" {
		t.Fatalf("command %v", c.Command)
	}
	cmd := NewCommand()
	if err := cmd.ParseFlags(c.Command[1:]); err != nil {
		t.Errorf("kubeadm's arguments %v: %v", c.Command[1:], err)
	}

	checkLeastPrivilege(t, after.Spec.Template.Spec, was.Command, was.VolumeMounts)
}

// checkLeastPrivilege checks the split of kproxy's DaemonSets: the long-running container
// (the first) is unprivileged with exactly NET_ADMIN and NET_RAW (every other capability
// dropped, the runtime's defaults too), and one privileged init
// container runs its image with invocation plus --init-only (invocation: command then
// args), with mounts as the long-running container's (mounts) has them.
func checkLeastPrivilege(t *testing.T, pod v1.PodSpec, invocation []string, mounts []v1.VolumeMount) {
	t.Helper()
	c := pod.Containers[0]
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil ||
		!reflect.DeepEqual(sc.Capabilities.Add, []v1.Capability{"NET_ADMIN", "NET_RAW"}) ||
		!reflect.DeepEqual(sc.Capabilities.Drop, []v1.Capability{"ALL"}) {
		t.Errorf("main container's security context %+v, want unprivileged with only NET_ADMIN and NET_RAW", sc)
	}
	if len(pod.InitContainers) != 1 {
		t.Fatalf("%d init containers, want 1", len(pod.InitContainers))
	}
	ic := pod.InitContainers[0]
	if ic.Image != c.Image || ic.SecurityContext == nil || ic.SecurityContext.Privileged == nil || !*ic.SecurityContext.Privileged {
		t.Errorf("init container %+v, want kproxy's image, privileged", ic)
	}
	got := append(append([]string(nil), ic.Command...), ic.Args...)
	if want := append(append([]string(nil), invocation...), "--init-only"); !reflect.DeepEqual(got, want) || len(ic.Env) > len(c.Env) || !reflect.DeepEqual(ic.Env, c.Env[:len(ic.Env)]) {
		t.Errorf("init container runs %v with env %v, want %v and the main container's env", got, ic.Env, want)
	}
	if err := NewCommand().ParseFlags(got[1:]); err != nil {
		t.Errorf("init container's arguments %v: %v", got[1:], err)
	}
	paths := map[string]string{}
	for _, m := range mounts {
		paths[m.Name] = m.MountPath
	}
	for _, m := range ic.VolumeMounts {
		if paths[m.Name] != m.MountPath {
			t.Errorf("init container mounts %s at %s, the main container at %q", m.Name, m.MountPath, paths[m.Name])
		}
	}
}
