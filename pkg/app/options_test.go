package app

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/kproxy-dev/kproxy/pkg/config"
)

// newFlags registers Options on a fresh flag set and parses args.
func newFlags(t *testing.T, args ...string) (*Options, *pflag.FlagSet, error) {
	t.Helper()
	o := NewOptions()
	fs := pflag.NewFlagSet("kproxy", pflag.ContinueOnError)
	fs.SetOutput(io.Discard)
	o.AddFlags(fs)
	return o, fs, fs.Parse(args)
}

// complete parses args and runs Complete, failing the test on parse errors.
func complete(t *testing.T, args ...string) (*config.Config, *Options, *pflag.FlagSet, error) {
	t.Helper()
	o, fs, err := newFlags(t, args...)
	if err != nil {
		t.Fatalf("parsing %v: %v", args, err)
	}
	_, ctx := ktesting.NewTestContext(t)
	c, err := o.Complete(ctx, fs)
	return c, o, fs, err
}

// vmodule renders a logging configuration's vmodule as the flag spells it.
func vmodule(c *config.Config) string {
	return logsapi.VModuleConfigurationPflag(&c.Logging.VModule).String()
}

// writeFile writes a config file into a temp dir and returns its path.
func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

const header = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n"

func TestDefaultsWithoutFlags(t *testing.T) {
	got, _, _, err := complete(t)
	if err != nil {
		t.Fatal(err)
	}
	want := &config.Config{
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
		Conntrack: config.ConntrackConfig{
			MaxPerCore:            32768,
			Min:                   131072,
			TCPEstablishedTimeout: 24 * time.Hour,
			TCPCloseWaitTimeout:   time.Hour,
		},
		FeatureGates:    map[string]bool{},
		Logging:         *logsapi.NewLoggingConfiguration(),
		IPTablesBackend: "auto",
		DebugEndpoint:   true,
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("defaults\n got %+v\nwant %+v", got, want)
	}
}

func TestFlagsWithoutConfig(t *testing.T) {
	tests := []struct {
		name  string
		args  []string
		check func(c *config.Config) bool
	}{
		{"sync periods parsed", []string{"--iptables-sync-period=1m30s", "--iptables-min-sync-period=0"},
			func(c *config.Config) bool { return c.SyncPeriod == 90*time.Second && c.MinSyncPeriod == 0 }},
		{"underscores normalised", []string{"--iptables_sync_period=2m", "--config_sync_period=5m"},
			func(c *config.Config) bool {
				return c.SyncPeriod == 2*time.Minute && c.ConfigSyncPeriod == 5*time.Minute
			}},
		{"dual-stack cluster CIDR", []string{"--cluster-cidr=10.244.0.0/16,fd00::/48"},
			func(c *config.Config) bool { return len(c.ClusterCIDRs) == 2 && c.ClusterCIDRs[1].Addr().Is6() }},
		{"hostname override trimmed and lowercased", []string{"--hostname-override= Node-A "},
			func(c *config.Config) bool { return c.HostnameOverride == "node-a" }},
		{"master", []string{"--master=https://10.0.0.1:6443"},
			func(c *config.Config) bool { return c.Master == "https://10.0.0.1:6443" }},
		{"masquerade flags", []string{"--iptables-masquerade-bit=0", "--masquerade-all", "--iptables-localhost-nodeports=false"},
			func(c *config.Config) bool { return c.MasqueradeBit == 0 && c.MasqueradeAll && !c.LocalhostNodePorts }},
		{"nodeport addresses", []string{"--nodeport-addresses=primary,localhost"},
			func(c *config.Config) bool {
				return reflect.DeepEqual(c.NodePortAddresses, []string{"primary", "localhost"})
			}},
		{"bare healthz IP gets default port", []string{"--healthz-bind-address=10.0.0.1"},
			func(c *config.Config) bool { return c.HealthzBindAddress == "10.0.0.1:10256" }},
		{"deprecated metrics port fills a bare IP", []string{"--metrics-bind-address=::", "--metrics-port=9999"},
			func(c *config.Config) bool { return c.MetricsBindAddress == "[::]:9999" }},
		{"deprecated healthz port 0 disables", []string{"--healthz-port=0"},
			func(c *config.Config) bool { return c.HealthzBindAddress == "" }},
		{"empty metrics address disables", []string{"--metrics-bind-address="},
			func(c *config.Config) bool { return c.MetricsBindAddress == "" }},
		{"client connection", []string{"--kubeconfig=/k", "--kube-api-qps=20", "--kube-api-burst=30", "--kube-api-content-type=application/json"},
			func(c *config.Config) bool {
				return c.Kubeconfig == "/k" && c.QPS == 20 && c.Burst == 30 && c.ContentType == "application/json"
			}},
		{"detect local", []string{"--detect-local-mode=InterfaceNamePrefix", "--pod-interface-name-prefix=veth"},
			func(c *config.Config) bool {
				return c.DetectLocalMode == "InterfaceNamePrefix" && c.InterfaceNamePrefix == "veth"
			}},
		{"conntrack", []string{"--conntrack-max-per-core=0", "--conntrack-min=1", "--conntrack-tcp-timeout-established=1h",
			"--conntrack-tcp-timeout-close-wait=2m", "--conntrack-tcp-be-liberal", "--conntrack-udp-timeout=30s", "--conntrack-udp-timeout-stream=2m"},
			func(c *config.Config) bool {
				return c.Conntrack == config.ConntrackConfig{MaxPerCore: 0, Min: 1, TCPEstablishedTimeout: time.Hour,
					TCPCloseWaitTimeout: 2 * time.Minute, TCPBeLiberal: true, UDPTimeout: 30 * time.Second, UDPStreamTimeout: 2 * time.Minute}
			}},
		{"oom score adj", []string{"--oom-score-adj=-1000"}, func(c *config.Config) bool { return c.OOMScoreAdj == -1000 }},
		{"feature gates", []string{"--feature-gates=A=true, B=false", "--feature-gates=C=true"},
			func(c *config.Config) bool {
				return reflect.DeepEqual(c.FeatureGates, map[string]bool{"A": true, "B": false, "C": true})
			}},
		{"iptables backend", []string{"--iptables-backend=nft"}, func(c *config.Config) bool { return c.IPTablesBackend == "nft" }},
		{"explicit proxy mode iptables", []string{"--proxy-mode=iptables"}, func(c *config.Config) bool { return c.Mode == "iptables" }},
		{"ipvs flags accepted and ignored", []string{"--ipvs-scheduler=rr", "--ipvs-sync-period=1s", "--ipvs-strict-arp"},
			func(c *config.Config) bool { return c.SyncPeriod == 30*time.Second }},
		{"bind address", []string{"--bind-address=fd00::1"}, func(c *config.Config) bool { return c.BindAddress == netip.MustParseAddr("fd00::1") }},
		{"verbosity", []string{"-v=3", "--vmodule=proxier*=5"},
			func(c *config.Config) bool { return c.Logging.Verbosity == 3 && vmodule(c) == "proxier*=5" }},
		{"verbosity long form", []string{"--v=2"}, func(c *config.Config) bool { return c.Logging.Verbosity == 2 }},
		{"json logging", []string{"--logging-format=json", "--log-flush-frequency=1s"},
			func(c *config.Config) bool {
				return c.Logging.Format == "json" && c.Logging.FlushFrequency.Duration.Duration == time.Second
			}},
		{"alpha logging option with its gate", []string{"--log-text-split-stream", "--feature-gates=LoggingAlphaOptions=true"},
			func(c *config.Config) bool { return c.Logging.Options.Text.SplitStream }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, _, _, err := complete(t, tc.args...)
			if err != nil {
				t.Fatalf("Complete: %v", err)
			}
			if !tc.check(c) {
				t.Errorf("unexpected config for %v: %+v", tc.args, c)
			}
		})
	}
}

func TestCompleteErrors(t *testing.T) {
	tests := []struct {
		name string
		file string // config file body; "" means no --config
		args []string
		want string // exact error, or substring when sub is set
		sub  bool
	}{
		{name: "masquerade bit 32 from flag", args: []string{"--iptables-masquerade-bit=32"},
			want: "invalid configuration: iptables.masqueradeBit: Invalid value: 32: must be between 0 and 31 (flag --iptables-masquerade-bit)"},
		{name: "masquerade bit 32 from file", file: header + "iptables:\n  masqueradeBit: 32\n",
			want: "invalid configuration: iptables.masqueradeBit: Invalid value: 32: must be between 0 and 31"},
		{name: "malformed cluster CIDR from flag", args: []string{"--cluster-cidr=10.0.0.0/33"},
			want: `invalid configuration: clusterCIDR: Invalid value: "10.0.0.0/33": must be a valid CIDR (e.g. 10.244.0.0/16 or fd00:10:244::/56) (flag --cluster-cidr)`},
		{name: "malformed cluster CIDR from file", file: header + "clusterCIDR: 10.0.0/16\n",
			want: `invalid configuration: clusterCIDR: Invalid value: "10.0.0/16": must be a valid CIDR (e.g. 10.244.0.0/16 or fd00:10:244::/56)`},
		{name: "proxy mode ipvs from flag", args: []string{"--proxy-mode=ipvs"},
			want: `invalid configuration: mode: Invalid value: "ipvs": kproxy only implements the iptables proxy mode; set it to "iptables" or leave it empty (flag --proxy-mode)`},
		{name: "mode ipvs from file", file: header + "mode: ipvs\n",
			want: `invalid configuration: mode: Invalid value: "ipvs": kproxy only implements the iptables proxy mode; set it to "iptables" or leave it empty`},
		{name: "malformed YAML in file", file: header + "iptables: [\n",
			want: `invalid YAML`, sub: true},
		{name: "wrong kind in file", file: "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: Foo\n",
			want: `kind: Unsupported value: "Foo"`, sub: true},
		{name: "unknown logging format from flag", args: []string{"--logging-format=xml"},
			want: `invalid configuration: logging.format: Invalid value: "xml": Unsupported log format (flag --logging-format)`},
		{name: "unknown logging format from flag with file", file: header, args: []string{"--logging-format=xml"},
			want: `invalid configuration: logging.format: Invalid value: "xml": Unsupported log format (flag --logging-format)`},
		{name: "unknown logging format in file", file: header + "logging:\n  format: xml\n",
			want: `invalid configuration: logging.format: Invalid value: "xml": Unsupported log format`},
		{name: "alpha logging option without its gate", args: []string{"--log-json-split-stream"},
			want: `invalid configuration: logging.options.json.splitStream: Forbidden: Feature LoggingAlphaOptions is disabled (flag --log-json-split-stream)`},
		{name: "min sync period above sync period", args: []string{"--iptables-min-sync-period=1m"},
			want: `invalid configuration: iptables.syncPeriod: Invalid value: "30s": must be greater than or equal to iptables.minSyncPeriod (1m0s) (flag --iptables-sync-period)`},
		{name: "negative sync period", args: []string{"--iptables-sync-period=-1s"},
			want: `iptables.syncPeriod: Invalid value: "-1s": must be greater than 0`, sub: true},
		{name: "blank hostname override with file", file: header, args: []string{"--hostname-override=  "},
			want: `invalid configuration: hostnameOverride: Invalid value: "  ": must not be blank (flag --hostname-override)`},
		{name: "bridge mode without bridge", args: []string{"--detect-local-mode=BridgeInterface"},
			want: `detectLocal.bridgeInterface: Required value: must be set when detectLocalMode is BridgeInterface (flag --pod-bridge-interface)`, sub: true},
		{name: "bad nodeport address", args: []string{"--nodeport-addresses=10.0.0.0/8,bogus"},
			want: `nodePortAddresses[1]: Invalid value: "bogus": must be a valid CIDR or one of "primary", "localhost", "all" (flag --nodeport-addresses)`, sub: true},
		{name: "several errors on one line", args: []string{"--iptables-masquerade-bit=32", "--oom-score-adj=2000"},
			want: "invalid configuration: iptables.masqueradeBit: Invalid value: 32: must be between 0 and 31 (flag --iptables-masquerade-bit); " +
				"oomScoreAdj: Invalid value: 2000: must be between -1000 and 1000 (flag --oom-score-adj)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.args
			if tc.file != "" {
				args = append([]string{"--config=" + writeFile(t, tc.file)}, args...)
			}
			c, _, _, err := complete(t, args...)
			if err == nil {
				t.Fatalf("want error, got config %+v", c)
			}
			if c != nil {
				t.Errorf("got a config along with the error")
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error is not one line: %q", msg)
			}
			if tc.sub && !strings.Contains(msg, tc.want) || !tc.sub && msg != tc.want {
				t.Errorf("error\n got %s\nwant %s", msg, tc.want)
			}
			var ve *config.ValidationError
			if isValidation := strings.HasPrefix(msg, "invalid configuration: "); errors.As(err, &ve) != isValidation {
				t.Errorf("errors.As(*config.ValidationError) = %v for %q", !isValidation, msg)
			}
		})
	}
}

func TestUnreadableConfigFileNamesPath(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.yaml")
	_, _, _, err := complete(t, "--config="+missing)
	if err == nil || !strings.Contains(err.Error(), missing) || !strings.Contains(err.Error(), "--config") {
		t.Errorf("error %v should name --config and %s", err, missing)
	}
	// A file with an error names its path too.
	bad := writeFile(t, header+"iptables:\n  masqueradeBit: fourteen\n")
	_, _, _, err = complete(t, "--config="+bad)
	if err == nil || !strings.Contains(err.Error(), bad) || !strings.Contains(err.Error(), "iptables.masqueradeBit") {
		t.Errorf("error %v should name %s and the field", err, bad)
	}
}

func TestParseRejectsMalformedFlagValues(t *testing.T) {
	tests := [][]string{
		{"--bind-address=node1"},
		{"--healthz-bind-address=localhost:10256"},
		{"--metrics-bind-address=127.0.0.1:0"},
		{"--iptables-backend=nftables"},
		{"--feature-gates=A"},
		{"--feature-gates=A=maybe"},
		{"--iptables-sync-period=soon"},
		{"--iptables-masquerade-bit=x"},
	}
	for _, args := range tests {
		_, _, err := newFlags(t, args...)
		flagName := strings.SplitN(strings.TrimPrefix(args[0], "--"), "=", 2)[0]
		if err == nil || !strings.Contains(err.Error(), flagName) {
			t.Errorf("%v: error %v should name the flag", args, err)
		}
	}
}

func TestConfigFilePrecedence(t *testing.T) {
	file := writeFile(t, header+`hostnameOverride: file-node
clusterCIDR: 10.1.0.0/16
iptables:
  masqueradeBit: 15
  syncPeriod: 10s
clientConnection:
  kubeconfig: /from/file
logging:
  verbosity: 4
  vmodule:
  - filePattern: rules*
    verbosity: 6
`)
	tests := []struct {
		name        string
		args        []string
		check       func(c *config.Config) bool
		wantIgnored []string
	}{
		{
			name: "file alone",
			args: []string{"--config=" + file},
			check: func(c *config.Config) bool {
				return c.HostnameOverride == "file-node" && c.MasqueradeBit == 15 && c.SyncPeriod == 10*time.Second &&
					c.Kubeconfig == "/from/file" && c.Logging.Verbosity == 4 && vmodule(c) == "rules*=6" && c.Logging.Format == "text"
			},
		},
		{
			name:  "hostname-override flag wins over file",
			args:  []string{"--config=" + file, "--hostname-override=Flag-Node"},
			check: func(c *config.Config) bool { return c.HostnameOverride == "flag-node" },
		},
		{
			name:        "cluster-cidr flag is ignored, file wins",
			args:        []string{"--config=" + file, "--cluster-cidr=10.2.0.0/16"},
			check:       func(c *config.Config) bool { return c.ClusterCIDRs[0] == netip.MustParsePrefix("10.1.0.0/16") },
			wantIgnored: []string{"cluster-cidr"},
		},
		{
			name: "every file-only flag is ignored",
			args: []string{"--config=" + file, "--iptables-masquerade-bit=3", "--iptables-sync-period=1m",
				"--kubeconfig=/from/flag", "--proxy-mode=ipvs", "--cluster-cidr=bogus"},
			check: func(c *config.Config) bool {
				return c.MasqueradeBit == 15 && c.SyncPeriod == 10*time.Second && c.Kubeconfig == "/from/file" && c.Mode == "iptables"
			},
			wantIgnored: []string{"cluster-cidr", "iptables-masquerade-bit", "iptables-sync-period", "kubeconfig", "proxy-mode"},
		},
		{
			name:  "master and iptables-backend apply with a file",
			args:  []string{"--config=" + file, "--master=https://api:6443", "--iptables-backend=legacy"},
			check: func(c *config.Config) bool { return c.Master == "https://api:6443" && c.IPTablesBackend == "legacy" },
		},
		{
			name: "logging flags override the file",
			args: []string{"--config=" + file, "-v=2", "--vmodule=proxier*=9", "--log-flush-frequency=2s"},
			check: func(c *config.Config) bool {
				return c.Logging.Verbosity == 2 && vmodule(c) == "proxier*=9,rules*=6" && c.Logging.Format == "text" &&
					c.Logging.FlushFrequency.Duration.Duration == 2*time.Second
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, o, fs, err := complete(t, tc.args...)
			if err != nil {
				t.Fatalf("Complete: %v", err)
			}
			if !tc.check(c) {
				t.Errorf("unexpected config: %+v", c)
			}
			if got := o.ignoredFlags(fs); !reflect.DeepEqual(got, tc.wantIgnored) {
				t.Errorf("ignored flags = %v, want %v", got, tc.wantIgnored)
			}
		})
	}
}

func TestIgnoredFlagsAreLoggedAsWarnings(t *testing.T) {
	file := writeFile(t, header)
	o, fs, err := newFlags(t, "--config="+file, "--cluster-cidr=10.2.0.0/16", "--hostname-override=n1")
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	// A command run by another test may have installed component-base's logger,
	// which would take klog's output away from buf.
	klog.ClearLogger()
	klog.LogToStderr(false)
	klog.SetOutput(&buf)
	t.Cleanup(func() {
		klog.SetOutput(os.Stderr)
		klog.LogToStderr(true)
	})
	if _, err := o.Complete(context.Background(), fs); err != nil {
		t.Fatal(err)
	}
	klog.Flush()
	out := buf.String()
	if !strings.HasPrefix(out, "W") || !strings.Contains(out, "--cluster-cidr") {
		t.Errorf("no warning about --cluster-cidr in log output %q", out)
	}
	if strings.Contains(out, "--hostname-override") {
		t.Errorf("--hostname-override applies with --config and must not be reported as ignored: %q", out)
	}
}

func TestKubeadmSampleLoads(t *testing.T) {
	c, _, _, err := complete(t, "--config=../config/testdata/kubeadm.yaml", "--hostname-override=worker-1")
	if err != nil {
		t.Fatal(err)
	}
	if c.Kubeconfig != "/var/lib/kube-proxy/kubeconfig.conf" || c.HostnameOverride != "worker-1" ||
		c.ClusterCIDRs[0] != netip.MustParsePrefix("10.244.0.0/16") || c.MasqueradeBit != 14 ||
		c.SyncPeriod != 30*time.Second || c.HealthzBindAddress != "0.0.0.0:10256" {
		t.Errorf("unexpected config from the kubeadm sample: %+v", c)
	}
}

func TestWriteConfigFile(t *testing.T) {
	out := filepath.Join(t.TempDir(), "written.yaml")
	c, o, _, err := complete(t, "--write-config-to="+out, "--iptables-masquerade-bit=10",
		"--cluster-cidr=10.9.0.0/16", "--hostname-override=Writer", "--healthz-port=0")
	if err != nil {
		t.Fatal(err)
	}
	if err := o.WriteConfigFile(); err != nil {
		t.Fatal(err)
	}
	// Reading the written file back must give the same configuration.
	back, _, _, err := complete(t, "--config="+out)
	if err != nil {
		t.Fatalf("written config does not load: %v", err)
	}
	// An empty healthz address is re-defaulted when read from a file, as upstream; the
	// file read back is, of course, recorded as the config file.
	c.HealthzBindAddress = "0.0.0.0:10256"
	c.ConfigFile = out
	if !reflect.DeepEqual(back, c) {
		t.Errorf("round trip through --write-config-to\n got %+v\nwant %+v", back, c)
	}

	if err := NewOptions().WriteConfigFile(); err == nil {
		t.Errorf("WriteConfigFile before Complete should fail")
	}
}

func TestFeatureGatesValue(t *testing.T) {
	tests := []struct {
		in      []string
		want    map[string]bool
		wantErr bool
	}{
		{in: []string{"A=true"}, want: map[string]bool{"A": true}},
		{in: []string{"A=true,B=false", "A=false"}, want: map[string]bool{"A": false, "B": false}},
		{in: []string{" A = true ,"}, want: map[string]bool{"A": true}},
		{in: []string{"A"}, wantErr: true},
		{in: []string{"A=yes"}, wantErr: true},
	}
	for _, tc := range tests {
		m := map[string]bool{"Default": true}
		v := &featureGatesValue{m: &m}
		var err error
		for _, s := range tc.in {
			if err = v.Set(s); err != nil {
				break
			}
		}
		if (err != nil) != tc.wantErr {
			t.Errorf("%v: err = %v, wantErr %v", tc.in, err, tc.wantErr)
			continue
		}
		if !tc.wantErr && !reflect.DeepEqual(m, tc.want) {
			t.Errorf("%v: got %v, want %v (String %q)", tc.in, m, tc.want, v.String())
		}
	}
}
