package diagnose

import (
	"bytes"
	"fmt"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kproxy-dev/kproxy/pkg/metrics"
)

// sample is one sample of a scrape: a counter's or gauge's value with its labels.
type sample struct {
	labels map[string]string
	value  float64
}

// exposition holds the samples of one scrape by metric name.
type exposition map[string][]sample

// parseExposition parses the text exposition format, which is what kproxy's /metrics
// answers to "Accept: text/plain", keeping the counters, gauges and untyped samples
// (the diagnosis reads no histogram).
func parseExposition(text []byte) (exposition, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parsing metrics: %w", err)
	}
	e := exposition{}
	for name, mf := range families {
		for _, m := range mf.GetMetric() {
			var v float64
			switch {
			case m.Counter != nil:
				v = m.GetCounter().GetValue()
			case m.Gauge != nil:
				v = m.GetGauge().GetValue()
			case m.Untyped != nil:
				v = m.GetUntyped().GetValue()
			default:
				continue
			}
			labels := make(map[string]string, len(m.GetLabel()))
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			e[name] = append(e[name], sample{labels: labels, value: v})
		}
	}
	return e, nil
}

// byFamily returns the values of metric name per ip_family label; metrics without
// the label (the pending-change gauges) are not per family and are read with sum.
func (e exposition) byFamily(name string) map[string]float64 {
	out := map[string]float64{}
	for _, s := range e[name] {
		if f, ok := s.labels[metrics.LabelIPFamily]; ok {
			out[f] += s.value
		}
	}
	return out
}

// sum is the total of metric name over all its label sets, and whether it was there.
func (e exposition) sum(name string) (float64, bool) {
	samples, ok := e[name]
	total := 0.0
	for _, s := range samples {
		total += s.value
	}
	return total, ok
}
