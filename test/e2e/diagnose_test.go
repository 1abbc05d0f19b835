package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/test/e2e/framework"
)

// TestWhenAServiceDoesNotAnswer stages, on a live node, the usual reasons a Service does
// not answer, and checks that `kproxy diagnose` names each one and that `kproxy trace`
// gives the verdict real traffic gets. Each subtest writes what the commands printed to
// _output/e2e/diagnose/<subtest>.txt, which the README quotes.
func TestWhenAServiceDoesNotAnswer(t *testing.T) {
	c := framework.Up(t, framework.Options{Name: "kpxe2e-diag"})
	ctx := context.Background()
	ns := c.CreateNamespace(t, "diag")
	n1 := c.Node("node-1")
	from := podNS(c, "n1-p2")
	fromIP := c.Pod("n1-p2").IP

	t.Run("no endpoints", func(t *testing.T) {
		svc := c.CreateService(t, tcpService(ns, "empty", v1.ServiceTypeClusterIP, map[string]string{"app": "nothing"}, 80, 8080))
		addr := framework.HostPort(svc.Spec.ClusterIP, 80)
		eventually(t, 30*time.Second, "connections refused", func() error { return refusedFast(from, addr) })
		diag := kproxyOn(t, c, n1.Name, 1, "diagnose", "--service", ns+"/empty")
		mustContain(t, diag, ns+"/empty:tcp (IPv4) has no serving endpoint: connections are rejected")
		trace := kproxyOn(t, c, n1.Name, 0, "trace", fromIP, addr)
		mustContain(t, trace, "verdict: REJECT")
		saveOutput(t, c, "no-endpoints", diag, trace)
	})

	t.Run("externalTrafficPolicy Local with the endpoint on another node", func(t *testing.T) {
		labels := map[string]string{"app": "etp"}
		c.RunPods(t, ns, labels, "n2-p1")
		s := tcpService(ns, "etp", v1.ServiceTypeNodePort, labels, 80, 8080)
		s.Spec.ExternalTrafficPolicy = v1.ServiceExternalTrafficPolicyLocal
		svc := c.CreateService(t, s)
		np := svc.Spec.Ports[0].NodePort
		c.WaitForBackends(t, c.External.NetNS, "tcp", framework.HostPort(c.Node("node-2").IP, np), "n2-p1")
		// node-1 is the node diagnosed: its cluster IP reaching the endpoint on node-2
		// shows that its kproxy has the endpoint too (node-2's answering does not).
		c.WaitForBackends(t, from, "tcp", framework.HostPort(svc.Spec.ClusterIP, 80), "n2-p1")
		if r, err := framework.Request(ctx, c.External.NetNS, "tcp", framework.HostPort(n1.IP, np)); err == nil {
			t.Fatalf("node-1's node port answered (%v); externalTrafficPolicy Local without a local endpoint must drop", r)
		}
		diag := kproxyOn(t, c, n1.Name, 0, "diagnose", "--service", ns+"/etp")
		mustContain(t, diag, "this node drops external traffic (externalTrafficPolicy: Local, no endpoint here)")
		trace := kproxyOn(t, c, n1.Name, 0, "trace", c.External.IP, framework.HostPort(n1.IP, np))
		mustContain(t, trace, "verdict: DROP")
		saveOutput(t, c, "etp-local-elsewhere", diag, trace)
	})

	t.Run("drifted chain", func(t *testing.T) {
		labels := map[string]string{"app": "web"}
		c.RunPods(t, ns, labels, "n1-p1", "n2-p3")
		svc := c.CreateService(t, tcpService(ns, "web", v1.ServiceTypeClusterIP, labels, 80, 8080))
		c.WaitForBackends(t, from, "tcp", framework.HostPort(svc.Spec.ClusterIP, 80), "n1-p1", "n2-p3")
		// kproxy repairs drift within its sync period; a diagnosis that overlapped a
		// repair (its drift counter moved) is retried on a fresh break.
		var diag string
		for attempt := 1; ; attempt++ {
			sep := sepChainOf(t, c, n1.Name, ns+"/web:tcp", c.Pod("n2-p3").IP)
			before := driftCount(t, c, n1.Name)
			if _, err := framework.Exec(ctx, n1.NetNS, "iptables-nft", "-t", "nat", "-F", sep); err != nil {
				t.Fatal(err)
			}
			diag = kproxyOn(t, c, n1.Name, 1, "diagnose")
			if driftCount(t, c, n1.Name) == before {
				mustContain(t, diag, "IPv4 rules of "+ns+"/web:tcp differ from what kproxy programmed (2 missing, 0 extra")
				mustContain(t, diag, "missing: nat "+sep+" ")
				break
			}
			if attempt == 3 {
				t.Fatal("kproxy repaired the chain during each of 3 diagnoses")
			}
			eventually(t, time.Minute, "kproxy repairs the chain", func() error {
				if driftCount(t, c, n1.Name) == before {
					return errors.New("not yet")
				}
				return nil
			})
		}
		saveOutput(t, c, "drifted-chain", diag)
		// kproxy's drift check repairs it, and the next diagnosis is clean again.
		eventually(t, 90*time.Second, "kproxy repairs the flushed chain", func() error {
			if out := kproxyOnStatus(t, c, n1.Name, "diagnose"); strings.Contains(out, "differ from what kproxy programmed") {
				return errors.New("still drifted")
			}
			return nil
		})
	})

	t.Run("stale UDP conntrack entry", func(t *testing.T) {
		labels := map[string]string{"app": "dns"}
		c.RunPods(t, ns, labels, "n2-p2")
		s := tcpService(ns, "dns", v1.ServiceTypeClusterIP, labels, 53, 5353)
		s.Spec.Ports[0].Name, s.Spec.Ports[0].Protocol = "dns", v1.ProtocolUDP
		svc := c.CreateService(t, s)
		vip := svc.Spec.ClusterIP
		c.WaitForBackends(t, from, "udp", framework.HostPort(vip, 53), "n2-p2")
		// An entry as a pod that is gone (10.244.2.99) left it: the kernel keeps sending
		// this client's packets there until it expires.
		entry := []string{"-p", "udp", "-s", fromIP, "-d", vip, "--sport", "40053", "--dport", "53",
			"--reply-src", "10.244.2.99", "--reply-dst", fromIP, "--reply-port-src", "5353", "--reply-port-dst", "40053"}
		if _, err := framework.Exec(ctx, n1.NetNS, append([]string{"conntrack", "-I"}, append(entry, "--timeout", "300")...)...); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _, _ = framework.Exec(ctx, n1.NetNS, append([]string{"conntrack", "-D"}, entry...)...) })
		diag := kproxyOn(t, c, n1.Name, 1, "diagnose", "--service", ns+"/dns")
		mustContain(t, diag, "1 UDP conntrack entries of "+ns+"/dns:dns (IPv4) still send traffic to endpoints that are gone")
		mustContain(t, diag, "reply 10.244.2.99:5353")
		saveOutput(t, c, "stale-udp-conntrack", diag)
	})

	t.Run("rules in the wrong backend", func(t *testing.T) {
		// A kube-proxy of the other backend left its rules behind: kproxy uses nft here.
		for _, args := range [][]string{
			{"-t", "nat", "-N", "KUBE-SERVICES"},
			{"-t", "nat", "-A", "KUBE-SERVICES", "-d", "10.96.200.1/32", "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "10.244.9.9:80"},
			{"-t", "nat", "-A", "PREROUTING", "-j", "KUBE-SERVICES"},
		} {
			if _, err := framework.Exec(ctx, n1.NetNS, append([]string{"iptables-legacy"}, args...)...); err != nil {
				t.Fatal(err)
			}
		}
		t.Cleanup(func() {
			for _, args := range [][]string{{"-t", "nat", "-D", "PREROUTING", "-j", "KUBE-SERVICES"}, {"-t", "nat", "-F", "KUBE-SERVICES"}, {"-t", "nat", "-X", "KUBE-SERVICES"}} {
				_, _ = framework.Exec(ctx, n1.NetNS, append([]string{"iptables-legacy"}, args...)...)
			}
		})
		diag := kproxyOn(t, c, n1.Name, 1, "diagnose")
		mustContain(t, diag, "IPv4 Service rules are in both the legacy and the nft backend")
		saveOutput(t, c, "wrong-backend", diag)
	})
}

// kproxyOn runs the kproxy binary with args in node's namespace, as an operator would on
// the node, and checks its exit status. It returns what it printed on stdout.
func kproxyOn(t *testing.T, c *framework.Cluster, node string, wantStatus int, args ...string) string {
	t.Helper()
	out, status, stderr := runKProxyOn(t, c, node, args...)
	if status != wantStatus {
		t.Fatalf("kproxy %s on %s: exit status %d, want %d\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), node, status, wantStatus, out, stderr)
	}
	return out
}

// kproxyOnStatus is kproxyOn whatever the exit status.
func kproxyOnStatus(t *testing.T, c *framework.Cluster, node string, args ...string) string {
	t.Helper()
	out, _, _ := runKProxyOn(t, c, node, args...)
	return out
}

func runKProxyOn(t *testing.T, c *framework.Cluster, node string, args ...string) (stdout string, status int, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lock := filepath.Join(c.StateDir, node, "xtables.lock")
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", c.Node(node).NetNS, "env", "XTABLES_LOCKFILE=" + lock,
		filepath.Join(c.RepoRoot, "bin", "kproxy")}, args...)...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var exitErr *exec.ExitError
	if errors.As(err, &exitErr) {
		status = exitErr.ExitCode()
	} else if err != nil {
		t.Fatalf("kproxy %s: %v", strings.Join(args, " "), err)
	}
	return fmt.Sprintf("$ kproxy %s\n%s", strings.Join(args, " "), out.String()), status, errOut.String()
}

func mustContain(t *testing.T, out, want string) {
	t.Helper()
	if !strings.Contains(out, want) {
		t.Fatalf("output lacks %q:\n%s", want, out)
	}
}

// saveOutput writes the commands' outputs for the README.
func saveOutput(t *testing.T, c *framework.Cluster, name string, outputs ...string) {
	t.Helper()
	dir := filepath.Join(c.RepoRoot, "_output", "e2e", "diagnose")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name+".txt"), []byte(strings.Join(outputs, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
}

// sepChainOf finds the KUBE-SEP chain of port's endpoint ip on node.
func sepChainOf(t *testing.T, c *framework.Cluster, node, port, ip string) string {
	t.Helper()
	re := regexp.MustCompile(`^-A (KUBE-SEP-\S+) .*--to-destination ` + regexp.QuoteMeta(ip) + `:`)
	for _, l := range natRulesMentioning(t, c, node, port) {
		if m := re.FindStringSubmatch(l); m != nil {
			return m[1]
		}
	}
	t.Fatalf("no KUBE-SEP chain of %s for %s on %s", port, ip, node)
	return ""
}

// driftCount reads kproxy_rules_drift_total of IPv4 on node.
func driftCount(t *testing.T, c *framework.Cluster, node string) float64 {
	t.Helper()
	text, err := c.Metrics(context.Background(), node)
	if err != nil {
		t.Fatal(err)
	}
	v, _ := framework.MetricValue(text, `kproxy_rules_drift_total{ip_family="IPv4"}`)
	return v
}
