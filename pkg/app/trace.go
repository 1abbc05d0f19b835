package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"

	"github.com/kproxy-dev/kproxy/pkg/config"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

// traceOptions are `kproxy trace`'s flags, as given.
type traceOptions struct {
	proto    string
	fromFile string
	backend  string
	nodeIPs  []string
	inIface  string
	output   string
}

// traceNode is the SRC that stands for the node itself, whichever address it sends from.
const traceNode = "node"

func newTraceCommand() *cobra.Command {
	o := &traceOptions{proto: "tcp", backend: config.IPTablesBackendAuto, output: "text"}
	cmd := &cobra.Command{
		Use:   "trace SRC DST:PORT [--proto tcp|udp|sctp] [--from-file SAVE] [--iptables-backend auto|legacy|nft] [--node-ip IP ...] [--in-interface IFACE] [-o text|json]",
		Short: "Explain what the node's rules do to a new connection from SRC to DST:PORT",
		Long: `trace walks the first packet of a new connection through the node's nat and filter
rules, as iptables-save prints them, and says which Service rules it passes, which
endpoints it may be sent to and how likely each is, whether it is masqueraded and by which
rule, and whether it is accepted, rejected (a Service without endpoints) or dropped
(externalTrafficPolicy Local without a local endpoint, a load balancer's source ranges).

SRC is a pod's or an outside client's address (the packet arrives at the node: nat
PREROUTING, then filter FORWARD or INPUT), or "node" or one of the node's own addresses
(the node sends it: nat and filter OUTPUT). The rules are the live ones of this network
namespace (run as root), or an iptables-save file with both tables (--from-file, e.g.
from "iptables-save > node-1.save" on the node). Rules the tracer does not model are
reported as errors naming the match, never guessed.`,
		Example: `  kproxy trace 10.244.1.5 10.96.0.10:53 --proto udp
  kproxy trace node 192.168.10.11:30080
  kproxy trace 203.0.113.9 198.51.100.7:443 --from-file node-1.save --node-ip 192.168.10.11 -o json`,
		Args: cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			req, err := parseTraceRequest(args, o)
			if err != nil {
				return err
			}
			return runTrace(cmd.Context(), cmd.OutOrStdout(), req)
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.proto, "proto", o.proto, "Protocol of the connection: tcp, udp or sctp.")
	fs.StringVar(&o.fromFile, "from-file", "", "Read the rules from this iptables-save output (nat and filter tables) instead of the kernel.")
	fs.StringVar(&o.backend, "iptables-backend", o.backend, "Backend whose rules to read: auto, legacy or nft (auto picks the one in use). Ignored with --from-file.")
	fs.StringVar(&o.inIface, "in-interface", "", "The interface the packet arrives on, for rules that match one (--detect-local-mode BridgeInterface or InterfaceNamePrefix); without it such a rule is an error.")
	fs.StringArrayVar(&o.nodeIPs, "node-ip", nil, "An address of the node (repeatable); default: the addresses of this namespace's interfaces (required with --from-file).")
	fs.StringVarP(&o.output, "output", "o", o.output, "Output format: text or json.")
	return cmd
}

// traceRequest is a validated `kproxy trace` invocation.
type traceRequest struct {
	// src is the packet's source; invalid when srcIsNode.
	src       netip.Addr
	srcIsNode bool
	dst       netip.AddrPort
	proto     string
	inIface   string
	fromFile  string
	backend   string
	// nodeIPs are the node's addresses of dst's family; nil means the interfaces'.
	nodeIPs []netip.Addr
	json    bool
}

// family is the IP family of the traced packet.
func (r traceRequest) family() v1.IPFamily { return familyOf(r.dst.Addr()) }

// parseTraceRequest checks trace's arguments and flags; it touches nothing.
func parseTraceRequest(args []string, o *traceOptions) (traceRequest, error) {
	req := traceRequest{fromFile: o.fromFile, backend: o.backend, inIface: o.inIface}
	dst, err := netip.ParseAddrPort(args[1])
	if err != nil {
		return req, fmt.Errorf("trace: DST:PORT %q: want an address and a port, e.g. 10.96.0.10:53 or [fd00::10]:53", args[1])
	}
	if dst.Port() == 0 {
		return req, fmt.Errorf("trace: DST:PORT %q: port 0", args[1])
	}
	req.dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
	if args[0] == traceNode {
		req.srcIsNode = true
	} else {
		src, err := netip.ParseAddr(args[0])
		if err != nil {
			return req, fmt.Errorf("trace: SRC %q: want an address or %q", args[0], traceNode)
		}
		req.src = src.Unmap()
		if req.src.Is4() != req.dst.Addr().Is4() {
			return req, fmt.Errorf("trace: SRC %s and DST %s are of different IP families", req.src, req.dst.Addr())
		}
	}
	if req.srcIsNode && req.inIface != "" {
		return req, fmt.Errorf("trace: --in-interface is for packets arriving at the node, not for SRC %q", traceNode)
	}
	switch req.proto = strings.ToLower(o.proto); req.proto {
	case "tcp", "udp", "sctp":
	default:
		return req, fmt.Errorf("trace: --proto %q: want tcp, udp or sctp", o.proto)
	}
	if errs := config.ValidateIPTablesBackend(o.backend, nil); len(errs) > 0 {
		return req, fmt.Errorf("trace: --iptables-backend: %w", errs.ToAggregate())
	}
	switch o.output {
	case "text":
	case "json":
		req.json = true
	default:
		return req, fmt.Errorf("trace: -o %q: want text or json", o.output)
	}
	for _, s := range o.nodeIPs {
		ip, err := netip.ParseAddr(s)
		if err != nil {
			return req, fmt.Errorf("trace: --node-ip %q: %w", s, err)
		}
		// A dual-stack node has addresses of both families; only dst's matter.
		if ip = ip.Unmap(); familyOf(ip) == req.family() {
			req.nodeIPs = append(req.nodeIPs, ip)
		}
	}
	switch {
	case len(o.nodeIPs) > 0 && len(req.nodeIPs) == 0:
		return req, fmt.Errorf("trace: no --node-ip of DST's family %s", req.family())
	case o.fromFile != "" && len(o.nodeIPs) == 0:
		// This machine's addresses are not those of the node that saved the file, and
		// which destinations are local decides node ports.
		return req, fmt.Errorf("trace: --from-file needs the node's addresses (--node-ip)")
	}
	return req, nil
}

// runTrace reads the rules and the node's addresses, traces and prints.
func runTrace(ctx context.Context, out io.Writer, req traceRequest) error {
	logger := klog.FromContext(ctx)
	nodeIPs := req.nodeIPs
	if nodeIPs == nil {
		var err error
		if nodeIPs, err = localAddrs(req.family())(); err != nil {
			return fmt.Errorf("trace: %w (or pass --node-ip)", err)
		}
	}
	tables, source, err := loadTraceRules(ctx, req)
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	logger.V(2).Info("Tracing", "rules", source, "nodeIPs", nodeIPs)
	report, err := traceRules(tables, source, req, nodeIPs)
	if err != nil {
		return fmt.Errorf("trace: %w", err)
	}
	if req.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		// Rule comments hold "->"; the document is for tools and people, not HTML.
		enc.SetEscapeHTML(false)
		return enc.Encode(report)
	}
	_, err = io.WriteString(out, report.text())
	return err
}

// loadTraceRules reads the nat and filter tables from the file or from the kernel, and
// says where they came from.
func loadTraceRules(ctx context.Context, req traceRequest) (ruleset.Tables, string, error) {
	var save []byte
	source := ""
	if req.fromFile != "" {
		var err error
		if save, err = os.ReadFile(req.fromFile); err != nil {
			return nil, "", fmt.Errorf("reading the rules: %w", err)
		}
		source = "file " + req.fromFile
	} else {
		backend, err := chooseBackend(ctx, &config.Config{IPTablesBackend: req.backend})
		if err != nil {
			return nil, "", err
		}
		ipt, err := iptables.New(req.family(), backend, iptables.DefaultWait)
		if err != nil {
			return nil, "", err
		}
		for _, table := range []string{"nat", "filter"} {
			b, err := ipt.Save(ctx, table)
			if err != nil {
				return nil, "", fmt.Errorf("reading the %s table: %w", table, err)
			}
			save = append(save, b...)
		}
		source = iptables.BinaryName(req.family(), backend, "save")
	}
	tables, err := ruleset.ParseSave(save)
	if err != nil {
		return nil, "", fmt.Errorf("%s: %w", source, err)
	}
	for _, table := range []string{"nat", "filter"} {
		if _, ok := tables[table]; !ok {
			// Tracing without a table would silently skip its rules.
			return nil, "", fmt.Errorf("%s has no %s table: save both (iptables-save without -t)", source, table)
		}
	}
	return tables, source, nil
}

// traceRules traces req's packet through tables, read from source, for a node with
// nodeIPs.
func traceRules(tables ruleset.Tables, source string, req traceRequest, nodeIPs []netip.Addr) (*traceReport, error) {
	pkt, err := tracePacketOf(req, nodeIPs)
	if err != nil {
		return nil, err
	}
	// The mark KUBE-MARK-MASQ sets is whatever --iptables-masquerade-bit the proxy ran
	// with; the rules say it.
	mark, err := tables.MarkSetBy("nat", rules.ChainMarkMasq)
	if err != nil {
		return nil, err
	}
	tr := &ruleset.Tracer{Tables: tables, LocalAddrs: nodeIPs, MasqueradeMark: mark}
	res, err := tr.Trace(pkt)
	if err != nil {
		return nil, err
	}
	return newTraceReport(res, source, nodeIPs), nil
}

// tracePacketOf is the packet req describes. The node sends from its first address that
// is not a loopback one (the address of its default route, usually), or from loopback
// to a loopback destination; any of its addresses as SRC means the node sends it.
func tracePacketOf(req traceRequest, nodeIPs []netip.Addr) (ruleset.Packet, error) {
	pkt := ruleset.Packet{Src: req.src, Dst: req.dst.Addr(), Proto: req.proto, DPort: int(req.dst.Port()), InIface: req.inIface}
	switch {
	case req.srcIsNode && pkt.Dst.IsLoopback():
		pkt.Src = pkt.Dst
	case req.srcIsNode:
		i := slices.IndexFunc(nodeIPs, func(a netip.Addr) bool { return !a.IsLoopback() })
		if i < 0 {
			return pkt, fmt.Errorf("the node has no %s address to send from: give one as SRC or with --node-ip", req.family())
		}
		pkt.Src = nodeIPs[i]
	}
	pkt.FromLocal = req.srcIsNode || pkt.Src.IsLoopback() || slices.Contains(nodeIPs, pkt.Src)
	if pkt.FromLocal && pkt.InIface != "" {
		return pkt, fmt.Errorf("--in-interface is for packets arriving at the node; %s is the node's own address", pkt.Src)
	}
	return pkt, nil
}

// Verdict actions of a trace report, besides the tracer's own (ruleset.Verdict*).
const (
	traceDNAT       = "DNAT"
	traceNoService  = "NOT_A_SERVICE"
	traceMixed      = "MIXED"
	directionArrive = "arriving"
	directionLocal  = "local"
)

// traceReport is what `kproxy trace` prints; with -o json, this document. Fields are
// only ever added, so tools may rely on them.
type traceReport struct {
	// Packet is the traced packet: the first of a new connection.
	Packet tracePacket `json:"packet"`
	// Rules says where the rules were read: the iptables-save binary that printed the
	// kernel's ("iptables-nft-save"), or "file PATH".
	Rules string `json:"rules"`
	// NodeIPs are the addresses taken as the node's (addrtype LOCAL), of the packet's
	// family.
	NodeIPs []string `json:"nodeIPs"`
	// Paths are every way the packet may take, one per endpoint a random choice may
	// pick, in the Service chain's order, each with every rule that acted on it.
	Paths []ruleset.Path `json:"paths"`
	// Endpoints are the DNAT destinations over all paths, each with the chance that a new
	// connection reaches it; empty when the destination is not rewritten.
	Endpoints []traceEndpoint `json:"endpoints"`
	// Masquerade is "yes", "no" or "some paths" (e.g. only the path back to the pod that
	// sent the packet: hairpin).
	Masquerade string `json:"masquerade"`
	// MasqueradeReasons say why, in words: the rule that marked the packet, or each rule
	// that would have and why it did not match; per path when the paths differ.
	MasqueradeReasons []string `json:"masqueradeReasons"`
	// Verdict is the outcome.
	Verdict traceVerdict `json:"verdict"`
	// Notes are assumptions the trace made (session affinity: a first connection).
	Notes []string `json:"notes,omitempty"`
}

// tracePacket is the traced packet.
type tracePacket struct {
	Source      string `json:"source"`
	Destination string `json:"destination"`
	Port        int    `json:"port"`
	// Protocol is "tcp", "udp" or "sctp".
	Protocol string `json:"protocol"`
	// Direction is "arriving" (from a pod or another host: nat PREROUTING, filter
	// FORWARD or INPUT) or "local" (sent by the node: nat and filter OUTPUT).
	Direction string `json:"direction"`
	// InInterface is the interface an arriving packet comes in on, when given.
	InInterface string `json:"inInterface,omitempty"`
}

// traceEndpoint is one DNAT destination.
type traceEndpoint struct {
	// Address is "ip:port" ("[ip]:port" for IPv6).
	Address string `json:"address"`
	// Probability is the chance, from 0 to 1, that a new connection goes there.
	Probability float64 `json:"probability"`
}

// traceVerdict is the outcome of a trace.
type traceVerdict struct {
	// Action is "DNAT" (sent to one of Endpoints), "REJECT" (refused at once: a Service
	// without endpoints), "DROP" (dropped: externalTrafficPolicy Local without a local
	// endpoint, a load balancer's source ranges, a DROP policy), "ACCEPT" (accepted
	// unchanged by a Service rule, e.g. a health check node port), "NOT_A_SERVICE" (no
	// Service rule matched: kproxy leaves the packet alone) or "MIXED" (paths differ;
	// see paths).
	Action string `json:"action"`
	// Reason is the verdict in words, naming the deciding rule's comment.
	Reason string `json:"reason"`
	// By is the rule (or chain policy) that decided REJECT, DROP or ACCEPT.
	By *ruleset.Step `json:"by,omitempty"`
}

// newTraceReport explains res in the terms of a Service.
func newTraceReport(res ruleset.Result, source string, nodeIPs []netip.Addr) *traceReport {
	p := res.Packet
	r := &traceReport{
		Packet: tracePacket{Source: p.Src.String(), Destination: p.Dst.String(), Port: p.DPort, Protocol: p.Proto, Direction: directionArrive, InInterface: p.InIface},
		Rules:  source,
		Paths:  res.Paths,
		Notes:  res.Notes,
	}
	if p.FromLocal {
		r.Packet.Direction = directionLocal
	}
	for _, a := range nodeIPs {
		r.NodeIPs = append(r.NodeIPs, a.String())
	}
	for _, path := range res.Paths {
		if path.Endpoint == "" {
			continue
		}
		if i := slices.IndexFunc(r.Endpoints, func(e traceEndpoint) bool { return e.Address == path.Endpoint }); i >= 0 {
			r.Endpoints[i].Probability += path.Probability
			continue
		}
		r.Endpoints = append(r.Endpoints, traceEndpoint{Address: path.Endpoint, Probability: path.Probability})
	}
	r.Masquerade, r.MasqueradeReasons = masqueradeSummary(res.Paths)
	r.Verdict = verdictOf(res.Paths, len(r.Endpoints))
	return r
}

// masqueradeSummary says whether the paths are masqueraded ("yes", "no" or "some
// paths") and why, in words: the rule that marked the packet, or the rules that would
// have and why they did not match; per path when the paths differ.
func masqueradeSummary(paths []ruleset.Path) (string, []string) {
	var yes, no int
	var reasons []string
	for _, p := range paths {
		if p.Masquerade {
			yes++
		} else {
			no++
		}
		for _, r := range pathMasquerade(p) {
			reasons = appendNew(reasons, r)
		}
	}
	switch {
	case no == 0:
		return "yes", reasons
	case yes == 0:
		return "no", reasons
	}
	reasons = nil
	for i, p := range paths {
		to := ""
		if p.Endpoint != "" {
			to = " (to " + p.Endpoint + ")"
		}
		answer := "no"
		if p.Masquerade {
			answer = "yes"
		}
		reasons = append(reasons, fmt.Sprintf("path %d%s: %s, %s", i+1, to, answer, strings.Join(pathMasquerade(p), "; ")))
	}
	return "some paths", reasons
}

// pathMasquerade is why one path is masqueraded or not.
func pathMasquerade(p ruleset.Path) []string {
	if p.Masquerade {
		return []string{"by " + stepWithConditions(*p.MasqueradeBy)}
	}
	if len(p.NotMasqueradedBy) == 0 {
		return []string{"no rule marks it"}
	}
	var why []string
	for _, m := range p.NotMasqueradedBy {
		s := ruleset.Step{Table: m.Table, Chain: m.Chain, Comment: m.Comment, Rule: m.Rule}
		why = append(why, fmt.Sprintf("not by %s: %s", stepName(s), m.Reason))
	}
	return why
}

func appendNew(list []string, s string) []string {
	if slices.Contains(list, s) {
		return list
	}
	return append(list, s)
}

// verdictOf sums the paths' outcomes up as one verdict when they agree.
func verdictOf(paths []ruleset.Path, endpoints int) traceVerdict {
	verdicts := make([]traceVerdict, len(paths))
	for i, p := range paths {
		verdicts[i] = pathVerdict(p)
	}
	first := verdicts[0]
	for _, v := range verdicts[1:] {
		if v.Action != first.Action {
			return traceVerdict{Action: traceMixed, Reason: "the paths differ: see each path"}
		}
	}
	if first.Action == traceDNAT {
		first.Reason = "DNAT to " + paths[0].Endpoint
		if endpoints > 1 {
			first.Reason = fmt.Sprintf("DNAT to one of %d endpoints", endpoints)
		}
	}
	return first
}

// serviceChains are the chains a packet for a Service address passes through; a walk
// that matched no rule in them met no Service.
var serviceChains = []string{rules.ChainServices, rules.ChainNodePorts, rules.ChainExternalServices, rules.ChainProxyFirewall}

func pathVerdict(p ruleset.Path) traceVerdict {
	by := p.VerdictBy
	switch {
	case p.Verdict == ruleset.VerdictReject || p.Verdict == ruleset.VerdictDrop:
		return traceVerdict{Action: p.Verdict, Reason: p.Verdict + " by " + stepName(*by), By: by}
	case p.Endpoint != "":
		return traceVerdict{Action: traceDNAT, Reason: "DNAT to " + p.Endpoint}
	}
	for _, s := range p.Steps {
		// The node-ports jump is taken by every packet to a node address.
		if slices.Contains(serviceChains, s.Chain) && s.Target != rules.ChainNodePorts {
			return traceVerdict{Action: ruleset.VerdictAccept, Reason: "ACCEPT, not DNATed, after " + stepName(s), By: by}
		}
	}
	return traceVerdict{Action: traceNoService, Reason: fmt.Sprintf("not a Service address: no rule of nat %s or %s matched", rules.ChainServices, rules.ChainNodePorts)}
}

// stepName names a step's rule for people: its table, chain and comment, or its
// conditions when it has no comment.
func stepName(s ruleset.Step) string {
	name := s.Table + " " + s.Chain
	switch {
	case s.Action == ruleset.ActionPolicy:
		return "the policy of " + name
	case s.Comment != "":
		return name + " " + strconv.Quote(s.Comment)
	}
	if conds := ruleConditions(s.Rule); conds != "" {
		return name + " [" + conds + "]"
	}
	return name
}

// ruleConditions are the matches of a rule's text, without its comment.
func ruleConditions(rule string) string {
	args, err := ruleset.SplitArgs(rule)
	if err != nil {
		return rule
	}
	var conds ruleset.Rule
	for m := ruleset.Rule(args).Matches(); len(m) > 0; m = m[1:] {
		switch {
		case len(m) > 1 && m[0] == "-m" && m[1] == "comment":
			m = m[1:]
		case len(m) > 1 && m[0] == "--comment":
			m = m[1:]
		default:
			conds = append(conds, m[0])
		}
	}
	return conds.String()
}

// stepWithConditions is stepName with the rule's conditions, which say why a rule
// matched better than its comment when several rules share one (a Service's hairpin
// rule and its DNAT rule).
func stepWithConditions(s ruleset.Step) string {
	name := stepName(s)
	if conds := ruleConditions(s.Rule); s.Comment != "" && conds != "" {
		name += " [" + conds + "]"
	}
	return name
}

// text renders the report for people.
func (r *traceReport) text() string {
	var b strings.Builder
	dst := netip.AddrPortFrom(netip.MustParseAddr(r.Packet.Destination), uint16(r.Packet.Port))
	how := "arriving from a pod or another host: nat PREROUTING"
	switch {
	case r.Packet.Direction == directionLocal:
		how = "sent by the node: nat OUTPUT"
	case r.Packet.InInterface != "":
		how = "arriving on " + r.Packet.InInterface + " from a pod or another host: nat PREROUTING"
	}
	fmt.Fprintf(&b, "packet %s -> %s/%s (%s)\n", r.Packet.Source, dst, r.Packet.Protocol, how)
	fmt.Fprintf(&b, "rules: %s; node addresses: %s\n", r.Rules, strings.Join(r.NodeIPs, ", "))

	// Paths fork from one walk and mostly meet again after their DNAT: the steps all
	// share are printed once, before and after those of each path.
	head, tail := sharedSteps(r.Paths)
	for _, s := range r.Paths[0].Steps[:head] {
		b.WriteString(stepLine(s) + "\n")
	}
	for i, p := range r.Paths {
		indent := ""
		if len(r.Paths) > 1 {
			fmt.Fprintf(&b, "path %d of %d (%s):\n", i+1, len(r.Paths), percent(p.Probability))
			indent = "  "
		}
		for _, s := range p.Steps[head : len(p.Steps)-tail] {
			b.WriteString(indent + stepLine(s) + "\n")
		}
	}
	if tail > 0 && len(r.Paths) > 1 {
		b.WriteString("then, on every path:\n")
	}
	last := r.Paths[0].Steps
	for _, s := range last[len(last)-tail:] {
		b.WriteString(stepLine(s) + "\n")
	}

	if len(r.Endpoints) == 0 {
		b.WriteString("endpoints: none (the destination is not rewritten)\n")
	} else {
		eps := make([]string, len(r.Endpoints))
		for i, e := range r.Endpoints {
			eps[i] = fmt.Sprintf("%s (%s)", e.Address, percent(e.Probability))
		}
		fmt.Fprintf(&b, "endpoints (DNAT): %s\n", strings.Join(eps, ", "))
	}
	fmt.Fprintf(&b, "masquerade: %s\n", r.Masquerade)
	// Every endpoint's chain has its own hairpin rule; past a few, the JSON lists them.
	for i, why := range r.MasqueradeReasons {
		if i == maxTextReasons && len(r.MasqueradeReasons) > maxTextReasons+1 {
			fmt.Fprintf(&b, "  and %d more (-o json lists them)\n", len(r.MasqueradeReasons)-i)
			break
		}
		fmt.Fprintf(&b, "  %s\n", why)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "note: %s\n", n)
	}
	fmt.Fprintf(&b, "verdict: %s\n", r.Verdict.Reason)
	if r.Verdict.Action == traceMixed {
		for i, p := range r.Paths {
			fmt.Fprintf(&b, "  path %d: %s\n", i+1, pathVerdict(p).Reason)
		}
	}
	return b.String()
}

// sharedSteps is how many steps every path has in common at its start and, apart from
// those, at its end.
func sharedSteps(paths []ruleset.Path) (head, tail int) {
	shortest := len(paths[0].Steps)
	for _, p := range paths {
		shortest = min(shortest, len(p.Steps))
	}
	same := func(at func(p ruleset.Path) ruleset.Step) bool {
		for _, p := range paths[1:] {
			if at(p) != at(paths[0]) {
				return false
			}
		}
		return true
	}
	for head < shortest && same(func(p ruleset.Path) ruleset.Step { return p.Steps[head] }) {
		head++
	}
	for head+tail < shortest && same(func(p ruleset.Path) ruleset.Step { return p.Steps[len(p.Steps)-1-tail] }) {
		tail++
	}
	return head, tail
}

// stepLine is one step in words: the rule, and what it did.
func stepLine(s ruleset.Step) string {
	line := s.Table + " " + s.Chain + "  "
	switch {
	case s.Comment != "":
		line += strconv.Quote(s.Comment) + " "
	case s.Rule != "":
		if conds := ruleConditions(s.Rule); conds != "" {
			line += "[" + conds + "] "
		}
	}
	if s.Probability > 0 {
		line += "(random, " + percent(s.Probability) + ") "
	}
	switch s.Action {
	case ruleset.ActionJump:
		return line + "-> " + s.Target
	case ruleset.ActionGoto:
		return line + "goto " + s.Target
	case ruleset.ActionReturn:
		return line + "return"
	case ruleset.ActionContinue:
		if s.Target != "" {
			return line + s.Target + ", go on"
		}
		return line + "(no target), go on"
	case ruleset.ActionMark:
		return line + "set mark " + s.Target
	case ruleset.ActionDNAT:
		return line + "DNAT to " + s.Target
	case ruleset.ActionMasquerade:
		if s.Target == "MASQUERADE" {
			return line + "MASQUERADE (source becomes the node's address)"
		}
		return line + "SNAT to " + s.Target
	case ruleset.ActionAccept:
		return line + "ACCEPT"
	case ruleset.ActionDrop:
		return line + "DROP"
	case ruleset.ActionReject:
		if s.Target != "" {
			return line + "REJECT (" + s.Target + ")"
		}
		return line + "REJECT"
	case ruleset.ActionPolicy:
		return line + "end of chain: policy " + s.Target
	}
	return line + s.Action
}

// maxTextReasons is how many masquerade reasons the text output lists.
const maxTextReasons = 4

// percent prints a probability as a percentage with at most one decimal: "50%", "33.3%".
func percent(p float64) string {
	return strconv.FormatFloat(float64(int64(p*1000+0.5))/10, 'f', -1, 64) + "%"
}
