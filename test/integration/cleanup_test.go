package integration

import (
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/proxier"
	"github.com/kproxy-dev/kproxy/pkg/rules"
)

// ownedChainPrefixes name every chain (or chain prefix) kproxy owns and --cleanup must
// remove. KUBE-FIREWALL is not among them: kubelet owns it too.
var ownedChainPrefixes = []string{
	"KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING",
	"KUBE-MARK-MASQ", "KUBE-FORWARD", "KUBE-PROXY-FIREWALL", "KUBE-SVC-", "KUBE-EXT-", "KUBE-SEP-",
}

// withoutComments drops iptables-save's comment lines, which carry a timestamp.
func withoutComments(save string) string {
	var b strings.Builder
	for line := range strings.Lines(save) {
		if !strings.HasPrefix(line, "#") {
			b.WriteString(line)
		}
	}
	return b.String()
}

// TestCleanup: after a sync, Cleanup with the real binaries removes every chain and jump
// of ours in every table and keeps another component's chain and its jump from a
// built-in chain. Cleaning up a clean node succeeds and changes nothing.
func TestCleanup(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 2)
		k := newKproxy(t, c, backend)
		ports := []port{httpPort.withNodePort(30080), dnsPort}
		k.load(
			service("web", "172.30.0.10", ports...), endpointSlice("web", ports, c.pods...),
			// Without endpoints: REJECT rules in the filter chains.
			service("empty", "172.30.0.30", httpPort.withNodePort(30081)),
		)
		k.sync(t)
		before := k.save(t, "")
		for _, prefix := range ownedChainPrefixes {
			if !strings.Contains(before, ":"+prefix) {
				t.Fatalf("no %s chain after the sync, so the cleanup check would prove nothing:\n%s", prefix, before)
			}
		}

		// Another component's chain and jumps, written with the same backend's binary.
		ipt := iptables.BinaryName(v1.IPv4Protocol, backend, "")
		c.node.Run(t, ipt, "-w", "5", "-t", "nat", "-N", "CNI-TEST")
		c.node.Run(t, ipt, "-w", "5", "-t", "nat", "-A", "CNI-TEST", "-s", "10.244.0.0/16", "-j", "RETURN")
		c.node.Run(t, ipt, "-w", "5", "-t", "nat", "-A", "PREROUTING", "-j", "CNI-TEST")
		c.node.Run(t, ipt, "-w", "5", "-t", "filter", "-A", "FORWARD", "-s", "10.244.0.0/16", "-j", "ACCEPT")
		foreign := []string{
			":CNI-TEST - [0:0]",
			"-A CNI-TEST -s 10.244.0.0/16 -j RETURN",
			"-A PREROUTING -j CNI-TEST",
			"-A FORWARD -s 10.244.0.0/16 -j ACCEPT",
		}

		cleanup := func() error {
			return c.node.Do(func() error { return proxier.Cleanup(k.ctx, k.ipt) })
		}
		if err := cleanup(); err != nil {
			t.Fatalf("Cleanup: %v", err)
		}
		after := k.save(t, "")
		for line := range strings.Lines(after) {
			// Kubelet's KUBE-FIREWALL chain and its jumps stay, and nothing else of ours.
			if strings.Contains(line, "KUBE-") && !strings.Contains(line, "KUBE-FIREWALL") {
				t.Errorf("left after Cleanup: %s", strings.TrimSpace(line))
			}
		}
		for _, want := range foreign {
			if !strings.Contains(after, want+"\n") {
				t.Errorf("Cleanup removed another component's %q", want)
			}
		}
		if t.Failed() {
			t.Logf("before Cleanup:\n%s\nafter:\n%s", before, after)
		}

		if err := cleanup(); err != nil {
			t.Errorf("Cleanup of a clean node: %v", err)
		}
		if again := k.save(t, ""); withoutComments(again) != withoutComments(after) {
			t.Errorf("a second Cleanup changed the rules:\n%s\nwas:\n%s", again, after)
		}
	})
}

// TestRestartTakesOver: a new proxier (a restarted kproxy) taking over from an earlier
// one's rules deletes the chains of services and endpoints that are gone, does not
// duplicate the jumps from built-in chains, and serves the current endpoints.
func TestRestartTakesOver(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 2)
		for _, p := range c.pods {
			p.serve(t, 8080, 5353)
		}
		pod1 := c.pods[0]
		http := []port{httpPort}
		old := newKproxy(t, c, backend)
		old.load(
			service("web", "172.30.0.10", httpPort), endpointSlice("web", http, c.pods...),
			service("gone", "172.30.0.11", httpPort), endpointSlice("gone", http, pod1),
		)
		old.sync(t)
		if n := countLines(old.save(t, "nat"), ":KUBE-SEP-"); n != 3 {
			t.Fatalf("%d endpoint chains after the first proxier's sync, want 3", n)
		}

		// While it was down, "gone" was deleted and pod2 left "web".
		k := newKproxy(t, c, backend)
		k.load(service("web", "172.30.0.10", httpPort), endpointSlice("web", http, pod1))
		k.sync(t)

		nat := k.save(t, "nat")
		if n := countLines(nat, ":KUBE-SEP-"); n != 1 {
			t.Errorf("%d endpoint chains after the takeover, want 1:\n%s", n, nat)
		}
		if n := countLines(nat, ":KUBE-SVC-"); n != 1 {
			t.Errorf("%d service chains after the takeover, want 1:\n%s", n, nat)
		}
		// Both proxiers ensured every jump; each must be there once.
		saved := map[string]string{"nat": nat, "filter": k.save(t, "filter")}
		for _, j := range rules.BuiltinJumps() {
			n := 0
			for line := range strings.Lines(saved[j.Table]) {
				if strings.HasPrefix(line, "-A "+j.From+" ") && strings.HasSuffix(line, " -j "+j.To+"\n") {
					n++
				}
			}
			if n != 1 {
				t.Errorf("%d jumps %s/%s -> %s after the takeover, want 1", n, j.Table, j.From, j.To)
			}
		}
		allTo(t, c.client, "tcp", "172.30.0.10:80", 20, pod1)
	})
}
