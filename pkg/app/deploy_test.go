package app

import (
	"os"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"

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

	ds := decode("../../deploy/daemonset.yaml")[0].(*appsv1.DaemonSet)
	args := ds.Spec.Template.Spec.Containers[0].Args
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
