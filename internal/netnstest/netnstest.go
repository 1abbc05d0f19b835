// Package netnstest gives privileged tests throwaway network namespaces, so
// they can run real iptables binaries and real traffic without touching the
// host's rules, routes or links.
//
// Namespaces are named ones ("ip netns add"), so a failed test leaves a name a
// human can find with "ip netns list"; t.Cleanup deletes them. Everything here
// is created inside the test's namespaces: veth pairs are created in one
// namespace with the peer placed directly in the other, never in the root
// namespace.
//
// This package runs the ip command. That is the one exception to "only
// pkg/iptables runs binaries": it is test-only code, and it is internal.
package netnstest

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/vishvananda/netns"
)

// counter makes namespace and link names unique within the test binary; the
// process id makes namespace names unique across test binaries run at once.
var counter atomic.Uint64

// RequireRoot skips the test unless it runs as root and the ip command is in
// $PATH, both of which creating network namespaces needs.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("skipping: this test creates network namespaces and must run as root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skipf("skipping: this test needs the ip command (iproute2): %v", err)
	}
}

// NS is a named network namespace owned by one test.
type NS struct {
	name string
}

// New creates a network namespace named after prefix, brings its loopback
// interface up and deletes the namespace when the test ends. It skips the test
// when RequireRoot would.
func New(t testing.TB, prefix string) *NS {
	t.Helper()
	RequireRoot(t)
	name := fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), counter.Add(1))
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add %s: %v: %s", name, err, out)
	}
	t.Cleanup(func() {
		// Sockets or processes still inside keep the namespace alive after
		// its name is gone; the kernel frees it once they close.
		if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", name, err, out)
		}
	})
	ns := &NS{name: name}
	ns.Run(t, "ip", "link", "set", "lo", "up")
	return ns
}

// Name is the namespace's name, as "ip netns" knows it.
func (ns *NS) Name() string { return ns.name }

// Do runs fn on an OS thread switched into the namespace and returns fn's
// error. What fn does directly happens inside the namespace: sockets it opens
// (net.Listen, net.Dial) belong to the namespace for their whole life, and
// processes it starts (exec.Command) inherit the namespace. Goroutines that fn
// starts do not: they may run on any thread, so start servers with net.Listen
// inside fn and serve them from anywhere.
//
// fn runs on a goroutine of its own, so it must report failure by returning an
// error, not with t.Fatal; a fn that exits through runtime.Goexit or panics
// makes Do return an error.
func (ns *NS) Do(fn func() error) error { return Do(ns.name, fn) }

// Do is NS.Do for any namespace "ip netns" knows by name, for callers that did not
// create it with New (the e2e framework's clusters).
func Do(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// The thread stays locked until it is back in its original namespace.
		// If that fails the goroutine exits still locked, and the Go runtime
		// then destroys the thread rather than reuse it in the wrong namespace.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netnstest: getting current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netnstest: opening netns %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("netnstest: entering netns %s: %w", name, err)
			return
		}

		returned := false
		var fnErr error
		defer func() {
			if r := recover(); r != nil {
				fnErr = fmt.Errorf("netnstest: fn panicked in netns %s: %v", name, r)
			} else if !returned {
				fnErr = fmt.Errorf("netnstest: fn did not return in netns %s (t.FailNow or runtime.Goexit inside Do?)", name)
			}
			if err := netns.Set(orig); err != nil {
				errc <- errors.Join(fnErr, fmt.Errorf("netnstest: leaving netns %s: %w", name, err))
				return
			}
			runtime.UnlockOSThread()
			errc <- fnErr
		}()
		fnErr = fn()
		returned = true
	}()
	return <-errc
}

// Run runs "ip netns exec <name> args..." and returns its combined output,
// failing the test if the command fails.
func (ns *NS) Run(t testing.TB, args ...string) string {
	t.Helper()
	full := append([]string{"netns", "exec", ns.name}, args...)
	out, err := exec.Command("ip", full...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns exec %s %s: %v: %s", ns.name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// Link joins a and b with a veth pair, gives a's end aAddr and b's end bAddr
// (both with a prefix length, such as "10.99.0.1/24"), brings both ends up and
// returns the interface names in a and in b. The pair goes away with the
// namespaces.
func Link(t testing.TB, a *NS, aAddr string, b *NS, bAddr string) (aDev, bDev string) {
	t.Helper()
	for _, addr := range []string{aAddr, bAddr} {
		if _, err := netip.ParsePrefix(addr); err != nil {
			t.Fatalf("netnstest.Link: address %q needs a prefix length: %v", addr, err)
		}
	}
	// Interface names are limited to 15 bytes and need only be unique within
	// a namespace; the counter keeps them unique within the test binary.
	n := counter.Add(1)
	aDev, bDev = fmt.Sprintf("kpa%d", n), fmt.Sprintf("kpb%d", n)
	// Create the pair inside a and place the peer straight into b, so the
	// root namespace never sees either end.
	a.Run(t, "ip", "link", "add", aDev, "type", "veth", "peer", "name", bDev, "netns", b.name)
	a.Run(t, "ip", "addr", "add", aAddr, "dev", aDev)
	a.Run(t, "ip", "link", "set", aDev, "up")
	b.Run(t, "ip", "addr", "add", bAddr, "dev", bDev)
	b.Run(t, "ip", "link", "set", bDev, "up")
	return aDev, bDev
}
