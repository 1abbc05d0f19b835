package rules

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/types"
)

// Drift compares one table as the kernel holds it (iptables-save output) with what the
// rules of this state put there, and describes the differences; none means the kernel
// holds what kproxy last wrote, as far as partial syncs rely on it. It checks:
//   - the number of rules in each shared dispatch chain and each fixed chain (a rule
//     another program inserted stays there until the chain is rewritten, which only a
//     full sync does);
//   - that every per-service chain in use exists (nat), and the number of rules in them
//     all (a deleted or flushed KUBE-SVC chain is never rewritten by a partial sync that
//     does not change its service).
//
// It does not compare rule text: kernels print rules in their own canonical form. It
// reads save as it comes, and fails only when save cannot be read.
func (s *State) Drift(table string, save io.Reader) ([]string, error) {
	rulesIn, exists, builtin, err := parseSave(save)
	if err != nil {
		return nil, err
	}
	var out []string
	// The jumps into our chains: a flush that races a full sync can leave one missing
	// while the PREROUTING jump the flush monitor watches is back.
	for _, j := range BuiltinJumps() {
		if j.Table == table && !slices.ContainsFunc(builtin[j.From], j.matches) {
			out = append(out, fmt.Sprintf("%s %s: no jump to %s", table, j.From, j.To))
		}
	}
	// The fixed chains too: upstream rewrites them on every sync, kproxy only on full ones.
	fixed := &renderer{opts: s.opts}
	want := map[string]int{}
	switch table {
	case "filter":
		want[ChainForward] = fixed.fixedFilterRules()
		if fixed.localhostNodePorts() {
			want[ChainForward]--
			want[ChainFirewall] = 1
		}
	case "nat":
		want[ChainPostrouting], want[ChainMarkMasq] = fixedNATRules-1, 1
	}
	for k := range numShared {
		if sharedChains[k].table != table {
			continue
		}
		n := 0
		for _, rec := range s.recs {
			n += rec.shared[k].n
		}
		if k == natServices {
			n += s.tail.n
		}
		want[sharedChains[k].name] = n
	}
	names := make([]string, 0, len(want))
	for c := range want {
		names = append(names, c)
	}
	sort.Strings(names)
	for _, c := range names {
		if got := rulesIn[c]; got != want[c] {
			out = append(out, fmt.Sprintf("%s %s: %d rules, want %d", table, c, got, want[c]))
		}
	}
	if table != "nat" {
		return out, nil
	}
	own := 0
	for _, rec := range s.recs {
		own += rec.ownNATRules
		for _, c := range rec.active {
			if !exists[c] {
				out = append(out, fmt.Sprintf("nat %s: missing", c))
			}
		}
	}
	got := 0
	for c, n := range rulesIn {
		if IsOwnedServiceChain(c) {
			got += n
		}
	}
	if got != own {
		out = append(out, fmt.Sprintf("nat per-service chains: %d rules, want %d", got, own))
	}
	return out, nil
}

// parseSave counts the rules of each chain in iptables-save output, lists the chains it
// declares, and returns the rules of the built-in chains (the text after "-A CHAIN ").
func parseSave(save io.Reader) (rulesIn map[string]int, exists map[string]bool, builtin map[string][]string, err error) {
	rulesIn, exists, builtin = map[string]int{}, map[string]bool{}, map[string][]string{}
	sc := bufio.NewScanner(save)
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Bytes()
		switch {
		case len(line) > 1 && line[0] == ':':
			name, _, _ := bytes.Cut(line[1:], []byte{' '})
			exists[string(name)] = true
		case bytes.HasPrefix(line, []byte("-A ")):
			name, rule, _ := bytes.Cut(line[3:], []byte{' '})
			rulesIn[string(name)]++
			if builtinChains[string(name)] {
				builtin[string(name)] = append(builtin[string(name)], string(rule))
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, nil, nil, fmt.Errorf("reading iptables-save output: %w", err)
	}
	return rulesIn, exists, builtin, nil
}

var builtinChains = map[string]bool{"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true}

// matches reports whether a rule as iptables-save prints it (after "-A CHAIN ") is this
// jump: same target and comment. The kernel prints matches in its own order and quoting,
// so the rest is not compared.
func (j Jump) matches(rule string) bool {
	if !strings.HasSuffix(" "+rule, " -j "+j.To) {
		return false
	}
	if i := slices.Index(j.Args, "--comment"); i >= 0 && i+1 < len(j.Args) {
		return strings.Contains(rule, j.Args[i+1])
	}
	return true
}

// Culprit names the Service a payload line belongs to, so that a line iptables-restore
// rejects can be blamed on one Service and the others still programmed. It reads the
// line's rule comment ("ns/name:port ...") or, for lines without one, looks up the
// per-service chain the line writes or jumps to among this state's chains.
func (s *State) Culprit(line string) (types.NamespacedName, bool) {
	if _, after, ok := strings.Cut(line, "--comment "); ok {
		var comment string
		if strings.HasPrefix(after, `"`) {
			comment, _, _ = strings.Cut(after[1:], `"`)
		} else {
			comment, _, _ = strings.Cut(after, " ")
		}
		word, _, _ := strings.Cut(comment, " ")
		word, _, _ = strings.Cut(word, ":")
		if ns, name, ok := strings.Cut(word, "/"); ok && ns != "" && name != "" {
			return types.NamespacedName{Namespace: ns, Name: name}, true
		}
	}
	// The chain a line declares (":CHAIN"), writes ("-A CHAIN") or jumps to ("-j CHAIN").
	var chains []string
	fields := strings.Fields(strings.TrimPrefix(line, ":"))
	for i, f := range fields {
		if i == 0 || (i == 1 && strings.HasPrefix(fields[0], "-")) || fields[i-1] == "-j" {
			chains = append(chains, f)
		}
	}
	for _, c := range chains {
		if !IsOwnedServiceChain(c) {
			continue
		}
		for j, rec := range s.recs {
			if slices.Contains(rec.active, c) {
				return s.order[j].NamespacedName, true
			}
		}
	}
	return types.NamespacedName{}, false
}
