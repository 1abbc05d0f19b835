// Package rules renders a services snapshot into the iptables-restore payload that
// programs it. Render is a pure function: it runs no binary, reads no clock and touches no
// metric, so the same input always gives the same bytes. See README.md for the chain layout.
package rules

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy-dev/kproxy/pkg/model"
)

// LocalDetector holds the match arguments that tell traffic from this node's pods apart
// from everything else. The zero value detects nothing, and rules that need detection are
// then left out, as upstream does.
type LocalDetector struct {
	IfLocal    []string
	IfNotLocal []string
}

// DetectByCIDR recognises pod traffic by its source address being in the cluster CIDR.
func DetectByCIDR(cidr netip.Prefix) LocalDetector {
	c := cidr.Masked().String()
	return LocalDetector{IfLocal: []string{"-s", c}, IfNotLocal: []string{"!", "-s", c}}
}

// DetectByBridge recognises pod traffic by its arriving on the pod bridge.
func DetectByBridge(bridge string) LocalDetector {
	return LocalDetector{IfLocal: []string{"-i", bridge}, IfNotLocal: []string{"!", "-i", bridge}}
}

// DetectByInterfacePrefix recognises pod traffic by its arriving on an interface whose
// name starts with prefix (e.g. "veth").
func DetectByInterfacePrefix(prefix string) LocalDetector {
	return DetectByBridge(prefix + "+")
}

// Implemented reports whether the detector can tell local traffic apart at all.
func (d LocalDetector) Implemented() bool { return len(d.IfNotLocal) > 0 }

// Options are the node-wide settings that shape the rules; they change only on restart.
type Options struct {
	Family        v1.IPFamily
	MasqueradeBit int
	// MasqueradeAll masquerades all traffic to cluster IPs, not only traffic from outside
	// the pod network.
	MasqueradeAll bool
	LocalDetector LocalDetector
	// LocalhostNodePorts lets node ports answer on 127.0.0.1 (IPv4 only), guarded by the
	// KUBE-FIREWALL rule against martian packets from other hosts.
	LocalhostNodePorts bool
	// DropInvalid drops conntrack-INVALID packets in KUBE-FORWARD; off when the kernel is
	// told to be liberal with TCP windows (nf_conntrack_tcp_be_liberal).
	DropInvalid bool
}

// MasqueradeMark is the packet mark that asks KUBE-POSTROUTING to masquerade, written as
// upstream writes it (zero-padded hex, e.g. 0x00004000 for bit 14).
func (o Options) MasqueradeMark() string { return fmt.Sprintf("%#08x", 1<<o.MasqueradeBit) }

// Request is one sync's input beyond the node-wide options.
type Request struct {
	Snapshot *model.Snapshot
	// Partial limits the per-service chains written to those of Changed services; every
	// other service's chains are left as they are in the kernel (iptables-restore
	// --noflush keeps unmentioned chains). The dispatch chains are always written in full.
	Partial bool
	Changed map[types.NamespacedName]bool
	// ExistingNATChains are nat chains that may exist from earlier syncs or from a previous
	// proxy; those we own and no longer render are flushed and deleted in the same payload.
	ExistingNATChains []string
}

// Ruleset is the rendered result: the exact iptables-restore input and its vital counts.
type Ruleset struct {
	Payload []byte
	// FilterRules and NATRules count the rules the kernel will hold in our chains after
	// the payload is applied, including those of services a partial payload skipped.
	FilterRules, NATRules int
	// ActiveNATChains lists the owned per-service and per-endpoint chains this render
	// expects to exist afterwards, sorted; the next render deletes any others.
	ActiveNATChains []string
	// DeletedNATChains counts stale chains the payload deletes.
	DeletedNATChains int
}

// writer accumulates one table's chain declarations and rules. A skipped writer counts
// rules without keeping their text; partial syncs use it for unchanged services so that
// the rule counts stay those of the whole ruleset.
type writer struct {
	chains []byte
	rules  []byte
	count  int
	skip   bool
}

func (w *writer) chain(name string) {
	if w.skip {
		return
	}
	w.chains = append(w.chains, ':')
	w.chains = append(w.chains, name...)
	w.chains = append(w.chains, " - [0:0]\n"...)
}

// rule appends "-A chain args...". Arguments are written as they are, except that an
// argument containing a space is wrapped in double quotes (comments); callers guarantee
// that no argument contains a double quote or a newline (the trackers reject such names).
func (w *writer) rule(chain string, args ...string) {
	w.count++
	if w.skip {
		return
	}
	w.rules = append(w.rules, "-A "...)
	w.rules = append(w.rules, chain...)
	for _, a := range args {
		w.rules = append(w.rules, ' ')
		if strings.IndexByte(a, ' ') >= 0 {
			w.rules = append(w.rules, '"')
			w.rules = append(w.rules, a...)
			w.rules = append(w.rules, '"')
		} else {
			w.rules = append(w.rules, a...)
		}
	}
	w.rules = append(w.rules, '\n')
}

// renderer carries one Render call's state.
type renderer struct {
	opts        Options
	mark        string
	filter, nat writer
	// natSvc receives per-service nat chains; it is nat itself or a skipping writer.
	natSvc  *writer
	skipped writer
	active  []string
}

// Render turns a snapshot into the iptables-restore payload for one IP family.
func Render(req Request, opts Options) *Ruleset {
	r := &renderer{opts: opts, mark: opts.MasqueradeMark()}
	r.skipped.skip = true
	r.presize(req.Snapshot)

	r.writeFixedChains()
	for _, name := range req.Snapshot.SortedServiceNames() {
		r.natSvc = &r.nat
		if req.Partial && !req.Changed[name.NamespacedName] {
			r.natSvc = &r.skipped
		}
		r.writeServicePort(req.Snapshot.Services[name], req.Snapshot.Endpoints[name])
	}
	sort.Strings(r.active)
	deleted := r.writeStaleChainDeletions(req.ExistingNATChains)
	r.writeNodePortsTail()
	r.writeForwardRules()

	payload := make([]byte, 0, len(r.filter.chains)+len(r.filter.rules)+len(r.nat.chains)+len(r.nat.rules)+32)
	payload = append(payload, "*filter\n"...)
	payload = append(payload, r.filter.chains...)
	payload = append(payload, r.filter.rules...)
	payload = append(payload, "COMMIT\n*nat\n"...)
	payload = append(payload, r.nat.chains...)
	payload = append(payload, r.nat.rules...)
	payload = append(payload, "COMMIT\n"...)
	return &Ruleset{
		Payload:          payload,
		FilterRules:      r.filter.count,
		NATRules:         r.nat.count + r.skipped.count,
		ActiveNATChains:  r.active,
		DeletedNATChains: deleted,
	}
}

// presize reserves buffer space from the snapshot's size, so that rendering a large
// cluster does not spend its time copying buffers as they grow. The figures are rough
// per-rule byte counts of typical rules; overshooting costs only untouched memory.
func (r *renderer) presize(snap *model.Snapshot) {
	endpoints := 0
	for _, eps := range snap.Endpoints {
		endpoints += len(eps)
	}
	services := len(snap.Services)
	r.nat.chains = make([]byte, 0, 40*(2*services+endpoints)+1024)
	r.nat.rules = make([]byte, 0, 180*(4*services+3*endpoints)+4096)
	r.filter.rules = make([]byte, 0, 4096)
	r.active = make([]string, 0, 2*services+endpoints)
}

// writeFixedChains declares every chain we own in both tables (so each sync flushes and
// refills them) and writes the rules that do not depend on services.
func (r *renderer) writeFixedChains() {
	for _, c := range []string{ChainServices, ChainExternalServices, ChainForward, ChainNodePorts, ChainProxyFirewall} {
		r.filter.chain(c)
	}
	if r.localhostNodePorts() {
		r.filter.chain(ChainFirewall)
		r.filter.rule(ChainFirewall, "-m", "comment", "--comment", "block incoming localnet connections",
			"-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8",
			"-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP")
	}
	for _, c := range []string{ChainServices, ChainNodePorts, ChainPostrouting, ChainMarkMasq} {
		r.nat.chain(c)
	}
	// Only packets carrying our mark are masqueraded; the mark is cleared first so that a
	// packet re-entering the stack (e.g. over a tunnel) is not masqueraded twice.
	r.nat.rule(ChainPostrouting, "-m", "mark", "!", "--mark", r.mark+"/"+r.mark, "-j", "RETURN")
	r.nat.rule(ChainPostrouting, "-j", "MARK", "--xor-mark", r.mark)
	r.nat.rule(ChainPostrouting, "-m", "comment", "--comment", "kubernetes service traffic requiring SNAT",
		"-j", "MASQUERADE", "--random-fully")
	r.nat.rule(ChainMarkMasq, "-j", "MARK", "--or-mark", r.mark)
}

// localhostNodePorts reports whether node ports also answer on 127.0.0.0/8; IPv6 has no
// equivalent of route_localnet, so it is IPv4 only.
func (r *renderer) localhostNodePorts() bool {
	return r.opts.LocalhostNodePorts && r.opts.Family != v1.IPv6Protocol
}

func (r *renderer) protocol(p v1.Protocol) string { return strings.ToLower(string(p)) }

// writeServicePort writes everything one service port needs: dispatch from
// KUBE-SERVICES/KUBE-NODEPORTS, its SVC and EXT chains, one SEP chain per endpoint, or
// the filter REJECT rules when it has no endpoint to send traffic to.
func (r *renderer) writeServicePort(svc *model.ServicePort, all []model.Endpoint) {
	name := svc.Name.String()
	proto := r.protocol(svc.Name.Protocol)
	clusterIP := svc.ClusterIP.String()
	port := strconv.Itoa(int(svc.Port))
	nodePort := strconv.Itoa(int(svc.NodePort))
	endpoints := model.ReadyEndpoints(all)

	if len(endpoints) == 0 {
		// REJECT answers at once (ICMP port unreachable / TCP RST) instead of letting the
		// client time out; it lives in filter because nat cannot reject.
		comment := name + " has no endpoints"
		r.filter.rule(ChainServices, "-m", "comment", "--comment", comment,
			"-m", proto, "-p", proto, "-d", clusterIP, "--dport", port, "-j", "REJECT")
		if svc.NodePort != 0 {
			r.filter.rule(ChainExternalServices, "-m", "comment", "--comment", comment,
				"-m", "addrtype", "--dst-type", "LOCAL", "-m", proto, "-p", proto, "--dport", nodePort, "-j", "REJECT")
		}
		return
	}

	svcChain := ServiceChain(svc.Name)
	r.natSvc.chain(svcChain)
	r.active = append(r.active, svcChain)
	clusterComment := name + " cluster IP"
	r.nat.rule(ChainServices, "-m", "comment", "--comment", clusterComment,
		"-m", proto, "-p", proto, "-d", clusterIP, "--dport", port, "-j", svcChain)

	if svc.NodePort != 0 {
		extChain := ExternalChain(svc.Name)
		r.natSvc.chain(extChain)
		r.active = append(r.active, extChain)
		r.nat.rule(ChainNodePorts, "-m", "comment", "--comment", name,
			"-m", proto, "-p", proto, "--dport", nodePort, "-j", extChain)
		// Traffic from outside the node must be masqueraded so that replies come back
		// through this node, where the DNAT is undone.
		r.natSvc.rule(extChain, "-m", "comment", "--comment", "masquerade traffic for "+name+" external destinations",
			"-j", ChainMarkMasq)
		r.natSvc.rule(extChain, "-j", svcChain)
	}

	// Cluster-IP traffic from outside the pod network (e.g. from the node itself) must be
	// masqueraded for the reply to find its way back. Without a way to tell pod traffic
	// apart, upstream writes no such rule unless everything is masqueraded.
	switch {
	case r.opts.MasqueradeAll:
		r.natSvc.rule(svcChain, "-m", "comment", "--comment", clusterComment,
			"-m", proto, "-p", proto, "-d", clusterIP, "--dport", port, "-j", ChainMarkMasq)
	case r.opts.LocalDetector.Implemented():
		args := []string{"-m", "comment", "--comment", clusterComment,
			"-m", proto, "-p", proto, "-d", clusterIP, "--dport", port}
		args = append(args, r.opts.LocalDetector.IfNotLocal...)
		r.natSvc.rule(svcChain, append(args, "-j", ChainMarkMasq)...)
	}

	r.writeEndpoints(svc, svcChain, proto, endpoints)
}

// writeEndpoints spreads new connections evenly: rule i of n matches with probability
// 1/(n-i), so every endpoint gets 1/n of them, and the last rule always matches.
func (r *renderer) writeEndpoints(svc *model.ServicePort, svcChain, proto string, endpoints []model.Endpoint) {
	name := svc.Name.String()
	n := len(endpoints)
	for i, ep := range endpoints {
		epString := ep.String()
		sepChain := EndpointChain(svc.Name, epString)
		r.natSvc.chain(sepChain)
		r.active = append(r.active, sepChain)

		comment := name + " -> " + epString
		if i < n-1 {
			r.natSvc.rule(svcChain, "-m", "comment", "--comment", comment,
				"-m", "statistic", "--mode", "random", "--probability", Probability(n-i), "-j", sepChain)
		} else {
			r.natSvc.rule(svcChain, "-m", "comment", "--comment", comment, "-j", sepChain)
		}

		// Hairpin: a pod reaching itself through the service must be masqueraded, or it
		// would answer its own packet directly and the client would drop the reply.
		r.natSvc.rule(sepChain, "-m", "comment", "--comment", name, "-s", ep.IP.String(), "-j", ChainMarkMasq)
		r.natSvc.rule(sepChain, "-m", "comment", "--comment", name,
			"-m", proto, "-p", proto, "-j", "DNAT", "--to-destination", epString)
	}
}

// Probability is the statistic-match probability string for picking one of n endpoints,
// formatted as upstream formats it so rule text is identical.
func Probability(n int) string { return fmt.Sprintf("%0.10f", 1.0/float64(n)) }

// writeStaleChainDeletions flushes and deletes owned chains that exist but are no longer
// rendered. Declaring a chain flushes it, so its jumps to other stale chains are gone
// before any of them is deleted, all within one atomic commit.
func (r *renderer) writeStaleChainDeletions(existing []string) int {
	var stale []string
	for _, c := range existing {
		if !IsOwnedServiceChain(c) {
			continue
		}
		if i := sort.SearchStrings(r.active, c); i < len(r.active) && r.active[i] == c {
			continue
		}
		stale = append(stale, c)
	}
	sort.Strings(stale)
	for _, c := range stale {
		r.nat.chain(c)
		r.nat.rules = append(r.nat.rules, "-X "+c+"\n"...)
	}
	return len(stale)
}

// writeNodePortsTail sends traffic addressed to one of the node's own addresses on to
// KUBE-NODEPORTS. It must stay the last rule of KUBE-SERVICES: cluster and external IPs
// are matched first.
func (r *renderer) writeNodePortsTail() {
	args := []string{"-m", "comment", "--comment", "kubernetes service nodeports; NOTE: this must be the last rule in this chain",
		"-m", "addrtype", "--dst-type", "LOCAL"}
	switch {
	case r.opts.Family == v1.IPv6Protocol:
		args = append(args, "!", "-d", "::1/128")
	case !r.opts.LocalhostNodePorts:
		args = append(args, "!", "-d", "127.0.0.0/8")
	}
	r.nat.rule(ChainServices, append(args, "-j", ChainNodePorts)...)
}

// writeForwardRules lets forwarded service traffic through a host firewall whose FORWARD
// policy is DROP: marked (masqueraded) packets and replies of tracked connections.
func (r *renderer) writeForwardRules() {
	if r.opts.DropInvalid {
		// An INVALID packet would otherwise bypass the DNAT reversal and reach the client
		// with the pod's address, which answers it with a RST.
		r.filter.rule(ChainForward, "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	}
	r.filter.rule(ChainForward, "-m", "comment", "--comment", "kubernetes forwarding rules",
		"-m", "mark", "--mark", r.mark+"/"+r.mark, "-j", "ACCEPT")
	r.filter.rule(ChainForward, "-m", "comment", "--comment", "kubernetes forwarding conntrack rule",
		"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
}
