package config

import (
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/kube-proxy/config/v1alpha1"
	"k8s.io/utils/ptr"
)

// defaulted returns an empty KubeProxyConfiguration after SetDefaults, the
// starting point of both the flag path and a minimal file.
func defaulted() *v1alpha1.KubeProxyConfiguration {
	c := &v1alpha1.KubeProxyConfiguration{}
	SetDefaults(c)
	return c
}

// defaultConfig is what FromV1Alpha1 must return for a defaulted, empty input.
func defaultConfig() *Config {
	return &Config{
		QPS:                5,
		Burst:              10,
		ContentType:        "application/vnd.kubernetes.protobuf",
		Mode:               "iptables",
		ModeDefaulted:      true,
		DetectLocalMode:    "ClusterCIDR",
		MasqueradeBit:      14,
		LocalhostNodePorts: true,
		SyncPeriod:         30 * time.Second,
		MinSyncPeriod:      time.Second,
		ConfigSyncPeriod:   15 * time.Minute,
		BindAddress:        netip.MustParseAddr("0.0.0.0"),
		HealthzBindAddress: "0.0.0.0:10256",
		MetricsBindAddress: "127.0.0.1:10249",
		OOMScoreAdj:        -999,
		Conntrack: ConntrackConfig{
			MaxPerCore:            32768,
			Min:                   131072,
			TCPEstablishedTimeout: 24 * time.Hour,
			TCPCloseWaitTimeout:   time.Hour,
		},
		FeatureGates:    map[string]bool{},
		Logging:         *logsapi.NewLoggingConfiguration(),
		IPTablesBackend: "auto",
	}
}

func TestSetDefaults(t *testing.T) {
	tests := []struct {
		name  string
		in    func(c *v1alpha1.KubeProxyConfiguration)
		check func(t *testing.T, c *v1alpha1.KubeProxyConfiguration)
	}{
		{
			name: "empty gets upstream defaults",
			in:   func(*v1alpha1.KubeProxyConfiguration) {},
			check: func(t *testing.T, c *v1alpha1.KubeProxyConfiguration) {
				got := []any{c.BindAddress, c.HealthzBindAddress, c.MetricsBindAddress, *c.IPTables.MasqueradeBit,
					*c.IPTables.LocalhostNodePorts, c.IPTables.SyncPeriod.Duration, c.IPTables.MinSyncPeriod.Duration,
					c.ConfigSyncPeriod.Duration, c.ClientConnection.QPS, c.ClientConnection.Burst, c.ClientConnection.ContentType,
					*c.OOMScoreAdj, *c.Conntrack.MaxPerCore, *c.Conntrack.Min, c.Conntrack.TCPEstablishedTimeout.Duration,
					c.Conntrack.TCPCloseWaitTimeout.Duration, c.Logging.Format}
				want := []any{"0.0.0.0", "0.0.0.0:10256", "127.0.0.1:10249", int32(14),
					true, 30 * time.Second, time.Second,
					15 * time.Minute, float32(5), int32(10), "application/vnd.kubernetes.protobuf",
					int32(-999), int32(32768), int32(131072), 24 * time.Hour,
					time.Hour, "text"}
				if !reflect.DeepEqual(got, want) {
					t.Errorf("defaults\n got %v\nwant %v", got, want)
				}
				if c.FeatureGates == nil {
					t.Errorf("FeatureGates is nil, want empty map")
				}
			},
		},
		{
			name: "IPv6 bindAddress moves default server addresses to IPv6",
			in:   func(c *v1alpha1.KubeProxyConfiguration) { c.BindAddress = "::" },
			check: func(t *testing.T, c *v1alpha1.KubeProxyConfiguration) {
				if c.HealthzBindAddress != "[::]:10256" || c.MetricsBindAddress != "[::1]:10249" {
					t.Errorf("got healthz %q metrics %q", c.HealthzBindAddress, c.MetricsBindAddress)
				}
			},
		},
		{
			name: "address without port gets the default port",
			in: func(c *v1alpha1.KubeProxyConfiguration) {
				c.HealthzBindAddress = "10.0.0.1"
				c.MetricsBindAddress = "::1"
			},
			check: func(t *testing.T, c *v1alpha1.KubeProxyConfiguration) {
				if c.HealthzBindAddress != "10.0.0.1:10256" || c.MetricsBindAddress != "[::1]:10249" {
					t.Errorf("got healthz %q metrics %q", c.HealthzBindAddress, c.MetricsBindAddress)
				}
			},
		},
		{
			name: "explicit values are kept, including pointer zeros",
			in: func(c *v1alpha1.KubeProxyConfiguration) {
				c.HealthzBindAddress = "1.2.3.4:99"
				c.IPTables.MasqueradeBit = ptr.To(int32(0))
				c.IPTables.LocalhostNodePorts = ptr.To(false)
				c.IPTables.SyncPeriod.Duration = time.Minute
				c.Conntrack.MaxPerCore = ptr.To(int32(0))
			},
			check: func(t *testing.T, c *v1alpha1.KubeProxyConfiguration) {
				if c.HealthzBindAddress != "1.2.3.4:99" || *c.IPTables.MasqueradeBit != 0 ||
					*c.IPTables.LocalhostNodePorts || c.IPTables.SyncPeriod.Duration != time.Minute ||
					*c.Conntrack.MaxPerCore != 0 {
					t.Errorf("explicit values overwritten: %+v", c)
				}
			},
		},
		{
			name: "garbage address is left for validation to report",
			in:   func(c *v1alpha1.KubeProxyConfiguration) { c.HealthzBindAddress = "not-an-ip" },
			check: func(t *testing.T, c *v1alpha1.KubeProxyConfiguration) {
				if c.HealthzBindAddress != "not-an-ip" {
					t.Errorf("got %q", c.HealthzBindAddress)
				}
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &v1alpha1.KubeProxyConfiguration{}
			tc.in(c)
			SetDefaults(c)
			tc.check(t, c)
			again := c.DeepCopy()
			SetDefaults(again)
			if !reflect.DeepEqual(c, again) {
				t.Errorf("SetDefaults is not idempotent")
			}
		})
	}
}

func TestFromV1Alpha1Defaults(t *testing.T) {
	got, errs := FromV1Alpha1(defaulted())
	if len(errs) > 0 {
		t.Fatalf("unexpected errors: %v", errs)
	}
	if want := defaultConfig(); !reflect.DeepEqual(got, want) {
		t.Errorf("FromV1Alpha1(defaults)\n got %+v\nwant %+v", got, want)
	}
}

func TestFromV1Alpha1NilPointersTakeDefaults(t *testing.T) {
	c := defaulted()
	c.IPTables.MasqueradeBit, c.IPTables.LocalhostNodePorts, c.OOMScoreAdj = nil, nil, nil
	c.Conntrack.MaxPerCore, c.Conntrack.Min, c.Conntrack.TCPEstablishedTimeout, c.Conntrack.TCPCloseWaitTimeout = nil, nil, nil, nil
	got, errs := FromV1Alpha1(c)
	if len(errs) > 0 {
		t.Fatalf("unexpected errors: %v", errs)
	}
	if want := defaultConfig(); !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
}

func TestFromV1Alpha1Valid(t *testing.T) {
	tests := []struct {
		name  string
		mod   func(c *v1alpha1.KubeProxyConfiguration)
		check func(c *Config) bool
	}{
		{"mode iptables", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = "iptables" },
			func(c *Config) bool { return c.Mode == "iptables" }},
		{"hostname trimmed and lowercased", func(c *v1alpha1.KubeProxyConfiguration) { c.HostnameOverride = " Node-1 " },
			func(c *Config) bool { return c.HostnameOverride == "node-1" }},
		{"dual-stack cluster CIDR, masked, spaces allowed", func(c *v1alpha1.KubeProxyConfiguration) { c.ClusterCIDR = "10.244.1.0/16, fd00::/48" },
			func(c *Config) bool {
				return reflect.DeepEqual(c.ClusterCIDRs, []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00::/48")})
			}},
		{"nodePortAddresses keywords and CIDRs kept as given", func(c *v1alpha1.KubeProxyConfiguration) {
			c.NodePortAddresses = []string{"localhost", "10.0.0.0/8", "all"}
		}, func(c *Config) bool {
			return reflect.DeepEqual(c.NodePortAddresses, []string{"localhost", "10.0.0.0/8", "all"})
		}},
		{"nodePortAddresses primary alone", func(c *v1alpha1.KubeProxyConfiguration) { c.NodePortAddresses = []string{"primary"} },
			func(c *Config) bool { return c.NodePortAddresses[0] == "primary" }},
		{"detect local bridge", func(c *v1alpha1.KubeProxyConfiguration) {
			c.DetectLocalMode = "BridgeInterface"
			c.DetectLocal.BridgeInterface = "cbr0"
		}, func(c *Config) bool { return c.DetectLocalMode == "BridgeInterface" && c.BridgeInterface == "cbr0" }},
		{"detect local node CIDR", func(c *v1alpha1.KubeProxyConfiguration) { c.DetectLocalMode = "NodeCIDR" },
			func(c *Config) bool { return c.DetectLocalMode == "NodeCIDR" }},
		{"servers disabled", func(c *v1alpha1.KubeProxyConfiguration) { c.HealthzBindAddress, c.MetricsBindAddress = "", "" },
			func(c *Config) bool { return c.HealthzBindAddress == "" && c.MetricsBindAddress == "" }},
		{"bare IP gets default port", func(c *v1alpha1.KubeProxyConfiguration) { c.MetricsBindAddress = "::" },
			func(c *Config) bool { return c.MetricsBindAddress == "[::]:10249" }},
		{"min sync period 0 kept", func(c *v1alpha1.KubeProxyConfiguration) { c.IPTables.MinSyncPeriod.Duration = 0 },
			func(c *Config) bool { return c.MinSyncPeriod == 0 }},
		{"sync period equal to min", func(c *v1alpha1.KubeProxyConfiguration) {
			c.IPTables.SyncPeriod.Duration, c.IPTables.MinSyncPeriod.Duration = 5*time.Second, 5*time.Second
		}, func(c *Config) bool { return c.SyncPeriod == 5*time.Second }},
		{"log verbosity kept", func(c *v1alpha1.KubeProxyConfiguration) { c.Logging.Verbosity = 3 },
			func(c *Config) bool { return c.Logging.Verbosity == 3 }},
		{"json log format", func(c *v1alpha1.KubeProxyConfiguration) { c.Logging.Format = "json" },
			func(c *Config) bool { return c.Logging.Format == "json" }},
		{"alpha logging option with its gate", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Logging.Options.Text.SplitStream = true
			c.FeatureGates = map[string]bool{"LoggingAlphaOptions": true, "SomeOtherGate": true}
		}, func(c *Config) bool { return c.Logging.Options.Text.SplitStream }},
		{"ipvs section ignored", func(c *v1alpha1.KubeProxyConfiguration) { c.IPVS.Scheduler = "bogus" },
			func(*Config) bool { return true }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := defaulted()
			tc.mod(in)
			got, errs := FromV1Alpha1(in)
			if len(errs) > 0 {
				t.Fatalf("unexpected errors: %v", errs)
			}
			if !tc.check(got) {
				t.Errorf("unexpected config: %+v", got)
			}
		})
	}
}

func TestFromV1Alpha1Invalid(t *testing.T) {
	tests := []struct {
		name string
		mod  func(c *v1alpha1.KubeProxyConfiguration)
		want string // exact error text (one field error)
	}{
		{"masquerade bit 32", func(c *v1alpha1.KubeProxyConfiguration) { c.IPTables.MasqueradeBit = ptr.To(int32(32)) },
			`iptables.masqueradeBit: Invalid value: 32: must be between 0 and 31`},
		{"masquerade bit -1", func(c *v1alpha1.KubeProxyConfiguration) { c.IPTables.MasqueradeBit = ptr.To(int32(-1)) },
			`iptables.masqueradeBit: Invalid value: -1: must be between 0 and 31`},
		{"mode ipvs", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = "ipvs" },
			`mode: Invalid value: "ipvs": kproxy only implements the iptables proxy mode; set it to "iptables" or leave it empty`},
		{"mode nftables", func(c *v1alpha1.KubeProxyConfiguration) { c.Mode = "nftables" },
			`mode: Invalid value: "nftables": kproxy only implements the iptables proxy mode; set it to "iptables" or leave it empty`},
		{"sync period zero", func(c *v1alpha1.KubeProxyConfiguration) { c.IPTables.SyncPeriod.Duration = 0 },
			`iptables.syncPeriod: Invalid value: "0s": must be greater than 0`},
		{"min sync period negative", func(c *v1alpha1.KubeProxyConfiguration) { c.IPTables.MinSyncPeriod.Duration = -time.Second },
			`iptables.minSyncPeriod: Invalid value: "-1s": must be greater than or equal to 0`},
		{"sync period below min", func(c *v1alpha1.KubeProxyConfiguration) {
			c.IPTables.SyncPeriod.Duration, c.IPTables.MinSyncPeriod.Duration = time.Second, time.Minute
		}, `iptables.syncPeriod: Invalid value: "1s": must be greater than or equal to iptables.minSyncPeriod (1m0s)`},
		{"config sync period zero", func(c *v1alpha1.KubeProxyConfiguration) { c.ConfigSyncPeriod.Duration = 0 },
			`configSyncPeriod: Invalid value: "0s": must be greater than 0`},
		{"malformed cluster CIDR", func(c *v1alpha1.KubeProxyConfiguration) { c.ClusterCIDR = "10.244.0.0/33" },
			`clusterCIDR: Invalid value: "10.244.0.0/33": must be a valid CIDR (e.g. 10.244.0.0/16 or fd00:10:244::/56)`},
		{"cluster CIDR not a CIDR", func(c *v1alpha1.KubeProxyConfiguration) { c.ClusterCIDR = "10.244.0.0" },
			`clusterCIDR: Invalid value: "10.244.0.0": must be a valid CIDR (e.g. 10.244.0.0/16 or fd00:10:244::/56)`},
		{"two IPv4 cluster CIDRs", func(c *v1alpha1.KubeProxyConfiguration) { c.ClusterCIDR = "10.0.0.0/16,10.1.0.0/16" },
			`clusterCIDR: Invalid value: "10.0.0.0/16,10.1.0.0/16": at most one CIDR per IP family is allowed`},
		{"trailing comma in cluster CIDR", func(c *v1alpha1.KubeProxyConfiguration) { c.ClusterCIDR = "10.0.0.0/16," },
			`clusterCIDR: Invalid value: "": must be a valid CIDR (e.g. 10.244.0.0/16 or fd00:10:244::/56)`},
		{"bad nodePortAddress", func(c *v1alpha1.KubeProxyConfiguration) { c.NodePortAddresses = []string{"10.0.0.0/8", "10.1.2.3"} },
			`nodePortAddresses[1]: Invalid value: "10.1.2.3": must be a valid CIDR or one of "primary", "localhost", "all"`},
		{"primary mixed with CIDR", func(c *v1alpha1.KubeProxyConfiguration) { c.NodePortAddresses = []string{"primary", "10.0.0.0/8"} },
			`nodePortAddresses: Invalid value: ["primary","10.0.0.0/8"]: can't use both "primary" and CIDRs`},
		{"bind address not an IP", func(c *v1alpha1.KubeProxyConfiguration) { c.BindAddress = "node1" },
			`bindAddress: Invalid value: "node1": must be a valid IP address (e.g. 0.0.0.0 or ::)`},
		{"healthz host name", func(c *v1alpha1.KubeProxyConfiguration) { c.HealthzBindAddress = "localhost:10256" },
			`healthzBindAddress: Invalid value: "localhost:10256": host must be an IP address, not a name`},
		{"metrics port out of range", func(c *v1alpha1.KubeProxyConfiguration) { c.MetricsBindAddress = "127.0.0.1:70000" },
			`metricsBindAddress: Invalid value: "127.0.0.1:70000": port must be between 1 and 65535`},
		{"metrics garbage", func(c *v1alpha1.KubeProxyConfiguration) { c.MetricsBindAddress = "1.2.3.4:5:6" },
			`metricsBindAddress: Invalid value: "1.2.3.4:5:6": must be IP or IP:port (e.g. 0.0.0.0:10256 or [::]:10256)`},
		{"unknown detect local mode", func(c *v1alpha1.KubeProxyConfiguration) { c.DetectLocalMode = "Magic" },
			`detectLocalMode: Unsupported value: "Magic": supported values: "ClusterCIDR", "NodeCIDR", "BridgeInterface", "InterfaceNamePrefix"`},
		{"bridge mode without bridge", func(c *v1alpha1.KubeProxyConfiguration) { c.DetectLocalMode = "BridgeInterface" },
			`detectLocal.bridgeInterface: Required value: must be set when detectLocalMode is BridgeInterface`},
		{"prefix mode without prefix", func(c *v1alpha1.KubeProxyConfiguration) { c.DetectLocalMode = "InterfaceNamePrefix" },
			`detectLocal.interfaceNamePrefix: Required value: must be set when detectLocalMode is InterfaceNamePrefix`},
		{"bridge name too long", func(c *v1alpha1.KubeProxyConfiguration) {
			c.DetectLocalMode, c.DetectLocal.BridgeInterface = "BridgeInterface", "a-very-long-bridge0"
		}, `detectLocal.bridgeInterface: Invalid value: "a-very-long-bridge0": must be at most 15 characters (the kernel's interface name limit)`},
		{"negative qps", func(c *v1alpha1.KubeProxyConfiguration) { c.ClientConnection.QPS = -1 },
			`clientConnection.qps: Invalid value: -1: must be a finite number greater than or equal to 0`},
		{"negative burst", func(c *v1alpha1.KubeProxyConfiguration) { c.ClientConnection.Burst = -1 },
			`clientConnection.burst: Invalid value: -1: must be greater than or equal to 0`},
		{"oom score too low", func(c *v1alpha1.KubeProxyConfiguration) { c.OOMScoreAdj = ptr.To(int32(-1001)) },
			`oomScoreAdj: Invalid value: -1001: must be between -1000 and 1000`},
		{"conntrack negative max per core", func(c *v1alpha1.KubeProxyConfiguration) { c.Conntrack.MaxPerCore = ptr.To(int32(-1)) },
			`conntrack.maxPerCore: Invalid value: -1: must be greater than or equal to 0`},
		{"conntrack negative udp timeout", func(c *v1alpha1.KubeProxyConfiguration) { c.Conntrack.UDPTimeout.Duration = -time.Second },
			`conntrack.udpTimeout: Invalid value: "-1s": must be greater than or equal to 0`},
		{"conntrack negative established timeout", func(c *v1alpha1.KubeProxyConfiguration) {
			c.Conntrack.TCPEstablishedTimeout = &metav1.Duration{Duration: -time.Hour}
		}, `conntrack.tcpEstablishedTimeout: Invalid value: "-1h0m0s": must be greater than or equal to 0`},
		{"blank hostname override", func(c *v1alpha1.KubeProxyConfiguration) { c.HostnameOverride = "   " },
			`hostnameOverride: Invalid value: "   ": must not be blank`},
		{"bad feature gate name", func(c *v1alpha1.KubeProxyConfiguration) { c.FeatureGates = map[string]bool{"a=b": true} },
			`featureGates[a=b]: Invalid value: "a=b": must be a non-empty feature gate name without '=', ',' or whitespace`},
		{"bad hidden metrics version", func(c *v1alpha1.KubeProxyConfiguration) { c.ShowHiddenMetricsForVersion = "v1.36" },
			`showHiddenMetricsForVersion: Invalid value: "v1.36": must be "<major>.<minor>" (e.g. "1.36") or empty`},
		{"bad log format", func(c *v1alpha1.KubeProxyConfiguration) { c.Logging.Format = "xml" },
			`logging.format: Invalid value: "xml": Unsupported log format`},
		{"alpha logging option without its gate", func(c *v1alpha1.KubeProxyConfiguration) { c.Logging.Options.Text.SplitStream = true },
			`logging.options.text.splitStream: Forbidden: Feature LoggingAlphaOptions is disabled`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			in := defaulted()
			tc.mod(in)
			got, errs := FromV1Alpha1(in)
			if got != nil {
				t.Errorf("got a config along with errors: %+v", got)
			}
			if len(errs) != 1 {
				t.Fatalf("want exactly one error, got %d: %v", len(errs), errs)
			}
			if errs[0].Error() != tc.want {
				t.Errorf("error\n got %s\nwant %s", errs[0].Error(), tc.want)
			}
		})
	}
}

func TestFromV1Alpha1ReportsAllErrors(t *testing.T) {
	in := defaulted()
	in.IPTables.MasqueradeBit = ptr.To(int32(40))
	in.Mode = "ipvs"
	in.ClusterCIDR = "bogus"
	_, errs := FromV1Alpha1(in)
	var fields []string
	for _, e := range errs {
		fields = append(fields, e.Field)
	}
	if want := []string{"mode", "iptables.masqueradeBit", "clusterCIDR"}; !reflect.DeepEqual(fields, want) {
		t.Errorf("error fields = %v, want %v", fields, want)
	}
	if _, errs := FromV1Alpha1(nil); len(errs) != 1 {
		t.Errorf("nil input: want one error, got %v", errs)
	}
}

func TestValidateIPTablesBackend(t *testing.T) {
	for _, b := range []string{"auto", "legacy", "nft"} {
		if errs := ValidateIPTablesBackend(b, field.NewPath("iptablesBackend")); len(errs) != 0 {
			t.Errorf("%q: unexpected errors %v", b, errs)
		}
	}
	errs := ValidateIPTablesBackend("nftables", field.NewPath("iptablesBackend"))
	want := `iptablesBackend: Unsupported value: "nftables": supported values: "auto", "legacy", "nft"`
	if len(errs) != 1 || errs[0].Error() != want {
		t.Errorf("got %v, want %s", errs, want)
	}
}

func TestLoadFileSamples(t *testing.T) {
	kubeadm := defaultConfig()
	kubeadm.Kubeconfig = "/var/lib/kube-proxy/kubeconfig.conf"
	kubeadm.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")}

	ipv6 := defaultConfig()
	ipv6.BindAddress = netip.MustParseAddr("::")
	ipv6.HealthzBindAddress = "[::]:10256"
	ipv6.MetricsBindAddress = "[::1]:10249"
	ipv6.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("fd00:10:244::/56")}
	ipv6.DetectLocalMode = "BridgeInterface"
	ipv6.BridgeInterface = "cbr0"
	ipv6.MasqueradeBit = 0 // explicit 0 in the file is not defaulted (pointer field)
	ipv6.SyncPeriod = 45 * time.Second

	full := &Config{
		HostnameOverride:            "node-a.example.com",
		Kubeconfig:                  "/etc/kproxy/kubeconfig",
		QPS:                         50,
		Burst:                       100,
		ContentType:                 "application/json",
		AcceptContentTypes:          "application/json",
		Mode:                        "iptables",
		DetectLocalMode:             "InterfaceNamePrefix",
		ClusterCIDRs:                []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")},
		InterfaceNamePrefix:         "veth",
		MasqueradeBit:               15,
		MasqueradeAll:               true,
		LocalhostNodePorts:          false,
		SyncPeriod:                  time.Minute,
		MinSyncPeriod:               5 * time.Second,
		ConfigSyncPeriod:            10 * time.Minute,
		NodePortAddresses:           []string{"10.0.0.0/8", "localhost"},
		BindAddress:                 netip.MustParseAddr("10.0.0.5"),
		BindAddressHardFail:         true,
		HealthzBindAddress:          "10.0.0.5:10256",
		MetricsBindAddress:          "0.0.0.0:9100",
		EnableProfiling:             true,
		ShowHiddenMetricsForVersion: "1.36",
		OOMScoreAdj:                 -500,
		Conntrack: ConntrackConfig{
			MaxPerCore:            0,
			Min:                   65536,
			TCPEstablishedTimeout: 2 * time.Hour,
			TCPCloseWaitTimeout:   30 * time.Minute,
			TCPBeLiberal:          true,
			UDPTimeout:            30 * time.Second,
			UDPStreamTimeout:      2 * time.Minute,
		},
		FeatureGates: map[string]bool{"SomeGate": true},
		Logging: func() logsapi.LoggingConfiguration {
			l := logsapi.NewLoggingConfiguration()
			l.Verbosity = 4
			l.VModule = logsapi.VModuleConfiguration{{FilePattern: "proxier*", Verbosity: 9}}
			return *l
		}(),
		IPTablesBackend: "auto",
	}

	tests := []struct {
		file string
		want *Config
	}{
		{"minimal.yaml", defaultConfig()},
		{"kubeadm.yaml", kubeadm},
		{"full.yaml", full},
		{"ipv6.json", ipv6},
	}
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			v1, warning, err := LoadFile(filepath.Join("testdata", tc.file))
			if err != nil || warning != nil {
				t.Fatalf("LoadFile: warning %v, err %v", warning, err)
			}
			got, errs := FromV1Alpha1(v1)
			if len(errs) > 0 {
				t.Fatalf("FromV1Alpha1: %v", errs)
			}
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("config\n got %+v\nwant %+v", got, tc.want)
			}
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	const header = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
	tests := []struct {
		name string
		data string
		want string // substring of the error
	}{
		{"wrong apiVersion", "apiVersion: kubeproxy.config.k8s.io/v1beta1\nkind: KubeProxyConfiguration\n",
			`apiVersion: Unsupported value: "kubeproxy.config.k8s.io/v1beta1": must be "kubeproxy.config.k8s.io/v1alpha1"`},
		{"missing apiVersion", "kind: KubeProxyConfiguration\n", `apiVersion: Unsupported value: ""`},
		{"wrong kind", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\n",
			`kind: Unsupported value: "KubeletConfiguration": must be "KubeProxyConfiguration"`},
		{"wrong kind with an unknown field", "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeletConfiguration\nbogus: 1\n",
			`kind: Unsupported value: "KubeletConfiguration"`},
		{"empty file", "", "must be a YAML or JSON object"},
		{"not an object", "- a\n- b\n", "must be a YAML or JSON object"},
		{"bad duration", header + "iptables:\n  syncPeriod: 30x\n",
			`iptables.syncPeriod: Invalid value: "30x": must be a duration such as 30s, 1m or 2h45m`},
		{"wrong type", header + "iptables:\n  masqueradeBit: fourteen\n", "iptables.masqueradeBit"},
		{"malformed YAML", header + "iptables: [\n", "invalid YAML"},
		{"malformed YAML with a duplicate key", header + "mode: a\nmode: b\niptables: [\n", "invalid YAML"},
		{"malformed JSON", `{"apiVersion":"kubeproxy.config.k8s.io/v1alpha1","kind":"KubeProxyConfiguration",`, "must be a YAML or JSON object"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, warning, err := Decode([]byte(tc.data))
			if err == nil {
				t.Fatalf("want error containing %q, got config %+v (warning %v)", tc.want, c, warning)
			}
			if c != nil || warning != nil {
				t.Errorf("got a config or warning along with the error")
			}
			msg := err.Error()
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not contain %q", msg, tc.want)
			}
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans lines: %q", msg)
			}
		})
	}
}

// Upstream decodes strictly first and, when only unknown or duplicate fields
// fail, logs them and uses the leniently decoded file; so must kproxy.
func TestDecodeLenientWithWarning(t *testing.T) {
	const header = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"
	tests := []struct {
		name  string
		data  string
		warn  []string // substrings of the warning, one per offending field
		check func(c *v1alpha1.KubeProxyConfiguration) bool
	}{
		{"unknown top-level field", header + "masqueradeBit: 3\nclusterCIDR: 10.0.0.0/8\n", []string{`unknown field "masqueradeBit"`},
			func(c *v1alpha1.KubeProxyConfiguration) bool {
				return c.ClusterCIDR == "10.0.0.0/8" && *c.IPTables.MasqueradeBit == 14
			}},
		{"unknown nested field", header + "iptables:\n  masqueradeBits: 3\n  masqueradeAll: true\n", []string{`unknown field "iptables.masqueradeBits"`},
			func(c *v1alpha1.KubeProxyConfiguration) bool {
				return c.IPTables.MasqueradeAll && *c.IPTables.MasqueradeBit == 14
			}},
		{"field name case matters", header + "iptables:\n  MasqueradeBit: 3\n", []string{`unknown field "iptables.MasqueradeBit"`},
			func(c *v1alpha1.KubeProxyConfiguration) bool { return *c.IPTables.MasqueradeBit == 14 }},
		{"several unknown fields", header + "bogus: 1\nconntrack:\n  maxPerCPU: 1\n", []string{`unknown field "bogus"`, `unknown field "conntrack.maxPerCPU"`},
			func(*v1alpha1.KubeProxyConfiguration) bool { return true }},
		{"duplicate YAML key, the last wins", header + "clusterCIDR: 10.1.0.0/16\nclusterCIDR: 10.2.0.0/16\n", []string{`key "clusterCIDR" already set`},
			func(c *v1alpha1.KubeProxyConfiguration) bool { return c.ClusterCIDR == "10.2.0.0/16" }},
		{"duplicate YAML key and an unknown field", header + "mode: iptables\nmode: iptables\nbogus: 1\n", []string{`key "mode" already set`, `unknown field "bogus"`},
			func(c *v1alpha1.KubeProxyConfiguration) bool { return c.Mode == "iptables" }},
		{"duplicate JSON key, the last wins", `{"apiVersion":"kubeproxy.config.k8s.io/v1alpha1","kind":"KubeProxyConfiguration","clusterCIDR":"10.1.0.0/16","clusterCIDR":"10.2.0.0/16"}`,
			[]string{`duplicate field "clusterCIDR"`},
			func(c *v1alpha1.KubeProxyConfiguration) bool { return c.ClusterCIDR == "10.2.0.0/16" }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, warning, err := Decode([]byte(tc.data))
			if err != nil {
				t.Fatalf("Decode: %v, want the file used with a warning", err)
			}
			if warning == nil {
				t.Fatalf("no warning for %q", tc.data)
			}
			msg := warning.Error()
			if len(warning.Problems) != len(tc.warn) || !strings.HasPrefix(msg, "strict decoding error: ") || strings.Contains(msg, "\n") {
				t.Errorf("warning %q: want one line listing %d problems", msg, len(tc.warn))
			}
			for _, w := range tc.warn {
				if !strings.Contains(msg, w) {
					t.Errorf("warning %q does not contain %q", msg, w)
				}
			}
			if c.ConfigSyncPeriod.Duration != DefaultConfigSyncPeriod {
				t.Errorf("leniently decoded config was not defaulted: %+v", c)
			}
			if !tc.check(c) {
				t.Errorf("unexpected config: %+v", c)
			}
		})
	}
}

func TestLoadFileErrorsNamePath(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.yaml")
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: [\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{missing, bad} {
		_, _, err := LoadFile(p)
		if err == nil || !strings.Contains(err.Error(), p) {
			t.Errorf("LoadFile(%s) error %v does not name the path", p, err)
		}
	}
	if _, _, err := LoadFile(missing); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file error %v does not wrap os.ErrNotExist", err)
	}
}

func TestMarshalRoundTrip(t *testing.T) {
	for _, file := range []string{"minimal.yaml", "kubeadm.yaml", "full.yaml", "ipv6.json"} {
		t.Run(file, func(t *testing.T) {
			orig, _, err := LoadFile(filepath.Join("testdata", file))
			if err != nil {
				t.Fatal(err)
			}
			out, err := Marshal(orig)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(out), "apiVersion: kubeproxy.config.k8s.io/v1alpha1") ||
				!strings.Contains(string(out), "kind: KubeProxyConfiguration") {
				t.Errorf("output lacks apiVersion/kind:\n%s", out)
			}
			back, warning, err := Decode(out)
			if err != nil || warning != nil {
				t.Fatalf("re-decoding written config: warning %v, err %v\n%s", warning, err, out)
			}
			c1, errs1 := FromV1Alpha1(orig)
			c2, errs2 := FromV1Alpha1(back)
			if len(errs1)+len(errs2) > 0 || !reflect.DeepEqual(c1, c2) {
				t.Errorf("round trip changed the config\n got %+v %v\nwant %+v %v", c2, errs2, c1, errs1)
			}
		})
	}
}

func TestValidationError(t *testing.T) {
	in := defaulted()
	in.IPTables.MasqueradeBit = ptr.To(int32(32))
	_, errs := FromV1Alpha1(in)
	var err error = &ValidationError{Errors: errs}
	want := "invalid configuration: iptables.masqueradeBit: Invalid value: 32: must be between 0 and 31"
	if err.Error() != want {
		t.Errorf("got %q, want %q", err.Error(), want)
	}
}

func TestJoinFieldErrors(t *testing.T) {
	errs := field.ErrorList{
		field.Invalid(field.NewPath("a"), 1, "bad"),
		field.Required(field.NewPath("b", "c"), "needed"),
	}
	want := `a: Invalid value: 1: bad; b.c: Required value: needed`
	if got := JoinFieldErrors(errs); got != want {
		t.Errorf("got %q, want %q", got, want)
	}
}
