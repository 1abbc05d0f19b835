package config

import (
	"net"
	"net/netip"
	"strconv"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
)

// SetDefaults applies upstream's v1alpha1 defaulting to c in place: every
// field left at its zero value (nil for pointers) gets upstream's default.
// It is idempotent.
//
// Because "zero means unset", a duration explicitly set to 0 in a file (for
// example iptables.minSyncPeriod: 0s) is defaulted too, exactly as upstream
// does; only flags can set such a field to 0, since they are applied after
// defaulting.
func SetDefaults(c *v1alpha1.KubeProxyConfiguration) {
	if c.BindAddress == "" {
		c.BindAddress = DefaultBindAddress
	}
	// The default healthz/metrics hosts follow the family of bindAddress so
	// that an IPv6-only node does not try to listen on 0.0.0.0.
	healthzHost, metricsHost := "0.0.0.0", "127.0.0.1"
	if a, err := netip.ParseAddr(c.BindAddress); err == nil && a.Is6() && !a.Is4In6() {
		healthzHost, metricsHost = "::", "::1"
	}
	if c.HealthzBindAddress == "" {
		c.HealthzBindAddress = net.JoinHostPort(healthzHost, strconv.Itoa(DefaultHealthzPort))
	} else {
		c.HealthzBindAddress = AppendPortIfNeeded(c.HealthzBindAddress, DefaultHealthzPort)
	}
	if c.MetricsBindAddress == "" {
		c.MetricsBindAddress = net.JoinHostPort(metricsHost, strconv.Itoa(DefaultMetricsPort))
	} else {
		c.MetricsBindAddress = AppendPortIfNeeded(c.MetricsBindAddress, DefaultMetricsPort)
	}

	if c.OOMScoreAdj == nil {
		c.OOMScoreAdj = ptr.To(DefaultOOMScoreAdj)
	}

	if c.IPTables.MasqueradeBit == nil {
		c.IPTables.MasqueradeBit = ptr.To(DefaultMasqueradeBit)
	}
	if c.IPTables.LocalhostNodePorts == nil {
		c.IPTables.LocalhostNodePorts = ptr.To(true)
	}
	if c.IPTables.SyncPeriod.Duration == 0 {
		c.IPTables.SyncPeriod.Duration = DefaultSyncPeriod
	}
	if c.IPTables.MinSyncPeriod.Duration == 0 {
		c.IPTables.MinSyncPeriod.Duration = DefaultMinSyncPeriod
	}

	// The ipvs and nftables sections are ignored by kproxy, but upstream
	// defaults them and --write-config-to should produce the same file.
	if c.IPVS.SyncPeriod.Duration == 0 {
		c.IPVS.SyncPeriod.Duration = DefaultSyncPeriod
	}
	if c.NFTables.MasqueradeBit == nil {
		c.NFTables.MasqueradeBit = ptr.To(DefaultMasqueradeBit)
	}
	if c.NFTables.SyncPeriod.Duration == 0 {
		c.NFTables.SyncPeriod.Duration = DefaultSyncPeriod
	}
	if c.NFTables.MinSyncPeriod.Duration == 0 {
		c.NFTables.MinSyncPeriod.Duration = DefaultMinSyncPeriod
	}

	if c.Conntrack.MaxPerCore == nil {
		c.Conntrack.MaxPerCore = ptr.To(DefaultConntrackMaxPerCore)
	}
	if c.Conntrack.Min == nil {
		c.Conntrack.Min = ptr.To(DefaultConntrackMin)
	}
	if c.Conntrack.TCPEstablishedTimeout == nil {
		c.Conntrack.TCPEstablishedTimeout = durationPtr(DefaultTCPEstablishedTimeout)
	}
	if c.Conntrack.TCPCloseWaitTimeout == nil {
		c.Conntrack.TCPCloseWaitTimeout = durationPtr(DefaultTCPCloseWaitTimeout)
	}

	if c.ConfigSyncPeriod.Duration == 0 {
		c.ConfigSyncPeriod.Duration = DefaultConfigSyncPeriod
	}

	if c.ClientConnection.ContentType == "" {
		c.ClientConnection.ContentType = DefaultContentType
	}
	if c.ClientConnection.QPS == 0 {
		c.ClientConnection.QPS = DefaultQPS
	}
	if c.ClientConnection.Burst == 0 {
		c.ClientConnection.Burst = DefaultBurst
	}

	if c.FeatureGates == nil {
		c.FeatureGates = map[string]bool{}
	}

	logsapi.SetRecommendedLoggingConfiguration(&c.Logging)
}

// AppendPortIfNeeded returns addr with ":port" appended when addr is a bare
// IP address. Anything else (already host:port, or garbage) is returned
// unchanged so that validation, not defaulting, reports the problem.
func AppendPortIfNeeded(addr string, port int32) string {
	if _, _, err := net.SplitHostPort(addr); err == nil {
		return addr
	}
	if _, err := netip.ParseAddr(addr); err != nil {
		return addr
	}
	return net.JoinHostPort(addr, strconv.Itoa(int(port)))
}

// durationPtr returns a pointer to a metav1.Duration holding d.
func durationPtr(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }
