package diagnose

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// SysctlReader reads a kernel parameter by its /proc/sys path, such as
// "net/ipv4/ip_forward". nodesetup.NewProcSysctl(nodesetup.HostRoot) is the real one.
// The net.* parameters are per network namespace and a read answers for the namespace
// of the thread that opens the file, so a reader called inside netnstest.Do reads
// that namespace's values.
type SysctlReader interface {
	// Get returns the parameter's value without surrounding white space; an error
	// wrapping fs.ErrNotExist when the kernel has no such parameter.
	Get(name string) (string, error)
}

// BridgeLister lists the node's Linux bridges.
type BridgeLister interface {
	// Bridges returns the names of the bridge interfaces, sorted.
	Bridges() ([]string, error)
}

// NetlinkBridges is the BridgeLister of the calling thread's network namespace. It asks
// netlink rather than reading /sys/class/net, because sysfs shows the links of the
// namespace it was mounted in, which is not the caller's inside netnstest.Do or a
// container without its own /sys mount.
type NetlinkBridges struct{}

// Bridges implements BridgeLister.
func (NetlinkBridges) Bridges() ([]string, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("listing network interfaces: %w", err)
	}
	var names []string
	for _, l := range links {
		if l.Type() == "bridge" {
			names = append(names, l.Attrs().Name)
		}
	}
	slices.Sort(names)
	return names, nil
}

// NodeInputs are what NodeChecks reads and what it checks against. Every reader must be
// set.
type NodeInputs struct {
	// Sysctl reads the kernel parameters.
	Sysctl SysctlReader
	// Bridges lists the node's bridges: br_netfilter matters only where pods hang off
	// a bridge.
	Bridges BridgeLister
	// Lock probes the xtables lock (XTablesLock in production).
	Lock LockProber
	// Families are the IP families kproxy proxies (IPv4, IPv6); IPv4 alone when
	// empty. Other values are ignored.
	Families []v1.IPFamily
	// LocalhostNodePorts is true when node ports answer on 127.0.0.1 (kube-proxy's
	// --iptables-localhost-nodeports with an IPv4 loopback address among the node
	// port addresses, which the default, every address, includes); they need
	// route_localnet.
	LocalhostNodePorts bool
	// Backend is the backend kproxy programs, "" when unknown. Only the legacy
	// backend takes the xtables lock, so a held lock stops kproxy's syncs only then.
	Backend iptables.Backend
}

// familySysctls are the per-family parameters NodeChecks reads.
var familySysctls = []struct {
	family v1.IPFamily
	// forwarding must be 1 for the node to route Service traffic to pods and other
	// nodes.
	forwarding string
	// bridgeCall must be 1 for bridged traffic to go through this family's iptables.
	bridgeCall string
}{
	{v1.IPv4Protocol, "net/ipv4/ip_forward", "net/bridge/bridge-nf-call-iptables"},
	{v1.IPv6Protocol, "net/ipv6/conf/all/forwarding", "net/bridge/bridge-nf-call-ip6tables"},
}

// Other parameters NodeChecks reads.
const (
	sysctlRouteLocalnet  = "net/ipv4/conf/all/route_localnet"
	sysctlConntrackCount = "net/netfilter/nf_conntrack_count"
	sysctlConntrackMax   = "net/netfilter/nf_conntrack_max"
)

// Conntrack fill levels, in percent of nf_conntrack_max, above which the table is a
// warning and a problem. At 100% the kernel drops the first packet of every new
// connection ("nf_conntrack: table full, dropping packet"); a table over 95% full gets
// there with the next burst, one over 80% with the next spike of traffic.
const (
	conntrackWarningPercent = 80
	conntrackProblemPercent = 95
)

// NodeChecks checks the node's kernel settings that Services need, in the network
// namespace of the calling thread: forwarding and br_netfilter for each family,
// route_localnet when localhost node ports are on, the conntrack table's fill level,
// and the xtables lock. It returns one finding per check.
func NodeChecks(ctx context.Context, in NodeInputs) []Finding {
	families := in.Families
	if len(families) == 0 {
		families = []v1.IPFamily{v1.IPv4Protocol}
	}
	bridges, bridgesErr := in.Bridges.Bridges()
	var out []Finding
	for _, s := range familySysctls {
		if !slices.Contains(families, s.family) {
			continue
		}
		out = append(out,
			forwardingFinding(s.family, readSysctl(in.Sysctl, s.forwarding)),
			bridgeFinding(s.family, readSysctl(in.Sysctl, s.bridgeCall), bridges, bridgesErr))
	}
	if in.LocalhostNodePorts && slices.Contains(families, v1.IPv4Protocol) {
		out = append(out, routeLocalnetFinding(readSysctl(in.Sysctl, sysctlRouteLocalnet)))
	}
	out = append(out, conntrackFinding(readSysctl(in.Sysctl, sysctlConntrackCount), readSysctl(in.Sysctl, sysctlConntrackMax)))
	state, err := in.Lock.Probe(ctx)
	out = append(out, lockFinding(state, err, in.Backend))
	return out
}

// sysctlValue is one parameter as read: its value or why it could not be read.
type sysctlValue struct {
	name  string
	value string
	err   error
}

func readSysctl(s SysctlReader, name string) sysctlValue {
	v, err := s.Get(name)
	return sysctlValue{name: name, value: v, err: err}
}

// dotted is the parameter's name as sysctl(8) spells it.
func (v sysctlValue) dotted() string { return strings.ReplaceAll(v.name, "/", ".") }

// evidence is the parameter and its value, or the read error.
func (v sysctlValue) evidence() string {
	if v.err != nil {
		return fmt.Sprintf("%s: %v", v.dotted(), v.err)
	}
	return fmt.Sprintf("%s = %s", v.dotted(), v.value)
}

// unreadable is the finding of a check whose input could not be read. It is a warning,
// not a problem: the diagnosis does not know, and most often it runs without the
// privileges or the namespace it needs.
func unreadable(id, what string, evidence ...string) Finding {
	return Finding{ID: id, Severity: Warning, Title: "cannot read " + what, Evidence: evidence,
		Fix: "run kproxy diagnose as root in the node's network namespace (on the node, or in a hostNetwork pod)"}
}

// forwardingFinding checks that the node forwards family's packets: Service traffic
// DNATed to a pod, to another node or from a node port is forwarded, and the kernel
// drops it when forwarding is off.
func forwardingFinding(family v1.IPFamily, v sysctlValue) Finding {
	id := "node/ip-forward/" + string(family)
	if v.err != nil {
		return unreadable(id, string(family)+" forwarding", v.evidence())
	}
	if v.value == "1" {
		return Finding{ID: id, Severity: OK, Title: fmt.Sprintf("%s forwarding is on", family), Evidence: []string{v.evidence()}}
	}
	return Finding{ID: id, Severity: Problem,
		Title:    fmt.Sprintf("%s forwarding is off: the node drops Service traffic to pods and other nodes", family),
		Evidence: []string{v.evidence()},
		Fix:      fmt.Sprintf("sysctl -w %s=1 (and persist it in /etc/sysctl.d/)", v.dotted())}
}

// bridgeFinding checks that bridged traffic goes through family's iptables. Pods that
// hang off a Linux bridge (bridge and flannel CNIs, kubenet, docker0) reach a Service
// whose endpoint is on the same bridge by bridging, not routing; without br_netfilter
// and bridge-nf-call-iptables the reply skips the un-DNAT and the client drops it, so
// Services fail between pods of one node. Routed CNIs create no bridge and do not need
// it, which is why the bridges are listed.
func bridgeFinding(family v1.IPFamily, v sysctlValue, bridges []string, bridgesErr error) Finding {
	id := "node/bridge-netfilter/" + string(family)
	notLoaded := errors.Is(v.err, fs.ErrNotExist)
	if v.err != nil && !notLoaded {
		return unreadable(id, v.dotted(), v.evidence())
	}
	evidence := []string{v.evidence()}
	if notLoaded {
		evidence = []string{v.dotted() + ": absent, br_netfilter is not loaded"}
	}
	switch {
	case bridgesErr != nil:
		evidence = append(evidence, fmt.Sprintf("bridges: unknown (%v)", bridgesErr))
	case len(bridges) == 0:
		evidence = append(evidence, "bridges: none")
	default:
		evidence = append(evidence, "bridges: "+strings.Join(bridges, ", "))
	}
	switch {
	case !notLoaded && v.value == "1":
		return Finding{ID: id, Severity: OK, Title: fmt.Sprintf("bridged %s traffic goes through iptables", family), Evidence: evidence}
	case bridgesErr != nil:
		return unreadable(id, "the bridges, to tell whether bridged pod traffic must reach iptables", evidence...)
	case len(bridges) == 0:
		return Finding{ID: id, Severity: OK, Title: fmt.Sprintf("bridged %s traffic bypasses iptables, which is fine: no bridge on this node", family),
			Evidence: evidence}
	}
	f := Finding{ID: id, Severity: Problem, Evidence: evidence}
	if notLoaded {
		f.Title = "br_netfilter is not loaded: Services fail between pods on the same bridge"
		f.Fix = fmt.Sprintf("modprobe br_netfilter && sysctl -w %s=1 (and persist both in /etc/modules-load.d/ and /etc/sysctl.d/)", v.dotted())
	} else {
		f.Title = fmt.Sprintf("bridged %s traffic bypasses iptables: Services fail between pods on the same bridge", family)
		f.Fix = fmt.Sprintf("sysctl -w %s=1 (and persist it in /etc/sysctl.d/)", v.dotted())
	}
	return f
}

// routeLocalnetFinding checks route_localnet, without which the kernel drops packets to
// 127.0.0.0/8 that a localhost node port rule DNATs elsewhere as martians. kproxy sets it
// at start, so a 0 means something reset it since.
func routeLocalnetFinding(v sysctlValue) Finding {
	const id = "node/route-localnet"
	if v.err != nil {
		return unreadable(id, v.dotted(), v.evidence())
	}
	if v.value == "1" {
		return Finding{ID: id, Severity: OK, Title: "route_localnet is on, as localhost node ports need", Evidence: []string{v.evidence()}}
	}
	return Finding{ID: id, Severity: Problem, Title: "route_localnet is off: node ports on 127.0.0.1 do not answer",
		Evidence: []string{v.evidence()},
		Fix:      fmt.Sprintf("sysctl -w %s=1, or restart kproxy, which sets it at start", v.dotted())}
}

// conntrackFinding checks how full the conntrack table is (see conntrackWarningPercent).
func conntrackFinding(count, maxEntries sysctlValue) Finding {
	const id = "node/conntrack-fill"
	const what = "the conntrack table's fill level"
	evidence := []string{count.evidence(), maxEntries.evidence()}
	if count.err != nil || maxEntries.err != nil {
		// Both absent means nf_conntrack is not loaded, and so kproxy's rules,
		// which load it, are not in place either: the backend checks say more.
		return unreadable(id, what, evidence...)
	}
	n, err := strconv.ParseInt(count.value, 10, 64)
	if err != nil {
		return unreadable(id, what, append(evidence, err.Error())...)
	}
	limit, err := strconv.ParseInt(maxEntries.value, 10, 64)
	if err != nil || limit <= 0 {
		return unreadable(id, what, append(evidence, fmt.Sprintf("%s is not a positive integer", maxEntries.dotted()))...)
	}
	percent := float64(n) * 100 / float64(limit)
	f := Finding{ID: id, Severity: OK, Title: fmt.Sprintf("conntrack table is %.1f%% full", percent), Evidence: evidence}
	// Integer comparisons, so that the thresholds are exact: "above 95%" is above.
	switch {
	case n*100 > limit*conntrackProblemPercent:
		f.Severity = Problem
		f.Title += ": new connections are dropped once it is full"
	case n*100 > limit*conntrackWarningPercent:
		f.Severity = Warning
		f.Title += fmt.Sprintf(" (over %d%%)", conntrackWarningPercent)
	default:
		return f
	}
	f.Fix = fmt.Sprintf("raise the limit (sysctl -w %s=%d, or conntrack.maxPerCore in kproxy's configuration) and find what fills it (conntrack -L)",
		maxEntries.dotted(), 2*limit)
	return f
}
