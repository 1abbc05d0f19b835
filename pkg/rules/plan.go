package rules

import (
	"bytes"
	"slices"
)

// planner assembles a render's batches from the rendered pieces.
type planner struct {
	r       *renderer
	st      *State
	prev    *State
	partial bool
	// rendered are the records rendered by this call, in order; their own chains are in
	// r.own between the matching marks.
	rendered []renderedPort
	stale    []string
	// maxChains limits the chains one batch declares (0: no limit, one batch); with it,
	// maxRules limits the rules the services' own chains write in one batch (0: none).
	maxChains, maxRules int
	// jumps are the built-in chains' jumps a full sync inserts.
	jumps JumpState
}

// renderedPort locates a rendered service port's own chains in the render's buffer.
type renderedPort struct {
	rec        *portRecord
	start, end bufferMark
}

// declaredChains is the number of own chains the port declares.
func (rp renderedPort) declaredChains() int { return rp.end.nChains - rp.start.nChains }

// writtenRules is the number of rules the port writes into its own chains.
func (rp renderedPort) writtenRules() int { return rp.end.nRules - rp.start.nRules }

// within reports whether n is within limit, 0 meaning no limit.
func within(n, limit int) bool { return limit <= 0 || n <= limit }

// batches returns the iptables-restore inputs and the number of nat rules they write.
// A sync is one batch unless it would declare more than maxChains chains or write more
// than maxRules rules into the services' own chains; then splitBatches cuts it into
// steps that each leave every service port whole.
func (p *planner) batches() ([]Batch, int) {
	filter, natShared, written := p.sharedRules()
	written += p.ownRules()
	if p.fitsOneBatch() {
		return p.singleBatch(filter, natShared), written
	}
	return p.splitBatches(filter, natShared), written
}

// fitsOneBatch reports whether the sync may be one batch: no limit is set, or the chains
// it declares (own and stale) and the rules its own chains write are within the limits.
func (p *planner) fitsOneBatch() bool {
	if p.maxChains <= 0 {
		return true
	}
	declared, rules := len(p.stale), 0
	for _, rp := range p.rendered {
		declared += rp.declaredChains()
		rules += rp.writtenRules()
	}
	return declared <= p.maxChains && within(rules, p.maxRules)
}

// singleBatch writes the whole sync as one input with one atomic commit per table, so no
// intermediate state is ever visible. Within the nat commit every chain is declared
// before any rule refers to it, and the stale chains are flushed by their declaration
// and deleted (-X) last, after the rules that jumped to them were rewritten or deleted.
// The services' own chains go in name order, each with its rules, which
// iptables-legacy-restore builds fastest (sortedSegments); their rules are pieces of
// the render's buffer. It returns no input when there is nothing to write (an
// incremental sync without changes).
func (p *planner) singleBatch(filter, natShared []byte) []Batch {
	natHead := p.natHead()
	var head bytes.Buffer
	if len(filter) > 0 {
		head.WriteString("*filter\n")
		head.Write(filter)
		head.WriteString("COMMIT\n")
	}
	if len(natHead.chains)+len(natShared) == 0 && len(p.rendered) == 0 && len(p.stale) == 0 {
		if head.Len() == 0 {
			return nil
		}
		return []Batch{{head.Bytes()}}
	}
	var own []chainSegment
	if len(p.rendered) > 0 {
		own = p.r.own.sortedSegments(p.rendered[0].start, p.rendered[len(p.rendered)-1].end)
	}
	head.Grow(len("*nat\n") + len(natHead.chains) + len(natHead.rules) + 48*(len(own)+len(p.stale)))
	head.WriteString("*nat\n")
	head.Write(natHead.chains)
	for _, s := range own {
		head.Write(appendChain(head.AvailableBuffer(), s.name))
	}
	for _, c := range p.stale {
		head.Write(appendChain(head.AvailableBuffer(), c))
	}
	head.Write(natHead.rules)
	batch := make(Batch, 0, len(own)+3)
	batch = append(batch, head.Bytes(), natShared)
	for _, s := range own {
		batch = append(batch, p.r.own.rules[s.start:s.end])
	}
	var end []byte
	for _, c := range p.stale {
		end = append(end, "-X "+c+"\n"...)
	}
	return []Batch{append(batch, append(end, "COMMIT\n"...))}
}

// splitBatches writes a sync too large for one batch in three steps, each a commit that
// leaves every service port whole: the ports' own chains are written first, while the
// dispatch rules still jump to complete chains, old or new (ownChainBatches); one batch
// then switches the dispatch chains and the filter table over to the new chains
// (switchBatch); the chains nothing jumps to any more are deleted last
// (staleChainBatches).
func (p *planner) splitBatches(filter, natShared []byte) []Batch {
	natHead := p.natHead()
	out := p.ownChainBatches(natHead)
	if sw := p.switchBatch(filter, natShared, natHead, len(out) > 0); len(sw) > 0 {
		out = append(out, Batch{sw})
	}
	return append(out, p.staleChainBatches()...)
}

// ownChainBatches writes the rendered ports' own chains, one nat batch per group of
// serviceGroups, the chains' rules as pieces of the render's buffer. The batches never
// declare KUBE-SERVICES or KUBE-NODEPORTS: declaring a chain flushes it, which would
// take every service's dispatch away until switchBatch. On a full sync the first batch
// also creates the other fixed chains (KUBE-POSTROUTING, KUBE-MARK-MASQ) with their
// rules, because the own chains jump to KUBE-MARK-MASQ and a node may have none yet;
// natHead's rules go only into those two chains.
func (p *planner) ownChainBatches(natHead lineBuffer) []Batch {
	var out []Batch
	for i, group := range p.serviceGroups() {
		withFixedChains := i == 0 && !p.partial
		first, last := group[0].start, group[len(group)-1].end
		if first.chains == last.chains && first.rules == last.rules && !withFixedChains {
			// Only a last group of ports without own chains (no endpoints) gets here.
			continue
		}
		head := make([]byte, 0, len("*nat\n")+64+last.chains-first.chains+len(natHead.rules))
		head = append(head, "*nat\n"...)
		if withFixedChains {
			head = appendChain(appendChain(head, ChainPostrouting), ChainMarkMasq)
		}
		head = append(head, p.r.own.chains[first.chains:last.chains]...)
		if withFixedChains {
			head = append(head, natHead.rules...)
		}
		out = append(out, Batch{head, p.r.own.rules[first.rules:last.rules], []byte("COMMIT\n")})
	}
	return out
}

// serviceGroups cuts the rendered ports, in order, into groups that declare at most
// maxChains chains and write at most maxRules rules each, never cutting through a port:
// a port that alone exceeds a limit is a group of its own. Every group but the last
// declares at least one chain.
func (p *planner) serviceGroups() [][]renderedPort {
	var groups [][]renderedPort
	start, declared, rules := 0, 0, 0
	for i, rp := range p.rendered {
		n, m := rp.declaredChains(), rp.writtenRules()
		if declared > 0 && (declared+n > p.maxChains || !within(rules+m, p.maxRules)) {
			groups = append(groups, p.rendered[start:i])
			start, declared, rules = i, 0, 0
		}
		declared += n
		rules += m
	}
	if start < len(p.rendered) {
		groups = append(groups, p.rendered[start:])
	}
	return groups
}

// switchBatch writes the filter table and the nat dispatch rules in one batch, which
// switches every changed service port to its new chains at once. ownBatchesWritten
// reports whether ownChainBatches wrote any batch: on a full sync its first one created
// KUBE-POSTROUTING and KUBE-MARK-MASQ, otherwise all fixed chains are created here.
//
// A full sync always declares (and so flushes) the nat dispatch chains KUBE-SERVICES
// and KUBE-NODEPORTS here, even when it writes no rule into them (no services, node
// ports on no local address): they may still jump to the stale chains that
// staleChainBatches deletes next, and a chain that is jumped to cannot be deleted.
func (p *planner) switchBatch(filter, natShared []byte, natHead lineBuffer, ownBatchesWritten bool) []byte {
	var b bytes.Buffer
	if len(filter) > 0 {
		b.WriteString("*filter\n")
		b.Write(filter)
		b.WriteString("COMMIT\n")
	}
	if len(natShared) > 0 || !p.partial {
		b.WriteString("*nat\n")
		switch {
		case !p.partial && !ownBatchesWritten:
			b.Write(natHead.chains)
			b.Write(natHead.rules)
		case !p.partial:
			b.Write(appendChain(appendChain(nil, ChainServices), ChainNodePorts))
		}
		b.Write(natShared)
		b.WriteString("COMMIT\n")
	}
	return b.Bytes()
}

// staleChainBatches deletes the stale chains, at most maxChains per batch (maxChains > 0:
// without a limit the sync is one batch). Each batch flushes its chains, by declaring
// them, before deleting them. p.stale lists referrers before the chains they jump to
// (staleChains), so a chain is deleted only once every stale chain that could jump to it
// is gone; the switch batch already removed the dispatch rules that jumped to them.
func (p *planner) staleChainBatches() []Batch {
	var out []Batch
	for chunk := range slices.Chunk(p.stale, p.maxChains) {
		b := []byte("*nat\n")
		for _, c := range chunk {
			b = appendChain(b, c)
		}
		for _, c := range chunk {
			b = append(b, "-X "+c+"\n"...)
		}
		out = append(out, Batch{append(b, "COMMIT\n"...)})
	}
	return out
}

// natHead is the fixed nat part of a full sync: declarations of the fixed chains and the
// rules that do not depend on services. Incremental syncs leave it alone.
func (p *planner) natHead() lineBuffer {
	var b lineBuffer
	if !p.partial {
		p.r.writeFixedNAT(&b)
	}
	return b
}

func (p *planner) ownRules() int {
	n := 0
	for _, rp := range p.rendered {
		n += rp.end.nRules - rp.start.nRules
	}
	return n
}

// sharedTable is 0 for a shared chain of the filter table and 1 for one of nat.
func sharedTable(k sharedChain) int {
	if sharedChains[k].table == "filter" {
		return 0
	}
	return 1
}

// sharedRules renders the filter table's content (without COMMIT) and the nat shared
// chains' rules: in full for a full sync, as targeted deletes and inserts against the
// previous state for an incremental one. It also returns how many nat rules it writes.
func (p *planner) sharedRules() (filter, nat []byte, written int) {
	if !p.partial {
		var fb lineBuffer
		p.r.writeFixedFilter(&fb)
		filter = append(fb.chains, fb.rules...)
		// Sized up front: at 10k services nat KUBE-SERVICES alone is megabytes, and
		// growing it by appends would allocate it about twice over.
		size := [2]int{len(filter) + 256*len(p.jumps.Missing), len(p.st.tail.text) + 256*len(p.jumps.Missing)}
		for _, rec := range p.st.recs {
			for k := range numShared {
				size[sharedTable(k)] += len(rec.shared[k].text)
			}
		}
		filter = slices.Grow(filter, size[0]-len(filter))
		nat = make([]byte, 0, size[1])
		for k := range numShared {
			for _, rec := range p.st.recs {
				if sharedTable(k) == 0 {
					filter = append(filter, rec.shared[k].text...)
				} else {
					nat = append(nat, rec.shared[k].text...)
				}
			}
			if k == natServices {
				nat = append(nat, p.st.tail.text...)
			}
		}
		written = bytes.Count(nat, []byte("\n"))
		// The jumps go into the commits that write their targets, so a node without
		// them gets them atomically with the rules they lead to. Every nat target is a
		// fixed chain that a full sync creates (natHead or the first own batch), so
		// only filter targets may need declaring here.
		filter = p.jumps.appendInserts(filter, "filter", func(c string) bool { return bytes.Contains(fb.chains, []byte(":"+c+" ")) })
		nat = p.jumps.appendInserts(nat, "nat", func(string) bool { return true })
		return filter, nat, written
	}
	for k := range numShared {
		ops, n := p.diff(k)
		if sharedChains[k].table == "filter" {
			filter = append(filter, ops...)
		} else {
			nat = append(nat, ops...)
			written += n
		}
	}
	return filter, nat, written
}

// diff edits shared chain k from the previous state into the new one: the chain holds
// the services' groups of rules in service order (and the node-ports tail for nat
// KUBE-SERVICES), so a merge walk over both orders finds the groups that changed. Old
// groups are deleted by rule specification (deleteOps), so an edit can fail but never
// remove another service's rule; new groups are inserted at the position the service's
// order gives them. It returns the ops and the number of rules inserted.
func (p *planner) diff(k sharedChain) ([]byte, int) {
	chain := sharedChains[k].name
	var ops []byte
	inserted := 0
	pos := 1
	replace := func(old, cur *lines) {
		if old != nil && cur != nil && (old == cur || bytes.Equal(old.text, cur.text)) {
			pos += cur.n
			return
		}
		if old != nil {
			ops = deleteOps(ops, old.text)
		}
		if cur != nil {
			ops = insertOps(ops, chain, pos, cur.text)
			pos += cur.n
			inserted += cur.n
		}
	}
	walk(p.prev, p.st, func(_ int, old, cur *portRecord) {
		switch {
		case old == cur:
			pos += cur.shared[k].n
		case old == nil:
			replace(nil, &cur.shared[k])
		case cur == nil:
			replace(&old.shared[k], nil)
		default:
			replace(&old.shared[k], &cur.shared[k])
		}
	})
	// The node-ports tail must stay last in nat KUBE-SERVICES. Inserts go by position, and
	// positions are only right while no other program changed the chain: after any insert
	// the tail is deleted (by specification) and appended again, so it ends last whatever
	// the chain held, and a missing tail fails the sync.
	if k == natServices && (inserted > 0 || !bytes.Equal(p.prev.tail.text, p.st.tail.text)) {
		ops = deleteOps(ops, p.prev.tail.text)
		ops = append(ops, p.st.tail.text...)
		inserted += p.st.tail.n
	}
	return ops, inserted
}
