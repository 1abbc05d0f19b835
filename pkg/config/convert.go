package config

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	"k8s.io/kube-proxy/config/v1alpha1"
)

// FromV1Alpha1 converts a KubeProxyConfiguration into kproxy's Config and
// validates it. The input should already have been through SetDefaults (the
// decoder and the flag defaults do that); pointer fields left nil still get
// upstream's defaults, but zero durations are treated as set, so that a flag
// like --iptables-min-sync-period=0 keeps its meaning.
//
// Every problem is reported, not just the first, as a field error whose path
// is spelled like the config file's field (for example
// iptables.masqueradeBit). On any error the returned Config is nil: callers
// never see a half-valid configuration.
//
// IPTablesBackend is set to IPTablesBackendAuto; it is not part of the file
// format, and the command line layer overrides it (see ValidateIPTablesBackend).
// Master is left empty for the same reason.
func FromV1Alpha1(in *v1alpha1.KubeProxyConfiguration) (*Config, field.ErrorList) {
	if in == nil {
		return nil, field.ErrorList{field.Required(field.NewPath("KubeProxyConfiguration"), "no configuration given")}
	}
	var errs field.ErrorList
	out := &Config{
		Kubeconfig:                  in.ClientConnection.Kubeconfig,
		QPS:                         in.ClientConnection.QPS,
		Burst:                       in.ClientConnection.Burst,
		ContentType:                 in.ClientConnection.ContentType,
		AcceptContentTypes:          in.ClientConnection.AcceptContentTypes,
		MasqueradeAll:               in.IPTables.MasqueradeAll,
		SyncPeriod:                  in.IPTables.SyncPeriod.Duration,
		MinSyncPeriod:               in.IPTables.MinSyncPeriod.Duration,
		ConfigSyncPeriod:            in.ConfigSyncPeriod.Duration,
		BindAddressHardFail:         in.BindAddressHardFail,
		EnableProfiling:             in.EnableProfiling,
		ShowHiddenMetricsForVersion: in.ShowHiddenMetricsForVersion,
		BridgeInterface:             in.DetectLocal.BridgeInterface,
		InterfaceNamePrefix:         in.DetectLocal.InterfaceNamePrefix,
		MasqueradeBit:               derefOr(in.IPTables.MasqueradeBit, DefaultMasqueradeBit),
		LocalhostNodePorts:          derefOr(in.IPTables.LocalhostNodePorts, true),
		OOMScoreAdj:                 derefOr(in.OOMScoreAdj, DefaultOOMScoreAdj),
		IPTablesBackend:             IPTablesBackendAuto,
		Conntrack: ConntrackConfig{
			MaxPerCore:            derefOr(in.Conntrack.MaxPerCore, DefaultConntrackMaxPerCore),
			Min:                   derefOr(in.Conntrack.Min, DefaultConntrackMin),
			TCPEstablishedTimeout: derefOr(in.Conntrack.TCPEstablishedTimeout, metav1.Duration{Duration: DefaultTCPEstablishedTimeout}).Duration,
			TCPCloseWaitTimeout:   derefOr(in.Conntrack.TCPCloseWaitTimeout, metav1.Duration{Duration: DefaultTCPCloseWaitTimeout}).Duration,
			TCPBeLiberal:          in.Conntrack.TCPBeLiberal,
			UDPTimeout:            in.Conntrack.UDPTimeout.Duration,
			UDPStreamTimeout:      in.Conntrack.UDPStreamTimeout.Duration,
		},
	}
	if len(in.NodePortAddresses) > 0 {
		out.NodePortAddresses = append([]string(nil), in.NodePortAddresses...)
	}
	out.FeatureGates = make(map[string]bool, len(in.FeatureGates))
	for k, v := range in.FeatureGates {
		out.FeatureGates[k] = v
	}

	var e field.ErrorList
	out.HostnameOverride, e = validateHostnameOverride(in.HostnameOverride, field.NewPath("hostnameOverride"))
	errs = append(errs, e...)
	errs = append(errs, validateClientConnection(in, field.NewPath("clientConnection"))...)
	out.Mode, e = validateMode(string(in.Mode), field.NewPath("mode"))
	out.ModeDefaulted = in.Mode == ""
	errs = append(errs, e...)
	errs = append(errs, validateIPTables(out, field.NewPath("iptables"))...)
	errs = append(errs, validatePositiveDuration(out.ConfigSyncPeriod, field.NewPath("configSyncPeriod"))...)
	out.ClusterCIDRs, e = parseClusterCIDRs(in.ClusterCIDR, field.NewPath("clusterCIDR"))
	errs = append(errs, e...)
	out.DetectLocalMode, e = validateDetectLocal(in, field.NewPath("detectLocalMode"), field.NewPath("detectLocal"))
	errs = append(errs, e...)
	errs = append(errs, validateNodePortAddresses(out.NodePortAddresses, field.NewPath("nodePortAddresses"))...)
	out.BindAddress, e = parseBindAddress(in.BindAddress, field.NewPath("bindAddress"))
	errs = append(errs, e...)
	out.HealthzBindAddress, e = parseServerAddress(in.HealthzBindAddress, DefaultHealthzPort, field.NewPath("healthzBindAddress"))
	errs = append(errs, e...)
	out.MetricsBindAddress, e = parseServerAddress(in.MetricsBindAddress, DefaultMetricsPort, field.NewPath("metricsBindAddress"))
	errs = append(errs, e...)
	errs = append(errs, validateShowHiddenMetricsForVersion(out.ShowHiddenMetricsForVersion, field.NewPath("showHiddenMetricsForVersion"))...)
	if out.OOMScoreAdj < -1000 || out.OOMScoreAdj > 1000 {
		errs = append(errs, field.Invalid(field.NewPath("oomScoreAdj"), out.OOMScoreAdj, "must be between -1000 and 1000"))
	}
	errs = append(errs, validateConntrack(out.Conntrack, field.NewPath("conntrack"))...)
	errs = append(errs, validateFeatureGates(out.FeatureGates, field.NewPath("featureGates"))...)
	out.Logging, e = convertLogging(in, field.NewPath("logging"))
	errs = append(errs, e...)

	if len(errs) > 0 {
		return nil, errs
	}
	return out, nil
}

// ValidateIPTablesBackend checks the kproxy-only iptables backend setting.
// It is separate from FromV1Alpha1 because the value never comes from the
// config file.
func ValidateIPTablesBackend(backend string, fldPath *field.Path) field.ErrorList {
	switch backend {
	case IPTablesBackendAuto, IPTablesBackendLegacy, IPTablesBackendNFT:
		return nil
	}
	return field.ErrorList{field.NotSupported(fldPath, backend,
		[]string{IPTablesBackendAuto, IPTablesBackendLegacy, IPTablesBackendNFT})}
}

// NormalizeHostname trims and lowercases a node name the way upstream does
// before looking up its Node object. It reports false when nothing is left.
func NormalizeHostname(name string) (string, bool) {
	name = strings.ToLower(strings.TrimSpace(name))
	return name, name != ""
}

func validateHostnameOverride(name string, fldPath *field.Path) (string, field.ErrorList) {
	if name == "" {
		return "", nil
	}
	n, ok := NormalizeHostname(name)
	if !ok {
		// Upstream fails at startup on a blank override; failing here names
		// the field instead of a generic "empty hostname".
		return "", field.ErrorList{field.Invalid(fldPath, name, "must not be blank")}
	}
	return n, nil
}

func validateClientConnection(in *v1alpha1.KubeProxyConfiguration, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	qps := in.ClientConnection.QPS
	if qps < 0 || math.IsNaN(float64(qps)) || math.IsInf(float64(qps), 0) {
		errs = append(errs, field.Invalid(fldPath.Child("qps"), qps, "must be a finite number greater than or equal to 0"))
	}
	if in.ClientConnection.Burst < 0 {
		errs = append(errs, field.Invalid(fldPath.Child("burst"), in.ClientConnection.Burst, "must be greater than or equal to 0"))
	}
	return errs
}

func validateMode(mode string, fldPath *field.Path) (string, field.ErrorList) {
	switch mode {
	case "", ModeIPTables:
		// Upstream defaults "" to iptables on Linux (and logs that the
		// default will change); kproxy has nothing else to default to.
		return ModeIPTables, nil
	}
	return "", field.ErrorList{field.Invalid(fldPath, mode,
		`kproxy only implements the iptables proxy mode; set it to "iptables" or leave it empty`)}
}

func validateIPTables(c *Config, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	if c.MasqueradeBit < 0 || c.MasqueradeBit > 31 {
		errs = append(errs, field.Invalid(fldPath.Child("masqueradeBit"), c.MasqueradeBit, "must be between 0 and 31"))
	}
	errs = append(errs, validatePositiveDuration(c.SyncPeriod, fldPath.Child("syncPeriod"))...)
	if c.MinSyncPeriod < 0 {
		errs = append(errs, field.Invalid(fldPath.Child("minSyncPeriod"), c.MinSyncPeriod.String(), "must be greater than or equal to 0"))
	} else if c.SyncPeriod > 0 && c.SyncPeriod < c.MinSyncPeriod {
		errs = append(errs, field.Invalid(fldPath.Child("syncPeriod"), c.SyncPeriod.String(),
			fmt.Sprintf("must be greater than or equal to %s (%s)", fldPath.Child("minSyncPeriod"), c.MinSyncPeriod)))
	}
	return errs
}

func validatePositiveDuration(d time.Duration, fldPath *field.Path) field.ErrorList {
	if d <= 0 {
		return field.ErrorList{field.Invalid(fldPath, d.String(), "must be greater than 0")}
	}
	return nil
}

func validateNonNegativeDuration(d time.Duration, fldPath *field.Path) field.ErrorList {
	if d < 0 {
		return field.ErrorList{field.Invalid(fldPath, d.String(), "must be greater than or equal to 0")}
	}
	return nil
}

// parseClusterCIDRs parses the comma-separated clusterCIDR field. At most one
// CIDR per family is allowed, as upstream enforces, because local detection
// uses exactly one range per family.
func parseClusterCIDRs(s string, fldPath *field.Path) ([]netip.Prefix, field.ErrorList) {
	if strings.TrimSpace(s) == "" {
		return nil, nil
	}
	var (
		errs     field.ErrorList
		prefixes []netip.Prefix
		seen4    bool
		seen6    bool
	)
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		p, err := netip.ParsePrefix(part)
		if err != nil {
			errs = append(errs, field.Invalid(fldPath, part, "must be a valid CIDR (e.g. 10.244.0.0/16 or fd00:10:244::/56)"))
			continue
		}
		p = p.Masked()
		seen := &seen4
		if p.Addr().Is6() {
			seen = &seen6
		}
		if *seen {
			errs = append(errs, field.Invalid(fldPath, s, "at most one CIDR per IP family is allowed"))
			continue
		}
		*seen = true
		prefixes = append(prefixes, p)
	}
	return prefixes, errs
}

func validateDetectLocal(in *v1alpha1.KubeProxyConfiguration, modePath, detectPath *field.Path) (string, field.ErrorList) {
	var errs field.ErrorList
	mode := string(in.DetectLocalMode)
	switch mode {
	case "":
		mode = DetectLocalClusterCIDR
	case DetectLocalClusterCIDR, DetectLocalNodeCIDR:
	case DetectLocalBridgeInterface:
		errs = append(errs, validateInterfaceName(in.DetectLocal.BridgeInterface, mode, detectPath.Child("bridgeInterface"))...)
	case DetectLocalInterfaceNamePrefix:
		errs = append(errs, validateInterfaceName(in.DetectLocal.InterfaceNamePrefix, mode, detectPath.Child("interfaceNamePrefix"))...)
	default:
		errs = append(errs, field.NotSupported(modePath, mode, []string{
			DetectLocalClusterCIDR, DetectLocalNodeCIDR, DetectLocalBridgeInterface, DetectLocalInterfaceNamePrefix,
		}))
	}
	return mode, errs
}

// validateInterfaceName checks a (prefix of a) Linux interface name: the
// kernel limits names to 15 bytes and forbids '/' and whitespace, and a
// mistyped name would otherwise only show up as "no traffic is local".
func validateInterfaceName(name, mode string, fldPath *field.Path) field.ErrorList {
	switch {
	case name == "":
		return field.ErrorList{field.Required(fldPath, "must be set when detectLocalMode is "+mode)}
	case len(name) > 15:
		return field.ErrorList{field.Invalid(fldPath, name, "must be at most 15 characters (the kernel's interface name limit)")}
	case strings.ContainsAny(name, "/ \t\n"):
		return field.ErrorList{field.Invalid(fldPath, name, "must not contain '/' or whitespace")}
	}
	return nil
}

func validateNodePortAddresses(addrs []string, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	hasPrimary, hasCIDR := false, false
	for i, a := range addrs {
		switch a {
		case NodePortAddressesPrimary:
			hasPrimary = true
		case NodePortAddressesLocalhost, NodePortAddressesAll:
		default:
			if _, err := netip.ParsePrefix(a); err != nil {
				errs = append(errs, field.Invalid(fldPath.Index(i), a,
					`must be a valid CIDR or one of "primary", "localhost", "all"`))
				continue
			}
			hasCIDR = true
		}
	}
	// Upstream rejects "primary" mixed with CIDRs: the combination has no
	// clear meaning (restrict to the primary IP, or widen to the CIDRs?).
	if hasPrimary && hasCIDR {
		errs = append(errs, field.Invalid(fldPath, addrs, `can't use both "primary" and CIDRs`))
	}
	return errs
}

func parseBindAddress(s string, fldPath *field.Path) (netip.Addr, field.ErrorList) {
	a, err := netip.ParseAddr(s)
	if err != nil || a.Zone() != "" {
		return netip.Addr{}, field.ErrorList{field.Invalid(fldPath, s, "must be a valid IP address (e.g. 0.0.0.0 or ::)")}
	}
	return a, nil
}

// parseServerAddress accepts "" (server disabled), an IP (default port
// appended) or IP:port, and returns host:port.
func parseServerAddress(s string, defaultPort int32, fldPath *field.Path) (string, field.ErrorList) {
	if s == "" {
		return "", nil
	}
	s = AppendPortIfNeeded(s, defaultPort)
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return "", field.ErrorList{field.Invalid(fldPath, s, "must be IP or IP:port (e.g. 0.0.0.0:10256 or [::]:10256)")}
	}
	var errs field.ErrorList
	if a, err := netip.ParseAddr(host); err != nil || a.Zone() != "" {
		errs = append(errs, field.Invalid(fldPath, s, "host must be an IP address, not a name"))
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		errs = append(errs, field.Invalid(fldPath, s, "port must be between 1 and 65535"))
	}
	if len(errs) > 0 {
		return "", errs
	}
	return s, nil
}

var majorMinorRE = regexp.MustCompile(`^[0-9]+\.[0-9]+$`)

// validateShowHiddenMetricsForVersion checks only the syntax: which version
// is "the previous minor" depends on the metrics registry, checked later.
func validateShowHiddenMetricsForVersion(v string, fldPath *field.Path) field.ErrorList {
	if v == "" || majorMinorRE.MatchString(v) {
		return nil
	}
	return field.ErrorList{field.Invalid(fldPath, v, `must be "<major>.<minor>" (e.g. "1.36") or empty`)}
}

func validateConntrack(c ConntrackConfig, fldPath *field.Path) field.ErrorList {
	var errs field.ErrorList
	if c.MaxPerCore < 0 {
		errs = append(errs, field.Invalid(fldPath.Child("maxPerCore"), c.MaxPerCore, "must be greater than or equal to 0"))
	}
	if c.Min < 0 {
		errs = append(errs, field.Invalid(fldPath.Child("min"), c.Min, "must be greater than or equal to 0"))
	}
	errs = append(errs, validateNonNegativeDuration(c.TCPEstablishedTimeout, fldPath.Child("tcpEstablishedTimeout"))...)
	errs = append(errs, validateNonNegativeDuration(c.TCPCloseWaitTimeout, fldPath.Child("tcpCloseWaitTimeout"))...)
	errs = append(errs, validateNonNegativeDuration(c.UDPTimeout, fldPath.Child("udpTimeout"))...)
	errs = append(errs, validateNonNegativeDuration(c.UDPStreamTimeout, fldPath.Child("udpStreamTimeout"))...)
	return errs
}

// validateFeatureGates checks only that names are usable on a command line
// (--feature-gates=a=true,b=false); see the package doc for why unknown
// names are accepted.
func validateFeatureGates(gates map[string]bool, fldPath *field.Path) field.ErrorList {
	names := make([]string, 0, len(gates))
	for k := range gates {
		names = append(names, k)
	}
	sort.Strings(names) // deterministic error order
	var errs field.ErrorList
	for _, k := range names {
		if k == "" || strings.ContainsAny(k, "=, \t\n") {
			errs = append(errs, field.Invalid(fldPath.Key(k), k, "must be a non-empty feature gate name without '=', ',' or whitespace"))
		}
	}
	return errs
}

// derefOr returns *p, or def when p is nil.
func derefOr[T any](p *T, def T) T {
	if p == nil {
		return def
	}
	return *p
}
