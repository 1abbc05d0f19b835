package app

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	v1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kproxy-dev/kproxy/pkg/config"
	"github.com/kproxy-dev/kproxy/pkg/healthcheck"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/metrics"
	"github.com/kproxy-dev/kproxy/pkg/proxier"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/sources"
)

// Run is the daemon: it programs services until ctx is done. initOnly stops it after the
// privileged node setup, for DaemonSets that split setup into an init container.
func Run(ctx context.Context, cfg *config.Config, initOnly bool) error {
	logger := klog.FromContext(ctx)
	if err := checkSupported(cfg); err != nil {
		return err
	}
	backend, err := chooseBackend(ctx, cfg)
	if err != nil {
		return err
	}
	families := proxiedFamilies(cfg)
	ipts := map[v1.IPFamily]iptables.Interface{}
	for i, family := range families {
		ipt, err := iptables.New(family, backend, iptables.DefaultWait)
		if err != nil {
			if i == 0 {
				return fmt.Errorf("primary IP family %s: %w", family, err)
			}
			logger.Info("Not proxying the secondary IP family", "ipFamily", family, "reason", err.Error())
			continue
		}
		ipts[family] = ipt
	}
	if ipts[v1.IPv4Protocol] != nil && cfg.LocalhostNodePorts {
		// Localhost node ports need the kernel to route 127/8 packets off the host; the
		// KUBE-FIREWALL rule keeps other hosts from abusing that (CVE-2020-8558).
		if err := writeSysctl("net/ipv4/conf/all/route_localnet", "1"); err != nil {
			return fmt.Errorf("enabling localhost node ports: %w", err)
		}
	}
	if initOnly {
		logger.Info("Node setup done; exiting because of --init-only")
		return nil
	}

	client, err := newClient(cfg)
	if err != nil {
		return err
	}
	nodeName, err := nodeName(cfg)
	if err != nil {
		return err
	}
	logger = logger.WithValues("node", nodeName)
	ctx = klog.NewContext(ctx, logger)

	clk := clock.RealClock{}
	health := healthcheck.NewProxyHealth(2*cfg.SyncPeriod, clk)
	registry := prometheus.NewRegistry()
	if err := metrics.Register(registry); err != nil {
		return fmt.Errorf("registering metrics: %w", err)
	}
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	dropInvalid := !conntrackLiberal()
	var proxiers []*proxier.Proxier
	for _, family := range families {
		ipt, ok := ipts[family]
		if !ok {
			continue
		}
		opts := RuleOptions(cfg, family)
		opts.DropInvalid = dropInvalid
		logger.Info("Proxying", "ipFamily", family, "backend", backend, "localTrafficDetection", strings.Join(opts.LocalDetector.IfNotLocal, " "))
		proxiers = append(proxiers, proxier.New(ctx, proxier.Config{
			Family: family, IPTables: ipt, Rules: opts,
			MinSyncPeriod: cfg.MinSyncPeriod, SyncPeriod: cfg.SyncPeriod,
			Health: health, Clock: clk,
		}))
	}

	var wg sync.WaitGroup
	for _, srv := range []struct {
		what, addr string
		handler    http.Handler
	}{
		{"healthz", cfg.HealthzBindAddress, health.Handler()},
		{"metrics", cfg.MetricsBindAddress, metrics.Handler(registry, config.ModeIPTables)},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveUntilDone(ctx, srv.what, func() error { return healthcheck.Serve(ctx, srv.addr, srv.handler) })
		}()
	}

	fanout := proxier.Fanout(proxiers)
	if err := sources.Run(ctx, client, nodeName, cfg.ConfigSyncPeriod, fanout, fanout, &nodeHealth{health: health, logger: logger}); err != nil {
		return err
	}
	for _, p := range proxiers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Run(ctx)
		}()
	}
	<-ctx.Done()
	wg.Wait()
	return nil
}

// serveUntilDone runs a server and restarts it after failures (e.g. the port is still
// held by the process we replace), as upstream does, until ctx is done.
func serveUntilDone(ctx context.Context, what string, serve func() error) {
	logger := klog.FromContext(ctx)
	for {
		err := serve()
		if ctx.Err() != nil {
			return
		}
		logger.Error(err, "Server failed; restarting in 5s", "server", what)
		select {
		case <-ctx.Done():
			return
		case <-time.After(5 * time.Second):
		}
	}
}

// checkSupported rejects settings kproxy accepts in the file format but cannot honour
// yet: silently ignoring them would program different rules than kube-proxy.
func checkSupported(cfg *config.Config) error {
	if cfg.DetectLocalMode == config.DetectLocalNodeCIDR {
		return errors.New("detectLocalMode: NodeCIDR is not supported by this kproxy version; use ClusterCIDR, BridgeInterface or InterfaceNamePrefix")
	}
	for _, a := range cfg.NodePortAddresses {
		if a != config.NodePortAddressesAll {
			return fmt.Errorf("nodePortAddresses: %q is not supported by this kproxy version; only the default (all local addresses) is", a)
		}
	}
	return nil
}

// RuleOptions derives one family's rendering options from the configuration. It is
// shared by the daemon and `kproxy render`, so both produce the same rules.
func RuleOptions(cfg *config.Config, family v1.IPFamily) rules.Options {
	opts := rules.Options{
		Family:             family,
		MasqueradeBit:      int(cfg.MasqueradeBit),
		MasqueradeAll:      cfg.MasqueradeAll,
		LocalhostNodePorts: cfg.LocalhostNodePorts,
		DropInvalid:        true,
	}
	switch cfg.DetectLocalMode {
	case config.DetectLocalBridgeInterface:
		opts.LocalDetector = rules.DetectByBridge(cfg.BridgeInterface)
	case config.DetectLocalInterfaceNamePrefix:
		opts.LocalDetector = rules.DetectByInterfacePrefix(cfg.InterfaceNamePrefix)
	default:
		// Upstream uses the first cluster CIDR of the family; without one, pod traffic
		// cannot be told apart and the rules that need it are left out.
		for _, c := range cfg.ClusterCIDRs {
			if (family == v1.IPv6Protocol) == c.Addr().Is6() {
				opts.LocalDetector = rules.DetectByCIDR(c)
				break
			}
		}
	}
	return opts
}

// proxiedFamilies lists the families to proxy, primary first. The primary family comes
// from --bind-address, else from the cluster CIDRs, else IPv4; the other family is also
// proxied when the kernel has it, as upstream runs dual-stack whenever it can.
func proxiedFamilies(cfg *config.Config) []v1.IPFamily {
	primary := v1.IPv4Protocol
	switch {
	case cfg.BindAddress.IsValid() && !cfg.BindAddress.IsUnspecified():
		if cfg.BindAddress.Is6() {
			primary = v1.IPv6Protocol
		}
	case len(cfg.ClusterCIDRs) > 0 && cfg.ClusterCIDRs[0].Addr().Is6():
		primary = v1.IPv6Protocol
	case cfg.BindAddress.Is6():
		primary = v1.IPv6Protocol
	}
	families := []v1.IPFamily{primary}
	secondary := v1.IPv6Protocol
	if primary == v1.IPv6Protocol {
		secondary = v1.IPv4Protocol
	}
	if secondary == v1.IPv4Protocol || ipv6Enabled() {
		families = append(families, secondary)
	}
	return families
}

func ipv6Enabled() bool {
	_, err := os.Stat("/proc/net/if_inet6")
	return err == nil
}

func chooseBackend(ctx context.Context, cfg *config.Config) (iptables.Backend, error) {
	switch cfg.IPTablesBackend {
	case config.IPTablesBackendLegacy:
		return iptables.BackendLegacy, nil
	case config.IPTablesBackendNFT:
		return iptables.BackendNFT, nil
	}
	backend, err := iptables.DetectBackend(ctx)
	if err != nil {
		return "", fmt.Errorf("detecting the iptables backend (set --iptables-backend to skip): %w", err)
	}
	klog.FromContext(ctx).Info("Detected iptables backend", "backend", backend)
	return backend, nil
}

func newClient(cfg *config.Config) (kubernetes.Interface, error) {
	rc, err := clientcmd.BuildConfigFromFlags(cfg.Master, cfg.Kubeconfig)
	if err != nil {
		return nil, fmt.Errorf("building API client config: %w", err)
	}
	rc.QPS, rc.Burst, rc.ContentType = cfg.QPS, int(cfg.Burst), cfg.ContentType
	rc.AcceptContentTypes = cfg.AcceptContentTypes
	rc.UserAgent = "kproxy"
	client, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("creating API client: %w", err)
	}
	return client, nil
}

// nodeName is --hostname-override or the host name, normalised as upstream does.
func nodeName(cfg *config.Config) (string, error) {
	if cfg.HostnameOverride != "" {
		return cfg.HostnameOverride, nil
	}
	h, err := os.Hostname()
	if err != nil {
		return "", fmt.Errorf("finding the node name (set --hostname-override): %w", err)
	}
	name, ok := config.NormalizeHostname(h)
	if !ok {
		return "", fmt.Errorf("host name %q is not a valid node name; set --hostname-override", h)
	}
	return name, nil
}

// conntrackLiberal reports whether the kernel accepts out-of-window TCP packets, in which
// case upstream does not drop conntrack-INVALID packets.
func conntrackLiberal() bool {
	data, err := os.ReadFile("/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal")
	return err == nil && strings.TrimSpace(string(data)) != "0"
}

func writeSysctl(name, value string) error {
	path := "/proc/sys/" + name
	if cur, err := os.ReadFile(path); err == nil && strings.TrimSpace(string(cur)) == value {
		return nil
	}
	if err := os.WriteFile(path, []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting %s=%s: %w", strings.ReplaceAll(name, "/", "."), value, err)
	}
	return nil
}

// nodeHealth feeds this node's Node object into /healthz, which fails while the node is
// being deleted or drained by the cluster autoscaler.
type nodeHealth struct {
	health *healthcheck.ProxyHealth
	logger klog.Logger
}

func (n *nodeHealth) OnNodeAdd(node *v1.Node)       { n.health.SyncNode(node) }
func (n *nodeHealth) OnNodeUpdate(_, node *v1.Node) { n.health.SyncNode(node) }
func (n *nodeHealth) OnNodeDelete(*v1.Node) {
	n.logger.Info("This node's Node object was deleted")
	n.health.DeleteNode()
}
func (n *nodeHealth) OnNodeSynced() {}

// CleanupAll removes kproxy's rules in every family whose iptables binaries exist.
func CleanupAll(ctx context.Context, cfg *config.Config) error {
	backend, err := chooseBackend(ctx, cfg)
	if err != nil {
		return err
	}
	var errs []error
	for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		ipt, err := iptables.New(family, backend, iptables.DefaultWait)
		if err != nil {
			klog.FromContext(ctx).V(2).Info("Skipping cleanup", "ipFamily", family, "reason", err.Error())
			continue
		}
		if err := proxier.Cleanup(ctx, ipt); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
