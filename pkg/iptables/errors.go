package iptables

import (
	"bytes"
	"errors"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"

	coreiptables "github.com/coreos/go-iptables/iptables"
)

// ParseError is a restore failure that the restore binary attributed to a line
// of the payload (numbered from 1, as iptables-restore numbers them).
//
// The backends disagree on which line they blame, so callers should log the
// lines around Line (LinesAround) rather than trust it exactly:
//
//   - iptables-legacy-restore rejects a jump to a missing chain while parsing
//     the rule ("Error occurred at line: N", N = the -A line, exit status 2),
//     and reports failed operations as "iptables-restore: line N failed"
//     (exit status 1).
//   - iptables-nft-restore resolves jump targets only at COMMIT, so a jump to a
//     missing chain is reported at the table's COMMIT line ("Chain 'X' does not
//     exist" / "Error occurred at line: N"); failed operations read
//     "iptables-nft-restore: line N failed: <reason>", and kernel rejections at
//     commit read "line N: CHAIN_DEL failed (Device or resource busy): ..."
//     (exit status 4).
//
// Both backends commit each table block on its own: tables before the failing
// block stay applied, the failing block and everything after it do not.
type ParseError struct {
	// Line is the payload line the binary blamed.
	Line int
	// Output is the binary's combined stdout and stderr, trimmed.
	Output string
	// Cmd is the command line that failed, for logs.
	Cmd string
	// Err is the underlying cause (an *exec.ExitError for real binaries), if any.
	Err error
}

// Error implements error.
func (e *ParseError) Error() string {
	return fmt.Sprintf("%s: line %d failed: %s", e.Cmd, e.Line, e.Output)
}

// Unwrap returns the underlying cause, so errors.As can still find an
// *exec.ExitError (for the exit status) behind a ParseError.
func (e *ParseError) Unwrap() error { return e.Err }

// failedLineRE matches every form in which the restore binaries of
// iptables 1.8 name the failing line (see ParseError). The first match wins:
// the binaries print one such message and then stop.
var failedLineRE = regexp.MustCompile(`(?m)line (\d+) failed|Error occurred at line: (\d+)|^line (\d+): `)

// failedLine extracts the failing payload line from restore output, or reports
// false when the output names none (for example a lock timeout).
func failedLine(output string) (int, bool) {
	m := failedLineRE.FindStringSubmatch(output)
	if m == nil {
		return 0, false
	}
	for _, s := range m[1:] {
		if s == "" {
			continue
		}
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return 0, false
		}
		return n, true
	}
	return 0, false
}

// LinesAround returns payload lines line-radius through line+radius (clamped to
// the payload), one per output line, each prefixed with its number; the line
// itself is marked with ">". It returns "" when line is not in the payload.
// It is meant for logging the context of a *ParseError, as kube-proxy logs
// the three lines either side of a failed restore line.
func LinesAround(payload []byte, line, radius int) string {
	if line < 1 || radius < 0 {
		return ""
	}
	first, last := max(line-radius, 1), line+radius
	width := len(strconv.Itoa(last))
	var b strings.Builder
	found := false
	rest := payload
	// Walk the payload without splitting it all: restore payloads of large
	// clusters run to tens of megabytes and we want only a handful of lines.
	for n := 1; n <= last && len(rest) > 0; n++ {
		cur, after, _ := bytes.Cut(rest, []byte{'\n'})
		rest = after
		if n < first {
			continue
		}
		mark := "  "
		if n == line {
			mark, found = "> ", true
		}
		fmt.Fprintf(&b, "%s%*d  %s\n", mark, width, n, cur)
	}
	if !found {
		return ""
	}
	return b.String()
}

// exitResourceProblem is the exit status both backends use for RESOURCE_PROBLEM:
// the xtables lock was still held when --wait expired (legacy: "Another app
// is currently holding the xtables lock"), or the kernel answered EBUSY/EAGAIN
// (nft: "Device or resource busy", "Resource temporarily unavailable").
const exitResourceProblem = 4

// BusyError is a command that failed with exit status 4 because the xtables
// lock or a kernel resource was busy. It says nothing about the rules: a
// ChainExists that fails with a BusyError does not mean the chain is missing,
// and the command may well succeed when retried. Check for it with errors.As.
type BusyError struct {
	// Err is the underlying failure, with the command's output.
	Err error
}

// Error implements error.
func (e *BusyError) Error() string {
	return fmt.Sprintf("resource busy (exit status %d): %v", exitResourceProblem, e.Err)
}

// Unwrap returns the underlying failure.
func (e *BusyError) Unwrap() error { return e.Err }

// IsBusy reports whether err is, or wraps, a *BusyError.
func IsBusy(err error) bool {
	var be *BusyError
	return errors.As(err, &be)
}

// exitStatus returns the exit status of the failed command behind err, or -1
// when err is not a command's exit (it was killed, or never started).
func exitStatus(err error) int {
	// go-iptables' Error embeds exec.ExitError by value, so errors.As cannot
	// find an *exec.ExitError behind it: ask it first.
	var ierr *coreiptables.Error
	if errors.As(err, &ierr) {
		return ierr.ExitStatus()
	}
	var eerr *exec.ExitError
	if errors.As(err, &eerr) {
		return eerr.ExitCode()
	}
	return -1
}

// classify wraps err in a *BusyError when the command exited with status 4,
// and returns it unchanged otherwise (nil included).
func classify(err error) error {
	if err != nil && exitStatus(err) == exitResourceProblem {
		return &BusyError{Err: err}
	}
	return err
}
