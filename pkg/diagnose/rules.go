package diagnose

import (
	"bufio"
	"bytes"
	"cmp"
	"fmt"
	"regexp"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"
)

// RuleDrift is how the kernel's rules differ from those kproxy means the node to hold.
type RuleDrift struct {
	// Services lists, sorted by name, every Service whose rules differ; rules that are
	// about no Service (the shared chains' own, masquerading) are under NodeWide.
	Services []ServiceDrift
	// StaleChains are per-service chains the kernel holds and kproxy no longer renders
	// (a sync that stopped half-way, another proxy's leftovers), as "table chain".
	StaleChains []string
}

// ServiceDrift is one Service's rules that the kernel lacks or has in excess, each as
// "table chain rule" in the kernel's form.
type ServiceDrift struct {
	// Service is "namespace/name:port", as in the rules' comments, or NodeWide.
	Service string
	Missing []string
	Extra   []string
	// Reordered are chains holding the right rules in the wrong order, as "table chain":
	// the order is the load balancing (the statistic matches add up only in order).
	Reordered []string
}

// NodeWide groups the rules that belong to no Service.
const NodeWide = "(node-wide)"

// perServicePrefixes name the chains kproxy (and kube-proxy) write per service port or
// endpoint; the kernel's that kproxy does not render are stale.
var perServicePrefixes = []string{"KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-"}

// builtinChains are the kernel's own chains, in any table.
var builtinChains = map[string]bool{"PREROUTING": true, "INPUT": true, "FORWARD": true, "OUTPUT": true, "POSTROUTING": true}

// chainKey is a chain of a table.
type chainKey struct{ table, chain string }

func (k chainKey) String() string { return k.table + " " + k.chain }

// CompareRules compares the kernel's rules (iptables-save output of the tables kproxy
// writes) with those kproxy means them to hold, both in the kernel's form (the daemon's
// debug endpoint's rules through iptables.SaveAsKernel). It compares the chains kproxy
// renders, rule by rule, and looks for stale per-service chains; other programs' chains
// and the built-in chains are not its business.
func CompareRules(kernel, expected []byte) RuleDrift {
	have, want := parseSave(kernel), parseSave(expected)
	byService := map[string]*ServiceDrift{}
	drift := func(svc string) *ServiceDrift {
		if byService[svc] == nil {
			byService[svc] = &ServiceDrift{Service: svc}
		}
		return byService[svc]
	}
	for key, wantRules := range want {
		if builtinChains[key.chain] {
			// kproxy's jumps from the built-in chains are ensured outside its payload,
			// and other programs' rules there are theirs.
			continue
		}
		haveRules := have[key]
		missing, extra := multisetDiff(wantRules, haveRules)
		// A per-service chain belongs to its Service as a whole, whatever its rules say.
		owner := ""
		if isPerServiceChain(key.chain) {
			owner = chainService(wantRules)
		}
		for _, r := range missing {
			d := drift(cmp.Or(owner, ruleService(r)))
			d.Missing = append(d.Missing, key.String()+" "+r)
		}
		for _, r := range extra {
			d := drift(cmp.Or(owner, ruleService(r)))
			d.Extra = append(d.Extra, key.String()+" "+r)
		}
		if len(missing) == 0 && len(extra) == 0 && !slices.Equal(wantRules, haveRules) {
			d := drift(cmp.Or(owner, NodeWide))
			d.Reordered = append(d.Reordered, key.String())
		}
	}
	var out RuleDrift
	for key := range have {
		if _, wanted := want[key]; !wanted && isPerServiceChain(key.chain) {
			out.StaleChains = append(out.StaleChains, key.String())
		}
	}
	for _, d := range byService {
		slices.Sort(d.Missing)
		slices.Sort(d.Extra)
		slices.Sort(d.Reordered)
		out.Services = append(out.Services, *d)
	}
	slices.SortFunc(out.Services, func(a, b ServiceDrift) int { return cmp.Compare(a.Service, b.Service) })
	slices.Sort(out.StaleChains)
	return out
}

// DriftFindings turns a family's RuleDrift into findings: one per Service whose rules
// differ, one for stale chains, or one OK.
func DriftFindings(family v1.IPFamily, d RuleDrift) []Finding {
	id := "rules/" + string(family)
	var out []Finding
	for _, s := range d.Services {
		var ev []string
		for _, r := range s.Missing {
			ev = append(ev, "missing: "+r)
		}
		for _, r := range s.Extra {
			ev = append(ev, "extra:   "+r)
		}
		for _, c := range s.Reordered {
			ev = append(ev, "out of order: "+c)
		}
		out = append(out, Finding{
			ID: id + "/" + s.Service, Severity: Problem,
			Title: fmt.Sprintf("%s rules of %s differ from what kproxy programmed (%d missing, %d extra, %d chains out of order)",
				family, s.Service, len(s.Missing), len(s.Extra), len(s.Reordered)),
			Evidence: ev,
			Fix:      "another program changed kproxy's chains: find it (a second proxy, a CNI, a script); kproxy repairs them within its sync period, or restart it",
		})
	}
	if len(d.StaleChains) > 0 {
		out = append(out, Finding{
			ID: id + "/stale-chains", Severity: Warning,
			Title:    fmt.Sprintf("%d stale %s per-service chains that kproxy no longer uses", len(d.StaleChains), family),
			Evidence: d.StaleChains,
			Fix:      "harmless while nothing jumps to them; kproxy deletes its own on its next full sync (kproxy --cleanup removes all, on a drained node)",
		})
	}
	if len(out) == 0 {
		out = append(out, Finding{ID: id, Severity: OK, Title: fmt.Sprintf("%s rules in the kernel are what kproxy programmed", family)})
	}
	return out
}

// savedRules is an iptables-save output's rules by chain, in order; every declared
// chain is present, rules or not.
type savedRules map[chainKey][]string

// parseSave reads iptables-save output. Counters and comments on chain lines are
// dropped; each rule is kept as its text after "-A CHAIN ".
func parseSave(save []byte) savedRules {
	out := savedRules{}
	table := ""
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case strings.HasPrefix(line, ":"):
			name, _, _ := strings.Cut(line[1:], " ")
			key := chainKey{table, name}
			if _, ok := out[key]; !ok {
				out[key] = nil
			}
		case strings.HasPrefix(line, "-A "):
			chain, rule, _ := strings.Cut(line[3:], " ")
			key := chainKey{table, chain}
			out[key] = append(out[key], rule)
		}
	}
	return out
}

// multisetDiff returns the rules of want that have no equal in have, and those of have
// that have none in want, counting duplicates.
func multisetDiff(want, have []string) (missing, extra []string) {
	count := map[string]int{}
	for _, r := range have {
		count[r]++
	}
	for _, r := range want {
		if count[r] > 0 {
			count[r]--
			continue
		}
		missing = append(missing, r)
	}
	for _, r := range have {
		if count[r] > 0 {
			count[r]--
			extra = append(extra, r)
		}
	}
	return missing, extra
}

// commentService takes the Service port name from a rule comment, which kproxy and
// kube-proxy begin with "namespace/name:port" (or "namespace/name" for an unnamed port).
var commentService = regexp.MustCompile(`--comment "?([a-z0-9][-a-z0-9.]*/[a-z0-9][-a-z0-9.]*(?::[-a-z0-9]+)?)`)

// ruleService is the Service a rule is about, by its comment, or NodeWide.
func ruleService(rule string) string {
	if m := commentService.FindStringSubmatch(rule); m != nil {
		return m[1]
	}
	return NodeWide
}

// chainService is the Service a per-service chain's rules are about; "" when they name
// none or several.
func chainService(rules []string) string {
	svc := ""
	for _, r := range rules {
		s := ruleService(r)
		switch {
		case s == NodeWide:
		case svc == "":
			svc = s
		case s != svc:
			return ""
		}
	}
	return svc
}

func isPerServiceChain(chain string) bool {
	return slices.ContainsFunc(perServicePrefixes, func(p string) bool { return strings.HasPrefix(chain, p) })
}
