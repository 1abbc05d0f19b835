package nodesetup

import (
	"context"
	"errors"
	"maps"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/klog/v2/ktesting"

	"github.com/kproxy-dev/kproxy/pkg/config"
)

// The tests lay out a root directory like / with the files under /proc and
// /sys they need. Real procfs and sysfs files read back with a trailing
// newline; the code writes values without one. So a file that still ends
// in "\n" was not written, which lets the tests tell "left alone" from
// "rewritten with the same value" by looking at the files alone.

const (
	maxPath         = "proc/sys/net/netfilter/nf_conntrack_max"
	hashsizePath    = "sys/module/nf_conntrack/parameters/hashsize"
	establishedPath = "proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established"
	closeWaitPath   = "proc/sys/net/netfilter/nf_conntrack_tcp_timeout_close_wait"
	beLiberalPath   = "proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal"
	udpPath         = "proc/sys/net/netfilter/nf_conntrack_udp_timeout"
	udpStreamPath   = "proc/sys/net/netfilter/nf_conntrack_udp_timeout_stream"
	localnetPath    = "proc/sys/net/ipv4/conf/all/route_localnet"
	oomPath         = "proc/self/oom_score_adj"
	onlinePath      = "sys/devices/system/cpu/online"
)

// kernelDefaults are a freshly booted kernel's conntrack settings, as read
// from the files.
var kernelDefaults = map[string]string{
	maxPath:         "65536\n",
	hashsizePath:    "16384\n",
	establishedPath: "432000\n",
	closeWaitPath:   "60\n",
	beLiberalPath:   "0\n",
	udpPath:         "30\n",
	udpStreamPath:   "120\n",
}

// kubeProxyDefaults is KubeProxyConfiguration's default conntrack section.
var kubeProxyDefaults = config.ConntrackConfig{
	MaxPerCore:            32768,
	Min:                   131072,
	TCPEstablishedTimeout: 24 * time.Hour,
	TCPCloseWaitTimeout:   time.Hour,
}

// newRoot returns a temporary root holding files (path relative to the root
// -> content).
func newRoot(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for rel, content := range files {
		p := filepath.Join(root, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

// readRoot returns the content of every file under root, keyed like newRoot's
// files.
func readRoot(t *testing.T, root string) map[string]string {
	t.Helper()
	got := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, p)
		if err != nil {
			return err
		}
		got[rel] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// with returns a copy of base with changes applied; an empty value deletes
// the file.
func with(base map[string]string, changes map[string]string) map[string]string {
	m := maps.Clone(base)
	for k, v := range changes {
		if v == "" {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	return m
}

func diffFiles(t *testing.T, want, got map[string]string) {
	t.Helper()
	for k, w := range want {
		if g, ok := got[k]; !ok {
			t.Errorf("%s: missing, want %q", k, w)
		} else if g != w {
			t.Errorf("%s = %q, want %q", k, g, w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s = %q, want no such file", k, g)
		}
	}
}

func testContext(t *testing.T) context.Context {
	return klog.NewContext(context.Background(), ktesting.NewLogger(t, ktesting.NewConfig()))
}

func TestConntrackMax(t *testing.T) {
	tests := []struct {
		name       string
		maxPerCore int32
		min        int32
		cpus       int
		want       int64
	}{
		{"maxPerCore 0 leaves it alone", 0, 131072, 4, 0},
		{"scaled below min gives min", 32768, 131072, 2, 131072},
		{"scaled equal to min", 32768, 131072, 4, 131072},
		{"scaled above min", 32768, 131072, 8, 262144},
		{"scaled at the cap", 32768, 131072, 32, 1048576},
		{"scaled above the cap is capped", 32768, 131072, 64, 1048576},
		{"min above the cap is honoured", 32768, 2000000, 4, 2000000},
		{"scaled above the cap wins over a larger min", 32768, 2000000, 64, 1048576},
		{"no min", 1000, 0, 3, 3000},
		{"no int32 overflow", 1 << 30, 0, 1024, 1048576},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := config.ConntrackConfig{MaxPerCore: tc.maxPerCore, Min: tc.min}
			if got := ConntrackMax(c, tc.cpus); got != tc.want {
				t.Errorf("ConntrackMax(%d) with maxPerCore %d, min %d = %d, want %d", tc.cpus, tc.maxPerCore, tc.min, got, tc.want)
			}
		})
	}
}

func TestApplyConntrack(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string // changes to kernelDefaults
		cfg   config.ConntrackConfig
		cpus  int
		want  map[string]string // changes to the starting files
	}{
		{
			name: "kube-proxy defaults on 4 CPUs",
			cfg:  kubeProxyDefaults,
			cpus: 4,
			want: map[string]string{
				maxPath:         "131072",
				hashsizePath:    "32768",
				establishedPath: "86400",
				closeWaitPath:   "3600",
			},
		},
		{
			name: "scaled max on 16 CPUs",
			cfg:  kubeProxyDefaults,
			cpus: 16,
			want: map[string]string{
				maxPath:         "524288",
				hashsizePath:    "131072",
				establishedPath: "86400",
				closeWaitPath:   "3600",
			},
		},
		{
			name: "capped max on 64 CPUs",
			cfg:  config.ConntrackConfig{MaxPerCore: 32768, Min: 131072},
			cpus: 64,
			want: map[string]string{maxPath: "1048576", hashsizePath: "262144"},
		},
		{
			name:  "a larger max is never lowered, hash size still raised",
			files: map[string]string{maxPath: "2000000\n"},
			cfg:   config.ConntrackConfig{MaxPerCore: 32768, Min: 131072},
			cpus:  4,
			want:  map[string]string{hashsizePath: "32768"},
		},
		{
			name:  "an equal max is left alone",
			files: map[string]string{maxPath: "131072\n"},
			cfg:   config.ConntrackConfig{MaxPerCore: 32768, Min: 131072},
			cpus:  4,
			want:  map[string]string{hashsizePath: "32768"},
		},
		{
			name:  "a large enough hash size is left alone",
			files: map[string]string{hashsizePath: "32768\n"},
			cfg:   config.ConntrackConfig{MaxPerCore: 32768, Min: 131072},
			cpus:  4,
			want:  map[string]string{maxPath: "131072"},
		},
		{
			name:  "an unreadable max is written over",
			files: map[string]string{maxPath: "garbage\n"},
			cfg:   config.ConntrackConfig{MaxPerCore: 32768, Min: 131072},
			cpus:  4,
			want:  map[string]string{maxPath: "131072", hashsizePath: "32768"},
		},
		{
			// Without nf_conntrack loaded there are no such files: nothing
			// may be read or written when MaxPerCore is 0.
			name:  "maxPerCore 0 leaves max and hash size alone",
			files: map[string]string{hashsizePath: ""},
			cfg:   config.ConntrackConfig{MaxPerCore: 0, Min: 131072},
			cpus:  4,
		},
		{
			name:  "equal timeouts are not rewritten",
			files: map[string]string{establishedPath: "86400\n", closeWaitPath: "3600\n"},
			cfg:   config.ConntrackConfig{TCPEstablishedTimeout: 24 * time.Hour, TCPCloseWaitTimeout: time.Hour},
		},
		{
			name: "zero and sub-second timeouts leave the sysctls alone",
			cfg:  config.ConntrackConfig{TCPEstablishedTimeout: 0, TCPCloseWaitTimeout: 500 * time.Millisecond, UDPTimeout: -time.Second},
		},
		{
			name: "timeouts are written in whole seconds",
			cfg:  config.ConntrackConfig{TCPCloseWaitTimeout: 90*time.Second + 900*time.Millisecond},
			want: map[string]string{closeWaitPath: "90"},
		},
		{
			name: "UDP timeouts",
			cfg:  config.ConntrackConfig{UDPTimeout: time.Minute, UDPStreamTimeout: 3 * time.Minute},
			want: map[string]string{udpPath: "60", udpStreamPath: "180"},
		},
		{
			name: "be_liberal is set",
			cfg:  config.ConntrackConfig{TCPBeLiberal: true},
			want: map[string]string{beLiberalPath: "1"},
		},
		{
			name:  "be_liberal already set is left alone",
			files: map[string]string{beLiberalPath: "1\n"},
			cfg:   config.ConntrackConfig{TCPBeLiberal: true},
		},
		{
			name:  "be_liberal false never resets it",
			files: map[string]string{beLiberalPath: "1\n"},
			cfg:   config.ConntrackConfig{TCPBeLiberal: false},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			start := with(kernelDefaults, tc.files)
			root := newRoot(t, start)
			if err := ApplyConntrack(testContext(t), NewProcSysctl(root), root, tc.cfg, tc.cpus); err != nil {
				t.Fatalf("ApplyConntrack: %v", err)
			}
			diffFiles(t, with(start, tc.want), readRoot(t, root))
		})
	}
}

func TestApplyConntrackErrors(t *testing.T) {
	tests := []struct {
		name  string
		files map[string]string // changes to kernelDefaults
		cfg   config.ConntrackConfig
		cpus  int
		want  string
	}{
		{
			name:  "unreadable hash size is fatal",
			files: map[string]string{hashsizePath: ""},
			cfg:   kubeProxyDefaults,
			cpus:  4,
			want:  "reading the conntrack hash size",
		},
		{
			name:  "garbage hash size is fatal",
			files: map[string]string{hashsizePath: "lots\n"},
			cfg:   kubeProxyDefaults,
			cpus:  4,
			want:  "reading the conntrack hash size",
		},
		{
			name:  "nf_conntrack not loaded",
			files: map[string]string{maxPath: "", hashsizePath: ""},
			cfg:   kubeProxyDefaults,
			cpus:  4,
			want:  "setting sysctl net/netfilter/nf_conntrack_max",
		},
		{
			name:  "missing timeout sysctl",
			files: map[string]string{udpPath: ""},
			cfg:   config.ConntrackConfig{UDPTimeout: time.Minute},
			want:  "setting sysctl net/netfilter/nf_conntrack_udp_timeout",
		},
		{
			name: "negative maxPerCore",
			cfg:  config.ConntrackConfig{MaxPerCore: -1},
			cpus: 4,
			want: "maxPerCore -1 is negative",
		},
		{
			name: "negative min",
			cfg:  config.ConntrackConfig{Min: -1},
			want: "min -1 is negative",
		},
		{
			name: "no CPUs",
			cfg:  kubeProxyDefaults,
			cpus: 0,
			want: "number of CPUs 0",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := newRoot(t, with(kernelDefaults, tc.files))
			err := ApplyConntrack(testContext(t), NewProcSysctl(root), root, tc.cfg, tc.cpus)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ApplyConntrack = %v, want an error containing %q", err, tc.want)
			}
			var ro *ReadOnlySysfsError
			if errors.As(err, &ro) {
				t.Errorf("ApplyConntrack = %v, a *ReadOnlySysfsError", err)
			}
		})
	}
}

func TestEnableRouteLocalnet(t *testing.T) {
	tests := []struct {
		name  string
		start string // "" = no such file
		want  string // "" = no such file
	}{
		{"off is turned on", "0\n", "1"},
		{"on is left alone", "1\n", "1\n"},
		{"no IPv4 is left alone", "", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files := map[string]string{}
			if tc.start != "" {
				files[localnetPath] = tc.start
			}
			root := newRoot(t, files)
			if err := EnableRouteLocalnet(testContext(t), NewProcSysctl(root)); err != nil {
				t.Fatalf("EnableRouteLocalnet: %v", err)
			}
			want := map[string]string{}
			if tc.want != "" {
				want[localnetPath] = tc.want
			}
			diffFiles(t, want, readRoot(t, root))
		})
	}

	t.Run("write failure", func(t *testing.T) {
		root := newRoot(t, map[string]string{localnetPath: "0\n"})
		s := readOnlySysctl{NewProcSysctl(root)}
		if err := EnableRouteLocalnet(testContext(t), s); err == nil || !strings.Contains(err.Error(), "route_localnet") {
			t.Errorf("EnableRouteLocalnet with a failing write = %v, want an error", err)
		}
	})
}

// readOnlySysctl reads through to a Sysctl and refuses every write, like a
// read-only /proc/sys.
type readOnlySysctl struct{ Sysctl }

func (readOnlySysctl) Set(name, value string) error {
	return errors.New("read-only file system")
}

func TestSetOOMScoreAdj(t *testing.T) {
	root := newRoot(t, map[string]string{oomPath: "0\n"})
	if err := SetOOMScoreAdj(root, -999); err != nil {
		t.Fatalf("SetOOMScoreAdj: %v", err)
	}
	diffFiles(t, map[string]string{oomPath: "-999"}, readRoot(t, root))

	for _, v := range []int32{-1001, 1001} {
		if err := SetOOMScoreAdj(root, v); err == nil {
			t.Errorf("SetOOMScoreAdj(%d) succeeded", v)
		}
	}
	diffFiles(t, map[string]string{oomPath: "-999"}, readRoot(t, root))

	empty := newRoot(t, nil)
	if err := SetOOMScoreAdj(empty, -999); err == nil {
		t.Error("SetOOMScoreAdj without the file succeeded")
	}
	diffFiles(t, map[string]string{}, readRoot(t, empty))
}

func TestProcSysctl(t *testing.T) {
	root := newRoot(t, map[string]string{"proc/sys/net/ipv4/ip_forward": " 0\n"})
	s := NewProcSysctl(root)
	if v, err := s.Get("net/ipv4/ip_forward"); err != nil || v != "0" {
		t.Errorf("Get = %q, %v; want \"0\", nil", v, err)
	}
	if err := s.Set("net/ipv4/ip_forward", "1"); err != nil {
		t.Fatalf("Set: %v", err)
	}
	if v, err := s.Get("net/ipv4/ip_forward"); err != nil || v != "1" {
		t.Errorf("Get after Set = %q, %v; want \"1\", nil", v, err)
	}
	if _, err := s.Get("net/ipv4/nope"); err == nil {
		t.Error("Get of a missing sysctl succeeded")
	}
	if err := s.Set("net/ipv4/nope", "1"); err == nil {
		t.Error("Set of a missing sysctl succeeded")
	}
	for _, name := range []string{"../../etc/passwd", "/etc/passwd", ""} {
		if _, err := s.Get(name); err == nil {
			t.Errorf("Get(%q) succeeded", name)
		}
		if err := s.Set(name, "1"); err == nil {
			t.Errorf("Set(%q) succeeded", name)
		}
	}
	diffFiles(t, map[string]string{"proc/sys/net/ipv4/ip_forward": "1"}, readRoot(t, root))
}

func TestNumCPU(t *testing.T) {
	tests := []struct {
		online string // "" = no such file
		want   int
	}{
		{"0\n", 1},
		{"0-3\n", 4},
		{"0-3,8,10-11\n", 7},
		{"", runtime.NumCPU()},
		{"garbage\n", runtime.NumCPU()},
		{"3-1\n", runtime.NumCPU()},
		{"\n", runtime.NumCPU()},
	}
	for _, tc := range tests {
		files := map[string]string{}
		if tc.online != "" {
			files[onlinePath] = tc.online
		}
		if got := NumCPU(newRoot(t, files)); got != tc.want {
			t.Errorf("NumCPU with online %q = %d, want %d", tc.online, got, tc.want)
		}
	}
}
