package measure

import (
	"testing"
	"time"
)

func TestMedianCells(t *testing.T) {
	timeout := 120 * time.Second
	for _, tc := range []struct {
		name string
		ms   []Timing
		want string
	}{
		{"odd", []Timing{{Seconds: 3}, {Seconds: 1}, {Seconds: 2}}, "2.00 s"},
		{"timeout is slowest", []Timing{{Seconds: 1}, {TimedOut: true}, {Seconds: 2}}, "2.00 s"},
		{"mostly timeouts", []Timing{{Seconds: 1}, {TimedOut: true}, {TimedOut: true}}, ">120 s"},
		{"skips ignored", []Timing{{Skipped: true}, {Seconds: 0.25}}, "250 ms"},
		{"nothing", []Timing{{Skipped: true}}, "—"},
		{"error shows", []Timing{{Seconds: 1}, {Err: "boom"}}, "error"},
	} {
		if got := FmtMedian(tc.ms, timeout); got != tc.want {
			t.Errorf("%s: got %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestQuantileIsAMeasuredValue(t *testing.T) {
	vals := []float64{5, 1, 4, 2, 3, 6, 7, 8, 9, 10}
	for _, tc := range []struct{ q, want float64 }{{0.5, 5}, {0.9, 9}, {0.99, 10}, {0.01, 1}, {1, 10}} {
		if got := Quantile(vals, tc.q); got != tc.want {
			t.Errorf("Quantile(%v) = %v, want %v", tc.q, got, tc.want)
		}
	}
}
