package rules

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/kproxy-dev/kproxy/pkg/model"
)

// portRules holds what writeServicePort derives once for a service port.
type portRules struct {
	svc   *model.ServicePort
	name  string // "ns/name:port"
	proto string // "tcp", "udp", "sctp"
	port  string
	// Chains: cluster policy, local policy, external entry, load balancer firewall.
	svcChain, svlChain, extChain, fwChain string
}

// writeServicePort writes everything one service port needs (behaviour spec §1.4-1.5):
// dispatch from KUBE-SERVICES and KUBE-NODEPORTS, the filter rules for traffic that has no
// endpoint to go to, and the service's own SVC/SVL/EXT/FW/SEP chains.
func (r *renderer) writeServicePort(svc *model.ServicePort, eps []model.Endpoint) {
	hash := portHash(svc.Name)
	r.epKeys, r.epPorts, r.epNames = r.epKeys[:0], r.epPorts[:0], r.epNames[:0]
	p := portRules{
		svc:      svc,
		name:     svc.Name.String(),
		proto:    strings.ToLower(string(svc.Name.Protocol)),
		port:     strconv.Itoa(int(svc.Port)),
		svcChain: prefixService + hash,
		svlChain: prefixServiceLocal + hash,
		extChain: prefixExternal + hash,
		fwChain:  prefixFirewall + hash,
	}
	cat := model.CategorizeEndpoints(eps, svc, r.node)
	hasEndpoints := cat.HasAny
	usesClusterChain := len(cat.Cluster) > 0 && svc.UsesClusterEndpoints()
	usesLocalChain := len(cat.Local) > 0 && svc.UsesLocalEndpoints()

	internalChain, hasInternal := p.svcChain, hasEndpoints
	if svc.InternalPolicyLocal {
		internalChain = p.svlChain
		hasInternal = hasInternal && len(cat.Local) > 0
	}
	externalChain, hasExternal := p.svcChain, hasEndpoints
	if svc.ExternalPolicyLocal {
		externalChain = p.svlChain
		hasExternal = hasExternal && len(cat.Local) > 0
	}
	usesExtChain := hasEndpoints && svc.ExternallyAccessible()
	usesFWChain := hasEndpoints && len(svc.LoadBalancerVIPs) > 0 && len(svc.LoadBalancerSourceRanges) > 0
	lbChain := p.extChain
	if usesFWChain {
		lbChain = p.fwChain
	}

	// Traffic with nowhere to go: REJECT when the service has no endpoint at all (clients
	// learn at once), DROP when only the Local policy has none here (another node may
	// have one, and the client or load balancer should retry elsewhere).
	internalTarget, internalComment := "", ""
	externalTarget, externalComment := "", ""
	switch {
	case !hasEndpoints:
		internalTarget, internalComment = "REJECT", p.name+" has no endpoints"
		externalTarget, externalComment = internalTarget, internalComment
	default:
		if !hasInternal {
			internalTarget, internalComment = "DROP", p.name+" has no local endpoints"
			r.rec.noLocalInternal = true
		}
		if !hasExternal {
			externalTarget, externalComment = "DROP", p.name+" has no local endpoints"
			r.rec.noLocalExternal = true
		}
	}

	clusterIP := svc.ClusterIP.String()
	if hasInternal {
		r.rec.shared[natServices].rule(ChainServices, "-m", "comment", "--comment", p.name+" cluster IP",
			"-m", p.proto, "-p", p.proto, "-d", clusterIP, "--dport", p.port, "-j", internalChain)
	} else {
		r.rec.shared[filterServices].rule(ChainServices, "-m", "comment", "--comment", internalComment,
			"-m", p.proto, "-p", p.proto, "-d", clusterIP, "--dport", p.port, "-j", internalTarget)
	}

	for _, ip := range svc.ExternalIPs {
		dst := ip.String()
		if hasEndpoints {
			r.rec.shared[natServices].rule(ChainServices, "-m", "comment", "--comment", p.name+" external IP",
				"-m", p.proto, "-p", p.proto, "-d", dst, "--dport", p.port, "-j", p.extChain)
		}
		if !hasExternal {
			r.rec.shared[filterExternalServices].rule(ChainExternalServices, "-m", "comment", "--comment", externalComment,
				"-m", p.proto, "-p", p.proto, "-d", dst, "--dport", p.port, "-j", externalTarget)
		}
	}

	for _, ip := range svc.LoadBalancerVIPs {
		dst := ip.String()
		if hasEndpoints {
			r.rec.shared[natServices].rule(ChainServices, "-m", "comment", "--comment", p.name+" loadbalancer IP",
				"-m", p.proto, "-p", p.proto, "-d", dst, "--dport", p.port, "-j", lbChain)
		}
		if usesFWChain {
			// Packets KUBE-FW-* did not DNAT still carry the load balancer IP: drop them.
			r.rec.shared[filterProxyFirewall].rule(ChainProxyFirewall, "-m", "comment", "--comment", p.name+" traffic not accepted by "+p.fwChain,
				"-m", p.proto, "-p", p.proto, "-d", dst, "--dport", p.port, "-j", "DROP")
		}
	}
	if !hasExternal {
		for _, ip := range svc.LoadBalancerVIPs {
			r.rec.shared[filterExternalServices].rule(ChainExternalServices, "-m", "comment", "--comment", externalComment,
				"-m", p.proto, "-p", p.proto, "-d", ip.String(), "--dport", p.port, "-j", externalTarget)
		}
	}

	if svc.NodePort != 0 {
		nodePort := strconv.Itoa(int(svc.NodePort))
		if hasEndpoints {
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
		if !hasExternal {
			r.rec.shared[filterExternalServices].rule(ChainExternalServices, "-m", "comment", "--comment", externalComment,
				"-m", "addrtype", "--dst-type", "LOCAL", "-m", p.proto, "-p", p.proto, "--dport", nodePort, "-j", externalTarget)
		}
	}

	if svc.HealthCheckNodePort != 0 {
		// Load balancers probe this port whether or not we have local endpoints; the
		// answer (200 or 503) is the point, so a host firewall must let it through.
		r.rec.shared[filterNodePorts].rule(ChainNodePorts, "-m", "comment", "--comment", p.name+" health check node port",
			"-m", "tcp", "-p", "tcp", "--dport", strconv.Itoa(int(svc.HealthCheckNodePort)), "-j", "ACCEPT")
	}

	if hasInternal {
		// Cluster-IP traffic from outside the pod network (e.g. from the node itself) must
		// be masqueraded for the reply to find its way back. Without a way to tell pod
		// traffic apart, upstream writes no such rule unless everything is masqueraded.
		args := []string{"-m", "comment", "--comment", p.name + " cluster IP",
			"-m", p.proto, "-p", p.proto, "-d", clusterIP, "--dport", p.port}
		switch {
		case r.opts.MasqueradeAll:
			r.own.rule(internalChain, append(args, "-j", ChainMarkMasq)...)
		case r.opts.LocalDetector.Implemented():
			args = append(args, r.opts.LocalDetector.IfNotLocal...)
			r.own.rule(internalChain, append(args, "-j", ChainMarkMasq)...)
		}
	}

	if usesExtChain {
		r.writeExternalChain(p, externalChain, hasExternal)
	}
	if usesFWChain {
		r.writeFirewallChain(p)
	}
	if usesClusterChain {
		r.declare(p.svcChain)
		r.writeDispatch(p, p.svcChain, cat.Cluster)
	}
	if usesLocalChain {
		r.declare(p.svlChain)
		r.writeDispatch(p, p.svlChain, cat.Local)
	}
	for _, ep := range cat.AllReachable {
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
func (r *renderer) writeExternalChain(p portRules, policyChain string, hasExternal bool) {
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
	if hasExternal {
		r.own.rule(p.extChain, "-j", policyChain)
	}
}

// writeFirewallChain writes KUBE-FW-*: only the allowed sources reach KUBE-EXT-*; the rest
// falls through un-DNATed and is dropped by filter KUBE-PROXY-FIREWALL.
func (r *renderer) writeFirewallChain(p portRules) {
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
func (r *renderer) namesOf(p portRules, ep model.Endpoint) endpointNames {
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
func (r *renderer) writeDispatch(p portRules, chain string, endpoints []model.Endpoint) {
	if p.svc.StickyMaxAgeSeconds > 0 {
		seconds := strconv.Itoa(int(p.svc.StickyMaxAgeSeconds))
		for _, ep := range endpoints {
			n := r.namesOf(p, ep)
			args := r.endpointComment(p.name + " -> " + n.addrPort)
			r.own.rule(chain, append(args, "-m", "recent", "--name", n.chain, "--rcheck", "--seconds", seconds, "--reap", "-j", n.chain)...)
		}
	}
	count := len(endpoints)
	for i, ep := range endpoints {
		n := r.namesOf(p, ep)
		args := r.endpointComment(p.name + " -> " + n.addrPort)
		if i < count-1 {
			args = append(args, "-m", "statistic", "--mode", "random", "--probability", r.probability(count-i))
		}
		r.own.rule(chain, append(args, "-j", n.chain)...)
	}
}

// writeEndpointChain writes one KUBE-SEP-* chain: hairpin masquerade, affinity tracking,
// and the DNAT itself.
func (r *renderer) writeEndpointChain(p portRules, ep model.Endpoint) {
	n := r.namesOf(p, ep)
	r.declare(n.chain)
	// Hairpin: a pod reaching itself through the service must be masqueraded, or it
	// would answer its own packet directly and the client would drop the reply.
	r.own.rule(n.chain, append(r.endpointComment(p.name), "-s", n.ip, "-j", ChainMarkMasq)...)
	args := r.endpointComment(p.name)
	if p.svc.StickyMaxAgeSeconds > 0 {
		args = append(args, "-m", "recent", "--name", n.chain, "--set")
	}
	r.own.rule(n.chain, append(args, "-m", p.proto, "-p", p.proto, "-j", "DNAT", "--to-destination", n.addrPort)...)
}

// endpointComment returns the comment match for per-endpoint rules, which large clusters
// leave out: those comments can be most of a payload of a hundred thousand rules. The
// slice is the renderer's scratch space, valid until the next call.
func (r *renderer) endpointComment(comment string) []string {
	r.args = r.args[:0]
	if r.largeCluster {
		return r.args
	}
	return append(r.args, "-m", "comment", "--comment", comment)
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
