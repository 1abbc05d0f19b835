package app

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"
	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/config"
	"github.com/kproxy-dev/kproxy/pkg/conntrack"
	"github.com/kproxy-dev/kproxy/pkg/debugstate"
	"github.com/kproxy-dev/kproxy/pkg/diagnose"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/nfacct"
	"github.com/kproxy-dev/kproxy/pkg/nodesetup"
)

// diagnoseOptions are `kproxy diagnose`'s flags.
type diagnoseOptions struct {
	metricsAddress, healthzAddress string
	backend                        string
	service                        string
	syncPeriod                     time.Duration
	output                         string
}

// DiagnosisFailedError ends a diagnosis that found problems, so that the exit status
// says so.
type DiagnosisFailedError struct{ Problems int }

func (e DiagnosisFailedError) Error() string {
	return fmt.Sprintf("diagnosis found %d problems", e.Problems)
}

func newDiagnoseCommand() *cobra.Command {
	o := diagnoseOptions{metricsAddress: "127.0.0.1:10249", healthzAddress: "127.0.0.1:10256", syncPeriod: 30 * time.Second, output: "text"}
	cmd := &cobra.Command{
		Use:   "diagnose [--service NAMESPACE/NAME]",
		Short: "Check this node for why Services may not answer, with evidence and a fix for each finding",
		Long: `diagnose runs on a node (or in the kproxy pod: host network, privileged) and checks:
the rules in the kernel against what the running kproxy programmed (its debug endpoint),
rules in both iptables backends, the node's settings (ip_forward, br_netfilter,
route_localnet, conntrack fill, the xtables lock) and the daemon's health. With
--service, also that Service's ports, endpoints, chains and stale UDP conntrack entries.
The exit status is 1 when any finding is a problem.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.validate(); err != nil {
				return err
			}
			report := runDiagnosis(cmd.Context(), o)
			if err := writeReport(cmd.OutOrStdout(), report, o.output); err != nil {
				return err
			}
			if report.Failed() {
				return DiagnosisFailedError{Problems: report.Count(diagnose.Problem)}
			}
			return nil
		},
	}
	fs := cmd.Flags()
	fs.StringVar(&o.metricsAddress, "metrics-address", o.metricsAddress, "kproxy's metrics address (its metrics and debug endpoint).")
	fs.StringVar(&o.healthzAddress, "healthz-address", o.healthzAddress, "kproxy's health address (/livez, /readyz).")
	fs.StringVar(&o.backend, "iptables-backend", o.backend, `The backend kproxy uses: legacy or nft; empty: what its debug endpoint says, else detected.`)
	fs.StringVar(&o.service, "service", o.service, "Also diagnose this Service, as NAMESPACE/NAME.")
	fs.DurationVar(&o.syncPeriod, "iptables-sync-period", o.syncPeriod, "kproxy's sync period, which sync ages are judged by.")
	fs.StringVarP(&o.output, "output", "o", o.output, "text or json.")
	return cmd
}

func (o diagnoseOptions) validate() error {
	if o.output != "text" && o.output != "json" {
		return fmt.Errorf("--output must be text or json, not %q", o.output)
	}
	switch o.backend {
	case "", config.IPTablesBackendLegacy, config.IPTablesBackendNFT:
	default:
		return fmt.Errorf("--iptables-backend must be legacy or nft, not %q", o.backend)
	}
	if o.service != "" {
		if ns, name, ok := strings.Cut(o.service, "/"); !ok || ns == "" || name == "" || strings.Contains(name, "/") {
			return fmt.Errorf("--service must be NAMESPACE/NAME, not %q", o.service)
		}
	}
	return nil
}

func writeReport(w io.Writer, r diagnose.Report, output string) error {
	if output == "json" {
		return r.WriteJSON(w)
	}
	return r.WriteText(w)
}

// runDiagnosis gathers what the checks read, in this process's network namespace (the
// node's), and runs them.
func runDiagnosis(ctx context.Context, o diagnoseOptions) diagnose.Report {
	var r diagnose.Report
	state, stateErr := fetchDebugState(ctx, "http://"+o.metricsAddress+debugstate.Path)
	backend, backendErr := diagnosisBackend(ctx, o.backend, state)
	// The families whose node settings matter: those with Services. kproxy proxies IPv6
	// wherever the kernel has it, and an IPv4-only node rightly leaves IPv6 forwarding off.
	families := []v1.IPFamily{v1.IPv4Protocol}
	localhostNodePorts := false
	if stateErr == nil && len(state.Families) > 0 {
		families = nil
		for _, f := range state.Families {
			if f.ServicePorts > 0 || !f.Synced {
				families = append(families, v1.IPFamily(f.Family))
			}
			localhostNodePorts = localhostNodePorts || (f.Family == string(v1.IPv4Protocol) && f.LocalhostNodePorts)
		}
	}
	if backendErr != nil {
		r.Add(diagnose.Finding{ID: "backend", Severity: diagnose.Warning, Title: "cannot tell which iptables backend kproxy uses",
			Evidence: []string{backendErr.Error()}, Fix: "pass --iptables-backend"})
	}

	r.Add(diagnose.NodeChecks(ctx, diagnose.NodeInputs{
		Sysctl: nodesetup.NewProcSysctl(nodesetup.HostRoot), Bridges: diagnose.NetlinkBridges{},
		Lock:     diagnose.XTablesLock{Path: diagnose.XTablesLockPath(os.Getenv), Wait: iptables.DefaultWait},
		Families: families, LocalhostNodePorts: localhostNodePorts, Backend: backend,
	})...)
	r.Add(diagnose.BackendChecks(ctx, diagnose.BackendInputs{Saver: diagnose.ExecSaver{}, InUse: backend, Families: families})...)
	r.Add(diagnose.DaemonChecks(ctx, diagnose.DaemonInputs{Fetcher: diagnose.HTTPFetcher{},
		MetricsURL: "http://" + o.metricsAddress + "/metrics", HealthURL: "http://" + o.healthzAddress + "/", SyncPeriod: o.syncPeriod})...)

	if stateErr != nil {
		r.Add(diagnose.Finding{ID: "rules", Severity: diagnose.Warning,
			Title:    "cannot read what kproxy programmed: the rules and Service checks are left out",
			Evidence: []string{stateErr.Error()},
			Fix:      "run on the node (host network) with kproxy's --metrics-address, and kproxy's --debug-endpoint on"})
		return r
	}
	if backend == "" {
		return r
	}
	serviceFamilies := map[string]bool{}
	for _, f := range state.Families {
		if o.service != "" && diagnose.Programs(f, o.service) {
			serviceFamilies[f.Family] = true
		}
	}
	for i, f := range state.Families {
		// The Service's families; the primary one says so when it is in none.
		checkService := serviceFamilies[f.Family] || (o.service != "" && len(serviceFamilies) == 0 && i == 0)
		r.Add(familyChecks(ctx, backend, f, checkService, o.service)...)
	}
	return r
}

// familyChecks compares one family's kernel rules with what kproxy programmed and, with
// checkService, checks service there.
func familyChecks(ctx context.Context, backend iptables.Backend, f debugstate.Family, checkService bool, service string) []diagnose.Finding {
	family := v1.IPFamily(f.Family)
	id := "rules/" + f.Family
	if !f.Synced {
		return []diagnose.Finding{{ID: id, Severity: diagnose.Warning, Title: f.Family + ": kproxy has not synced yet: nothing to compare",
			Fix: "see the daemon findings above"}}
	}
	cannot := func(what string, err error) []diagnose.Finding {
		return []diagnose.Finding{{ID: id, Severity: diagnose.Warning, Title: fmt.Sprintf("%s: cannot %s", f.Family, what),
			Evidence: []string{err.Error()}, Fix: "run as root on the node"}}
	}
	ipt, err := iptables.New(family, backend, iptables.DefaultWait)
	if err != nil {
		return cannot("run iptables", err)
	}
	var kernel []byte
	for _, table := range []string{"nat", "filter"} {
		save, err := ipt.Save(ctx, table)
		if err != nil {
			return cannot("read the kernel's rules", err)
		}
		kernel = append(kernel, save...)
	}
	expected, err := iptables.SaveAsKernel(ctx, family, backend, []byte(f.Rules), ensureCounters(f.Rules), "nat", "filter")
	if err != nil {
		return cannot("put kproxy's rules in the kernel's form", err)
	}
	out := diagnose.DriftFindings(family, diagnose.CompareRules(kernel, expected))
	if checkService {
		flows, err := conntrack.NewNetlink(family).ListUDP(ctx)
		if err != nil {
			out = append(out, cannot("list UDP conntrack entries", err)...)
		}
		out = append(out, diagnose.ServiceChecks(diagnose.ServiceInputs{Service: service, Family: family, State: f, Kernel: kernel, UDPFlows: flows})...)
	}
	return out
}

// nfacctName finds the accounting counters a payload's rules count into.
var nfacctName = regexp.MustCompile(`--nfacct-name (\S+)`)

// ensureCounters creates, in the scratch namespace SaveAsKernel makes, the nfacct
// counters rules refers to: they live per namespace, and a rule naming a missing one
// does not restore.
func ensureCounters(rules string) func() error {
	return func() error {
		for _, m := range nfacctName.FindAllStringSubmatch(rules, -1) {
			if err := nfacct.New().Ensure(strings.Trim(m[1], `"`)); err != nil {
				return err
			}
		}
		return nil
	}
}

// diagnosisBackend is the flag's backend, else the one the daemon reports, else the one
// the node's rules are in.
func diagnosisBackend(ctx context.Context, flag string, state debugstate.State) (iptables.Backend, error) {
	switch {
	case flag != "":
		return iptables.Backend(flag), nil
	case state.Backend != "":
		return iptables.Backend(state.Backend), nil
	}
	return iptables.DetectBackend(ctx)
}

func fetchDebugState(ctx context.Context, url string) (debugstate.State, error) {
	var s debugstate.State
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return s, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return s, fmt.Errorf("reading kproxy's debug endpoint: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return s, fmt.Errorf("reading kproxy's debug endpoint %s: HTTP %d", url, resp.StatusCode)
	}
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return s, fmt.Errorf("decoding kproxy's debug endpoint %s: %w", url, err)
	}
	return s, nil
}
