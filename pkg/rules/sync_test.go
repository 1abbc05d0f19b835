package rules_test

import (
	"bytes"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/rules/rulestest"
)

// apply renders req on top of tables (as a running node would) and returns the result.
func apply(t *testing.T, tables rulestest.Tables, req rules.Request) (rulestest.Tables, *rules.Ruleset) {
	t.Helper()
	rs := rules.Render(req, defaultOptions())
	next := tables.Clone()
	if err := next.Apply(rs.Payload); err != nil {
		t.Fatalf("payload rejected: %v\n%s", err, rs.Payload)
	}
	return next, rs
}

func chainNames(tables rulestest.Tables) []string {
	var names []string
	for c := range tables["nat"].Chains {
		names = append(names, c)
	}
	return names
}

func twoServices(withSecondEndpoint bool) *model.Snapshot {
	b := newSnapshot()
	b.svc("ns1", "a", "p80", tcp, "172.30.0.1", 80, 30001, "10.180.0.1:80")
	eps := []string{"10.180.0.2:80"}
	if withSecondEndpoint {
		eps = append(eps, "10.180.0.3:80")
	}
	b.svc("ns1", "b", "p80", tcp, "172.30.0.2", 80, 0, eps...)
	return b.snap
}

func TestStaleChainsAreDeletedAndOthersKept(t *testing.T) {
	tables, first := apply(t, rulestest.NewTables(), rules.Request{Snapshot: twoServices(true)})
	// Another component's chain in nat must survive our syncs.
	tables["nat"].Chains["CNI-HOSTPORT-DNAT"] = []rulestest.Rule{{"-j", "RETURN"}}

	// Endpoint 10.180.0.3 goes away, and service a with it.
	b := newSnapshot()
	b.svc("ns1", "b", "p80", tcp, "172.30.0.2", 80, 0, "10.180.0.2:80")
	after, rs := apply(t, tables, rules.Request{Snapshot: b.snap, ExistingNATChains: chainNames(tables)})

	fresh, _ := apply(t, rulestest.NewTables(), rules.Request{Snapshot: b.snap})
	fresh["nat"].Chains["CNI-HOSTPORT-DNAT"] = []rulestest.Rule{{"-j", "RETURN"}}
	if after.Dump() != fresh.Dump() {
		t.Errorf("after deleting, tables differ from a fresh render:\n%s", rulestest.Diff(fresh.Dump(), after.Dump()))
	}
	// svc a: SVC, EXT, one SEP; svc b: one SEP.
	if rs.DeletedNATChains != 4 {
		t.Errorf("deleted %d chains, want 4 (first sync had %v)", rs.DeletedNATChains, first.ActiveNATChains)
	}
}

// TestPartialRenderMatchesFull checks the partial-sync seam: writing only the changed
// service's chains on top of the previous state gives the same tables as a full sync.
func TestPartialRenderMatchesFull(t *testing.T) {
	tables, _ := apply(t, rulestest.NewTables(), rules.Request{Snapshot: twoServices(false)})
	next := twoServices(true)
	changed := map[types.NamespacedName]bool{{Namespace: "ns1", Name: "b"}: true}
	partial, prs := apply(t, tables, rules.Request{Snapshot: next, Partial: true, Changed: changed, ExistingNATChains: chainNames(tables)})
	full, frs := apply(t, rulestest.NewTables(), rules.Request{Snapshot: next})
	if partial.Dump() != full.Dump() {
		t.Errorf("partial sync differs from full sync:\n%s", rulestest.Diff(full.Dump(), partial.Dump()))
	}
	if prs.NATRules != frs.NATRules || prs.FilterRules != frs.FilterRules {
		t.Errorf("partial counts nat=%d filter=%d, full nat=%d filter=%d", prs.NATRules, prs.FilterRules, frs.NATRules, frs.FilterRules)
	}
	if bytes.Contains(prs.Payload, []byte(":"+rules.ExternalChain(model.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns1", Name: "a"}, Port: "p80", Protocol: tcp}))) {
		t.Errorf("partial payload rewrote an unchanged service's chain:\n%s", prs.Payload)
	}
}

// TestRenderIsDeterministic guards the promise that the same snapshot gives the same
// bytes however its maps were filled.
func TestRenderIsDeterministic(t *testing.T) {
	build := func(reverse bool) *model.Snapshot {
		b := newSnapshot()
		names := []string{"a", "b", "c", "d", "e", "f", "g", "h"}
		for i := range names {
			n := names[i]
			if reverse {
				n = names[len(names)-1-i]
			}
			b.svc("ns", n, "", tcp, "172.30.1."+string(rune('1'+n[0]-'a')), 80, 0, "10.1.0.1:80", "10.1.0.2:80")
		}
		return b.snap
	}
	a := rules.Render(rules.Request{Snapshot: build(false)}, defaultOptions())
	for i := 0; i < 5; i++ {
		b := rules.Render(rules.Request{Snapshot: build(i%2 == 0)}, defaultOptions())
		if !bytes.Equal(a.Payload, b.Payload) {
			t.Fatalf("render %d differs:\n%s", i, rulestest.Diff(string(a.Payload), string(b.Payload)))
		}
	}
}
