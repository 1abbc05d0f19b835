package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

// kproxyUser is the API user of kproxy running with deploy/rbac.yaml's ServiceAccount.
const kproxyUser = "system:serviceaccount:kube-system:kproxy"

// TestRBACIsExactlyWhatKProxyUses runs kproxy as the ServiceAccount of deploy/rbac.yaml
// through everything that makes it call the API: start-up (its Node, the informers, the
// "Starting" Event), and a health check node port it cannot open, twice (a Warning Event,
// then its repeat patched into a series). It then reads the API server's audit log:
// nothing kproxy asked for was forbidden, and every verb the ClusterRole grants was used,
// so the role is exactly what kproxy needs. It also checks the Events upstream emits
// there.
func TestRBACIsExactlyWhatKProxyUses(t *testing.T) {
	c := framework.Up(t, framework.Options{Identity: "serviceaccount"})
	ctx := context.Background()
	node := c.Nodes[0]
	// client-go streams the informers' initial lists over a watch (WatchListClient) and falls
	// back to list and watch where the API server does not stream them (before Kubernetes
	// 1.34, or with the feature off there). Node-2 runs the fallback, so the role is checked
	// against both.
	if err := c.Stop(framework.KProxy(c.Nodes[1].Name)); err != nil {
		t.Fatal(err)
	}
	cmdFile := filepath.Join(c.StateDir, "procs", framework.KProxy(c.Nodes[1].Name)+".cmd")
	cmd, err := os.ReadFile(cmdFile)
	if err != nil {
		t.Fatal(err)
	}
	withFallback := strings.Replace(string(cmd), " env ", " env KUBE_FEATURE_WatchListClient=false ", 1)
	if withFallback == string(cmd) {
		t.Fatalf("%s: no env command to add the feature setting to:\n%s", cmdFile, cmd)
	}
	if err := os.WriteFile(cmdFile, []byte(withFallback), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := c.Start(framework.KProxy(c.Nodes[1].Name)); err != nil {
		t.Fatal(err)
	}

	eventually(t, time.Minute, "the Starting Event of "+node.Name, func() error {
		_, err := findEvent(ctx, c, "default", "Node", node.Name, "Starting")
		return err
	})

	// Another program holds the port kproxy must serve the health check on.
	const hcPort = 32555
	var ln net.Listener
	if err := framework.InNetNS(node.NetNS, func() error {
		var err error
		ln, err = net.Listen("tcp4", fmt.Sprintf("0.0.0.0:%d", hcPort))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ns := c.CreateNamespace(t, "rbac")
	labels := map[string]string{"app": "rbac"}
	c.RunPods(t, ns, labels, "n1-p1")
	svc := tcpService(ns, "lb", v1.ServiceTypeLoadBalancer, labels, 80, 8080)
	svc.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
	svc.Spec.HealthCheckNodePort = hcPort
	c.CreateService(t, svc)
	var ev *eventsv1.Event
	eventually(t, time.Minute, "a FailedToStartServiceHealthcheck Event on the Service", func() error {
		var err error
		ev, err = findEvent(ctx, c, ns, "Service", "lb", "FailedToStartServiceHealthcheck")
		return err
	})
	if want := fmt.Sprintf("node %s failed to start healthcheck %q on port %d", node.Name, ns+"/lb", hcPort); !strings.HasPrefix(ev.Note, want) {
		t.Errorf("Event note %q, want it to start with %q", ev.Note, want)
	}
	if ev.Type != v1.EventTypeWarning || ev.Action != "Listen" || ev.ReportingController != "kube-proxy" {
		t.Errorf("Event type %q action %q reportingController %q, want Warning, Listen, kube-proxy", ev.Type, ev.Action, ev.ReportingController)
	}
	// Any change syncs again, which retries the port and repeats the Event.
	c.CreateService(t, tcpService(ns, "another", v1.ServiceTypeClusterIP, labels, 80, 8080))
	eventually(t, time.Minute, "the Event's repeat, patched into a series", func() error {
		ev, err := findEvent(ctx, c, ns, "Service", "lb", "FailedToStartServiceHealthcheck")
		if err != nil {
			return err
		}
		if ev.Series == nil || ev.Series.Count < 2 {
			return fmt.Errorf("series %+v", ev.Series)
		}
		return nil
	})

	granted := grantedVerbs(t, filepath.Join(c.RepoRoot, "deploy", "rbac.yaml"))
	used, denied := auditedVerbs(t, filepath.Join(c.StateDir, "logs", "audit.log"), kproxyUser)
	t.Logf("granted: %s", strings.Join(granted, ", "))
	t.Logf("used:    %s", strings.Join(used, ", "))
	for _, d := range denied {
		t.Errorf("forbidden to kproxy: %s", d)
	}
	for _, g := range granted {
		if !slices.Contains(used, g) {
			t.Errorf("deploy/rbac.yaml grants %s, which kproxy never used", g)
		}
	}
	for _, u := range used {
		if !slices.Contains(granted, u) {
			t.Errorf("kproxy used %s, which deploy/rbac.yaml does not grant (allowed some other way?)", u)
		}
	}
}

// findEvent returns the newest events.k8s.io Event in ns about kind/name with reason.
func findEvent(ctx context.Context, c *framework.Cluster, ns, kind, name, reason string) (*eventsv1.Event, error) {
	list, err := c.Client.EventsV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: fields.Set{
		"regarding.kind": kind, "regarding.name": name, "reason": reason}.String()})
	if err != nil {
		return nil, err
	}
	if len(list.Items) == 0 {
		return nil, fmt.Errorf("no %s Event about %s %s/%s", reason, kind, ns, name)
	}
	return &list.Items[len(list.Items)-1], nil
}

// grantedVerbs lists "group/resource verb" for every verb the ClusterRole in path grants.
func grantedVerbs(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		var raw runtime.RawExtension
		if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(raw.Raw, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		role, ok := obj.(*rbacv1.ClusterRole)
		if !ok {
			continue
		}
		for _, r := range role.Rules {
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						out = append(out, verbKey(g, res, v))
					}
				}
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// auditedVerbs reads a JSON audit log and returns the "group/resource verb" of every
// resource request user made, and those that were forbidden.
func auditedVerbs(t *testing.T, path, user string) (used, denied []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		var e struct {
			User struct {
				Username string `json:"username"`
			} `json:"user"`
			Verb      string `json:"verb"`
			ObjectRef *struct {
				APIGroup    string `json:"apiGroup"`
				Resource    string `json:"resource"`
				Subresource string `json:"subresource"`
			} `json:"objectRef"`
			RequestURI     string `json:"requestURI"`
			ResponseStatus struct {
				Code int `json:"code"`
			} `json:"responseStatus"`
		}
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if e.User.Username != user {
			continue
		}
		if e.ObjectRef == nil {
			// Discovery and /version: every authenticated user may (system:discovery).
			continue
		}
		res := e.ObjectRef.Resource
		if e.ObjectRef.Subresource != "" {
			res += "/" + e.ObjectRef.Subresource
		}
		k := verbKey(e.ObjectRef.APIGroup, res, e.Verb)
		if e.ResponseStatus.Code == 403 {
			denied = append(denied, k+" ("+e.RequestURI+")")
		}
		used = append(used, k)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	slices.Sort(used)
	return slices.Compact(used), denied
}

func verbKey(group, resource, verb string) string {
	if group == "" {
		group = "core"
	}
	return group + "/" + resource + " " + verb
}
