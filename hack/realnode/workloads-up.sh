#!/usr/bin/env bash
# What a cluster with real kubelets needs beyond cluster-up's control plane (which serves
# node namespaces without kubelets): kube-scheduler, and a second kube-controller-manager with
# the controllers cluster-up leaves out: daemonset, deployment, replicaset, and node-lifecycle,
# which lifts the not-ready taint a kubelet registers its Node with (cluster-up's nodes send no
# heartbeats: run this only once they are real or gone).
# Idempotent; cluster-down stops both. Needs hack/build-node-tools.sh (kube-scheduler).
set -euo pipefail
source "$(dirname "$0")/../cluster/lib.sh"
: "${NODE_BIN:=$REPO_ROOT/_output/tools/node-bin}"
[ -x "$NODE_BIN/kube-scheduler" ] || die "missing $NODE_BIN/kube-scheduler: run hack/build-node-tools.sh"
cp_ns=$(ns_cp)
proc_define kube-scheduler "$cp_ns" "$NODE_BIN/kube-scheduler" \
  --kubeconfig="$STATE_DIR/kube-scheduler.kubeconfig" --leader-elect=false \
  --bind-address=127.0.0.1 --secure-port=10259 --profiling=false --v=1
proc_start kube-scheduler
proc_define kcm-workloads "$cp_ns" "$TOOLS_BIN/kube-controller-manager" \
  --kubeconfig="$STATE_DIR/kube-controller-manager.kubeconfig" --use-service-account-credentials=true \
  --controllers=daemonset-controller,deployment-controller,replicaset-controller,node-lifecycle-controller --leader-elect=false \
  --bind-address=127.0.0.1 --secure-port=10267 --profiling=false --v=1
proc_start kcm-workloads
healthy() { nsx "$cp_ns" curl -fsSk "https://127.0.0.1:$1/healthz"; }
wait_for 60 kube-scheduler healthy 10259 || die "kube-scheduler not healthy after 60s; see $STATE_DIR/logs/kube-scheduler.log"
wait_for 60 kcm-workloads healthy 10267 || die "workload controllers not healthy after 60s; see $STATE_DIR/logs/kcm-workloads.log"
log "kube-scheduler and the workload and node-lifecycle controllers run"
