package app

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kproxy-dev/kproxy/pkg/rules/rulestest"
	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

// TestRenderExamples pins what `kproxy render` prints for the shipped examples, which is
// also the README's first command.
func TestRenderExamples(t *testing.T) {
	cmd := NewCommand()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs([]string{"render", "-f", "../../examples", "--node-name", "node-1", "--cluster-cidr", "10.244.0.0/16"})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("render: %v (stderr %s)", err, errOut.String())
	}
	rulestest.Golden(t, "render-examples", out.String())

	// The payload part must apply cleanly.
	tables := ruleset.NewTables()
	if err := tables.Apply(out.Bytes()); err != nil {
		t.Errorf("rendered payload does not apply: %v", err)
	}
}

func TestRenderErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"render"}, "-f is required"},
		{[]string{"render", "-f", "does-not-exist"}, "no such file"},
		{[]string{"render", "-f", "../../examples", "--node-name", "nope"}, "matches none"},
		{[]string{"render", "-f", "../../examples", "--ip-family", "IPv5"}, "--ip-family"},
		{[]string{"render", "-f", "../../examples", "--cluster-cidr", "10.0.0.0/33"}, "clusterCIDR"},
		{[]string{"--proxy-mode", "ipvs"}, "iptables"},
	} {
		cmd := NewCommand()
		cmd.SetOut(&bytes.Buffer{})
		cmd.SetErr(&bytes.Buffer{})
		cmd.SetArgs(tc.args)
		err := cmd.Execute()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: error %v, want one containing %q", tc.args, err, tc.want)
		}
	}
}

// renderManifests runs `kproxy render` over manifests written to a temp dir and returns
// what it printed, after checking that the payload applies.
func renderManifests(t *testing.T, manifests string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "objects.yaml"), []byte(manifests), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := NewCommand()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs([]string{"render", "-f", dir, "--node-name", "node-1", "--cluster-cidr", "10.244.0.0/16"})
	if err := cmd.Execute(); err != nil {
		t.Fatalf("render: %v (stderr %s)", err, errOut.String())
	}
	if err := ruleset.NewTables().Apply(out.Bytes()); err != nil {
		t.Errorf("rendered payload does not apply: %v", err)
	}
	return out.String()
}

// TestRenderLongPortNames renders a Service whose port names are valid DNS labels but
// not IANA service names (longer than 15 characters, or with a double hyphen): the ports
// are programmed like any other.
func TestRenderLongPortNames(t *testing.T) {
	longest := strings.Repeat("p", 63)
	out := renderManifests(t, `
apiVersion: v1
kind: Service
metadata: {name: cert-manager, namespace: cert-manager}
spec:
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20]
  ports:
  - {name: tcp-prometheus-servicemonitor, port: 9402, protocol: TCP}
  - {name: grpc--web, port: 8081, protocol: TCP}
  - {name: `+longest+`, port: 8082, protocol: TCP}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: cert-manager-abcde
  namespace: cert-manager
  labels: {kubernetes.io/service-name: cert-manager}
addressType: IPv4
ports:
- {name: tcp-prometheus-servicemonitor, port: 9402, protocol: TCP}
- {name: grpc--web, port: 8081, protocol: TCP}
- {name: `+longest+`, port: 8082, protocol: TCP}
endpoints:
- addresses: [10.244.1.7]
  conditions: {ready: true}
`)
	for _, want := range []string{
		`-A KUBE-SERVICES -m comment --comment "cert-manager/cert-manager:tcp-prometheus-servicemonitor cluster IP" -m tcp -p tcp -d 10.96.0.20 --dport 9402`,
		`--comment "cert-manager/cert-manager:tcp-prometheus-servicemonitor -> 10.244.1.7:9402"`,
		`--comment "cert-manager/cert-manager:grpc--web -> 10.244.1.7:8081"`,
		`--comment "cert-manager/cert-manager:` + longest + ` -> 10.244.1.7:8082"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("render output lacks %s\n%s", want, out)
		}
	}
}

// TestRenderAppliesWatchFilters checks that render sees only what the daemon's watches
// deliver: no Service claimed by another proxy or labelled headless, and no EndpointSlice
// carrying those labels.
func TestRenderAppliesWatchFilters(t *testing.T) {
	out := renderManifests(t, `
apiVersion: v1
kind: Service
metadata: {name: web, namespace: ns}
spec:
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata:
  name: claimed
  namespace: ns
  labels: {service.kubernetes.io/service-proxy-name: other-proxy}
spec:
  clusterIP: 10.96.0.11
  clusterIPs: [10.96.0.11]
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Service
metadata:
  name: headless-labelled
  namespace: ns
  labels: {service.kubernetes.io/headless: ""}
spec:
  clusterIP: 10.96.0.12
  clusterIPs: [10.96.0.12]
  ports: [{name: http, port: 80, protocol: TCP}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: ns
  labels: {kubernetes.io/service-name: web}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.1.5]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-headless
  namespace: ns
  labels: {kubernetes.io/service-name: web, service.kubernetes.io/headless: ""}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.9.8]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-claimed
  namespace: ns
  labels: {kubernetes.io/service-name: web, service.kubernetes.io/service-proxy-name: other-proxy}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.9.9]}]
`)
	if !strings.Contains(out, `--comment "ns/web:http -> 10.244.1.5:8080"`) || !strings.Contains(out, "1 service ports") {
		t.Errorf("ns/web is not rendered alone with its endpoint:\n%s", out)
	}
	for _, unwanted := range []string{"ns/claimed", "ns/headless-labelled", "10.244.9.8", "10.244.9.9"} {
		if strings.Contains(out, unwanted) {
			t.Errorf("render output has %s, which the daemon would not see:\n%s", unwanted, out)
		}
	}
}
