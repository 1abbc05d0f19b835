package app

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kproxy-dev/kproxy/pkg/healthcheck"
)

func testNodeObject(ips ...string) *v1.Node {
	n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-1", Labels: map[string]string{v1.LabelTopologyZone: "zone-a"}}}
	n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: v1.NodeHostName, Address: "node-1"})
	for i, ip := range ips {
		kind := v1.NodeInternalIP
		if i%2 == 1 {
			kind = v1.NodeExternalIP
		}
		n.Status.Addresses = append(n.Status.Addresses, v1.NodeAddress{Type: kind, Address: ip})
	}
	return n
}

func TestNodeIPsPreferInternalFirstOfEachFamily(t *testing.T) {
	// Internal: 192.168.0.2 and fd00::2; External: 203.0.113.9.
	n := testNodeObject("192.168.0.2", "203.0.113.9", "fd00::2")
	got := nodeIPs(n)
	if got[v1.IPv4Protocol] != netip.MustParseAddr("192.168.0.2") || got[v1.IPv6Protocol] != netip.MustParseAddr("fd00::2") {
		t.Errorf("node IPs %v", got)
	}
	if len(nodeIPs(nil)) != 0 {
		t.Error("nil node has IPs")
	}
}

func TestNodePortPrefixes(t *testing.T) {
	nodeIP := netip.MustParseAddr("192.168.0.2")
	for _, tc := range []struct {
		addrs     []string
		family    v1.IPFamily
		want      string
		localhost bool
	}{
		{nil, v1.IPv4Protocol, "[]", true},
		{[]string{"all"}, v1.IPv4Protocol, "[]", true},
		{[]string{"primary"}, v1.IPv4Protocol, "[192.168.0.2/32]", false},
		{[]string{"primary"}, v1.IPv6Protocol, "[::/128]", false},
		{[]string{"localhost", "10.0.0.0/8"}, v1.IPv4Protocol, "[127.0.0.0/8 10.0.0.0/8]", true},
		{[]string{"192.168.0.0/16", "fd00::/8"}, v1.IPv6Protocol, "[fd00::/8]", false},
	} {
		got := nodePortPrefixes(tc.addrs, tc.family, nodeIP)
		if fmt.Sprint(got) != tc.want || localhostNodePortsAllowed(got) != tc.localhost {
			t.Errorf("%v/%s: %v localhost=%t, want %s localhost=%t", tc.addrs, tc.family, got, localhostNodePortsAllowed(got), tc.want, tc.localhost)
		}
	}
}

var testStart = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func TestNodeWatcherRestartsOnIPChangeAndDeletion(t *testing.T) {
	var restarts []error
	w := &nodeWatcher{
		health:  healthcheck.NewProxyHealth(time.Minute, clocktesting.NewFakeClock(testStart)),
		ips:     nodeIPs(testNodeObject("192.168.0.2")),
		restart: func(err error) { restarts = append(restarts, err) },
	}
	w.OnNodeAdd(testNodeObject("192.168.0.2"))
	if len(restarts) != 0 {
		t.Fatalf("unchanged node restarted: %v", restarts)
	}
	if !w.health.Health().Healthy {
		t.Error("health not healthy")
	}
	w.OnNodeUpdate(nil, testNodeObject("192.168.0.3"))
	w.OnNodeDelete(nil)
	if len(restarts) != 2 {
		t.Errorf("restarts %v, want one for the IP change and one for the deletion", restarts)
	}
}
