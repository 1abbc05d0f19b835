package fake

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

const goodPayload = `*filter
:KUBE-TEST - [0:0]
-A KUBE-TEST -m comment --comment "kproxy test" -j ACCEPT
-A INPUT -j KUBE-TEST
COMMIT
*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -j RETURN
COMMIT
`

func TestRestoreAppliesPayload(t *testing.T) {
	ctx := context.Background()
	f := New(v1.IPv4Protocol, iptables.BackendNFT)
	if err := f.Restore(ctx, []byte(goodPayload)); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	want := `*filter
:INPUT
:KUBE-TEST
-A INPUT -j KUBE-TEST
-A KUBE-TEST -m comment --comment "kproxy test" -j ACCEPT
COMMIT
*nat
:KUBE-SERVICES
-A KUBE-SERVICES -j RETURN
COMMIT
`
	if got := f.Tables().Dump(); got != want {
		t.Errorf("tables after Restore:\n%s\nwant:\n%s", got, want)
	}
	chains, err := f.SaveChains(ctx, "filter")
	if err != nil {
		t.Fatalf("SaveChains: %v", err)
	}
	if want := []string{"FORWARD", "INPUT", "OUTPUT", "KUBE-TEST"}; !reflect.DeepEqual(chains, want) {
		t.Errorf("SaveChains(filter) = %v, want %v", chains, want)
	}
	if _, err := f.SaveChains(ctx, "nosuch"); err == nil {
		t.Error("SaveChains of an unknown table succeeded")
	}
	if f.RestoreCalls() != 1 || string(f.LastPayload()) != goodPayload {
		t.Errorf("RestoreCalls, LastPayload = %d, %q", f.RestoreCalls(), f.LastPayload())
	}
	if f.Family() != v1.IPv4Protocol || f.Backend() != iptables.BackendNFT {
		t.Errorf("Family, Backend = %s, %s", f.Family(), f.Backend())
	}
}

func TestRestoreRejectsJumpToMissingChain(t *testing.T) {
	ctx := context.Background()
	f := New(v1.IPv4Protocol, iptables.BackendNFT)
	if err := f.Restore(ctx, []byte(goodPayload)); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	before := f.Tables().Dump()

	// The filter block is fine and commits; the nat block jumps to a chain
	// that does not exist and is rejected at its COMMIT (line 8).
	bad := `*filter
:KUBE-TEST - [0:0]
-A KUBE-TEST -j DROP
COMMIT
*nat
:KUBE-SERVICES - [0:0]
-A KUBE-SERVICES -j KUBE-SVC-MISSING
COMMIT
`
	err := f.Restore(ctx, []byte(bad))
	var pe *iptables.ParseError
	if !errors.As(err, &pe) {
		t.Fatalf("Restore = %v, want a *iptables.ParseError", err)
	}
	if pe.Line != 8 {
		t.Errorf("ParseError.Line = %d, want 8", pe.Line)
	}
	if !strings.Contains(pe.Error(), "KUBE-SVC-MISSING") {
		t.Errorf("ParseError %q does not name the missing chain", pe)
	}
	got := f.Tables()
	if r := got["filter"].Chains["KUBE-TEST"]; len(r) != 1 || r[0].Target() != "DROP" {
		t.Errorf("filter block before the failure was not committed: KUBE-TEST = %v", r)
	}
	if r := got["nat"].Chains["KUBE-SERVICES"]; len(r) != 1 || r[0].Target() != "RETURN" {
		t.Errorf("failed nat block changed state: KUBE-SERVICES = %v\nbefore:\n%s", r, before)
	}
}

func TestFailNextRestore(t *testing.T) {
	ctx := context.Background()
	f := New(v1.IPv6Protocol, iptables.BackendLegacy)
	injected := errors.New("injected")
	f.FailNextRestore(injected)
	if err := f.Restore(ctx, []byte(goodPayload)); !errors.Is(err, injected) {
		t.Fatalf("first Restore = %v, want the injected error", err)
	}
	if _, ok := f.Tables()["filter"].Chains["KUBE-TEST"]; ok {
		t.Error("a failed Restore applied its payload")
	}
	if err := f.Restore(ctx, []byte(goodPayload)); err != nil {
		t.Fatalf("second Restore: %v", err)
	}
	if f.RestoreCalls() != 2 {
		t.Errorf("RestoreCalls = %d, want 2", f.RestoreCalls())
	}
}

func TestRestoreCancelled(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f := New(v1.IPv4Protocol, iptables.BackendNFT)
	if err := f.Restore(ctx, []byte(goodPayload)); !errors.Is(err, context.Canceled) {
		t.Errorf("Restore with cancelled context = %v, want context.Canceled", err)
	}
}

func TestEnsureChain(t *testing.T) {
	ctx := context.Background()
	f := New(v1.IPv4Protocol, iptables.BackendNFT)
	for range 2 {
		if err := f.EnsureChain(ctx, "filter", "KUBE-TEST"); err != nil {
			t.Fatalf("EnsureChain: %v", err)
		}
	}
	if chains, err := f.SaveChains(ctx, "filter"); err != nil || !reflect.DeepEqual(chains, []string{"FORWARD", "INPUT", "OUTPUT", "KUBE-TEST"}) {
		t.Errorf("SaveChains(filter) after EnsureChain twice = %v, %v", chains, err)
	}
	if err := f.EnsureChain(ctx, "nosuch", "KUBE-TEST"); err == nil {
		t.Error("EnsureChain in an unknown table succeeded")
	}
}

func TestDeleteRule(t *testing.T) {
	ctx := context.Background()
	f := New(v1.IPv4Protocol, iptables.BackendNFT)
	if err := f.Restore(ctx, []byte(goodPayload)); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	for _, tc := range []struct{ table, chain string }{{"filter", "INPUT"}, {"filter", "KUBE-NOPE"}, {"nosuch", "INPUT"}} {
		if err := f.DeleteRule(ctx, tc.table, tc.chain, "-j", "DROP"); err != nil {
			t.Errorf("DeleteRule of a missing rule in %s/%s: %v", tc.table, tc.chain, err)
		}
	}
	if err := f.DeleteRule(ctx, "filter", "INPUT", "-j", "KUBE-TEST"); err != nil {
		t.Fatalf("DeleteRule: %v", err)
	}
	if r := f.Tables()["filter"].Chains["INPUT"]; len(r) != 0 {
		t.Errorf("INPUT after DeleteRule = %v, want empty", r)
	}
	if err := f.DeleteRule(ctx, "filter", "INPUT", "-j", "KUBE-TEST"); err != nil {
		t.Errorf("second DeleteRule: %v", err)
	}
}

func TestTablesIsACopy(t *testing.T) {
	f := New(v1.IPv4Protocol, iptables.BackendNFT)
	got := f.Tables()
	got["filter"].Chains["KUBE-X"] = nil
	if _, ok := f.Tables()["filter"].Chains["KUBE-X"]; ok {
		t.Error("changing Tables() changed the fake")
	}
	seed := f.Tables()
	seed["nat"].Chains["KUBE-SVC-OLD"] = nil
	f.SetTables(seed)
	chains, err := f.SaveChains(context.Background(), "nat")
	if err != nil || chains[len(chains)-1] != "KUBE-SVC-OLD" {
		t.Errorf("SaveChains after SetTables = %v, %v", chains, err)
	}
}

func TestChainExists(t *testing.T) {
	ctx := context.Background()
	f := New(v1.IPv4Protocol, iptables.BackendNFT)
	check := func(table, chain string, want bool) {
		t.Helper()
		if got, err := f.ChainExists(ctx, table, chain); err != nil || got != want {
			t.Errorf("ChainExists(%s, %s) = %v, %v; want %v, nil", table, chain, got, err, want)
		}
	}
	check("filter", "INPUT", true)
	check("filter", "KUBE-TEST", false)
	if err := f.EnsureChain(ctx, "filter", "KUBE-TEST"); err != nil {
		t.Fatalf("EnsureChain: %v", err)
	}
	check("filter", "KUBE-TEST", true)
	check("nat", "KUBE-TEST", false)
	if err := f.Restore(ctx, []byte("*filter\n-X KUBE-TEST\nCOMMIT\n")); err != nil {
		t.Fatalf("Restore: %v", err)
	}
	check("filter", "KUBE-TEST", false)
	if _, err := f.ChainExists(ctx, "nope", "KUBE-TEST"); err == nil || iptables.IsBusy(err) {
		t.Errorf("ChainExists in an unknown table = %v, want a non-busy error", err)
	}
}

func TestSetLockHeld(t *testing.T) {
	ctx := context.Background()
	f := New(v1.IPv4Protocol, iptables.BackendNFT)
	if err := f.EnsureChain(ctx, "filter", "KUBE-TEST"); err != nil {
		t.Fatalf("EnsureChain: %v", err)
	}
	before := f.Tables().Dump()

	f.SetLockHeld(true)
	for name, err := range map[string]error{
		"Restore":     f.Restore(ctx, []byte(goodPayload)),
		"EnsureChain": f.EnsureChain(ctx, "nat", "KUBE-TEST"),
		"RuleExists":  func() error { _, err := f.RuleExists(ctx, "filter", "KUBE-TEST", "-j", "ACCEPT"); return err }(),
		"DeleteRule":  f.DeleteRule(ctx, "filter", "KUBE-TEST", "-j", "ACCEPT"),
		"ChainExists": func() error { _, err := f.ChainExists(ctx, "filter", "KUBE-TEST"); return err }(),
	} {
		if !iptables.IsBusy(err) {
			t.Errorf("%s with the lock held = %v, want a *BusyError", name, err)
		}
	}
	if _, err := f.SaveChains(ctx, "filter"); err != nil {
		t.Errorf("SaveChains with the lock held: %v (save takes no lock)", err)
	}
	if after := f.Tables().Dump(); after != before {
		t.Errorf("commands changed the tables with the lock held:\n%s", after)
	}

	f.SetLockHeld(false)
	if ok, err := f.ChainExists(ctx, "filter", "KUBE-TEST"); err != nil || !ok {
		t.Errorf("ChainExists after releasing the lock = %v, %v; want true, nil", ok, err)
	}
}
