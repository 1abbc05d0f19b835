package diagnose_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"time"

	v1 "k8s.io/api/core/v1"

	"github.com/kproxy-dev/kproxy/pkg/diagnose"
	"github.com/kproxy-dev/kproxy/pkg/iptables"
)

// The fakes stand in for a broken node: the real readers are
// nodesetup.NewProcSysctl(nodesetup.HostRoot), diagnose.NetlinkBridges{},
// diagnose.XTablesLock, diagnose.ExecSaver{} and diagnose.HTTPFetcher{}.

type sysctls map[string]string

func (s sysctls) Get(name string) (string, error) {
	if v, ok := s[name]; ok {
		return v, nil
	}
	return "", fmt.Errorf("reading sysctl %s: %w", name, fs.ErrNotExist)
}

type bridges []string

func (b bridges) Bridges() ([]string, error) { return b, nil }

type heldLock struct{}

func (heldLock) Probe(context.Context) (diagnose.LockState, error) {
	return diagnose.LockState{Path: "/run/xtables.lock", Exists: true, Held: true, Waited: 5 * time.Second,
		Holders: []diagnose.Process{{PID: 4242, Command: "/opt/cni/bin/portmap"}}}, nil
}

type saves map[iptables.Backend]string

func (s saves) Save(_ context.Context, _ v1.IPFamily, b iptables.Backend) ([]byte, error) {
	return []byte(s[b]), nil
}

type endpoints map[string]string

func (e endpoints) Fetch(_ context.Context, url string) (int, []byte, error) {
	body, ok := e[url]
	if !ok {
		return 0, nil, fmt.Errorf("GET %s: connection refused", url)
	}
	status := 200
	if url == diagnose.DefaultHealthURL+"/readyz" {
		status = 503
	}
	return status, []byte(body), nil
}

func Example() {
	ctx := context.Background()
	now := time.Date(2026, 5, 4, 12, 0, 0, 0, time.UTC)
	var r diagnose.Report
	r.Add(diagnose.NodeChecks(ctx, diagnose.NodeInputs{
		Sysctl: sysctls{
			"net/ipv4/ip_forward":                "0",
			"net/bridge/bridge-nf-call-iptables": "1",
			"net/netfilter/nf_conntrack_count":   "230000",
			"net/netfilter/nf_conntrack_max":     "262144",
		},
		Bridges: bridges{"cni0"},
		Lock:    heldLock{},
		Backend: iptables.BackendLegacy,
	})...)
	r.Add(diagnose.BackendChecks(ctx, diagnose.BackendInputs{
		Saver: saves{
			iptables.BackendLegacy: "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 10.96.0.1/32 -p tcp --dport 443 -j KUBE-SVC-NPX46M4PTMTKRN6Y\nCOMMIT\n",
			iptables.BackendNFT:    "*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -d 10.96.0.10/32 -p udp --dport 53 -j KUBE-SVC-TCOU7JCQXEZGVUNU\nCOMMIT\n",
		},
		InUse: iptables.BackendLegacy,
	})...)
	r.Add(diagnose.DaemonChecks(ctx, diagnose.DaemonInputs{
		Fetcher: endpoints{
			diagnose.DefaultMetricsURL: fmt.Sprintf("kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family=\"IPv4\"} %d\n"+
				"kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family=\"IPv4\"} %d\n"+
				"kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv4\"} 14\n"+
				"kubeproxy_sync_proxy_rules_endpoint_changes_pending 3\n",
				now.Add(-10*time.Minute).Unix(), now.Add(-4*time.Minute).Unix()),
			diagnose.DefaultHealthURL + "/livez":  `{"status":{"IPv4":{"lastUpdated":"2026-05-04T11:50:00Z","healthy":false,"synced":true,"lastError":"iptables-legacy-restore -w 5 --noflush: resource busy (exit status 4): Another app is currently holding the xtables lock"}}}`,
			diagnose.DefaultHealthURL + "/readyz": `{"status":{"IPv4":{"lastUpdated":"2026-05-04T11:50:00Z","healthy":false,"synced":true,"lastError":"iptables-legacy-restore -w 5 --noflush: resource busy (exit status 4): Another app is currently holding the xtables lock"}}}`,
		},
		Now: now,
	})...)
	if err := r.WriteText(os.Stdout); err != nil {
		fmt.Println(err)
	}
	fmt.Println("failed:", r.Failed())
	// Output:
	// PROBLEM  IPv4 forwarding is off: the node drops Service traffic to pods and other nodes
	//          net.ipv4.ip_forward = 0
	//          fix: sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d/)
	//
	// OK       bridged IPv4 traffic goes through iptables
	//          net.bridge.bridge-nf-call-iptables = 1
	//          bridges: cni0
	//
	// WARNING  conntrack table is 87.7% full (over 80%)
	//          net.netfilter.nf_conntrack_count = 230000
	//          net.netfilter.nf_conntrack_max = 262144
	//          fix: raise the limit (sysctl -w net.netfilter.nf_conntrack_max=524288, or conntrack.maxPerCore in kproxy's configuration) and find what fills it (conntrack -L)
	//
	// PROBLEM  xtables lock is held by PID 4242 (portmap): kproxy's syncs fail while it is
	//          /run/xtables.lock: still held after 5s
	//          held by PID 4242 (/opt/cni/bin/portmap)
	//          fix: find why PID 4242 keeps it (cat /proc/4242/cmdline, its logs) and stop it
	//
	// PROBLEM  IPv4 Service rules are in both the legacy and the nft backend: the kernel runs both, and stale ones can win
	//          iptables-legacy-save: 1 kube-proxy chain, 1 rule (1 sending traffic to Services)
	//          iptables-nft-save: 1 kube-proxy chain, 1 rule (1 sending traffic to Services)
	//          kproxy uses legacy
	//          fix: stop whatever still writes nft rules (an old kube-proxy?), then remove them: kproxy --cleanup --iptables-backend=nft
	//
	// PROBLEM  IPv4 changes requested 4m0s ago are not synced (limit 1m0s, twice the sync period)
	//          last successful sync: 2026-05-04T11:50:00Z (10m0s ago)
	//          last sync request: 2026-05-04T11:56:00Z (4m0s ago)
	//          3 EndpointSlice changes pending
	//          fix: read /readyz's lastError and kproxy's log: the API server out of reach, the xtables lock held, or a restore the kernel refuses are the usual causes
	//
	// WARNING  iptables-restore failed 14 times since kproxy started
	//          kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv4"} = 14
	//          fix: kproxy logs each failure with the failing line and its neighbours ("iptables-restore failed")
	//
	// OK       no Service rejected by the kernel
	//          kproxy_kernel_rejected_services_total = 0
	//
	// OK       no other program changed kproxy's rules
	//          kproxy_rules_drift_total = 0
	//
	// OK       kproxy's sync loop is alive
	//          http://127.0.0.1:10256/livez: HTTP 200
	//          IPv4: synced=true healthy=false stuck=false, last update 2026-05-04T11:50:00Z (10m0s ago), lastError: iptables-legacy-restore -w 5 --noflush: resource busy (exit status 4): Another app is currently holding the xtables lock
	//
	// PROBLEM  kproxy is not ready: its rules are not applied, or not current
	//          http://127.0.0.1:10256/readyz: HTTP 503
	//          IPv4: synced=true healthy=false stuck=false, last update 2026-05-04T11:50:00Z (10m0s ago), lastError: iptables-legacy-restore -w 5 --noflush: resource busy (exit status 4): Another app is currently holding the xtables lock
	//          fix: act on lastError above; without one, read kproxy's log
	//
	// 5 problems, 2 warnings, 4 ok
	// failed: true
}
