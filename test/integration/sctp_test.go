package integration

import (
	"errors"
	"strings"
	"syscall"
	"testing"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// sctpSupport reports whether the kernel can open SCTP sockets in ns; reason says why not.
func sctpSupport(t *testing.T, ns *netnstest.NS) (ok bool, reason string) {
	t.Helper()
	var sockErr error
	if err := ns.Do(func() error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_STREAM, syscall.IPPROTO_SCTP)
		if err == nil {
			syscall.Close(fd)
		}
		sockErr = err
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	switch {
	case sockErr == nil:
		return true, ""
	case errors.Is(sockErr, syscall.EPROTONOSUPPORT), errors.Is(sockErr, syscall.ESOCKTNOSUPPORT):
		return false, "socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP): " + sockErr.Error()
	default:
		t.Fatalf("probing for SCTP: %v", sockErr)
		return false, ""
	}
}

// TestSCTPRulesAccepted: SCTP service ports, with and without endpoints and with node
// ports, render rules the real iptables-restore accepts, with the DNAT and REJECT rules
// in place. Traffic is not checked: Go's net package has no SCTP.
func TestSCTPRulesAccepted(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 1)
		k := newKproxy(t, c, backend)
		sctp := port{name: "assoc", proto: v1.ProtocolSCTP, port: 9999, target: 9999}
		k.load(
			service("assoc", "172.30.0.50", sctp.withNodePort(30099)), endpointSlice("assoc", []port{sctp}, c.pods[0]),
			service("noeps", "172.30.0.51", sctp.withNodePort(30098)),
		)
		if err := k.syncErr(t); err != nil {
			t.Fatalf("iptables-restore rejected the SCTP rules: %v", err)
		}
		nat, filter := k.save(t, "nat"), k.save(t, "filter")
		for _, want := range []string{
			"-d 172.30.0.50/32 -p sctp -m comment",
			"--dport 30099 -j KUBE-EXT-",
			"-j DNAT --to-destination 10.244.1.2:9999",
		} {
			if !strings.Contains(nat, want) {
				t.Errorf("nat table lacks %q:\n%s", want, nat)
			}
		}
		for _, want := range []string{"-d 172.30.0.51/32 -p sctp", "--dport 30098 -j REJECT"} {
			if !strings.Contains(filter, want) {
				t.Errorf("filter table lacks %q:\n%s", want, filter)
			}
		}
		if ok, reason := sctpSupport(t, c.client); !ok {
			t.Logf("traffic not checked: the kernel lacks SCTP (%s)", reason)
		} else {
			t.Log("traffic not checked: Go's net package has no SCTP client")
		}
	})
}
