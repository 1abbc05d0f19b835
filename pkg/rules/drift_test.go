package rules_test

import (
	"net/netip"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/rules/rulestest"
	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

// threeServices has services a, b and c in ns1, each with a node port, so every nat and
// filter dispatch chain holds a rule group per service.
func threeServices(withC bool) *model.Snapshot {
	b := newSnapshot()
	b.svc("ns1", "a", "p80", tcp, "172.30.0.1", 80, 30001, "10.180.0.1:80")
	b.svc("ns1", "b", "p80", tcp, "172.30.0.2", 80, 30002)
	if withC {
		b.svc("ns1", "c", "p80", tcp, "172.30.0.3", 80, 30003, "10.180.0.3:80")
	}
	return b.snap
}

var foreignRule = ruleset.Rule{"-m", "comment", "--comment", "another agent", "-j", "RETURN"}

// insertForeign puts a rule of another program first in every chain of ours that a
// partial sync edits, as an agent or a leftover kube-proxy would.
func insertForeign(tables ruleset.Tables) {
	for table, chains := range map[string][]string{
		"nat":    {rules.ChainServices, rules.ChainNodePorts},
		"filter": {rules.ChainServices, rules.ChainExternalServices},
	} {
		for _, c := range chains {
			tables[table].Chains[c] = append([]ruleset.Rule{foreignRule}, tables[table].Chains[c]...)
		}
	}
}

// withoutForeign returns tables with the foreign rules removed again.
func withoutForeign(tables ruleset.Tables) ruleset.Tables {
	out := tables.Clone()
	for _, tb := range out {
		for c, rs := range tb.Chains {
			var kept []ruleset.Rule
			for _, r := range rs {
				if r.String() != foreignRule.String() {
					kept = append(kept, r)
				}
			}
			tb.Chains[c] = kept
		}
	}
	return out
}

// TestForeignRulesNeverShiftDeletes: with another program's rule inserted at the head of
// the dispatch chains, an incremental sync that deletes one service must delete exactly
// that service's rules. Position-based deletes removed the neighbour's rule instead.
func TestForeignRulesNeverShiftDeletes(t *testing.T) {
	tables, first := apply(t, ruleset.NewTables(), rules.Request{Snapshot: threeServices(true)}, defaultOptions(), nil)
	insertForeign(tables)

	changed := map[types.NamespacedName]bool{{Namespace: "ns1", Name: "c"}: true}
	req := rules.Request{Snapshot: threeServices(false), Previous: first.State, Partial: true, Changed: changed}
	after, _ := apply(t, tables, req, defaultOptions(), nil)

	want, _ := apply(t, ruleset.NewTables(), rules.Request{Snapshot: threeServices(false)}, defaultOptions(), nil)
	if got := withoutForeign(after); got.Dump() != want.Dump() {
		t.Errorf("incremental delete next to a foreign rule removed the wrong rules:\n%s", rulestest.Diff(want.Dump(), got.Dump()))
	}
	if n := strings.Count(after.Dump(), "another agent"); n != 4 {
		t.Errorf("foreign rules left: %d, want 4 (a partial sync edits only its own rules)", n)
	}
}

// TestMissingRuleFailsTheSync: when one of our rules was deleted by someone else, the
// incremental edit that would delete it must fail (so the proxier falls back to a full
// sync) rather than delete the rule now at its position.
func TestMissingRuleFailsTheSync(t *testing.T) {
	tables, first := apply(t, ruleset.NewTables(), rules.Request{Snapshot: threeServices(true)}, defaultOptions(), nil)
	nat := tables["nat"]
	var kept []ruleset.Rule
	for _, r := range nat.Chains[rules.ChainServices] {
		if !strings.Contains(r.String(), "ns1/c:p80") {
			kept = append(kept, r)
		}
	}
	nat.Chains[rules.ChainServices] = kept
	before := tables.Dump()

	changed := map[types.NamespacedName]bool{{Namespace: "ns1", Name: "c"}: true}
	rs := rules.Render(rules.Request{Snapshot: threeServices(false), Previous: first.State, Partial: true, Changed: changed}, defaultOptions())
	next := tables.Clone()
	err := next.Apply(rs.Payload())
	if err == nil {
		t.Fatalf("the incremental sync succeeded although the rule it deletes was gone; tables now:\n%s", rulestest.Diff(before, next.Dump()))
	}
	if next.Dump() != before {
		t.Errorf("the failed nat commit changed the nat table:\n%s", rulestest.Diff(before, next.Dump()))
	}
}

// TestNodePortsTailStaysLast: after someone deleted one of our KUBE-SERVICES rules, an
// insert computed from kproxy's view lands one position late; the node-ports jump must
// still end the chain.
func TestNodePortsTailStaysLast(t *testing.T) {
	tables, first := apply(t, ruleset.NewTables(), rules.Request{Snapshot: threeServices(false)}, defaultOptions(), nil)
	nat := tables["nat"]
	nat.Chains[rules.ChainServices] = nat.Chains[rules.ChainServices][1:]

	changed := map[types.NamespacedName]bool{{Namespace: "ns1", Name: "c"}: true}
	after, _ := apply(t, tables, rules.Request{Snapshot: threeServices(true), Previous: first.State, Partial: true, Changed: changed}, defaultOptions(), nil)
	svc := after["nat"].Chains[rules.ChainServices]
	if last := svc[len(svc)-1]; last.Target() != rules.ChainNodePorts {
		t.Errorf("last rule of nat KUBE-SERVICES is %q, want the jump to %s", last, rules.ChainNodePorts)
	}
}

// TestBatchedFullSyncDeletesStaleChainsWithoutDispatchRules: a batched full sync (nft)
// with more stale chains than a batch holds, and no nat dispatch rules to write (no
// services; node ports restricted to addresses the node does not have), must still flush
// KUBE-SERVICES before deleting the chains it jumps to.
func TestBatchedFullSyncDeletesStaleChainsWithoutDispatchRules(t *testing.T) {
	b := newSnapshot()
	for i := range 40 {
		b.svc("ns1", "s"+string(rune('a'+i%26))+string(rune('a'+i/26)), "p80", tcp,
			netip.AddrFrom4([4]byte{172, 30, 1, byte(i + 1)}).String(), 80, 0, "10.180.0.1:80")
	}
	opts := defaultOptions()
	opts.MaxChainsPerBatch = 10
	tables, _ := apply(t, ruleset.NewTables(), rules.Request{Snapshot: b.snap}, opts, nil)

	opts.NodePortAddresses = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/24")}
	after, rs := apply(t, tables, rules.Request{Snapshot: newSnapshot().snap, ExistingNATChains: chainNames(tables)}, opts, nil)
	if rs.DeletedNATChains != 80 {
		t.Errorf("deleted %d chains, want 80 (a SVC and a SEP chain per service)", rs.DeletedNATChains)
	}
	for c := range after["nat"].Chains {
		if rules.IsOwnedServiceChain(c) {
			t.Errorf("stale chain %s survived", c)
		}
	}
}
