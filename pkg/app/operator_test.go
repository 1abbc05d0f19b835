package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	apiversion "k8s.io/apimachinery/pkg/version"
	logsapi "k8s.io/component-base/logs/api/v1"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/kproxy-dev/kproxy/pkg/config"
)

// A config file with fields kproxy does not know (a typo, or a field a newer kubeadm
// writes) is used, as upstream uses it, and the fields are named in a warning.
func TestConfigFileWithUnknownFieldsLoadsWithWarning(t *testing.T) {
	file := writeFile(t, header+"clusterCIDR: 10.1.0.0/16\nclusterCIDR: 10.2.0.0/16\niptables:\n  masqueradeBits: 3\n  masqueradeAll: true\nnewerField: {}\n")
	o, fs, err := newFlags(t, "--config="+file)
	if err != nil {
		t.Fatal(err)
	}
	logger := bufferedLogger(t)
	c, err := o.Complete(klog.NewContext(context.Background(), logger), fs)
	if err != nil {
		t.Fatalf("Complete: %v, want the file used", err)
	}
	if !c.MasqueradeAll || c.MasqueradeBit != 14 || c.ClusterCIDRs[0] != netip.MustParsePrefix("10.2.0.0/16") {
		t.Errorf("known fields not applied as a lenient decoder reads them: %+v", c)
	}
	out := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
	for _, want := range []string{"Using lenient decoding as strict decoding failed", file,
		`key \"clusterCIDR\" already set`, `unknown field \"iptables.masqueradeBits\"`, `unknown field \"newerField\"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log output lacks %q:\n%s", want, out)
		}
	}
}

// bufferedLogger returns a logger whose output the test can read back.
func bufferedLogger(t *testing.T) klog.Logger {
	return ktesting.NewLogger(t, ktesting.NewConfig(ktesting.BufferLogs(true)))
}

// withLogging applies cfg's logging settings with output to the returned buffer and
// puts klog back as it was when the test ends.
func withLogging(t *testing.T, cfg *config.Config) *bytes.Buffer {
	t.Helper()
	var buf bytes.Buffer
	// Commands run by other tests applied the default settings, which component-base
	// does not let a different configuration replace.
	if err := logsapi.ResetForTest(nil); err != nil {
		t.Fatalf("resetting logging: %v", err)
	}
	t.Cleanup(func() {
		klog.Flush()
		if err := logsapi.ResetForTest(nil); err != nil {
			t.Errorf("resetting logging: %v", err)
		}
		// ResetForTest leaves a text logger installed; other tests capture klog's own output.
		klog.ClearLogger()
	})
	if err := applyLogging(cfg, &logsapi.LoggingOptions{ErrorStream: &buf, InfoStream: &buf}); err != nil {
		t.Fatalf("applyLogging: %v", err)
	}
	return &buf
}

func TestLoggingFormatJSON(t *testing.T) {
	c, _, _, err := complete(t, "--logging-format=json", "-v=2")
	if err != nil {
		t.Fatal(err)
	}
	buf := withLogging(t, c)
	klog.Background().Info("Hello", "node", "n1")
	klog.Background().V(2).Info("Verbose", "n", 2)
	klog.Background().V(3).Info("Too verbose")
	klog.Flush()

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 log lines (-v=2), got %d:\n%s", len(lines), buf)
	}
	for i, want := range []string{"Hello", "Verbose"} {
		var entry map[string]any
		if err := json.Unmarshal([]byte(lines[i]), &entry); err != nil {
			t.Fatalf("line %q is not JSON: %v", lines[i], err)
		}
		if entry["msg"] != want {
			t.Errorf("line %d: msg %v, want %q", i, entry["msg"], want)
		}
	}
	if !strings.Contains(lines[0], `"node":"n1"`) {
		t.Errorf("key/value pair missing from %s", lines[0])
	}
}

func TestLoggingFormatText(t *testing.T) {
	c, _, _, err := complete(t)
	if err != nil {
		t.Fatal(err)
	}
	buf := withLogging(t, c)
	klog.Background().Info("Hello", "node", "n1")
	klog.Flush()
	if out := buf.String(); !strings.HasPrefix(out, "I") || !strings.Contains(out, `"Hello" node="n1"`) {
		t.Errorf("not klog's text format: %q", out)
	}
}

// An unknown format stops the command with one line naming the flag, before any
// other work.
func TestCommandRejectsUnknownLoggingFormat(t *testing.T) {
	cmd := NewCommand()
	cmd.SetArgs([]string{"--logging-format=xml"})
	err := cmd.Execute()
	want := `invalid configuration: logging.format: Invalid value: "xml": Unsupported log format (flag --logging-format)`
	if err == nil || err.Error() != want {
		t.Errorf("error %v, want %s", err, want)
	}
	var ve *config.ValidationError
	if !errors.As(err, &ve) {
		t.Errorf("not a *config.ValidationError: %T", err)
	}
}

func TestVersionFlag(t *testing.T) {
	tests := []struct {
		args []string
		want string // prefix of the output
	}{
		{[]string{"--version"}, "kproxy v"},
		{[]string{"--version=true"}, "kproxy v"},
		{[]string{"--version=raw"}, `version.Info{Major:"`},
		// Before the configuration is looked at, as upstream: it may be what is broken.
		{[]string{"--version", "--logging-format=xml", "--config=/nonexistent"}, "kproxy v"},
	}
	for _, tc := range tests {
		cmd := NewCommand()
		var out bytes.Buffer
		cmd.SetOut(&out)
		cmd.SetArgs(tc.args)
		if err := cmd.Execute(); err != nil {
			t.Errorf("%v: %v", tc.args, err)
			continue
		}
		if !strings.HasPrefix(out.String(), tc.want) || strings.Count(out.String(), "\n") != 1 {
			t.Errorf("%v: output %q, want one line starting %q", tc.args, out.String(), tc.want)
		}
	}

	cmd := NewCommand()
	cmd.SetArgs([]string{"--version=sometimes"})
	if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), "version") {
		t.Errorf("--version=sometimes: error %v, want one naming the flag", err)
	}
	if code := Main(context.Background(), []string{"--version"}); code != 0 {
		t.Errorf("Main --version exit code %d, want 0", code)
	}
}

func TestPrintVersion(t *testing.T) {
	info := apiversion.Info{Major: "1", Minor: "37", GitVersion: "v1.37.2", GitCommit: "abc"}
	var out bytes.Buffer
	if err := printVersion(&out, versionOn, info); err != nil || out.String() != "kproxy v1.37.2\n" {
		t.Errorf("--version printed %q (err %v)", out.String(), err)
	}
	out.Reset()
	if err := printVersion(&out, versionRaw, info); err != nil || !strings.HasPrefix(out.String(), `version.Info{Major:"1", Minor:"37", `) ||
		!strings.Contains(out.String(), `GitCommit:"abc"`) {
		t.Errorf("--version=raw printed %q (err %v)", out.String(), err)
	}
}

func TestVersionLoggedAtStart(t *testing.T) {
	logger := bufferedLogger(t)
	logVersion(logger, apiversion.Info{GitVersion: "v1.37.2", GitCommit: "abc"})
	out := logger.GetSink().(ktesting.Underlier).GetBuffer().String()
	// The value prints as its GitVersion, as upstream's line does.
	if !strings.Contains(out, `Version info version="v1.37.2"`) {
		t.Errorf("version not logged:\n%s", out)
	}
}

// fakeSysctl holds sysctl values in memory.
type fakeSysctl map[string]string

func (f fakeSysctl) Get(name string) (string, error) {
	v, ok := f[name]
	if !ok {
		return "", errors.New("no such sysctl")
	}
	return v, nil
}

func (f fakeSysctl) Set(name, value string) error {
	f[name] = value
	return nil
}

// --init-only and the IPv4 proxier set route_localnet through the same decision, which
// agrees with whether the rules accept node ports on 127.0.0.1.
func TestRouteLocalnetDecision(t *testing.T) {
	const routeLocalnet = "net/ipv4/conf/all/route_localnet"
	tests := []struct {
		name      string
		localhost bool
		addrs     []string
		want      bool
	}{
		{"default: all addresses", true, nil, true},
		{"all keyword", true, []string{"all"}, true},
		{"localhost keyword", true, []string{"localhost"}, true},
		{"CIDR with loopback", true, []string{"10.0.0.0/8", "127.0.0.0/8"}, true},
		{"CIDRs without loopback", true, []string{"10.0.0.0/8"}, false},
		{"primary only", true, []string{"primary"}, false},
		{"IPv6 only", true, []string{"::1/128"}, false},
		{"localhost node ports off", false, nil, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := &config.Config{LocalhostNodePorts: tc.localhost, NodePortAddresses: tc.addrs}
			if got := routeLocalnetNeeded(cfg); got != tc.want {
				t.Errorf("routeLocalnetNeeded = %t, want %t", got, tc.want)
			}
			for _, nodeIP := range []netip.Addr{{}, netip.MustParseAddr("10.1.2.3")} {
				opts, err := RuleOptions(cfg, v1.IPv4Protocol, nil, nodeIP)
				if err != nil {
					t.Fatal(err)
				}
				if opts.LocalhostNodePorts != tc.want {
					t.Errorf("node IP %v: rules' LocalhostNodePorts = %t, want %t", nodeIP, opts.LocalhostNodePorts, tc.want)
				}
			}

			sysctl := fakeSysctl{routeLocalnet: "0"}
			_, ctx := ktesting.NewTestContext(t)
			if err := ensureRouteLocalnet(ctx, cfg, sysctl); err != nil {
				t.Fatal(err)
			}
			if got := sysctl[routeLocalnet] == "1"; got != tc.want {
				t.Errorf("route_localnet set = %t, want %t", got, tc.want)
			}
		})
	}
}

// The metrics server is bounded like the probe servers, yet leaves room for pprof,
// whose profile and trace handlers refuse a duration the write timeout cannot fit.
func TestMetricsServerLimits(t *testing.T) {
	l := metricsServerLimits
	if l.ReadHeaderTimeout <= 0 || l.ReadTimeout <= 0 || l.IdleTimeout <= 0 || l.MaxConns <= 0 {
		t.Errorf("metrics server left unbounded: %+v", l)
	}
	const pprofDefaultSeconds = 30 * time.Second
	if l.WriteTimeout <= pprofDefaultSeconds {
		t.Errorf("write timeout %s does not fit pprof's default %s profile", l.WriteTimeout, pprofDefaultSeconds)
	}
}
