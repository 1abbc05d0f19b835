package ruleset

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strconv"
	"strings"
)

// Rule is one rule's arguments after "-A CHAIN", split as the shell would split them.
type Rule []string

// String renders the rule's arguments as iptables-save would, quoting those with spaces.
func (r Rule) String() string {
	parts := make([]string, len(r))
	for i, a := range r {
		if strings.ContainsAny(a, " \t") {
			a = `"` + a + `"`
		}
		parts[i] = a
	}
	return strings.Join(parts, " ")
}

// Target is the rule's -j argument, or "" when it has none.
func (r Rule) Target() string {
	for i := 0; i+1 < len(r); i++ {
		if r[i] == "-j" {
			return r[i+1]
		}
	}
	return ""
}

// Value returns the argument that follows flag in the rule (e.g. "--dport", "-d"), or ""
// when the flag is absent.
func (r Rule) Value(flag string) string { return valueOf(r, flag) }

// Comment returns the rule's --comment text, or "" when it has none.
func (r Rule) Comment() string { return valueOf(r, "--comment") }

func valueOf(args []string, flag string) string {
	for i := 0; i+1 < len(args); i++ {
		if args[i] == flag {
			return args[i+1]
		}
	}
	return ""
}

// Table is one netfilter table: its chains, each an ordered list of rules.
type Table struct {
	Chains map[string][]Rule
	// Policies are the policies ("ACCEPT" or "DROP") the text gave built-in chains; a
	// built-in chain without one has the kernel's default, ACCEPT.
	Policies map[string]string
}

// Policy is the policy of built-in chain: what happens to a packet that reaches its end.
func (tb *Table) Policy(chain string) string {
	if p := tb.Policies[chain]; p != "" {
		return p
	}
	return "ACCEPT"
}

// Tables is a whole ruleset, by table name.
type Tables map[string]*Table

var builtinChains = map[string][]string{
	"filter": {"INPUT", "FORWARD", "OUTPUT"},
	"nat":    {"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"},
	"mangle": {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"},
	"raw":    {"PREROUTING", "OUTPUT"},
}

// targets are the jump targets that are extensions rather than chains: kube-proxy's, and
// those other components (CNI plugins, Docker, firewalls) leave in a node's tables, so
// that a real iptables-save reads without "jump to a missing chain".
var targets = map[string]bool{
	"ACCEPT": true, "DROP": true, "REJECT": true, "RETURN": true, "DNAT": true, "SNAT": true,
	"MASQUERADE": true, "MARK": true, "CONNMARK": true, "LOG": true, "NOTRACK": true, "CT": true,
	"REDIRECT": true, "NETMAP": true, "NFLOG": true, "NFQUEUE": true, "TPROXY": true, "TCPMSS": true,
	"CHECKSUM": true, "CLASSIFY": true, "TRACE": true, "SET": true, "AUDIT": true, "DSCP": true,
	"TOS": true, "TTL": true, "HL": true, "TEE": true, "SECMARK": true, "CONNSECMARK": true,
}

// IsBuiltin reports whether chain is one of table's built-in chains.
func IsBuiltin(table, chain string) bool {
	for _, c := range builtinChains[table] {
		if c == chain {
			return true
		}
	}
	return false
}

// NewTables returns the ruleset of a fresh network namespace: built-in chains, no rules.
func NewTables() Tables {
	t := Tables{}
	for name := range builtinChains {
		t[name] = newTable(name)
	}
	return t
}

func newTable(name string) *Table {
	tb := &Table{Chains: map[string][]Rule{}}
	for _, c := range builtinChains[name] {
		tb.Chains[c] = nil
	}
	return tb
}

func (tb *Table) clone() *Table {
	c := &Table{Chains: make(map[string][]Rule, len(tb.Chains)), Policies: maps.Clone(tb.Policies)}
	for name, rules := range tb.Chains {
		c.Chains[name] = append([]Rule(nil), rules...)
	}
	return c
}

// Clone returns a deep copy.
func (t Tables) Clone() Tables {
	c := Tables{}
	for name, tb := range t {
		c[name] = tb.clone()
	}
	return c
}

// LineError is a restore failure at a payload line, numbered from 1 as iptables-restore
// numbers them.
type LineError struct {
	Line int
	Err  error
}

func (e *LineError) Error() string { return fmt.Sprintf("line %d failed: %v", e.Line, e.Err) }
func (e *LineError) Unwrap() error { return e.Err }

// Apply applies an iptables-restore payload the way `iptables-restore --noflush` does:
// each table block takes effect at its COMMIT, all or nothing; declared chains are created
// or flushed; chains the payload does not mention are left alone. Jumps to missing chains,
// deleting a chain that is still referenced or not empty, and appending to a missing chain
// are errors, as in the kernel.
func (t Tables) Apply(payload []byte) error {
	sc := bufio.NewScanner(bytes.NewReader(payload))
	sc.Buffer(make([]byte, 1024*1024), 64*1024*1024)
	var (
		name  string
		work  *Table
		start int
	)
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		fail := func(err error) error { return &LineError{Line: lineNo, Err: err} }
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
			continue
		case strings.HasPrefix(line, "*"):
			if work != nil {
				return fail(errors.New("table started before COMMIT"))
			}
			name = line[1:]
			existing, ok := t[name]
			if !ok {
				return fail(fmt.Errorf("unknown table %q", name))
			}
			work, start = existing.clone(), lineNo
			continue
		case line == "COMMIT":
			if work == nil {
				return fail(errors.New("COMMIT outside a table"))
			}
			if err := work.checkJumps(name); err != nil {
				// iptables-restore reports a failed commit at the COMMIT line.
				return fail(err)
			}
			t[name] = work
			work = nil
			continue
		}
		if work == nil {
			return fail(errors.New("rule outside a table"))
		}
		if err := work.applyLine(name, line); err != nil {
			return fail(err)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if work != nil {
		return &LineError{Line: start, Err: errors.New("table not committed")}
	}
	return nil
}

func (tb *Table) applyLine(table, line string) error {
	if strings.HasPrefix(line, ":") {
		fields := strings.Fields(line[1:])
		if len(fields) == 0 {
			return errors.New("empty chain declaration")
		}
		chain := fields[0]
		if IsBuiltin(table, chain) {
			// ":INPUT DROP [0:0]" sets the policy, as iptables-restore does; "-" keeps it.
			if len(fields) > 1 && (fields[1] == "ACCEPT" || fields[1] == "DROP") {
				if tb.Policies == nil {
					tb.Policies = map[string]string{}
				}
				tb.Policies[chain] = fields[1]
			}
			return nil
		}
		tb.Chains[chain] = nil
		return nil
	}
	args, err := SplitArgs(line)
	if err != nil {
		return err
	}
	if len(args) < 1 {
		return errors.New("empty line")
	}
	op := args[0]
	chain := ""
	if len(args) > 1 {
		chain = args[1]
	}
	rest := Rule(nil)
	if len(args) > 2 {
		rest = Rule(args[2:])
	}
	switch op {
	case "-A", "--append":
		if _, ok := tb.Chains[chain]; !ok {
			return fmt.Errorf("chain %q does not exist", chain)
		}
		tb.Chains[chain] = append(tb.Chains[chain], rest)
	case "-I", "--insert":
		rules, ok := tb.Chains[chain]
		if !ok {
			return fmt.Errorf("chain %q does not exist", chain)
		}
		pos := 1
		if len(rest) > 0 {
			if n, err := strconv.Atoi(rest[0]); err == nil {
				pos, rest = n, rest[1:]
			}
		}
		if pos < 1 || pos > len(rules)+1 {
			return fmt.Errorf("index %d out of range", pos)
		}
		rules = append(rules[:pos-1], append([]Rule{rest}, rules[pos-1:]...)...)
		tb.Chains[chain] = rules
	case "-D", "--delete":
		rules, ok := tb.Chains[chain]
		if !ok {
			return fmt.Errorf("chain %q does not exist", chain)
		}
		idx := -1
		if len(rest) == 1 {
			if n, err := strconv.Atoi(rest[0]); err == nil {
				idx = n - 1
			}
		}
		if idx < 0 {
			idx = indexOf(rules, rest)
		}
		if idx < 0 || idx >= len(rules) {
			return errors.New("rule does not exist")
		}
		tb.Chains[chain] = append(rules[:idx:idx], rules[idx+1:]...)
	case "-F", "--flush":
		if chain == "" {
			for c := range tb.Chains {
				tb.Chains[c] = nil
			}
			return nil
		}
		if _, ok := tb.Chains[chain]; !ok {
			return fmt.Errorf("chain %q does not exist", chain)
		}
		tb.Chains[chain] = nil
	case "-N", "--new-chain":
		if _, ok := tb.Chains[chain]; ok {
			return fmt.Errorf("chain %q already exists", chain)
		}
		tb.Chains[chain] = nil
	case "-X", "--delete-chain":
		return tb.deleteChain(table, chain)
	default:
		return fmt.Errorf("unsupported operation %q", op)
	}
	return nil
}

func (tb *Table) deleteChain(table, chain string) error {
	if IsBuiltin(table, chain) {
		return fmt.Errorf("cannot delete built-in chain %q", chain)
	}
	rules, ok := tb.Chains[chain]
	if !ok {
		return fmt.Errorf("chain %q does not exist", chain)
	}
	if len(rules) > 0 {
		return fmt.Errorf("chain %q is not empty", chain)
	}
	for from, rs := range tb.Chains {
		for _, r := range rs {
			if r.Target() == chain {
				return fmt.Errorf("chain %q is still referenced from %q", chain, from)
			}
		}
	}
	delete(tb.Chains, chain)
	return nil
}

func (tb *Table) checkJumps(table string) error {
	for from, rules := range tb.Chains {
		for _, r := range rules {
			tgt := r.Target()
			if tgt == "" || targets[tgt] {
				continue
			}
			if _, ok := tb.Chains[tgt]; !ok {
				return fmt.Errorf("%s: rule in %q jumps to missing chain %q", table, from, tgt)
			}
		}
	}
	return nil
}

func indexOf(rules []Rule, want Rule) int {
	for i, r := range rules {
		if r.String() == want.String() {
			return i
		}
	}
	return -1
}

// SplitArgs splits a restore line into arguments. Double quotes group words (and are
// removed); there is no other escaping, which is all our payloads use.
func SplitArgs(line string) ([]string, error) {
	var (
		args    []string
		cur     strings.Builder
		inQuote bool
		has     bool
	)
	for _, r := range line {
		switch {
		case r == '"':
			inQuote = !inQuote
			has = true
		case (r == ' ' || r == '\t') && !inQuote:
			if has {
				args = append(args, cur.String())
				cur.Reset()
				has = false
			}
		default:
			cur.WriteRune(r)
			has = true
		}
	}
	if inQuote {
		return nil, errors.New("unterminated quote")
	}
	if has {
		args = append(args, cur.String())
	}
	return args, nil
}

// Dump renders the ruleset canonically for golden files and diffs: tables and chains in
// name order (built-in chains first), rules in their (meaningful) chain order. Empty
// built-in chains and tables with nothing but empty built-ins are omitted.
func (t Tables) Dump() string {
	var b strings.Builder
	names := make([]string, 0, len(t))
	for n := range t {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		tb := t[n]
		chains := make([]string, 0, len(tb.Chains))
		empty := true
		for c, rules := range tb.Chains {
			if IsBuiltin(n, c) && len(rules) == 0 {
				continue
			}
			chains = append(chains, c)
			empty = false
		}
		if empty {
			continue
		}
		sort.Slice(chains, func(i, j int) bool {
			bi, bj := IsBuiltin(n, chains[i]), IsBuiltin(n, chains[j])
			if bi != bj {
				return bi
			}
			return chains[i] < chains[j]
		})
		fmt.Fprintf(&b, "*%s\n", n)
		for _, c := range chains {
			fmt.Fprintf(&b, ":%s\n", c)
		}
		for _, c := range chains {
			for _, r := range tb.Chains[c] {
				fmt.Fprintf(&b, "-A %s %s\n", c, r)
			}
		}
		b.WriteString("COMMIT\n")
	}
	return b.String()
}

// CheckJumps returns an error naming a rule that jumps to a chain missing from its table,
// or nil. Apply already refuses such a commit; this states the invariant explicitly for
// tables that were built or edited by hand.
func (t Tables) CheckJumps() error {
	names := make([]string, 0, len(t))
	for n := range t {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if err := t[n].checkJumps(n); err != nil {
			return err
		}
	}
	return nil
}

// ChainNames lists, sorted, the chains of table for which keep returns true (every chain
// when keep is nil).
func (t Tables) ChainNames(table string, keep func(chain string) bool) []string {
	tb, ok := t[table]
	if !ok {
		return nil
	}
	var names []string
	for c := range tb.Chains {
		if keep == nil || keep(c) {
			names = append(names, c)
		}
	}
	sort.Strings(names)
	return names
}

// RuleCount counts the rules in a table's chains.
func (t Tables) RuleCount(table string) int {
	n := 0
	for _, rules := range t[table].Chains {
		n += len(rules)
	}
	return n
}
