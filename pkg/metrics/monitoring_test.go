package metrics

import (
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"sigs.k8s.io/yaml"
)

// TestMonitoringMetricsExist: every metric that deploy/monitoring's alerts and dashboard
// query is one kproxy serves, so that a renamed or misspelt metric fails here instead of
// leaving an alert that can never fire or an empty panel. (hack/check-monitoring.sh checks
// that the queries parse and unit-tests the alerts with promtool.)
func TestMonitoringMetricsExist(t *testing.T) {
	served := servedSeriesNames(t)
	queries := monitoringQueries(t)
	used := map[string][]string{} // metric name -> where
	for where, expr := range queries {
		for _, name := range metricNames(expr) {
			used[name] = append(used[name], where)
		}
	}
	// The tokenizer must have found something: an empty result would pass vacuously.
	for _, name := range []string{"kproxy_rules_drift_total", "kubeproxy_sync_full_proxy_rules_duration_seconds_bucket", "rest_client_requests_total", "up"} {
		if used[name] == nil {
			t.Errorf("no query uses %s; is the tokenizer still finding metric names?", name)
		}
	}
	for name, where := range used {
		if !served[name] {
			slices.Sort(where)
			t.Errorf("%s is not a metric kproxy serves (used in %v)", name, slices.Compact(where))
		}
	}
}

// servedSeriesNames returns the series names a scrape of kproxy can hold, plus up, which
// Prometheus adds: kproxy's collectors (from their descriptions, since a vector without
// children is not gathered), the nfacct counters, and what component-base's registry
// gathers (after one client-go request, so that rest_client_* exist). A histogram serves
// _bucket, _sum and _count, and a summary _sum and _count, not its bare name.
func servedSeriesNames(t *testing.T) map[string]bool {
	t.Helper()
	served := map[string]bool{"up": true}
	add := func(name string, typ dto.MetricType) {
		switch typ {
		case dto.MetricType_HISTOGRAM:
			served[name+"_bucket"], served[name+"_sum"], served[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			served[name], served[name+"_sum"], served[name+"_count"] = true, true, true
		default:
			served[name] = true
		}
	}
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	describe := func(c prometheus.Collector, typ dto.MetricType) {
		ch := make(chan *prometheus.Desc, 16)
		c.Describe(ch)
		close(ch)
		for d := range ch {
			m := fqName.FindStringSubmatch(d.String())
			if m == nil {
				t.Fatalf("no fqName in %s", d)
			}
			add(m[1], typ)
		}
	}
	for _, c := range collectors {
		typ := dto.MetricType_UNTYPED // gauges and counters: the name is the series name
		switch c.(type) {
		case *prometheus.HistogramVec, prometheus.Histogram:
			typ = dto.MetricType_HISTOGRAM
		case *prometheus.SummaryVec, prometheus.Summary:
			typ = dto.MetricType_SUMMARY
		}
		describe(c, typ)
	}
	describe(NewNFAcctCollector(fakeCounters{}, "invalid", "localhost"), dto.MetricType_COUNTER)

	for _, f := range gatherAfterAnAPIRequest(t) {
		add(f.GetName(), f.GetType())
	}
	return served
}

// monitoringQueries returns every PromQL expression of deploy/monitoring's alerts and
// dashboard, keyed by where it is.
func monitoringQueries(t *testing.T) map[string]string {
	t.Helper()
	queries := map[string]string{}

	data, err := os.ReadFile("../../deploy/monitoring/prometheusrule.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var rule struct {
		Spec struct {
			Groups []struct {
				Rules []struct {
					Alert  string `json:"alert"`
					Record string `json:"record"`
					Expr   string `json:"expr"`
				} `json:"rules"`
			} `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(data, &rule); err != nil {
		t.Fatalf("prometheusrule.yaml: %v", err)
	}
	for _, g := range rule.Spec.Groups {
		for _, r := range g.Rules {
			queries["alert "+r.Alert+r.Record] = r.Expr
		}
	}

	data, err = os.ReadFile("../../deploy/monitoring/dashboard.json")
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string            `json:"title"`
		Panels  []json.RawMessage `json:"panels"`
		Targets []struct {
			RefID string `json:"refId"`
			Expr  string `json:"expr"`
		} `json:"targets"`
	}
	var dash struct {
		Panels     []json.RawMessage `json:"panels"`
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(data, &dash); err != nil {
		t.Fatalf("dashboard.json: %v", err)
	}
	var walk func([]json.RawMessage)
	walk = func(raw []json.RawMessage) {
		for _, r := range raw {
			var p panel
			if err := json.Unmarshal(r, &p); err != nil {
				t.Fatalf("dashboard.json: %v", err)
			}
			for _, tg := range p.Targets {
				queries["panel "+p.Title+" "+tg.RefID] = tg.Expr
			}
			walk(p.Panels) // rows
		}
	}
	walk(dash.Panels)
	labelValues := regexp.MustCompile(`label_values\((.*),\s*\w+\s*\)`)
	for _, v := range dash.Templating.List {
		q, _ := v.Query.(string)
		if m, ok := v.Query.(map[string]any); ok {
			q, _ = m["query"].(string)
		}
		if m := labelValues.FindStringSubmatch(q); m != nil {
			queries["variable "+v.Name] = m[1]
		}
	}
	return queries
}

// promqlWords are PromQL's keywords and aggregation operators: identifiers that are not
// metric names even when no "(" follows them (sum by (le) (...)). Functions are told by
// their "(".
var promqlWords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
	"inf": true, "nan": true, "sum": true, "min": true, "max": true, "avg": true, "group": true,
	"stddev": true, "stdvar": true, "count": true, "count_values": true, "bottomk": true,
	"topk": true, "quantile": true, "limitk": true, "limit_ratio": true,
}

// labelLists are the keywords whose parenthesised list holds label names, not expressions.
var labelLists = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

// metricNames returns the metric names that expr selects. It is a tokenizer, not a parser:
// it skips strings, label matchers ({...}), ranges ([...]), label lists (by (...)),
// numbers and durations, and takes every remaining identifier that is neither a function
// (followed by "(") nor a keyword. Grafana's variables only appear inside those, so they
// need no care.
func metricNames(expr string) []string {
	var names []string
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			i = skipString(expr, i)
		case c == '{':
			i = skipGroup(expr, i, '{', '}')
		case c == '[':
			i = skipGroup(expr, i, '[', ']')
		case c == '#': // a comment, to the end of the line
			for i < len(expr) && expr[i] != '\n' {
				i++
			}
		case isDigit(c) || c == '.' && i+1 < len(expr) && isDigit(expr[i+1]):
			for i < len(expr) && (isIdent(expr[i]) || expr[i] == '.') {
				i++
			}
		case isIdentStart(c):
			start := i
			for i < len(expr) && isIdent(expr[i]) {
				i++
			}
			word := expr[start:i]
			next := i
			for next < len(expr) && (expr[next] == ' ' || expr[next] == '\t' || expr[next] == '\n') {
				next++
			}
			callOrList := next < len(expr) && expr[next] == '('
			switch {
			case labelLists[word] && callOrList:
				i = skipGroup(expr, next, '(', ')')
			case callOrList || promqlWords[word]:
			default:
				names = append(names, word)
			}
		default:
			i++
		}
	}
	return names
}

// skipString returns the index just past the string literal that starts at expr[i].
func skipString(expr string, i int) int {
	quote := expr[i]
	for i++; i < len(expr); i++ {
		switch {
		case expr[i] == '\\' && quote != '`':
			i++
		case expr[i] == quote:
			return i + 1
		}
	}
	return i
}

// skipGroup returns the index just past the close that matches the open at expr[i],
// stepping over strings inside.
func skipGroup(expr string, i int, open, close byte) int {
	depth := 0
	for i < len(expr) {
		switch c := expr[i]; {
		case c == '"' || c == '\'' || c == '`':
			i = skipString(expr, i)
			continue
		case c == open:
			depth++
		case c == close:
			depth--
			if depth == 0 {
				return i + 1
			}
		}
		i++
	}
	return i
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
func isIdentStart(c byte) bool {
	return c == '_' || c == ':' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
}
func isIdent(c byte) bool { return isIdentStart(c) || isDigit(c) }

// TestPromQLMetricNames: metricNames finds metric names and only them.
func TestPromQLMetricNames(t *testing.T) {
	for _, tc := range []struct {
		expr string
		want []string
	}{
		{`up{job="kube-proxy"} == 0`, []string{"up"}},
		{`absent(up{job="kube-proxy"} == 1)`, []string{"up"}},
		{`histogram_quantile(0.99, sum by (instance, le) (rate(a_bucket{job="x", instance=~"$instance"}[$__rate_interval]))) > 30`, []string{"a_bucket"}},
		{"sum(rate(b_total[5m])) by (code) / on (code) group_left c\n  or d unless e offset 1h", []string{"b_total", "c", "d", "e"}},
		{`time() - f{le="1e3", x='}'} > 1e3 and g > bool .5`, []string{"f", "g"}},
		{`topk(3, h) # i is in a comment`, []string{"h"}},
		{`sum without (ip_family) (kproxy:recorded:rate5m)`, []string{"kproxy:recorded:rate5m"}},
	} {
		if got := metricNames(tc.expr); !slices.Equal(got, tc.want) {
			t.Errorf("metricNames(%q) = %q, want %q", tc.expr, got, tc.want)
		}
	}
}
