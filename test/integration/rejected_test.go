package integration

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/proxier"
)

// poisoning stands in for a renderer bug that only one object triggers: it breaks the
// lines of one Service (a port number iptables refuses) before the real iptables-restore
// sees them, so that the kernel rejects that Service's rules and nothing else.
type poisoning struct {
	iptables.Interface
	marker string
}

func (p poisoning) Restore(ctx context.Context, pieces ...[]byte) error {
	lines := strings.SplitAfter(string(bytes.Join(pieces, nil)), "\n")
	for i, l := range lines {
		if strings.Contains(l, p.marker) {
			lines[i] = strings.Replace(l, "--dport 80 ", "--dport 99999 ", 1)
		}
	}
	return p.Interface.Restore(ctx, []byte(strings.Join(lines, "")))
}

// TestKernelRejectedServiceLeavesOthersServing: one Service whose rules the real
// iptables-restore rejects is left out, and every other Service still passes traffic;
// without the isolation the whole restore would fail and nothing would be programmed.
func TestKernelRejectedServiceLeavesOthersServing(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 2)
		for _, p := range c.pods {
			p.serve(t, 8080, 5353)
		}
		pod1, pod2 := c.pods[0], c.pods[1]
		http := []port{httpPort}
		k := newKproxy(t, c, backend, func(cfg *proxier.Config) {
			cfg.IPTables = poisoning{Interface: cfg.IPTables, marker: svcNamespace + "/poison:http"}
		})
		k.load(
			service("good", "172.30.0.40", httpPort), endpointSlice("good", http, pod1),
			service("poison", "172.30.0.41", httpPort), endpointSlice("poison", http, pod2),
			service("other", "172.30.0.42", httpPort), endpointSlice("other", http, pod2),
		)
		k.sync(t) // fails the test unless the sync succeeded without the poisoned Service
		allTo(t, c.client, "tcp", "172.30.0.40:80", 5, pod1)
		allTo(t, c.client, "tcp", "172.30.0.42:80", 5, pod2)
		if nat := k.save(t, "nat"); strings.Contains(nat, "poison") {
			t.Errorf("the rejected Service has rules:\n%s", nat)
		}

		// Later partial syncs keep programming the others.
		k.OnServiceAdd(service("late", "172.30.0.43", httpPort))
		k.OnEndpointSliceAdd(endpointSlice("late", http, pod1))
		k.sync(t)
		allTo(t, c.client, "tcp", "172.30.0.43:80", 5, pod1)
	})
}
