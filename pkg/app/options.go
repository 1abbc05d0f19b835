package app

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/util/validation/field"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	"k8s.io/kube-proxy/config/v1alpha1"

	"github.com/kproxy-dev/kproxy/pkg/config"
	"github.com/kproxy-dev/kproxy/pkg/debugstate"
)

// Options holds kube-proxy's command line. Flag values are bound straight
// into a defaulted KubeProxyConfiguration, so that without --config the flags
// (with upstream's defaults) are the configuration, exactly as upstream.
//
// Precedence, as upstream (behaviour §9.1):
//   - without --config, every flag applies;
//   - with --config, the file replaces all flag-bound settings; only
//     --hostname-override, --master, the logging flags (-v, --vmodule,
//     --logging-format, ...: those set override the file's logging section)
//     and kproxy's own --iptables-backend still apply. kproxy additionally
//     logs a warning for each ignored flag the user set, since silently
//     dropping them is a common source of "my flag does nothing" reports.
type Options struct {
	// ConfigFile is --config: a KubeProxyConfiguration file (YAML or JSON).
	ConfigFile string
	// WriteConfigTo is --write-config-to: the effective configuration is
	// written there as v1alpha1 YAML (see WriteConfigFile) and the process
	// exits instead of proxying.
	WriteConfigTo string
	// Cleanup is --cleanup: remove kproxy's rules and exit.
	Cleanup bool
	// InitOnly is --init-only: do the privileged setup (sysctls) and exit,
	// so the long-running process can run with only CAP_NET_ADMIN. Run must
	// stop right after that setup when it is set.
	InitOnly bool

	// flagConfig receives the config-file-equivalent flags. It is defaulted
	// before the flags are registered so that the flags' defaults are
	// upstream's defaults.
	flagConfig *v1alpha1.KubeProxyConfiguration

	// Flags that are not fields of the file, or that override it.
	master           string
	hostnameOverride string
	iptablesBackend  string
	debugEndpoint    bool
	healthzPort      int32 // deprecated --healthz-port
	metricsPort      int32 // deprecated --metrics-port

	// loggingFlags are the names of component-base's logging flags, which
	// AddFlags binds to flagConfig.Logging and which apply even with --config.
	loggingFlags map[string]bool
	// fileOnlyFlags are the flags that --config makes ignored, sorted.
	fileOnlyFlags []string

	// effective is the configuration Complete settled on, for WriteConfigFile.
	effective *v1alpha1.KubeProxyConfiguration
	// loadedConfig is the --config file's content as Complete read it: the config-file
	// watcher's baseline, so that an edit made after loading still counts as a change.
	loadedConfig []byte
}

// NewOptions returns Options whose flag defaults are upstream's defaults.
func NewOptions() *Options {
	c := &v1alpha1.KubeProxyConfiguration{}
	config.SetDefaults(c)
	return &Options{
		flagConfig:      c,
		iptablesBackend: config.IPTablesBackendAuto,
		debugEndpoint:   true,
		healthzPort:     config.DefaultHealthzPort,
		metricsPort:     config.DefaultMetricsPort,
	}
}

// neverIgnoredFlags apply even with --config; every other flag registered by
// AddFlags is ignored when a config file is given, as upstream does.
var neverIgnoredFlags = map[string]bool{
	"config":            true,
	"write-config-to":   true,
	"cleanup":           true,
	"init-only":         true,
	"hostname-override": true,
	"master":            true,
	"iptables-backend":  true, // not a file field: the flag is the only way to set it
	"debug-endpoint":    true, // likewise
}

// AddFlags registers kube-proxy's flags, with upstream's names and defaults,
// plus kproxy's --iptables-backend, on fs. It also makes fs treat '_' in flag
// names as '-', as upstream does, so --iptables_sync_period still works.
func (o *Options) AddFlags(fs *pflag.FlagSet) {
	fs.SetNormalizeFunc(wordSepNormalize)
	c := o.flagConfig
	preexisting := map[string]bool{}
	fs.VisitAll(func(f *pflag.Flag) { preexisting[f.Name] = true })

	fs.StringVar(&o.ConfigFile, "config", o.ConfigFile, "The path to the configuration file (KubeProxyConfiguration, YAML or JSON). When set, most other flags are ignored.")
	fs.StringVar(&o.WriteConfigTo, "write-config-to", o.WriteConfigTo, "If set, write the effective configuration to this file and exit.")
	fs.BoolVar(&o.Cleanup, "cleanup", o.Cleanup, "If true, remove the iptables rules kproxy created and exit.")
	fs.BoolVar(&o.InitOnly, "init-only", o.InitOnly, "If true, perform the initialization steps that need full root privileges (sysctls), then exit.")
	fs.Var(&featureGatesValue{m: &c.FeatureGates}, "feature-gates", "A set of key=value pairs for alpha/experimental features (kept for compatibility; unknown names are accepted).")

	// API server connection.
	fs.StringVar(&c.ClientConnection.Kubeconfig, "kubeconfig", c.ClientConnection.Kubeconfig, "Path to a kubeconfig file with authorization information (the server can be overridden by --master).")
	fs.StringVar(&o.master, "master", o.master, "The address of the Kubernetes API server (overrides any value in kubeconfig). Applies even with --config.")
	fs.StringVar(&c.ClientConnection.ContentType, "kube-api-content-type", c.ClientConnection.ContentType, "Content type of requests sent to the API server.")
	fs.Float32Var(&c.ClientConnection.QPS, "kube-api-qps", c.ClientConnection.QPS, "QPS to use while talking with the API server.")
	fs.Int32Var(&c.ClientConnection.Burst, "kube-api-burst", c.ClientConnection.Burst, "Burst to use while talking with the API server.")

	// Node identity and servers.
	fs.StringVar(&o.hostnameOverride, "hostname-override", o.hostnameOverride, "If non-empty, used as the name of this node instead of its hostname. Applies even with --config (overrides the file).")
	fs.Var(ipValue{p: &c.BindAddress}, "bind-address", "Overrides the node's primary IP (and so its primary IP family). No socket is bound to it.")
	fs.Var(ipPortValue{p: &c.HealthzBindAddress}, "healthz-bind-address", `IP or IP:port for the health check server (default port 10256); "" disables it.`)
	fs.Var(ipPortValue{p: &c.MetricsBindAddress}, "metrics-bind-address", `IP or IP:port for the metrics server (default port 10249); "" disables it.`)
	fs.BoolVar(&c.BindAddressHardFail, "bind-address-hard-fail", c.BindAddressHardFail, "If true, failing to bind the health check or metrics server is fatal.")
	fs.BoolVar(&c.EnableProfiling, "profiling", c.EnableProfiling, "If true, serve /debug/pprof on the metrics server.")
	fs.StringVar(&c.ShowHiddenMetricsForVersion, "show-hidden-metrics-for-version", c.ShowHiddenMetricsForVersion, `The previous minor version ("<major>.<minor>") whose hidden metrics should be shown.`)
	fs.Int32Var(&o.healthzPort, "healthz-port", o.healthzPort, "The port of the health check server, used when --healthz-bind-address has no port. 0 disables it.")
	_ = fs.MarkDeprecated("healthz-port", "use --healthz-bind-address instead")
	fs.Int32Var(&o.metricsPort, "metrics-port", o.metricsPort, "The port of the metrics server, used when --metrics-bind-address has no port. 0 disables it.")
	_ = fs.MarkDeprecated("metrics-port", "use --metrics-bind-address instead")

	// Proxying.
	fs.StringVar((*string)(&c.Mode), "proxy-mode", string(c.Mode), `Which proxy mode to use. kproxy implements only "iptables" (also the default).`)
	fs.Int32Var(c.IPTables.MasqueradeBit, "iptables-masquerade-bit", *c.IPTables.MasqueradeBit, "The bit of the fwmark space that marks packets needing SNAT. Must be within [0, 31].")
	fs.BoolVar(&c.IPTables.MasqueradeAll, "masquerade-all", c.IPTables.MasqueradeAll, "SNAT all traffic sent via Service cluster IPs.")
	fs.BoolVar(c.IPTables.LocalhostNodePorts, "iptables-localhost-nodeports", *c.IPTables.LocalhostNodePorts, "If false, NodePort services cannot be reached via 127.0.0.1 (IPv4 only).")
	fs.DurationVar(&c.IPTables.SyncPeriod.Duration, "iptables-sync-period", c.IPTables.SyncPeriod.Duration, "Interval (e.g. '5s', '1m') of retries and housekeeping. Must be greater than 0.")
	fs.DurationVar(&c.IPTables.MinSyncPeriod.Duration, "iptables-min-sync-period", c.IPTables.MinSyncPeriod.Duration, "Minimum interval between iptables syncs (e.g. '5s', '1m'). 0 syncs on every change.")
	fs.Var(enumValue{p: &o.iptablesBackend, allowed: []string{config.IPTablesBackendAuto, config.IPTablesBackendLegacy, config.IPTablesBackendNFT}},
		"iptables-backend", "kproxy only: which iptables to drive: auto (detect which backend holds rules), legacy or nft. Applies even with --config.")
	fs.BoolVar(&o.debugEndpoint, "debug-endpoint", o.debugEndpoint,
		"kproxy only: serve "+debugstate.Path+" on the metrics address: per IP family, the rules the node should hold, for `kproxy diagnose`. Applies even with --config.")
	fs.StringSliceVar(&c.NodePortAddresses, "nodeport-addresses", c.NodePortAddresses, "CIDRs and/or the keywords primary, localhost, all: the node IPs on which NodePorts are accepted. Empty means all local IPs.")
	fs.DurationVar(&c.ConfigSyncPeriod.Duration, "config-sync-period", c.ConfigSyncPeriod.Duration, "How often configuration from the API server is refreshed. Must be greater than 0.")

	// Local traffic detection.
	fs.StringVar(&c.ClusterCIDR, "cluster-cidr", c.ClusterCIDR, "The pod CIDR range(s) of the cluster, comma-separated, at most one per IP family. Used when --detect-local-mode is ClusterCIDR.")
	fs.StringVar((*string)(&c.DetectLocalMode), "detect-local-mode", string(c.DetectLocalMode), "How to detect local traffic: ClusterCIDR (default), NodeCIDR, BridgeInterface or InterfaceNamePrefix.")
	fs.StringVar(&c.DetectLocal.BridgeInterface, "pod-bridge-interface", c.DetectLocal.BridgeInterface, "With --detect-local-mode=BridgeInterface, the bridge that local pod traffic arrives on.")
	fs.StringVar(&c.DetectLocal.InterfaceNamePrefix, "pod-interface-name-prefix", c.DetectLocal.InterfaceNamePrefix, "With --detect-local-mode=InterfaceNamePrefix, the name prefix of local pods' interfaces.")

	// Process and kernel settings.
	fs.Int32Var(c.OOMScoreAdj, "oom-score-adj", *c.OOMScoreAdj, "The oom_score_adj of the process. Must be within [-1000, 1000].")
	fs.Int32Var(c.Conntrack.MaxPerCore, "conntrack-max-per-core", *c.Conntrack.MaxPerCore, "Maximum number of NAT connections to track per CPU core (0 leaves the limit alone and ignores --conntrack-min).")
	fs.Int32Var(c.Conntrack.Min, "conntrack-min", *c.Conntrack.Min, "Minimum number of conntrack entries, regardless of --conntrack-max-per-core.")
	fs.DurationVar(&c.Conntrack.TCPEstablishedTimeout.Duration, "conntrack-tcp-timeout-established", c.Conntrack.TCPEstablishedTimeout.Duration, "Idle timeout for established TCP connections (0 leaves it alone).")
	fs.DurationVar(&c.Conntrack.TCPCloseWaitTimeout.Duration, "conntrack-tcp-timeout-close-wait", c.Conntrack.TCPCloseWaitTimeout.Duration, "NAT timeout for TCP connections in CLOSE_WAIT (0 leaves it alone).")
	fs.BoolVar(&c.Conntrack.TCPBeLiberal, "conntrack-tcp-be-liberal", c.Conntrack.TCPBeLiberal, "If true, set nf_conntrack_tcp_be_liberal to 1.")
	fs.DurationVar(&c.Conntrack.UDPTimeout.Duration, "conntrack-udp-timeout", c.Conntrack.UDPTimeout.Duration, "Idle timeout for UNREPLIED UDP connections (0 leaves it alone).")
	fs.DurationVar(&c.Conntrack.UDPStreamTimeout.Duration, "conntrack-udp-timeout-stream", c.Conntrack.UDPStreamTimeout.Duration, "Idle timeout for ASSURED UDP connections (0 leaves it alone).")

	// IPVS flags are accepted so existing command lines keep working; like
	// upstream in iptables mode, their values are never used.
	const ipvsIgnored = " Ignored: kproxy implements only the iptables mode."
	fs.DurationVar(&c.IPVS.SyncPeriod.Duration, "ipvs-sync-period", c.IPVS.SyncPeriod.Duration, "IPVS sync period."+ipvsIgnored)
	fs.DurationVar(&c.IPVS.MinSyncPeriod.Duration, "ipvs-min-sync-period", c.IPVS.MinSyncPeriod.Duration, "IPVS minimum sync period."+ipvsIgnored)
	fs.StringVar(&c.IPVS.Scheduler, "ipvs-scheduler", c.IPVS.Scheduler, "IPVS scheduler."+ipvsIgnored)
	fs.StringSliceVar(&c.IPVS.ExcludeCIDRs, "ipvs-exclude-cidrs", c.IPVS.ExcludeCIDRs, "CIDRs IPVS cleanup must not touch."+ipvsIgnored)
	fs.BoolVar(&c.IPVS.StrictARP, "ipvs-strict-arp", c.IPVS.StrictARP, "IPVS strict ARP."+ipvsIgnored)
	fs.DurationVar(&c.IPVS.TCPTimeout.Duration, "ipvs-tcp-timeout", c.IPVS.TCPTimeout.Duration, "IPVS TCP idle timeout."+ipvsIgnored)
	fs.DurationVar(&c.IPVS.TCPFinTimeout.Duration, "ipvs-tcpfin-timeout", c.IPVS.TCPFinTimeout.Duration, "IPVS TCP FIN timeout."+ipvsIgnored)
	fs.DurationVar(&c.IPVS.UDPTimeout.Duration, "ipvs-udp-timeout", c.IPVS.UDPTimeout.Duration, "IPVS UDP timeout."+ipvsIgnored)

	// Logging: component-base's flags, as upstream registers them, bound to the
	// flag config's logging section.
	beforeLogging := map[string]bool{}
	fs.VisitAll(func(f *pflag.Flag) { beforeLogging[f.Name] = true })
	logsapi.AddFlags(&c.Logging, fs)
	o.loggingFlags = map[string]bool{}
	fs.VisitAll(func(f *pflag.Flag) {
		if !beforeLogging[f.Name] {
			o.loggingFlags[f.Name] = true
		}
	})

	o.fileOnlyFlags = o.fileOnlyFlags[:0]
	fs.VisitAll(func(f *pflag.Flag) {
		if !preexisting[f.Name] && !o.appliesWithConfig(f.Name) {
			o.fileOnlyFlags = append(o.fileOnlyFlags, f.Name)
		}
	})
	sort.Strings(o.fileOnlyFlags) // VisitAll's order depends on fs.SortFlags
}

// appliesWithConfig reports whether flag name still applies when --config is
// given.
func (o *Options) appliesWithConfig(name string) bool {
	return neverIgnoredFlags[name] || o.loggingFlags[name]
}

// Complete resolves the flags and, if given, the --config file into kproxy's
// validated configuration, following upstream's precedence (see Options).
// fs must be the flag set AddFlags registered on, after parsing: it tells
// which flags the user set explicitly. Warnings (ignored flags, unknown
// fields in the file) are logged with ctx's logger.
//
// The error, if any, is a single line naming the offending field (and the
// flag it came from, when it came from one); validation failures are a
// *config.ValidationError. For example
//
//	invalid configuration: iptables.masqueradeBit: Invalid value: 32: must be between 0 and 31 (flag --iptables-masquerade-bit)
func (o *Options) Complete(ctx context.Context, fs *pflag.FlagSet) (*config.Config, error) {
	var v1 *v1alpha1.KubeProxyConfiguration
	fromFile := o.ConfigFile != ""
	if fromFile {
		// Read here rather than with config.LoadFile: the watcher must compare against
		// these very bytes, not a second read that could already see a newer file.
		data, err := os.ReadFile(o.ConfigFile)
		if err != nil {
			return nil, fmt.Errorf("loading --config: reading config file: %w", err)
		}
		loaded, warning, err := config.Decode(data)
		if err != nil {
			return nil, fmt.Errorf("loading --config: config file %s: %w", o.ConfigFile, err)
		}
		if warning != nil {
			// Upstream's message, so that searches for it find kproxy's too; the file
			// is used without the offending fields, as upstream uses it.
			klog.FromContext(ctx).Info("Using lenient decoding as strict decoding failed", "file", o.ConfigFile, "err", warning)
		}
		if err := o.copyLoggingFlags(fs, &loaded.Logging); err != nil {
			return nil, err
		}
		o.loadedConfig = data
		for _, name := range o.ignoredFlags(fs) {
			// klog has no structured call at warning severity; the W level matters here
			// because operators grep for it after a config change.
			klog.Warningf("Ignoring flag --%s because --config is set; set the corresponding field in %s instead", name, o.ConfigFile)
		}
		v1 = loaded
	} else {
		v1 = o.flagConfig.DeepCopy()
		// Upstream applies the deprecated port flags only without a file:
		// a bare IP gets the port, and port 0 disables the server.
		v1.HealthzBindAddress = addressWithDeprecatedPort(v1.HealthzBindAddress, o.healthzPort)
		v1.MetricsBindAddress = addressWithDeprecatedPort(v1.MetricsBindAddress, o.metricsPort)
	}
	if o.hostnameOverride != "" {
		v1.HostnameOverride = o.hostnameOverride
	}

	cfg, errs := config.FromV1Alpha1(v1)
	errs = append(errs, config.ValidateIPTablesBackend(o.iptablesBackend, field.NewPath("iptablesBackend"))...)
	if len(errs) > 0 {
		o.annotateWithFlags(errs, fs, fromFile)
		return nil, &config.ValidationError{Errors: errs}
	}
	cfg.Master = o.master
	cfg.IPTablesBackend = o.iptablesBackend
	cfg.DebugEndpoint = o.debugEndpoint
	cfg.ConfigFile = o.ConfigFile
	o.effective = v1
	return cfg, nil
}

// WriteConfigFile writes the configuration settled on by Complete to
// WriteConfigTo as a v1alpha1 YAML document (kproxy's --iptables-backend and
// --master are not part of that format and are not written).
func (o *Options) WriteConfigFile() error {
	if o.effective == nil {
		return fmt.Errorf("writing --write-config-to: Complete has not succeeded")
	}
	data, err := config.Marshal(o.effective)
	if err != nil {
		return fmt.Errorf("writing --write-config-to: %w", err)
	}
	if err := os.WriteFile(o.WriteConfigTo, data, 0o644); err != nil {
		return fmt.Errorf("writing --write-config-to: %w", err)
	}
	klog.InfoS("Wrote configuration", "file", o.WriteConfigTo)
	return nil
}

// ignoredFlags returns the flags the user set that --config makes ignored.
func (o *Options) ignoredFlags(fs *pflag.FlagSet) []string {
	var out []string
	for _, name := range o.fileOnlyFlags {
		if fs.Changed(name) {
			out = append(out, name)
		}
	}
	return out
}

// copyLoggingFlags copies the logging flags the user set into to, a config
// file's logging section, as upstream does: the command line wins, and
// --vmodule's patterns go before the file's because klog uses the first
// pattern that matches. The values are copied through the flags' own string
// form, so every flag component-base adds is handled the same way.
func (o *Options) copyLoggingFlags(fs *pflag.FlagSet, to *logsapi.LoggingConfiguration) error {
	fileVModule := to.VModule
	to.VModule = nil
	var bound pflag.FlagSet
	logsapi.AddFlags(to, &bound)
	for name := range o.loggingFlags {
		from := fs.Lookup(name)
		if from == nil || !from.Changed {
			continue
		}
		dst := bound.Lookup(name)
		if dst == nil {
			return fmt.Errorf("logging flag --%s has no counterpart in the logging configuration", name)
		}
		if err := dst.Value.Set(from.Value.String()); err != nil {
			return fmt.Errorf("applying --%s over the config file: %w", name, err)
		}
	}
	to.VModule = append(to.VModule, fileVModule...)
	return nil
}

// fieldFlags maps a config field path to the flag that sets it, so errors
// about flag-provided values can name the flag the user actually typed.
var fieldFlags = map[string]string{
	"hostnameOverride":                    "hostname-override",
	"clientConnection.qps":                "kube-api-qps",
	"clientConnection.burst":              "kube-api-burst",
	"mode":                                "proxy-mode",
	"iptables.masqueradeBit":              "iptables-masquerade-bit",
	"iptables.syncPeriod":                 "iptables-sync-period",
	"iptables.minSyncPeriod":              "iptables-min-sync-period",
	"configSyncPeriod":                    "config-sync-period",
	"clusterCIDR":                         "cluster-cidr",
	"detectLocalMode":                     "detect-local-mode",
	"detectLocal.bridgeInterface":         "pod-bridge-interface",
	"detectLocal.interfaceNamePrefix":     "pod-interface-name-prefix",
	"nodePortAddresses":                   "nodeport-addresses",
	"bindAddress":                         "bind-address",
	"healthzBindAddress":                  "healthz-bind-address",
	"metricsBindAddress":                  "metrics-bind-address",
	"showHiddenMetricsForVersion":         "show-hidden-metrics-for-version",
	"oomScoreAdj":                         "oom-score-adj",
	"conntrack.maxPerCore":                "conntrack-max-per-core",
	"conntrack.min":                       "conntrack-min",
	"conntrack.tcpEstablishedTimeout":     "conntrack-tcp-timeout-established",
	"conntrack.tcpCloseWaitTimeout":       "conntrack-tcp-timeout-close-wait",
	"conntrack.udpTimeout":                "conntrack-udp-timeout",
	"conntrack.udpStreamTimeout":          "conntrack-udp-timeout-stream",
	"featureGates":                        "feature-gates",
	"iptablesBackend":                     "iptables-backend",
	"logging.format":                      "logging-format",
	"logging.flushFrequency":              "log-flush-frequency",
	"logging.verbosity":                   "v",
	"logging.vmodule":                     "vmodule",
	"logging.options.text.splitStream":    "log-text-split-stream",
	"logging.options.text.infoBufferSize": "log-text-info-buffer-size",
	"logging.options.json.splitStream":    "log-json-split-stream",
	"logging.options.json.infoBufferSize": "log-json-info-buffer-size",
}

// annotateWithFlags appends "(flag --name)" to errors whose value came from
// a flag: all of them without --config, only the overriding flags with it.
func (o *Options) annotateWithFlags(errs field.ErrorList, fs *pflag.FlagSet, fromFile bool) {
	for _, e := range errs {
		path := e.Field
		if i := strings.IndexByte(path, '['); i >= 0 {
			path = path[:i] // nodePortAddresses[1] -> nodePortAddresses
		}
		name, ok := fieldFlags[path]
		if !ok {
			continue
		}
		if fromFile && !(o.appliesWithConfig(name) && fs.Changed(name)) {
			continue
		}
		e.Detail += " (flag --" + name + ")"
	}
}

// addressWithDeprecatedPort applies --healthz-port / --metrics-port.
func addressWithDeprecatedPort(addr string, port int32) string {
	if port == 0 {
		return ""
	}
	return config.AppendPortIfNeeded(addr, port)
}

// wordSepNormalize lets users spell flags with '_' as well as '-', as
// upstream's command line does.
func wordSepNormalize(_ *pflag.FlagSet, name string) pflag.NormalizedName {
	return pflag.NormalizedName(strings.ReplaceAll(name, "_", "-"))
}

// ipValue is a flag holding an IP address; a typo fails at parse time with
// the flag's name rather than later.
type ipValue struct{ p *string }

func (v ipValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v ipValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if _, err := netip.ParseAddr(s); err != nil {
		return fmt.Errorf("must be an IP address: %w", err)
	}
	*v.p = s
	return nil
}

func (v ipValue) Type() string { return "ip" }

// ipPortValue is a flag holding "", an IP, or IP:port.
type ipPortValue struct{ p *string }

func (v ipPortValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v ipPortValue) Set(s string) error {
	s = strings.TrimSpace(s)
	if s == "" {
		*v.p = ""
		return nil
	}
	host := s
	if _, err := netip.ParseAddr(s); err != nil {
		h, port, err := net.SplitHostPort(s)
		if err != nil {
			return fmt.Errorf("must be IP or IP:port: %w", err)
		}
		if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
			return fmt.Errorf("port %q must be between 1 and 65535", port)
		}
		host = h
	}
	if _, err := netip.ParseAddr(host); err != nil {
		return fmt.Errorf("host must be an IP address: %w", err)
	}
	*v.p = s
	return nil
}

func (v ipPortValue) Type() string { return "ipport" }

// enumValue is a string flag restricted to a fixed set of values.
type enumValue struct {
	p       *string
	allowed []string
}

func (v enumValue) String() string {
	if v.p == nil {
		return ""
	}
	return *v.p
}

func (v enumValue) Set(s string) error {
	for _, a := range v.allowed {
		if s == a {
			*v.p = s
			return nil
		}
	}
	return fmt.Errorf("must be one of %s", strings.Join(v.allowed, ", "))
}

func (v enumValue) Type() string { return "string" }

// featureGatesValue parses --feature-gates=A=true,B=false. The first use
// replaces the default (empty) map; repeated uses merge, like upstream.
type featureGatesValue struct {
	m   *map[string]bool
	set bool
}

func (v *featureGatesValue) String() string {
	if v.m == nil {
		return ""
	}
	parts := make([]string, 0, len(*v.m))
	for k, b := range *v.m {
		parts = append(parts, k+"="+strconv.FormatBool(b))
	}
	sort.Strings(parts)
	return strings.Join(parts, ",")
}

func (v *featureGatesValue) Set(s string) error {
	if !v.set || *v.m == nil {
		*v.m = map[string]bool{}
		v.set = true
	}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		k, val, ok := strings.Cut(part, "=")
		if !ok {
			return fmt.Errorf("missing '=' in %q (want Name=true|false)", part)
		}
		b, err := strconv.ParseBool(strings.TrimSpace(val))
		if err != nil {
			return fmt.Errorf("invalid value of %s: %w", strings.TrimSpace(k), err)
		}
		(*v.m)[strings.TrimSpace(k)] = b
	}
	return nil
}

func (v *featureGatesValue) Type() string { return "mapStringBool" }
