package iptables_test

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// These tests run the real binaries, each inside a network namespace of its
// own (ns.Do), so they need root and never touch the host's rules. Both
// backends keep their tables per network namespace.

var (
	backends = []iptables.Backend{iptables.BackendLegacy, iptables.BackendNFT}
	families = []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}
)

// newInNS returns a fresh namespace and an Interface for family and backend,
// skipping the test when not root or when the backend's binaries are missing.
func newInNS(t *testing.T, family v1.IPFamily, backend iptables.Backend) (*netnstest.NS, iptables.Interface) {
	t.Helper()
	netnstest.RequireRoot(t)
	ipt, err := iptables.New(family, backend, iptables.DefaultWait)
	if errors.Is(err, exec.ErrNotFound) {
		t.Skipf("skipping: %s binaries not installed: %v", backend, err)
	}
	if err != nil {
		t.Fatalf("New(%s, %s): %v", family, backend, err)
	}
	return netnstest.New(t, "kpx-ipt"), ipt
}

// do runs fn inside ns and fails the test on error.
func do(t *testing.T, ns *netnstest.NS, what string, fn func() error) {
	t.Helper()
	if err := ns.Do(fn); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// save returns "<family>tables-<backend>-save -t table" run inside ns.
func save(t *testing.T, ns *netnstest.NS, ipt iptables.Interface, table string) string {
	t.Helper()
	return ns.Run(t, iptables.BinaryName(ipt.Family(), ipt.Backend(), "save"), "-t", table)
}

func forEachBackendAndFamily(t *testing.T, fn func(t *testing.T, family v1.IPFamily, backend iptables.Backend)) {
	for _, backend := range backends {
		for _, family := range families {
			t.Run(fmt.Sprintf("%s/%s", backend, family), func(t *testing.T) { fn(t, family, backend) })
		}
	}
}

func TestRestoreAndSaveChains(t *testing.T) {
	forEachBackendAndFamily(t, func(t *testing.T, family v1.IPFamily, backend iptables.Backend) {
		ns, ipt := newInNS(t, family, backend)
		ctx := context.Background()
		payload := []byte(`*filter
:KUBE-TEST - [0:0]
-A KUBE-TEST -m comment --comment "kproxy test" -j ACCEPT
COMMIT
`)
		do(t, ns, "Restore", func() error { return ipt.Restore(ctx, payload) })

		var chains []string
		do(t, ns, "SaveChains", func() error {
			var err error
			chains, err = ipt.SaveChains(ctx, "filter")
			return err
		})
		for _, want := range []string{"INPUT", "FORWARD", "OUTPUT", "KUBE-TEST"} {
			if !slices.Contains(chains, want) {
				t.Errorf("SaveChains(filter) = %v, missing %s", chains, want)
			}
		}
		if out := save(t, ns, ipt, "filter"); !strings.Contains(out, `-A KUBE-TEST -m comment --comment "kproxy test" -j ACCEPT`) {
			t.Errorf("rule not in the kernel after Restore:\n%s", out)
		}

		// --noflush: a second payload that does not mention KUBE-TEST leaves it
		// alone, one that declares it flushes it.
		do(t, ns, "Restore", func() error {
			return ipt.Restore(ctx, []byte("*filter\n:KUBE-OTHER - [0:0]\nCOMMIT\n*filter\n:KUBE-TEST - [0:0]\n-A KUBE-TEST -j DROP\nCOMMIT\n"))
		})
		out := save(t, ns, ipt, "filter")
		if !strings.Contains(out, ":KUBE-OTHER") || !strings.Contains(out, "-A KUBE-TEST -j DROP") || strings.Contains(out, "kproxy test") {
			t.Errorf("unexpected state after the second Restore:\n%s", out)
		}
	})
}

func TestRestoreFailureReportsLine(t *testing.T) {
	forEachBackendAndFamily(t, func(t *testing.T, family v1.IPFamily, backend iptables.Backend) {
		ns, ipt := newInNS(t, family, backend)
		ctx := context.Background()
		tests := []struct {
			name    string
			payload string
			// wantLine by backend: legacy rejects a jump to a missing chain
			// at the rule, nft only at COMMIT.
			wantLine map[iptables.Backend]int
		}{
			{
				name: "jump to missing chain",
				payload: `*filter
:KUBE-TEST2 - [0:0]
-A KUBE-TEST2 -j KUBE-MISSING
-A KUBE-TEST2 -j ACCEPT
COMMIT
`,
				wantLine: map[iptables.Backend]int{iptables.BackendLegacy: 3, iptables.BackendNFT: 5},
			},
			{
				name: "delete of a missing rule",
				payload: `*filter
:KUBE-TEST2 - [0:0]
-D INPUT -s 192.0.2.1/32 -j DROP
COMMIT
`,
				wantLine: map[iptables.Backend]int{iptables.BackendLegacy: 3, iptables.BackendNFT: 3},
			},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				payload := tt.payload
				if family == v1.IPv6Protocol {
					payload = strings.ReplaceAll(payload, "192.0.2.1/32", "2001:db8::1/128")
				}
				var err error
				do(t, ns, "Restore", func() error {
					err = ipt.Restore(ctx, []byte(payload))
					return nil
				})
				var pe *iptables.ParseError
				if !errors.As(err, &pe) {
					t.Fatalf("Restore = %v, want a *ParseError", err)
				}
				t.Logf("%s output: %q", backend, pe.Output)
				if want := tt.wantLine[backend]; pe.Line != want {
					t.Errorf("ParseError.Line = %d, want %d; output %q\n%s", pe.Line, want, pe.Output,
						iptables.LinesAround([]byte(payload), pe.Line, 3))
				}
				var exitErr *exec.ExitError
				if !errors.As(err, &exitErr) {
					t.Errorf("Restore error %v does not carry the *exec.ExitError", err)
				}
				if out := save(t, ns, ipt, "filter"); strings.Contains(out, "KUBE-TEST2") {
					t.Errorf("failed payload changed the table:\n%s", out)
				}
			})
		}
	})
}

func TestRestoreHonoursContext(t *testing.T) {
	ns, ipt := newInNS(t, v1.IPv4Protocol, iptables.BackendNFT)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var err error
	do(t, ns, "Restore", func() error {
		err = ipt.Restore(ctx, []byte("*filter\n:KUBE-TEST - [0:0]\nCOMMIT\n"))
		return nil
	})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Restore with a cancelled context = %v, want context.Canceled", err)
	}
}

func TestEnsureChainAndDeleteRule(t *testing.T) {
	forEachBackendAndFamily(t, func(t *testing.T, family v1.IPFamily, backend iptables.Backend) {
		ns, ipt := newInNS(t, family, backend)
		ctx := context.Background()
		jump := []string{"-m", "comment", "--comment", "kubernetes service portals", "-j", "KUBE-SERVICES"}
		jumpLine := `-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`

		do(t, ns, "EnsureChain", func() error {
			for range 2 {
				if err := ipt.EnsureChain(ctx, "nat", "KUBE-SERVICES"); err != nil {
					return err
				}
			}
			return nil
		})
		out := save(t, ns, ipt, "nat")
		if n := strings.Count(out, ":KUBE-SERVICES "); n != 1 {
			t.Errorf("KUBE-SERVICES declared %d times:\n%s", n, out)
		}

		// Two rules for DeleteRule to choose from, put in place with the binary.
		bin := iptables.BinaryName(family, backend, "")
		ns.Run(t, append([]string{bin, "-w", "5", "-t", "nat", "-A", "OUTPUT"}, jump...)...)
		ns.Run(t, bin, "-w", "5", "-t", "nat", "-A", "OUTPUT", "-p", "udp", "-j", "RETURN")
		if out := save(t, ns, ipt, "nat"); !strings.Contains(out, jumpLine) || !strings.Contains(out, "-A OUTPUT -p udp -j RETURN") {
			t.Fatalf("rules not in place before DeleteRule:\n%s", out)
		}

		do(t, ns, "DeleteRule", func() error {
			for range 2 { // the second delete finds nothing, which is fine
				if err := ipt.DeleteRule(ctx, "nat", "OUTPUT", jump...); err != nil {
					return err
				}
			}
			return ipt.DeleteRule(ctx, "nat", "KUBE-NOPE", jump...)
		})
		out = save(t, ns, ipt, "nat")
		if strings.Contains(out, jumpLine) || !strings.Contains(out, "-A OUTPUT -p udp -j RETURN") {
			t.Errorf("unexpected nat table after DeleteRule:\n%s", out)
		}
	})
}

func TestDetectBackend(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, b := range []string{"iptables-legacy", "iptables-nft", "iptables-legacy-save", "iptables-nft-save"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("skipping: %s not installed", b)
		}
	}
	ctx := context.Background()
	detect := func(t *testing.T, ns *netnstest.NS) iptables.Backend {
		t.Helper()
		var b iptables.Backend
		do(t, ns, "DetectBackend", func() error {
			var err error
			b, err = iptables.DetectBackend(ctx)
			return err
		})
		return b
	}

	t.Run("empty namespace picks nft", func(t *testing.T) {
		ns := netnstest.New(t, "kpx-detect")
		if got := detect(t, ns); got != iptables.BackendNFT {
			t.Errorf("DetectBackend = %s, want nft", got)
		}
	})

	t.Run("rules in legacy only, then a hint in nft", func(t *testing.T) {
		ns := netnstest.New(t, "kpx-detect")
		ns.Run(t, "iptables-legacy", "-w", "5", "-t", "filter", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT")
		ns.Run(t, "ip6tables-legacy", "-w", "5", "-t", "filter", "-A", "INPUT", "-s", "2001:db8::1", "-j", "ACCEPT")
		if got := detect(t, ns); got != iptables.BackendLegacy {
			t.Errorf("DetectBackend with legacy rules only = %s, want legacy", got)
		}
		ns.Run(t, "iptables-nft", "-w", "5", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
		if got := detect(t, ns); got != iptables.BackendNFT {
			t.Errorf("DetectBackend with a hint chain in nft mangle = %s, want nft", got)
		}
	})

	t.Run("legacy hint beats more nft rules", func(t *testing.T) {
		ns := netnstest.New(t, "kpx-detect")
		ns.Run(t, "iptables-legacy", "-w", "5", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY")
		for i := range 3 {
			ns.Run(t, "iptables-nft", "-w", "5", "-t", "filter", "-A", "INPUT", "-s", fmt.Sprintf("192.0.2.%d", i+1), "-j", "ACCEPT")
		}
		if got := detect(t, ns); got != iptables.BackendLegacy {
			t.Errorf("DetectBackend = %s, want legacy", got)
		}
	})
}

// TestSaveAsKernel: a payload comes back in the kernel's form, for both backends, and the
// caller's namespace gains nothing.
func TestSaveAsKernel(t *testing.T) {
	for _, backend := range backends {
		t.Run(string(backend), func(t *testing.T) {
			ns, ipt := newInNS(t, v1.IPv4Protocol, backend)
			payload := "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -m comment --comment \"ns/web:http cluster IP\" -m tcp -p tcp -d 172.30.0.1 --dport 80 -j RETURN\nCOMMIT\n"
			var out []byte
			var chains []string
			err := ns.Do(func() error {
				var err error
				out, err = iptables.SaveAsKernel(context.Background(), v1.IPv4Protocol, backend, []byte(payload), nil, "nat")
				if err != nil {
					return err
				}
				chains, err = ipt.SaveChains(context.Background(), "nat")
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			want := `-A KUBE-SERVICES -d 172.30.0.1/32 -p tcp -m comment --comment "ns/web:http cluster IP" -m tcp --dport 80 -j RETURN`
			if !strings.Contains(string(out), want) {
				t.Errorf("kernel form lacks %q:\n%s", want, out)
			}
			if slices.Contains(chains, "KUBE-SERVICES") {
				t.Errorf("the caller's namespace gained KUBE-SERVICES: %v", chains)
			}
		})
	}
}
