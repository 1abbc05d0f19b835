package rulestest

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Packet is the first packet of a new connection, as the tracer sees it.
type Packet struct {
	Src, Dst netip.Addr
	Proto    string // "tcp", "udp" or "sctp"
	DPort    int
	// FromLocal marks a packet sent by the node itself (nat OUTPUT and filter OUTPUT)
	// rather than one arriving from a pod or another host (PREROUTING and FORWARD/INPUT).
	FromLocal bool
}

// Result is what the rules did to a packet.
type Result struct {
	// Endpoints are the DNAT destinations the packet may be sent to ("ip:port"); every
	// branch of a probabilistic choice is followed, so all candidates are listed.
	Endpoints []string
	// Masquerade reports whether the packet was marked for SNAT.
	Masquerade bool
	// Verdict is the filter verdict: "ACCEPT" (explicit or by default), "REJECT" or "DROP".
	Verdict string
}

func (r Result) String() string {
	return fmt.Sprintf("endpoints=%s masq=%t verdict=%s", strings.Join(r.Endpoints, ","), r.Masquerade, r.Verdict)
}

// Tracer walks a packet through a ruleset. It models only the matches our rules use and
// fails loudly (an error) on anything else, so a new kind of rule cannot be silently
// mis-traced.
type Tracer struct {
	Tables Tables
	// LocalAddrs are the node's addresses (addrtype LOCAL); loopback addresses always are.
	LocalAddrs []netip.Addr
	// MasqueradeMark is the mark bit value KUBE-MARK-MASQ sets, e.g. 0x4000.
	MasqueradeMark uint32
}

type walk struct {
	t     *Tracer
	table string
	pkt   Packet
	mark  uint32
	dnat  []string
	// stop is set once a terminal target has been reached on the deterministic path.
	verdict string
	depth   int
}

// Trace runs the packet through nat (PREROUTING or OUTPUT) and then filter (FORWARD,
// INPUT or OUTPUT, chosen after DNAT).
func (t *Tracer) Trace(p Packet) (Result, error) {
	natHook := "PREROUTING"
	if p.FromLocal {
		natHook = "OUTPUT"
	}
	w := &walk{t: t, table: "nat", pkt: p}
	if _, err := w.chain(natHook); err != nil {
		return Result{}, err
	}
	res := Result{Endpoints: w.dnat, Masquerade: w.mark&t.MasqueradeMark != 0}

	after := p
	if len(w.dnat) > 0 {
		ap, err := netip.ParseAddrPort(w.dnat[0])
		if err != nil {
			return Result{}, fmt.Errorf("bad DNAT target %q: %w", w.dnat[0], err)
		}
		after.Dst, after.DPort = ap.Addr(), int(ap.Port())
	}
	filterHook := "FORWARD"
	switch {
	case p.FromLocal:
		filterHook = "OUTPUT"
	case t.isLocal(after.Dst):
		filterHook = "INPUT"
	}
	fw := &walk{t: t, table: "filter", pkt: after, mark: w.mark}
	if _, err := fw.chain(filterHook); err != nil {
		return Result{}, err
	}
	res.Verdict = fw.verdict
	if res.Verdict == "" {
		res.Verdict = "ACCEPT"
	}
	return res, nil
}

func (t *Tracer) isLocal(a netip.Addr) bool {
	if a.IsLoopback() {
		return true
	}
	for _, l := range t.LocalAddrs {
		if l == a {
			return true
		}
	}
	return false
}

// chain walks one chain and reports whether the packet reached a terminal target.
func (w *walk) chain(name string) (bool, error) {
	w.depth++
	defer func() { w.depth-- }()
	if w.depth > 50 {
		return false, fmt.Errorf("jump loop at %s", name)
	}
	tb, ok := w.t.Tables[w.table]
	if !ok {
		return false, fmt.Errorf("no table %s", w.table)
	}
	rules, ok := tb.Chains[name]
	if !ok {
		return false, fmt.Errorf("%s: no chain %s", w.table, name)
	}
	for _, r := range rules {
		m, err := w.matches(r)
		if err != nil {
			return false, fmt.Errorf("%s %s: %w", name, r, err)
		}
		if !m.match {
			continue
		}
		done, err := w.target(r)
		if err != nil {
			return false, fmt.Errorf("%s %s: %w", name, r, err)
		}
		if done == returned {
			return false, nil
		}
		// A probabilistic match branches: follow it, then keep going as if it had not
		// matched, so every endpoint shows up in the result.
		if done == terminal && !m.probabilistic {
			return true, nil
		}
	}
	return false, nil
}

type outcome int

const (
	continued outcome = iota
	terminal
	returned
)

func (w *walk) target(r Rule) (outcome, error) {
	args := []string(r)
	tgt := r.Target()
	switch tgt {
	case "":
		return continued, nil
	case "RETURN":
		return returned, nil
	case "ACCEPT", "REJECT", "DROP":
		if w.verdict == "" {
			w.verdict = tgt
		}
		return terminal, nil
	case "DNAT":
		to := valueOf(args, "--to-destination")
		if to == "" {
			return 0, fmt.Errorf("DNAT without --to-destination")
		}
		w.dnat = append(w.dnat, to)
		return terminal, nil
	case "MARK":
		if v := valueOf(args, "--or-mark"); v != "" {
			n, err := strconv.ParseUint(v, 0, 32)
			if err != nil {
				return 0, err
			}
			w.mark |= uint32(n)
			return continued, nil
		}
		if v := valueOf(args, "--xor-mark"); v != "" {
			n, err := strconv.ParseUint(v, 0, 32)
			if err != nil {
				return 0, err
			}
			w.mark ^= uint32(n)
			return continued, nil
		}
		return 0, fmt.Errorf("unsupported MARK rule")
	case "MASQUERADE":
		return terminal, nil
	}
	if targets[tgt] {
		return 0, fmt.Errorf("target %s not modelled", tgt)
	}
	done, err := w.chain(tgt)
	if err != nil {
		return 0, err
	}
	if done {
		return terminal, nil
	}
	return continued, nil
}

type matchResult struct {
	match         bool
	probabilistic bool
}

// matches evaluates a rule's match arguments against the packet.
func (w *walk) matches(r Rule) (matchResult, error) {
	res := matchResult{match: true}
	args := []string(r)
	neg := false
	fail := func() { res.match = false }
	for i := 0; i < len(args); i++ {
		a := args[i]
		next := func() (string, error) {
			if i+1 >= len(args) {
				return "", fmt.Errorf("%s needs a value", a)
			}
			i++
			return args[i], nil
		}
		if a == "!" {
			neg = true
			continue
		}
		check := func(ok bool) {
			if ok == neg {
				fail()
			}
			neg = false
		}
		switch a {
		case "-j":
			i = len(args) // target handled by caller
		case "-m":
			if _, err := next(); err != nil {
				return res, err
			}
		case "--comment", "--mode", "--name", "--seconds", "--nfacct-name":
			if _, err := next(); err != nil {
				return res, err
			}
		case "--reap", "--set":
		case "--rcheck":
			// No earlier connection from this client is modelled, so affinity never hits.
			check(false)
		case "--probability":
			if _, err := next(); err != nil {
				return res, err
			}
			res.probabilistic = true
		case "-p":
			v, err := next()
			if err != nil {
				return res, err
			}
			check(v == w.pkt.Proto)
		case "-s", "-d":
			v, err := next()
			if err != nil {
				return res, err
			}
			addr := w.pkt.Src
			if a == "-d" {
				addr = w.pkt.Dst
			}
			ok, err := inNet(addr, v)
			if err != nil {
				return res, err
			}
			check(ok)
		case "--dport":
			v, err := next()
			if err != nil {
				return res, err
			}
			check(v == strconv.Itoa(w.pkt.DPort))
		case "--dst-type", "--src-type":
			v, err := next()
			if err != nil {
				return res, err
			}
			if v != "LOCAL" {
				return res, fmt.Errorf("addrtype %s not modelled", v)
			}
			addr := w.pkt.Dst
			if a == "--src-type" {
				addr = w.pkt.Src
			}
			check(w.t.isLocal(addr))
		case "--mark":
			v, err := next()
			if err != nil {
				return res, err
			}
			val, mask, ok := strings.Cut(v, "/")
			if !ok {
				mask = "0xffffffff"
			}
			vn, err1 := strconv.ParseUint(val, 0, 32)
			mn, err2 := strconv.ParseUint(mask, 0, 32)
			if err1 != nil || err2 != nil {
				return res, fmt.Errorf("bad mark %q", v)
			}
			check(w.mark&uint32(mn) == uint32(vn))
		case "--ctstate":
			v, err := next()
			if err != nil {
				return res, err
			}
			// The tracer follows the first packet of a new connection.
			check(strings.Contains(v, "NEW"))
		default:
			return res, fmt.Errorf("match %q not modelled", a)
		}
		if !res.match {
			return res, nil
		}
	}
	return res, nil
}

func valueOf(args []string, flag string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}

func inNet(a netip.Addr, v string) (bool, error) {
	if strings.Contains(v, "/") {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			return false, err
		}
		return p.Contains(a), nil
	}
	b, err := netip.ParseAddr(v)
	if err != nil {
		return false, err
	}
	return a == b, nil
}
