package ruleset

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Packet is the first packet of a new connection, as the tracer sees it.
type Packet struct {
	Src, Dst netip.Addr
	Proto    string // "tcp", "udp" or "sctp"
	DPort    int
	// FromLocal marks a packet sent by the node itself (nat OUTPUT and filter OUTPUT)
	// rather than one arriving from a pod or another host (PREROUTING and FORWARD/INPUT).
	FromLocal bool
	// InIface is the interface an arriving packet comes in on, for rules that match one
	// (-i: local traffic detection by bridge or interface name prefix). "" means not
	// known, and such a rule is an error unless another of its matches fails.
	InIface string
}

// What a Step did, in Step.Action.
const (
	// ActionJump: the rule matched and jumped to the chain in Target.
	ActionJump = "jump"
	// ActionGoto: the rule matched and went to the chain in Target (-g): the chain
	// returns to the caller of the rule's chain.
	ActionGoto = "goto"
	// ActionReturn: the rule matched and returned to the calling chain (RETURN).
	ActionReturn = "return"
	// ActionContinue: the rule matched but changed nothing the trace follows (no target,
	// LOG, NFLOG); the walk goes on with the next rule.
	ActionContinue = "continue"
	// ActionMark: the rule set the packet mark; Target is the new mark.
	ActionMark = "mark"
	// ActionDNAT: the rule rewrote the destination to Target ("ip:port").
	ActionDNAT = "dnat"
	// ActionMasquerade: the rule rewrote the source (MASQUERADE, or SNAT to Target).
	ActionMasquerade = "masquerade"
	// ActionAccept, ActionDrop, ActionReject: the rule's verdict (Target holds REJECT's
	// --reject-with, when given).
	ActionAccept = "accept"
	ActionDrop   = "drop"
	ActionReject = "reject"
	// ActionPolicy: the packet reached the end of a built-in chain, whose policy
	// (Target: ACCEPT or DROP) decides; Rule is empty.
	ActionPolicy = "policy"
)

// Verdicts, in Path.Verdict and Result.Verdict.
const (
	VerdictAccept = "ACCEPT"
	VerdictDrop   = "DROP"
	VerdictReject = "REJECT"
)

// Step is one rule that matched the packet, or the end of a built-in chain.
type Step struct {
	// Table and Chain hold the rule: "nat" and "KUBE-SERVICES".
	Table string `json:"table"`
	Chain string `json:"chain"`
	// Rule is the rule's text after "-A CHAIN", as the ruleset holds it; empty for a
	// chain's policy.
	Rule string `json:"rule,omitempty"`
	// Comment is the rule's --comment; kube-proxy's name the Service and port.
	Comment string `json:"comment,omitempty"`
	// Action is what the rule did: one of the Action* constants ("jump", "goto",
	// "return", "continue", "mark", "dnat", "masquerade", "accept", "drop", "reject",
	// "policy").
	Action string `json:"action"`
	// Target is what the action went to: the chain jumped to, the new destination or
	// mark, the policy.
	Target string `json:"target,omitempty"`
	// Probability is set when the rule matched at random (-m statistic): the chance
	// that a packet reaching the rule takes it. 0 means the rule matched for certain.
	Probability float64 `json:"probability,omitempty"`
}

// Miss is a rule that would have marked the packet for masquerading but did not match
// it, and why: the masquerade decision is as often "why not" as "why".
type Miss struct {
	Table   string `json:"table"`
	Chain   string `json:"chain"`
	Rule    string `json:"rule"`
	Comment string `json:"comment,omitempty"`
	// Reason is the first match that failed, in words: "source 10.244.1.5 is in
	// 10.244.0.0/16".
	Reason string `json:"reason"`
}

// Path is one way through the rules. Random (statistic) matches fork the walk, so a
// Service with n endpoints gives n paths; everything else is decided by the packet.
type Path struct {
	// Probability is the chance of this path for a new connection: the product of the
	// random choices along it.
	Probability float64 `json:"probability"`
	// Steps are the rules that matched, in the order the kernel runs them: nat
	// PREROUTING or OUTPUT, filter FORWARD, INPUT or OUTPUT, nat POSTROUTING or INPUT.
	Steps []Step `json:"steps"`
	// Endpoint is the DNAT destination "ip:port" (IPv6 "[ip]:port"); empty when the
	// destination was not rewritten.
	Endpoint string `json:"endpoint,omitempty"`
	// Masquerade reports whether the source is rewritten to the node's address: the
	// packet was marked for masquerading, or a SNAT or MASQUERADE rule matched it.
	Masquerade bool `json:"masquerade"`
	// MasqueradeBy is the rule that decided it: the jump into the chain that set the
	// masquerade mark (KUBE-MARK-MASQ), or the SNAT/MASQUERADE rule.
	MasqueradeBy *Step `json:"masqueradeBy,omitempty"`
	// NotMasqueradedBy are the rules that jump to a masquerade-marking chain but did not
	// match, and why.
	NotMasqueradedBy []Miss `json:"notMasqueradedBy,omitempty"`
	// Verdict is what the filter table did: ACCEPT (by a rule or a policy), DROP or
	// REJECT.
	Verdict string `json:"verdict"`
	// VerdictBy is the rule or policy that gave the verdict.
	VerdictBy *Step `json:"verdictBy,omitempty"`
}

// Result is what the rules did to a packet.
type Result struct {
	Packet Packet
	// Paths are every way the packet may go, in rule order (the order of the endpoints
	// in the Service's chain).
	Paths []Path
	// Notes are the assumptions the trace made on the way, in words (a client's first
	// connection, so session affinity has no earlier endpoint to return to).
	Notes []string

	// Endpoints are the DNAT destinations the packet may be sent to ("ip:port"), in path
	// order: every branch of a probabilistic choice is followed, so all candidates are
	// listed.
	Endpoints []string
	// Masquerade reports whether the packet is masqueraded on any path.
	Masquerade bool
	// Verdict is the filter verdict of the first path: "ACCEPT" (explicit or by
	// default), "REJECT" or "DROP".
	Verdict string
}

func (r Result) String() string {
	return fmt.Sprintf("endpoints=%s masq=%t verdict=%s", strings.Join(r.Endpoints, ","), r.Masquerade, r.Verdict)
}

// Tracer walks a packet through a ruleset. It models only the matches our rules use and
// fails loudly (an error) on anything else, so a new kind of rule cannot be silently
// mis-traced.
type Tracer struct {
	Tables Tables
	// LocalAddrs are the node's addresses (addrtype LOCAL); loopback addresses always are.
	LocalAddrs []netip.Addr
	// MasqueradeMark is the mark bit value KUBE-MARK-MASQ sets, e.g. 0x4000.
	MasqueradeMark uint32
}

// maxDepth bounds nested jumps; the kernel refuses loops, so a deeper walk means a
// ruleset the kernel would not hold.
const maxDepth = 64

// maxPaths bounds the forks of one trace (a Service has at most a few thousand
// endpoints).
const maxPaths = 100000

// Trace follows p through nat and filter in the kernel's order: nat PREROUTING (OUTPUT
// for the node's own packets), then, by where the possibly rewritten destination is,
// filter FORWARD and nat POSTROUTING, or filter INPUT and nat INPUT; the node's own
// packets take filter OUTPUT and nat POSTROUTING, and filter INPUT as well when they
// stay on the node.
func (t *Tracer) Trace(p Packet) (Result, error) {
	w := &walker{t: t, marking: t.markingChains()}
	first := "PREROUTING"
	if p.FromLocal {
		first = "OUTPUT"
	}
	ends, err := w.hook(&state{pkt: p, weight: 1}, "nat", first)
	if err != nil {
		return Result{}, err
	}
	var done []*state
	for _, st := range ends {
		more, err := w.hooks(st, w.afterNAT(st))
		if err != nil {
			return Result{}, err
		}
		done = append(done, more...)
	}
	res := Result{Packet: p, Notes: w.notes}
	for _, st := range done {
		path := st.path()
		res.Paths = append(res.Paths, path)
		if path.Endpoint != "" {
			res.Endpoints = append(res.Endpoints, path.Endpoint)
		}
		res.Masquerade = res.Masquerade || path.Masquerade
	}
	res.Verdict = res.Paths[0].Verdict
	return res, nil
}

// hookRef names a built-in chain.
type hookRef struct{ table, chain string }

// afterNAT lists the hooks a packet passes after the first nat hook, from where its
// destination now is.
func (w *walker) afterNAT(st *state) []hookRef {
	local := w.t.isLocal(st.pkt.Dst)
	switch {
	case st.pkt.FromLocal && local:
		// Sent to the node itself: out through lo and in again. nat is not consulted on
		// the way in (the connection's NAT is settled), filter INPUT is.
		return []hookRef{{"filter", "OUTPUT"}, {"nat", "POSTROUTING"}, {"filter", "INPUT"}}
	case st.pkt.FromLocal:
		return []hookRef{{"filter", "OUTPUT"}, {"nat", "POSTROUTING"}}
	case local:
		return []hookRef{{"filter", "INPUT"}, {"nat", "INPUT"}}
	default:
		return []hookRef{{"filter", "FORWARD"}, {"nat", "POSTROUTING"}}
	}
}

func (t *Tracer) isLocal(a netip.Addr) bool {
	return a.IsLoopback() || slices.Contains(t.LocalAddrs, a)
}

// markingChains are the nat chains with a rule that sets the masquerade mark whatever
// the mark was (KUBE-MARK-MASQ, not KUBE-POSTROUTING's XOR that clears it): a rule
// jumping to one of them decides masquerading.
func (t *Tracer) markingChains() map[string]bool {
	chains := map[string]bool{}
	nat, ok := t.Tables["nat"]
	if !ok || t.MasqueradeMark == 0 {
		return chains
	}
	for name, rules := range nat.Chains {
		for _, r := range rules {
			if r.Target() != "MARK" {
				continue
			}
			from0, err0 := applyMark(0, r)
			fromAll, errAll := applyMark(^uint32(0), r)
			if err0 == nil && errAll == nil && from0&fromAll&t.MasqueradeMark != 0 {
				chains[name] = true
			}
		}
	}
	return chains
}

// state is one path's packet and history while it is walked.
type state struct {
	pkt Packet
	// hook is the built-in chain being walked.
	hook   hookRef
	mark   uint32
	weight float64
	steps  []Step
	// dnat is the DNAT destination, "" until rewritten.
	dnat      string
	masqBy    *Step
	missed    []Miss
	verdict   string
	verdictBy *Step
}

// fork returns a copy of st that goes on independently, with probability p of st's.
func (st *state) fork(p float64) *state {
	c := *st
	c.steps = slices.Clone(st.steps)
	c.missed = slices.Clone(st.missed)
	c.weight = st.weight * p
	return &c
}

// stopped reports whether a DROP or REJECT ended the path.
func (st *state) stopped() bool {
	return st.verdict == VerdictDrop || st.verdict == VerdictReject
}

func (st *state) path() Path {
	p := Path{
		Probability:      st.weight,
		Steps:            st.steps,
		Endpoint:         st.dnat,
		Masquerade:       st.masqBy != nil,
		MasqueradeBy:     st.masqBy,
		NotMasqueradedBy: st.missed,
		Verdict:          st.verdict,
		VerdictBy:        st.verdictBy,
	}
	if p.Verdict == "" {
		p.Verdict = VerdictAccept
	}
	if p.Masquerade {
		p.NotMasqueradedBy = nil
	}
	return p
}

// walker holds what one Trace call shares between its paths.
type walker struct {
	t       *Tracer
	marking map[string]bool
	notes   []string
	paths   int
}

func (w *walker) note(s string) {
	if !slices.Contains(w.notes, s) {
		w.notes = append(w.notes, s)
	}
}

// hooks walks st through each hook in turn, stopping a path at a DROP or REJECT.
func (w *walker) hooks(st *state, hooks []hookRef) ([]*state, error) {
	if len(hooks) == 0 || st.stopped() {
		return []*state{st}, nil
	}
	ends, err := w.hook(st, hooks[0].table, hooks[0].chain)
	if err != nil {
		return nil, err
	}
	var out []*state
	for _, e := range ends {
		more, err := w.hooks(e, hooks[1:])
		if err != nil {
			return nil, err
		}
		out = append(out, more...)
	}
	return out, nil
}

// frame is a chain being walked and the next rule to look at.
type frame struct {
	chain string
	next  int
	// entry is the step that jumped here; nil for the built-in chain.
	entry *Step
}

// hook walks st through one built-in chain and returns the paths at its end: st itself,
// and the paths forked at random matches, in rule order.
func (w *walker) hook(st *state, table, chain string) ([]*state, error) {
	tb, ok := w.t.Tables[table]
	if !ok {
		return nil, fmt.Errorf("no %s table", table)
	}
	if _, ok := tb.Chains[chain]; !ok {
		return nil, fmt.Errorf("%s: no chain %s", table, chain)
	}
	st.hook = hookRef{table, chain}
	return w.walk(st, tb, table, chain, []frame{{chain: chain}})
}

// walk runs st from the top of stack to the end of the built-in chain hook.
func (w *walker) walk(st *state, tb *Table, table, hook string, stack []frame) ([]*state, error) {
	var out []*state
	for {
		if len(stack) == 0 {
			w.policy(st, tb, table, hook)
			return append(out, st), nil
		}
		top := &stack[len(stack)-1]
		rules := tb.Chains[top.chain]
		if top.next >= len(rules) {
			stack = stack[:len(stack)-1]
			continue
		}
		r := rules[top.next]
		top.next++
		m, err := w.match(st, r)
		if err != nil {
			return nil, fmt.Errorf("%s %s [%s]: %w", table, top.chain, r, err)
		}
		if !m.matched {
			if m.affinity {
				w.note(fmt.Sprintf("session affinity (%s %s): the trace follows a client's first connection; "+
					"one that connected within %s s goes back to the endpoint it reached then", table, top.chain, r.Value("--seconds")))
			}
			if w.marking[r.Target()] && table == "nat" {
				st.missed = append(st.missed, Miss{Table: table, Chain: top.chain, Rule: r.String(), Comment: r.Comment(), Reason: m.why})
			}
			continue
		}
		if m.probability == 1 {
			stop, err := w.target(st, tb, table, &stack, r, 0)
			if err != nil {
				return nil, err
			}
			if stop {
				return append(out, st), nil
			}
			continue
		}
		// A random match forks: the branch that takes the rule is walked to the end of
		// the hook first, so paths come out in rule order; this one goes on as if the
		// rule had not matched.
		w.paths++
		if w.paths > maxPaths {
			return nil, fmt.Errorf("%s %s: more than %d paths", table, top.chain, maxPaths)
		}
		taken := st.fork(m.probability)
		st.weight *= 1 - m.probability
		tstack := slices.Clone(stack)
		stop, err := w.target(taken, tb, table, &tstack, r, m.probability)
		if err != nil {
			return nil, err
		}
		if stop {
			out = append(out, taken)
			continue
		}
		ends, err := w.walk(taken, tb, table, hook, tstack)
		if err != nil {
			return nil, err
		}
		out = append(out, ends...)
	}
}

// policy records the end of built-in chain hook; only a DROP policy stops the packet.
func (w *walker) policy(st *state, tb *Table, table, hook string) {
	policy := tb.Policy(hook)
	step := Step{Table: table, Chain: hook, Action: ActionPolicy, Target: policy}
	st.steps = append(st.steps, step)
	if table == "filter" || policy != VerdictAccept {
		st.verdict, st.verdictBy = policy, &step
	}
}

// target applies r's target to st and reports whether the packet's walk through this
// hook is over. probability is that of the random match that took r (0: none).
func (w *walker) target(st *state, tb *Table, table string, stack *[]frame, r Rule, probability float64) (bool, error) {
	top := (*stack)[len(*stack)-1]
	step := Step{Table: table, Chain: top.chain, Rule: r.String(), Comment: r.Comment(), Probability: probability}
	fail := func(err error) (bool, error) {
		return false, fmt.Errorf("%s %s [%s]: %w", table, top.chain, r, err)
	}
	name, opts, isGoto := targetOf(r)
	// record adds the step and returns a copy of it for the path's "by" fields, which
	// must not alias a steps array that forks share.
	record := func(action, target string) *Step {
		step.Action, step.Target = action, target
		st.steps = append(st.steps, step)
		by := step
		return &by
	}
	if _, isChain := tb.Chains[name]; isChain && name != "" {
		if len(*stack) >= maxDepth {
			return fail(fmt.Errorf("more than %d nested jumps", maxDepth))
		}
		entry := step
		if isGoto {
			record(ActionGoto, name)
			entry.Action, entry.Target = ActionGoto, name
			(*stack)[len(*stack)-1] = frame{chain: name, entry: &entry}
			return false, nil
		}
		record(ActionJump, name)
		entry.Action, entry.Target = ActionJump, name
		*stack = append(*stack, frame{chain: name, entry: &entry})
		return false, nil
	}
	switch name {
	case "":
		record(ActionContinue, "")
	case "LOG", "NFLOG":
		record(ActionContinue, name)
	case "RETURN":
		record(ActionReturn, "")
		*stack = (*stack)[:len(*stack)-1]
	case "ACCEPT":
		by := record(ActionAccept, "")
		if table == "filter" {
			st.verdict, st.verdictBy = VerdictAccept, by
		}
		return true, nil
	case "DROP", "REJECT":
		action, verdict := ActionDrop, VerdictDrop
		if name == "REJECT" {
			action, verdict = ActionReject, VerdictReject
		}
		st.verdict, st.verdictBy = verdict, record(action, valueOf(opts, "--reject-with"))
		return true, nil
	case "DNAT":
		if table != "nat" {
			return fail(fmt.Errorf("DNAT outside the nat table"))
		}
		dst, err := dnatTo(st.pkt, opts)
		if err != nil {
			return fail(err)
		}
		st.pkt.Dst, st.pkt.DPort = dst.Addr(), int(dst.Port())
		st.dnat = dst.String()
		record(ActionDNAT, st.dnat)
		return true, nil
	case "MASQUERADE", "SNAT":
		if table != "nat" {
			return fail(fmt.Errorf("%s outside the nat table", name))
		}
		to := name
		if name == "SNAT" {
			to = valueOf(opts, "--to-source")
		}
		by := record(ActionMasquerade, to)
		if st.masqBy == nil {
			st.masqBy = by
		}
		return true, nil
	case "MARK":
		mark, err := applyMark(st.mark, r)
		if err != nil {
			return fail(err)
		}
		by := record(ActionMark, fmt.Sprintf("%#x", mark))
		newlySet := mark&^st.mark&w.t.MasqueradeMark != 0
		st.mark = mark
		if newlySet && st.masqBy == nil {
			// The rule that sent the packet into KUBE-MARK-MASQ says why; a MARK rule
			// in a built-in chain speaks for itself.
			st.masqBy = top.entry
			if st.masqBy == nil {
				st.masqBy = by
			}
		}
	default:
		return fail(fmt.Errorf("target %s not modelled", name))
	}
	return false, nil
}

// targetOf returns the rule's target (-j or -g) and the arguments after it.
func targetOf(r Rule) (name string, opts []string, isGoto bool) {
	i := targetIndex(r)
	if i+1 >= len(r) {
		return "", nil, false
	}
	return r[i+1], r[i+2:], r[i] == "-g" || r[i] == "--goto"
}

// Matches returns the rule's arguments before its target (-j or -g): its conditions.
func (r Rule) Matches() Rule { return r[:targetIndex(r)] }

// targetIndex is the index of the rule's -j or -g, or len(r) when it has none.
func targetIndex(r Rule) int {
	for i, a := range r {
		switch a {
		case "-j", "--jump", "-g", "--goto":
			return i
		}
	}
	return len(r)
}

// dnatTo reads DNAT's --to-destination: "ip", "ip:port", "[ipv6]:port" or a bare IPv6
// address. Ranges choose among addresses or ports, which the tracer does not model.
func dnatTo(p Packet, opts []string) (netip.AddrPort, error) {
	to := valueOf(opts, "--to-destination")
	if to == "" {
		return netip.AddrPort{}, fmt.Errorf("DNAT without --to-destination")
	}
	if strings.Contains(to, "-") {
		return netip.AddrPort{}, fmt.Errorf("DNAT to a range (%s) not modelled", to)
	}
	if ap, err := netip.ParseAddrPort(to); err == nil {
		return ap, nil
	}
	a, err := netip.ParseAddr(strings.Trim(to, "[]"))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("bad DNAT target %q: %w", to, err)
	}
	return netip.AddrPortFrom(a, uint16(p.DPort)), nil
}

// applyMark returns mark after r's MARK target, as the kernel computes it: --set-xmark
// v/m clears m and XORs v (iptables-save prints every form as --set-xmark).
func applyMark(mark uint32, r Rule) (uint32, error) {
	_, opts, _ := targetOf(r)
	for i := 0; i+1 < len(opts); i++ {
		v, m, err := parseMark(opts[i+1])
		if err != nil {
			return 0, fmt.Errorf("MARK %s: %w", opts[i], err)
		}
		switch opts[i] {
		case "--set-xmark":
			return mark&^m ^ v, nil
		case "--set-mark":
			return mark&^m | v, nil
		case "--or-mark":
			return mark | v, nil
		case "--and-mark":
			return mark & v, nil
		case "--xor-mark":
			return mark ^ v, nil
		}
	}
	return 0, fmt.Errorf("MARK rule %q not modelled", r)
}

// MarkSetBy returns the mark a packet without one carries after the MARK rules of
// table's chain, e.g. 0x4000 for kube-proxy's KUBE-MARK-MASQ, or 0 when the chain does
// not exist. Every rule of the chain must be an unconditional MARK rule (a comment is
// no condition).
func (t Tables) MarkSetBy(table, chain string) (uint32, error) {
	tb, ok := t[table]
	if !ok {
		return 0, nil
	}
	var mark uint32
	for _, r := range tb.Chains[chain] {
		conds := r.Matches()
		if r.Target() != "MARK" || !(len(conds) == 0 || slices.Equal(conds, Rule{"-m", "comment", "--comment", r.Comment()})) {
			return 0, fmt.Errorf("%s %s: %s: not an unconditional MARK rule", table, chain, r)
		}
		var err error
		if mark, err = applyMark(mark, r); err != nil {
			return 0, fmt.Errorf("%s %s: %w", table, chain, err)
		}
	}
	return mark, nil
}
