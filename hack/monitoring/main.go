// Command monitoring turns deploy/monitoring's objects into plain Prometheus rule files,
// which is what promtool reads, for hack/check-monitoring.sh:
//
//	go run ./hack/monitoring rules deploy/monitoring/prometheusrule.yaml rules.yaml
//	go run ./hack/monitoring dashboard deploy/monitoring/dashboard.json dashboard-rules.yaml
//
// rules writes a PrometheusRule's spec, to check and unit-test the alerts. dashboard writes
// every query of a Grafana dashboard as a recording rule, with Grafana's variables replaced
// by sample values, so that `promtool check rules` parses them: a typo in a panel's PromQL
// fails the check instead of showing an empty panel.
package main

import (
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"

	"sigs.k8s.io/yaml"
)

func main() {
	if len(os.Args) != 4 || (os.Args[1] != "rules" && os.Args[1] != "dashboard") {
		fmt.Fprintln(os.Stderr, "usage: monitoring rules PROMETHEUSRULE.yaml OUT.yaml\n       monitoring dashboard DASHBOARD.json OUT.yaml")
		os.Exit(2)
	}
	convert := ruleFile
	if os.Args[1] == "dashboard" {
		convert = dashboardRules
	}
	data, err := os.ReadFile(os.Args[2])
	if err == nil {
		data, err = convert(data)
	}
	if err == nil {
		err = os.WriteFile(os.Args[3], data, 0o644)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "monitoring: %s: %v\n", os.Args[2], err)
		os.Exit(1)
	}
}

// prometheusRule is a monitoring.coreos.com/v1 PrometheusRule. The spec stays untyped so
// that every field in it reaches promtool as written: promtool rejects unknown fields in
// groups and rules itself.
type prometheusRule struct {
	APIVersion string         `json:"apiVersion"`
	Kind       string         `json:"kind"`
	Metadata   map[string]any `json:"metadata"`
	Spec       map[string]any `json:"spec"`
}

// ruleFile returns the spec of the PrometheusRule in data as a rule file.
func ruleFile(data []byte) ([]byte, error) {
	var rule prometheusRule
	// Strict, so that a misspelt top-level field (specs:) fails here instead of leaving
	// promtool an empty rule file that passes.
	if err := yaml.UnmarshalStrict(data, &rule); err != nil {
		return nil, err
	}
	if rule.APIVersion != "monitoring.coreos.com/v1" || rule.Kind != "PrometheusRule" {
		return nil, fmt.Errorf("want a monitoring.coreos.com/v1 PrometheusRule, got %q %q", rule.APIVersion, rule.Kind)
	}
	if _, ok := rule.Spec["groups"]; !ok {
		return nil, fmt.Errorf("spec has no groups")
	}
	return yaml.Marshal(rule.Spec)
}

// panel is the part of a Grafana panel that holds queries; rows nest panels.
type panel struct {
	ID      int     `json:"id"`
	Panels  []panel `json:"panels"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

type dashboard struct {
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"` // a string, or {"query": "..."} in newer schemas
		} `json:"list"`
	} `json:"templating"`
}

var (
	// Grafana's interval variables stand for a range; any other variable is a label value
	// inside a =~ matcher (the node picker).
	intervalVar = regexp.MustCompile(`\$(__rate_interval|__interval|__range)\b|\$\{(__rate_interval|__interval|__range)\}`)
	otherVar    = regexp.MustCompile(`\$\{\w+\}|\$\w+`)
	// labelValues is a query variable's label_values(selector, label).
	labelValues = regexp.MustCompile(`^\s*label_values\((.*),\s*\w+\s*\)\s*$`)
)

// dashboardRules returns every query of the dashboard in data as a recording rule.
func dashboardRules(data []byte) ([]byte, error) {
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		return nil, err
	}
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	add := func(name, expr string) {
		expr = intervalVar.ReplaceAllString(expr, "5m")
		expr = otherVar.ReplaceAllString(expr, ".+")
		rules = append(rules, rule{Record: name, Expr: expr})
	}
	var walk func([]panel)
	walk = func(panels []panel) {
		for _, p := range panels {
			for _, t := range p.Targets {
				add(fmt.Sprintf("dashboard:panel_%d:%s", p.ID, t.RefID), t.Expr)
			}
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		q, _ := v.Query.(string)
		if m, ok := v.Query.(map[string]any); ok {
			q, _ = m["query"].(string)
		}
		sel := labelValues.FindStringSubmatch(q)
		if sel == nil {
			return nil, fmt.Errorf("variable %s: want label_values(selector, label), got %q", v.Name, q)
		}
		add("dashboard:variable_"+v.Name, sel[1])
	}
	if len(rules) == 0 {
		return nil, fmt.Errorf("no queries")
	}
	for _, r := range rules {
		if strings.TrimSpace(r.Expr) == "" {
			return nil, fmt.Errorf("%s: empty query", r.Record)
		}
	}
	file := map[string]any{"groups": []any{map[string]any{"name": "dashboard", "rules": rules}}}
	return yaml.Marshal(file)
}
