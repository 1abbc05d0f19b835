package rules

import (
	"reflect"
	"sort"
	"strings"

	"github.com/kproxy-dev/kproxy/pkg/model"
)

// sharedChain names a chain whose rules come from many services: the dispatch chains.
type sharedChain int

const (
	natServices sharedChain = iota
	natNodePorts
	filterServices
	filterExternalServices
	filterNodePorts
	filterProxyFirewall
	numShared
)

// sharedChains gives each shared chain's table and name.
var sharedChains = [numShared]struct{ table, name string }{
	natServices:            {"nat", ChainServices},
	natNodePorts:           {"nat", ChainNodePorts},
	filterServices:         {"filter", ChainServices},
	filterExternalServices: {"filter", ChainExternalServices},
	filterNodePorts:        {"filter", ChainNodePorts},
	filterProxyFirewall:    {"filter", ChainProxyFirewall},
}

// portRecord is what one service port contributes, kept between renders: its rules in
// the shared chains (to diff them), the chains it owns (to find stale ones) and counts.
// A record is never modified once built, so unchanged services share it across renders.
type portRecord struct {
	shared      [numShared]lines
	active      []string
	ownNATRules int
	// affinity: the port's KUBE-SEP chains record client affinity (--set); a KUBE-SEP
	// chain's rules depend on nothing else the chain's name does not (keptEndpointChains).
	affinity bool
	// noLocalInternal/External: a Local policy without local endpoints (metric).
	noLocalInternal, noLocalExternal bool
}

// State is what a render leaves for the next one. It is opaque to callers, immutable,
// and valid as Request.Previous only once all batches of its Ruleset were applied.
type State struct {
	opts         Options
	node         model.Node
	largeCluster bool
	// order lists the service ports sorted (model.ServicePortName.Less), recs their
	// records at the same index.
	order []model.ServicePortName
	recs  []*portRecord
	// tail holds the node-ports rules that end nat KUBE-SERVICES.
	tail lines
}

func newState(opts Options, node model.Node, largeCluster bool, order []model.ServicePortName) *State {
	return &State{
		opts: opts, node: node, largeCluster: largeCluster,
		order: order, recs: make([]*portRecord, len(order)),
	}
}

// walk visits the service ports of prev and cur in order, pairing those with the same
// name; old or cur is nil for a port only one of them has, and j is the port's index in
// cur (-1 when it has none). prev may be nil.
func walk(prev, cur *State, visit func(j int, old, cur *portRecord)) {
	var prevOrder []model.ServicePortName
	if prev != nil {
		prevOrder = prev.order
	}
	i, j := 0, 0
	for i < len(prevOrder) || j < len(cur.order) {
		switch {
		case i < len(prevOrder) && j < len(cur.order) && prevOrder[i] == cur.order[j]:
			visit(j, prev.recs[i], cur.recs[j])
			i++
			j++
		case j == len(cur.order) || (i < len(prevOrder) && prevOrder[i].Less(cur.order[j])):
			visit(-1, prev.recs[i], nil)
			i++
		default:
			visit(j, nil, cur.recs[j])
			j++
		}
	}
}

// sortedNames returns the snapshot's service ports in order. Most syncs change no
// service's existence, so the previous order is reused and only additions are sorted in,
// instead of sorting tens of thousands of names on every sync.
func sortedNames(snap *model.Snapshot, prev *State) []model.ServicePortName {
	if prev == nil {
		return snap.SortedServiceNames()
	}
	order := make([]model.ServicePortName, 0, len(snap.Services))
	known := 0
	for _, name := range prev.order {
		if _, ok := snap.Services[name]; ok {
			order = append(order, name)
			known++
		}
	}
	if known == len(snap.Services) {
		return order
	}
	inPrev := make(map[model.ServicePortName]bool, len(prev.order))
	for _, name := range prev.order {
		inPrev[name] = true
	}
	var added []model.ServicePortName
	for name := range snap.Services {
		if !inPrev[name] {
			added = append(added, name)
		}
	}
	sort.Slice(added, func(i, j int) bool { return added[i].Less(added[j]) })
	merged := make([]model.ServicePortName, 0, len(snap.Services))
	i, j := 0, 0
	for i < len(order) || j < len(added) {
		if j == len(added) || (i < len(order) && order[i].Less(added[j])) {
			merged = append(merged, order[i])
			i++
		} else {
			merged = append(merged, added[j])
			j++
		}
	}
	return merged
}

// compatible reports whether records of this state can be reused by a render with these
// inputs: the ones that shape every service's rules must not have changed.
func (s *State) compatible(opts Options, node model.Node, largeCluster bool) bool {
	// DeepEqual compares every field, so a new option can never be missed here.
	return reflect.DeepEqual(s.opts, opts) && s.node == node && s.largeCluster == largeCluster
}

// counts totals the rules the kernel will hold and the no-local-endpoints gauges.
func (s *State) counts(fixedFilter, fixedNAT int) (filter, nat int, noLocal map[string]int) {
	filter, nat = fixedFilter, fixedNAT+s.tail.n
	noLocal = map[string]int{}
	for _, rec := range s.recs {
		for k := range numShared {
			if sharedChains[k].table == "nat" {
				nat += rec.shared[k].n
			} else {
				filter += rec.shared[k].n
			}
		}
		nat += rec.ownNATRules
		if rec.noLocalInternal {
			noLocal["internal"]++
		}
		if rec.noLocalExternal {
			noLocal["external"]++
		}
	}
	return filter, nat, noLocal
}

// staleChains lists owned chains to delete: in an incremental render, those the changed
// services used before and no longer do; and any owned chain listed in existing (from the
// kernel) that nothing renders now. The list is ordered so that a chain comes after the
// chains that may jump to it (FW, EXT, SVC/SVL, SEP), then by name.
func (s *State) staleChains(prev *State, partial bool, existing []string) []string {
	stale := map[string]bool{}
	if partial {
		walk(prev, s, func(_ int, old, cur *portRecord) {
			if old == nil || cur == old {
				return
			}
			var still map[string]bool
			if cur != nil {
				// A set: a port with a thousand endpoints has a thousand chains.
				still = make(map[string]bool, len(cur.active))
				for _, c := range cur.active {
					still[c] = true
				}
			}
			for _, c := range old.active {
				if !still[c] {
					stale[c] = true
				}
			}
		})
	}
	if len(existing) > 0 {
		active := map[string]bool{}
		for _, rec := range s.recs {
			for _, c := range rec.active {
				active[c] = true
			}
		}
		for _, c := range existing {
			if IsOwnedServiceChain(c) && !active[c] {
				stale[c] = true
			}
		}
	}
	out := make([]string, 0, len(stale))
	for c := range stale {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool {
		if ri, rj := chainRank(out[i]), chainRank(out[j]); ri != rj {
			return ri < rj
		}
		return out[i] < out[j]
	})
	return out
}

// chainRank orders owned chains so that jumps only go from lower to higher ranks.
func chainRank(chain string) int {
	switch {
	case strings.HasPrefix(chain, prefixFirewall):
		return 0
	case strings.HasPrefix(chain, prefixExternal):
		return 1
	case strings.HasPrefix(chain, prefixService), strings.HasPrefix(chain, prefixServiceLocal):
		return 2
	}
	return 3
}

// Chains lists the per-service and per-endpoint nat chains the state's rules use, sorted.
func (s *State) Chains() []string {
	var out []string
	for _, rec := range s.recs {
		out = append(out, rec.active...)
	}
	sort.Strings(out)
	return out
}
