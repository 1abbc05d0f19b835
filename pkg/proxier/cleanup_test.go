package proxier

import (
	"context"
	"strings"
	"testing"

	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

func TestCleanupRemovesOursAndKeepsOthers(t *testing.T) {
	p, ipt := newTestProxier(t)
	ctx := context.Background()
	p.OnServiceAdd(testService("a", "172.30.0.1", 80))
	p.OnServiceAdd(testService("empty", "172.30.0.3", 80))
	p.OnEndpointSliceAdd(testSlice("a", "10.1.0.1"))
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	// Rules of other components, and kubelet's, must survive.
	tables := ipt.Tables()
	if err := tables.Apply([]byte("*nat\n:CNI-DNAT - [0:0]\n-A PREROUTING -j CNI-DNAT\nCOMMIT\n" +
		"*mangle\n:KUBE-IPTABLES-HINT - [0:0]\n:KUBE-PROXY-CANARY - [0:0]\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	ipt.SetTables(tables)

	if err := Cleanup(ctx, ipt); err != nil {
		t.Fatalf("cleanup: %v", err)
	}
	got := ipt.Tables()
	want := ruleset.NewTables()
	if err := want.Apply([]byte("*nat\n:CNI-DNAT - [0:0]\n-A PREROUTING -j CNI-DNAT\nCOMMIT\n" +
		"*mangle\n:KUBE-IPTABLES-HINT - [0:0]\nCOMMIT\n" +
		"*filter\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\n-A OUTPUT -j KUBE-FIREWALL\nCOMMIT\n")); err != nil {
		t.Fatal(err)
	}
	// The KUBE-FIREWALL chain keeps its rule (it is kubelet's as well); compare the rest.
	delete(got["filter"].Chains, "KUBE-FIREWALL")
	delete(want["filter"].Chains, "KUBE-FIREWALL")
	if got.Dump() != want.Dump() {
		t.Errorf("after cleanup:\n%s\nwant:\n%s", got.Dump(), want.Dump())
	}
	if strings.Contains(got.Dump(), "KUBE-SVC-") {
		t.Error("service chains left")
	}
	// Cleaning up a clean node is fine.
	if err := Cleanup(ctx, ipt); err != nil {
		t.Errorf("second cleanup: %v", err)
	}
}
