package integration

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/utils/clock"

	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// canaryTables are the tables kube-proxy, and so kproxy, keeps a canary chain in.
var canaryTables = []string{"mangle", "nat", "filter"}

// repairTimeout bounds the wait for the running proxier to (re)write its rules: the
// monitor's 200ms checks, the wait for the rest of a flush, and the runner's
// MinSyncPeriod (1s) take far less.
const repairTimeout = 10 * time.Second

// TestRepairAfterFlush: kproxy running as the command runs it (the proxier's Run loop
// and the canary Monitor wired to ForceFullSync, both inside the node namespace)
// notices that another program flushed and deleted every chain of the mangle, nat and
// filter tables, as a firewalld reload does, and rewrites its rules with a full sync:
// the service works again, and the canaries are back.
func TestRepairAfterFlush(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend iptables.Backend) {
		c := newCluster(t, 2)
		for _, p := range c.pods {
			p.serve(t, 8080, 5353)
		}
		k := newKproxy(t, c, backend)
		ports := []port{httpPort.withNodePort(30080)}
		k.load(service("web", "172.30.0.10", ports...), endpointSlice("web", ports, c.pods...))

		// Both loops block until ctx is done, each on its own goroutine in node.Do, so
		// the binaries they run act on the node's tables. The cleanup stops them before
		// the namespaces (whose cleanups were registered earlier) are deleted.
		ctx, cancel := context.WithCancel(k.ctx)
		var reloads atomic.Int32
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		inNode := func(name string, fn func()) {
			wg.Go(func() {
				if err := c.node.Do(func() error { fn(); return nil }); err != nil {
					errs <- fmt.Errorf("%s: %w", name, err)
				}
			})
		}
		inNode("proxier", func() { k.Run(ctx) })
		inNode("monitor", func() {
			iptables.Monitor(ctx, k.ipt, iptables.CanaryChain, canaryTables, func() {
				reloads.Add(1)
				k.ForceFullSync()
			}, 200*time.Millisecond, clock.RealClock{})
		})
		t.Cleanup(func() {
			cancel()
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Errorf("running in the node namespace: %v", err)
			}
		})

		// missing lists what the node's tables lack of kproxy's rules and canaries.
		bin := iptables.BinaryName(k.ipt.Family(), backend, "save")
		missing := func() []string {
			var out []string
			saved := map[string]string{}
			for _, table := range canaryTables {
				saved[table] = c.node.Run(t, bin, "-t", table)
				if !strings.Contains(saved[table], ":"+iptables.CanaryChain+" ") {
					out = append(out, table+" canary")
				}
			}
			for _, want := range []string{
				":KUBE-SERVICES ",
				`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`,
				"--to-destination 10.244.1.2:8080",
				"--to-destination 10.244.2.2:8080",
			} {
				if !strings.Contains(saved["nat"], want) {
					out = append(out, "nat "+want)
				}
			}
			if !strings.Contains(saved["filter"], "-j KUBE-FORWARD") {
				out = append(out, "filter FORWARD -j KUBE-FORWARD")
			}
			return out
		}
		waitForRules := func(what string) {
			t.Helper()
			deadline := time.Now().Add(repairTimeout)
			for {
				m := missing()
				if len(m) == 0 {
					return
				}
				if time.Now().After(deadline) {
					t.Fatalf("%s: still missing after %v: %q", what, repairTimeout, m)
				}
				time.Sleep(100 * time.Millisecond)
			}
		}
		works := func() {
			t.Helper()
			reachesAll(t, c.client, "tcp", "172.30.0.10:80", c.pods, podGateway)
			reachesAll(t, c.client, "tcp", hostPort(nodeAddr.String(), 30080), c.pods, podGateway)
		}

		waitForRules("first sync")
		works()
		if n := reloads.Load(); n != 0 {
			t.Fatalf("%d reloads before any flush", n)
		}

		ipt := iptables.BinaryName(k.ipt.Family(), backend, "")
		for _, table := range canaryTables {
			c.node.Run(t, ipt, "-w", "5", "-t", table, "-F")
			c.node.Run(t, ipt, "-w", "5", "-t", table, "-X")
		}
		start := time.Now()
		waitForRules("after the flush")
		t.Logf("rules and canaries back %v after the flush", time.Since(start).Round(time.Millisecond))
		if reloads.Load() == 0 {
			t.Error("the rules are back, but the monitor never asked for a reload")
		}
		works()
	})
}
