package ruleset

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// matchResult is what a rule's matches say about a packet.
type matchResult struct {
	matched bool
	// probability is the chance a random (statistic) match takes the rule; 1 without one.
	probability float64
	// why is the first match that failed, in words, when !matched.
	why string
	// affinity is set when a session affinity check (-m recent --rcheck) failed the
	// rule: the tracer follows a first connection, which no earlier one is recent for.
	affinity bool
}

// option is one match option the tracer models: how many values follow it, and what it
// says about the packet.
type option struct {
	values int
	// eval returns whether the (un-negated) match holds and the fact that decided it in
	// words, e.g. "source 10.244.1.5 is in 10.244.0.0/16"; an error means the tracer
	// cannot tell.
	eval func(st *state, w *walker, v []string) (bool, string, error)
}

// modules are the match extensions (-m) the tracer models; their options are in options.
var modules = map[string]bool{
	"tcp": true, "udp": true, "sctp": true, "multiport": true, "comment": true, "statistic": true,
	"recent": true, "addrtype": true, "mark": true, "conntrack": true, "state": true, "nfacct": true,
}

// always is the eval of options that never fail a match (comments, accounting, names).
func always(*state, *walker, []string) (bool, string, error) { return true, "", nil }

// options are the match options the tracer models, by every name iptables accepts and
// prints for them. Options are known by name rather than by position because
// iptables-restore accepts them anywhere after their module ("-m tcp -p tcp -d X
// --dport 80", kproxy's order) and iptables-save prints its own order ("-d X/32 -p tcp
// -m comment ... -m tcp --dport 80"); no two modelled modules share an option name.
var options = map[string]option{}

func init() {
	add := func(o option, names ...string) {
		for _, n := range names {
			options[n] = o
		}
	}
	add(option{1, evalProto}, "-p", "--protocol")
	add(option{1, evalAddr("source", func(p Packet) netip.Addr { return p.Src })}, "-s", "--source", "--src")
	add(option{1, evalAddr("destination", func(p Packet) netip.Addr { return p.Dst })}, "-d", "--destination", "--dst")
	add(option{1, evalIface("input", "arrives on", inIface)}, "-i", "--in-interface")
	add(option{1, evalIface("output", "leaves by", outIface)}, "-o", "--out-interface")
	add(option{0, func(*state, *walker, []string) (bool, string, error) {
		return false, "the packet is not a fragment", nil
	}}, "-f", "--fragment")
	add(option{1, evalModule}, "-m", "--match")
	add(option{1, always}, "--comment", "--nfacct-name", "--name", "--seconds", "--hitcount", "--mask")
	add(option{0, always}, "--set", "--reap", "--rsource", "--rdest", "--rttl")
	add(option{1, evalPort}, "--dport", "--destination-port")
	add(option{1, evalPorts}, "--dports", "--destination-ports")
	add(option{1, func(*state, *walker, []string) (bool, string, error) {
		return false, "", errors.New("the packet's source port is not known")
	}},
		"--sport", "--source-port", "--sports", "--source-ports")
	add(option{1, func(_ *state, _ *walker, v []string) (bool, string, error) {
		if v[0] != "random" {
			return false, "", errors.New("only random mode is")
		}
		return true, "", nil
	}}, "--mode")
	// --probability is read by match, which forks the walk on it.
	add(option{1, always}, "--probability")
	add(option{0, func(*state, *walker, []string) (bool, string, error) {
		return false, "no earlier connection from this client is recent (a first connection is traced)", nil
	}}, "--rcheck", "--update", "--remove")
	add(option{1, evalAddrType("source", func(p Packet) netip.Addr { return p.Src })}, "--src-type")
	add(option{1, evalAddrType("destination", func(p Packet) netip.Addr { return p.Dst })}, "--dst-type")
	add(option{1, evalMark}, "--mark")
	add(option{1, evalCTState}, "--ctstate", "--state")
}

// match evaluates r's matches (the arguments before its target) against st's packet.
// A match that fails decides, even after one the tracer cannot evaluate; a match it
// cannot evaluate, with none failing, is an error. After an option the tracer does not
// know, nothing can be read (its values are not known), so an earlier failure decides
// or the rule is an error.
func (w *walker) match(st *state, r Rule) (matchResult, error) {
	res := matchResult{matched: true, probability: 1}
	var undecided error
	args := r.Matches()
	neg := false
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "!" {
			neg = true
			continue
		}
		opt, ok := options[a]
		if !ok {
			if undecided == nil {
				undecided = fmt.Errorf("match %q not modelled", a)
			}
			break
		}
		if i+opt.values >= len(args) {
			return res, fmt.Errorf("%s needs %d value(s)", a, opt.values)
		}
		vals := args[i+1 : i+1+opt.values]
		i += opt.values
		holds, fact, err := opt.eval(st, w, vals)
		switch {
		case err != nil:
			if undecided == nil {
				text := strings.Join(append([]string{a}, vals...), " ")
				if neg {
					text = "! " + text
				}
				undecided = fmt.Errorf("match %q not modelled: %w", text, err)
			}
		case a == "--probability":
			p, err := strconv.ParseFloat(vals[0], 64)
			if err != nil || neg || p < 0 || p > 1 {
				return res, fmt.Errorf("bad statistic --probability %q", vals[0])
			}
			res.probability = p
		case holds == neg && res.matched:
			res.matched, res.why = false, fact
			res.affinity = a == "--rcheck" || a == "--update"
		}
		neg = false
	}
	if res.matched && res.probability == 0 {
		res.matched, res.why = false, "random match with probability 0"
	}
	if !res.matched {
		return res, nil
	}
	if undecided != nil {
		return res, undecided
	}
	return res, nil
}

func evalModule(_ *state, _ *walker, v []string) (bool, string, error) {
	if !modules[v[0]] {
		return false, "", errors.New("unknown match extension")
	}
	return true, "", nil
}

// protocols maps the protocol numbers iptables may print to names.
var protocols = map[string]string{"6": "tcp", "17": "udp", "132": "sctp"}

func evalProto(st *state, _ *walker, v []string) (bool, string, error) {
	want := strings.ToLower(v[0])
	if name, ok := protocols[want]; ok {
		want = name
	}
	if want == "all" || want == "0" {
		return true, "every protocol matches", nil
	}
	if want == st.pkt.Proto {
		return true, "the protocol is " + want, nil
	}
	return false, fmt.Sprintf("the protocol is %s, not %s", st.pkt.Proto, want), nil
}

func evalAddr(what string, get func(Packet) netip.Addr) func(*state, *walker, []string) (bool, string, error) {
	return func(st *state, _ *walker, v []string) (bool, string, error) {
		a := get(st.pkt)
		p, err := parsePrefix(v[0])
		if err != nil {
			return false, "", err
		}
		in := p.Contains(a)
		switch {
		case p.IsSingleIP() && in:
			return true, fmt.Sprintf("the %s is %s", what, a), nil
		case p.IsSingleIP():
			return false, fmt.Sprintf("the %s %s is not %s", what, a, p.Addr()), nil
		case in:
			return true, fmt.Sprintf("the %s %s is in %s", what, a, p), nil
		default:
			return false, fmt.Sprintf("the %s %s is not in %s", what, a, p), nil
		}
	}
}

// parsePrefix reads an address as iptables prints it: "10.0.0.1", "10.0.0.1/32",
// "10.0.0.0/8". Dotted netmasks ("/255.0.0.0") are what iptables-save prints for
// non-contiguous masks, which no Kubernetes rule has; they are refused.
func parsePrefix(v string) (netip.Prefix, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, err
		}
		return p, nil
	}
	a, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, err
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// inIface is the interface the packet came in on ("" for none) and whether that is
// known. The node's own packets have none, until they loop back to it through lo.
func inIface(st *state, _ *walker) (string, bool) {
	switch {
	case st.pkt.FromLocal && st.hook == hookRef{"filter", "INPUT"}:
		return "lo", true
	case st.pkt.FromLocal:
		return "", true
	}
	return st.pkt.InIface, st.pkt.InIface != ""
}

// outIface is the interface the packet leaves by ("" for none) and whether that is
// known: before routing (PREROUTING) and on the way in (INPUT) there is none; after
// routing it depends on routes the tracer does not have, except that the node's packets
// to itself leave by lo.
func outIface(st *state, w *walker) (string, bool) {
	switch {
	case st.hook.chain == "PREROUTING" || st.hook.chain == "INPUT":
		return "", true
	case st.pkt.FromLocal && w.t.isLocal(st.pkt.Dst):
		return "lo", true
	}
	return "", false
}

// evalIface matches -i or -o: an interface name, or a name prefix ending in "+".
func evalIface(kind, verb string, get func(*state, *walker) (string, bool)) func(*state, *walker, []string) (bool, string, error) {
	return func(st *state, w *walker, v []string) (bool, string, error) {
		iface, known := get(st, w)
		if !known {
			return false, "", fmt.Errorf("the packet's %s interface is not known", kind)
		}
		prefix, isPrefix := strings.CutSuffix(v[0], "+")
		holds := iface == v[0] || isPrefix && strings.HasPrefix(iface, prefix) && (iface != "" || prefix == "")
		switch {
		case iface == "":
			return holds, fmt.Sprintf("the packet has no %s interface here", kind), nil
		case holds:
			return true, fmt.Sprintf("the packet %s %s", verb, iface), nil
		}
		return false, fmt.Sprintf("the packet %s %s, not %s", verb, iface, v[0]), nil
	}
}

func evalPort(st *state, _ *walker, v []string) (bool, string, error) {
	in, err := portIn(st.pkt.DPort, v[0])
	if err != nil {
		return false, "", err
	}
	if in {
		return true, fmt.Sprintf("the destination port is %d", st.pkt.DPort), nil
	}
	return false, fmt.Sprintf("the destination port %d is not %s", st.pkt.DPort, v[0]), nil
}

func evalPorts(st *state, _ *walker, v []string) (bool, string, error) {
	for _, p := range strings.Split(v[0], ",") {
		in, err := portIn(st.pkt.DPort, p)
		if err != nil {
			return false, "", err
		}
		if in {
			return true, fmt.Sprintf("the destination port %d is in %s", st.pkt.DPort, v[0]), nil
		}
	}
	return false, fmt.Sprintf("the destination port %d is not in %s", st.pkt.DPort, v[0]), nil
}

// portIn reports whether port is spec: "80" or a range "1000:2000".
func portIn(port int, spec string) (bool, error) {
	lo, hi, isRange := strings.Cut(spec, ":")
	first, err := strconv.Atoi(lo)
	if err != nil {
		return false, fmt.Errorf("bad port %q", spec)
	}
	last := first
	if isRange {
		if last, err = strconv.Atoi(hi); err != nil {
			return false, fmt.Errorf("bad port range %q", spec)
		}
	}
	return port >= first && port <= last, nil
}

func evalAddrType(what string, get func(Packet) netip.Addr) func(*state, *walker, []string) (bool, string, error) {
	return func(st *state, w *walker, v []string) (bool, string, error) {
		if v[0] != "LOCAL" {
			return false, "", errors.New("only LOCAL is")
		}
		a := get(st.pkt)
		if w.t.isLocal(a) {
			return true, fmt.Sprintf("the %s %s is a node address", what, a), nil
		}
		return false, fmt.Sprintf("the %s %s is not a node address", what, a), nil
	}
}

func evalMark(st *state, _ *walker, v []string) (bool, string, error) {
	val, mask, err := parseMark(v[0])
	if err != nil {
		return false, "", err
	}
	if st.mark&mask == val {
		return true, fmt.Sprintf("the mark %#x matches %s", st.mark, v[0]), nil
	}
	return false, fmt.Sprintf("the mark %#x does not match %s", st.mark, v[0]), nil
}

// parseMark reads "value[/mask]" (mask 0xffffffff when absent).
func parseMark(s string) (val, mask uint32, err error) {
	v, m, hasMask := strings.Cut(s, "/")
	if !hasMask {
		m = "0xffffffff"
	}
	vn, err1 := strconv.ParseUint(v, 0, 32)
	mn, err2 := strconv.ParseUint(m, 0, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("bad mark %q", s)
	}
	return uint32(vn), uint32(mn), nil
}

// ctStates are the conntrack states a rule may name (-m conntrack --ctstate, -m state
// --state).
var ctStates = []string{"NEW", "ESTABLISHED", "RELATED", "INVALID", "UNTRACKED", "SNAT", "DNAT"}

// evalCTState matches the first packet of a new connection: state NEW, and DNAT once
// its destination was rewritten (the source is rewritten only after filter, in nat
// POSTROUTING, so SNAT is never seen).
func evalCTState(st *state, _ *walker, v []string) (bool, string, error) {
	have := []string{"NEW"}
	if st.dnat != "" {
		have = append(have, "DNAT")
	}
	for s := range strings.SplitSeq(v[0], ",") {
		if !slices.Contains(ctStates, s) {
			return false, "", fmt.Errorf("unknown state %s", s)
		}
		if slices.Contains(have, s) {
			return true, fmt.Sprintf("the connection is %s", strings.Join(have, ",")), nil
		}
	}
	return false, fmt.Sprintf("the connection is %s, not %s", strings.Join(have, ","), v[0]), nil
}
