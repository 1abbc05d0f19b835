package diagnose

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/conntrack"
	"github.com/kproxy-dev/kproxy/pkg/debugstate"
)

// ServiceInputs are what ServiceChecks reads about one Service in one IP family.
type ServiceInputs struct {
	// Service is "namespace/name".
	Service string
	Family  v1.IPFamily
	// State is the family's entry of the daemon's debug document.
	State debugstate.Family
	// Kernel is iptables-save output of the family's nat table (filter may follow).
	Kernel []byte
	// UDPFlows are the family's UDP conntrack entries; nil when they could not be read,
	// which leaves out the stale-entry check.
	UDPFlows []conntrack.Flow
}

// ServiceChecks explains what the node does with one Service: for each of its ports, the
// endpoints by condition and place, the kernel chains that carry it, and the verdict
// traffic gets (rejected without endpoints, dropped by a Local policy without a local
// endpoint); and, for UDP ports, conntrack entries that still send traffic to endpoints
// that are gone.
func ServiceChecks(in ServiceInputs) []Finding {
	idBase := "service/" + in.Service
	ports := servicePorts(in.State, in.Service)
	if len(ports) == 0 {
		if line, ok := in.State.Rejected[in.Service]; ok {
			return []Finding{{ID: idBase + "/" + string(in.Family), Severity: Problem,
				Title:    fmt.Sprintf("the kernel rejected %s's %s rules: kproxy left it out and programs the others", in.Service, in.Family),
				Evidence: []string{"rejected line: " + line},
				Fix:      "change the Service (what the kernel refuses is in kproxy's log with the failing line); kproxy retries it when it changes"}}
		}
		return []Finding{{ID: idBase + "/" + string(in.Family), Severity: Problem,
			Title:    fmt.Sprintf("kproxy programs no %s port of %s", in.Family, in.Service),
			Evidence: []string{fmt.Sprintf("%d service ports programmed, none of %s", len(in.State.Services), in.Service)},
			Fix:      "check that it exists, is not headless (clusterIP: None), has no service.kubernetes.io/service-proxy-name label, and has a " + string(in.Family) + " cluster IP"}}
	}
	kernel := parseSave(in.Kernel)
	var out []Finding
	for _, sp := range ports {
		out = append(out, portFinding(in.Family, sp, chainsCarrying(kernel, sp.Name)))
		if sp.Protocol == string(v1.ProtocolUDP) && in.UDPFlows != nil {
			out = append(out, staleUDPFinding(in.Family, sp, in.UDPFlows))
		}
	}
	return out
}

// Programs reports whether a family's state holds a port of service ("namespace/name")
// or left it out as rejected: a single-stack Service is in one family only, and the
// other family's checks are not about it.
func Programs(state debugstate.Family, service string) bool {
	_, rejected := state.Rejected[service]
	return rejected || len(servicePorts(state, service)) > 0
}

// servicePorts are the ports of service ("namespace/name") in state.
func servicePorts(state debugstate.Family, service string) []debugstate.ServicePort {
	var ports []debugstate.ServicePort
	for _, sp := range state.Services {
		if strings.HasPrefix(sp.Name, service+":") || sp.Name == service {
			ports = append(ports, sp)
		}
	}
	return ports
}

// endpointCounts sorts a port's endpoints into what kproxy chooses by.
type endpointCounts struct {
	readyLocal, readyElsewhere []string
	// terminating are serving but terminating: used only when none is ready.
	terminating []string
	notServing  []string
}

func countEndpoints(eps []debugstate.Endpoint) endpointCounts {
	var c endpointCounts
	for _, ep := range eps {
		switch {
		case ep.Ready && ep.Local:
			c.readyLocal = append(c.readyLocal, ep.Address)
		case ep.Ready:
			c.readyElsewhere = append(c.readyElsewhere, ep.Address)
		case ep.Serving && ep.Terminating:
			c.terminating = append(c.terminating, ep.Address)
		default:
			c.notServing = append(c.notServing, ep.Address)
		}
	}
	return c
}

// portFinding is one service port's verdict with its endpoints and chains as evidence.
func portFinding(family v1.IPFamily, sp debugstate.ServicePort, chains []string) Finding {
	f := Finding{ID: "service/" + sp.Name + "/" + string(family), Severity: OK}
	c := countEndpoints(sp.Endpoints)
	f.Evidence = append(f.Evidence, frontends(sp))
	f.Evidence = append(f.Evidence,
		fmt.Sprintf("endpoints ready on this node: %s", list(c.readyLocal)),
		fmt.Sprintf("endpoints ready elsewhere: %s", list(c.readyElsewhere)),
		fmt.Sprintf("endpoints serving but terminating: %s", list(c.terminating)),
		fmt.Sprintf("endpoints not serving: %s", list(c.notServing)),
		fmt.Sprintf("kernel chains carrying it: %s", list(chains)))
	usable := len(c.readyLocal) + len(c.readyElsewhere) + len(c.terminating)
	usableLocal := len(c.readyLocal)
	if usableLocal == 0 && len(c.readyElsewhere) == 0 {
		usableLocal = len(c.terminating) // terminating endpoints count only without ready ones
	}
	externallyAccessible := sp.NodePort != 0 || len(sp.ExternalIPs) > 0 || len(sp.LoadBalancerIPs) > 0
	switch {
	case len(chains) == 0:
		f.Severity = Problem
		f.Title = fmt.Sprintf("%s (%s) is programmed by kproxy but no rule in the kernel carries it", sp.Name, family)
		f.Fix = "another program removed kproxy's rules; kproxy restores them within its sync period (see the rules findings), or restart it"
	case usable == 0:
		f.Severity = Problem
		f.Title = fmt.Sprintf("%s (%s) has no serving endpoint: connections are rejected", sp.Name, family)
		f.Fix = "check the Service's selector matches ready pods (kubectl get endpointslices -l kubernetes.io/service-name=NAME) and why they are not ready"
	case sp.InternalPolicyLocal && usableLocal == 0:
		f.Severity = Problem
		f.Title = fmt.Sprintf("%s (%s): pods on this node reach no endpoint (internalTrafficPolicy: Local, none here): dropped", sp.Name, family)
		f.Fix = "run an endpoint on every node that uses it (a DaemonSet), or set internalTrafficPolicy: Cluster"
	case sp.ExternalPolicyLocal && externallyAccessible && usableLocal == 0:
		f.Severity = Warning
		f.Title = fmt.Sprintf("%s (%s): this node drops external traffic (externalTrafficPolicy: Local, no endpoint here)", sp.Name, family)
		f.Fix = "expected when load balancers follow the health check node port; send clients only to nodes with endpoints, or set externalTrafficPolicy: Cluster"
	default:
		f.Title = fmt.Sprintf("%s (%s) has %d usable endpoints, %d on this node", sp.Name, family, usable, usableLocal)
	}
	return f
}

// frontends describes where a port answers.
func frontends(sp debugstate.ServicePort) string {
	var parts []string
	if sp.ClusterIP != "" {
		parts = append(parts, "cluster IP "+hostPort(sp.ClusterIP, sp.Port))
	}
	if sp.NodePort != 0 {
		parts = append(parts, fmt.Sprintf("node port %d", sp.NodePort))
	}
	for _, ip := range sp.ExternalIPs {
		parts = append(parts, "external IP "+hostPort(ip, sp.Port))
	}
	for _, ip := range sp.LoadBalancerIPs {
		parts = append(parts, "load balancer "+hostPort(ip, sp.Port))
	}
	policies := ""
	if sp.ExternalPolicyLocal {
		policies += ", externalTrafficPolicy: Local"
	}
	if sp.InternalPolicyLocal {
		policies += ", internalTrafficPolicy: Local"
	}
	return fmt.Sprintf("%s %s%s", strings.ToLower(sp.Protocol), strings.Join(parts, ", "), policies)
}

// chainsCarrying lists the kernel's chains with a rule whose comment names the port.
func chainsCarrying(kernel savedRules, port string) []string {
	var out []string
	for key, rules := range kernel {
		if slices.ContainsFunc(rules, func(r string) bool { return ruleService(r) == port }) {
			out = append(out, key.String())
		}
	}
	slices.Sort(out)
	return out
}

// staleUDPFinding looks for UDP entries to the port's frontends whose reply comes from
// an address that is no longer a serving endpoint: until they expire, they keep sending
// a client's packets to a pod that is gone.
func staleUDPFinding(family v1.IPFamily, sp debugstate.ServicePort, flows []conntrack.Flow) Finding {
	f := Finding{ID: "service/" + sp.Name + "/" + string(family) + "/conntrack"}
	serving := map[netip.AddrPort]bool{}
	for _, ep := range sp.Endpoints {
		if ap, err := netip.ParseAddrPort(ep.Address); err == nil && (ep.Ready || ep.Serving) {
			serving[ap] = true
		}
	}
	vips := map[netip.AddrPort]bool{}
	for _, ip := range slices.Concat([]string{sp.ClusterIP}, sp.ExternalIPs, sp.LoadBalancerIPs) {
		if a, err := netip.ParseAddr(ip); err == nil {
			vips[netip.AddrPortFrom(a, uint16(sp.Port))] = true
		}
	}
	var stale []string
	for _, fl := range flows {
		toFrontend := vips[fl.OrigDst] || (sp.NodePort != 0 && fl.OrigDst.Port() == uint16(sp.NodePort))
		if fl.Protocol == v1.ProtocolUDP && toFrontend && !serving[fl.ReplySrc] && fl.ReplySrc != fl.OrigDst {
			stale = append(stale, fl.String())
		}
	}
	if len(stale) == 0 {
		f.Severity = OK
		f.Title = fmt.Sprintf("no UDP conntrack entry of %s (%s) points at a gone endpoint", sp.Name, family)
		return f
	}
	slices.Sort(stale)
	f.Severity = Problem
	f.Title = fmt.Sprintf("%d UDP conntrack entries of %s (%s) still send traffic to endpoints that are gone", len(stale), sp.Name, family)
	f.Evidence = stale
	f.Fix = fmt.Sprintf("delete them: conntrack -D -p udp --orig-dst %s --dport %d (kproxy deletes such entries after each sync that removes an endpoint; look for cleanup errors in its log)",
		sp.ClusterIP, sp.Port)
	return f
}

func hostPort(ip string, port int32) string {
	if a, err := netip.ParseAddr(ip); err == nil {
		return netip.AddrPortFrom(a, uint16(port)).String()
	}
	return ip + ":" + strconv.Itoa(int(port))
}

func list(items []string) string {
	if len(items) == 0 {
		return "none"
	}
	return strings.Join(items, ", ")
}
