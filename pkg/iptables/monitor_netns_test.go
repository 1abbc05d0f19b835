package iptables_test

import (
	"context"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"
	"k8s.io/utils/clock"

	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

func TestChainExists(t *testing.T) {
	forEachBackendAndFamily(t, func(t *testing.T, family v1.IPFamily, backend iptables.Backend) {
		ns, ipt := newInNS(t, family, backend)
		ctx := context.Background()
		exists := func(table, chain string) (bool, error) {
			t.Helper()
			var got bool
			var err error
			do(t, ns, "ChainExists", func() error {
				got, err = ipt.ChainExists(ctx, table, chain)
				return nil
			})
			return got, err
		}
		want := func(table, chain string, want bool) {
			t.Helper()
			got, err := exists(table, chain)
			if err != nil || got != want {
				t.Errorf("ChainExists(%s, %s) = %v, %v; want %v, nil", table, chain, got, err, want)
			}
		}

		want("filter", "KUBE-TEST", false) // in a namespace without tables, too
		want("filter", "INPUT", true)
		do(t, ns, "EnsureChain", func() error { return ipt.EnsureChain(ctx, "filter", "KUBE-TEST") })
		want("filter", "KUBE-TEST", true) // empty
		want("nat", "KUBE-TEST", false)
		ns.Run(t, iptables.BinaryName(family, backend, ""), "-w", "5", "-t", "filter", "-A", "KUBE-TEST", "-j", "RETURN")
		want("filter", "KUBE-TEST", true) // with a rule

		// An unknown table is an error (exit status 3), neither an answer nor busy.
		if got, err := exists("nope", "KUBE-TEST"); err == nil || iptables.IsBusy(err) {
			t.Errorf("ChainExists(nope, KUBE-TEST) = %v, %v; want a non-busy error", got, err)
		}
	})
}

// TestMonitorDetectsRealFlush flushes and deletes the chains of all three
// tables one after another, as firewalld's reload does, and expects one
// reload and the canaries back.
func TestMonitorDetectsRealFlush(t *testing.T) {
	for _, backend := range backends {
		t.Run(string(backend), func(t *testing.T) {
			ns, ipt := newInNS(t, v1.IPv4Protocol, backend)
			logger := ktesting.NewLogger(t, ktesting.NewConfig())
			ctx, cancel := context.WithCancel(klog.NewContext(context.Background(), logger))
			reloads := make(chan struct{}, 10)
			done := make(chan error, 1)
			go func() {
				// Monitor runs on Do's thread, so the commands it runs are in ns.
				done <- ns.Do(func() error {
					iptables.Monitor(ctx, ipt, iptables.CanaryChain, canaryTables, func() { reloads <- struct{}{} },
						100*time.Millisecond, clock.RealClock{})
					return nil
				})
			}()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("running Monitor in the namespace: %v", err)
				}
			})

			waitForCanaries := func() {
				t.Helper()
				deadline := time.Now().Add(10 * time.Second)
				for {
					var missing []string
					for _, table := range canaryTables {
						if !slices.Contains(chainsIn(t, ns, ipt, table), iptables.CanaryChain) {
							missing = append(missing, table)
						}
					}
					if len(missing) == 0 {
						return
					}
					if time.Now().After(deadline) {
						t.Fatalf("no canary in tables %v after 10s", missing)
					}
					time.Sleep(50 * time.Millisecond)
				}
			}
			waitForCanaries()

			bin := iptables.BinaryName(ipt.Family(), ipt.Backend(), "")
			for _, table := range canaryTables {
				ns.Run(t, bin, "-w", "5", "-t", table, "-F")
				ns.Run(t, bin, "-w", "5", "-t", table, "-X")
			}
			select {
			case <-reloads:
			case <-time.After(10 * time.Second):
				t.Fatal("no reload within 10s of the flush")
			}
			waitForCanaries()

			// Checking the re-created canaries does not reload again.
			select {
			case <-reloads:
				t.Error("a second reload after a single flush")
			case <-time.After(time.Second):
			}
		})
	}
}

// chainsIn lists the chains of table in ns with the save binary.
func chainsIn(t *testing.T, ns *netnstest.NS, ipt iptables.Interface, table string) []string {
	t.Helper()
	var chains []string
	do(t, ns, "SaveChains", func() error {
		var err error
		chains, err = ipt.SaveChains(context.Background(), table)
		return err
	})
	return chains
}
