package rules

import "strings"

// Jump is a rule in a built-in chain that sends packets into one of our chains. These
// live outside the restore payload (which never touches built-in chains, so other
// components' rules there survive) and are ensured one by one.
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
