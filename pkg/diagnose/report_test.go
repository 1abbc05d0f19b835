package diagnose

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"
)

func TestFailed(t *testing.T) {
	var r Report
	if r.Failed() {
		t.Error("an empty report failed")
	}
	r.Add(Finding{ID: "a", Severity: OK}, Finding{ID: "b", Severity: Warning})
	if r.Failed() {
		t.Error("warnings alone failed the report")
	}
	r.Add(Finding{ID: "c", Severity: Problem})
	if !r.Failed() {
		t.Error("a problem did not fail the report")
	}
}

var sample3 = Report{Findings: []Finding{
	{ID: "node/ip-forward/IPv4", Severity: Problem, Title: "IPv4 forwarding is off", Evidence: []string{"net.ipv4.ip_forward = 0"},
		Fix: "sysctl -w net.ipv4.ip_forward=1"},
	{ID: "daemon/drift", Severity: Warning, Title: "drift", Evidence: []string{"a", "b"}, Fix: "find it"},
	{ID: "node/xtables-lock", Severity: OK, Title: "xtables lock is free"},
}}

func TestWriteText(t *testing.T) {
	var b bytes.Buffer
	if err := sample3.WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := `PROBLEM  IPv4 forwarding is off
         net.ipv4.ip_forward = 0
         fix: sysctl -w net.ipv4.ip_forward=1

WARNING  drift
         a
         b
         fix: find it

OK       xtables lock is free

1 problem, 1 warning, 1 ok
`
	if got := b.String(); got != want {
		t.Errorf("WriteText:\n%s\nwant:\n%s", got, want)
	}

	b.Reset()
	if err := (Report{}).WriteText(&b); err != nil || b.String() != "0 problems, 0 warnings, 0 ok\n" {
		t.Errorf("empty report: %q, %v", b.String(), err)
	}
}

// failingWriter fails every write.
type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("broken pipe") }

func TestWriteErrors(t *testing.T) {
	if err := sample3.WriteText(failingWriter{}); err == nil {
		t.Error("WriteText to a failing writer succeeded")
	}
	if err := sample3.WriteJSON(failingWriter{}); err == nil {
		t.Error("WriteJSON to a failing writer succeeded")
	}
}

func TestWriteJSON(t *testing.T) {
	var b bytes.Buffer
	if err := sample3.WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Failed   bool `json:"failed"`
		Problems int  `json:"problems"`
		Warnings int  `json:"warnings"`
		Findings []struct {
			ID       string   `json:"id"`
			Severity string   `json:"severity"`
			Title    string   `json:"title"`
			Evidence []string `json:"evidence"`
			Fix      string   `json:"fix"`
		} `json:"findings"`
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatalf("%v in %s", err, b.String())
	}
	if !got.Failed || got.Problems != 1 || got.Warnings != 1 || len(got.Findings) != 3 {
		t.Fatalf("got %+v", got)
	}
	f := got.Findings[0]
	if f.ID != "node/ip-forward/IPv4" || f.Severity != "problem" || f.Title != "IPv4 forwarding is off" ||
		len(f.Evidence) != 1 || f.Evidence[0] != "net.ipv4.ip_forward = 0" || f.Fix != "sysctl -w net.ipv4.ip_forward=1" {
		t.Errorf("first finding %+v", f)
	}
	if got.Findings[1].Severity != "warning" || got.Findings[2].Severity != "ok" {
		t.Errorf("severities %q, %q", got.Findings[1].Severity, got.Findings[2].Severity)
	}
	// An OK finding without evidence or fix leaves them out.
	if bytes.Contains(b.Bytes(), []byte(`"fix": ""`)) || bytes.Contains(b.Bytes(), []byte(`"evidence": null`)) {
		t.Errorf("empty fields written:\n%s", b.String())
	}

	b.Reset()
	if err := (Report{}).WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	if want := "{\n  \"failed\": false,\n  \"problems\": 0,\n  \"warnings\": 0,\n  \"findings\": []\n}\n"; b.String() != want {
		t.Errorf("empty report:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestSeverityString(t *testing.T) {
	for s, want := range map[Severity]string{OK: "ok", Warning: "warning", Problem: "problem", Severity(7): "severity(7)"} {
		if got := s.String(); got != want {
			t.Errorf("%d: %q, want %q", int(s), got, want)
		}
	}
}
