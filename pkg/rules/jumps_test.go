package rules_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

// jumpLine is a jump as iptables-save prints it.
func jumpLine(j rules.Jump) string {
	return "-A " + j.From + " " + ruleset.Rule(j.RuleArgs()).String()
}

// chainRules returns the rules of chain in table, as "-A" lines.
func chainRules(tables ruleset.Tables, table, chain string) []string {
	var out []string
	for _, r := range tables[table].Chains[chain] {
		out = append(out, "-A "+chain+" "+r.String())
	}
	return out
}

// TestFullSyncInsertsMissingJumps: a full render inserts exactly the jumps from built-in
// chains that the kernel lacks, where upstream's one-by-one "iptables -I CHAIN 1" puts
// them, in the commit that writes their targets; it declares a missing target only when
// the commit does not write it anyway, and never flushes one that exists (kubelet's
// KUBE-FIREWALL). A partial render never touches them.
func TestFullSyncInsertsMissingJumps(t *testing.T) {
	b := newSnapshot()
	b.svc("ns1", "svc1", "p80", v1.ProtocolTCP, "172.30.0.41", 80, 3001, "10.180.0.1:80", "10.180.0.2:80")
	all := rules.BuiltinJumps()
	kubeletFirewall := `-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -j DROP`

	// What each node holds before the sync, as iptables-save output.
	type node struct {
		name string
		save string
		// wantMissing are the indexes in BuiltinJumps of the jumps the node lacks.
		wantMissing []int
	}
	// A node some proxy synced before: the jumps, their (here empty) targets.
	everyJump := ""
	for _, table := range []string{"filter", "nat"} {
		everyJump += "*" + table + "\n"
		declared := map[string]bool{}
		for _, j := range all {
			if j.Table == table && !declared[j.To] {
				everyJump += ":" + j.To + " - [0:0]\n"
				declared[j.To] = true
			}
		}
		for _, j := range all {
			if j.Table == table {
				everyJump += jumpLine(j) + "\n"
			}
		}
		everyJump += "COMMIT\n"
	}
	var indexes []int
	for i := range all {
		indexes = append(indexes, i)
	}
	firewallJumps := []int{}
	for i, j := range all {
		if j.To == rules.ChainFirewall {
			firewallJumps = append(firewallJumps, i)
		}
	}
	nodes := []node{
		{name: "fresh", save: "", wantMissing: indexes},
		{name: "every jump there", save: everyJump},
		{
			name:        "kubelet's firewall only",
			save:        "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FIREWALL - [0:0]\n-A INPUT -j KUBE-FIREWALL\n-A OUTPUT -j KUBE-FIREWALL\n" + kubeletFirewall + "\nCOMMIT\n",
			wantMissing: slices.DeleteFunc(slices.Clone(indexes), func(i int) bool { return slices.Contains(firewallJumps, i) }),
		},
		{
			// A jump that differs from ours (here without the conntrack match) is not
			// ours: upstream's "iptables -C" does not find it either.
			name:        "an older jump",
			save:        strings.Replace(everyJump, "-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\"", "-A INPUT -m comment --comment \"kubernetes externally-visible service portals\"", 1),
			wantMissing: []int{0},
		},
	}
	for _, n := range nodes {
		for _, maxChains := range []int{0, 1} {
			for _, localhost := range []bool{true, false} {
				t.Run(fmt.Sprintf("%s/maxChains=%d/localhostNodePorts=%t", n.name, maxChains, localhost), func(t *testing.T) {
					opts := defaultOptions()
					opts.MaxChainsPerBatch = maxChains
					opts.LocalhostNodePorts = localhost
					st := rules.ReadJumps([]byte(n.save))
					var missing []int
					for _, j := range st.Missing {
						missing = append(missing, slices.IndexFunc(all, func(b rules.Jump) bool { return jumpLine(b) == jumpLine(j) && b.Table == j.Table }))
					}
					if !slices.Equal(missing, n.wantMissing) {
						t.Fatalf("ReadJumps: missing %v, want %v", missing, n.wantMissing)
					}

					// The node's tables: the save, applied to fresh tables.
					tables := ruleset.NewTables()
					if err := tables.Apply([]byte(n.save)); err != nil {
						t.Fatalf("the node's tables: %v", err)
					}
					before := tables.Clone()
					rs := rules.Render(rules.Request{Snapshot: b.snap, Node: testNode, Jumps: st}, opts)
					if maxChains > 0 && len(rs.Batches) < 2 {
						t.Fatalf("%d batches, want a split sync", len(rs.Batches))
					}
					// Applied batch by batch: each commit must stand on its own.
					for i, batch := range rs.Batches {
						if err := tables.Apply(batch.Bytes()); err != nil {
							t.Fatalf("batch %d rejected: %v\n%s", i, err, batch)
						}
					}
					for _, table := range []string{"filter", "nat"} {
						for _, chain := range []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"} {
							// Upstream inserts each missing jump at position 1, in
							// BuiltinJumps order, in front of what the chain held.
							var want []string
							for _, j := range all {
								if j.Table == table && j.From == chain && !rulesHave(before, table, chain, jumpLine(j)) {
									want = append([]string{jumpLine(j)}, want...)
								}
							}
							want = append(want, chainRules(before, table, chain)...)
							if got := chainRules(tables, table, chain); !slices.Equal(got, want) {
								t.Errorf("%s %s after the sync:\n  %s\nwant\n  %s", table, chain, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
							}
						}
					}
					if strings.Contains(n.save, kubeletFirewall) && !localhost {
						if got := chainRules(tables, "filter", rules.ChainFirewall); !slices.Equal(got, []string{kubeletFirewall}) {
							t.Errorf("kubelet's KUBE-FIREWALL after the sync: %q", got)
						}
					}
					if err := tables.CheckJumps(); err != nil {
						t.Error(err)
					}
					// Our own chains hold what the same render without the jumps
					// writes: nothing was declared twice (which flushes).
					plain := before.Clone()
					for _, batch := range rules.Render(rules.Request{Snapshot: b.snap, Node: testNode}, opts).Batches {
						if err := plain.Apply(batch.Bytes()); err != nil {
							t.Fatalf("render without jumps rejected: %v", err)
						}
					}
					for _, table := range []string{"filter", "nat"} {
						for chain := range plain[table].Chains {
							if ruleset.IsBuiltin(table, chain) {
								continue
							}
							if got, want := chainRules(tables, table, chain), chainRules(plain, table, chain); !slices.Equal(got, want) {
								t.Errorf("%s %s: %q, want %q", table, chain, got, want)
							}
						}
					}
					// Read back, every jump is there: the next full sync inserts none.
					if again := rules.ReadJumps([]byte(tables.Dump())); len(again.Missing) != 0 {
						t.Errorf("after the sync, ReadJumps still misses %d jumps", len(again.Missing))
					}

					// A partial render ignores the jumps, whatever it is given.
					changed := map[types.NamespacedName]bool{{Namespace: "ns1", Name: "svc1"}: true}
					partial := rules.Render(rules.Request{Snapshot: b.snap, Node: testNode, Previous: rs.State, Partial: true, Changed: changed, Jumps: rules.ReadJumps(nil)}, opts)
					for _, batch := range partial.Batches {
						for line := range strings.Lines(string(batch.Bytes())) {
							for _, chain := range []string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"} {
								if strings.HasPrefix(line, "-I "+chain+" ") {
									t.Errorf("a partial render inserts into %s: %s", chain, line)
								}
							}
						}
					}
				})
			}
		}
	}
}

func rulesHave(tables ruleset.Tables, table, chain, line string) bool {
	return slices.Contains(chainRules(tables, table, chain), line)
}

// TestRenderWithJumpsIsDeterministic: a JumpState shared by renders (the proxier retries
// a render after a rejected Service) gives the same payload each time.
func TestRenderWithJumpsIsDeterministic(t *testing.T) {
	b := newSnapshot()
	b.svc("ns1", "svc1", "p80", v1.ProtocolTCP, "172.30.0.41", 80, 0, "10.180.0.1:80")
	opts := defaultOptions()
	opts.LocalhostNodePorts = false
	st := rules.ReadJumps(nil)
	first := rules.Render(rules.Request{Snapshot: b.snap, Node: testNode, Jumps: st}, opts).Payload()
	second := rules.Render(rules.Request{Snapshot: b.snap, Node: testNode, Jumps: st}, opts).Payload()
	if string(first) != string(second) {
		t.Errorf("two renders of the same request differ:\n%s\n---\n%s", first, second)
	}
	if !strings.Contains(string(first), ":"+rules.ChainFirewall+" ") {
		t.Errorf("the missing KUBE-FIREWALL is not created:\n%s", first)
	}
}
