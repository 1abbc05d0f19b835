package proxier

import (
	"testing"
	"time"

	clocktesting "k8s.io/utils/clock/testing"
)

func TestStopwatchChargesEachPhaseItsOwnTime(t *testing.T) {
	c := clocktesting.NewFakePassiveClock(time.Unix(1000, 0))
	sw := newStopwatch(c, c.Now())
	c.SetTime(c.Now().Add(5 * time.Millisecond))
	sw.lap("prepare")
	c.SetTime(c.Now().Add(150 * time.Millisecond))
	sw.lap("render")
	c.SetTime(c.Now().Add(2 * time.Second))
	sw.lap("restore")
	// A retried restore renders and restores again: both phases add up.
	c.SetTime(c.Now().Add(50 * time.Millisecond))
	sw.lap("render")
	c.SetTime(c.Now().Add(time.Second))
	sw.lap("restore")
	if got, want := sw.String(), "prepare=5ms render=200ms restore=3s"; got != want {
		t.Errorf("stopwatch = %q, want %q", got, want)
	}
}
