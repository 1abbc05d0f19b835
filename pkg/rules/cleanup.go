package rules

import "sort"

// CanaryChain is the chain upstream creates in mangle, nat and filter to notice external
// flushes; cleanup removes it too.
const CanaryChain = "KUBE-PROXY-CANARY"

// fixedChains are the chains, by table, that we (or upstream) always own.
var fixedChains = map[string][]string{
	"nat":    {ChainServices, ChainNodePorts, ChainPostrouting, ChainMarkMasq, CanaryChain},
	"filter": {ChainServices, ChainExternalServices, ChainForward, ChainNodePorts, ChainProxyFirewall, CanaryChain},
	"mangle": {CanaryChain},
}

// CleanupJumps are the built-in-chain jumps that --cleanup deletes: all of ours except
// those into KUBE-FIREWALL, which kubelet owns as well.
func CleanupJumps() []Jump {
	var jumps []Jump
	for _, j := range BuiltinJumps() {
		if j.To != ChainFirewall {
			jumps = append(jumps, j)
		}
	}
	return jumps
}

// CleanupPayload renders a restore payload that flushes and deletes every chain of ours
// found in existing (table -> chain names, as listed by iptables-save) and nothing else.
// All chains are flushed before any is deleted, so jumps between them do not matter.
func CleanupPayload(existing map[string][]string) []byte {
	var payload []byte
	for _, table := range []string{"filter", "nat", "mangle"} {
		var owned []string
		for _, c := range existing[table] {
			if isFixedChain(table, c) || (table == "nat" && IsOwnedServiceChain(c)) {
				owned = append(owned, c)
			}
		}
		if len(owned) == 0 {
			continue
		}
		sort.Strings(owned)
		payload = append(payload, "*"+table+"\n"...)
		for _, c := range owned {
			payload = append(payload, ":"+c+" - [0:0]\n"...)
		}
		for _, c := range owned {
			payload = append(payload, "-X "+c+"\n"...)
		}
		payload = append(payload, "COMMIT\n"...)
	}
	return payload
}

func isFixedChain(table, chain string) bool {
	for _, c := range fixedChains[table] {
		if c == chain {
			return true
		}
	}
	return false
}
