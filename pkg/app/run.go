package app

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	v1 "k8s.io/api/core/v1"
	apiversion "k8s.io/apimachinery/pkg/version"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/component-base/version"
	"k8s.io/klog/v2"
	"k8s.io/utils/clock"

	"github.com/kproxy-dev/kproxy/pkg/config"
	"github.com/kproxy-dev/kproxy/pkg/conntrack"
	"github.com/kproxy-dev/kproxy/pkg/healthcheck"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/metrics"
	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/nfacct"
	"github.com/kproxy-dev/kproxy/pkg/nodesetup"
	"github.com/kproxy-dev/kproxy/pkg/proxier"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/sources"
)

// Run is the daemon: it programs services until ctx is done, or until this node changes
// in a way that needs a restart (as upstream, the process then exits with an error and
// the DaemonSet restarts it). loadedConfig is the content of cfg.ConfigFile that cfg was
// built from; any other content there ends the process. initOnly stops it after the
// privileged node setup, for DaemonSets that split setup into an init container.
func Run(ctx context.Context, cfg *config.Config, loadedConfig []byte, initOnly bool) error {
	logger := klog.FromContext(ctx)
	logVersion(logger, version.Get())
	warnInert(ctx, cfg)
	if err := nodeSetup(ctx, cfg); err != nil {
		return err
	}
	backend, err := chooseBackend(ctx, cfg)
	if err != nil {
		return err
	}
	if initOnly {
		// What the IPv4 proxier would set at start, decided the same way, so that the
		// long-running process finds it done.
		if err := ensureRouteLocalnet(ctx, cfg, nodesetup.NewProcSysctl(nodesetup.HostRoot)); err != nil {
			return err
		}
		logger.Info("Node setup done; exiting because of --init-only")
		return nil
	}

	client, err := newClient(cfg)
	if err != nil {
		return err
	}
	name, err := nodeName(cfg)
	if err != nil {
		return err
	}
	logger = logger.WithValues("node", name)
	ctx = klog.NewContext(ctx, logger)

	clk := clock.RealClock{}
	health := healthcheck.NewProxyHealth(2*cfg.SyncPeriod, clk)
	gatherer, err := metrics.NewGatherer(metrics.NewNFAcctCollector(nfacct.New(), nfacct.InvalidDropped, nfacct.LocalhostNodePortsAccepted))
	if err != nil {
		return err
	}
	ctx, restart := context.WithCancelCause(ctx)
	var wg sync.WaitGroup
	defer func() {
		restart(nil)
		wg.Wait()
	}()
	recorder := startEvents(ctx, client)
	if cfg.ModeDefaulted {
		logger.Error(nil, defaultModeMessage)
		recorder.Eventf(nodeRef(name), nil, v1.EventTypeWarning, eventReasonDefaultMode, eventActionStart, defaultModeMessage)
	}
	debug := &debugEndpoint{node: name}
	metricsHandler := metrics.Handler(gatherer, config.ModeIPTables, cfg.EnableProfiling)
	if cfg.DebugEndpoint {
		metricsHandler = withDebugEndpoint(metricsHandler, debug)
	}
	// The probes answer before anything waits on the API server: a kproxy waiting for it
	// is alive (/livez), and a liveness probe must not find the port closed and restart it.
	for _, srv := range []struct {
		what, addr string
		handler    http.Handler
		limits     healthcheck.Limits
	}{
		{"healthz", cfg.HealthzBindAddress, health.Handler(), healthcheck.ProbeLimits()},
		{"metrics", cfg.MetricsBindAddress, metricsHandler, metricsServerLimits},
	} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var hardFail func(error)
			if cfg.BindAddressHardFail {
				hardFail = func(err error) {
					hardFailEvent(recorder, name, srv.what, err)
					restart(fmt.Errorf("%s server failed (--bind-address-hard-fail): %w", srv.what, err))
				}
			}
			serveUntilDone(ctx, srv.what, hardFail, func() error {
				return healthcheck.Serve(ctx, srv.addr, srv.handler, srv.limits)
			})
		}()
	}

	nodeCIDRMode := cfg.DetectLocalMode == config.DetectLocalNodeCIDR
	node, err := waitForNode(ctx, client, name, nodeCIDRMode)
	if err != nil {
		return err
	}
	ips := nodeIPs(node)

	var proxiers []*proxier.Proxier
	for i, family := range proxiedFamilies(cfg, ips) {
		ipt, err := iptables.New(family, backend, iptables.DefaultWait)
		if err != nil {
			if i == 0 {
				return fmt.Errorf("primary IP family %s: %w", family, err)
			}
			logger.Info("Not proxying the secondary IP family", "ipFamily", family, "reason", err.Error())
			continue
		}
		p, err := newFamilyProxier(ctx, cfg, family, ipt, node, ips[family], health, eventSink{recorder, name}, clk, &wg)
		if err != nil {
			return err
		}
		proxiers = append(proxiers, p)
	}

	debug.setProxiers(string(backend), proxiers)

	if cfg.ConfigFile != "" {
		wg.Add(1)
		go func() {
			defer wg.Done()
			watchConfigFile(ctx, cfg.ConfigFile, loadedConfig, configWatchInterval, restart)
		}()
	}

	watcher := &nodeWatcher{health: health, proxiers: proxiers, ips: ips, cidrs: podCIDRs(node), watchCIDRs: nodeCIDRMode, restart: restart}
	fanout := proxier.Fanout(proxiers)
	if err := sources.Run(ctx, client, name, cfg.ConfigSyncPeriod, fanout, fanout, watcher); err != nil {
		return err
	}
	for _, p := range proxiers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.Run(ctx)
		}()
	}
	recorder.Eventf(nodeRef(name), nil, v1.EventTypeNormal, eventReasonStarting, eventActionStart, "")
	<-ctx.Done()
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return nil
}

// The metrics server's clients are Prometheus scrapers and, with --profiling, people
// running pprof: fewer and slower than the probe servers' (healthcheck.ProbeLimits).
var metricsServerLimits = healthcheck.Limits{
	ReadHeaderTimeout: metricsReadHeaderTimeout,
	ReadTimeout:       metricsReadTimeout,
	WriteTimeout:      metricsWriteTimeout,
	IdleTimeout:       metricsIdleTimeout,
	MaxConns:          metricsMaxConns,
}

const (
	// metricsReadHeaderTimeout and metricsReadTimeout: scrapes are GETs without a
	// body, whose headers fit in one packet.
	metricsReadHeaderTimeout = 5 * time.Second
	metricsReadTimeout       = 10 * time.Second
	// metricsWriteTimeout: a scrape is written in well under a second, but
	// /debug/pprof/profile and /trace stream for ?seconds= (30 by default), and
	// net/http/pprof refuses a duration at or beyond the server's WriteTimeout.
	metricsWriteTimeout = 2 * time.Minute
	// metricsIdleTimeout outlasts the common one-minute scrape interval, so a
	// scraper keeps its connection between scrapes.
	metricsIdleTimeout = 90 * time.Second
	// metricsMaxConns: a node has a few scrapers (an HA Prometheus pair, an agent)
	// and the odd person with curl or pprof.
	metricsMaxConns = 64
)

// logVersion logs the build, as upstream does first thing, to help debugging.
func logVersion(logger klog.Logger, info apiversion.Info) {
	logger.Info("Version info", "version", info)
	logger.Info("Golang settings", "GOGC", os.Getenv("GOGC"), "GOMAXPROCS", os.Getenv("GOMAXPROCS"), "GOTRACEBACK", os.Getenv("GOTRACEBACK"))
}

// warnInert says which accepted settings change nothing in kproxy, so an operator does
// not wait for an effect that will not come.
func warnInert(ctx context.Context, cfg *config.Config) {
	logger := klog.FromContext(ctx)
	for gate, on := range cfg.FeatureGates {
		logger.Info("Warning: feature gates are accepted for compatibility but, apart from component-base's logging gates, kproxy implements the behaviour of the default gates",
			"gate", gate, "value", on)
	}
}

// routeLocalnetNeeded reports whether node ports answer on IPv4 loopback, which needs
// route_localnet=1: localhost node ports are on and nodePortAddresses, if restricted,
// includes 127.0.0.1 (upstream's rule). The node's IP does not change the answer (the
// "primary" keyword never means a loopback address), so --init-only, which runs before
// the Node object is read, decides as the daemon does. It equals RuleOptions'
// LocalhostNodePorts for IPv4, which decides whether the rules accept such packets.
func routeLocalnetNeeded(cfg *config.Config) bool {
	return cfg.LocalhostNodePorts && localhostNodePortsAllowed(nodePortPrefixes(cfg.NodePortAddresses, v1.IPv4Protocol, netip.Addr{}))
}

// ensureRouteLocalnet sets route_localnet=1 when routeLocalnetNeeded says so; both the
// IPv4 proxier's start and --init-only go through here.
func ensureRouteLocalnet(ctx context.Context, cfg *config.Config, sysctl nodesetup.Sysctl) error {
	if !routeLocalnetNeeded(cfg) {
		return nil
	}
	// Localhost node ports need the kernel to route 127/8 packets off the host; the
	// KUBE-FIREWALL rule keeps other hosts from abusing that (CVE-2020-8558).
	if err := nodesetup.EnableRouteLocalnet(ctx, sysctl); err != nil {
		return fmt.Errorf("enabling localhost node ports: %w", err)
	}
	return nil
}

// nftMaxChainsPerBatch and nftMaxRulesPerBatch split large syncs on the nft backend,
// where iptables-restore spends time proportional to (rules appended) x (chains declared)
// within one batch; see docs/performance.md for the measurements behind the values. The
// rules budget matters only for services of hundreds of endpoints: 500 chains of
// 5-endpoint services hold about 1,300 rules.
const (
	nftMaxChainsPerBatch = 500
	nftMaxRulesPerBatch  = 5000
)

// nodeSetup applies the node-wide kernel settings, as upstream does before proxying.
func nodeSetup(ctx context.Context, cfg *config.Config) error {
	logger := klog.FromContext(ctx)
	sysctl := nodesetup.NewProcSysctl(nodesetup.HostRoot)
	err := nodesetup.ApplyConntrack(ctx, sysctl, nodesetup.HostRoot, cfg.Conntrack, nodesetup.NumCPU(nodesetup.HostRoot))
	var readOnly *nodesetup.ReadOnlySysfsError
	switch {
	case errors.As(err, &readOnly):
		// Containers often get a read-only /sys; upstream warns and carries on.
		logger.Info("Warning: could not raise the conntrack hash size", "err", err.Error())
	case err != nil:
		return fmt.Errorf("applying conntrack settings: %w", err)
	}
	if err := nodesetup.SetOOMScoreAdj(nodesetup.HostRoot, cfg.OOMScoreAdj); err != nil {
		logger.V(2).Info("Could not set the OOM score", "err", err.Error())
	}
	return nil
}

// newFamilyProxier builds one family's proxier with its helpers (conntrack cleanup,
// health check node ports, flush monitor), starting the helpers' goroutines on wg.
func newFamilyProxier(ctx context.Context, cfg *config.Config, family v1.IPFamily, ipt iptables.Interface, node *v1.Node,
	nodeIP netip.Addr, health *healthcheck.ProxyHealth, events eventSink, clk clock.WithTicker, wg *sync.WaitGroup) (*proxier.Proxier, error) {
	logger := klog.FromContext(ctx).WithValues("ipFamily", family)
	opts, err := RuleOptions(cfg, family, node, nodeIP)
	if err != nil {
		return nil, err
	}
	sysctl := nodesetup.NewProcSysctl(nodesetup.HostRoot)
	if family == v1.IPv4Protocol {
		if err := ensureRouteLocalnet(ctx, cfg, sysctl); err != nil {
			return nil, err
		}
	}
	// Read after the conntrack settings were applied: a liberal kernel accepts the
	// out-of-window packets the INVALID drop is meant for.
	liberal, _ := sysctl.Get("net/netfilter/nf_conntrack_tcp_be_liberal")
	opts.DropInvalid = strings.TrimSpace(liberal) == "0" || liberal == ""

	var healthAddrs []netip.Addr
	if len(opts.NodePortAddresses) > 0 {
		healthAddrs, err = localAddrs(family)()
		if err != nil {
			return nil, err
		}
		healthAddrs = slices.DeleteFunc(healthAddrs, func(a netip.Addr) bool {
			return !slices.ContainsFunc(opts.NodePortAddresses, func(p netip.Prefix) bool { return p.Contains(a) })
		})
	}
	if ipt.Backend() == iptables.BackendNFT {
		opts.MaxChainsPerBatch, opts.MaxRulesPerBatch = nftMaxChainsPerBatch, nftMaxRulesPerBatch
	}
	serviceHealth := healthcheck.NewServiceHealthServer(family, healthAddrs, health, nil)
	p := proxier.New(ctx, proxier.Config{
		Family: family, IPTables: ipt, Rules: opts, Node: proxierNode(node, nodeIP), LocalAddrs: localAddrs(family),
		Conntrack:     conntrack.NewReconciler(family, conntrack.NewNetlink(family)),
		ServiceHealth: eventingServiceHealth{ServiceHealth: serviceHealth, events: events},
		NFAcct:        nfacct.New(),
		MinSyncPeriod: cfg.MinSyncPeriod, SyncPeriod: cfg.SyncPeriod,
		Health: health, Clock: clk,
	})
	logger.Info("Proxying", "backend", ipt.Backend(), "nodeIP", nodeIP, "localTrafficDetection", strings.Join(opts.LocalDetector.IfNotLocal, " "),
		"nodePortAddresses", opts.NodePortAddresses, "localhostNodePorts", opts.LocalhostNodePorts)
	wg.Add(3)
	go func() {
		defer wg.Done()
		iptables.Monitor(klog.NewContext(ctx, logger), ipt, iptables.CanaryChain, []string{"mangle", "nat", "filter"}, p.ForceFullSync, cfg.SyncPeriod, clk)
	}()
	go func() {
		defer wg.Done()
		// `iptables -t nat -F` leaves the canaries (chains) alone but drops this jump.
		entry := rules.ServicesEntryJump()
		iptables.MonitorRule(klog.NewContext(ctx, logger), ipt, entry.Table, entry.From, entry.RuleArgs(), p.ForceFullSync, cfg.SyncPeriod, clk)
	}()
	go func() {
		defer wg.Done()
		<-ctx.Done()
		serviceHealth.Close()
	}()
	return p, nil
}

func proxierNode(node *v1.Node, nodeIP netip.Addr) model.Node {
	n := model.Node{IP: nodeIP}
	if node != nil {
		n.Name, n.Zone = node.Name, node.Labels[v1.LabelTopologyZone]
	}
	return n
}

// localAddrs lists the addresses of this family on the node's interfaces.
func localAddrs(family v1.IPFamily) func() ([]netip.Addr, error) {
	return func() ([]netip.Addr, error) {
		addrs, err := net.InterfaceAddrs()
		if err != nil {
			return nil, fmt.Errorf("listing interface addresses: %w", err)
		}
		var out []netip.Addr
		for _, a := range addrs {
			ipnet, ok := a.(*net.IPNet)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(ipnet.IP)
			if ok && familyOf(ip.Unmap()) == family {
				out = append(out, ip.Unmap())
			}
		}
		return out, nil
	}
}

// serveUntilDone runs a server and restarts it after failures (e.g. the port is still
// held by the process we replace), as upstream does, until ctx is done. A non-nil
// hardFail (--bind-address-hard-fail) is called with the first failure instead, and ends
// the process.
func serveUntilDone(ctx context.Context, what string, hardFail func(error), serve func() error) {
	logger := klog.FromContext(ctx)
	for {
		err := serve()
		if ctx.Err() != nil {
			return
		}
		if hardFail != nil {
			hardFail(err)
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

// RuleOptions derives one family's rendering options from the configuration and this
// node. It is shared by the daemon and `kproxy render`, so both produce the same rules.
func RuleOptions(cfg *config.Config, family v1.IPFamily, node *v1.Node, nodeIP netip.Addr) (rules.Options, error) {
	opts := rules.Options{
		Family:            family,
		MasqueradeBit:     int(cfg.MasqueradeBit),
		MasqueradeAll:     cfg.MasqueradeAll,
		DropInvalid:       true,
		NodePortAddresses: nodePortPrefixes(cfg.NodePortAddresses, family, nodeIP),
	}
	opts.LocalhostNodePorts = cfg.LocalhostNodePorts && localhostNodePortsAllowed(opts.NodePortAddresses)
	switch cfg.DetectLocalMode {
	case config.DetectLocalBridgeInterface:
		opts.LocalDetector = rules.DetectByBridge(cfg.BridgeInterface)
	case config.DetectLocalInterfaceNamePrefix:
		opts.LocalDetector = rules.DetectByInterfacePrefix(cfg.InterfaceNamePrefix)
	case config.DetectLocalNodeCIDR:
		cidr, ok := podCIDRs(node)[family]
		if !ok && family == primaryOf(node, nodeIP) {
			return opts, fmt.Errorf("detectLocalMode NodeCIDR: node has no %s pod CIDR", family)
		}
		if ok {
			opts.LocalDetector = rules.DetectByCIDR(cidr)
		}
	default:
		// Upstream uses the first cluster CIDR of the family; without one, pod traffic
		// cannot be told apart and the rules that need it are left out.
		for _, c := range cfg.ClusterCIDRs {
			if familyOf(c.Addr()) == family {
				opts.LocalDetector = rules.DetectByCIDR(c)
				break
			}
		}
	}
	return opts, nil
}

// primaryOf is the family of the node's first pod CIDR, else of nodeIP.
func primaryOf(node *v1.Node, nodeIP netip.Addr) v1.IPFamily {
	if node != nil && len(node.Spec.PodCIDRs) > 0 {
		if p, err := netip.ParsePrefix(node.Spec.PodCIDRs[0]); err == nil {
			return familyOf(p.Addr())
		}
	}
	if nodeIP.IsValid() {
		return familyOf(nodeIP)
	}
	return v1.IPv4Protocol
}

// proxiedFamilies lists the families to proxy, primary first. The primary family is
// that of --bind-address when set, else of the node's first address, else of the first
// cluster CIDR, else IPv4; the other family is also proxied when the kernel has it, as
// upstream runs dual-stack whenever it can.
func proxiedFamilies(cfg *config.Config, ips map[v1.IPFamily]netip.Addr) []v1.IPFamily {
	primary := v1.IPv4Protocol
	switch {
	case cfg.BindAddress.IsValid() && !cfg.BindAddress.IsUnspecified():
		primary = familyOf(cfg.BindAddress)
	case len(ips) == 1:
		for f := range ips {
			primary = f
		}
	case len(ips) == 0 && len(cfg.ClusterCIDRs) > 0:
		primary = familyOf(cfg.ClusterCIDRs[0].Addr())
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
