package app

import (
	"context"
	"errors"
	"fmt"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/events"

	"github.com/kproxy-dev/kproxy/pkg/healthcheck"
	"github.com/kproxy-dev/kproxy/pkg/proxier"
)

// eventsReporter is the reporting controller of kproxy's Events. It is upstream's name,
// so that what selects kube-proxy's Events (kubectl's field selectors, event exporters'
// filters) keeps selecting them after the swap.
const eventsReporter = "kube-proxy"

// Events kproxy emits: upstream kube-proxy's reasons and actions, on the same objects.
const (
	eventActionStart  = "StartKubeProxy"
	eventActionListen = "Listen"

	eventReasonStarting             = "Starting"
	eventReasonDefaultMode          = "KubeProxyDefaultMode"
	eventReasonFailedProxierHealthz = "FailedToStartProxierHealthcheck"
	eventReasonFailedMetricsServer  = "FailedToStartMetricServer"
	eventReasonFailedServiceHealthz = "FailedToStartServiceHealthcheck"
	defaultModeMessage              = "No proxy mode set: kproxy runs in iptables mode. Upstream kube-proxy defaults to nftables from Kubernetes 1.40, so switching back to it would change modes; set mode: iptables (or --proxy-mode=iptables) to keep iptables."
)

// startEvents starts sending Events to the API server (events.k8s.io/v1, as upstream)
// until ctx is done. The broadcaster drops Events it cannot send rather than block the
// sync, and aggregates repeats into series.
func startEvents(ctx context.Context, client kubernetes.Interface) events.EventRecorder {
	b := events.NewBroadcaster(&events.EventSinkImpl{Interface: client.EventsV1()})
	b.StartRecordingToSink(ctx.Done())
	return b.NewRecorder(scheme.Scheme, eventsReporter)
}

// nodeRef is the object of kproxy's node-wide Events, as upstream's.
func nodeRef(name string) *v1.ObjectReference {
	return &v1.ObjectReference{APIVersion: "v1", Kind: "Node", Name: name}
}

// eventSink is where a node's Events go: the recorder and the node they are about.
type eventSink struct {
	recorder events.EventRecorder
	node     string
}

// eventingServiceHealth reports on each Service whose health check node port could not be
// opened, with upstream's reason and message, so that `kubectl describe service` shows
// why load balancers find the node unhealthy.
type eventingServiceHealth struct {
	proxier.ServiceHealth
	events eventSink
}

func (e eventingServiceHealth) SyncServices(ctx context.Context, ports map[types.NamespacedName]int32) error {
	err := e.ServiceHealth.SyncServices(ctx, ports)
	for _, le := range listenErrors(err) {
		ref := &v1.ObjectReference{APIVersion: "v1", Kind: "Service", Namespace: le.Service.Namespace, Name: le.Service.Name}
		e.events.recorder.Eventf(ref, nil, v1.EventTypeWarning, eventReasonFailedServiceHealthz, eventActionListen,
			"node %s failed to start healthcheck %q on port %d: %v", e.events.node, le.Service.String(), le.Port, le.Err)
	}
	return err
}

// listenErrors returns the health check listen failures in err, which may join several.
func listenErrors(err error) []*healthcheck.ListenError {
	if err == nil {
		return nil
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var out []*healthcheck.ListenError
		for _, e := range joined.Unwrap() {
			out = append(out, listenErrors(e)...)
		}
		return out
	}
	var le *healthcheck.ListenError
	if errors.As(err, &le) {
		return []*healthcheck.ListenError{le}
	}
	return nil
}

// hardFailEvent is the Event a server's failure under --bind-address-hard-fail emits.
func hardFailEvent(recorder events.EventRecorder, node, server string, err error) {
	reason := eventReasonFailedMetricsServer
	if server == "healthz" {
		reason = eventReasonFailedProxierHealthz
	}
	recorder.Eventf(nodeRef(node), nil, v1.EventTypeWarning, reason, eventActionStart, "%s", fmt.Sprint(err))
}
