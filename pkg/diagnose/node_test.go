package diagnose

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// fakeSysctl holds parameters by their /proc/sys path; a missing one reads as the
// kernel's missing file does, wrapping fs.ErrNotExist.
type fakeSysctl map[string]string

func (f fakeSysctl) Get(name string) (string, error) {
	v, ok := f[name]
	if !ok {
		return "", fmt.Errorf("reading sysctl %s: %w", name, fs.ErrNotExist)
	}
	return v, nil
}

type fakeBridges struct {
	names []string
	err   error
}

func (f fakeBridges) Bridges() ([]string, error) { return f.names, f.err }

type fakeLock struct {
	state LockState
	err   error
}

func (f fakeLock) Probe(context.Context) (LockState, error) { return f.state, f.err }

// healthyNode is a node where every NodeChecks check passes.
func healthyNode() fakeSysctl {
	return fakeSysctl{
		"net/ipv4/ip_forward":                 "1",
		"net/ipv6/conf/all/forwarding":        "1",
		"net/bridge/bridge-nf-call-iptables":  "1",
		"net/bridge/bridge-nf-call-ip6tables": "1",
		"net/ipv4/conf/all/route_localnet":    "1",
		"net/netfilter/nf_conntrack_count":    "100",
		"net/netfilter/nf_conntrack_max":      "262144",
	}
}

// find returns the finding with id, failing the test when there is none.
func find(t *testing.T, findings []Finding, id string) Finding {
	t.Helper()
	for _, f := range findings {
		if f.ID == id {
			return f
		}
	}
	t.Fatalf("no finding %s in %s", id, ids(findings))
	return Finding{}
}

func ids(findings []Finding) []string {
	var out []string
	for _, f := range findings {
		out = append(out, f.ID)
	}
	return out
}

// checkFinding compares the parts of a finding a test cares about: its severity, and
// substrings its title, evidence and fix must hold.
func checkFinding(t *testing.T, f Finding, sev Severity, title, evidence, fix string) {
	t.Helper()
	if f.Severity != sev {
		t.Errorf("%s: severity %v, want %v (%q)", f.ID, f.Severity, sev, f.Title)
	}
	if !strings.Contains(f.Title, title) {
		t.Errorf("%s: title %q, want it to contain %q", f.ID, f.Title, title)
	}
	if ev := strings.Join(f.Evidence, "\n"); !strings.Contains(ev, evidence) {
		t.Errorf("%s: evidence %q, want it to contain %q", f.ID, ev, evidence)
	}
	if !strings.Contains(f.Fix, fix) {
		t.Errorf("%s: fix %q, want it to contain %q", f.ID, f.Fix, fix)
	}
	if sev != OK && f.Fix == "" {
		t.Errorf("%s: a %v without a fix", f.ID, sev)
	}
}

func TestNodeChecksHealthy(t *testing.T) {
	got := NodeChecks(context.Background(), NodeInputs{
		Sysctl: healthyNode(), Bridges: fakeBridges{names: []string{"cni0"}},
		Lock:     fakeLock{state: LockState{Path: "/run/xtables.lock", Exists: true}},
		Families: []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol}, LocalhostNodePorts: true,
	})
	want := []string{"node/ip-forward/IPv4", "node/bridge-netfilter/IPv4", "node/ip-forward/IPv6", "node/bridge-netfilter/IPv6",
		"node/route-localnet", "node/conntrack-fill", "node/xtables-lock"}
	if !slices.Equal(ids(got), want) {
		t.Fatalf("findings %v, want %v", ids(got), want)
	}
	for _, f := range got {
		if f.Severity != OK {
			t.Errorf("%s: %v %q on a healthy node", f.ID, f.Severity, f.Title)
		}
	}
}

func TestNodeChecksFamilies(t *testing.T) {
	for _, tc := range []struct {
		name               string
		families           []v1.IPFamily
		localhostNodePorts bool
		want               []string
	}{
		{"IPv4 when unset", nil, true, []string{"node/ip-forward/IPv4", "node/bridge-netfilter/IPv4", "node/route-localnet"}},
		{"IPv6 only: no route_localnet, an IPv4 setting", []v1.IPFamily{v1.IPv6Protocol}, true,
			[]string{"node/ip-forward/IPv6", "node/bridge-netfilter/IPv6"}},
		{"localhost node ports off", []v1.IPFamily{v1.IPv4Protocol}, false, []string{"node/ip-forward/IPv4", "node/bridge-netfilter/IPv4"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := NodeChecks(context.Background(), NodeInputs{Sysctl: healthyNode(), Bridges: fakeBridges{},
				Lock: fakeLock{}, Families: tc.families, LocalhostNodePorts: tc.localhostNodePorts})
			want := append(tc.want, "node/conntrack-fill", "node/xtables-lock")
			if !slices.Equal(ids(got), want) {
				t.Errorf("findings %v, want %v", ids(got), want)
			}
		})
	}
}

func TestForwarding(t *testing.T) {
	for _, tc := range []struct {
		name     string
		family   v1.IPFamily
		values   fakeSysctl
		sev      Severity
		title    string
		evidence string
		fix      string
	}{
		{"on", v1.IPv4Protocol, fakeSysctl{"net/ipv4/ip_forward": "1"}, OK, "IPv4 forwarding is on", "net.ipv4.ip_forward = 1", ""},
		{"off", v1.IPv4Protocol, fakeSysctl{"net/ipv4/ip_forward": "0"}, Problem, "IPv4 forwarding is off",
			"net.ipv4.ip_forward = 0", "sysctl -w net.ipv4.ip_forward=1"},
		{"IPv6 off", v1.IPv6Protocol, fakeSysctl{"net/ipv6/conf/all/forwarding": "0"}, Problem, "IPv6 forwarding is off",
			"net.ipv6.conf.all.forwarding = 0", "sysctl -w net.ipv6.conf.all.forwarding=1"},
		{"unreadable", v1.IPv6Protocol, fakeSysctl{}, Warning, "cannot read IPv6 forwarding", "net.ipv6.conf.all.forwarding: reading sysctl", "as root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sysctl := map[v1.IPFamily]string{v1.IPv4Protocol: "net/ipv4/ip_forward", v1.IPv6Protocol: "net/ipv6/conf/all/forwarding"}[tc.family]
			f := forwardingFinding(tc.family, readSysctl(tc.values, sysctl))
			checkFinding(t, f, tc.sev, tc.title, tc.evidence, tc.fix)
		})
	}
}

func TestBridgeNetfilter(t *testing.T) {
	const name = "net/bridge/bridge-nf-call-iptables"
	listErr := errors.New("netlink: permission denied")
	for _, tc := range []struct {
		name     string
		values   fakeSysctl
		bridges  fakeBridges
		sev      Severity
		title    string
		evidence string
		fix      string
	}{
		{"on with bridges", fakeSysctl{name: "1"}, fakeBridges{names: []string{"cni0", "docker0"}}, OK,
			"bridged IPv4 traffic goes through iptables", "bridges: cni0, docker0", ""},
		{"not loaded with a bridge", fakeSysctl{}, fakeBridges{names: []string{"cni0"}}, Problem,
			"br_netfilter is not loaded", "absent, br_netfilter is not loaded", "modprobe br_netfilter && sysctl -w net.bridge.bridge-nf-call-iptables=1"},
		{"off with a bridge", fakeSysctl{name: "0"}, fakeBridges{names: []string{"cni0"}}, Problem,
			"bridged IPv4 traffic bypasses iptables: Services fail", "net.bridge.bridge-nf-call-iptables = 0", "sysctl -w net.bridge.bridge-nf-call-iptables=1"},
		{"not loaded, no bridge: routed CNI", fakeSysctl{}, fakeBridges{}, OK, "no bridge on this node", "bridges: none", ""},
		{"off, no bridge", fakeSysctl{name: "0"}, fakeBridges{}, OK, "no bridge on this node", "= 0", ""},
		{"not loaded, bridges unknown", fakeSysctl{}, fakeBridges{err: listErr}, Warning, "cannot read the bridges",
			"bridges: unknown (netlink: permission denied)", "as root"},
		{"on, bridges unknown: does not matter", fakeSysctl{name: "1"}, fakeBridges{err: listErr}, OK, "goes through iptables", "unknown", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			names, err := tc.bridges.Bridges()
			f := bridgeFinding(v1.IPv4Protocol, readSysctl(tc.values, name), names, err)
			checkFinding(t, f, tc.sev, tc.title, tc.evidence, tc.fix)
		})
	}
}

// brokenSysctl fails every read with an error other than a missing file.
type brokenSysctl struct{}

func (brokenSysctl) Get(name string) (string, error) {
	return "", fmt.Errorf("reading sysctl %s: %w", name, fs.ErrPermission)
}

func TestBridgeNetfilterUnreadable(t *testing.T) {
	f := bridgeFinding(v1.IPv4Protocol, readSysctl(brokenSysctl{}, "net/bridge/bridge-nf-call-iptables"), []string{"cni0"}, nil)
	checkFinding(t, f, Warning, "cannot read net.bridge.bridge-nf-call-iptables", "permission denied", "as root")
}

func TestRouteLocalnet(t *testing.T) {
	const name = "net/ipv4/conf/all/route_localnet"
	checkFinding(t, routeLocalnetFinding(readSysctl(fakeSysctl{name: "1"}, name)), OK, "route_localnet is on", "= 1", "")
	checkFinding(t, routeLocalnetFinding(readSysctl(fakeSysctl{name: "0"}, name)), Problem,
		"node ports on 127.0.0.1 do not answer", "net.ipv4.conf.all.route_localnet = 0", "sysctl -w net.ipv4.conf.all.route_localnet=1")
	checkFinding(t, routeLocalnetFinding(readSysctl(fakeSysctl{}, name)), Warning, "cannot read", "does not exist", "as root")
}

func TestConntrackThresholds(t *testing.T) {
	for _, tc := range []struct {
		count, max string
		sev        Severity
		title      string
	}{
		{"0", "1000", OK, "0.0% full"},
		{"800", "1000", OK, "80.0% full"},        // at the warning threshold: not above it
		{"801", "1000", Warning, "80.1% full"},   // above it
		{"950", "1000", Warning, "95.0% full"},   // at the problem threshold
		{"951", "1000", Problem, "95.1% full"},   // above it
		{"1000", "1000", Problem, "100.0% full"}, // full: dropping
		{"262144", "262144", Problem, "new connections are dropped"},
	} {
		t.Run(tc.count+"/"+tc.max, func(t *testing.T) {
			s := fakeSysctl{sysctlConntrackCount: tc.count, sysctlConntrackMax: tc.max}
			f := conntrackFinding(readSysctl(s, sysctlConntrackCount), readSysctl(s, sysctlConntrackMax))
			fix := ""
			if tc.sev != OK {
				fix = "sysctl -w net.netfilter.nf_conntrack_max=" + map[string]string{"1000": "2000", "262144": "524288"}[tc.max]
			}
			checkFinding(t, f, tc.sev, tc.title, "net.netfilter.nf_conntrack_count = "+tc.count, fix)
		})
	}
	for _, tc := range []struct {
		name string
		s    fakeSysctl
		want string
	}{
		{"nf_conntrack not loaded", fakeSysctl{}, "nf_conntrack_count: reading sysctl"},
		{"zero max", fakeSysctl{sysctlConntrackCount: "1", sysctlConntrackMax: "0"}, "is not a positive integer"},
		{"garbage", fakeSysctl{sysctlConntrackCount: "many", sysctlConntrackMax: "10"}, "invalid syntax"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := conntrackFinding(readSysctl(tc.s, sysctlConntrackCount), readSysctl(tc.s, sysctlConntrackMax))
			checkFinding(t, f, Warning, "cannot read the conntrack table's fill level", tc.want, "as root")
		})
	}
}

func TestLockFinding(t *testing.T) {
	const path = "/run/xtables.lock"
	restore := Process{PID: 4242, Command: "iptables-restore -w 5 --noflush"}
	ours := Process{PID: 77, Command: "/usr/bin/kproxy"}
	for _, tc := range []struct {
		name     string
		state    LockState
		err      error
		backend  iptables.Backend
		sev      Severity
		title    string
		evidence string
		fix      string
	}{
		{"no lock file", LockState{Path: path}, nil, iptables.BackendLegacy, OK, "xtables lock is free", "no such file", ""},
		{"free", LockState{Path: path, Exists: true}, nil, iptables.BackendLegacy, OK, "xtables lock is free", path + ": free", ""},
		{"held briefly", LockState{Path: path, Exists: true, Waited: 120e6, Holders: []Process{restore}}, nil, iptables.BackendLegacy,
			OK, "xtables lock is free", "taken, free after 120ms\nheld by PID 4242 (iptables-restore -w 5 --noflush)", ""},
		{"held", LockState{Path: path, Exists: true, Held: true, Waited: 5e9, Holders: []Process{restore}, Waiters: []Process{ours}}, nil, iptables.BackendLegacy,
			Problem, "xtables lock is held by PID 4242 (iptables-restore): kproxy's syncs fail",
			"still held after 5s\nheld by PID 4242 (iptables-restore -w 5 --noflush)\nwaited for by PID 77 (/usr/bin/kproxy)",
			"find why PID 4242 keeps it"},
		{"held, backend unknown", LockState{Path: path, Exists: true, Held: true, Waited: 5e9, Holders: []Process{restore}}, nil, "",
			Problem, "held by PID 4242", "still held", "PID 4242"},
		{"held by an invisible process", LockState{Path: path, Exists: true, Held: true, Waited: 5e9, Holders: []Process{{}}}, nil, iptables.BackendLegacy,
			Problem, "held by a process outside this PID namespace", "still held", "lsof " + path},
		{"held, holder unknown", LockState{Path: path, Exists: true, Held: true, Waited: 5e9}, nil, iptables.BackendLegacy,
			Problem, "held by another process", "still held", "lsof " + path},
		{"held, kproxy uses nft", LockState{Path: path, Exists: true, Held: true, Waited: 5e9, Holders: []Process{restore}}, nil, iptables.BackendNFT,
			Warning, "iptables-legacy commands (not kproxy's, it uses nft) fail", "still held", "PID 4242"},
		{"probe failed", LockState{Path: path}, errors.New("opening the xtables lock: permission denied"), iptables.BackendLegacy,
			Warning, "cannot read the xtables lock", "permission denied", "as root"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			checkFinding(t, lockFinding(tc.state, tc.err, tc.backend), tc.sev, tc.title, tc.evidence, tc.fix)
		})
	}
}
