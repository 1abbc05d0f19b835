package rules

import (
	"bytes"
	"strings"
)

// Jump is a rule in a built-in chain that sends packets into one of our chains. A full
// sync inserts the ones the kernel lacks (JumpState); the payload never flushes or
// rewrites a built-in chain, so other components' rules there survive.
type Jump struct {
	Table, From string
	// Args are the match arguments before "-j To", including the comment.
	Args []string
	To   string
}

// RuleArgs is the rule as given to iptables after "-t table -A/-C/-I From".
func (j Jump) RuleArgs() []string { return append(append([]string{}, j.Args...), "-j", j.To) }

// String is the rule as an iptables command line would take it, for logs and docs.
func (j Jump) String() string {
	var b strings.Builder
	b.WriteString("-t " + j.Table + " -A " + j.From)
	for _, a := range j.RuleArgs() {
		if strings.Contains(a, " ") {
			a = `"` + a + `"`
		}
		b.WriteString(" " + a)
	}
	return b.String()
}

// saveLine is the rule as iptables-save prints it, without the newline: both backends
// print these simple matches back as given (TestJumpsReadBackAsWritten checks it
// against the real binaries), so a plain comparison tells whether the kernel holds it,
// as upstream's "iptables -C" does.
func (j Jump) saveLine() string {
	line := appendRule(nil, "-A", j.From, j.RuleArgs())
	return string(line[:len(line)-1])
}

// JumpState says which of BuiltinJumps a full sync must insert: those the kernel lacks,
// read from its tables by ReadJumps. The zero value inserts none.
type JumpState struct {
	// Missing are the jumps the kernel lacks, in BuiltinJumps order.
	Missing []Jump
	// missingTargets are the chains, by table, that missing jumps go to and the kernel
	// lacks too.
	missingTargets map[string]map[string]bool
}

// ReadJumps reads iptables-save output of the filter and nat tables (either may hold
// other tables too) and tells which built-in jumps are missing, and which of their
// target chains. Empty input reads as a node without any: every jump is missing.
func ReadJumps(save []byte) JumpState {
	rules, chains := map[string]bool{}, map[string]bool{}
	table := ""
	for line := range bytes.Lines(save) {
		line = bytes.TrimRight(line, "\n")
		switch {
		case len(line) > 1 && line[0] == '*':
			table = string(line[1:])
		case len(line) > 1 && line[0] == ':':
			name, _, _ := bytes.Cut(line[1:], []byte{' '})
			chains[table+"/"+string(name)] = true
		case bytes.HasPrefix(line, []byte("-A ")):
			rules[table+" "+string(line)] = true
		}
	}
	var st JumpState
	for _, j := range BuiltinJumps() {
		if rules[j.Table+" "+j.saveLine()] {
			continue
		}
		st.Missing = append(st.Missing, j)
		if !chains[j.Table+"/"+j.To] {
			if st.missingTargets == nil {
				st.missingTargets = map[string]map[string]bool{}
			}
			if st.missingTargets[j.Table] == nil {
				st.missingTargets[j.Table] = map[string]bool{}
			}
			st.missingTargets[j.Table][j.To] = true
		}
	}
	return st
}

// appendInserts appends, for table, the missing jumps as "-I FROM 1" lines in
// BuiltinJumps order, which leaves them in the order upstream's one-by-one inserts do,
// preceded by declarations of the missing targets the commit does not declare anyway
// (declaring a chain twice would flush what the commit wrote into it).
func (st JumpState) appendInserts(b []byte, table string, declared func(chain string) bool) []byte {
	created := map[string]bool{}
	for _, j := range st.Missing {
		if j.Table == table && st.missingTargets[table][j.To] && !created[j.To] && !declared(j.To) {
			b = appendChain(b, j.To)
			created[j.To] = true
		}
	}
	for _, j := range st.Missing {
		if j.Table == table {
			b = appendRule(b, "-I", j.From, append([]string{"1"}, j.RuleArgs()...))
		}
	}
	return b
}

func jump(table, from, to, comment string, match ...string) Jump {
	args := append([]string{}, match...)
	if comment != "" {
		args = append(args, "-m", "comment", "--comment", comment)
	}
	return Jump{Table: table, From: from, Args: args, To: to}
}

var newConn = []string{"-m", "conntrack", "--ctstate", "NEW"}

// BuiltinJumps lists the jumps from built-in chains, in the order upstream inserts them
// (each at position 1, so the last listed ends up first in its chain). Upstream kube-proxy
// ensures exactly these, which is what lets either proxy take over from the other.
func BuiltinJumps() []Jump {
	const (
		external   = "kubernetes externally-visible service portals"
		portals    = "kubernetes service portals"
		firewallLB = "kubernetes load balancer firewall"
	)
	return []Jump{
		jump("filter", "INPUT", ChainExternalServices, external, newConn...),
		jump("filter", "FORWARD", ChainExternalServices, external, newConn...),
		jump("filter", "INPUT", ChainNodePorts, "kubernetes health check service ports"),
		jump("filter", "FORWARD", ChainServices, portals, newConn...),
		jump("filter", "OUTPUT", ChainServices, portals, newConn...),
		jump("filter", "FORWARD", ChainForward, "kubernetes forwarding rules"),
		jump("filter", "INPUT", ChainProxyFirewall, firewallLB, newConn...),
		jump("filter", "OUTPUT", ChainProxyFirewall, firewallLB, newConn...),
		jump("filter", "FORWARD", ChainProxyFirewall, firewallLB, newConn...),
		jump("nat", "OUTPUT", ChainServices, portals),
		ServicesEntryJump(),
		jump("nat", "POSTROUTING", ChainPostrouting, "kubernetes postrouting rules"),
		// KUBE-FIREWALL is kubelet's too (same chain, same jumps, both families); ensuring
		// it keeps the anti-martian rule hooked in when kubelet does not.
		jump("filter", "INPUT", ChainFirewall, ""),
		jump("filter", "OUTPUT", ChainFirewall, ""),
	}
}

// ServicesEntryJump is the jump from nat PREROUTING into KUBE-SERVICES, through which
// all service traffic from pods and other hosts enters our rules: if it is gone, our nat
// rules were flushed.
func ServicesEntryJump() Jump {
	return jump("nat", "PREROUTING", ChainServices, "kubernetes service portals")
}
