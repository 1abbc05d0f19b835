package iptables

import (
	"errors"
	"fmt"
	"os/exec"
	"testing"
)

// The outputs below were captured from iptables 1.8.9 (Debian) restore binaries.
func TestFailedLine(t *testing.T) {
	tests := []struct {
		name   string
		output string
		want   int
		wantOK bool
	}{
		{
			name:   "legacy failed operation",
			output: "iptables-restore: line 4 failed",
			want:   4, wantOK: true,
		},
		{
			name:   "legacy ip6tables failed operation",
			output: "ip6tables-restore: line 12 failed",
			want:   12, wantOK: true,
		},
		{
			name: "legacy jump to missing chain",
			output: "iptables-restore v1.8.9 (legacy): Couldn't load target `KUBE-MISSING':No such file or directory\n\n" +
				"Error occurred at line: 3\nTry `iptables-restore -h' or 'iptables-restore --help' for more information.",
			want: 3, wantOK: true,
		},
		{
			name: "nft jump to missing chain",
			output: "iptables-nft-restore v1.8.9 (nf_tables): Chain 'KUBE-MISSING' does not exist\n" +
				"Error occurred at line: 7\nTry `iptables-nft-restore -h' or 'iptables-nft-restore --help' for more information.",
			want: 7, wantOK: true,
		},
		{
			name:   "nft failed operation",
			output: "iptables-nft-restore: line 4 failed: Bad rule (does a matching rule exist in that chain?).",
			want:   4, wantOK: true,
		},
		{
			name:   "nft kernel rejection at commit",
			output: "iptables-nft-restore v1.8.9 (nf_tables): \nline 5: CHAIN_DEL failed (Device or resource busy): chain KUBE-B",
			want:   5, wantOK: true,
		},
		{
			name:   "lock timeout names no line",
			output: "Another app is currently holding the xtables lock. Stopped waiting after 5s.",
		},
		{
			name:   "mid-line 'line N:' is not a line report",
			output: "something about line 5: nothing",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := failedLine(tt.output)
			if got != tt.want || ok != tt.wantOK {
				t.Errorf("failedLine() = %d, %v; want %d, %v", got, ok, tt.want, tt.wantOK)
			}
		})
	}
}

func TestParseErrorUnwrap(t *testing.T) {
	exitErr := &exec.ExitError{}
	err := fmt.Errorf("sync: %w", &ParseError{Line: 3, Output: "iptables-restore: line 3 failed", Cmd: "iptables-legacy-restore -w 5 --noflush", Err: exitErr})
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Line != 3 {
		t.Fatalf("errors.As(*ParseError) failed for %v", err)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Errorf("errors.As(*exec.ExitError) failed for %v", err)
	}
	want := "iptables-legacy-restore -w 5 --noflush: line 3 failed: iptables-restore: line 3 failed"
	if pe.Error() != want {
		t.Errorf("Error() = %q, want %q", pe.Error(), want)
	}
}

func TestLinesAround(t *testing.T) {
	payload := []byte("*filter\n:KUBE-A - [0:0]\n-A KUBE-A -j ACCEPT\n-A INPUT -j KUBE-B\nCOMMIT\n")
	tests := []struct {
		name         string
		line, radius int
		want         string
	}{
		{"middle", 3, 1, "  2  :KUBE-A - [0:0]\n> 3  -A KUBE-A -j ACCEPT\n  4  -A INPUT -j KUBE-B\n"},
		{"clamped at start", 1, 3, "> 1  *filter\n  2  :KUBE-A - [0:0]\n  3  -A KUBE-A -j ACCEPT\n  4  -A INPUT -j KUBE-B\n"},
		{"clamped at end", 5, 2, "  3  -A KUBE-A -j ACCEPT\n  4  -A INPUT -j KUBE-B\n> 5  COMMIT\n"},
		{"radius zero", 4, 0, "> 4  -A INPUT -j KUBE-B\n"},
		{"wider numbers", 9, 1, ""},
		{"zero line", 0, 3, ""},
		{"negative radius", 2, -1, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := LinesAround(payload, tt.line, tt.radius); got != tt.want {
				t.Errorf("LinesAround(%d, %d) =\n%s\nwant\n%s", tt.line, tt.radius, got, tt.want)
			}
		})
	}

	var long []byte
	for i := 1; i <= 12; i++ {
		long = fmt.Appendf(long, "l%d\n", i)
	}
	want := "   8  l8\n   9  l9\n> 10  l10\n  11  l11\n  12  l12\n"
	if got := LinesAround(long, 10, 2); got != want {
		t.Errorf("LinesAround(long, 10, 2) =\n%s\nwant\n%s", got, want)
	}
}

func TestClassifyBusy(t *testing.T) {
	run := func(status string) error {
		t.Helper()
		err := exec.Command("sh", "-c", "exit "+status).Run()
		if err == nil {
			t.Fatalf("sh -c 'exit %s' succeeded", status)
		}
		return err
	}
	busy := fmt.Errorf("checking chain: %w", classify(run("4")))
	if !IsBusy(busy) {
		t.Errorf("IsBusy(exit status 4) = false, want true: %v", busy)
	}
	var ee *exec.ExitError
	if !errors.As(busy, &ee) || ee.ExitCode() != 4 {
		t.Errorf("BusyError does not unwrap to the *exec.ExitError: %v", busy)
	}
	for _, err := range []error{run("1"), run("3"), errors.New("plain"), nil} {
		if IsBusy(classify(err)) {
			t.Errorf("IsBusy(classify(%v)) = true, want false", err)
		}
	}
	if classify(nil) != nil {
		t.Error("classify(nil) != nil")
	}
}
