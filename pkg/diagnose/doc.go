// Package diagnose holds the node-level and daemon-health checks of "kproxy diagnose",
// which explains why a Service does not answer. Each check reads what it needs through
// a small interface and returns Findings: a severity (OK, Warning, Problem), a short
// title, the evidence it read with the values, and a one-line fix. The command adds
// them to a Report and prints it.
//
//	var r diagnose.Report
//	r.Add(diagnose.NodeChecks(ctx, diagnose.NodeInputs{
//		Sysctl:  nodesetup.NewProcSysctl(nodesetup.HostRoot),
//		Bridges: diagnose.NetlinkBridges{},
//		Lock: diagnose.XTablesLock{Path: diagnose.XTablesLockPath(os.Getenv), Wait: iptables.DefaultWait},
//		Families: families, LocalhostNodePorts: localhostNodePorts, Backend: backend,
//	})...)
//	r.Add(diagnose.BackendChecks(ctx, diagnose.BackendInputs{Saver: diagnose.ExecSaver{}, InUse: backend, Families: families})...)
//	r.Add(diagnose.DaemonChecks(ctx, diagnose.DaemonInputs{Fetcher: diagnose.HTTPFetcher{}, SyncPeriod: syncPeriod})...)
//	r.WriteText(os.Stdout) // or r.WriteJSON
//	if r.Failed() {
//		os.Exit(1)
//	}
//
// # Checks and thresholds
//
// NodeChecks (kernel settings, read in the caller's network namespace):
//   - forwarding per family (net.ipv4.ip_forward, net.ipv6.conf.all.forwarding): a
//     problem unless 1;
//   - br_netfilter (net.bridge.bridge-nf-call-iptables / -ip6tables): a problem when the
//     node has a Linux bridge and the module is missing or the setting is not 1; fine
//     without a bridge (routed CNIs);
//   - net.ipv4.conf.all.route_localnet when localhost node ports are on: a problem
//     unless 1;
//   - conntrack fill level, nf_conntrack_count / nf_conntrack_max: a warning above 80%,
//     a problem above 95%;
//   - the xtables lock ($XTABLES_LOCKFILE or /run/xtables.lock): a non-blocking flock,
//     retried for the lock wait of kproxy's restores (5s); held all that time is a
//     problem (a warning when kproxy uses nft, which does not take the lock), naming
//     the holder's PID and command line from /proc/locks.
//
// BackendChecks counts kube-proxy's chains and rules (KUBE-SERVICES, KUBE-NODEPORTS,
// KUBE-SVC-*, KUBE-SEP-*, ...) in iptables-legacy-save and iptables-nft-save output per
// family: a problem when both backends hold Service rules, or when kproxy's backend
// holds none and the other does; a warning when kubelet's hint chain is only in the
// other backend.
//
// DaemonChecks reads kproxy's metrics (http://127.0.0.1:10249/metrics) and health
// (/livez, /readyz on http://127.0.0.1:10256): a problem when a sync request is
// pending for more than twice the sync period, when /livez says the sync loop is stuck,
// when /readyz says the rules are not applied or not current (with its lastError), or
// when nothing answers on the health port;
// a warning for restore failures, Services the kernel rejected and drift, each with
// its count.
//
// Finding IDs are stable, for scripts reading the JSON report: node/ip-forward/<family>,
// node/bridge-netfilter/<family>, node/route-localnet, node/conntrack-fill,
// node/xtables-lock; backend/<family>, backend/kubelet-hint; daemon/metrics,
// daemon/sync/<family> (daemon/sync when the metrics show no family),
// daemon/restore-failures, daemon/kernel-rejected, daemon/drift, daemon/livez,
// daemon/readyz. <family> is IPv4 or IPv6.
//
// Checks that cannot read their input report a Warning saying so, never a guess. The
// real readers act in the network namespace of the calling thread (sysctls through
// /proc/sys, netlink, the save binaries it starts), so tests run them inside a
// throwaway namespace with netnstest.Do.
package diagnose
