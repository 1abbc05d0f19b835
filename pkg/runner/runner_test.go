package runner

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

const (
	minInterval   = 1 * time.Second
	retryInterval = 30 * time.Second
	maxInterval   = time.Hour

	// guard bounds how long a test waits for the runner goroutine before
	// declaring it stuck. It is a failure guard, never an expected duration:
	// on success every wait ends as soon as the goroutine gets scheduled.
	guard = 5 * time.Second
)

var errSync = errors.New("sync failed")

// harness runs a Runner whose fn reports every call (with the fake time it
// started at) and then waits for the test to say what it returns, so the test
// always knows whether fn is running.
type harness struct {
	t      *testing.T
	clk    *clocktesting.FakeClock
	r      *Runner
	calls  chan time.Time
	result chan error
	// started counts calls to fn, including any the test never received.
	started atomic.Int32
	cancel  context.CancelFunc
	done    chan struct{}
}

func newHarness(t *testing.T, minI, retryI, maxI time.Duration) *harness {
	t.Helper()
	h := &harness{
		t:      t,
		clk:    clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)),
		calls:  make(chan time.Time),
		result: make(chan error),
		done:   make(chan struct{}),
	}
	fn := func(ctx context.Context) error {
		h.started.Add(1)
		select {
		case h.calls <- h.clk.Now():
		case <-ctx.Done():
			return ctx.Err()
		}
		select {
		case err := <-h.result:
			return err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	h.r = New("test", fn, minI, retryI, maxI, h.clk)
	return h
}

// start runs Loop in a goroutine and stops it when the test ends.
func (h *harness) start() {
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() {
		defer close(h.done)
		h.r.Loop(ctx)
	}()
	h.t.Cleanup(func() {
		cancel()
		<-h.done
	})
}

// expectCall waits for fn to be called and returns the fake time it was
// called at; fn keeps running until finish is called.
func (h *harness) expectCall() time.Time {
	h.t.Helper()
	select {
	case at := <-h.calls:
		return at
	case <-time.After(guard):
		h.t.Fatalf("fn was not called")
		return time.Time{}
	}
}

// finish makes the running fn return err and waits until the runner sits in
// its minInterval wait, i.e. holds both of its timers.
func (h *harness) finish(err error) {
	h.t.Helper()
	h.result <- err
	h.waitForWaiters(2)
}

// runOnce expects a call, asserts the fake time it started at, and finishes
// it with err.
func (h *harness) runOnce(wantAt time.Time, err error) {
	h.t.Helper()
	if at := h.expectCall(); !at.Equal(wantAt) {
		h.t.Fatalf("fn called at %v, want %v", at, wantAt)
	}
	h.finish(err)
}

func (h *harness) waitForWaiters(n int) {
	h.t.Helper()
	deadline := time.Now().Add(guard)
	for h.clk.Waiters() != n {
		if time.Now().After(deadline) {
			h.t.Fatalf("runner holds %d timers, want %d", h.clk.Waiters(), n)
		}
		runtime.Gosched()
	}
}

// expectNoCall fails if fn has been called. It yields first so that a runner
// that wrongly decided to run gets the chance to do so; it never fails for a
// correct runner, however the goroutines are scheduled.
func (h *harness) expectNoCall() {
	h.t.Helper()
	for range 100 {
		runtime.Gosched()
	}
	select {
	case at := <-h.calls:
		h.t.Fatalf("unexpected call to fn at %v", at)
	default:
	}
}

func TestFirstRunOnlyWhenRequested(t *testing.T) {
	h := newHarness(t, minInterval, retryInterval, maxInterval)
	h.start()

	// No timer exists before the first run, so no amount of time triggers one.
	h.clk.Step(2 * maxInterval)
	h.expectNoCall()
	if n := h.clk.Waiters(); n != 0 {
		t.Fatalf("runner holds %d timers before its first run, want 0", n)
	}

	h.r.Run()
	h.runOnce(h.clk.Now(), nil)
}

// TestNotReadyRunHoldsNothingBack: a run that was not ready yet neither delays the next
// requested run by minInterval nor arms a retry or periodic run.
func TestNotReadyRunHoldsNothingBack(t *testing.T) {
	h := newHarness(t, minInterval, retryInterval, maxInterval)
	h.start()
	h.r.Run()
	h.expectCall()
	h.result <- fmt.Errorf("waiting for lists: %w", ErrNotReady)
	h.waitForWaiters(0)
	h.clk.Step(2 * maxInterval)
	h.expectNoCall()

	// The event that makes it ready requests a run: served at once.
	h.r.Run()
	h.runOnce(h.clk.Now(), nil)
}

func TestRequestBeforeLoopIsServed(t *testing.T) {
	h := newHarness(t, minInterval, retryInterval, maxInterval)
	h.r.Run()
	h.start()
	h.runOnce(h.clk.Now(), nil)
}

func TestRequestsCoalesce(t *testing.T) {
	h := newHarness(t, minInterval, retryInterval, maxInterval)
	h.start()
	start := h.clk.Now()

	h.r.Run()
	h.r.Run()
	h.r.Run()
	h.expectCall()
	// Requests arriving while fn runs must cause one more run, not five.
	for range 5 {
		h.r.Run()
	}
	h.finish(nil)

	h.clk.Step(minInterval)
	h.runOnce(start.Add(minInterval), nil)

	h.clk.Step(minInterval)
	h.waitForWaiters(1)
	h.expectNoCall()

	// Stop the runner and confirm fn ran exactly twice in total.
	h.cancel()
	<-h.done
	if n := h.started.Load(); n != 2 {
		t.Fatalf("fn called %d times, want 2", n)
	}
}

func TestMinInterval(t *testing.T) {
	h := newHarness(t, minInterval, retryInterval, maxInterval)
	h.start()
	start := h.clk.Now()

	h.r.Run()
	h.runOnce(start, nil)

	// A request right after a run waits until minInterval has passed since
	// that run finished.
	h.r.Run()
	h.clk.Step(minInterval - time.Nanosecond)
	h.expectNoCall()
	h.clk.Step(time.Nanosecond)
	h.runOnce(start.Add(minInterval), nil)
}

func TestMinIntervalCountsFromEndOfRun(t *testing.T) {
	h := newHarness(t, minInterval, retryInterval, maxInterval)
	h.start()

	h.r.Run()
	h.expectCall()
	// fn takes 10s (of fake time) to complete.
	h.clk.Step(10 * time.Second)
	end := h.clk.Now()
	h.r.Run()
	h.finish(nil)

	h.clk.Step(minInterval)
	h.runOnce(end.Add(minInterval), nil)
}

func TestRetryAfterError(t *testing.T) {
	h := newHarness(t, minInterval, retryInterval, maxInterval)
	h.start()
	start := h.clk.Now()

	h.r.Run()
	h.runOnce(start, errSync)

	h.clk.Step(retryInterval - time.Nanosecond)
	h.expectNoCall()
	h.clk.Step(time.Nanosecond)
	retried := start.Add(retryInterval)
	h.runOnce(retried, nil)

	// Success restores the periodic schedule: nothing at the retry interval,
	// a run at maxInterval.
	h.clk.Step(retryInterval)
	h.expectNoCall()
	h.clk.Step(maxInterval - retryInterval)
	h.runOnce(retried.Add(maxInterval), nil)
}

func TestRequestBeatsRetry(t *testing.T) {
	h := newHarness(t, minInterval, retryInterval, maxInterval)
	h.start()
	start := h.clk.Now()

	h.r.Run()
	h.runOnce(start, errSync)

	h.clk.Step(minInterval)
	h.waitForWaiters(1)
	h.r.Run()
	h.runOnce(start.Add(minInterval), nil)

	// The successful run replaced the pending retry, so the old retry
	// deadline must not trigger a run.
	h.clk.Step(retryInterval)
	h.expectNoCall()
}

func TestRetryNeverBeforeMinInterval(t *testing.T) {
	h := newHarness(t, 10*time.Second, time.Second, maxInterval)
	h.start()
	start := h.clk.Now()

	h.r.Run()
	h.runOnce(start, errSync)

	// The retry timer fires after 1s but the runner still honours the 10s
	// minimum interval.
	h.clk.Step(time.Second)
	h.expectNoCall()
	h.clk.Step(9 * time.Second)
	h.runOnce(start.Add(10*time.Second), nil)
}

func TestRetryCappedByMaxInterval(t *testing.T) {
	h := newHarness(t, minInterval, time.Hour, 10*time.Second)
	h.start()
	start := h.clk.Now()

	h.r.Run()
	h.runOnce(start, errSync)

	h.clk.Step(10 * time.Second)
	h.runOnce(start.Add(10*time.Second), nil)
}

func TestPeriodicRunAtMaxInterval(t *testing.T) {
	h := newHarness(t, minInterval, retryInterval, maxInterval)
	h.start()
	start := h.clk.Now()

	h.r.Run()
	h.runOnce(start, nil)

	h.clk.Step(maxInterval - time.Nanosecond)
	h.expectNoCall()
	h.clk.Step(time.Nanosecond)
	first := start.Add(maxInterval)
	h.runOnce(first, nil)

	// And again, counted from the periodic run.
	h.clk.Step(maxInterval)
	h.runOnce(first.Add(maxInterval), nil)
}

func TestPeriodicDeadlineDuringRunIsDropped(t *testing.T) {
	h := newHarness(t, minInterval, retryInterval, maxInterval)
	h.start()
	start := h.clk.Now()

	h.r.Run()
	h.runOnce(start, nil)
	h.clk.Step(minInterval)
	h.waitForWaiters(1)

	// A requested run is still going when the periodic deadline passes. That
	// run already satisfies "at least every maxInterval", so the deadline
	// must not cause an extra run once it finishes.
	h.r.Run()
	h.expectCall()
	h.clk.Step(maxInterval)
	end := h.clk.Now()
	h.finish(nil)
	h.clk.Step(minInterval)
	h.expectNoCall()

	h.clk.Step(maxInterval - minInterval)
	h.runOnce(end.Add(maxInterval), nil)
}

func TestCancelWhileIdle(t *testing.T) {
	h := newHarness(t, minInterval, retryInterval, maxInterval)
	h.start()
	h.r.Run()
	h.runOnce(h.clk.Now(), nil)
	h.clk.Step(minInterval)
	h.waitForWaiters(1)

	h.cancel()
	h.expectStopped()
}

func TestCancelDuringMinInterval(t *testing.T) {
	h := newHarness(t, minInterval, retryInterval, maxInterval)
	h.start()
	h.r.Run()
	h.runOnce(h.clk.Now(), nil)
	h.r.Run()

	h.cancel()
	h.expectStopped()
	if n := h.started.Load(); n != 1 {
		t.Fatalf("fn called %d times, want 1", n)
	}
}

func TestCancelBeforeFirstRun(t *testing.T) {
	h := newHarness(t, minInterval, retryInterval, maxInterval)
	h.start()
	h.cancel()
	h.expectStopped()
}

func TestCancelWhileRunning(t *testing.T) {
	h := newHarness(t, minInterval, retryInterval, maxInterval)
	h.start()
	h.r.Run()
	h.expectCall()
	h.r.Run()

	// fn sees the cancelled context and returns; Loop must not start
	// another run.
	h.cancel()
	h.expectStopped()
	if n := h.started.Load(); n != 1 {
		t.Fatalf("fn called %d times, want 1", n)
	}
}

// expectStopped waits for Loop to return and checks it released its timers.
func (h *harness) expectStopped() {
	h.t.Helper()
	select {
	case <-h.done:
	case <-time.After(guard):
		h.t.Fatalf("Loop did not return after cancellation")
	}
	if n := h.clk.Waiters(); n != 0 {
		h.t.Fatalf("Loop left %d timers behind, want 0", n)
	}
}
