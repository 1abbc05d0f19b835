package nfacct_test

import (
	"testing"

	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/nfacct"
)

// TestCountersInNetns creates both counters in a throwaway namespace, counts packets
// into one with a real "-m nfacct" rule, and reads the count back.
func TestCountersInNetns(t *testing.T) {
	netnstest.RequireRoot(t)
	ns := netnstest.New(t, "nfacct")
	acct := nfacct.New()
	err := ns.Do(func() error {
		for _, name := range []string{nfacct.InvalidDropped, nfacct.LocalhostNodePortsAccepted} {
			if err := acct.Ensure(name); err != nil {
				return err
			}
			// A second Ensure finds it and keeps it.
			if err := acct.Ensure(name); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	ns.Run(t, "iptables-legacy", "-A", "OUTPUT", "-o", "lo", "-p", "udp", "--dport", "9", "-m", "nfacct", "--nfacct-name", nfacct.LocalhostNodePortsAccepted)
	ns.Run(t, "bash", "-c", "for i in 1 2 3; do echo x > /dev/udp/127.0.0.1/9; done")
	var got uint64
	if err := ns.Do(func() (err error) { got, err = acct.Packets(nfacct.LocalhostNodePortsAccepted); return err }); err != nil {
		t.Fatalf("Packets: %v", err)
	}
	if got != 3 {
		t.Errorf("counted %d packets, want 3 (one per datagram sent)", got)
	}
	if err := ns.Do(func() error { _, err := acct.Packets("no-such-counter"); return err }); err == nil {
		t.Error("reading a missing counter succeeded")
	}
	if err := acct.Ensure("a-name-that-is-far-too-long-for-nfacct"); err == nil {
		t.Error("a 38-byte name was accepted")
	}
}
