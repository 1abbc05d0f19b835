package netnstest

import (
	"errors"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// TestDoReachesListenerInOtherNamespace proves the Do approach for in-process
// servers: a listener opened inside one namespace accepts a connection dialled
// from inside another, over a veth pair, while both are served by goroutines
// that are not themselves in either namespace.
func TestDoReachesListenerInOtherNamespace(t *testing.T) {
	client := New(t, "kpx-client")
	server := New(t, "kpx-server")
	_, serverDev := Link(t, client, "10.99.0.1/24", server, "10.99.0.2/24")
	if out := server.Run(t, "ip", "-o", "addr", "show", "dev", serverDev); !strings.Contains(out, "10.99.0.2/24") {
		t.Fatalf("server end of the link lacks its address:\n%s", out)
	}

	var ln net.Listener
	if err := server.Do(func() error {
		var err error
		ln, err = net.Listen("tcp", "10.99.0.2:0")
		return err
	}); err != nil {
		t.Fatalf("listen in %s: %v", server.Name(), err)
	}
	t.Cleanup(func() { ln.Close() })

	accepted := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			accepted <- err
			return
		}
		defer c.Close()
		_, err = io.WriteString(c, "hello from "+server.Name())
		accepted <- err
	}()

	var got []byte
	if err := client.Do(func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 5*time.Second)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.SetDeadline(time.Now().Add(5 * time.Second)); err != nil {
			return err
		}
		got, err = io.ReadAll(c)
		return err
	}); err != nil {
		t.Fatalf("dial from %s: %v", client.Name(), err)
	}
	if err := <-accepted; err != nil {
		t.Fatalf("accept: %v", err)
	}
	if want := "hello from " + server.Name(); string(got) != want {
		t.Errorf("read %q, want %q", got, want)
	}
}

// TestDoSwitchesAndReturnsErrors checks that fn really runs in the namespace
// (a different netns than the caller's, with only lo in it), that fn's error
// comes back, and that t.FailNow-style exits do not hang Do.
func TestDoSwitchesAndReturnsErrors(t *testing.T) {
	ns := New(t, "kpx-do")
	caller, err := netns.Get()
	if err != nil {
		t.Fatalf("netns.Get: %v", err)
	}
	defer caller.Close()

	if err := ns.Do(func() error {
		inside, err := netns.Get()
		if err != nil {
			return err
		}
		defer inside.Close()
		if inside.Equal(caller) {
			return errors.New("fn runs in the caller's namespace")
		}
		ifaces, err := net.Interfaces()
		if err != nil {
			return err
		}
		if len(ifaces) != 1 || ifaces[0].Name != "lo" {
			return errors.New("fresh namespace has interfaces other than lo")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	sentinel := errors.New("sentinel")
	if err := ns.Do(func() error { return sentinel }); !errors.Is(err, sentinel) {
		t.Errorf("Do returned %v, want fn's error", err)
	}
	if err := ns.Do(func() error { panic("boom") }); err == nil || !strings.Contains(err.Error(), "boom") {
		t.Errorf("Do with a panicking fn returned %v", err)
	}
}
