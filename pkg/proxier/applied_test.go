package proxier

import (
	"context"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/iptables/fake"
)

// TestLastAppliedRendersWhatTheKernelHolds: after a full sync, partial syncs (an endpoint
// added, a service added and one deleted) and a kernel-rejected Service, the ruleset that
// LastApplied renders (what the debug endpoint serves and `kproxy diagnose` compares the
// kernel with) equals what the kernel holds in kproxy's chains.
func TestLastAppliedRendersWhatTheKernelHolds(t *testing.T) {
	p, ipt := syncedTwoServices(t)
	ctx := context.Background()
	if p.LastApplied() == nil || !p.LastApplied().Full {
		t.Fatalf("after the first sync: LastApplied %+v, want a full one", p.LastApplied())
	}
	p.OnEndpointSliceUpdate(testSlice("b", "10.1.0.2", "10.1.0.3"))
	p.OnServiceAdd(testService("c", "172.30.0.3", 80))
	p.OnEndpointSliceAdd(testSlice("c", "10.1.0.4"))
	p.OnServiceDelete(testService("a", "172.30.0.1", 80))
	if err := p.Sync(ctx); err != nil {
		t.Fatal(err)
	}
	applied := p.LastApplied()
	if applied.Full {
		t.Fatal("the second sync was full; the test needs a partial one")
	}
	expected := fake.New(v1.IPv4Protocol, iptables.BackendNFT)
	if err := expected.Restore(ctx, applied.Expected().Payload()); err != nil {
		t.Fatal(err)
	}
	if got, want := ownChains(ipt.Tables().Dump()), ownChains(expected.Tables().Dump()); got != want {
		t.Errorf("kernel:\n%s\nLastApplied renders:\n%s", got, want)
	}
	if !strings.Contains(ownChains(expected.Tables().Dump()), "10.1.0.3") {
		t.Error("the rendered ruleset lacks the endpoint the partial sync added")
	}
}

// ownChains keeps the rules of kproxy's chains from a Dump, leaving out the built-in
// chains, whose jumps to ours are ensured outside the payload, as are the (empty) chains
// those jumps need.
func ownChains(dump string) string {
	var out []string
	for _, line := range strings.Split(dump, "\n") {
		if strings.HasPrefix(line, "-A KUBE-") || strings.HasPrefix(line, "*") {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
