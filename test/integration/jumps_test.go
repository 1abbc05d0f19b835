package integration

import (
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/proxier"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

// TestJumpsFromBuiltinChains: with the real binaries, a full sync's restore inserts each
// jump from a built-in chain that the node lacks, once, in front of what the chain held
// and in the order upstream's one-by-one "iptables -I CHAIN 1" leaves them; it keeps
// kubelet's KUBE-FIREWALL rule and another component's rules. The jumps read back from
// iptables-save exactly as kproxy writes them, which is how the next full sync (here
// after an external delete, then after a restart) knows which are there: none doubles.
func TestJumpsFromBuiltinChains(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 1)
		ipt := iptables.BinaryName(v1.IPv4Protocol, backend, "")
		run := func(args ...string) { c.node.Run(t, append([]string{ipt, "-w", "5"}, args...)...) }
		// Kubelet's chain with its rule and jumps, and another component's rule first
		// in INPUT.
		run("-t", "filter", "-N", rules.ChainFirewall)
		run("-t", "filter", "-A", rules.ChainFirewall, "!", "-s", "127.0.0.0/8", "-d", "127.0.0.0/8", "-m", "comment", "--comment", "kubelet: block incoming localnet connections",
			"-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP")
		run("-t", "filter", "-A", "INPUT", "-j", rules.ChainFirewall)
		run("-t", "filter", "-A", "INPUT", "-s", "192.0.2.1/32", "-j", "ACCEPT")
		kubelet := []string{
			`-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "kubelet: block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP`,
			"-A INPUT -s 192.0.2.1/32 -j ACCEPT",
		}
		// Without localhost node ports kproxy does not write KUBE-FIREWALL itself.
		noLocalhost := func(cfg *proxier.Config) { cfg.Rules.LocalhostNodePorts = false }

		check := func(t *testing.T, kp *kproxy, when string) {
			t.Helper()
			save := kp.save(t, "filter") + kp.save(t, "nat")
			lines := map[string]int{}
			for line := range strings.Lines(save) {
				lines[strings.TrimSuffix(line, "\n")]++
			}
			for _, j := range rules.BuiltinJumps() {
				want := "-A " + j.From + " " + ruleset.Rule(j.RuleArgs()).String()
				if lines[want] != 1 {
					t.Errorf("%s: %d copies of %q in %s, want 1", when, lines[want], want, j.Table)
				}
			}
			for _, want := range kubelet {
				if lines[want] != 1 {
					t.Errorf("%s: kubelet's or another component's rule %q: %d copies, want 1", when, want, lines[want])
				}
			}
			if missing := rules.ReadJumps([]byte(save)).Missing; len(missing) != 0 {
				t.Errorf("%s: iptables-save prints %d jumps otherwise than kproxy writes them (first: %v)", when, len(missing), missing[0])
			}
			// INPUT: our jumps first, in upstream's order, then kubelet's (already there, so
			// not moved) and the other component's rule.
			var input []string
			for line := range strings.Lines(save) {
				if strings.HasPrefix(line, "-A INPUT ") {
					input = append(input, strings.Fields(line)[len(strings.Fields(line))-1])
				}
			}
			want := []string{rules.ChainProxyFirewall, rules.ChainNodePorts, rules.ChainExternalServices, rules.ChainFirewall, "ACCEPT"}
			if !slices.Equal(input, want) {
				t.Errorf("%s: INPUT jumps to %v, want %v", when, input, want)
			}
		}

		kp := newKproxy(t, c, backend, noLocalhost)
		ports := []port{httpPort}
		kp.load(service("web", "172.30.0.10", ports...), endpointSlice("web", ports, c.pods...))
		kp.sync(t)
		check(t, kp, "first sync")

		// Another program deletes two jumps: the next full sync puts back just those.
		forwarding := rules.BuiltinJumps()[slices.IndexFunc(rules.BuiltinJumps(), func(j rules.Jump) bool { return j.To == rules.ChainForward })]
		entry := rules.ServicesEntryJump()
		run(append([]string{"-t", forwarding.Table, "-D", forwarding.From}, forwarding.RuleArgs()...)...)
		run(append([]string{"-t", entry.Table, "-D", entry.From}, entry.RuleArgs()...)...)
		kp.ForceFullSync()
		kp.sync(t)
		check(t, kp, "full sync after two jumps were deleted")

		// A restarted kproxy finds every jump and adds none.
		again := newKproxy(t, c, backend, noLocalhost)
		again.load(service("web", "172.30.0.10", ports...), endpointSlice("web", ports, c.pods...))
		again.sync(t)
		check(t, again, "first sync after a restart")
	})
}
