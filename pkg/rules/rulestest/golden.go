// Package rulestest holds what rule tests need beyond the ruleset itself (pkg/ruleset:
// tables, restore parsing, packet tracer): golden files with an -update flag, a line
// diff, and structural checks of rendered payloads.
package rulestest

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite golden files with the current output")

// Updating reports whether the test runs with -update, for tests that regenerate
// testdata other than golden files (such as real iptables-save output).
func Updating() bool { return *update }

// Golden compares got with the golden file testdata/<name>.golden, or rewrites the file
// when the test runs with -update. Golden diffs are reviewed like code.
func Golden(t testing.TB, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading golden file (run with -update to create it): %v", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the golden file (run with -update to accept):\n%s", path, Diff(string(want), got))
	}
}

// Diff is a minimal line diff: lines only in want are marked "-", only in got "+". It is
// meant for small rulesets in test failures, not as a general diff.
func Diff(want, got string) string {
	wl, gl := strings.Split(want, "\n"), strings.Split(got, "\n")
	inGot := map[string]int{}
	for _, l := range gl {
		inGot[l]++
	}
	inWant := map[string]int{}
	for _, l := range wl {
		inWant[l]++
	}
	var b strings.Builder
	for _, l := range wl {
		if inGot[l] == 0 {
			b.WriteString("- " + l + "\n")
		}
	}
	for _, l := range gl {
		if inWant[l] == 0 {
			b.WriteString("+ " + l + "\n")
		}
	}
	if b.Len() == 0 {
		return "(same lines, different order)\n"
	}
	return b.String()
}
