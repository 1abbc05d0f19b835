package app

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"

	"github.com/kproxy-dev/kproxy/pkg/healthcheck"
)

type failingServiceHealth struct{ err error }

func (f failingServiceHealth) SyncServices(context.Context, map[types.NamespacedName]int32) error {
	return f.err
}
func (failingServiceHealth) SyncEndpoints(map[types.NamespacedName]int) {}

// TestServiceHealthcheckListenFailuresBecomeEvents: each health check node port that
// could not be opened is a Warning Event on its Service, with upstream's reason and
// message; other errors are not, and the error still reaches the proxier.
func TestServiceHealthcheckListenFailuresBecomeEvents(t *testing.T) {
	a := types.NamespacedName{Namespace: "ns", Name: "a"}
	b := types.NamespacedName{Namespace: "ns", Name: "b"}
	err := errors.Join(
		&healthcheck.ListenError{Service: a, Port: 30001, Err: errors.New("address already in use")},
		fmt.Errorf("syncing: %w", errors.New("something else")),
		&healthcheck.ListenError{Service: b, Port: 30002, Err: errors.New("permission denied")},
	)
	rec := events.NewFakeRecorder(10)
	h := eventingServiceHealth{ServiceHealth: failingServiceHealth{err}, events: eventSink{rec, "node-1"}}
	if got := h.SyncServices(context.Background(), nil); got != err {
		t.Errorf("SyncServices returned %v, want the inner error", got)
	}
	close(rec.Events)
	var got []string
	for e := range rec.Events {
		got = append(got, e)
	}
	want := []string{
		`Warning FailedToStartServiceHealthcheck node node-1 failed to start healthcheck "ns/a" on port 30001: address already in use`,
		`Warning FailedToStartServiceHealthcheck node node-1 failed to start healthcheck "ns/b" on port 30002: permission denied`,
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("events:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestHardFailEventNamesTheServer(t *testing.T) {
	rec := events.NewFakeRecorder(2)
	hardFailEvent(rec, "node-1", "healthz", errors.New("bind: address already in use"))
	hardFailEvent(rec, "node-1", "metrics", errors.New("bind: address already in use"))
	for _, want := range []string{
		"Warning FailedToStartProxierHealthcheck bind: address already in use",
		"Warning FailedToStartMetricServer bind: address already in use",
	} {
		if got := <-rec.Events; got != want {
			t.Errorf("event %q, want %q", got, want)
		}
	}
}
