package rules

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/kproxy-dev/kproxy/pkg/model"
)

// portRules holds what writeServicePort derives once for a service port: its names and
// chains, its endpoints, and where its traffic goes under its traffic policies.
type portRules struct {
	svc   *model.ServicePort
	name  string // "ns/name:port"
	proto string // "tcp", "udp", "sctp"
	port  string
	// clusterIP is the cluster IP as the rules write it.
	clusterIP string
	// Chains: cluster policy, local policy, external entry, load balancer firewall.
	svcChain, svlChain, extChain, fwChain string

	// endpoints are the port's endpoints as each traffic policy selects them.
	endpoints model.Categorized
	// hasEndpoints reports whether some endpoint, on any node, serves the port.
	hasEndpoints bool
	// internalChain is where cluster IP traffic goes (KUBE-SVC-*, or KUBE-SVL-* under a
	// Local internal policy); hasInternal is false when that policy has no endpoint.
	internalChain string
	hasInternal   bool
	// externalChain and hasExternal are the same for traffic from outside the cluster
	// (external policy), once it has passed KUBE-EXT-*.
	externalChain string
	hasExternal   bool
	// usesFWChain: load balancer IP traffic is filtered by source range in KUBE-FW-*
	// before it reaches KUBE-EXT-*; lbChain is where it enters (KUBE-FW-* or KUBE-EXT-*).
	usesFWChain bool
	lbChain     string
	// The filter verdict and comment for internal and external traffic that has nowhere
	// to go; set only when !hasInternal or !hasExternal respectively.
	internalTarget, internalComment string
	externalTarget, externalComment string
}

// newPortRules derives svc's portRules, its endpoints eps selected as node sees them.
func newPortRules(svc *model.ServicePort, eps []model.Endpoint, node model.Node) portRules {
	hash := portHash(svc.Name)
	p := portRules{
		svc:       svc,
		name:      svc.Name.String(),
		proto:     strings.ToLower(string(svc.Name.Protocol)),
		port:      strconv.Itoa(int(svc.Port)),
		clusterIP: svc.ClusterIP.String(),
		svcChain:  prefixService + hash,
		svlChain:  prefixServiceLocal + hash,
		extChain:  prefixExternal + hash,
		fwChain:   prefixFirewall + hash,
		endpoints: model.CategorizeEndpoints(eps, svc, node),
	}
	p.hasEndpoints = p.endpoints.HasAny

	p.internalChain, p.hasInternal = p.svcChain, p.hasEndpoints
	if svc.InternalPolicyLocal {
		p.internalChain = p.svlChain
		p.hasInternal = p.hasInternal && len(p.endpoints.Local) > 0
	}
	p.externalChain, p.hasExternal = p.svcChain, p.hasEndpoints
	if svc.ExternalPolicyLocal {
		p.externalChain = p.svlChain
		p.hasExternal = p.hasExternal && len(p.endpoints.Local) > 0
	}
	p.usesFWChain = p.hasEndpoints && len(svc.LoadBalancerVIPs) > 0 && len(svc.LoadBalancerSourceRanges) > 0
	p.lbChain = p.extChain
	if p.usesFWChain {
		p.lbChain = p.fwChain
	}

	// Traffic with nowhere to go: REJECT when the service has no endpoint at all (clients
	// learn at once), DROP when only the Local policy has none here (another node may
	// have one, and the client or load balancer should retry elsewhere).
	switch {
	case !p.hasEndpoints:
		p.internalTarget, p.internalComment = "REJECT", p.name+" has no endpoints"
		p.externalTarget, p.externalComment = p.internalTarget, p.internalComment
	default:
		if !p.hasInternal {
			p.internalTarget, p.internalComment = "DROP", p.name+" has no local endpoints"
		}
		if !p.hasExternal {
			p.externalTarget, p.externalComment = "DROP", p.name+" has no local endpoints"
		}
	}
	return p
}

// writeServicePort writes everything one service port needs (behaviour spec §1.4-1.5):
// dispatch from KUBE-SERVICES and KUBE-NODEPORTS, the filter rules for traffic that has no
// endpoint to go to, and the service's own SVC/SVL/EXT/FW/SEP chains.
//
// Rule order within a chain is behaviour (the first match wins): each shared chain gets
// the port's rules in the order of the calls below, and the port's own rules start with
// the masquerade rule writeClusterIPRules puts at the top of internalChain.
func (r *renderer) writeServicePort(svc *model.ServicePort, eps []model.Endpoint) {
	r.epKeys, r.epPorts, r.epNames = r.epKeys[:0], r.epPorts[:0], r.epNames[:0]
	p := newPortRules(svc, eps, r.node)
	r.rec.affinity = svc.StickyMaxAgeSeconds > 0
	r.rec.noLocalInternal = p.hasEndpoints && !p.hasInternal
	r.rec.noLocalExternal = p.hasEndpoints && !p.hasExternal

	r.writeClusterIPRules(&p)
	r.writeExternalDestinationRules(&p)
	r.writeNodePortRules(&p)
	r.writeHealthCheckNodePortRule(&p)
	r.writeOwnChains(&p)
}

// writeClusterIPRules sends cluster IP traffic to internalChain (nat KUBE-SERVICES), or
// rejects or drops it (filter KUBE-SERVICES) when the internal policy has no endpoint.
func (r *renderer) writeClusterIPRules(p *portRules) {
	clusterIP := p.clusterIP
	if !p.hasInternal {
		r.rec.shared[filterServices].rule(ChainServices, "-m", "comment", "--comment", p.internalComment,
			"-m", p.proto, "-p", p.proto, "-d", clusterIP, "--dport", p.port, "-j", p.internalTarget)
		return
	}
	r.rec.shared[natServices].rule(ChainServices, "-m", "comment", "--comment", p.name+" cluster IP",
		"-m", p.proto, "-p", p.proto, "-d", clusterIP, "--dport", p.port, "-j", p.internalChain)
}

// writeClusterIPMasquerade writes the first rule of internalChain, right after
// writeOwnChains declares it: cluster IP traffic from outside the pod network (e.g. from
// the node itself) must be masqueraded for the reply to find its way back. Without a way
// to tell pod traffic apart, upstream writes no such rule unless everything is
// masqueraded.
func (r *renderer) writeClusterIPMasquerade(p *portRules, chain string) {
	if !p.hasInternal || chain != p.internalChain {
		return
	}
	args := append(r.args[:0], "-m", "comment", "--comment", p.name+" cluster IP",
		"-m", p.proto, "-p", p.proto, "-d", p.clusterIP, "--dport", p.port)
	switch {
	case r.opts.MasqueradeAll:
		r.own.rule(chain, append(args, "-j", ChainMarkMasq)...)
	case r.opts.LocalDetector.Implemented():
		args = append(args, r.opts.LocalDetector.IfNotLocal...)
		r.own.rule(chain, append(args, "-j", ChainMarkMasq)...)
	}
}

// writeExternalDestinationRules writes the shared rules for the port's external IPs,
// which enter at KUBE-EXT-*, and its load balancer IPs, which enter at lbChain so that
// KUBE-FW-* can filter them by source (filter KUBE-PROXY-FIREWALL drops what it rejects).
func (r *renderer) writeExternalDestinationRules(p *portRules) {
	for _, ip := range p.svc.ExternalIPs {
		r.writeExternalAddressRules(p, ip.String(), p.name+" external IP", p.extChain)
	}
	for _, ip := range p.svc.LoadBalancerVIPs {
		dst := ip.String()
		r.writeExternalAddressRules(p, dst, p.name+" loadbalancer IP", p.lbChain)
		if p.usesFWChain {
			// Packets KUBE-FW-* did not DNAT still carry the load balancer IP: drop them.
			r.rec.shared[filterProxyFirewall].rule(ChainProxyFirewall, "-m", "comment", "--comment", p.name+" traffic not accepted by "+p.fwChain,
				"-m", p.proto, "-p", p.proto, "-d", dst, "--dport", p.port, "-j", "DROP")
		}
	}
}

// writeExternalAddressRules sends traffic to dst, an external or load balancer IP of the
// port, to entryChain (nat KUBE-SERVICES), and rejects or drops it (filter
// KUBE-EXTERNAL-SERVICES) when the external policy has no endpoint.
func (r *renderer) writeExternalAddressRules(p *portRules, dst, comment, entryChain string) {
	if p.hasEndpoints {
		r.rec.shared[natServices].rule(ChainServices, "-m", "comment", "--comment", comment,
			"-m", p.proto, "-p", p.proto, "-d", dst, "--dport", p.port, "-j", entryChain)
	}
	if !p.hasExternal {
		r.rec.shared[filterExternalServices].rule(ChainExternalServices, "-m", "comment", "--comment", p.externalComment,
			"-m", p.proto, "-p", p.proto, "-d", dst, "--dport", p.port, "-j", p.externalTarget)
	}
}

// writeNodePortRules sends traffic to the port's node port to KUBE-EXT-* (nat
// KUBE-NODEPORTS), and rejects or drops it (filter KUBE-EXTERNAL-SERVICES) when the
// external policy has no endpoint.
func (r *renderer) writeNodePortRules(p *portRules) {
	if p.svc.NodePort == 0 {
		return
	}
	nodePort := strconv.Itoa(int(p.svc.NodePort))
	if p.hasEndpoints {
		// Node ports are not subject to loadBalancerSourceRanges (upstream behaviour
		// that users rely on), so they enter at EXT, not FW.
		if r.localhostNodePorts() && r.opts.CountLocalhostNodePorts {
			// Accounting only: the next rule matches the same packets.
			r.rec.shared[natNodePorts].rule(ChainNodePorts, "-m", "comment", "--comment", p.name,
				"-m", p.proto, "-p", p.proto, "-d", "127.0.0.0/8", "--dport", nodePort,
				"-m", "nfacct", "--nfacct-name", nfacctLocalhostNodePorts, "-j", p.extChain)
		}
		r.rec.shared[natNodePorts].rule(ChainNodePorts, "-m", "comment", "--comment", p.name,
			"-m", p.proto, "-p", p.proto, "--dport", nodePort, "-j", p.extChain)
	}
	if !p.hasExternal {
		r.rec.shared[filterExternalServices].rule(ChainExternalServices, "-m", "comment", "--comment", p.externalComment,
			"-m", "addrtype", "--dst-type", "LOCAL", "-m", p.proto, "-p", p.proto, "--dport", nodePort, "-j", p.externalTarget)
	}
}

// writeHealthCheckNodePortRule accepts the port's health check node port (filter
// KUBE-NODEPORTS).
func (r *renderer) writeHealthCheckNodePortRule(p *portRules) {
	if p.svc.HealthCheckNodePort == 0 {
		return
	}
	// Load balancers probe this port whether or not we have local endpoints; the
	// answer (200 or 503) is the point, so a host firewall must let it through.
	r.rec.shared[filterNodePorts].rule(ChainNodePorts, "-m", "comment", "--comment", p.name+" health check node port",
		"-m", "tcp", "-p", "tcp", "--dport", strconv.Itoa(int(p.svc.HealthCheckNodePort)), "-j", "ACCEPT")
}

// writeOwnChains declares and fills the chains the port owns, in this order: KUBE-EXT-*,
// KUBE-FW-*, KUBE-SVC-*, KUBE-SVL-*, then one KUBE-SEP-* per endpoint either policy may
// pick. Each is declared only when a rule jumps to it (FuzzRender checks that no owned
// chain is left unreferenced), and each chain's rules directly follow its declaration:
// the planner moves whole chains (chainSegment).
func (r *renderer) writeOwnChains(p *portRules) {
	if p.hasEndpoints && p.svc.ExternallyAccessible() {
		r.writeExternalChain(p)
	}
	if p.usesFWChain {
		r.writeFirewallChain(p)
	}
	if len(p.endpoints.Cluster) > 0 && p.svc.UsesClusterEndpoints() {
		r.declare(p.svcChain)
		r.writeClusterIPMasquerade(p, p.svcChain)
		r.writeDispatch(p, p.svcChain, p.endpoints.Cluster)
	}
	if len(p.endpoints.Local) > 0 && p.svc.UsesLocalEndpoints() {
		r.declare(p.svlChain)
		r.writeClusterIPMasquerade(p, p.svlChain)
		r.writeDispatch(p, p.svlChain, p.endpoints.Local)
	}
	for _, ep := range p.endpoints.AllReachable {
		r.writeEndpointChain(p, ep)
	}
}

// declare declares a per-service chain and records it as the service's.
func (r *renderer) declare(chain string) {
	r.own.chain(chain)
	r.rec.active = append(r.rec.active, chain)
}

// writeExternalChain writes KUBE-EXT-*, the entry point for node ports, external IPs and
// load balancer IPs.
func (r *renderer) writeExternalChain(p *portRules) {
	r.declare(p.extChain)
	if !p.svc.ExternalPolicyLocal {
		// Endpoints may be on other nodes: masquerade so replies come back through here.
		r.own.rule(p.extChain, "-m", "comment", "--comment", "masquerade traffic for "+p.name+" external destinations",
			"-j", ChainMarkMasq)
	} else {
		// Local policy keeps the client's source IP, which only works for traffic from
		// outside. Pods and the node itself are short-circuited to the cluster policy, as
		// if they had gone out to the load balancer and come back in.
		if r.opts.LocalDetector.Implemented() {
			args := append([]string{"-m", "comment", "--comment", "pod traffic for " + p.name + " external destinations"},
				r.opts.LocalDetector.IfLocal...)
			r.own.rule(p.extChain, append(args, "-j", p.svcChain)...)
		}
		// The node's own traffic to an external address has a local source address,
		// which would not survive the trip to another node: masquerade it.
		r.own.rule(p.extChain, "-m", "comment", "--comment", "masquerade LOCAL traffic for "+p.name+" external destinations",
			"-m", "addrtype", "--src-type", "LOCAL", "-j", ChainMarkMasq)
		r.own.rule(p.extChain, "-m", "comment", "--comment", "route LOCAL traffic for "+p.name+" external destinations",
			"-m", "addrtype", "--src-type", "LOCAL", "-j", p.svcChain)
	}
	if p.hasExternal {
		r.own.rule(p.extChain, "-j", p.externalChain)
	}
}

// writeFirewallChain writes KUBE-FW-*: only the allowed sources reach KUBE-EXT-*; the rest
// falls through un-DNATed and is dropped by filter KUBE-PROXY-FIREWALL.
func (r *renderer) writeFirewallChain(p *portRules) {
	r.declare(p.fwChain)
	comment := p.name + " loadbalancer IP"
	allowFromNode := false
	for _, cidr := range p.svc.LoadBalancerSourceRanges {
		r.own.rule(p.fwChain, "-m", "comment", "--comment", comment, "-s", cidr.String(), "-j", p.extChain)
		if r.node.IP.IsValid() && cidr.Contains(r.node.IP) {
			allowFromNode = true
		}
	}
	if allowFromNode {
		// A VIP-like load balancer IP is often a local address too: the node's own request
		// then loops back with the VIP as source, so the VIP must be allowed.
		for _, ip := range p.svc.LoadBalancerVIPs {
			r.own.rule(p.fwChain, "-m", "comment", "--comment", comment, "-s", ip.String(), "-j", p.extChain)
		}
	}
	// A counter-only rule: it shows how much traffic the firewall turned away.
	r.own.rule(p.fwChain, "-m", "comment", "--comment", "other traffic to "+p.name+" will be dropped by KUBE-PROXY-FIREWALL")
}

// endpointNames are the strings of one endpoint of the port being rendered, computed
// once: "ip:port" and the KUBE-SEP chain hashed from it.
type endpointNames struct{ ip, addrPort, chain string }

// namesOf returns ep's names, computing them on first use for this service port.
func (r *renderer) namesOf(p *portRules, ep model.Endpoint) endpointNames {
	for i := range r.epKeys {
		if r.epKeys[i] == ep.IP && r.epPorts[i] == ep.Port {
			return r.epNames[i]
		}
	}
	ip := ep.IP.String()
	addrPort := ep.String()
	n := endpointNames{ip: ip, addrPort: addrPort, chain: EndpointChain(p.svc.Name, addrPort)}
	r.epKeys, r.epPorts, r.epNames = append(r.epKeys, ep.IP), append(r.epPorts, ep.Port), append(r.epNames, n)
	return n
}

// writeDispatch spreads new connections over endpoints: affinity matches first (one per
// endpoint), then rule i of n matches with probability 1/(n-i), so every endpoint gets 1/n
// of them, and the last rule always matches.
func (r *renderer) writeDispatch(p *portRules, chain string, endpoints []model.Endpoint) {
	if p.svc.StickyMaxAgeSeconds > 0 {
		seconds := strconv.Itoa(int(p.svc.StickyMaxAgeSeconds))
		for _, ep := range endpoints {
			n := r.namesOf(p, ep)
			args := r.endpointComment(p.name, n.addrPort)
			r.own.rule(chain, append(args, "-m", "recent", "--name", n.chain, "--rcheck", "--seconds", seconds, "--reap", "-j", n.chain)...)
		}
	}
	count := len(endpoints)
	for i, ep := range endpoints {
		n := r.namesOf(p, ep)
		args := r.endpointComment(p.name, n.addrPort)
		if i < count-1 {
			args = append(args, "-m", "statistic", "--mode", "random", "--probability", r.probability(count-i))
		}
		r.own.rule(chain, append(args, "-j", n.chain)...)
	}
}

// writeEndpointChain writes one KUBE-SEP-* chain: hairpin masquerade, affinity tracking,
// and the DNAT itself.
func (r *renderer) writeEndpointChain(p *portRules, ep model.Endpoint) {
	n := r.namesOf(p, ep)
	if r.kept[n.chain] {
		// Already in the kernel, rule for rule: keep it, unwritten. On the nft backend
		// rewriting a thousand-endpoint service's unchanged chains cost most of a sync.
		r.rec.active = append(r.rec.active, n.chain)
		r.keptRules += endpointChainRules
		return
	}
	r.declare(n.chain)
	// Hairpin: a pod reaching itself through the service must be masqueraded, or it
	// would answer its own packet directly and the client would drop the reply.
	r.own.rule(n.chain, append(r.endpointComment(p.name, ""), "-s", n.ip, "-j", ChainMarkMasq)...)
	args := r.endpointComment(p.name, "")
	if p.svc.StickyMaxAgeSeconds > 0 {
		args = append(args, "-m", "recent", "--name", n.chain, "--set")
	}
	r.own.rule(n.chain, append(args, "-m", p.proto, "-p", p.proto, "-j", "DNAT", "--to-destination", n.addrPort)...)
}

// endpointComment returns the comment match for per-endpoint rules, "name" or, with an
// endpoint, "name -> endpoint"; large clusters leave it out: those comments can be most
// of a payload of a hundred thousand rules. The slice is the renderer's scratch space
// (scratchArgs), valid until the next call; appending a rule's other arguments to it
// allocates nothing.
func (r *renderer) endpointComment(name, endpoint string) []string {
	r.args = r.args[:0]
	if r.largeCluster {
		return r.args
	}
	comment := name
	if endpoint != "" {
		comment = name + " -> " + endpoint
	}
	r.args = append(r.args, "-m", "comment", "--comment", comment)
	return r.args
}

// probability returns Probability(n), formatted once per render for each n.
func (r *renderer) probability(n int) string {
	for len(r.probs) <= n {
		r.probs = append(r.probs, "")
	}
	if r.probs[n] == "" {
		r.probs[n] = Probability(n)
	}
	return r.probs[n]
}

// Probability is the statistic-match probability string for picking one of n endpoints,
// formatted as upstream formats it so rule text is identical.
func Probability(n int) string { return fmt.Sprintf("%0.10f", 1.0/float64(n)) }

// endpointChainRules is the number of rules writeEndpointChain writes into a KUBE-SEP
// chain.
const endpointChainRules = 2

// keptEndpointChains returns the KUBE-SEP chains of a changed service port that an
// incremental render need not write again: those its previous record (old, nil for a
// port new to this render or a render that reuses no record) already owned, while the
// port records client affinity as it did then. A KUBE-SEP chain's name is hashed from the
// port's name, protocol and endpoint, and its rules are made of those, the affinity
// flag and the render-wide settings (comments in large clusters, the masquerade chain),
// which a render that reuses records shares with the previous one.
func keptEndpointChains(old *portRecord, svc *model.ServicePort) map[string]bool {
	if old == nil || old.affinity != (svc.StickyMaxAgeSeconds > 0) {
		return nil
	}
	kept := make(map[string]bool, len(old.active))
	for _, c := range old.active {
		if strings.HasPrefix(c, prefixServiceEndpoint) {
			kept[c] = true
		}
	}
	return kept
}
