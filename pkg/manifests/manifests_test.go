package manifests

import (
	"os"
	"path/filepath"
	"testing"
)

func TestLoadMultiDocumentYAMLJSONAndLists(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("a.yaml", `
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.10, ports: [{name: http, port: 80, protocol: TCP}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: default, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints: [{addresses: [10.244.1.2], conditions: {ready: true}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ignored}
`)
	write("b.json", `{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Node","metadata":{"name":"node-1"}}]}`)
	write("notes.txt", "not a manifest")

	objs, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(objs.Services) != 1 || len(objs.EndpointSlices) != 1 || len(objs.Nodes) != 1 || objs.Skipped != 1 {
		t.Errorf("got %d services, %d slices, %d nodes, %d skipped", len(objs.Services), len(objs.EndpointSlices), len(objs.Nodes), objs.Skipped)
	}
	if objs.Services[0].Spec.ClusterIP != "10.96.0.10" || objs.EndpointSlices[0].Endpoints[0].Addresses[0] != "10.244.1.2" {
		t.Errorf("decoded wrong values: %+v", objs.Services[0].Spec)
	}
}

func TestLoadReportsBrokenFiles(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(path, []byte("apiVersion: v1\nkind: Service\nspec: [unclosed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(path); err == nil {
		t.Error("broken YAML loaded without error")
	}
	if _, err := Load(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Error("missing file loaded without error")
	}
}
