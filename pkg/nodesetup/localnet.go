package nodesetup

import (
	"context"
	"fmt"

	"k8s.io/klog/v2"
)

// sysctlRouteLocalnet lets packets from or to 127.0.0.0/8 be routed (DNATed)
// instead of being dropped as martians; NodePorts on localhost need it.
const sysctlRouteLocalnet = "net/ipv4/conf/all/route_localnet"

// EnableRouteLocalnet sets net/ipv4/conf/all/route_localnet to 1 unless it
// already is 1, as kube-proxy's IPv4 proxier does when localhost NodePorts
// are enabled and the NodePort addresses include an IPv4 loopback address
// (which the default, all addresses, does). It is never set back to 0.
//
// When the sysctl cannot be read it is left alone and nil is returned, as
// kube-proxy does: a node without IPv4 configuration has nothing to set. A
// failed write is returned; kube-proxy then fails to start.
func EnableRouteLocalnet(ctx context.Context, s Sysctl) error {
	logger := klog.FromContext(ctx)
	v, err := s.Get(sysctlRouteLocalnet)
	if err != nil {
		logger.Info("Could not read route_localnet; leaving it alone", "entry", sysctlRouteLocalnet, "err", err)
		return nil
	}
	if v == "1" {
		return nil
	}
	if err := s.Set(sysctlRouteLocalnet, "1"); err != nil {
		return fmt.Errorf("enabling route_localnet for localhost NodePorts: %w", err)
	}
	logger.Info("Set sysctl", "entry", sysctlRouteLocalnet, "value", 1, "previous", v)
	return nil
}
