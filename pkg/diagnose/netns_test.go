package diagnose

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/nodesetup"
)

// TestChecksFindRealBreakageInNetns stages real breakage in a throwaway network
// namespace (forwarding, br_netfilter and route_localnet off, the xtables lock held,
// Service rules in the other backend than kproxy's, then in both) and runs the real
// readers inside it: sysctls through /proc/sys, bridges over netlink, the save
// binaries, flock and /proc/locks. It needs root, and touches nothing outside the
// namespace but a lock file of its own.
func TestChecksFindRealBreakageInNetns(t *testing.T) {
	netnstest.RequireRoot(t)
	for _, bin := range []string{"sysctl", "iptables-legacy", "iptables-legacy-save", "iptables-nft", "iptables-nft-save"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Skipf("skipping: this test needs %s: %v", bin, err)
		}
	}
	ns := netnstest.New(t, "kpx-diag")
	ctx := context.Background()

	// The lock file is the test's own, found as iptables finds it: from
	// XTABLES_LOCKFILE. The process environment is left alone, so that the
	// iptables commands below take the usual lock, not the one this test holds.
	lockPath := filepath.Join(t.TempDir(), "xtables.lock")
	lock := XTablesLock{Path: XTablesLockPath(env{"XTABLES_LOCKFILE": lockPath}.Get), Wait: 300 * time.Millisecond}

	// run runs every check inside the namespace.
	run := func(t *testing.T) []Finding {
		t.Helper()
		var got []Finding
		err := ns.Do(func() error {
			got = NodeChecks(ctx, NodeInputs{
				Sysctl: nodesetup.NewProcSysctl(nodesetup.HostRoot), Bridges: NetlinkBridges{}, Lock: lock,
				LocalhostNodePorts: true, Backend: iptables.BackendLegacy,
			})
			got = append(got, BackendChecks(ctx, BackendInputs{Saver: ExecSaver{}, InUse: iptables.BackendNFT})...)
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() {
				var b strings.Builder
				_ = Report{Findings: got}.WriteText(&b)
				t.Logf("the findings:\n%s", b.String())
			}
		})
		return got
	}
	// bridgeNF is "" when br_netfilter is not loaded, and the namespace then has no
	// net.bridge parameters: the check must say so instead.
	bridgeNF := "net.bridge.bridge-nf-call-iptables"
	if _, err := os.Stat("/proc/sys/net/bridge/bridge-nf-call-iptables"); err != nil {
		bridgeNF = ""
	}
	setSysctls := func(value string) {
		t.Helper()
		args := []string{"sysctl", "-w", "net.ipv4.ip_forward=" + value, "net.ipv4.conf.all.route_localnet=" + value}
		if bridgeNF != "" {
			args = append(args, bridgeNF+"="+value)
		}
		ns.Run(t, args...)
	}
	addServicesChain := func(bin string) {
		t.Helper()
		ns.Run(t, bin, "-w", "5", "-t", "nat", "-N", "KUBE-SERVICES")
		ns.Run(t, bin, "-w", "5", "-t", "nat", "-A", "KUBE-SERVICES", "-d", "10.96.0.1/32", "-p", "tcp", "--dport", "443", "-j", "RETURN")
	}

	ns.Run(t, "ip", "link", "add", "kpxbr0", "type", "bridge")
	setSysctls("0")
	addServicesChain("iptables-legacy")
	held := holdLock(t, lockPath)

	t.Run("broken", func(t *testing.T) {
		got := run(t)
		checkFinding(t, find(t, got, "node/ip-forward/IPv4"), Problem, "IPv4 forwarding is off", "net.ipv4.ip_forward = 0", "sysctl -w net.ipv4.ip_forward=1")
		if bridgeNF != "" {
			checkFinding(t, find(t, got, "node/bridge-netfilter/IPv4"), Problem, "bridged IPv4 traffic bypasses iptables",
				"net.bridge.bridge-nf-call-iptables = 0\nbridges: kpxbr0", "sysctl -w net.bridge.bridge-nf-call-iptables=1")
		} else {
			checkFinding(t, find(t, got, "node/bridge-netfilter/IPv4"), Problem, "br_netfilter is not loaded", "bridges: kpxbr0", "modprobe br_netfilter")
		}
		checkFinding(t, find(t, got, "node/route-localnet"), Problem, "route_localnet is off", "net.ipv4.conf.all.route_localnet = 0", "")
		checkFinding(t, find(t, got, "node/xtables-lock"), Problem, fmt.Sprintf("xtables lock is held by PID %d", os.Getpid()),
			lockPath+": still held after", fmt.Sprintf("find why PID %d keeps it", os.Getpid()))
		checkFinding(t, find(t, got, "backend/IPv4"), Problem, "kproxy uses nft but the IPv4 Service rules are in legacy",
			"iptables-legacy-save: 1 kube-proxy chain, 1 rule (1 sending traffic to Services)\niptables-nft-save: no kube-proxy chains", "")
		if f := find(t, got, "node/conntrack-fill"); f.Severity == Problem {
			t.Errorf("a fresh namespace's conntrack table is full: %+v", f)
		}
	})

	// Repair the node, and put Service rules in kproxy's backend too.
	setSysctls("1")
	if err := unix.Flock(int(held.Fd()), unix.LOCK_UN); err != nil {
		t.Fatal(err)
	}
	addServicesChain("iptables-nft")

	t.Run("repaired, rules in both backends", func(t *testing.T) {
		got := run(t)
		// The host's ip_forward is what it is; 1 here means the read was the
		// namespace's.
		for _, id := range []string{"node/ip-forward/IPv4", "node/bridge-netfilter/IPv4", "node/route-localnet", "node/xtables-lock"} {
			if f := find(t, got, id); f.Severity != OK && (bridgeNF != "" || id != "node/bridge-netfilter/IPv4") {
				t.Errorf("%s: %v %q %q after the repair", id, f.Severity, f.Title, f.Evidence)
			}
		}
		checkFinding(t, find(t, got, "node/ip-forward/IPv4"), OK, "IPv4 forwarding is on", "net.ipv4.ip_forward = 1", "")
		checkFinding(t, find(t, got, "backend/IPv4"), Problem, "IPv4 Service rules are in both the legacy and the nft backend",
			"iptables-nft-save: 1 kube-proxy chain, 1 rule", "kproxy --cleanup --iptables-backend=legacy")
	})

	// Remove the stale legacy rules.
	ns.Run(t, "iptables-legacy", "-w", "5", "-t", "nat", "-F", "KUBE-SERVICES")
	ns.Run(t, "iptables-legacy", "-w", "5", "-t", "nat", "-X", "KUBE-SERVICES")

	t.Run("rules in kproxy's backend only", func(t *testing.T) {
		got := run(t)
		f := find(t, got, "backend/IPv4")
		checkFinding(t, f, OK, "IPv4 Service rules are in one backend only", "iptables-legacy-save: no kube-proxy chains", "")
		if strings.Contains(strings.Join(f.Evidence, "\n"), "failed") {
			t.Errorf("a save failed: %q", f.Evidence)
		}
	})
}

// Get makes a map an environment for XTablesLockPath.
type env map[string]string

func (e env) Get(k string) string { return e[k] }
