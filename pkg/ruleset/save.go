package ruleset

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strings"
)

// counters is the "[packets:bytes]" prefix "iptables-save -c" puts before each rule.
var counters = regexp.MustCompile(`^\[\d+:\d+\]\s+`)

// ParseSave reads iptables-save output (legacy or nft, with or without -c, one table or
// several concatenated) into tables: exactly the tables, chains and rules of the text,
// so a table the save leaves out is missing rather than empty. Tables the fake does not
// know (security, ...) are read too, so a whole save is accepted.
//
// iptables-nft-save cannot print a table holding rules that were not written with
// iptables syntax; it prints "# Table `nat' is incompatible, use 'nft' tool." instead,
// which is an error here: tracing the rest would leave out rules that act on packets.
func ParseSave(save []byte) (Tables, error) {
	t := Tables{}
	var payload bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(save))
	sc.Buffer(make([]byte, 1024*1024), 64*1024*1024)
	for lineNo := 1; sc.Scan(); lineNo++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, "# Table `") && strings.Contains(line, "incompatible"):
			return nil, &LineError{Line: lineNo, Err: fmt.Errorf("iptables-nft-save could not show a table: %q", line)}
		case strings.HasPrefix(line, "*"):
			if _, ok := t[line[1:]]; !ok {
				t[line[1:]] = newTable(line[1:])
			}
		case strings.HasPrefix(line, "["):
			line = counters.ReplaceAllString(line, "")
		}
		// Lines are kept one for one, so that Apply's line numbers are the save's.
		payload.WriteString(line)
		payload.WriteByte('\n')
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("reading iptables-save output: %w", err)
	}
	if err := t.Apply(payload.Bytes()); err != nil {
		return nil, fmt.Errorf("reading iptables-save output: %w", err)
	}
	return t, nil
}
