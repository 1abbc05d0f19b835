package diagnose

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"slices"
	"strings"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/rules"
)

// RuleSaver reads the rules one backend holds for one IP family.
type RuleSaver interface {
	// Save returns every table of family in backend, as iptables-save prints them.
	Save(ctx context.Context, family v1.IPFamily, backend iptables.Backend) ([]byte, error)
}

// ExecSaver is the RuleSaver of the real backends (iptables.SaveAll), in the calling
// thread's network namespace.
type ExecSaver struct{}

// Save implements RuleSaver.
func (ExecSaver) Save(ctx context.Context, family v1.IPFamily, backend iptables.Backend) ([]byte, error) {
	return iptables.SaveAll(ctx, family, backend)
}

// BackendInputs are what BackendChecks reads and checks against.
type BackendInputs struct {
	// Saver reads each backend's rules (ExecSaver in production).
	Saver RuleSaver
	// InUse is the backend kproxy programs; "" when unknown, which leaves out the
	// checks that need it.
	InUse iptables.Backend
	// Families are the IP families kproxy proxies (IPv4, IPv6); IPv4 alone when
	// empty. Other values are ignored.
	Families []v1.IPFamily
}

// fixedProxyChains are the chains of kube-proxy's iptables mode that are not per
// Service; kproxy's are the same. KUBE-FIREWALL is left out: kubelet writes it too.
var fixedProxyChains = []string{
	rules.ChainServices, rules.ChainExternalServices, rules.ChainNodePorts, rules.ChainPostrouting,
	rules.ChainMarkMasq, rules.ChainForward, rules.ChainProxyFirewall, iptables.CanaryChain,
}

// serviceDispatchChains are the fixed chains whose rules send traffic to Services, as
// opposed to masquerading and filtering, which a proxy writes even with no Service.
var serviceDispatchChains = []string{rules.ChainServices, rules.ChainExternalServices, rules.ChainNodePorts}

// kubeletHintChains are the chains kubelet creates in the mangle table of the backend
// it uses, as iptables.DetectBackend reads them.
var kubeletHintChains = []string{"KUBE-IPTABLES-HINT", "KUBE-KUBELET-CANARY"}

// proxyRules is what one backend's save of one family holds of a kube-proxy's rules.
type proxyRules struct {
	// chains counts the kube-proxy chains declared, in every table.
	chains int
	// rules counts the rules in them.
	rules int
	// serviceRules counts the rules that send traffic to Services: those in
	// KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, KUBE-NODEPORTS and the per-service
	// chains (KUBE-SVC-*, KUBE-SEP-*, ...).
	serviceRules int
	// kubeletHint is true when kubelet's hint chain is there: kubelet uses this
	// backend.
	kubeletHint bool
}

// countProxyRules counts the kube-proxy chains and rules in iptables-save output.
func countProxyRules(save []byte) proxyRules {
	isProxyChain := func(c string) bool { return slices.Contains(fixedProxyChains, c) || rules.IsOwnedServiceChain(c) }
	var r proxyRules
	sc := bufio.NewScanner(bytes.NewReader(save))
	// Rule lines of large clusters are long; don't let one end the scan early.
	sc.Buffer(make([]byte, 64*1024), 16*1024*1024)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, ":"):
			chain, _, _ := strings.Cut(line[1:], " ")
			if isProxyChain(chain) {
				r.chains++
			}
			if slices.Contains(kubeletHintChains, chain) {
				r.kubeletHint = true
			}
		case strings.HasPrefix(line, "-A "):
			chain, _, _ := strings.Cut(line[3:], " ")
			if !isProxyChain(chain) {
				continue
			}
			r.rules++
			if slices.Contains(serviceDispatchChains, chain) || rules.IsOwnedServiceChain(chain) {
				r.serviceRules++
			}
		}
	}
	return r
}

// backendSave is one backend's rules of one family, or why they could not be read.
type backendSave struct {
	backend iptables.Backend
	rules   proxyRules
	err     error
}

// evidence describes the save in one line.
func (s backendSave) evidence(family v1.IPFamily) string {
	name := iptables.BinaryName(family, s.backend, "save")
	switch {
	case s.err != nil:
		return fmt.Sprintf("%s: failed: %v", name, s.err)
	case s.rules.chains == 0 && s.rules.rules == 0:
		return name + ": no kube-proxy chains"
	}
	return fmt.Sprintf("%s: %s, %s (%d sending traffic to Services)",
		name, plural(s.rules.chains, "kube-proxy chain"), plural(s.rules.rules, "rule"), s.rules.serviceRules)
}

// BackendChecks looks for kube-proxy rules in the wrong iptables backend, in the
// calling thread's network namespace. The kernel runs the legacy (x_tables) and the
// nft hooks both, so when both hold Service rules, whichever the packet meets first
// decides, and rules that another proxy left behind in the other backend keep
// answering with stale endpoints: a classic cause of a Service that works on some
// nodes only, or answers from pods deleted long ago. It returns one finding per
// family, and one more when kubelet's hint says kubelet uses the other backend than
// kproxy.
func BackendChecks(ctx context.Context, in BackendInputs) []Finding {
	families := in.Families
	if len(families) == 0 {
		families = []v1.IPFamily{v1.IPv4Protocol}
	}
	var out []Finding
	var hinted []iptables.Backend
	for _, family := range []v1.IPFamily{v1.IPv4Protocol, v1.IPv6Protocol} {
		if !slices.Contains(families, family) {
			continue
		}
		var saves []backendSave
		for _, b := range []iptables.Backend{iptables.BackendLegacy, iptables.BackendNFT} {
			save, err := in.Saver.Save(ctx, family, b)
			s := backendSave{backend: b, err: err}
			if err == nil {
				s.rules = countProxyRules(save)
			}
			if s.rules.kubeletHint && !slices.Contains(hinted, b) {
				hinted = append(hinted, b)
			}
			saves = append(saves, s)
		}
		out = append(out, backendFinding(family, saves[0], saves[1], in.InUse))
	}
	if f, ok := kubeletHintFinding(hinted, in.InUse); ok {
		out = append(out, f)
	}
	return out
}

// backendFinding judges one family's rules in the legacy and the nft backend.
func backendFinding(family v1.IPFamily, legacy, nft backendSave, inUse iptables.Backend) Finding {
	id := "backend/" + string(family)
	evidence := []string{legacy.evidence(family), nft.evidence(family)}
	if inUse != "" {
		evidence = append(evidence, "kproxy uses "+string(inUse))
	}
	if legacy.err != nil && nft.err != nil {
		return unreadable(id, fmt.Sprintf("the %s rules of either backend", family), evidence...)
	}
	used, other := legacy, nft
	if inUse == iptables.BackendNFT {
		used, other = nft, legacy
	}
	switch {
	case legacy.rules.serviceRules > 0 && nft.rules.serviceRules > 0:
		f := Finding{ID: id, Severity: Problem,
			Title:    fmt.Sprintf("%s Service rules are in both the legacy and the nft backend: the kernel runs both, and stale ones can win", family),
			Evidence: evidence,
			Fix:      "find which backend the node uses (kubelet's KUBE-IPTABLES-HINT), stop the proxy writing the other, then clean it: kproxy --cleanup --iptables-backend=<other>"}
		if inUse != "" {
			f.Fix = fmt.Sprintf("stop whatever still writes %s rules (an old kube-proxy?), then remove them: kproxy --cleanup --iptables-backend=%s",
				other.backend, other.backend)
		}
		return f
	case inUse != "" && used.err == nil && used.rules.serviceRules == 0 && other.rules.serviceRules > 0:
		return Finding{ID: id, Severity: Problem,
			Title: fmt.Sprintf("kproxy uses %s but the %s Service rules are in %s: packets meet another proxy's or stale rules",
				used.backend, family, other.backend),
			Evidence: evidence,
			Fix: fmt.Sprintf("stop whatever writes %s rules and remove them (kproxy --cleanup --iptables-backend=%s); the daemon findings say why kproxy wrote none",
				other.backend, other.backend)}
	case legacy.err != nil || nft.err != nil:
		return Finding{ID: id, Severity: Warning,
			Title:    fmt.Sprintf("cannot read one backend's %s rules, so cannot tell whether both hold Service rules", family),
			Evidence: evidence,
			Fix:      "run kproxy diagnose as root on the node, where both iptables-legacy-save and iptables-nft-save are installed"}
	case inUse != "" && used.rules.serviceRules == 0:
		return Finding{ID: id, Severity: Warning,
			Title:    fmt.Sprintf("no %s Service rules in kproxy's backend (%s)", family, used.backend),
			Evidence: evidence,
			Fix:      "see the daemon findings for why kproxy has not synced"}
	}
	title := fmt.Sprintf("%s Service rules are in one backend only", family)
	if legacy.rules.serviceRules == 0 && nft.rules.serviceRules == 0 {
		title = fmt.Sprintf("no %s Service rules in either backend", family)
	}
	return Finding{ID: id, Severity: OK, Title: title, Evidence: evidence}
}

// kubeletHintFinding warns when kubelet's hint chain is only in the other backend than
// kproxy's: kubelet and CNI plugins then write their rules (KUBE-FIREWALL, masquerading,
// port maps) where kproxy does not, and "--iptables-backend=auto" would have followed
// kubelet. It reports false when there is nothing to say.
func kubeletHintFinding(hinted []iptables.Backend, inUse iptables.Backend) (Finding, bool) {
	if inUse == "" || len(hinted) != 1 || hinted[0] == inUse {
		return Finding{}, false
	}
	return Finding{ID: "backend/kubelet-hint", Severity: Warning,
		Title:    fmt.Sprintf("kubelet uses %s, kproxy uses %s", hinted[0], inUse),
		Evidence: []string{fmt.Sprintf("kubelet's hint chain (%s) is in %s only", strings.Join(kubeletHintChains, " or "), hinted[0])},
		Fix:      fmt.Sprintf("run kproxy with --iptables-backend=auto or --iptables-backend=%s, as kubelet", hinted[0])}, true
}
