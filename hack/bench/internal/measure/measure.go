// Package measure holds what kproxy's benchmarks share to time operations and show the
// results: bounded timings that tell a timeout from a skip, medians, number formats, a
// description of the machine and of how busy it was, the processes a benchmark starts
// (process groups that leave nothing behind) and fresh network namespaces with timed
// iptables-restore runs in them. hack/bench (the proxier harness) and hack/bench/daemon
// (the real daemons on a cluster) both use it, so that their tables read alike.
package measure

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Timing is one timed operation.
type Timing struct {
	Seconds  float64 `json:"seconds"`
	TimedOut bool    `json:"timedOut,omitempty"`
	// Skipped: not attempted (no time left, or an earlier step failed).
	Skipped bool   `json:"skipped,omitempty"`
	Err     string `json:"err,omitempty"`
}

// OK reports whether the operation completed in time.
func (m Timing) OK() bool { return !m.TimedOut && !m.Skipped && m.Err == "" }

// Bound limits one operation: Timeout, cut short by Deadline (the whole benchmark's) when
// that is not zero.
type Bound struct {
	Timeout  time.Duration
	Deadline time.Time
}

// Timed runs fn under b and times it. Running out of the timeout is a timeout; running
// out of the deadline first, or having none of it left, is a skip: the timing says nothing
// about the operation.
func Timed(ctx context.Context, b Bound, fn func(context.Context) error) Timing {
	timeout, cut := b.Timeout, false
	if !b.Deadline.IsZero() {
		left := time.Until(b.Deadline)
		if left <= 0 {
			return Timing{Skipped: true}
		}
		if left < timeout {
			timeout, cut = left, true
		}
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	err := fn(ctx)
	m := Timing{Seconds: time.Since(start).Seconds()}
	switch {
	case err == nil:
	case errors.Is(ctx.Err(), context.DeadlineExceeded) && cut:
		m.Skipped = true
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		m.TimedOut = true
	default:
		m.Err = err.Error()
	}
	return m
}

// MedianOf is the median duration of ms, in seconds: timeouts count as +Inf, skipped and
// failed timings not at all; NaN when nothing is left.
func MedianOf(ms []Timing) float64 {
	var vals []float64
	for _, m := range ms {
		switch {
		case m.TimedOut:
			vals = append(vals, math.Inf(1))
		case m.OK():
			vals = append(vals, m.Seconds)
		}
	}
	if len(vals) == 0 {
		return math.NaN()
	}
	return Median(vals)
}

// FmtMedian shows MedianOf(ms), "error" if any timing failed, ">timeout" when timeouts
// are the median.
func FmtMedian(ms []Timing, timeout time.Duration) string {
	for _, m := range ms {
		if m.Err != "" {
			return "error"
		}
	}
	v := MedianOf(ms)
	switch {
	case math.IsNaN(v):
		return "—"
	case math.IsInf(v, 1):
		return ">" + FmtSeconds(timeout.Seconds())
	}
	return FmtSeconds(v)
}

// FmtTiming shows one timing as FmtMedian shows a median.
func FmtTiming(m Timing, timeout time.Duration) string {
	switch {
	case m.Err != "":
		return "error"
	case m.Skipped:
		return "—"
	case m.TimedOut && timeout > 0:
		return ">" + FmtSeconds(timeout.Seconds())
	case m.TimedOut:
		return "timed out"
	}
	return FmtSeconds(m.Seconds)
}

// Median of vals (not empty); vals is sorted in place.
func Median(vals []float64) float64 {
	slices.Sort(vals)
	n := len(vals)
	if n%2 == 1 {
		return vals[n/2]
	}
	return (vals[n/2-1] + vals[n/2]) / 2
}

// Quantile is the q-quantile (0 < q <= 1) of vals (not empty) by the nearest-rank method:
// a value that was measured, never an interpolation. vals is sorted in place.
func Quantile(vals []float64, q float64) float64 {
	slices.Sort(vals)
	rank := int(math.Ceil(q * float64(len(vals))))
	return vals[min(max(rank, 1), len(vals))-1]
}

// FmtOr shows f(Median(vals)), or "—" when there are none.
func FmtOr(vals []float64, f func(float64) string) string {
	if len(vals) == 0 {
		return "—"
	}
	return f(Median(vals))
}

// FmtSeconds shows a duration with about three significant digits.
func FmtSeconds(s float64) string {
	switch {
	case s < 0.01:
		return fmt.Sprintf("%.1f ms", s*1000)
	case s < 1:
		return fmt.Sprintf("%.0f ms", s*1000)
	case s < 10:
		return fmt.Sprintf("%.2f s", s)
	case s < 100:
		return fmt.Sprintf("%.1f s", s)
	}
	return fmt.Sprintf("%.0f s", s)
}

// FmtBytes shows a size in B, KiB or MiB.
func FmtBytes(b float64) string {
	switch {
	case b < 1<<10:
		return fmt.Sprintf("%.0f B", b)
	case b < 1<<20:
		return fmt.Sprintf("%.0f KiB", b/(1<<10))
	case b < 100<<20:
		return fmt.Sprintf("%.1f MiB", b/(1<<20))
	}
	return fmt.Sprintf("%.0f MiB", b/(1<<20))
}

// FmtCount shows a count as 950, 9.5k, 95k or 9.50M.
func FmtCount(n float64) string {
	switch {
	case n < 1000:
		return fmt.Sprintf("%.0f", n)
	case n < 10000:
		return fmt.Sprintf("%.1fk", n/1000)
	case n < 1e6:
		return fmt.Sprintf("%.0fk", n/1000)
	}
	return fmt.Sprintf("%.2fM", n/1e6)
}

// FmtInt writes n with thousands separators: 10,000.
func FmtInt(n int) string {
	s := strconv.Itoa(n)
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// Tail keeps the last Max bytes written to it: the end of a failing command's output.
type Tail struct {
	Max int
	mu  sync.Mutex
	buf []byte
}

func (t *Tail) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if len(t.buf) > t.Max {
		t.buf = t.buf[len(t.buf)-t.Max:]
	}
	return len(p), nil
}

func (t *Tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.buf))
}
