// Package diff is the differential test: kproxy and upstream kube-proxy v1.37.2 (built
// in hack/tools) run side by side against one real kube-apiserver, each in a node network
// namespace of its own that claims to be the same node, and after every step of a seeded
// sequence of API changes (test/diff/gen), with drift injected into kproxy's rules between
// steps, the kernel's rules of both must be the same. See README.md.
package diff

import (
	"bufio"
	"fmt"
	"slices"
	"strings"
)

// dispatchChains are the chains whose rule order upstream takes from Go map iteration
// (one group of rules per service, in whatever order the map yields): the only thing the
// comparison normalises. Keyed by "table/chain".
var dispatchChains = map[string]bool{
	"nat/KUBE-SERVICES":             true,
	"nat/KUBE-NODEPORTS":            true,
	"filter/KUBE-SERVICES":          true,
	"filter/KUBE-EXTERNAL-SERVICES": true,
	"filter/KUBE-NODEPORTS":         true,
	"filter/KUBE-PROXY-FIREWALL":    true,
}

// nodePortsTail is the comment of the rule that must stay last in nat KUBE-SERVICES; the
// normalisation sorts around it, so an order that breaks that rule still shows.
const nodePortsTail = `"kubernetes service nodeports; NOTE: this must be the last rule in this chain"`

// Canonical turns iptables-save output into a form in which two rulesets are equal
// exactly when the kernel holds the same rules: comments and counters are dropped, chains
// are sorted by name, each chain's rules keep their order, except in the dispatch chains,
// whose rules are sorted (on either side of the node-ports tail). Nothing is filtered out.
func Canonical(save string) (string, error) {
	type table struct {
		chains map[string]string // name -> policy ("-" for user chains)
		rules  map[string][]string
	}
	var (
		order  []string
		tables = map[string]*table{}
		cur    *table
		name   string
	)
	sc := bufio.NewScanner(strings.NewReader(save))
	sc.Buffer(make([]byte, 1024*1024), 64*1024*1024)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "*"):
			name = line[1:]
			if tables[name] == nil {
				tables[name] = &table{chains: map[string]string{}, rules: map[string][]string{}}
				order = append(order, name)
			}
			cur = tables[name]
		case cur == nil:
			return "", fmt.Errorf("line %q outside a table", line)
		case line == "COMMIT":
			cur = nil
		case strings.HasPrefix(line, ":"):
			fields := strings.Fields(line[1:])
			if len(fields) < 2 {
				return "", fmt.Errorf("malformed chain line %q", line)
			}
			cur.chains[fields[0]] = fields[1]
		case strings.HasPrefix(line, "-A "):
			chain, _, _ := strings.Cut(line[3:], " ")
			cur.rules[chain] = append(cur.rules[chain], line)
		default:
			return "", fmt.Errorf("unexpected line %q", line)
		}
	}
	if err := sc.Err(); err != nil {
		return "", err
	}
	slices.Sort(order)
	var b strings.Builder
	for _, tn := range order {
		t := tables[tn]
		fmt.Fprintf(&b, "*%s\n", tn)
		chains := make([]string, 0, len(t.chains))
		for c := range t.chains {
			chains = append(chains, c)
		}
		slices.Sort(chains)
		for _, c := range chains {
			fmt.Fprintf(&b, ":%s %s\n", c, t.chains[c])
		}
		for _, c := range chains {
			rules := t.rules[c]
			if dispatchChains[tn+"/"+c] {
				rules = sortAroundTail(rules)
			}
			for _, r := range rules {
				b.WriteString(r)
				b.WriteByte('\n')
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String(), nil
}

// sortAroundTail sorts the rules before and after the node-ports tail, each part on its
// own, keeping the tail where it is: a tail that is not last still shows as such.
func sortAroundTail(rules []string) []string {
	out := slices.Clone(rules)
	i := slices.IndexFunc(out, func(r string) bool { return strings.Contains(r, nodePortsTail) })
	if i < 0 {
		slices.Sort(out)
		return out
	}
	slices.Sort(out[:i])
	slices.Sort(out[i+1:])
	return out
}

// LineDiff lists the lines only one side has, as "- " (want) and "+ " (got) lines in
// order, with the chain each belongs to; empty when the two are equal.
func LineDiff(want, got string) []string {
	count := func(s string) map[string]int {
		m := map[string]int{}
		for _, l := range strings.Split(s, "\n") {
			m[l]++
		}
		return m
	}
	w, g := count(want), count(got)
	var out []string
	for _, l := range strings.Split(want, "\n") {
		if g[l] < w[l] {
			out = append(out, "- "+l)
			w[l]--
		}
	}
	for _, l := range strings.Split(got, "\n") {
		if w[l] < g[l] {
			out = append(out, "+ "+l)
			g[l]--
		}
	}
	return out
}
