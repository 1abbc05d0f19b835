package rules

import (
	"strconv"
	"strings"
)

// appendRule appends "<op> chain [pos] args...\n". Arguments are written as they are,
// except that an argument containing a space is wrapped in double quotes (comments);
// callers guarantee that no argument contains a double quote or a newline (the trackers
// reject such names).
func appendRule(b []byte, op, chain string, args []string) []byte {
	b = append(b, op...)
	b = append(b, ' ')
	b = append(b, chain...)
	for _, a := range args {
		b = append(b, ' ')
		if strings.IndexByte(a, ' ') >= 0 {
			b = append(b, '"')
			b = append(b, a...)
			b = append(b, '"')
		} else {
			b = append(b, a...)
		}
	}
	return append(b, '\n')
}

func appendChain(b []byte, name string) []byte {
	b = append(b, ':')
	b = append(b, name...)
	return append(b, " - [0:0]\n"...)
}

// lines is a block of "-A" rule lines and how many there are.
type lines struct {
	text []byte
	n    int
}

func (l *lines) rule(chain string, args ...string) {
	l.text = appendRule(l.text, "-A", chain, args)
	l.n++
}

// lineBuffer accumulates chain declarations and rules for one table, kept apart because
// iptables-restore wants every chain declared before rules refer to it.
type lineBuffer struct {
	chains, rules   []byte
	nChains, nRules int
}

// bufferMark is a position in a lineBuffer, to cut it into per-service pieces.
type bufferMark struct{ chains, rules, nChains, nRules int }

func (b *lineBuffer) grow(bytes, chains int) {
	b.rules = make([]byte, 0, bytes)
	b.chains = make([]byte, 0, 40*chains)
}

func (b *lineBuffer) chain(name string) {
	b.chains = appendChain(b.chains, name)
	b.nChains++
}

func (b *lineBuffer) rule(chain string, args ...string) {
	b.rules = appendRule(b.rules, "-A", chain, args)
	b.nRules++
}

func (b *lineBuffer) mark() bufferMark {
	return bufferMark{chains: len(b.chains), rules: len(b.rules), nChains: b.nChains, nRules: b.nRules}
}

// deleteOps appends n deletions of the rule at 1-based position pos of chain; each
// deletion moves the following rules up, so the position stays the same.
func deleteOps(b []byte, chain string, pos, n int) []byte {
	p := strconv.Itoa(pos)
	for i := 0; i < n; i++ {
		b = append(b, "-D "...)
		b = append(b, chain...)
		b = append(b, ' ')
		b = append(b, p...)
		b = append(b, '\n')
	}
	return b
}

// insertOps turns the "-A chain ..." lines of text into "-I chain pos ..." lines that put
// them at positions pos, pos+1, ... of chain.
func insertOps(b []byte, chain string, pos int, text []byte) []byte {
	prefix := len("-A ") + len(chain)
	for len(text) > 0 {
		end := strings.IndexByte(string(text), '\n') + 1
		line := text[:end]
		b = append(b, "-I "...)
		b = append(b, chain...)
		b = append(b, ' ')
		b = strconv.AppendInt(b, int64(pos), 10)
		b = append(b, line[prefix:]...)
		text = text[end:]
		pos++
	}
	return b
}
