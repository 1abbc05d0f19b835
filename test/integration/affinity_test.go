package integration

import (
	"fmt"
	"strings"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/utils/ptr"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// Session affinity timing. The recent match keeps a client on its endpoint while the
// client's last new connection is at most affinityTimeout old; each new connection
// renews it. affinityWait leaves a second of margin past the timeout for the kernel's
// jiffies-based clock.
const (
	affinityTimeout = 2 // seconds
	affinityWait    = (affinityTimeout + 1) * time.Second
	// affinityTries bounds the waits for a new connection to pick another endpoint once
	// the affinity has expired. Each new connection picks one of three endpoints at
	// random (and sticks to it again), so all tries keep the old one with odds 3^-10.
	affinityTries = 10
)

// withAffinity sets ClientIP session affinity with timeout seconds on svc.
func withAffinity(svc *v1.Service, seconds int32) *v1.Service {
	svc.Spec.SessionAffinity = v1.ServiceAffinityClientIP
	svc.Spec.SessionAffinityConfig = &v1.SessionAffinityConfig{
		ClientIP: &v1.ClientIPConfig{TimeoutSeconds: ptr.To(seconds)},
	}
	return svc
}

// TestSessionAffinity: with ClientIP affinity every new connection from a client goes to
// the endpoint its first one reached, until the client has made no new connection for
// the timeout; then it is load balanced afresh. Switching affinity off spreads a client's
// connections over every endpoint again.
func TestSessionAffinity(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 3)
		for _, p := range c.pods {
			p.serve(t, 8080, 5353)
		}
		k := newKproxy(t, c, backend)
		http := []port{httpPort}
		svc := withAffinity(service("sticky", "172.30.0.20", httpPort), affinityTimeout)
		k.load(svc, endpointSlice("sticky", http, c.pods...))
		k.sync(t)
		const addr = "172.30.0.20:80"
		if nat, want := k.save(t, "nat"), fmt.Sprintf("--rcheck --seconds %d --reap", affinityTimeout); !strings.Contains(nat, want) {
			t.Fatalf("no affinity rule with the service's timeout (%q) in the nat table:\n%s", want, nat)
		}

		// Without affinity, 20 connections reaching one of three endpoints has odds of
		// 3^-19. The connections follow each other within milliseconds, far inside the
		// timeout, which each of them renews.
		first := exchanges(t, c.client, "tcp", addr, 1, nil)[0]
		var stuck *pod
		for _, p := range c.pods {
			if p.name == first.pod {
				stuck = p
			}
		}
		if stuck == nil {
			t.Fatalf("TCP %s: answered by %q, want one of the endpoints", addr, first.pod)
		}
		allTo(t, c.client, "tcp", addr, 20, stuck)

		// Once the affinity has expired, a new connection may go anywhere. It sticks
		// again to wherever it goes, so each try waits out the timeout first.
		moved := false
		var seen []string
		for range affinityTries {
			time.Sleep(affinityWait)
			r := exchanges(t, c.client, "tcp", addr, 1, nil)[0]
			seen = append(seen, r.pod)
			if r.pod != stuck.name {
				moved = true
				break
			}
		}
		if !moved {
			t.Errorf("TCP %s: after waiting out the %ds affinity %d times, every new connection still went to %s (%v)",
				addr, affinityTimeout, affinityTries, stuck.name, seen)
		} else {
			t.Logf("TCP %s: after the affinity expired, connections went to %v", addr, seen)
		}

		// Affinity off: the same client's connections are spread at once, and no rule
		// remembers clients any more.
		next := service("sticky", "172.30.0.20", httpPort)
		k.OnServiceUpdate(next)
		k.sync(t)
		reachesAll(t, c.client, "tcp", addr, c.pods, podGateway)
		if nat := k.save(t, "nat"); strings.Contains(nat, "-m recent") {
			t.Errorf("affinity switched off, but the nat table still has recent matches:\n%s", nat)
		}
	})
}
