#!/usr/bin/env bash
# make demo: kproxy on a real (single-machine) cluster. Builds kproxy, the e2e helpers and
# the control plane (hack/build-tools.sh: about 15 minutes the first time, cached after),
# starts the test cluster with two nodes (hack/cluster-up.sh), creates the Services of
# examples/ with real pods (hack/demo/demo.yaml), shows traffic through a ClusterIP and
# node ports, prints kproxy's sync-latency metrics and tears everything down.
# Needs root and iptables; everything happens in network namespaces it creates.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (the cluster lives in network namespaces)" >&2; exit 1; }

demo_start=$(date +%s)
hack/install-deps.sh
hack/install-e2e-deps.sh
hack/build.sh
hack/build-e2e.sh
hack/build-tools.sh

export CLUSTER_NAME=${CLUSTER_NAME:-kpx-demo} NODES=2
source hack/cluster/lib.sh
trap 'hack/cluster-down.sh' EXIT
if [ -d "$STATE_DIR" ]; then hack/cluster-down.sh; fi
hack/cluster-up.sh

cp_ns=$(ns_cp)
if [ -t 1 ]; then
  section() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
else
  section() { printf '\n== %s\n' "$*"; }
fi
# client NETNS PROTO ADDR COUNT: kpx-echo's client; each line is "<pod> <client seen> <port>".
client() { nsx "$1" "$E2E_BIN/kpx-echo" -client "$3" -proto "$2" -count "$4" || true; }
# wait_answer NETNS PROTO ADDR: until kproxy has programmed the service (at most 60 s).
wait_answer() {
  wait_for 60 "$3" nsx "$1" "$E2E_BIN/kpx-echo" -client "$3" -proto "$2" -count 1 ||
    echo "demo: no answer from $3 after 60s" >&2
}

section "Services and pods of hack/demo/demo.yaml (examples/ with real pods)"
nsx "$cp_ns" "$E2E_BIN/kpx-cluster" apply -state "$STATE_DIR" -f hack/demo/demo.yaml
sleep 2
section "EndpointSlices written by kube-controller-manager's EndpointSlice controller"
nsx "$cp_ns" "$E2E_BIN/kpx-cluster" slices -state "$STATE_DIR" -n demo

n1=$(node_ip 1) n2=$(node_ip 2)
section "ClusterIP web 10.96.0.10:80 (pods n1-p1, n2-p1) from pod n1-p2 on node-1: TCP, not masqueraded"
wait_answer "$(ns_pod 1 2)" tcp 10.96.0.10:80
client "$(ns_pod 1 2)" tcp 10.96.0.10:80 6
section "ClusterIP dns 10.96.0.53:53 (pod n1-p2) from pod n2-p2 on node-2: UDP"
wait_answer "$(ns_pod 2 2)" udp 10.96.0.53:53
client "$(ns_pod 2 2)" udp 10.96.0.53:53 3
section "NodePort shop :30080 (pods n1-p3, n2-p3) from the external client $EXT_IP via node-1 ($n1) and node-2 ($n2): masqueraded to the node"
wait_answer "$(ns_ext)" http "$n1:30080"
client "$(ns_ext)" http "$n1:30080" 4
client "$(ns_ext)" http "$n2:30080" 4
section "NodePort api :30443, externalTrafficPolicy Local (pod n2-p2 only): node-2 keeps the client's address, node-1 drops"
wait_answer "$(ns_ext)" tcp "$n2:30443"
client "$(ns_ext)" tcp "$n2:30443" 3
nsx "$(ns_ext)" "$E2E_BIN/kpx-echo" -client "$n1:30443" -timeout 1s || true
section "NodePort pending :30099 has no endpoints: rejected at once"
client "$(ns_ext)" tcp "$n1:30099" 1

section "Rules on node-1: nat chains kproxy owns"
save=iptables-save
case "${KPROXY_BACKEND:-nft}" in legacy | nft) save=iptables-${KPROXY_BACKEND:-nft}-save ;; esac
nsx "$(ns_node 1)" "$save" -t nat | grep -c '^:KUBE-' | sed 's/^/chains: /'
nsx "$(ns_node 1)" "$save" -t nat | grep -E '^-A KUBE-SERVICES .*demo/' | head -8

section "kproxy's sync latency on each node (metrics on 127.0.0.1:10249 in the node's namespace)"
for ((i = 1; i <= NODES; i++)); do
  echo "-- $(node_name "$i")"
  metrics=$(nsx "$(ns_node "$i")" curl -fsS http://127.0.0.1:10249/metrics || true)
  grep -E '^kubeproxy_(sync_proxy_rules_duration_seconds_(sum|count)|sync_proxy_rules_last_timestamp_seconds|network_programming_duration_seconds_(sum|count)|sync_(full|partial)_proxy_rules_duration_seconds_count|sync_proxy_rules_iptables_total)' <<< "$metrics" || true
  # Averages of the IPv4 histograms: how long one sync takes, and how long a change
  # takes from the API object to the rules (which includes the 1 s minSyncPeriod).
  awk -F'[ ]' '
    /^kubeproxy_sync_proxy_rules_duration_seconds_sum\{ip_family="IPv4"\}/ {ss=$2}
    /^kubeproxy_sync_proxy_rules_duration_seconds_count\{ip_family="IPv4"\}/ {sc=$2}
    /^kubeproxy_network_programming_duration_seconds_sum\{ip_family="IPv4"\}/ {ps=$2}
    /^kubeproxy_network_programming_duration_seconds_count\{ip_family="IPv4"\}/ {pc=$2}
    END {
      if (sc > 0) printf "   IPv4: %d syncs, %.0f ms each on average", sc, 1000 * ss / sc
      if (pc > 0) printf "; %d changes programmed %.2f s after they were made, on average", pc, ps / pc
      print ""
    }' <<< "$metrics"
done

section "Tearing down"
hack/cluster-down.sh
trap - EXIT
echo "demo: done in $(($(date +%s) - demo_start))s"
