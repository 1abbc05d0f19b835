package rulestest

// Structural checks for property tests (the FuzzRender target) and for any test that
// asserts on the shape of a ruleset rather than on its exact text.

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

// Unreferenced lists, sorted, the chains of table for which keep returns true that no
// rule of the table jumps to: orphans, when keep selects chains that only make sense as
// jump targets.
func Unreferenced(t ruleset.Tables, table string, keep func(chain string) bool) []string {
	tb, ok := t[table]
	if !ok {
		return nil
	}
	referenced := map[string]bool{}
	for _, rules := range tb.Chains {
		for _, r := range rules {
			if tgt := r.Target(); tgt != "" {
				referenced[tgt] = true
			}
		}
	}
	var orphans []string
	for c := range tb.Chains {
		if keep(c) && !referenced[c] {
			orphans = append(orphans, c)
		}
	}
	sort.Strings(orphans)
	return orphans
}

// Shape summarises the tables without their match text: one line per chain (built-in
// chains only when they hold rules), "table chain: target target ...", with "-" for a
// rule without a target. Tables written by different tools, such as our payload and
// the canonical rewrite iptables-save prints, can be compared through it.
func Shape(t ruleset.Tables) string {
	var b strings.Builder
	names := make([]string, 0, len(t))
	for n := range t {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		for _, c := range t.ChainNames(n, nil) {
			rules := t[n].Chains[c]
			if ruleset.IsBuiltin(n, c) && len(rules) == 0 {
				continue
			}
			fmt.Fprintf(&b, "%s %s:", n, c)
			for _, r := range rules {
				tgt := r.Target()
				if tgt == "" {
					tgt = "-"
				}
				b.WriteString(" " + tgt)
			}
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// DeclaredChains returns the chains a restore payload declares (":CHAIN POLICY [c:b]"
// lines), by table, in payload order and including repeats.
func DeclaredChains(payload []byte) (map[string][]string, error) {
	sc := bufio.NewScanner(bytes.NewReader(payload))
	sc.Buffer(make([]byte, 1024*1024), 64*1024*1024)
	declared := map[string][]string{}
	table := ""
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "*"):
			table = line[1:]
		case line == "COMMIT":
			table = ""
		case strings.HasPrefix(line, ":"):
			if table == "" {
				return nil, &ruleset.LineError{Line: lineNo, Err: errors.New("chain declared outside a table")}
			}
			fields := strings.Fields(line[1:])
			if len(fields) == 0 {
				return nil, &ruleset.LineError{Line: lineNo, Err: errors.New("empty chain declaration")}
			}
			declared[table] = append(declared[table], fields[0])
		}
	}
	return declared, sc.Err()
}

// LinesAround returns payload lines n-context..n+context (numbered from 1, as
// iptables-restore numbers them), each prefixed with its number, for failure messages.
func LinesAround(payload []byte, n, context int) string {
	lines := strings.Split(string(payload), "\n")
	var b strings.Builder
	for i := n - context; i <= n+context; i++ {
		if i < 1 || i > len(lines) {
			continue
		}
		mark := "  "
		if i == n {
			mark = "> "
		}
		fmt.Fprintf(&b, "%s%5d %s\n", mark, i, lines[i-1])
	}
	return b.String()
}
