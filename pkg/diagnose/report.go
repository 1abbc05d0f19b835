package diagnose

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Severity says how much a finding matters.
type Severity int

const (
	// OK is a check that passed; it is reported so that the reader knows it was made.
	OK Severity = iota
	// Warning is something that may explain a symptom or will cause one later, but
	// that does not stop Services from answering by itself.
	Warning
	// Problem is something that stops Services from answering, or will as soon as
	// traffic or a change arrives.
	Problem
)

// String is the severity's lower-case name, as the JSON report spells it.
func (s Severity) String() string {
	switch s {
	case OK:
		return "ok"
	case Warning:
		return "warning"
	case Problem:
		return "problem"
	}
	return fmt.Sprintf("severity(%d)", int(s))
}

// MarshalText makes the JSON report spell severities as words rather than numbers,
// which would change meaning if a severity were ever added.
func (s Severity) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// Finding is the result of one check.
type Finding struct {
	// ID names the check, and the IP family where it is per family, such as
	// "node/ip-forward/IPv4" or "daemon/sync/IPv6". It is stable, for scripts
	// that read the JSON report.
	ID string `json:"id"`
	// Severity says how much it matters.
	Severity Severity `json:"severity"`
	// Title says in a few words what was found.
	Title string `json:"title"`
	// Evidence is what was read, with its values, one fact per line, so that a
	// reader can check the conclusion.
	Evidence []string `json:"evidence,omitempty"`
	// Fix is one line saying what to do; empty when there is nothing to do.
	Fix string `json:"fix,omitempty"`
}

// Report collects the findings of a diagnosis, in the order they were added.
type Report struct {
	// Findings are the findings in the order the checks ran.
	Findings []Finding
}

// Add appends findings to the report.
func (r *Report) Add(findings ...Finding) {
	r.Findings = append(r.Findings, findings...)
}

// Failed reports whether any finding is a Problem: the diagnose command exits with a
// non-zero status exactly then, so that scripts and CI can act on it. Warnings alone
// do not fail it, or a node with a past restore failure would fail forever.
func (r Report) Failed() bool {
	return r.Count(Problem) > 0
}

// Count is the number of findings of severity s.
func (r Report) Count(s Severity) int {
	n := 0
	for _, f := range r.Findings {
		if f.Severity == s {
			n++
		}
	}
	return n
}

// textIndent lines evidence and fixes up under the title, past the severity column.
const textIndent = "         "

// WriteText writes the report for people: one block per finding, the severity in
// capitals first so that problems stand out when scanning, then the evidence and the
// fix indented under the title, and a summary line at the end:
//
//	PROBLEM  IPv4 forwarding is off
//	         net.ipv4.ip_forward = 0
//	         fix: sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d/)
func (r Report) WriteText(w io.Writer) error {
	var b strings.Builder
	for _, f := range r.Findings {
		fmt.Fprintf(&b, "%-8s %s\n", strings.ToUpper(f.Severity.String()), f.Title)
		for _, e := range f.Evidence {
			fmt.Fprintf(&b, "%s%s\n", textIndent, e)
		}
		if f.Fix != "" {
			fmt.Fprintf(&b, "%sfix: %s\n", textIndent, f.Fix)
		}
		b.WriteByte('\n')
	}
	fmt.Fprintf(&b, "%s, %s, %d ok\n", plural(r.Count(Problem), "problem"), plural(r.Count(Warning), "warning"), r.Count(OK))
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("writing the diagnosis: %w", err)
	}
	return nil
}

// plural is "1 problem" or "2 problems".
func plural(n int, noun string) string {
	if n == 1 {
		return fmt.Sprintf("%d %s", n, noun)
	}
	return fmt.Sprintf("%d %ss", n, noun)
}

// jsonReport is the JSON form of a report: the verdict and counts first, so that a
// script need not walk the findings to know whether the node is healthy.
type jsonReport struct {
	Failed   bool      `json:"failed"`
	Problems int       `json:"problems"`
	Warnings int       `json:"warnings"`
	Findings []Finding `json:"findings"`
}

// WriteJSON writes the report as one indented JSON object: "failed" (Failed),
// "problems" and "warnings" (counts), and "findings", each with "id", "severity"
// ("ok", "warning" or "problem"), "title", "evidence" (a list of lines) and "fix".
func (r Report) WriteJSON(w io.Writer) error {
	findings := r.Findings
	if findings == nil {
		// An empty list, not null: scripts iterate over it.
		findings = []Finding{}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(jsonReport{Failed: r.Failed(), Problems: r.Count(Problem), Warnings: r.Count(Warning), Findings: findings}); err != nil {
		return fmt.Errorf("writing the diagnosis as JSON: %w", err)
	}
	return nil
}
