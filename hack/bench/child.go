package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"

	"github.com/kproxy-dev/kproxy/hack/bench/internal/measure"
	"github.com/kproxy-dev/kproxy/hack/bench/internal/synth"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
	"github.com/kproxy-dev/kproxy/pkg/model"
	"github.com/kproxy-dev/kproxy/pkg/proxier"
	"github.com/kproxy-dev/kproxy/pkg/rules"
	"github.com/kproxy-dev/kproxy/pkg/tracker"
)

// childEnv names the environment variable that turns the bench binary (or its test
// binary) into a child: its value is the childSpec as JSON. A variable rather than a
// flag, so that a test binary, which rejects unknown flags, can be a child too.
const childEnv = "KPROXY_BENCH_CHILD"

// childSpec is what one child measures: one cluster shape on one backend.
type childSpec struct {
	Shape   synth.Shape      `json:"shape"`
	Backend iptables.Backend `json:"backend"`
	// Renders is how many timed renders of the snapshot to make.
	Renders int `json:"renders"`
	// Reps is how many times each kind of partial sync is measured.
	Reps int `json:"reps"`
	// Timeout bounds each sync; Deadline, when set, bounds them all.
	Timeout  time.Duration `json:"timeout"`
	Deadline time.Time     `json:"deadline"`
	// SkipSync leaves out the syncs (an earlier run timed out): only render.
	SkipSync bool `json:"skipSync"`
	// PayloadFile receives the rendered full payload, for the bare restore.
	PayloadFile string `json:"payloadFile"`
	// MaxChainsPerBatch is rules.Options.MaxChainsPerBatch, as the kproxy command sets it
	// for this backend.
	MaxChainsPerBatch int `json:"maxChainsPerBatch"`
}

// renderSample is one render of the full snapshot, its payload joined into one input.
type renderSample struct {
	Seconds     float64 `json:"seconds"`
	Allocs      uint64  `json:"allocs"`
	AllocBytes  uint64  `json:"allocBytes"`
	PayloadSize int     `json:"payloadBytes"`
}

// syncIO is what a sync did through the iptables interface.
type syncIO struct {
	Restores       int     `json:"restores"`
	RestoreBytes   int     `json:"restoreBytes"`
	RestoreSeconds float64 `json:"restoreSeconds"`
	// SaveSeconds is the time spent listing chains (iptables-save).
	SaveSeconds float64 `json:"saveSeconds"`
}

// childResult is what a child prints on stdout, as JSON.
type childResult struct {
	Renders      []renderSample `json:"renders"`
	PayloadBytes int            `json:"payloadBytes"`
	PayloadLines int            `json:"payloadLines"`
	NATRules     int            `json:"natRules"`
	FilterRules  int            `json:"filterRules"`
	// Chains counts the chains the payload declares; Batches the iptables-restore
	// batches (commits per table) it is split into.
	Chains  int `json:"chains"`
	Batches int `json:"batches"`

	Full    measure.Timing   `json:"full"`
	FullIO  syncIO           `json:"fullIO"`
	FullCPU measure.CPUTimes `json:"fullCPU"`
	// FullPayloadSame: kproxy's full sync restored exactly the rendered payload, in one call.
	FullPayloadSame bool `json:"fullPayloadSame"`
	// RSSKiB and HeapInuse are read after the full sync and a GC, in a process that holds
	// the proxier and nothing else of size (not even the API objects).
	RSSKiB    int64  `json:"rssKiB"`
	HeapInuse uint64 `json:"heapInuse"`
	// ObjectsHeap is the heap the cluster's API objects take when all are held at once,
	// a rough stand-in for the informer caches a real kproxy also holds.
	ObjectsHeap uint64 `json:"objectsHeap"`

	// Partials by kind (partialKinds), one entry per repetition.
	Partials   map[string][]measure.Timing `json:"partials"`
	PartialsIO map[string][]syncIO         `json:"partialsIO"`
}

// The kinds of partial sync, in table order.
var partialKinds = []string{"endpoint", "added", "deleted"}

// isChild reports whether this process was started as a child.
func isChild() bool { return os.Getenv(childEnv) != "" }

// childMain runs the child: the measurements of the spec in the environment, in the
// network namespace it was started in. It prints the result as JSON on stdout and
// returns the exit code.
func childMain() int {
	var spec childSpec
	if err := json.Unmarshal([]byte(os.Getenv(childEnv)), &spec); err != nil {
		fmt.Fprintf(os.Stderr, "bench child: bad %s: %v\n", childEnv, err)
		return 2
	}
	// The harness asks a child to stop with SIGTERM: the syncs' contexts end, which kills
	// the iptables binaries they run and waits for them, so none is left running.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	res, err := measureChild(ctx, spec)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench child: %v\n", err)
		return 1
	}
	if err := json.NewEncoder(os.Stdout).Encode(res); err != nil {
		fmt.Fprintf(os.Stderr, "bench child: %v\n", err)
		return 1
	}
	return 0
}

// The node the proxier runs on, and the pod network its local-traffic detector uses.
var (
	nodeIP      = netip.MustParseAddr("192.0.2.1")
	clusterCIDR = netip.MustParsePrefix("10.0.0.0/8")
)

// renderOptions are kube-proxy's defaults for a node whose pods are in clusterCIDR, with
// the batching the kproxy command picks for the backend.
func renderOptions(spec childSpec) rules.Options {
	return rules.Options{
		Family:             v1.IPv4Protocol,
		MasqueradeBit:      14,
		LocalDetector:      rules.DetectByCIDR(clusterCIDR),
		LocalhostNodePorts: true,
		DropInvalid:        true,
		MaxChainsPerBatch:  spec.MaxChainsPerBatch,
	}
}

func benchNode() model.Node { return model.Node{Name: synth.NodeName, IP: nodeIP} }

// measureChild runs in the child's namespace: the whole process is inside it (it was started
// by "ip netns exec"), so every binary the proxier runs, from whatever goroutine, programs
// this namespace and never the host's.
func measureChild(ctx context.Context, spec childSpec) (*childResult, error) {
	res := &childResult{Partials: map[string][]measure.Timing{}, PartialsIO: map[string][]syncIO{}}
	// Payloads are compared by hash: keeping kproxy's would count in its RSS.
	var synced [sha256.Size]byte
	if !spec.SkipSync {
		var err error
		if synced, err = measureSyncs(ctx, spec, res); err != nil {
			return nil, err
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	rendered, err := measureRender(spec, res)
	if err != nil {
		return nil, err
	}
	res.FullPayloadSame = res.Full.OK() && res.FullIO.Restores == 1 && synced == rendered
	return res, nil
}

// measureSyncs builds a proxier with the real iptables binaries, feeds it the whole
// cluster, times its first (full) sync, reads the RSS, then times partial syncs. It
// returns the hash of the full sync's first restore payload.
func measureSyncs(ctx context.Context, spec childSpec, res *childResult) (fullHash [sha256.Size]byte, err error) {
	ipt, err := iptables.New(v1.IPv4Protocol, spec.Backend, iptables.DefaultWait)
	if err != nil {
		return fullHash, err
	}
	rec := &recorder{Interface: ipt}
	p := proxier.New(ctx, proxier.Config{
		Family:   v1.IPv4Protocol,
		IPTables: rec,
		Rules:    renderOptions(spec),
		Node:     benchNode(),
		// kube-proxy's defaults. The sync period also spaces out the listing of stale
		// chains in large-cluster mode, which every shape here is in.
		MinSyncPeriod: time.Second,
		SyncPeriod:    30 * time.Second,
		Clock:         clock.RealClock{},
	})
	s := spec.Shape
	for i := range s.Services {
		p.OnServiceAdd(synth.Service(i))
		for _, sl := range s.Slices(i) {
			p.OnEndpointSliceAdd(sl)
		}
	}
	p.OnServicesSynced()
	p.OnEndpointSlicesSynced()

	var self0, kids0 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self0)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids0)
	rec.reset(true)
	res.Full = timedSync(ctx, spec, p)
	res.FullIO = rec.io()
	fullHash = rec.firstHash
	rec.reset(false)
	var self1, kids1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &self1)
	_ = syscall.Getrusage(syscall.RUSAGE_CHILDREN, &kids1)
	res.FullCPU = measure.CPUTimes{
		SelfUser:     measure.TvSeconds(self1.Utime) - measure.TvSeconds(self0.Utime),
		SelfSys:      measure.TvSeconds(self1.Stime) - measure.TvSeconds(self0.Stime),
		BinariesUser: measure.TvSeconds(kids1.Utime) - measure.TvSeconds(kids0.Utime),
		BinariesSys:  measure.TvSeconds(kids1.Stime) - measure.TvSeconds(kids0.Stime),
	}
	if !res.Full.OK() {
		// The rules are not in place: partial syncs would be full ones.
		return fullHash, nil
	}

	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	res.HeapInuse = ms.HeapInuse
	if res.RSSKiB, err = measure.ProcStatusKiB(0, "VmRSS"); err != nil {
		return fullHash, err
	}

	// One change per sync, each on a different service, as a rolling update would make.
	failed := false
	record := func(kind string, change func()) {
		if failed {
			res.Partials[kind] = append(res.Partials[kind], measure.Timing{Skipped: true})
			return
		}
		change()
		m := timedSync(ctx, spec, p)
		res.Partials[kind] = append(res.Partials[kind], m)
		res.PartialsIO[kind] = append(res.PartialsIO[kind], rec.io())
		rec.reset(false)
		// After a failure the next sync is a full one; it would not measure a partial.
		failed = !m.OK()
	}
	for k := range spec.Reps {
		record("endpoint", func() {
			p.OnEndpointSliceUpdate(s.ChangedSlice(k%s.Services, k))
		})
		record("added", func() {
			svc, slices := s.AddedService(k)
			p.OnServiceAdd(svc)
			for _, sl := range slices {
				p.OnEndpointSliceAdd(sl)
			}
		})
		record("deleted", func() {
			i := s.Services - 1 - k%s.Services
			p.OnServiceDelete(synth.Service(i))
			for _, sl := range s.Slices(i) {
				p.OnEndpointSliceDelete(sl)
			}
		})
	}

	// The API objects' own weight, for comparison with the RSS above.
	runtime.GC()
	runtime.ReadMemStats(&ms)
	before := ms.HeapInuse
	objs := make([]any, 0, 2*s.Services)
	for i := range s.Services {
		objs = append(objs, synth.Service(i), s.Slices(i))
	}
	runtime.GC()
	runtime.ReadMemStats(&ms)
	if ms.HeapInuse > before {
		res.ObjectsHeap = ms.HeapInuse - before
	}
	runtime.KeepAlive(objs)
	return fullHash, nil
}

// timedSync runs one sync under the spec's timeout.
func timedSync(ctx context.Context, spec childSpec, p *proxier.Proxier) measure.Timing {
	return measure.Timed(ctx, measure.Bound{Timeout: spec.Timeout, Deadline: spec.Deadline}, p.Sync)
}

// measureRender times renders of the full snapshot, built by the tracker from the same
// objects the proxier got, and writes the payload for the bare restore. It returns the
// payload's hash.
func measureRender(spec childSpec, res *childResult) (hash [sha256.Size]byte, err error) {
	s := spec.Shape
	tr := tracker.New(v1.IPv4Protocol, synth.NodeName, time.Now(), func(string, types.NamespacedName, string, string) {})
	for i := range s.Services {
		tr.ServiceChanged(synth.Service(i), false)
		for _, sl := range s.Slices(i) {
			tr.EndpointSliceChanged(sl, false)
		}
	}
	snap, _ := tr.Checkpoint()
	req := rules.Request{Snapshot: snap, Node: benchNode()}
	opts := renderOptions(spec)

	rs := rules.Render(req, opts) // warm-up; also the payload
	payload := rs.Payload()
	res.PayloadBytes = len(payload)
	res.PayloadLines = bytes.Count(payload, []byte{'\n'})
	res.Chains = bytes.Count(payload, []byte("\n:"))
	res.NATRules, res.FilterRules, res.Batches = rs.NATRules, rs.FilterRules, len(rs.Batches)
	hash = sha256.Sum256(payload)
	if spec.PayloadFile != "" {
		if err := os.WriteFile(spec.PayloadFile, payload, 0o600); err != nil {
			return hash, err
		}
	}
	rs, payload = nil, nil

	var a, b runtime.MemStats
	for range spec.Renders {
		// Each render starts from a collected heap, so the samples are alike.
		runtime.GC()
		runtime.ReadMemStats(&a)
		start := time.Now()
		// The payload is part of the work, in the pieces a sync hands to the restore.
		rendered := rules.Render(req, opts)
		pieces := rendered.Pieces()
		d := time.Since(start)
		runtime.ReadMemStats(&b)
		res.Renders = append(res.Renders, renderSample{
			Seconds: d.Seconds(), Allocs: b.Mallocs - a.Mallocs, AllocBytes: b.TotalAlloc - a.TotalAlloc,
			PayloadSize: rendered.PayloadBytes(),
		})
		runtime.KeepAlive(pieces)
	}
	return hash, nil
}

// recorder is the real iptables Interface with its restores and saves timed. Only these
// two are overridden, so that the harness keeps compiling while the interface evolves;
// the other calls (the jumps a full sync ensures) pass through untimed.
type recorder struct {
	iptables.Interface

	mu        sync.Mutex
	cur       syncIO
	hashFirst bool
	firstHash [sha256.Size]byte
}

func (r *recorder) reset(hashFirst bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cur, r.hashFirst = syncIO{}, hashFirst
}

func (r *recorder) io() syncIO {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.cur
}

func (r *recorder) Restore(ctx context.Context, pieces ...[]byte) error {
	start := time.Now()
	err := r.Interface.Restore(ctx, pieces...)
	d := time.Since(start)
	r.mu.Lock()
	defer r.mu.Unlock()
	// Hashed and counted piece by piece: joining them would count in kproxy's RSS.
	h := sha256.New()
	for _, piece := range pieces {
		h.Write(piece)
		r.cur.RestoreBytes += len(piece)
	}
	if r.hashFirst && r.cur.Restores == 0 {
		h.Sum(r.firstHash[:0])
	}
	r.cur.Restores++
	r.cur.RestoreSeconds += d.Seconds()
	return err
}

func (r *recorder) SaveChains(ctx context.Context, table string) ([]string, error) {
	start := time.Now()
	chains, err := r.Interface.SaveChains(ctx, table)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cur.SaveSeconds += time.Since(start).Seconds()
	return chains, err
}
