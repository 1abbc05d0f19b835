package main

import (
	"fmt"
	"math"
	"strings"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// The daemons' own metrics the benchmark reads; kproxy exports upstream's names.
const (
	metricSync        = "kubeproxy_sync_proxy_rules_duration_seconds"
	metricFullSync    = "kubeproxy_sync_full_proxy_rules_duration_seconds"
	metricPartialSync = "kubeproxy_sync_partial_proxy_rules_duration_seconds"
	metricProgramming = "kubeproxy_network_programming_duration_seconds"
)

// histogram is one IPv4 histogram of a scrape.
type histogram struct {
	Count uint64  `json:"count"`
	Sum   float64 `json:"sum"`
	// Buckets are cumulative, by upper bound, ascending.
	Buckets []bucket `json:"buckets,omitempty"`
}

type bucket struct {
	UpperBound float64 `json:"le"`
	Count      uint64  `json:"count"`
}

// scrape is the histograms of one read of a daemon's /metrics, by name.
type scrape map[string]histogram

// parseScrape keeps the IPv4 series (or the unlabelled one) of every histogram: both
// daemons may run an IPv6 proxier too, with nothing to do on this single-stack node.
func parseScrape(text string) (scrape, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(text))
	if err != nil {
		return nil, fmt.Errorf("parsing metrics: %w", err)
	}
	s := scrape{}
	for name, mf := range families {
		if mf.GetType() != dto.MetricType_HISTOGRAM {
			continue
		}
		for _, m := range mf.GetMetric() {
			if family := label(m, "ip_family"); family != "" && family != "IPv4" {
				continue
			}
			h := m.GetHistogram()
			out := histogram{Count: h.GetSampleCount(), Sum: h.GetSampleSum()}
			for _, b := range h.GetBucket() {
				// The +Inf bucket holds Count; JSON has no infinity.
				if !math.IsInf(b.GetUpperBound(), 1) {
					out.Buckets = append(out.Buckets, bucket{UpperBound: b.GetUpperBound(), Count: b.GetCumulativeCount()})
				}
			}
			s[name] = out
		}
	}
	return s, nil
}

func label(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

// since is what was observed between an earlier read and h.
func (h histogram) since(earlier histogram) histogram {
	d := histogram{Count: h.Count - earlier.Count, Sum: h.Sum - earlier.Sum}
	for i, b := range h.Buckets {
		c := b.Count
		if i < len(earlier.Buckets) && earlier.Buckets[i].UpperBound == b.UpperBound {
			c -= earlier.Buckets[i].Count
		}
		d.Buckets = append(d.Buckets, bucket{UpperBound: b.UpperBound, Count: c})
	}
	return d
}

// mean is Sum / Count; NaN without samples.
func (h histogram) mean() float64 {
	if h.Count == 0 {
		return math.NaN()
	}
	return h.Sum / float64(h.Count)
}

// quantile is the upper bound of the bucket holding the q-quantile: all a histogram can
// say ("p99 <= 2 s"). +Inf when it lies beyond the last bucket, NaN without samples.
func (h histogram) quantile(q float64) float64 {
	if h.Count == 0 {
		return math.NaN()
	}
	rank := uint64(math.Ceil(q * float64(h.Count)))
	for _, b := range h.Buckets {
		if b.Count >= rank {
			return b.UpperBound
		}
	}
	return math.Inf(1)
}
