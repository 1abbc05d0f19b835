package rules

import (
	"bytes"
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
	// maxChains limits the chains one batch declares (0: no limit, one batch).
	maxChains int
}

// renderedPort locates a rendered service port's own chains in the render's buffer.
type renderedPort struct {
	rec        *portRecord
	start, end bufferMark
}

// batches returns the iptables-restore inputs and the number of nat rules they write.
//
// With one batch, everything is one atomic commit per table. When a batch would declare
// more than maxChains chains, the sync is split, in an order that keeps every service
// whole at every step: first the services' own chains, a group of services per batch
// (their dispatch rules still point at chains that are complete, old or new); then one
// batch for the shared dispatch chains and the filter table, which switches to the new
// chains; then the deletion of stale chains, which nothing refers to any more.
func (p *planner) batches() ([][]byte, int) {
	ownChains := 0
	for _, rp := range p.rendered {
		ownChains += rp.end.nChains - rp.start.nChains
	}
	single := p.maxChains <= 0 || ownChains+len(p.stale) <= p.maxChains

	filter, natShared, written := p.sharedRules()
	var out [][]byte
	if single {
		var b bytes.Buffer
		b.Grow(len(filter) + len(natShared) + len(p.r.own.chains) + len(p.r.own.rules) + 64*len(p.stale) + 1024)
		if len(filter) > 0 {
			b.WriteString("*filter\n")
			b.Write(filter)
			b.WriteString("COMMIT\n")
		}
		natHead := p.natHead()
		if len(natHead.chains)+len(natShared) > 0 || len(p.rendered) > 0 || len(p.stale) > 0 {
			b.WriteString("*nat\n")
			b.Write(natHead.chains)
			for _, rp := range p.rendered {
				b.Write(p.r.own.chains[rp.start.chains:rp.end.chains])
			}
			for _, c := range p.stale {
				b.Write(appendChain(nil, c))
			}
			b.Write(natHead.rules)
			b.Write(natShared)
			for _, rp := range p.rendered {
				b.Write(p.r.own.rules[rp.start.rules:rp.end.rules])
			}
			for _, c := range p.stale {
				b.WriteString("-X " + c + "\n")
			}
			b.WriteString("COMMIT\n")
		}
		if b.Len() > 0 {
			out = append(out, b.Bytes())
		}
		return out, written + p.ownRules()
	}

	// Own chains first, whole services per batch. The first one also creates the fixed
	// chains they jump to (KUBE-MARK-MASQ) on a node that has none yet.
	natHead := p.natHead()
	var b bytes.Buffer
	declared := 0
	flush := func() {
		if b.Len() == 0 {
			return
		}
		b.WriteString("COMMIT\n")
		out = append(out, append([]byte("*nat\n"), b.Bytes()...))
		b.Reset()
		declared = 0
	}
	var rules bytes.Buffer
	start := 0
	for i, rp := range p.rendered {
		n := rp.end.nChains - rp.start.nChains
		if declared > 0 && declared+n > p.maxChains {
			p.writeOwn(&b, &rules, p.rendered[start:i], len(out) == 0, natHead)
			flush()
			start = i
		}
		declared += n
	}
	if start < len(p.rendered) {
		p.writeOwn(&b, &rules, p.rendered[start:], len(out) == 0, natHead)
		flush()
	}

	// Then the switch: shared chains and the filter table.
	var sw bytes.Buffer
	if len(filter) > 0 {
		sw.WriteString("*filter\n")
		sw.Write(filter)
		sw.WriteString("COMMIT\n")
	}
	// A full sync always flushes the nat dispatch chains, even when it writes no rule into
	// them (no services, node ports on no local address): they may still jump to the
	// stale chains deleted below, and a chain that is jumped to cannot be deleted.
	if len(natShared) > 0 || !p.partial {
		sw.WriteString("*nat\n")
		switch {
		case !p.partial && len(out) == 0:
			// No own-chain batch carried the fixed chains: they all come here.
			sw.Write(natHead.chains)
			sw.Write(natHead.rules)
		case !p.partial:
			sw.Write(appendChain(appendChain(nil, ChainServices), ChainNodePorts))
		}
		sw.Write(natShared)
		sw.WriteString("COMMIT\n")
	}
	if sw.Len() > 0 {
		out = append(out, sw.Bytes())
	}

	// Last, stale chains, referrers before the chains they jump to.
	for i := 0; i < len(p.stale); i += max(p.maxChains, 1) {
		chunk := p.stale[i:min(i+max(p.maxChains, 1), len(p.stale))]
		var d bytes.Buffer
		d.WriteString("*nat\n")
		for _, c := range chunk {
			d.Write(appendChain(nil, c))
		}
		for _, c := range chunk {
			d.WriteString("-X " + c + "\n")
		}
		d.WriteString("COMMIT\n")
		out = append(out, d.Bytes())
	}
	return out, written + p.ownRules()
}

// writeOwn writes a group of services' own chains into b; the first batch of a full sync
// also carries the fixed chains other than the dispatch ones.
func (p *planner) writeOwn(b, rules *bytes.Buffer, group []renderedPort, first bool, head lineBuffer) {
	rules.Reset()
	if first && !p.partial {
		b.Write(appendChain(appendChain(nil, ChainPostrouting), ChainMarkMasq))
		rules.Write(head.rules)
	}
	for _, rp := range group {
		b.Write(p.r.own.chains[rp.start.chains:rp.end.chains])
		rules.Write(p.r.own.rules[rp.start.rules:rp.end.rules])
	}
	b.Write(rules.Bytes())
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

// sharedRules renders the filter table's content (without COMMIT) and the nat shared
// chains' rules: in full for a full sync, as targeted deletes and inserts against the
// previous state for an incremental one. It also returns how many nat rules it writes.
func (p *planner) sharedRules() (filter, nat []byte, written int) {
	if !p.partial {
		var fb lineBuffer
		p.r.writeFixedFilter(&fb)
		filter = append(fb.chains, fb.rules...)
		for k := range numShared {
			var text []byte
			for _, rec := range p.st.recs {
				text = append(text, rec.shared[k].text...)
			}
			if k == natServices {
				text = append(text, p.st.tail.text...)
			}
			if sharedChains[k].table == "filter" {
				filter = append(filter, text...)
			} else {
				nat = append(nat, text...)
			}
		}
		return filter, nat, bytes.Count(nat, []byte("\n"))
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
