// Package runner provides a bounded-frequency runner: it calls a function
// when asked to, but never more often than a minimum interval, retries it
// after a failure and calls it at least once per maximum interval.
//
// The proxier uses it to drive rule syncs: every Service or EndpointSlice event
// calls Run, bursts of events collapse into one sync, and a failed sync is
// retried even when no further events arrive.
//
// Timing, for one Loop:
//
//	request ──► fn runs ──► fn returns at T
//	                         │
//	                         ├─ next timer armed: T+maxInterval, or
//	                         │  T+min(retryInterval, maxInterval) if fn failed
//	                         └─ no run before T+minInterval; a request or the
//	                            next timer arriving in between is served then
//
// Invariant: fn is only ever called from the Loop goroutine, so calls never
// overlap, and a Loop holds at most two timers (the next-run timer and the
// minInterval timer) on its clock.
package runner

import (
	"context"
	"errors"
	"time"

	"k8s.io/klog/v2"
	"k8s.io/utils/clock"
)

// ErrNotReady is what fn returns when it could not start its work yet and the event that
// makes it ready will request the next run (the proxier before the initial lists): such
// a run changes nothing, so it neither holds the next run back by minInterval nor arms
// a retry or periodic run. Without it a proxy started a second before its lists arrived
// waited out minInterval before its first real sync.
var ErrNotReady = errors.New("not ready to run")

// Runner calls a function on request, bounded in frequency by minInterval
// and forced at least every maxInterval. Create it with New, drive it with
// Loop and request runs with Run.
type Runner struct {
	name          string
	fn            func(ctx context.Context) error
	minInterval   time.Duration
	retryInterval time.Duration
	maxInterval   time.Duration
	clk           clock.WithTicker

	// requests holds at most one pending request; Run drops a request when
	// one is already pending, which is what coalesces bursts into one run.
	requests chan struct{}
}

// New returns a runner that calls fn at most once per minInterval, retries
// after retryInterval when fn fails, and runs at least every maxInterval.
//
// minInterval is measured from the end of one run to the start of the next.
// A retry is never scheduled later than maxInterval, and never runs before
// minInterval has passed. name identifies the runner in log messages. clk is
// injected so tests can drive time with a fake clock.
func New(name string, fn func(ctx context.Context) error, minInterval, retryInterval, maxInterval time.Duration, clk clock.WithTicker) *Runner {
	return &Runner{
		name:          name,
		fn:            fn,
		minInterval:   minInterval,
		retryInterval: retryInterval,
		maxInterval:   maxInterval,
		clk:           clk,
		requests:      make(chan struct{}, 1),
	}
}

// Run requests a run of fn and returns at once. Requests made before the
// pending one is served collapse into it, and a request made while Loop is not
// running is remembered until Loop starts.
func (r *Runner) Run() {
	select {
	case r.requests <- struct{}{}:
	default:
		// A request is already pending; the run that serves it will also
		// observe whatever state prompted this one.
	}
}

// Loop serves run requests until ctx is done and then returns. The first run
// happens only when requested: callers (the proxier) must not sync before
// their informers have synced, so there is no periodic run until fn has run
// once. ctx is passed to fn, which should return promptly once ctx is done;
// Loop cannot return while fn is running. Loop must not be called
// concurrently with itself.
func (r *Runner) Loop(ctx context.Context) {
	logger := klog.FromContext(ctx).WithValues("runner", r.name)
	logger.V(3).Info("Runner loop started")
	defer logger.V(3).Info("Runner loop stopped")

	// next is nil until the first run; its channel is then the periodic or
	// retry deadline. A nil channel blocks forever in select, which is what
	// "no periodic run before the first requested run" needs.
	var next clock.Timer
	var nextC <-chan time.Time
	defer func() {
		if next != nil {
			next.Stop()
		}
	}()

	for {
		select {
		case <-ctx.Done():
			return
		case <-r.requests:
		case <-nextC:
		}

		err := r.fn(ctx)
		if errors.Is(err, ErrNotReady) {
			continue
		}

		delay := r.maxInterval
		if err != nil {
			delay = min(r.retryInterval, r.maxInterval)
			logger.V(2).Info("Run failed, scheduling a retry", "err", err, "retryIn", delay)
		}
		// A fresh timer rather than Reset: the old one may have fired while fn
		// was running, and its unread tick would otherwise trigger a run that
		// nothing asked for.
		if next != nil {
			next.Stop()
		}
		next = r.clk.NewTimer(delay)
		nextC = next.C()

		if !r.wait(ctx, r.minInterval) {
			return
		}
	}
}

// wait blocks for d on the runner's clock and reports false if ctx was done
// first. Requests arriving meanwhile stay in the requests slot and the
// next-run timer keeps its tick, so both are served as soon as wait returns.
func (r *Runner) wait(ctx context.Context, d time.Duration) bool {
	t := r.clk.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C():
		return true
	}
}
