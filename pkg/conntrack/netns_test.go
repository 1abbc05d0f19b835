package conntrack_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/conntrack"
	"github.com/kproxy-dev/kproxy/pkg/model"
)

// These tests make real conntrack entries with real traffic through a real
// DNAT rule, all inside throwaway network namespaces, and clean them up over
// netlink. They need root; the host's conntrack table is never read or
// written, because every netlink call runs on a thread inside the "node"
// namespace (ns.Do) and every command through "ip netns exec".
//
//	client ----------- node (routes, DNATs VIP:53 to backend:5353) ----------- backend
//	clientAddr   nodeClientSide                    nodeBackendSide            backendAddr

// topo is one family's addressing.
type topo struct {
	family                     v1.IPFamily
	prefixLen                  int
	clientAddr, nodeClientSide netip.Addr
	backendAddr, nodeBackend   netip.Addr
	vip                        netip.Addr
	// elsewhere is an endpoint address that serves the service but is not
	// the backend the entry was DNATed to.
	elsewhere netip.Addr
}

var topos = []topo{
	{
		family:         v1.IPv4Protocol,
		prefixLen:      24,
		clientAddr:     netip.MustParseAddr("10.201.1.2"),
		nodeClientSide: netip.MustParseAddr("10.201.1.1"),
		backendAddr:    netip.MustParseAddr("10.201.2.2"),
		nodeBackend:    netip.MustParseAddr("10.201.2.1"),
		vip:            netip.MustParseAddr("172.30.0.10"),
		elsewhere:      netip.MustParseAddr("10.201.2.99"),
	},
	{
		family:         v1.IPv6Protocol,
		prefixLen:      64,
		clientAddr:     netip.MustParseAddr("fd00:201:1::2"),
		nodeClientSide: netip.MustParseAddr("fd00:201:1::1"),
		backendAddr:    netip.MustParseAddr("fd00:201:2::2"),
		nodeBackend:    netip.MustParseAddr("fd00:201:2::1"),
		vip:            netip.MustParseAddr("fd00:30::10"),
		elsewhere:      netip.MustParseAddr("fd00:201:2::99"),
	},
}

const (
	vipPort     = 53
	backendPort = 5353
	// Fixed client ports make the entries' tuples known in advance.
	clientPortViaVIP = 40053
	clientPortDirect = 40054
)

func TestNetlinkCleanupInNetns(t *testing.T) {
	for _, tp := range topos {
		t.Run(string(tp.family), func(t *testing.T) { testNetlinkCleanup(t, tp) })
	}
}

func testNetlinkCleanup(t *testing.T, tp topo) {
	netnstest.RequireRoot(t)
	restore := "iptables-nft-restore"
	if tp.family == v1.IPv6Protocol {
		restore = "ip6tables-nft-restore"
	}
	if _, err := exec.LookPath(restore); err != nil {
		t.Skipf("skipping: %s is needed to install the DNAT rule: %v", restore, err)
	}

	client := netnstest.New(t, "kpx-ct-client")
	node := netnstest.New(t, "kpx-ct-node")
	backend := netnstest.New(t, "kpx-ct-backend")
	setUpNetwork(t, tp, client, node, backend)

	// The rule a kproxy sync would leave for the service, reduced to the DNAT.
	dst := netip.AddrPortFrom(tp.backendAddr, backendPort)
	payload := fmt.Sprintf("*nat\n-A PREROUTING -d %s/%d -p udp -m udp --dport %d -j DNAT --to-destination %s\nCOMMIT\n",
		tp.vip, tp.vip.BitLen(), vipPort, dst)
	file := filepath.Join(t.TempDir(), "nat.rules")
	if err := os.WriteFile(file, []byte(payload), 0o600); err != nil {
		t.Fatal(err)
	}
	node.Run(t, restore, "--noflush", file)

	startEchoServer(t, backend, dst)
	viaVIP := netip.AddrPortFrom(tp.clientAddr, clientPortViaVIP)
	direct := netip.AddrPortFrom(tp.clientAddr, clientPortDirect)
	exchange(t, client, viaVIP, netip.AddrPortFrom(tp.vip, vipPort))
	exchange(t, client, direct, dst)

	// What the kernel must now hold in the node namespace.
	dnatFlow := conntrack.Flow{Protocol: v1.ProtocolUDP,
		OrigSrc: viaVIP, OrigDst: netip.AddrPortFrom(tp.vip, vipPort), ReplySrc: dst, ReplyDst: viaVIP}
	directFlow := conntrack.Flow{Protocol: v1.ProtocolUDP,
		OrigSrc: direct, OrigDst: dst, ReplySrc: dst, ReplyDst: direct}

	ctx := context.Background()
	ct := conntrack.NewNetlink(tp.family)
	list := func() []conntrack.Flow {
		t.Helper()
		var flows []conntrack.Flow
		if err := node.Do(func() error {
			var err error
			flows, err = ct.ListUDP(ctx)
			return err
		}); err != nil {
			t.Fatalf("ListUDP in the node namespace: %v", err)
		}
		return flows
	}
	flows := list()
	for _, want := range []conntrack.Flow{dnatFlow, directFlow} {
		if !slices.Contains(flows, want) {
			t.Fatalf("ListUDP does not hold %s; it holds:\n%s", want, flowLines(flows))
		}
	}

	// The tool's view before the cleanup makes its view after it meaningful.
	if out, ok := conntrackTool(t, node, tp.family); ok && !strings.Contains(out, "dst="+tp.vip.String()+" ") {
		t.Fatalf("conntrack -L does not list the entry to %s:\n%s", tp.vip, out)
	}

	svcName := model.ServicePortName{
		NamespacedName: types.NamespacedName{Namespace: "kube-system", Name: "dns"},
		Port:           "dns", Protocol: v1.ProtocolUDP,
	}
	snap := func(endpoint netip.Addr) *model.Snapshot {
		return &model.Snapshot{
			Services: map[model.ServicePortName]*model.ServicePort{
				svcName: {Name: svcName, ClusterIP: tp.vip, Port: vipPort},
			},
			Endpoints: map[model.ServicePortName][]model.Endpoint{
				svcName: {{IP: endpoint, Port: backendPort, Ready: true, Serving: true}},
			},
		}
	}
	rec := conntrack.NewReconciler(tp.family, ct)
	clean := func(s *model.Snapshot) {
		t.Helper()
		if err := node.Do(func() error { return rec.CleanStaleEntries(ctx, s) }); err != nil {
			t.Fatalf("CleanStaleEntries in the node namespace: %v", err)
		}
	}

	// The backend still serves: nothing goes.
	before := deletedTotal(t, tp.family)
	clean(snap(tp.backendAddr))
	if flows := list(); !slices.Contains(flows, dnatFlow) || !slices.Contains(flows, directFlow) {
		t.Fatalf("cleanup with the backend serving deleted entries; left:\n%s", flowLines(flows))
	}
	if got := deletedTotal(t, tp.family) - before; got != 0 {
		t.Errorf("deleted counter grew by %v with nothing stale", got)
	}

	// The backend is gone, another endpoint serves: the DNATed entry goes,
	// the entry that never went through the service stays.
	clean(snap(tp.elsewhere))
	flows = list()
	if slices.Contains(flows, dnatFlow) {
		t.Errorf("stale entry %s survived the cleanup", dnatFlow)
	}
	if !slices.Contains(flows, directFlow) {
		t.Errorf("entry %s, which does not go through the service, was deleted; left:\n%s", directFlow, flowLines(flows))
	}
	if got := deletedTotal(t, tp.family) - before; got != 1 {
		t.Errorf("deleted counter grew by %v, want 1", got)
	}

	// The conntrack tool, where installed, sees the same table.
	if out, ok := conntrackTool(t, node, tp.family); ok {
		if strings.Contains(out, "dst="+tp.vip.String()+" ") {
			t.Errorf("conntrack -L still lists an entry to %s:\n%s", tp.vip, out)
		}
		if !strings.Contains(out, fmt.Sprintf("sport=%d ", clientPortDirect)) {
			t.Errorf("conntrack -L lost the direct entry:\n%s", out)
		}
	}
}

// conntrackTool returns "conntrack -L -p udp" for family run inside ns, and
// false when the conntrack binary is not installed.
func conntrackTool(t *testing.T, ns *netnstest.NS, family v1.IPFamily) (string, bool) {
	t.Helper()
	if _, err := exec.LookPath("conntrack"); err != nil {
		t.Logf("conntrack binary not installed, not cross-checking with it: %v", err)
		return "", false
	}
	f := "ipv4"
	if family == v1.IPv6Protocol {
		f = "ipv6"
	}
	return ns.Run(t, "conntrack", "-L", "-f", f, "-p", "udp"), true
}

// setUpNetwork links client and backend to node, which routes between them.
func setUpNetwork(t *testing.T, tp topo, client, node, backend *netnstest.NS) {
	t.Helper()
	if tp.family == v1.IPv6Protocol {
		// Duplicate address detection would keep the new addresses unusable
		// for a second or two; there is nothing to collide with here. Set on
		// "default" before the links exist, it applies to them.
		for _, ns := range []*netnstest.NS{client, node, backend} {
			ns.Run(t, "sysctl", "-q", "-w", "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
		}
		node.Run(t, "sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1")
	} else {
		node.Run(t, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
	}
	prefix := func(a netip.Addr) string { return fmt.Sprintf("%s/%d", a, tp.prefixLen) }
	netnstest.Link(t, node, prefix(tp.nodeClientSide), client, prefix(tp.clientAddr))
	netnstest.Link(t, node, prefix(tp.nodeBackend), backend, prefix(tp.backendAddr))
	client.Run(t, "ip", "route", "add", "default", "via", tp.nodeClientSide.String())
	backend.Run(t, "ip", "route", "add", "default", "via", tp.nodeBackend.String())
	if tp.family == v1.IPv6Protocol {
		for _, ns := range []*netnstest.NS{client, node, backend} {
			waitNoTentative(t, ns)
		}
	}
}

// waitNoTentative waits until ns has no IPv6 address still in duplicate
// address detection, in case the sysctls did not reach an interface.
func waitNoTentative(t *testing.T, ns *netnstest.NS) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		out := ns.Run(t, "ip", "-6", "addr", "show", "tentative")
		if strings.TrimSpace(out) == "" {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("IPv6 addresses in %s still tentative:\n%s", ns.Name(), out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startEchoServer answers every UDP datagram to addr, inside ns, until the
// test ends. Answering keeps the path symmetrical (no ICMP port unreachable)
// and lets the client check the path works.
func startEchoServer(t *testing.T, ns *netnstest.NS, addr netip.AddrPort) {
	t.Helper()
	var conn *net.UDPConn
	if err := ns.Do(func() error {
		var err error
		conn, err = net.ListenUDP("udp", net.UDPAddrFromAddrPort(addr))
		return err
	}); err != nil {
		t.Fatalf("listening on %s in %s: %v", addr, ns.Name(), err)
	}
	done := make(chan struct{})
	t.Cleanup(func() {
		_ = conn.Close()
		<-done
	})
	go func() {
		defer close(done)
		buf := make([]byte, 1500)
		for {
			n, from, err := conn.ReadFromUDPAddrPort(buf)
			if err != nil {
				return // closed at the end of the test
			}
			_, _ = conn.WriteToUDPAddrPort(buf[:n], from)
		}
	}()
}

// exchange sends one datagram from src to dst inside ns and waits for the
// echo, which proves the conntrack entry exists in the node and was used both
// ways.
func exchange(t *testing.T, ns *netnstest.NS, src, dst netip.AddrPort) {
	t.Helper()
	if err := ns.Do(func() error {
		conn, err := net.DialUDP("udp", net.UDPAddrFromAddrPort(src), net.UDPAddrFromAddrPort(dst))
		if err != nil {
			return err
		}
		defer conn.Close()
		if err := conn.SetDeadline(time.Now().Add(3 * time.Second)); err != nil {
			return err
		}
		msg := []byte("kproxy conntrack test")
		if _, err := conn.Write(msg); err != nil {
			return err
		}
		buf := make([]byte, 1500)
		n, err := conn.Read(buf)
		if err != nil {
			return fmt.Errorf("waiting for the echo: %w", err)
		}
		if string(buf[:n]) != string(msg) {
			return errors.New("echo differs from the datagram sent")
		}
		return nil
	}); err != nil {
		t.Fatalf("UDP exchange %s -> %s: %v", src, dst, err)
	}
}

func flowLines(flows []conntrack.Flow) string {
	var b strings.Builder
	for _, f := range sortFlows(flows) {
		b.WriteString("  " + f.String() + "\n")
	}
	return b.String()
}
