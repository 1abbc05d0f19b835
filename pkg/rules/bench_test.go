package rules_test

import (
	"fmt"
	"testing"

	"k8s.io/apimachinery/pkg/types"

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
	benchmarkFullRender(b, defaultOptions())
}

// BenchmarkRender10kServices5EndpointsNFTBatches is the same render split into the nft
// backend's whole-service batches (the kproxy command's 500 chains per batch).
func BenchmarkRender10kServices5EndpointsNFTBatches(b *testing.B) {
	opts := defaultOptions()
	opts.MaxChainsPerBatch = 500
	benchmarkFullRender(b, opts)
}

// benchmarkFullRender measures what a full sync renders: the batches in pieces, never
// joined.
func benchmarkFullRender(b *testing.B, opts rules.Options) {
	snap := largeSnapshot(10000, 5)
	b.ReportAllocs()
	b.ResetTimer()
	var bytes int
	for i := 0; i < b.N; i++ {
		rs := rules.Render(rules.Request{Snapshot: snap}, opts)
		bytes = rs.PayloadBytes()
	}
	b.ReportMetric(float64(bytes), "payload-bytes")
}

// BenchmarkRenderPartial10kOneEndpoint renders the incremental sync after one endpoint
// of one service changed, at 10,000 services x 5 endpoints.
func BenchmarkRenderPartial10kOneEndpoint(b *testing.B) {
	snap := largeSnapshot(10000, 5)
	opts := defaultOptions()
	first := rules.Render(rules.Request{Snapshot: snap}, opts)
	names := snap.SortedServiceNames()
	changedName := names[len(names)/2]
	next := &model.Snapshot{Services: snap.Services, Endpoints: map[model.ServicePortName][]model.Endpoint{}}
	for k, v := range snap.Endpoints {
		next.Endpoints[k] = v
	}
	eps := append([]model.Endpoint(nil), snap.Endpoints[changedName]...)
	eps[0].Ready = false
	next.Endpoints[changedName] = eps
	req := rules.Request{Snapshot: next, Previous: first.State, Partial: true,
		Changed: map[types.NamespacedName]bool{changedName.NamespacedName: true}}
	b.ReportAllocs()
	b.ResetTimer()
	var bytes int
	for i := 0; i < b.N; i++ {
		rs := rules.Render(req, opts)
		bytes = rs.PayloadBytes()
	}
	b.ReportMetric(float64(bytes), "payload-bytes")
}
