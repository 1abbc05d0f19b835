// Package rules renders a services snapshot into the iptables-restore payload that
// programs it. Render is a pure function: it runs no binary, reads no clock and touches no
// metric, so the same input always gives the same bytes. See README.md for the chain layout.
package rules

import (
	"fmt"
	"net/netip"
	"sort"
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
	// NodePortAddresses limits node ports to local addresses in these ranges; empty means
	// every local address.
	NodePortAddresses []netip.Prefix
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
	// Node is this node: its name and zone pick local and topology-preferred endpoints,
	// its IP lets it reach load balancers that filter sources.
	Node model.Node
	// LocalAddrs are the node's interface addresses of this family, used only when
	// Options.NodePortAddresses restricts node ports.
	LocalAddrs []netip.Addr
}

// Ruleset is the rendered result: the exact iptables-restore input and its vital counts.
type Ruleset struct {
	Payload []byte
	// FilterRules and NATRules count the rules the kernel will hold in our chains after
	// the payload is applied, including those of services a partial payload skipped.
	FilterRules, NATRules int
	// WrittenNATRules counts the nat rules in the payload itself.
	WrittenNATRules int
	// ActiveNATChains lists the owned per-service and per-endpoint chains this render
	// expects to exist afterwards, sorted; the next render deletes any others.
	ActiveNATChains []string
	// DeletedNATChains counts stale chains the payload deletes.
	DeletedNATChains int
	// LargeCluster is set above LargeClusterEndpoints endpoints: per-endpoint comments are
	// left out to keep the payload small.
	LargeCluster bool
	// NoLocalEndpoints counts service ports whose Local policy has no local endpoint while
	// the service has endpoints elsewhere, by traffic policy ("internal", "external").
	NoLocalEndpoints map[string]int
}

// LargeClusterEndpoints is the endpoint count above which the per-endpoint rule comments
// are dropped; upstream uses the same threshold, so rule text stays identical.
const LargeClusterEndpoints = 1000

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
	node    model.Node
	// largeCluster drops per-endpoint comments (see LargeClusterEndpoints).
	largeCluster bool
	noLocal      map[string]int
}

// Render turns a snapshot into the iptables-restore payload for one IP family.
func Render(req Request, opts Options) *Ruleset {
	r := &renderer{opts: opts, mark: opts.MasqueradeMark(), node: req.Node, noLocal: map[string]int{}}
	r.skipped.skip = true
	r.largeCluster = r.presize(req.Snapshot) > LargeClusterEndpoints

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
	r.writeNodePortsTail(req.LocalAddrs)
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
		WrittenNATRules:  r.nat.count,
		ActiveNATChains:  r.active,
		DeletedNATChains: deleted,
		LargeCluster:     r.largeCluster,
		NoLocalEndpoints: r.noLocal,
	}
}

// presize reserves buffer space from the snapshot's size, so that rendering a large
// cluster does not spend its time copying buffers as they grow. The figures are rough
// per-rule byte counts of typical rules; overshooting costs only untouched memory.
// It returns the number of endpoints.
func (r *renderer) presize(snap *model.Snapshot) int {
	endpoints := 0
	for _, eps := range snap.Endpoints {
		endpoints += len(eps)
	}
	services := len(snap.Services)
	r.nat.chains = make([]byte, 0, 40*(2*services+endpoints)+1024)
	r.nat.rules = make([]byte, 0, 180*(4*services+3*endpoints)+4096)
	r.filter.rules = make([]byte, 0, 4096)
	r.active = make([]string, 0, 2*services+endpoints)
	return endpoints
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

// writeNodePortsTail sends traffic addressed to the node on to KUBE-NODEPORTS. It must
// stay the last rule of KUBE-SERVICES: cluster, external and load balancer IPs are
// matched first.
func (r *renderer) writeNodePortsTail(localAddrs []netip.Addr) {
	comment := []string{"-m", "comment", "--comment", "kubernetes service nodeports; NOTE: this must be the last rule in this chain"}
	if len(r.opts.NodePortAddresses) == 0 {
		args := append(comment, "-m", "addrtype", "--dst-type", "LOCAL")
		switch {
		case r.opts.Family == v1.IPv6Protocol:
			args = append(args, "!", "-d", "::1/128")
		case !r.opts.LocalhostNodePorts:
			args = append(args, "!", "-d", "127.0.0.0/8")
		}
		r.nat.rule(ChainServices, append(args, "-j", ChainNodePorts)...)
		return
	}
	addrs := append([]netip.Addr(nil), localAddrs...)
	sort.Slice(addrs, func(i, j int) bool { return addrs[i].Less(addrs[j]) })
	for _, a := range addrs {
		if a.IsLoopback() && !r.localhostNodePorts() {
			continue
		}
		for _, p := range r.opts.NodePortAddresses {
			if p.Contains(a) {
				r.nat.rule(ChainServices, append(comment, "-d", a.String(), "-j", ChainNodePorts)...)
				break
			}
		}
	}
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
