// Package fake is a stateful in-memory iptables.Interface for tests.
//
// It holds tables, not a log of calls: Restore parses each payload into
// in-memory tables with ruleset.Tables.Apply (iptables-restore --noflush
// semantics, per-table commit, jumps to missing chains rejected), and the
// other methods edit the same tables. Tests assert on Tables(), the state a
// real kernel would hold, so they survive changes in how the code under test
// reaches that state.
//
// Where the fake differs from the real binaries:
//   - Rules are compared as strings, so RuleExists and DeleteRule match only
//     rules written exactly as before ("-s 10.0.0.1" and "-s 10.0.0.1/32" are
//     the same rule to iptables but not to the fake).
//   - A jump to a missing chain is reported at the table's COMMIT line, as
//     iptables-nft-restore does (iptables-legacy-restore blames the -A line).
//   - Match and target extensions are not validated.
//   - SetLockHeld stands in for another program holding the xtables lock
//     past --wait: every command that takes the lock fails with a
//     *iptables.BusyError until it is released.
package fake

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

// restoreCmd is what a fake *iptables.ParseError names as the failing command.
const restoreCmd = "fake iptables-restore --noflush"

// Fake is an in-memory iptables.Interface. The zero value is not usable; call
// New. It is safe for concurrent use.
type Fake struct {
	family  v1.IPFamily
	backend iptables.Backend

	mu           sync.Mutex
	tables       ruleset.Tables
	restoreCalls int
	lastPayload  []byte
	// failures are returned, in order, by the next Restore calls instead of
	// applying their payloads.
	failures []error
	// lockHeld makes every command that takes the xtables lock fail as busy.
	lockHeld bool
	// rejectLine stands in for the kernel refusing a rule (see RejectLines).
	rejectLine func(line string) bool
}

var _ iptables.Interface = (*Fake)(nil)

// New returns a Fake for family and backend holding the tables of a fresh
// network namespace: built-in chains only.
func New(family v1.IPFamily, backend iptables.Backend) *Fake {
	return &Fake{family: family, backend: backend, tables: ruleset.NewTables()}
}

// Family implements iptables.Interface.
func (f *Fake) Family() v1.IPFamily { return f.family }

// Backend implements iptables.Interface.
func (f *Fake) Backend() iptables.Backend { return f.backend }

// Tables returns a copy of the current state; changing it does not change the
// fake.
func (f *Fake) Tables() ruleset.Tables {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.tables.Clone()
}

// SetTables replaces the current state with a copy of t, for tests that start
// from rules left by a previous run or by another program.
func (f *Fake) SetTables(t ruleset.Tables) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tables = t.Clone()
}

// FailNextRestore makes the next Restore return err without applying its
// payload. Calls queue up: each makes one more Restore fail, in order.
func (f *Fake) FailNextRestore(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failures = append(f.failures, err)
}

// RejectLines makes Restore fail on the first payload line for which reject
// returns true, as the real binary fails on a rule the kernel refuses: the
// tables committed before that line's table stay applied, and the error names
// the line. nil accepts every line again.
func (f *Fake) RejectLines(reject func(line string) bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.rejectLine = reject
}

// SetLockHeld sets whether another program holds the xtables lock. While it
// is held, Restore, EnsureChain, ChainExists, RuleExists and DeleteRule fail
// with a wrapped *iptables.BusyError and change nothing, as the real commands
// do when --wait expires; SaveChains takes no lock and keeps working.
func (f *Fake) SetLockHeld(held bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lockHeld = held
}

// busy returns the error a command that needs the lock fails with, or nil
// when the lock is free. Callers hold f.mu.
func (f *Fake) busy(cmd string) error {
	if !f.lockHeld {
		return nil
	}
	return fmt.Errorf("%s: %w", cmd, &iptables.BusyError{
		Err: errors.New("another app is currently holding the xtables lock; stopped waiting"),
	})
}

// RestoreCalls counts Restore calls, failed ones included.
func (f *Fake) RestoreCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.restoreCalls
}

// LastPayload returns a copy of the payload of the latest Restore call, or
// nil before the first.
func (f *Fake) LastPayload() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]byte(nil), f.lastPayload...)
}

// Restore implements iptables.Interface. A payload the tables reject fails
// with a wrapped *iptables.ParseError naming the line; tables committed
// before the failing block stay applied, as with the real binaries.
func (f *Fake) Restore(ctx context.Context, pieces ...[]byte) error {
	payload := bytes.Join(pieces, nil)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.restoreCalls++
	f.lastPayload = payload
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%s: %w", restoreCmd, err)
	}
	if len(f.failures) > 0 {
		err := f.failures[0]
		f.failures = f.failures[1:]
		return err
	}
	if err := f.busy(restoreCmd); err != nil {
		return err
	}
	if f.rejectLine != nil {
		return f.applyRejecting(payload)
	}
	if err := f.tables.Apply(payload); err != nil {
		return restoreError(err)
	}
	return nil
}

// applyRejecting applies payload up to the table (COMMIT) that holds the first line
// rejectLine refuses, and fails there. Callers hold f.mu.
func (f *Fake) applyRejecting(payload []byte) error {
	lines := strings.SplitAfter(string(payload), "\n")
	tableStart := 0
	for i, line := range lines {
		if strings.HasPrefix(line, "*") {
			tableStart = i
		}
		if f.rejectLine(strings.TrimSuffix(line, "\n")) {
			if err := f.tables.Apply([]byte(strings.Join(lines[:tableStart], ""))); err != nil {
				return restoreError(err)
			}
			return restoreError(&ruleset.LineError{Line: i + 1, Err: errors.New("rule rejected by the kernel")})
		}
	}
	if err := f.tables.Apply(payload); err != nil {
		return restoreError(err)
	}
	return nil
}

// restoreError turns an Apply error into what the real Restore returns.
func restoreError(err error) error {
	var le *ruleset.LineError
	if errors.As(err, &le) {
		return fmt.Errorf("iptables restore failed: %w", &iptables.ParseError{
			Line:   le.Line,
			Output: fmt.Sprintf("%s: line %d failed: %v", restoreCmd, le.Line, le.Err),
			Cmd:    restoreCmd,
			Err:    le.Err,
		})
	}
	return fmt.Errorf("%s: %w", restoreCmd, err)
}

// SaveChains implements iptables.Interface: built-in chains first, then the
// others, each group in name order. An unknown table is an error, as it is
// for iptables-save.
func (f *Fake) SaveChains(ctx context.Context, table string) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("fake iptables-save: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	tb, ok := f.tables[table]
	if !ok {
		return nil, fmt.Errorf("fake iptables-save -t %s: table does not exist", table)
	}
	chains := make([]string, 0, len(tb.Chains))
	for c := range tb.Chains {
		chains = append(chains, c)
	}
	sort.Slice(chains, func(i, j int) bool {
		bi, bj := ruleset.IsBuiltin(table, chains[i]), ruleset.IsBuiltin(table, chains[j])
		if bi != bj {
			return bi
		}
		return chains[i] < chains[j]
	})
	return chains, nil
}

// SaveTo implements iptables.Interface: Save's output, written to w.
func (f *Fake) SaveTo(ctx context.Context, table string, w io.Writer) error {
	save, err := f.Save(ctx, table)
	if err != nil {
		return err
	}
	_, err = w.Write(save)
	return err
}

// Save implements iptables.Interface: the table in iptables-save form, chains
// in SaveChains order.
func (f *Fake) Save(ctx context.Context, table string) ([]byte, error) {
	chains, err := f.SaveChains(ctx, table)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	tb := f.tables[table]
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n", table)
	for _, c := range chains {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	for _, c := range chains {
		for _, r := range tb.Chains[c] {
			fmt.Fprintf(&b, "-A %s %s\n", c, r)
		}
	}
	b.WriteString("COMMIT\n")
	return []byte(b.String()), nil
}

// EnsureChain implements iptables.Interface.
func (f *Fake) EnsureChain(ctx context.Context, table, chain string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fake iptables -N: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.busy("fake iptables -N"); err != nil {
		return err
	}
	tb, ok := f.tables[table]
	if !ok {
		return fmt.Errorf("fake iptables -t %s -N %s: table does not exist", table, chain)
	}
	if _, ok := tb.Chains[chain]; ok {
		return nil
	}
	return f.edit(table, "-N "+chain)
}

// RuleExists implements iptables.Interface.
func (f *Fake) RuleExists(ctx context.Context, table, chain string, args ...string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("fake iptables -C: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.busy("fake iptables -C"); err != nil {
		return false, err
	}
	rules, err := f.chain(table, chain)
	if err != nil {
		return false, err
	}
	want := ruleset.Rule(args).String()
	for _, r := range rules {
		if r.String() == want {
			return true, nil
		}
	}
	return false, nil
}

// DeleteRule implements iptables.Interface: it deletes the first rule equal
// to args; a missing table, chain or rule is not an error.
func (f *Fake) DeleteRule(ctx context.Context, table, chain string, args ...string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("fake iptables -D: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.busy("fake iptables -D"); err != nil {
		return err
	}
	rules, err := f.chain(table, chain)
	if err != nil {
		return nil // a missing table or chain holds no rule to delete
	}
	want := ruleset.Rule(args).String()
	for i, r := range rules {
		if r.String() == want {
			// Delete by position: rule arguments that happen to be a single
			// number would otherwise read as a position.
			return f.edit(table, fmt.Sprintf("-D %s %d", chain, i+1))
		}
	}
	return nil
}

// ChainExists implements iptables.Interface. An unknown table is an error,
// as it is for iptables.
func (f *Fake) ChainExists(ctx context.Context, table, chain string) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, fmt.Errorf("fake iptables -S: %w", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.busy("fake iptables -S"); err != nil {
		return false, err
	}
	tb, ok := f.tables[table]
	if !ok {
		return false, fmt.Errorf("fake iptables -t %s -S %s: table does not exist", table, chain)
	}
	_, ok = tb.Chains[chain]
	return ok, nil
}

// chain returns the rules of table's chain, or an error worded like
// iptables' when either is missing. Callers hold f.mu.
func (f *Fake) chain(table, chain string) ([]ruleset.Rule, error) {
	tb, ok := f.tables[table]
	if !ok {
		return nil, fmt.Errorf("fake iptables -t %s: table does not exist", table)
	}
	rules, ok := tb.Chains[chain]
	if !ok {
		return nil, fmt.Errorf("fake iptables -t %s: chain %s: No chain/target/match by that name", table, chain)
	}
	return rules, nil
}

// edit applies one command line to table as a single-table restore, so the
// table changes all or nothing. Callers hold f.mu.
func (f *Fake) edit(table, line string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "*%s\n%s\nCOMMIT\n", table, line)
	if err := f.tables.Apply([]byte(b.String())); err != nil {
		return fmt.Errorf("fake iptables -t %s %s: %w", table, line, err)
	}
	return nil
}
