package main

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// The probes must agree with iptables itself on both backends: a chain the restore wrote
// is there, one it did not write is not, a dispatch rule is found, and the legacy reader
// copes with a namespace that has no nat table yet and with a table that grows.
func TestNodeProbesAgreeWithIPTables(t *testing.T) {
	for _, b := range []iptables.Backend{iptables.BackendLegacy, iptables.BackendNFT} {
		t.Run(string(b), func(t *testing.T) {
			if _, err := exec.LookPath(iptables.BinaryName(v1.IPv4Protocol, b, "restore")); err != nil {
				t.Skipf("backend %s not installed: %v", b, err)
			}
			ns := netnstest.New(t, "kbd")
			ctx := context.Background()
			n, err := newNode(ns.Name(), b, filepath.Join(t.TempDir(), "xtables.lock"))
			if err != nil {
				t.Fatal(err)
			}
			defer n.close()

			if ok, err := n.serviceProgrammed(ctx, "KUBE-SVC-AAAAAAAAAAAAAAAA"); err != nil || ok {
				t.Fatalf("empty namespace: programmed %v, %v", ok, err)
			}
			var payload strings.Builder
			payload.WriteString("*nat\n:KUBE-SERVICES - [0:0]\n")
			for i := range 300 {
				fmt.Fprintf(&payload, ":KUBE-SVC-%016d - [0:0]\n:KUBE-SEP-%016d - [0:0]\n", i, i)
			}
			for i := range 300 {
				fmt.Fprintf(&payload, "-A KUBE-SERVICES -d 10.96.%d.%d/32 -p tcp -m comment --comment \"ns/svc%d:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-%016d\n", i/256, i%256, i, i)
				fmt.Fprintf(&payload, "-A KUBE-SVC-%016d -j KUBE-SEP-%016d\n", i, i)
				fmt.Fprintf(&payload, "-A KUBE-SEP-%016d -p tcp -m tcp -j DNAT --to-destination 10.1.%d.%d:8080\n", i, i/256, i%256)
			}
			// A chain nothing jumps to: there, but not programmed.
			payload.WriteString(":KUBE-SVC-LONELYLONELYLONE - [0:0]\nCOMMIT\n")
			ns.Run(t, "sh", "-c", fmt.Sprintf("printf '%%s' '%s' | %s --noflush", payload.String(), iptables.BinaryName(v1.IPv4Protocol, b, "restore")))

			present := []string{"KUBE-SVC-0000000000000000", "KUBE-SEP-0000000000000299", "KUBE-SVC-LONELYLONELYLONE"}
			absent := []string{"KUBE-SEP-0000000000000300", "KUBE-SVC", "ERROR", "KUBE-SERVICESX"}
			found, err := n.present(ctx, append(present, absent...))
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range present {
				if !found[c] {
					t.Errorf("chain %s not found", c)
				}
			}
			for _, c := range absent {
				if found[c] {
					t.Errorf("chain %s found", c)
				}
			}
			if ok, err := n.serviceProgrammed(ctx, "KUBE-SVC-0000000000000299"); err != nil || !ok {
				t.Errorf("service 299: programmed %v, %v", ok, err)
			}
			if ok, err := n.serviceProgrammed(ctx, "KUBE-SVC-LONELYLONELYLONE"); err != nil || ok {
				t.Errorf("chain without a dispatch rule: programmed %v, %v", ok, err)
			}
			if b == iptables.BackendLegacy {
				v, err := n.legacy.view()
				if err != nil {
					t.Fatal(err)
				}
				if ok, err := v.jumps("KUBE-SVC-0000000000000007", "KUBE-SEP-0000000000000007"); err != nil || !ok {
					t.Errorf("KUBE-SVC-7 -> KUBE-SEP-7: %v, %v", ok, err)
				}
				if ok, err := v.jumps("KUBE-SVC-0000000000000007", "KUBE-SEP-0000000000000008"); err != nil || ok {
					t.Errorf("KUBE-SVC-7 -> KUBE-SEP-8: %v, %v", ok, err)
				}
			}

			saved, err := n.save(ctx)
			if err != nil || !strings.Contains(string(saved), "KUBE-SEP-0000000000000299") {
				t.Fatalf("save: %v\n%s", err, saved)
			}
			if err := n.flush(ctx); err != nil {
				t.Fatal(err)
			}
			if found, err := n.present(ctx, present); err != nil || found[present[0]] {
				t.Errorf("after flush: found %v, %v", found, err)
			}
		})
	}
}
