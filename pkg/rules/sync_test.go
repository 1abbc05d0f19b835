package rules_test

import (
	"bytes"
	"fmt"
	"math/rand"
	"net/netip"
	"testing"

	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/rules/rulestest"
	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

// apply renders req on top of tables (as a running node would) and returns the result.
// onBatch, if set, is called after each applied batch.
func apply(t *testing.T, tables ruleset.Tables, req rules.Request, opts rules.Options, onBatch func(ruleset.Tables)) (ruleset.Tables, *rules.Ruleset) {
	t.Helper()
	rs := rules.Render(req, opts)
	next := tables.Clone()
	for i, b := range rs.Batches {
		if err := next.Apply(b.Bytes()); err != nil {
			t.Fatalf("batch %d of %d rejected: %v\n%s", i+1, len(rs.Batches), err, b.Bytes())
		}
		if onBatch != nil {
			onBatch(next)
		}
	}
	return next, rs
}

func chainNames(tables ruleset.Tables) []string {
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
	tables, _ := apply(t, ruleset.NewTables(), rules.Request{Snapshot: twoServices(true)}, defaultOptions(), nil)
	// Another component's chain in nat must survive our syncs.
	tables["nat"].Chains["CNI-HOSTPORT-DNAT"] = []ruleset.Rule{{"-j", "RETURN"}}

	// Endpoint 10.180.0.3 goes away, and service a with it.
	b := newSnapshot()
	b.svc("ns1", "b", "p80", tcp, "172.30.0.2", 80, 0, "10.180.0.2:80")
	after, rs := apply(t, tables, rules.Request{Snapshot: b.snap, ExistingNATChains: chainNames(tables)}, defaultOptions(), nil)

	fresh, _ := apply(t, ruleset.NewTables(), rules.Request{Snapshot: b.snap}, defaultOptions(), nil)
	fresh["nat"].Chains["CNI-HOSTPORT-DNAT"] = []ruleset.Rule{{"-j", "RETURN"}}
	if after.Dump() != fresh.Dump() {
		t.Errorf("after deleting, tables differ from a fresh render:\n%s", rulestest.Diff(fresh.Dump(), after.Dump()))
	}
	// svc a: SVC, EXT, one SEP; svc b: one SEP.
	if rs.DeletedNATChains != 4 {
		t.Errorf("deleted %d chains, want 4", rs.DeletedNATChains)
	}
}

// TestPartialRenderMatchesFull checks an incremental sync: only the changed service's
// chains are written, the dispatch chains are edited in place, and the result is the
// tables of a full sync.
func TestPartialRenderMatchesFull(t *testing.T) {
	tables, first := apply(t, ruleset.NewTables(), rules.Request{Snapshot: twoServices(false)}, defaultOptions(), nil)
	next := twoServices(true)
	changed := map[types.NamespacedName]bool{{Namespace: "ns1", Name: "b"}: true}
	partial, prs := apply(t, tables, rules.Request{Snapshot: next, Previous: first.State, Partial: true, Changed: changed}, defaultOptions(), nil)
	full, frs := apply(t, ruleset.NewTables(), rules.Request{Snapshot: next}, defaultOptions(), nil)
	if partial.Dump() != full.Dump() {
		t.Errorf("partial sync differs from full sync:\n%s", rulestest.Diff(full.Dump(), partial.Dump()))
	}
	if !prs.Partial || prs.NATRules != frs.NATRules || prs.FilterRules != frs.FilterRules {
		t.Errorf("partial=%t counts nat=%d filter=%d, full nat=%d filter=%d", prs.Partial, prs.NATRules, prs.FilterRules, frs.NATRules, frs.FilterRules)
	}
	payload := prs.Payload()
	if bytes.Contains(payload, []byte("10.180.0.1")) || bytes.Contains(payload, []byte(":"+rules.ChainServices)) || bytes.Contains(payload, []byte("*filter")) {
		t.Errorf("incremental payload touched more than service b:\n%s", payload)
	}
	// Nothing changed: nothing to apply at all.
	_, none := apply(t, partial, rules.Request{Snapshot: next, Previous: prs.State, Partial: true}, defaultOptions(), nil)
	if len(none.Batches) != 0 {
		t.Errorf("a sync without changes produced %d batches:\n%s", len(none.Batches), none.Payload())
	}
}

// randomCluster mutates a snapshot in random small steps, the way a cluster changes.
type randomCluster struct {
	rnd   *rand.Rand
	ports map[model.ServicePortName]*model.ServicePort
	eps   map[model.ServicePortName][]model.Endpoint
}

func (c *randomCluster) snapshot() *model.Snapshot {
	s := &model.Snapshot{Services: map[model.ServicePortName]*model.ServicePort{}, Endpoints: map[model.ServicePortName][]model.Endpoint{}}
	for k, v := range c.ports {
		s.Services[k] = v
	}
	for k, v := range c.eps {
		s.Endpoints[k] = v
	}
	return s
}

// step changes a few services and returns which.
func (c *randomCluster) step(n int) map[types.NamespacedName]bool {
	changed := map[types.NamespacedName]bool{}
	for i := 0; i < n; i++ {
		id := c.rnd.Intn(40)
		name := model.ServicePortName{NamespacedName: types.NamespacedName{Namespace: "ns", Name: fmt.Sprintf("svc%02d", id)}, Port: "p", Protocol: tcp}
		changed[name.NamespacedName] = true
		switch c.rnd.Intn(4) {
		case 0: // delete
			delete(c.ports, name)
			delete(c.eps, name)
			continue
		case 1: // endpoints only, if the service exists
			if _, ok := c.ports[name]; ok {
				c.eps[name] = c.endpoints(id)
				continue
			}
		}
		sp := &model.ServicePort{Name: name, ClusterIP: netip.AddrFrom4([4]byte{172, 30, 0, byte(id + 1)}), Port: 80}
		if c.rnd.Intn(2) == 0 {
			sp.NodePort = int32(30000 + id)
		}
		if c.rnd.Intn(3) == 0 {
			sp.LoadBalancerVIPs = []netip.Addr{netip.AddrFrom4([4]byte{1, 2, 3, byte(id + 1)})}
			sp.LoadBalancerSourceRanges = []netip.Prefix{netip.MustParsePrefix("203.0.113.0/25")}
		}
		sp.ExternalPolicyLocal = c.rnd.Intn(3) == 0
		sp.InternalPolicyLocal = c.rnd.Intn(5) == 0
		if c.rnd.Intn(4) == 0 {
			sp.StickyMaxAgeSeconds = 60
		}
		c.ports[name] = sp
		c.eps[name] = c.endpoints(id)
	}
	return changed
}

func (c *randomCluster) endpoints(id int) []model.Endpoint {
	var eps []model.Endpoint
	for e := 0; e < c.rnd.Intn(4); e++ {
		ep := model.Endpoint{IP: netip.AddrFrom4([4]byte{10, 180, byte(id), byte(e + 1 + c.rnd.Intn(3))}), Port: 8080,
			Ready: c.rnd.Intn(5) != 0, Serving: true, IsLocal: c.rnd.Intn(2) == 0}
		ep.Terminating = !ep.Ready && c.rnd.Intn(2) == 0
		dup := false
		for _, o := range eps {
			dup = dup || o.IP == ep.IP
		}
		if !dup {
			eps = append(eps, ep)
		}
	}
	model.SortEndpoints(eps)
	return eps
}

// TestIncrementalSyncsEqualFullSyncs drives random change sequences through incremental
// syncs, with and without batching, and checks after every step that the tables are
// exactly those a full sync of the same snapshot gives on a fresh node.
func TestIncrementalSyncsEqualFullSyncs(t *testing.T) {
	for _, limit := range []struct{ chains, rules int }{{0, 0}, {3, 0}, {25, 0}, {25, 6}} {
		for seed := int64(1); seed <= 8; seed++ {
			t.Run(fmt.Sprintf("batch%d-%d/seed%d", limit.chains, limit.rules, seed), func(t *testing.T) {
				opts := defaultOptions()
				opts.MaxChainsPerBatch, opts.MaxRulesPerBatch = limit.chains, limit.rules
				c := &randomCluster{rnd: rand.New(rand.NewSource(seed)), ports: map[model.ServicePortName]*model.ServicePort{}, eps: map[model.ServicePortName][]model.Endpoint{}}
				c.step(20)
				tables, rs := apply(t, ruleset.NewTables(), rules.Request{Snapshot: c.snapshot(), Node: testNode}, opts, nil)
				for step := 0; step < 15; step++ {
					changed := c.step(1 + c.rnd.Intn(6))
					snap := c.snapshot()
					req := rules.Request{Snapshot: snap, Node: testNode, Previous: rs.State, Partial: true, Changed: changed}
					tables, rs = apply(t, tables, req, opts, nil)
					want, wrs := apply(t, ruleset.NewTables(), rules.Request{Snapshot: snap, Node: testNode}, opts, nil)
					if tables.Dump() != want.Dump() {
						t.Fatalf("step %d (changed %v): incremental tables differ from a full sync:\n%s", step, changed, rulestest.Diff(want.Dump(), tables.Dump()))
					}
					if rs.NATRules != wrs.NATRules || rs.FilterRules != wrs.FilterRules {
						t.Fatalf("step %d: counts nat=%d filter=%d, full nat=%d filter=%d", step, rs.NATRules, rs.FilterRules, wrs.NATRules, wrs.FilterRules)
					}
				}
				// A full re-sync over the running tables (e.g. the hourly one) changes nothing.
				resynced, _ := apply(t, tables, rules.Request{Snapshot: c.snapshot(), Node: testNode, ExistingNATChains: chainNames(tables)}, opts, nil)
				if resynced.Dump() != tables.Dump() {
					t.Fatalf("a full re-sync changed the tables:\n%s", rulestest.Diff(tables.Dump(), resynced.Dump()))
				}
			})
		}
	}
}

// TestBatchedSyncNeverShowsHalfAService applies a batched sync one batch at a time and
// traces a packet to every service after each batch: each must behave exactly as before
// the sync or exactly as after it, never in between.
func TestBatchedSyncNeverShowsHalfAService(t *testing.T) {
	for seed := int64(1); seed <= 20; seed++ {
		opts := defaultOptions()
		opts.MaxChainsPerBatch = 4
		if seed > 10 {
			// A rules budget cuts where the chains budget would not.
			opts.MaxChainsPerBatch, opts.MaxRulesPerBatch = 50, 5
		}
		c := &randomCluster{rnd: rand.New(rand.NewSource(seed)), ports: map[model.ServicePortName]*model.ServicePort{}, eps: map[model.ServicePortName][]model.Endpoint{}}
		c.step(30)
		oldSnap := c.snapshot()
		before, first := apply(t, ruleset.NewTables(), rules.Request{Snapshot: oldSnap, Node: testNode}, opts, nil)
		changed := c.step(15)
		newSnap := c.snapshot()
		after, _ := apply(t, ruleset.NewTables(), rules.Request{Snapshot: newSnap, Node: testNode}, opts, nil)

		// Every cluster IP and node port either snapshot knows, from a pod and from outside.
		type probe struct {
			dst  string
			port int
			src  string
		}
		var probes []probe
		for _, s := range []*model.Snapshot{oldSnap, newSnap} {
			for _, sp := range s.Services {
				probes = append(probes, probe{sp.ClusterIP.String(), int(sp.Port), podIP})
				if sp.NodePort != 0 {
					probes = append(probes, probe{node, int(sp.NodePort), externalClient})
				}
			}
		}
		trace := func(tables ruleset.Tables, p probe) string {
			tr := &ruleset.Tracer{Tables: tables, LocalAddrs: []netip.Addr{nodeIP}, MasqueradeMark: 0x4000}
			res, err := tr.Trace(ruleset.Packet{Src: netip.MustParseAddr(p.src), Dst: netip.MustParseAddr(p.dst), Proto: "tcp", DPort: p.port})
			if err != nil {
				t.Fatal(err)
			}
			return res.String()
		}
		batches := 0
		for _, partial := range []bool{false, true} {
			req := rules.Request{Snapshot: newSnap, Node: testNode, ExistingNATChains: chainNames(before)}
			if partial {
				req = rules.Request{Snapshot: newSnap, Node: testNode, Previous: first.State, Partial: true, Changed: changed}
			}
			_, rs := apply(t, before, req, opts, func(mid ruleset.Tables) {
				for _, p := range probes {
					got, was, will := trace(mid, p), trace(before, p), trace(after, p)
					if got != was && got != will {
						t.Fatalf("seed %d partial=%t: %s:%d from %s mid-sync: %s; before: %s; after: %s", seed, partial, p.dst, p.port, p.src, got, was, will)
					}
				}
			})
			batches += len(rs.Batches)
		}
		if batches < 4 {
			t.Errorf("seed %d: only %d batches; the test needs a split sync", seed, batches)
		}
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
		if !bytes.Equal(a.Payload(), b.Payload()) {
			t.Fatalf("render %d differs:\n%s", i, rulestest.Diff(string(a.Payload()), string(b.Payload())))
		}
	}
}

// TestLargeServicesChangingTogether: four services of 100 endpoints each lose one
// endpoint and gain another in one incremental sync, as under endpoint churn. The sync
// writes each service's KUBE-SVC chain and its one new KUBE-SEP chain, not the 99 it
// already has; with a rules budget the services' chains go in batches of at most that
// many rules; and the tables end as a full sync leaves them.
func TestLargeServicesChangingTogether(t *testing.T) {
	build := func(gen byte) *snapshotBuilder {
		b := newSnapshot()
		for s := range 4 {
			var eps []string
			for e := range 100 {
				eps = append(eps, netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(s), 0, byte(e + 1)}), 8080).String())
			}
			eps[0] = netip.AddrPortFrom(netip.AddrFrom4([4]byte{10, byte(s), 1, gen}), 8080).String()
			b.svc("ns", fmt.Sprintf("big%d", s), "http", tcp, fmt.Sprintf("172.30.0.%d", s+1), 80, 0, eps...)
		}
		return b
	}
	opts := defaultOptions()
	opts.MaxChainsPerBatch, opts.MaxRulesPerBatch = 500, 250
	tables, rs := apply(t, ruleset.NewTables(), rules.Request{Snapshot: build(1).snap, Node: testNode}, opts, nil)

	snap := build(2).snap
	changed := map[types.NamespacedName]bool{}
	for name := range snap.Services {
		changed[name.NamespacedName] = true
	}
	tables, rs = apply(t, tables, rules.Request{Snapshot: snap, Node: testNode, Previous: rs.State, Partial: true, Changed: changed}, opts, nil)

	var sepRules, ownBatches int
	for _, b := range rs.Batches {
		text := b.Bytes()
		sepRules += bytes.Count(text, []byte("\n-A KUBE-SEP-"))
		own := bytes.Count(text, []byte("\n-A KUBE-SVC-")) + bytes.Count(text, []byte("\n-A KUBE-SEP-"))
		if own > 250 {
			t.Errorf("a batch writes %d rules into the services' chains, over the budget of 250", own)
		}
		if own > 0 {
			ownBatches++
		}
	}
	if sepRules != 8 {
		t.Errorf("the sync writes %d rules into KUBE-SEP chains, want 8 (the 2 of one new endpoint a service)", sepRules)
	}
	// 101 rules a KUBE-SVC chain and 2 the new KUBE-SEP chain: two services a batch.
	if ownBatches != 2 {
		t.Errorf("the services' chains went in %d batches, want 2", ownBatches)
	}
	if rs.DeletedNATChains != 4 {
		t.Errorf("deleted %d chains, want the 4 KUBE-SEP chains of the endpoints gone", rs.DeletedNATChains)
	}
	want, wrs := apply(t, ruleset.NewTables(), rules.Request{Snapshot: snap, Node: testNode}, opts, nil)
	if tables.Dump() != want.Dump() {
		t.Fatalf("incremental tables differ from a full sync:\n%s", rulestest.Diff(want.Dump(), tables.Dump()))
	}
	if rs.NATRules != wrs.NATRules {
		t.Errorf("nat rules %d, full sync %d", rs.NATRules, wrs.NATRules)
	}
}
