package rules_test

import (
	"fmt"
	"testing"

	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/rules"
)

// largeSnapshot builds services x endpoints ClusterIP services, every fourth with a node port.
func largeSnapshot(services, endpoints int) *model.Snapshot {
	b := newSnapshot()
	for s := 0; s < services; s++ {
		eps := make([]string, endpoints)
		for e := range eps {
			n := s*endpoints + e
			eps[e] = fmt.Sprintf("10.%d.%d.%d:8080", 64+n/65536, n/256%256, n%256)
		}
		var nodePort int32
		if s%4 == 0 {
			nodePort = int32(30000 + s/4)
		}
		b.svc(fmt.Sprintf("ns%d", s%100), fmt.Sprintf("svc%d", s), "http", tcp,
			fmt.Sprintf("172.30.%d.%d", s/256, s%256), 80, nodePort, eps...)
	}
	return b.snap
}

func BenchmarkRender10kServices5Endpoints(b *testing.B) {
	snap := largeSnapshot(10000, 5)
	opts := defaultOptions()
	b.ReportAllocs()
	b.ResetTimer()
	var bytes int
	for i := 0; i < b.N; i++ {
		rs := rules.Render(rules.Request{Snapshot: snap}, opts)
		bytes = len(rs.Payload())
	}
	b.ReportMetric(float64(bytes), "payload-bytes")
}
