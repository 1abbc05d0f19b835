package proxier

import (
	"strings"
	"time"

	"k8s.io/utils/clock"
)

// stopwatch splits a sync's time among its phases, for the sync's log line: when a sync
// is slow, an operator (and the daemon benchmark) can tell whether iptables, the render
// or the rest took the time.
type stopwatch struct {
	clock  clock.PassiveClock
	last   time.Time
	phases []string
	spent  map[string]time.Duration
}

func newStopwatch(c clock.PassiveClock, start time.Time) *stopwatch {
	return &stopwatch{clock: c, last: start, spent: map[string]time.Duration{}}
}

// lap charges the time since the previous lap (or the start) to phase. A phase lapped
// twice (a retried restore) adds up.
func (s *stopwatch) lap(phase string) {
	now := s.clock.Now()
	if _, seen := s.spent[phase]; !seen {
		s.phases = append(s.phases, phase)
	}
	s.spent[phase] += now.Sub(s.last)
	s.last = now
}

// String lists the phases in the order they first ran: "prepare=12ms render=150ms ...".
func (s *stopwatch) String() string {
	var b strings.Builder
	for i, p := range s.phases {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p + "=" + s.spent[p].Round(time.Millisecond/10).String())
	}
	return b.String()
}
