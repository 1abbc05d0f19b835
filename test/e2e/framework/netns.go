package framework

import (
	"context"
	"fmt"
	"net"
	"os/exec"
	"strings"
	"time"

	"github.com/kproxy-dev/kproxy/internal/netnstest"
)

// InNetNS runs fn on an OS thread switched into the named network namespace (one that
// "ip netns" knows) and returns fn's error. Sockets fn opens belong to that namespace for
// their whole life, so a connection dialled inside fn can be used from any goroutine
// afterwards. Goroutines fn starts do not run in the namespace.
func InNetNS(name string, fn func() error) error { return netnstest.Do(name, fn) }

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
