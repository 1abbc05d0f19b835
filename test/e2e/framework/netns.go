package framework

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/vishvananda/netns"
)

// InNetNS runs fn on an OS thread switched into the named network namespace (one that
// "ip netns" knows) and returns fn's error. Sockets fn opens belong to that namespace for
// their whole life, so a connection dialled inside fn can be used from any goroutine
// afterwards. Goroutines fn starts do not run in the namespace.
func InNetNS(name string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		// If switching back fails the goroutine exits still locked, and the runtime then
		// destroys the thread instead of reusing it in the wrong namespace.
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("getting the current netns: %w", err)
			return
		}
		defer orig.Close()
		target, err := netns.GetFromName(name)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("opening netns %s: %w", name, err)
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("entering netns %s: %w", name, err)
			return
		}
		returned := false
		var fnErr error
		defer func() {
			if r := recover(); r != nil {
				fnErr = fmt.Errorf("panic in netns %s: %v", name, r)
			} else if !returned {
				fnErr = fmt.Errorf("fn did not return in netns %s (t.FailNow inside InNetNS?)", name)
			}
			if err := netns.Set(orig); err != nil {
				errc <- errors.Join(fnErr, fmt.Errorf("leaving netns %s: %w", name, err))
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

// DialContext opens a connection from inside the named namespace.
func DialContext(ctx context.Context, netnsName, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := InNetNS(netnsName, func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	return c, err
}

// Exec runs "ip netns exec NETNS args..." with a timeout and returns its combined output.
func Exec(ctx context.Context, netnsName string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", netnsName}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("ip netns exec %s %s: %w: %s", netnsName, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}
