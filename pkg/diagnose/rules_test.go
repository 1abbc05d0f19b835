package diagnose

import (
	"reflect"
	"strings"
	"testing"

	v1 "k8s.io/api/core/v1"
)

const expectedSave = `*nat
:PREROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-AAA - [0:0]
:KUBE-SEP-A1 - [0:0]
:KUBE-SEP-A2 - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "ns/web:http cluster IP" -m tcp --dport 80 -j KUBE-SVC-AAA
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-SVC-AAA -m comment --comment "ns/web:http -> 10.244.1.2:8080" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A1
-A KUBE-SVC-AAA -m comment --comment "ns/web:http -> 10.244.2.2:8080" -j KUBE-SEP-A2
-A KUBE-SEP-A1 -p tcp -m comment --comment "ns/web:http" -m tcp -j DNAT --to-destination 10.244.1.2:8080
-A KUBE-SEP-A2 -p tcp -m comment --comment "ns/web:http" -m tcp -j DNAT --to-destination 10.244.2.2:8080
COMMIT
`

func TestCompareRules(t *testing.T) {
	if d := CompareRules([]byte(expectedSave), []byte(expectedSave)); !reflect.DeepEqual(d, RuleDrift{}) {
		t.Errorf("identical rules: %+v", d)
	}

	kernel := expectedSave
	// A deleted endpoint chain (its declaration and rule gone), a foreign rule in the
	// shared dispatch chain, the SVC chain's rules swapped, and a chain of a Service
	// that is gone.
	kernel = strings.Replace(kernel, ":KUBE-SEP-A2 - [0:0]\n", ":KUBE-SEP-OLD - [0:0]\n", 1)
	kernel = strings.Replace(kernel, "-A KUBE-SEP-A2 -p tcp -m comment --comment \"ns/web:http\" -m tcp -j DNAT --to-destination 10.244.2.2:8080\n",
		"-A KUBE-SERVICES -s 10.0.0.66/32 -j DROP\n", 1)
	swapped := "-A KUBE-SVC-AAA -m comment --comment \"ns/web:http -> 10.244.2.2:8080\" -j KUBE-SEP-A2\n" +
		"-A KUBE-SVC-AAA -m comment --comment \"ns/web:http -> 10.244.1.2:8080\" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A1\n"
	kernel = strings.Replace(kernel, "-A KUBE-SVC-AAA -m comment --comment \"ns/web:http -> 10.244.1.2:8080\" -m statistic --mode random --probability 0.50000000000 -j KUBE-SEP-A1\n"+
		"-A KUBE-SVC-AAA -m comment --comment \"ns/web:http -> 10.244.2.2:8080\" -j KUBE-SEP-A2\n", swapped, 1)
	got := CompareRules([]byte(kernel), []byte(expectedSave))
	want := RuleDrift{
		Services: []ServiceDrift{
			{Service: NodeWide, Extra: []string{"nat KUBE-SERVICES -s 10.0.0.66/32 -j DROP"}},
			{Service: "ns/web:http",
				Missing:   []string{`nat KUBE-SEP-A2 -p tcp -m comment --comment "ns/web:http" -m tcp -j DNAT --to-destination 10.244.2.2:8080`},
				Reordered: []string{"nat KUBE-SVC-AAA"}},
		},
		StaleChains: []string{"nat KUBE-SEP-OLD"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("drift\n got %+v\nwant %+v", got, want)
	}

	findings := DriftFindings(v1.IPv4Protocol, got)
	var ids []string
	for _, f := range findings {
		ids = append(ids, f.ID+" "+f.Severity.String())
	}
	if w := []string{"rules/IPv4/(node-wide) problem", "rules/IPv4/ns/web:http problem", "rules/IPv4/stale-chains warning"}; !reflect.DeepEqual(ids, w) {
		t.Errorf("findings %v, want %v", ids, w)
	}
	if ok := DriftFindings(v1.IPv4Protocol, RuleDrift{}); len(ok) != 1 || ok[0].Severity != OK {
		t.Errorf("no drift: %+v", ok)
	}
}
