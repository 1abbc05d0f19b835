package config

import (
	"net/netip"
	"time"

	logsapi "k8s.io/component-base/logs/api/v1"
)

// Proxy modes. kproxy implements only iptables; the empty string is accepted
// because upstream treats it as "the platform default", which is iptables.
const (
	// ModeIPTables is the only proxy mode kproxy implements.
	ModeIPTables = "iptables"
)

// Local traffic detection modes (v1alpha1 detectLocalMode).
const (
	// DetectLocalClusterCIDR treats traffic from the cluster CIDR(s) as local.
	// It is the default when detectLocalMode is empty.
	DetectLocalClusterCIDR = "ClusterCIDR"
	// DetectLocalNodeCIDR treats traffic from the node's spec.podCIDRs as local.
	DetectLocalNodeCIDR = "NodeCIDR"
	// DetectLocalBridgeInterface treats traffic arriving on one bridge as local.
	DetectLocalBridgeInterface = "BridgeInterface"
	// DetectLocalInterfaceNamePrefix treats traffic arriving on interfaces with
	// a name prefix as local.
	DetectLocalInterfaceNamePrefix = "InterfaceNamePrefix"
)

// nodePortAddresses keywords, kept verbatim in Config.NodePortAddresses; they
// are expanded at runtime once the node's IPs are known.
const (
	// NodePortAddressesPrimary means the node's primary IP of each family.
	NodePortAddressesPrimary = "primary"
	// NodePortAddressesLocalhost means 127.0.0.0/8 and ::1/128.
	NodePortAddressesLocalhost = "localhost"
	// NodePortAddressesAll means every local address (the same as an empty list).
	NodePortAddressesAll = "all"
)

// iptables backends (kproxy-only setting, flag --iptables-backend).
const (
	// IPTablesBackendAuto picks legacy or nft by looking at which one already
	// holds rules, the way the iptables-wrapper scripts in kube-proxy images do.
	IPTablesBackendAuto = "auto"
	// IPTablesBackendLegacy forces iptables-legacy.
	IPTablesBackendLegacy = "legacy"
	// IPTablesBackendNFT forces iptables-nft.
	IPTablesBackendNFT = "nft"
)

// Upstream defaults (v1alpha1 defaulting) used by SetDefaults and, for pointer
// fields a caller left nil, by FromV1Alpha1.
const (
	DefaultBindAddress           = "0.0.0.0"
	DefaultHealthzPort           = 10256
	DefaultMetricsPort           = 10249
	DefaultMasqueradeBit         = int32(14)
	DefaultSyncPeriod            = 30 * time.Second
	DefaultMinSyncPeriod         = 1 * time.Second
	DefaultConfigSyncPeriod      = 15 * time.Minute
	DefaultQPS                   = float32(5)
	DefaultBurst                 = int32(10)
	DefaultContentType           = "application/vnd.kubernetes.protobuf"
	DefaultOOMScoreAdj           = int32(-999)
	DefaultConntrackMaxPerCore   = int32(32 * 1024)
	DefaultConntrackMin          = int32(128 * 1024)
	DefaultTCPEstablishedTimeout = 24 * time.Hour
	DefaultTCPCloseWaitTimeout   = 1 * time.Hour
)

// Config is kproxy's effective, validated configuration. Values are final:
// defaults are applied, keywords validated, CIDRs parsed. Consumers must not
// need to re-validate anything here.
type Config struct {
	// ConfigFile is the --config file the settings came from ("" for flags only). Like
	// upstream, the process exits when it changes, so the DaemonSet restarts it with the
	// new settings.
	ConfigFile string
	// HostnameOverride is the node name to use, trimmed and lowercased.
	// Empty means "use os.Hostname()" (resolved at startup, not here, so that
	// this package stays pure).
	HostnameOverride string

	// Kubeconfig is the path to a kubeconfig file; with Master also empty the
	// in-cluster configuration is used.
	Kubeconfig string
	// Master overrides the API server URL from the kubeconfig. It comes only
	// from the --master flag; the config file has no such field.
	Master string
	// QPS and Burst rate-limit requests to the API server.
	QPS   float32
	Burst int32
	// ContentType is the content type of requests sent to the API server.
	ContentType string
	// AcceptContentTypes is the Accept header sent to the API server ("" means
	// client-go's default).
	AcceptContentTypes string

	// Mode is always ModeIPTables; an empty mode defaults to it.
	Mode string
	// ModeDefaulted is set when the configuration left the mode empty. Upstream
	// then warns that its default becomes nftables in Kubernetes 1.40, which
	// matters here too: switching back to kube-proxy would change modes.
	ModeDefaulted bool

	// DetectLocalMode is one of the DetectLocal* constants (never empty).
	DetectLocalMode string
	// ClusterCIDRs holds at most one prefix per IP family, masked, in the
	// order given. Used for local detection in ClusterCIDR mode.
	ClusterCIDRs []netip.Prefix
	// BridgeInterface is set (non-empty) when DetectLocalMode is BridgeInterface.
	BridgeInterface string
	// InterfaceNamePrefix is set (non-empty) when DetectLocalMode is
	// InterfaceNamePrefix.
	InterfaceNamePrefix string

	// MasqueradeBit is the fwmark bit (0..31) marking packets that need SNAT.
	MasqueradeBit int32
	// MasqueradeAll SNATs all traffic sent to Service cluster IPs.
	MasqueradeAll bool
	// LocalhostNodePorts allows NodePorts on 127.0.0.0/8 (IPv4 only). The
	// runtime still turns it off when nodePortAddresses excludes loopback.
	LocalhostNodePorts bool

	// SyncPeriod is the retry / housekeeping interval (> 0, >= MinSyncPeriod).
	// Upstream no longer resyncs on this period; see the behaviour notes.
	SyncPeriod time.Duration
	// MinSyncPeriod is the minimum interval between rule syncs (>= 0).
	MinSyncPeriod time.Duration
	// ConfigSyncPeriod is the informer resync period (> 0).
	ConfigSyncPeriod time.Duration

	// NodePortAddresses holds CIDRs and/or the keywords primary, localhost
	// and all, exactly as given (validated). Empty means all local addresses.
	NodePortAddresses []string

	// BindAddress overrides the node's primary IP (and so the primary IP
	// family). The unspecified address means "detect from the Node object".
	BindAddress netip.Addr
	// BindAddressHardFail makes failure to bind the healthz or metrics
	// server fatal.
	BindAddressHardFail bool
	// HealthzBindAddress and MetricsBindAddress are host:port; "" disables the
	// server.
	HealthzBindAddress string
	MetricsBindAddress string
	// EnableProfiling serves /debug/pprof on the metrics server.
	EnableProfiling bool
	// ShowHiddenMetricsForVersion re-enables metrics hidden since that
	// "<major>.<minor>" version; "" shows none.
	ShowHiddenMetricsForVersion string

	// OOMScoreAdj is written to /proc/self/oom_score_adj (-1000..1000).
	OOMScoreAdj int32
	// Conntrack holds the conntrack sysctl settings.
	Conntrack ConntrackConfig

	// FeatureGates holds the feature gates as given; never nil.
	FeatureGates map[string]bool

	// Logging holds the effective logging settings, validated; applying them
	// is left to the caller because it changes process-wide state.
	Logging logsapi.LoggingConfiguration

	// IPTablesBackend is one of the IPTablesBackend* constants. kproxy-only:
	// it is not part of KubeProxyConfiguration and comes from a flag.
	IPTablesBackend string
	// DebugEndpoint serves the rules each family should hold on the metrics
	// address (kproxy-only, from a flag).
	DebugEndpoint bool
}

// ConntrackConfig holds the conntrack settings of KubeProxyConfiguration
// (conntrack.*), applied at startup by nodesetup.ApplyConntrack. A zero field
// leaves its kernel setting alone.
type ConntrackConfig struct {
	// MaxPerCore scales nf_conntrack_max with the number of CPUs; 0 leaves
	// nf_conntrack_max and the conntrack hash size alone.
	MaxPerCore int32
	// Min is the lowest nf_conntrack_max to ask for, whatever MaxPerCore
	// gives.
	Min int32
	// TCPEstablishedTimeout is nf_conntrack_tcp_timeout_established.
	TCPEstablishedTimeout time.Duration
	// TCPCloseWaitTimeout is nf_conntrack_tcp_timeout_close_wait.
	TCPCloseWaitTimeout time.Duration
	// TCPBeLiberal sets nf_conntrack_tcp_be_liberal to 1 when true; false
	// leaves it alone (it is never set back to 0).
	TCPBeLiberal bool
	// UDPTimeout is nf_conntrack_udp_timeout.
	UDPTimeout time.Duration
	// UDPStreamTimeout is nf_conntrack_udp_timeout_stream.
	UDPStreamTimeout time.Duration
}
