package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/kproxy-dev/kproxy/hack/bench/internal/measure"
)

// churnResult is the network programming latency under a steady stream of endpoint
// changes.
type churnResult struct {
	Rate float64 `json:"rate"`
	// Seconds is how long the changes were written for.
	Seconds float64 `json:"seconds"`
	// Changes are every change written, with its latency.
	Changes []churnSample `json:"changes"`
	// Looks is how many times the node was looked at; LookSeconds the median duration of
	// a look, LookInterval the median time from the start of a look that found a change
	// not there yet to the next look's: the resolution of the latencies.
	Looks        int     `json:"looks"`
	LookSeconds  float64 `json:"lookSeconds"`
	LookInterval float64 `json:"lookInterval"`
	WriteErrors  int     `json:"writeErrors"`
	// Programming is the daemon's own network programming histogram over the churn;
	// Syncs the syncs it made meanwhile; CPU what it used meanwhile.
	Programming histogram       `json:"programming"`
	Syncs       uint64          `json:"syncs"`
	CPU         measure.ProcCPU `json:"cpu"`
	Err         string          `json:"err,omitempty"`
}

// churnSample is one change of the churn.
type churnSample struct {
	endpointChange
	// Seconds is from the trigger time until the new endpoint's chain was seen in the
	// kernel; -1 when it was not seen within the timeout.
	Seconds float64 `json:"seconds"`
	// Superseded: the same service changed again before this change was seen, so it
	// never will be.
	Superseded bool `json:"superseded,omitempty"`
}

// latencies are the seen changes' latencies.
func (c *churnResult) latencies() []float64 {
	var out []float64
	for _, s := range c.Changes {
		if s.Seconds >= 0 && !s.Superseded {
			out = append(out, s.Seconds)
		}
	}
	return out
}

// unseen counts the changes that were neither seen nor superseded.
func (c *churnResult) unseen() int {
	n := 0
	for _, s := range c.Changes {
		if s.Seconds < 0 && !s.Superseded {
			n++
		}
	}
	return n
}

// churn writes cfg.ChurnRate endpoint changes per second for cfg.ChurnDuration, each on
// the next service (so that a change is seen before its service changes again, unless
// the cluster is small), while watching the node for each change's new KUBE-SEP chain:
// every look asks about all the changes not seen yet, and a change is seen when the look
// that found it ended. After the last change the watch goes on until every change is
// seen or cfg.Timeout runs out.
func (b *bench) churn(ctx context.Context, p *proxyProcess) *churnResult {
	res := &churnResult{Rate: b.cfg.ChurnRate}
	before, err := b.quiet(ctx)
	if err != nil {
		res.Err = err.Error()
		return res
	}
	cpu0, err := p.usage()
	if err != nil {
		res.Err = err.Error()
		return res
	}

	var (
		mu      sync.Mutex
		pending []int // indexes into res.Changes, oldest first
		written = make(chan struct{})
	)
	go func() {
		defer close(written)
		start := time.Now()
		interval := time.Duration(float64(time.Second) / b.cfg.ChurnRate)
		for k := 0; ; k++ {
			// A schedule, not a ticker: a slow write delays the next one instead of
			// dropping it.
			at := start.Add(time.Duration(k) * interval)
			if at.Sub(start) >= b.cfg.ChurnDuration || sleep(ctx, time.Until(at)) != nil {
				mu.Lock()
				res.Seconds = time.Since(start).Seconds()
				mu.Unlock()
				return
			}
			ch, err := b.objs.changeEndpoint(ctx, k%b.objs.shape.Services)
			mu.Lock()
			if err != nil {
				res.WriteErrors++
				mu.Unlock()
				continue
			}
			for j, idx := range pending {
				if res.Changes[idx].Service == ch.Service {
					res.Changes[idx].Superseded = true
					pending = append(pending[:j], pending[j+1:]...)
					break
				}
			}
			res.Changes = append(res.Changes, churnSample{endpointChange: ch, Seconds: -1})
			pending = append(pending, len(res.Changes)-1)
			mu.Unlock()
		}
	}()

	var lookSeconds, lookIntervals []float64
	var lastLook time.Time
	lastMissed := false // the last look found a change not there yet
	var watchErr error
	drain := time.Time{}
	for {
		select {
		case <-written:
			if drain.IsZero() {
				drain = time.Now().Add(b.cfg.Timeout)
			}
		default:
		}
		mu.Lock()
		todo := append([]int(nil), pending...)
		mu.Unlock()
		if len(todo) == 0 {
			if !drain.IsZero() {
				break
			}
			if sleep(ctx, time.Millisecond) != nil {
				break
			}
			continue
		}
		if ctx.Err() != nil || (!drain.IsZero() && time.Now().After(drain)) {
			break
		}
		if err := p.alive(); err != nil {
			watchErr = err
			break
		}
		start := time.Now()
		if lastMissed {
			lookIntervals = append(lookIntervals, start.Sub(lastLook).Seconds())
		}
		lastLook = start
		chains := make([]string, len(todo))
		mu.Lock()
		for j, idx := range todo {
			chains[j] = res.Changes[idx].Chain
		}
		mu.Unlock()
		found, err := b.node.present(ctx, chains)
		if err != nil {
			watchErr = err
			break
		}
		seenAt := time.Now()
		var seen []int
		for j, idx := range todo {
			if found[chains[j]] {
				seen = append(seen, idx)
			}
		}
		res.Looks++
		spent := seenAt.Sub(start)
		lookSeconds = append(lookSeconds, spent.Seconds())
		mu.Lock()
		for _, idx := range seen {
			c := &res.Changes[idx]
			if !c.Superseded {
				c.Seconds = seenAt.Sub(c.Trigger).Seconds()
			}
		}
		pending = removeAll(pending, seen)
		lastMissed = len(seen) < len(todo)
		mu.Unlock()
		if len(seen) == 0 && sleep(ctx, pause(churnPoll, spent)) != nil {
			break
		}
	}
	<-written
	if len(lookSeconds) > 0 {
		res.LookSeconds = measure.Median(lookSeconds)
	}
	if len(lookIntervals) > 0 {
		res.LookInterval = measure.Median(lookIntervals)
	}

	// The daemon observes its histogram right after the restore the watch saw; give it
	// a moment, then read what the churn added.
	_ = sleep(ctx, minSyncPeriod)
	after, err := b.scrape(ctx)
	if err != nil {
		watchErr = errors.Join(watchErr, err)
	} else {
		res.Programming = after[metricProgramming].since(before[metricProgramming])
		res.Syncs = after[metricSync].Count - before[metricSync].Count
	}
	if cpu1, err := p.usage(); err == nil {
		res.CPU = measure.ProcCPU{Self: cpu1.CPU.Self - cpu0.CPU.Self, Children: cpu1.CPU.Children - cpu0.CPU.Children,
			ChildrenSys: cpu1.CPU.ChildrenSys - cpu0.CPU.ChildrenSys}
	}
	if watchErr == nil && ctx.Err() != nil {
		watchErr = ctx.Err()
	}
	if watchErr != nil {
		res.Err = fmt.Sprintf("watching the node: %v", watchErr)
	}
	return res
}

// removeAll returns list without the values in drop. The writer may have removed some of
// them already (superseded changes).
func removeAll(list, drop []int) []int {
	out := list[:0]
	for _, v := range list {
		if !slices.Contains(drop, v) {
			out = append(out, v)
		}
	}
	return out
}
