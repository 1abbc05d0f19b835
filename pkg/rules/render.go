// Package rules renders a services snapshot into the iptables-restore payload that
// programs it. Render is a pure function: it runs no binary, reads no clock and touches no
// metric, so the same input always gives the same bytes. See README.md for the chain layout.
package rules

import (
	"bytes"
	"fmt"
	"net/netip"
	"sort"

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
	// CountInvalidDropped and CountLocalhostNodePorts add upstream's nfacct accounting
	// ("-m nfacct") to the INVALID drop and to node ports reached on 127.0.0.0/8; set
	// them only while the counters (pkg/nfacct) exist, or the kernel rejects the rules.
	CountInvalidDropped, CountLocalhostNodePorts bool
	// NodePortAddresses limits node ports to local addresses in these ranges; empty means
	// every local address.
	NodePortAddresses []netip.Prefix
	// MaxChainsPerBatch splits large syncs into batches that each declare at most this
	// many per-service chains (0: one batch), and MaxRulesPerBatch, when set with it, into
	// batches whose per-service chains get at most this many rules. The nft backend needs
	// both: there each rule a batch appends costs time in proportion to the chains the
	// batch declares, so a few services with a thousand endpoints each, changing
	// together, are as costly as hundreds of small ones.
	MaxChainsPerBatch, MaxRulesPerBatch int
}

// MasqueradeMark is the packet mark that asks KUBE-POSTROUTING to masquerade, written as
// upstream writes it (zero-padded hex, e.g. 0x00004000 for bit 14).
func (o Options) MasqueradeMark() string { return fmt.Sprintf("%#08x", 1<<o.MasqueradeBit) }

// Request is one sync's input beyond the node-wide options.
type Request struct {
	Snapshot *model.Snapshot
	// Previous is the State of the last render whose batches were all applied; nil when
	// unknown (first sync, or after a failure).
	Previous *State
	// Partial asks for an incremental payload against Previous: only the chains of
	// Changed services are rewritten, and the shared dispatch chains (KUBE-SERVICES, ...)
	// are edited with targeted deletes and inserts instead of being rewritten. Without a
	// Previous the render is full.
	Partial bool
	Changed map[types.NamespacedName]bool
	// ExistingNATChains are nat chains listed from the kernel; those we own and no longer
	// render are flushed and deleted. Partial renders also delete the chains their
	// changed services stopped using, known from Previous.
	ExistingNATChains []string
	// Jumps are the jumps from built-in chains into ours that the kernel lacks
	// (ReadJumps): a full render inserts them, a partial one ignores them.
	Jumps JumpState
	// Node is this node: its name and zone pick local and topology-preferred endpoints,
	// its IP lets it reach load balancers that filter sources.
	Node model.Node
	// LocalAddrs are the node's interface addresses of this family, used only when
	// Options.NodePortAddresses restricts node ports.
	LocalAddrs []netip.Addr
}

// Ruleset is the rendered result: the iptables-restore inputs and the vital counts.
type Ruleset struct {
	// Batches are the iptables-restore inputs, to apply in order. There is one unless
	// Options.MaxChainsPerBatch split a large sync; every batch leaves each service either
	// as it was or as it will be, never half-written.
	Batches []Batch
	// Partial reports whether the batches are incremental (they assume the kernel holds
	// Request.Previous).
	Partial bool
	// FilterRules and NATRules count the rules the kernel will hold in our chains after
	// the batches are applied, including those of services an incremental sync left alone.
	FilterRules, NATRules int
	// WrittenNATRules counts the nat rules the batches append or insert.
	WrittenNATRules int
	// DeletedNATChains counts stale chains the batches delete.
	DeletedNATChains int
	// LargeCluster is set above LargeClusterEndpoints endpoints: per-endpoint comments are
	// left out to keep the payload small.
	LargeCluster bool
	// NoLocalEndpoints counts service ports whose Local policy has no local endpoint while
	// the service has endpoints elsewhere, by traffic policy ("internal", "external").
	NoLocalEndpoints map[string]int
	// State is what the next render needs once these batches are applied.
	State *State
}

// Batch is one iptables-restore input, one commit per table it writes, in pieces to
// write one after the other. Most of a large sync's pieces are slices of the render's
// buffers: joining them would hold the whole payload twice at the sync's peak.
type Batch [][]byte

// Bytes returns the batch as one input.
func (b Batch) Bytes() []byte { return bytes.Join(b, nil) }

// Pieces returns the pieces of all batches, in order: together, one iptables-restore
// input with one commit per batch.
func (rs *Ruleset) Pieces() [][]byte {
	var pieces [][]byte
	for _, b := range rs.Batches {
		pieces = append(pieces, b...)
	}
	return pieces
}

// Payload is all batches as one iptables-restore input (one commit per batch), joined.
func (rs *Ruleset) Payload() []byte { return bytes.Join(rs.Pieces(), nil) }

// PayloadBytes is the size of all batches together.
func (rs *Ruleset) PayloadBytes() int {
	n := 0
	for _, b := range rs.Batches {
		for _, piece := range b {
			n += len(piece)
		}
	}
	return n
}

// The nfacct counters of the Count* options; pkg/nfacct creates them under these names.
const (
	nfacctInvalidDropped     = "ct_state_invalid_dropped_pkts"
	nfacctLocalhostNodePorts = "localhost_nps_accepted_pkts"
)

// LargeClusterEndpoints is the endpoint count above which the per-endpoint rule comments
// are dropped; upstream uses the same threshold, so rule text stays identical.
const LargeClusterEndpoints = 1000

// ownRuleBytes and ownRuleBytesLarge are a little more than the mean size of a service's
// own rule with per-endpoint comments and without them (large clusters): 126 and 85
// bytes for the benchmark's services (hack/bench).
const (
	ownRuleBytes      = 150
	ownRuleBytesLarge = 100
)

// scratchArgs is the capacity of the renderer's scratch arguments, more than any rule
// built in them has (17 at most: a comment, affinity or a local detector, the protocol
// and a target).
const scratchArgs = 32

// renderer carries one Render call's state.
type renderer struct {
	opts Options
	mark string
	node model.Node
	// largeCluster drops per-endpoint comments (see LargeClusterEndpoints).
	largeCluster bool
	// own receives the rendered services' own chains (declarations and rules); rec is
	// the record of the service port being rendered. kept are the KUBE-SEP chains of that
	// port the kernel already holds as they would be written (keptEndpointChains), and
	// keptRules the rules in those of them it uses again.
	own       lineBuffer
	rec       *portRecord
	kept      map[string]bool
	keptRules int
	// Scratch space reused across service ports: rule arguments, the names of the
	// current port's endpoints, and probability strings by endpoint count.
	args    []string
	epKeys  []netip.Addr
	epPorts []int32
	epNames []endpointNames
	probs   []string
}

// Render turns a snapshot into the iptables-restore input for one IP family.
func Render(req Request, opts Options) *Ruleset {
	snap := req.Snapshot
	endpoints := 0
	for _, eps := range snap.Endpoints {
		endpoints += len(eps)
	}
	r := &renderer{opts: opts, mark: opts.MasqueradeMark(), node: req.Node, largeCluster: endpoints > LargeClusterEndpoints,
		args: make([]string, 0, scratchArgs)}
	prev := req.Previous
	partial := req.Partial && prev != nil
	// Records of unchanged services are reused only if nothing that shapes every rule
	// changed since; otherwise every service is rendered again (still incrementally).
	reuse := partial && prev.compatible(opts, req.Node, r.largeCluster)

	var order []model.ServicePortName
	if partial {
		order = sortedNames(snap, prev)
	} else {
		order = snap.SortedServiceNames()
	}
	st := newState(opts, req.Node, r.largeCluster, order)
	if !reuse {
		// About 3 own rules per endpoint and 2 per service port; the batches hold
		// slices of this buffer until the restore is done, so it is sized close to
		// what it will hold.
		perRule := ownRuleBytes
		if r.largeCluster {
			perRule = ownRuleBytesLarge
		}
		r.own.grow(perRule*(3*endpoints+2*len(snap.Services)), 2*len(snap.Services)+endpoints)
	}
	var rendered []renderedPort
	var reusePrev *State
	if reuse {
		reusePrev = prev
	}
	walk(reusePrev, st, func(j int, old, _ *portRecord) {
		if j < 0 {
			return // a port only the previous state has
		}
		name := st.order[j]
		if old != nil && !req.Changed[name.NamespacedName] {
			st.recs[j] = old
			return
		}
		rec := &portRecord{}
		r.rec = rec
		r.kept, r.keptRules = keptEndpointChains(old, snap.Services[name]), 0
		start := r.own.mark()
		r.writeServicePort(snap.Services[name], snap.Endpoints[name])
		end := r.own.mark()
		rec.ownNATRules = end.nRules - start.nRules + r.keptRules
		st.recs[j] = rec
		rendered = append(rendered, renderedPort{rec: rec, start: start, end: end})
	})
	st.tail = r.nodePortsTail(req.LocalAddrs)

	stale := st.staleChains(prev, partial, req.ExistingNATChains)
	rs := &Ruleset{Partial: partial, LargeCluster: r.largeCluster, State: st, DeletedNATChains: len(stale)}
	rs.FilterRules, rs.NATRules, rs.NoLocalEndpoints = st.counts(r.fixedFilterRules(), fixedNATRules)
	p := planner{r: r, st: st, prev: prev, partial: partial, rendered: rendered, stale: stale, maxChains: opts.MaxChainsPerBatch, maxRules: opts.MaxRulesPerBatch, jumps: req.Jumps}
	rs.Batches, rs.WrittenNATRules = p.batches()
	return rs
}

// fixedNATRules is the number of nat rules that do not depend on services: three in
// KUBE-POSTROUTING, one in KUBE-MARK-MASQ (the node-ports tail is counted with the tail).
const fixedNATRules = 4

// fixedFilterRules counts the filter rules that do not depend on services.
func (r *renderer) fixedFilterRules() int {
	n := 2 // KUBE-FORWARD: marked and RELATED,ESTABLISHED
	if r.opts.DropInvalid {
		n++
	}
	if r.localhostNodePorts() {
		n++
	}
	return n
}

// writeFixedFilter writes the filter chains' declarations and the rules that do not
// depend on services.
func (r *renderer) writeFixedFilter(b *lineBuffer) {
	for _, c := range []string{ChainServices, ChainExternalServices, ChainForward, ChainNodePorts, ChainProxyFirewall} {
		b.chain(c)
	}
	if r.localhostNodePorts() {
		b.chain(ChainFirewall)
		b.rule(ChainFirewall, "-m", "comment", "--comment", "block incoming localnet connections",
			"-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8",
			"-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT", "-j", "DROP")
	}
	if r.opts.DropInvalid {
		// An INVALID packet would otherwise bypass the DNAT reversal and reach the client
		// with the pod's address, which answers it with a RST.
		if r.opts.CountInvalidDropped {
			b.rule(ChainForward, "-m", "conntrack", "--ctstate", "INVALID",
				"-m", "nfacct", "--nfacct-name", nfacctInvalidDropped, "-j", "DROP")
		} else {
			b.rule(ChainForward, "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
		}
	}
	// Let forwarded service traffic through a host firewall whose FORWARD policy is
	// DROP: marked (masqueraded) packets and replies of tracked connections.
	b.rule(ChainForward, "-m", "comment", "--comment", "kubernetes forwarding rules",
		"-m", "mark", "--mark", r.mark+"/"+r.mark, "-j", "ACCEPT")
	b.rule(ChainForward, "-m", "comment", "--comment", "kubernetes forwarding conntrack rule",
		"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "ACCEPT")
}

// writeFixedNAT declares the fixed nat chains and writes their rules.
func (r *renderer) writeFixedNAT(b *lineBuffer) {
	for _, c := range []string{ChainServices, ChainNodePorts, ChainPostrouting, ChainMarkMasq} {
		b.chain(c)
	}
	// Only packets carrying our mark are masqueraded; the mark is cleared first so that a
	// packet re-entering the stack (e.g. over a tunnel) is not masqueraded twice.
	b.rule(ChainPostrouting, "-m", "mark", "!", "--mark", r.mark+"/"+r.mark, "-j", "RETURN")
	b.rule(ChainPostrouting, "-j", "MARK", "--xor-mark", r.mark)
	b.rule(ChainPostrouting, "-m", "comment", "--comment", "kubernetes service traffic requiring SNAT",
		"-j", "MASQUERADE", "--random-fully")
	b.rule(ChainMarkMasq, "-j", "MARK", "--or-mark", r.mark)
}

// localhostNodePorts reports whether node ports also answer on 127.0.0.0/8; IPv6 has no
// equivalent of route_localnet, so it is IPv4 only.
func (r *renderer) localhostNodePorts() bool {
	return r.opts.LocalhostNodePorts && r.opts.Family != v1.IPv6Protocol
}

// nodePortsTail renders the rules that send traffic addressed to the node on to
// KUBE-NODEPORTS. They must stay the last rules of KUBE-SERVICES: cluster, external and
// load balancer IPs are matched first.
func (r *renderer) nodePortsTail(localAddrs []netip.Addr) lines {
	var b lines
	comment := []string{"-m", "comment", "--comment", "kubernetes service nodeports; NOTE: this must be the last rule in this chain"}
	if len(r.opts.NodePortAddresses) == 0 {
		args := append(comment, "-m", "addrtype", "--dst-type", "LOCAL")
		switch {
		case r.opts.Family == v1.IPv6Protocol:
			args = append(args, "!", "-d", "::1/128")
		case !r.opts.LocalhostNodePorts:
			args = append(args, "!", "-d", "127.0.0.0/8")
		}
		b.rule(ChainServices, append(args, "-j", ChainNodePorts)...)
		return b
	}
	addrs := append([]netip.Addr(nil), localAddrs...)
	sort.Slice(addrs, func(i, j int) bool { return addrs[i].Less(addrs[j]) })
	for _, a := range addrs {
		if a.IsLoopback() && !r.localhostNodePorts() {
			continue
		}
		for _, p := range r.opts.NodePortAddresses {
			if p.Contains(a) {
				b.rule(ChainServices, append(comment, "-d", a.String(), "-j", ChainNodePorts)...)
				break
			}
		}
	}
	return b
}
