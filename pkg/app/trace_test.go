package app

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/internal/netnstest"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/rules/rulestest"
	"github.com/kproxy-dev/kproxy/pkg/ruleset"
)

// traceNodeIP is node-1's address in testdata/trace/manifests.yaml.
const traceNodeIP = "192.168.10.11"

// traceBackends are the backends whose iptables-save output testdata/trace holds.
var traceBackends = []iptables.Backend{iptables.BackendLegacy, iptables.BackendNFT}

// traceCase is one packet traced through testdata/trace's rules and what the trace must
// say about it.
type traceCase struct {
	name, src, dst, proto string
	// action is the verdict's action; reason a part of its reason.
	action, reason string
	// endpoints are as the text prints them: "10.244.1.3:53 (50%), ...".
	endpoints string
	// masquerade is "yes", "no" or "some paths".
	masquerade string
}

var traceCases = []traceCase{
	{name: "pod-to-cluster-ip", src: "10.244.1.5", dst: "10.96.0.10:53", proto: "udp",
		action: "DNAT", reason: "one of 2 endpoints", endpoints: "10.244.1.3:53 (50%), 10.244.2.3:53 (50%)", masquerade: "no"},
	{name: "pod-to-service-without-endpoints", src: "10.244.1.5", dst: "10.96.0.99:80", proto: "tcp",
		action: "REJECT", reason: `filter KUBE-SERVICES "demo/pending:http has no endpoints"`, masquerade: "no"},
	{name: "outside-to-node-port-without-endpoints", src: "203.0.113.9", dst: traceNodeIP + ":30099", proto: "tcp",
		action: "REJECT", reason: `filter KUBE-EXTERNAL-SERVICES "demo/pending:http has no endpoints"`, masquerade: "no"},
	{name: "outside-to-local-policy-node-port", src: "203.0.113.9", dst: traceNodeIP + ":30090", proto: "tcp",
		action: "DROP", reason: `"demo/local:http has no local endpoints"`, masquerade: "no"},
	{name: "outside-to-local-policy-load-balancer", src: "203.0.113.9", dst: "198.51.100.90:80", proto: "tcp",
		action: "DROP", reason: `"demo/local:http has no local endpoints"`, masquerade: "no"},
	{name: "pod-to-local-policy-load-balancer", src: "10.244.1.5", dst: "198.51.100.90:80", proto: "tcp",
		action: "DNAT", reason: "10.244.2.9:8080", endpoints: "10.244.2.9:8080 (100%)", masquerade: "no"},
	{name: "node-to-node-port", src: "node", dst: traceNodeIP + ":30080", proto: "tcp",
		action: "DNAT", reason: "one of 3 endpoints", endpoints: "10.244.1.4:8080 (33.3%), 10.244.2.4:8080 (33.3%), 10.244.2.5:8080 (33.3%)", masquerade: "yes"},
	{name: "outside-to-node-port", src: "203.0.113.9", dst: traceNodeIP + ":30080", proto: "tcp",
		action: "DNAT", reason: "one of 3 endpoints", endpoints: "10.244.1.4:8080 (33.3%), 10.244.2.4:8080 (33.3%), 10.244.2.5:8080 (33.3%)", masquerade: "yes"},
	{name: "pod-to-itself-through-cluster-ip", src: "10.244.1.4", dst: "10.96.0.80:80", proto: "tcp",
		action: "DNAT", reason: "one of 3 endpoints", endpoints: "10.244.1.4:8080 (33.3%), 10.244.2.4:8080 (33.3%), 10.244.2.5:8080 (33.3%)", masquerade: "some paths"},
	{name: "outside-range-to-load-balancer", src: "198.18.0.1", dst: "198.51.100.7:443", proto: "tcp",
		action: "DROP", reason: `filter KUBE-PROXY-FIREWALL "demo/api:https traffic not accepted by KUBE-FW-`, masquerade: "no"},
	{name: "in-range-to-load-balancer", src: "203.0.113.9", dst: "198.51.100.7:443", proto: "tcp",
		action: "DNAT", reason: "one of 2 endpoints", endpoints: "10.244.1.7:8443 (50%), 10.244.2.7:8443 (50%)", masquerade: "yes"},
	{name: "outside-to-health-check-node-port", src: "203.0.113.9", dst: traceNodeIP + ":32090", proto: "tcp",
		action: "ACCEPT", reason: `"demo/local:http health check node port"`, masquerade: "no"},
	{name: "not-a-service", src: "10.244.1.5", dst: "10.96.0.11:80", proto: "tcp",
		action: "NOT_A_SERVICE", reason: "no rule of nat KUBE-SERVICES", masquerade: "no"},
}

// check compares a report with the case.
func (tc traceCase) check(t *testing.T, r *traceReport) {
	t.Helper()
	var eps []string
	for _, e := range r.Endpoints {
		eps = append(eps, e.Address+" ("+percent(e.Probability)+")")
	}
	if got := strings.Join(eps, ", "); got != tc.endpoints {
		t.Errorf("%s: endpoints %q, want %q", tc.name, got, tc.endpoints)
	}
	if r.Verdict.Action != tc.action || !strings.Contains(r.Verdict.Reason, tc.reason) {
		t.Errorf("%s: verdict %s (%s), want %s (%s)", tc.name, r.Verdict.Action, r.Verdict.Reason, tc.action, tc.reason)
	}
	if r.Masquerade != tc.masquerade {
		t.Errorf("%s: masquerade %s (%v), want %s", tc.name, r.Masquerade, r.MasqueradeReasons, tc.masquerade)
	}
}

// runTraceCommand runs `kproxy trace` with args and returns what it printed.
func runTraceCommand(t *testing.T, args ...string) string {
	t.Helper()
	cmd := NewCommand()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetArgs(append([]string{"trace"}, args...))
	if err := cmd.Execute(); err != nil {
		t.Fatalf("kproxy trace %v: %v (stderr %s)", args, err, errOut.String())
	}
	return out.String()
}

// TestTraceSaves traces the cases through the committed iptables-save output of both
// backends, with the command as an engineer runs it: every case gives the same report
// on both, the text output is pinned by golden files, and the JSON document of a
// ClusterIP trace too.
func TestTraceSaves(t *testing.T) {
	for _, tc := range traceCases {
		t.Run(tc.name, func(t *testing.T) {
			texts := map[iptables.Backend]string{}
			for _, backend := range traceBackends {
				file := filepath.Join("testdata", "trace", string(backend)+".save")
				args := []string{tc.src, tc.dst, "--proto", tc.proto, "--from-file", file, "--node-ip", traceNodeIP}
				var report traceReport
				doc := runTraceCommand(t, append(args, "-o", "json")...)
				if err := json.Unmarshal([]byte(doc), &report); err != nil {
					t.Fatalf("%s: decoding the JSON output: %v\n%s", backend, err, doc)
				}
				tc.check(t, &report)
				// The source of the rules is the one line that differs between backends.
				texts[backend] = strings.Replace(runTraceCommand(t, args...), file, "SAVE", 1)
				if tc.name == "pod-to-cluster-ip" {
					rulestest.Golden(t, "trace/"+tc.name+".json", strings.Replace(doc, file, "SAVE", 1))
				}
			}
			if texts[iptables.BackendLegacy] != texts[iptables.BackendNFT] {
				t.Errorf("legacy and nft saves trace differently:\n%s", rulestest.Diff(texts[iptables.BackendLegacy], texts[iptables.BackendNFT]))
			}
			rulestest.Golden(t, "trace/"+tc.name+".txt", texts[iptables.BackendLegacy])
		})
	}
}

// TestTraceTextReadsWell pins the parts of the text output an on-call engineer reads
// first, on a real save.
func TestTraceTextReadsWell(t *testing.T) {
	out := runTraceCommand(t, "10.244.1.5", "10.96.0.10:53", "--proto", "udp",
		"--from-file", "testdata/trace/nft.save", "--node-ip", traceNodeIP)
	for _, want := range []string{
		"packet 10.244.1.5 -> 10.96.0.10:53/udp (arriving from a pod or another host: nat PREROUTING)\n",
		`nat KUBE-SERVICES  "kube-system/kube-dns:dns cluster IP" -> KUBE-SVC-`,
		"path 1 of 2 (50%):\n",
		`"kube-system/kube-dns:dns -> 10.244.1.3:53" (random, 50%) -> KUBE-SEP-`,
		"DNAT to 10.244.1.3:53",
		"endpoints (DNAT): 10.244.1.3:53 (50%), 10.244.2.3:53 (50%)\n",
		"masquerade: no\n",
		"the source 10.244.1.5 is in 10.244.0.0/16",
		"verdict: DNAT to one of 2 endpoints\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestParseTraceRequest(t *testing.T) {
	opts := func(edit func(o *traceOptions)) *traceOptions {
		o := &traceOptions{proto: "tcp", backend: "auto", output: "text"}
		if edit != nil {
			edit(o)
		}
		return o
	}
	for _, tc := range []struct {
		name string
		args []string
		opts *traceOptions
		want string // error substring; "" for none
	}{
		{"pod to cluster IP", []string{"10.244.1.5", "10.96.0.10:53"}, opts(nil), ""},
		{"node", []string{"node", "192.168.10.11:30080"}, opts(nil), ""},
		{"IPv6", []string{"fd00:10:244::5", "[fd00:10:96::10]:53"}, opts(nil), ""},
		{"no port", []string{"10.244.1.5", "10.96.0.10"}, opts(nil), "DST:PORT"},
		{"port 0", []string{"10.244.1.5", "10.96.0.10:0"}, opts(nil), "port 0"},
		{"bad source", []string{"pod-a", "10.96.0.10:53"}, opts(nil), "SRC"},
		{"mixed families", []string{"10.244.1.5", "[fd00::10]:53"}, opts(nil), "different IP families"},
		{"protocol", []string{"10.244.1.5", "10.96.0.10:53"}, opts(func(o *traceOptions) { o.proto = "icmp" }), "--proto"},
		{"backend", []string{"10.244.1.5", "10.96.0.10:53"}, opts(func(o *traceOptions) { o.backend = "ipvs" }), "--iptables-backend"},
		{"output", []string{"10.244.1.5", "10.96.0.10:53"}, opts(func(o *traceOptions) { o.output = "yaml" }), "-o"},
		{"node IP", []string{"10.244.1.5", "10.96.0.10:53"}, opts(func(o *traceOptions) { o.nodeIPs = []string{"node-1"} }), "--node-ip"},
		{"node IPs of the other family only", []string{"10.244.1.5", "10.96.0.10:53"}, opts(func(o *traceOptions) { o.nodeIPs = []string{"fd00::1"} }), "family"},
		{"interface of the node's packets", []string{"node", "10.96.0.10:53"}, opts(func(o *traceOptions) { o.inIface = "eth0" }), "--in-interface"},
		{"file without node IPs", []string{"10.244.1.5", "10.96.0.10:53"}, opts(func(o *traceOptions) { o.fromFile = "x.save" }), "--node-ip"},
	} {
		_, err := parseTraceRequest(tc.args, tc.opts)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
	}
}

// TestTraceRefusesPartialRules: a save without the filter table, or with a rule the
// tracer does not model, is an error naming what is missing, never a trace that leaves
// rules out.
func TestTraceRefusesPartialRules(t *testing.T) {
	full, err := os.ReadFile("testdata/trace/legacy.save")
	if err != nil {
		t.Fatal(err)
	}
	natOnly, _, _ := strings.Cut(string(full), "*filter")
	foreign := strings.Replace(string(full), "-A FORWARD ", "-A FORWARD -m owner --uid-owner 0 -j ACCEPT\n-A FORWARD ", 1)
	for name, tc := range map[string]struct{ save, want string }{
		"nat only":       {natOnly, "no filter table"},
		"unknown match":  {foreign, `filter FORWARD [-m owner --uid-owner 0 -j ACCEPT]: match "-m owner" not modelled`},
		"nft incomplete": {"# Table `nat' is incompatible, use 'nft' tool.\n" + string(full), "could not show a table"},
	} {
		file := filepath.Join(t.TempDir(), "rules.save")
		if err := os.WriteFile(file, []byte(tc.save), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := NewCommand()
		cmd.SetOut(&bytes.Buffer{})
		cmd.SetErr(&bytes.Buffer{})
		cmd.SetArgs([]string{"trace", "10.244.1.5", "10.96.0.10:53", "--proto", "udp", "--from-file", file, "--node-ip", traceNodeIP})
		if err := cmd.Execute(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", name, err, tc.want)
		}
	}
}

// TestTraceLiveSave renders testdata/trace/manifests.yaml with `kproxy render`, applies
// it in a fresh network namespace with each backend's iptables-restore (and the jumps
// from built-in chains, as the proxier ensures them), reads it back with iptables-save
// and traces the cases through what the kernel printed. With -update it rewrites
// testdata/trace/<backend>.save, the files the other tests trace without root.
func TestTraceLiveSave(t *testing.T) {
	for _, backend := range traceBackends {
		t.Run(string(backend), func(t *testing.T) {
			netnstest.RequireRoot(t)
			for _, tool := range []string{"", "restore", "save"} {
				if _, err := exec.LookPath(iptables.BinaryName(v1.IPv4Protocol, backend, tool)); err != nil {
					t.Skipf("skipping: %s backend not installed: %v", backend, err)
				}
			}
			cmd := NewCommand()
			var payload bytes.Buffer
			cmd.SetOut(&payload)
			cmd.SetErr(&bytes.Buffer{})
			cmd.SetArgs([]string{"render", "-f", "testdata/trace/manifests.yaml", "--node-name", "node-1", "--cluster-cidr", "10.244.0.0/16"})
			if err := cmd.Execute(); err != nil {
				t.Fatalf("render: %v", err)
			}
			ns := netnstest.New(t, "kpx-trace")
			var save []byte
			if err := ns.Do(func() error {
				ctx := context.Background()
				ipt, err := iptables.New(v1.IPv4Protocol, backend, 5*time.Second)
				if err != nil {
					return err
				}
				if err := ipt.Restore(ctx, payload.Bytes()); err != nil {
					return err
				}
				for _, table := range []string{"nat", "filter"} {
					b, err := ipt.Save(ctx, table)
					if err != nil {
						return err
					}
					save = append(save, b...)
				}
				return nil
			}); err != nil {
				t.Fatalf("programming and saving the rules in %s: %v", ns.Name(), err)
			}
			if rulestest.Updating() {
				if err := os.WriteFile(filepath.Join("testdata", "trace", string(backend)+".save"), save, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			tables, err := ruleset.ParseSave(save)
			if err != nil {
				t.Fatalf("reading the save: %v\n%s", err, save)
			}
			for _, tc := range traceCases {
				o := &traceOptions{proto: tc.proto, backend: "auto", output: "text", nodeIPs: []string{traceNodeIP}}
				req, err := parseTraceRequest([]string{tc.src, tc.dst}, o)
				if err != nil {
					t.Fatal(err)
				}
				report, err := traceRules(tables, "the live save", req, req.nodeIPs)
				if err != nil {
					t.Errorf("%s: %v", tc.name, err)
					continue
				}
				tc.check(t, report)
			}
		})
	}
}
