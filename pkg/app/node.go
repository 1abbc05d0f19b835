package app

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/klog/v2"

	"github.com/kproxy-dev/kproxy/pkg/config"
	"github.com/kproxy-dev/kproxy/pkg/healthcheck"
	"github.com/kproxy-dev/kproxy/pkg/proxier"
)

// How long to wait at start for this node's Node object to carry what we need, as
// upstream: addresses are set by kubelet within seconds; pod CIDRs (NodeCIDR mode) by the
// node IPAM controller, which may take longer on a new node.
const (
	nodeIPsTimeout  = 30 * time.Second
	podCIDRsTimeout = 5 * time.Minute
)

// nodeIPs returns the node's primary address per family: InternalIPs first, then
// ExternalIPs, the first of each family, as kubelet reports them.
func nodeIPs(node *v1.Node) map[v1.IPFamily]netip.Addr {
	ips := map[v1.IPFamily]netip.Addr{}
	if node == nil {
		return ips
	}
	for _, kind := range []v1.NodeAddressType{v1.NodeInternalIP, v1.NodeExternalIP} {
		for _, a := range node.Status.Addresses {
			if a.Type != kind {
				continue
			}
			ip, err := netip.ParseAddr(a.Address)
			if err != nil {
				continue
			}
			ip = ip.Unmap()
			if _, ok := ips[familyOf(ip)]; !ok {
				ips[familyOf(ip)] = ip
			}
		}
	}
	return ips
}

// podCIDRs returns the node's pod CIDRs by family (the first of each).
func podCIDRs(node *v1.Node) map[v1.IPFamily]netip.Prefix {
	out := map[v1.IPFamily]netip.Prefix{}
	if node == nil {
		return out
	}
	cidrs := node.Spec.PodCIDRs
	if len(cidrs) == 0 && node.Spec.PodCIDR != "" {
		cidrs = []string{node.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			continue
		}
		if _, ok := out[familyOf(p.Addr())]; !ok {
			out[familyOf(p.Addr())] = p.Masked()
		}
	}
	return out
}

func familyOf(a netip.Addr) v1.IPFamily {
	if a.Is4() {
		return v1.IPv4Protocol
	}
	return v1.IPv6Protocol
}

// waitForNode fetches this node's Node object, waiting for its addresses (and pod CIDRs
// when needPodCIDRs) to be set. A node that never shows up is not fatal unless pod CIDRs
// are needed: upstream carries on without node IPs.
func waitForNode(ctx context.Context, client kubernetes.Interface, name string, needPodCIDRs bool) (*v1.Node, error) {
	logger := klog.FromContext(ctx)
	timeout := nodeIPsTimeout
	if needPodCIDRs {
		timeout = podCIDRsTimeout
	}
	var node *v1.Node
	err := wait.PollUntilContextTimeout(ctx, time.Second, timeout, true, func(ctx context.Context) (bool, error) {
		n, err := client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			if !apierrors.IsNotFound(err) {
				logger.V(2).Info("Fetching this node's Node object", "err", err.Error())
			}
			return false, nil
		}
		node = n
		if needPodCIDRs {
			return len(podCIDRs(n)) > 0, nil
		}
		return len(nodeIPs(n)) > 0, nil
	})
	switch {
	case err == nil:
		return node, nil
	case ctx.Err() != nil:
		return nil, ctx.Err()
	case needPodCIDRs:
		return nil, fmt.Errorf("detectLocalMode NodeCIDR: node %q has no pod CIDRs after %s", name, timeout)
	}
	logger.Info("Node object has no addresses yet; carrying on without node IPs", "waited", timeout)
	return node, nil
}

// nodePortPrefixes turns nodePortAddresses into this family's prefixes. Empty means every
// local address ("all" or unset). "primary" is the node's IP, "localhost" loopback.
func nodePortPrefixes(addrs []string, family v1.IPFamily, nodeIP netip.Addr) []netip.Prefix {
	var out []netip.Prefix
	for _, a := range addrs {
		switch a {
		case config.NodePortAddressesAll:
			return nil
		case config.NodePortAddressesPrimary:
			if nodeIP.IsValid() && familyOf(nodeIP) == family && !nodeIP.IsLoopback() {
				out = append(out, netip.PrefixFrom(nodeIP, nodeIP.BitLen()))
			}
		case config.NodePortAddressesLocalhost:
			if family == v1.IPv4Protocol {
				out = append(out, netip.MustParsePrefix("127.0.0.0/8"))
			} else {
				out = append(out, netip.MustParsePrefix("::1/128"))
			}
		default:
			p, err := netip.ParsePrefix(a)
			if err == nil && familyOf(p.Addr()) == family {
				out = append(out, p.Masked())
			}
		}
	}
	if len(addrs) > 0 && len(out) == 0 {
		// Restricted, but to nothing of this family: no node ports at all here. An
		// impossible prefix keeps "restricted" distinct from "all".
		return []netip.Prefix{netip.PrefixFrom(netip.IPv6Unspecified(), 128)}
	}
	return out
}

// localhostNodePortsAllowed reports whether node ports may answer on 127.0.0.1: upstream
// turns them off when nodePortAddresses is restricted to ranges without loopback.
func localhostNodePortsAllowed(prefixes []netip.Prefix) bool {
	return len(prefixes) == 0 || slices.ContainsFunc(prefixes, func(p netip.Prefix) bool {
		return p.Contains(netip.MustParseAddr("127.0.0.1"))
	})
}

// nodeWatcher follows this node's Node object after start: /healthz eligibility, the zone
// label for topology, and the changes upstream answers by restarting (node IPs, pod CIDRs
// in NodeCIDR mode, deletion), which a DaemonSet restart picks up cleanly.
type nodeWatcher struct {
	health     *healthcheck.ProxyHealth
	proxiers   []*proxier.Proxier
	ips        map[v1.IPFamily]netip.Addr
	cidrs      map[v1.IPFamily]netip.Prefix
	watchCIDRs bool
	restart    func(error)
}

func (w *nodeWatcher) OnNodeAdd(node *v1.Node)       { w.update(node) }
func (w *nodeWatcher) OnNodeUpdate(_, node *v1.Node) { w.update(node) }
func (w *nodeWatcher) OnNodeSynced()                 {}

func (w *nodeWatcher) OnNodeDelete(*v1.Node) {
	w.health.DeleteNode()
	w.restart(errors.New("this node's Node object was deleted; restarting"))
}

func (w *nodeWatcher) update(node *v1.Node) {
	w.health.SyncNode(node)
	for _, p := range w.proxiers {
		p.SetNodeZone(node.Labels[v1.LabelTopologyZone])
	}
	if ips := nodeIPs(node); !maps.Equal(ips, w.ips) {
		w.restart(fmt.Errorf("node IPs changed from %v to %v; restarting", w.ips, ips))
	}
	if cidrs := podCIDRs(node); w.watchCIDRs && !maps.Equal(cidrs, w.cidrs) {
		w.restart(fmt.Errorf("node pod CIDRs changed from %v to %v; restarting", w.cidrs, cidrs))
	}
}
