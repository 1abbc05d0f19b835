#!/usr/bin/env bash
# Issue 9's swap, as an operator of a kubeadm cluster does it, on real kubelets and under
# traffic. Runs on a cluster from `NODES=2 KPROXY=0 hack/cluster-up.sh` (hack/realnode.sh):
#   1. node-2 leaves the API (it joins later); node-1 becomes a real node (node-up.sh) with
#      kproxy's, stock kube-proxy's and the echo server's images imported (images.sh);
#   2. kubeadm v1.37.2 installs its kube-proxy addon (`kubeadm init phase addon kube-proxy`:
#      ServiceAccount, RBAC, ConfigMap with config.conf and kubeconfig.conf, DaemonSet with
#      registry.k8s.io/kube-proxy), with kind's settings for nodes in containers (conntrack
#      maxPerCore 0: a network namespace cannot set nf_conntrack_max);
#   3. a Deployment of 3 echo pods behind a NodePort Service, then steady traffic: from
#      node-1 to the cluster IP and from the external client to node-1's node port, each
#      RATE new connections a second and CONNS long-lived connections pinged every 200 ms
#      (kpx-echo -soak);
#   4. the swap: `kubectl patch` with deploy/replace-kube-proxy (least privilege: a privileged
#      --init-only init container, the long-running container on NET_ADMIN and NET_RAW),
#      `kubectl rollout status`; then the conntrack cleanup of a deleted UDP endpoint;
#   5. node-2, with no rules at all, joins: kubelet starts, the DaemonSet's kproxy pod gets
#      Ready, and node-2 serves the cluster IP and its node port;
#   6. the rollback on both nodes: `kubectl rollout undo`, `kubectl rollout status`;
#   7. the other way in: kube-proxy's DaemonSet deleted, deploy/ installed (kubectl apply);
#   8. the traffic stops: it fails the run if any request failed or any long-lived
#      connection broke (reset or timed out).
# The operator's commands and their output go to OUT/transcript.txt, the measured times and
# traffic to OUT/summary.txt.
#
# Environment: NODE_BIN, OUT (default _output/realnode), RATE (default 20), CONNS (default 4),
# BACKEND (nft, the default, or legacy: the nodes' `iptables`, with which kubelet makes its
# KUBE-IPTABLES-HINT chain, from which both proxies pick theirs).
set -euo pipefail
source "$(dirname "$0")/../cluster/lib.sh"
cd "$REPO_ROOT" # the operator's commands name deploy/ files relative to the checkout
: "${NODE_BIN:=$REPO_ROOT/_output/tools/node-bin}"
: "${OUT:=$REPO_ROOT/_output/realnode}"
: "${RATE:=20}" "${CONNS:=4}" "${BACKEND:=nft}"
case "$BACKEND" in nft | legacy) ;; *) die "BACKEND must be nft or legacy" ;; esac
grep -qx -- "$(ns_node 2)" "$STATE_DIR/netns" || die "swap.sh needs a cluster of 2 nodes (NODES=2 KPROXY=0 hack/cluster-up.sh)"
for b in kubectl kubeadm; do
  [ -x "$NODE_BIN/$b" ] || die "missing $NODE_BIN/$b: run hack/build-node-tools.sh"
done
mkdir -p "$OUT"
transcript=$OUT/transcript.txt summary=$OUT/summary.txt
: > "$transcript"
: > "$summary"
cp_ns=$(ns_cp) ext_ns=$(ns_ext)
n1=$(node_name 1) n2=$(node_name 2)
t0=$(date +%s.%N)
now() { date +%s.%N; }
secs() { printf '%.1f' "$(echo "$2 - $1" | bc)"; }
note() { log "$*"; echo "$*" >> "$summary"; }
k() { nsx "$cp_ns" "$NODE_BIN/kubectl" --kubeconfig "$STATE_DIR/admin.kubeconfig" "$@"; }
# op ARGS...: an operator's kubectl command, echoed with its output into the transcript.
op() {
  echo "\$ kubectl $*" | tee -a "$transcript" >&2
  k "$@" 2>&1 | tee -a "$transcript" >&2
  return "${PIPESTATUS[0]}"
}
kube_proxy_pods() { # the DaemonSet's pods: NODE IMAGE READY, one line each
  k -n kube-system get pods -l k8s-app=kube-proxy \
    -o jsonpath='{range .items[*]}{.spec.nodeName} {.spec.containers[0].image} {.status.containerStatuses[0].ready}{"\n"}{end}'
}
# rules NETNS NAME: the node's rules (every table) in both backends, counters dropped and
# lines sorted (upstream orders KUBE-SERVICES by map iteration), into OUT/rules-NAME.txt.
rules() {
  { nsx "$1" iptables-legacy-save; nsx "$1" iptables-nft-save; } 2> /dev/null |
    grep -v '^#' | sed 's/ \[[0-9]*:[0-9]*\]$//' | sort > "$OUT/rules-$2.txt"
}
# same_rules A B: the kernel held the same rules under kube-proxy and under kproxy.
same_rules() {
  diff -u "$OUT/rules-$1.txt" "$OUT/rules-$2.txt" > "$OUT/rules-$1-vs-$2.diff" ||
    die "the rules differ between $1 and $2: $OUT/rules-$1-vs-$2.diff"
  note "rules $1 and $2 identical: $(grep -c '^-A KUBE-' "$OUT/rules-$1.txt") KUBE- rules"
}
# Piped greps read their whole input (no -q): under pipefail a writer cut short by an early
# exit of grep -q fails the pipeline even though grep matched.
# settled NETNS [EPOCH]: the proxy there (kube-proxy or kproxy: the same metrics, on
# kubeadm's 127.0.0.1:10249) has synced since EPOCH and has no change pending, so the rules
# in the kernel are its whole view. Its informers may still lag, so callers first check that
# it serves what they expect.
settled() {
  nsx "$1" curl -fsS http://127.0.0.1:10249/metrics | awk -v since="${2:-0}" '
    /^kubeproxy_sync_proxy_rules_last_timestamp_seconds/ { if ($2 > last) last = $2 }
    /^kubeproxy_sync_proxy_rules_(endpoint|service)_changes_pending/ { pending += $2 }
    END { exit !(last > since && pending == 0) }'
}
# keep_proxy_logs NAME CONTAINER...: the kube-proxy DaemonSet pods' logs of those containers,
# per node, into OUT/NAME-NODE.log, read from the nodes' pod log files before a rollout
# deletes them (kubectl logs would need kubelet client certificates this cluster has no CA
# for).
keep_proxy_logs() {
  local name=$1 node c files; shift
  for node in "$n1" "$n2"; do
    files=()
    for c in "$@"; do files+=("$STATE_DIR/realnode-$node"/log/pods/kube-system_kube-proxy-*/"$c"/*.log); done
    cat "${files[@]}" > "$OUT/$name-$node.log" 2> /dev/null || true
  done
}
has_kube_chains() { # NETNS: whether either backend has a KUBE- chain in nat
  { nsx "$1" iptables-legacy-save -t nat; nsx "$1" iptables-nft-save -t nat; } 2> /dev/null | grep '^:KUBE-' > /dev/null
}

# --- 1. nodes and images -------------------------------------------------------------------
k delete node "$n2" > /dev/null
extra_images=$("$REPO_ROOT/hack/realnode/images.sh")
has_kube_chains "$(ns_node 1)" && die "node-1 has KUBE- chains before any proxy ran"
t=$(now)
NODE_IPTABLES=$BACKEND EXTRA_IMAGES=$extra_images "$REPO_ROOT/hack/realnode/node-up.sh" 1
note "node-1: real kubelet Ready in $(secs "$t" "$(now)") s"
# Only now: node-lifecycle would taint node-1 while it was cluster-up's node without heartbeats.
"$REPO_ROOT/hack/realnode/workloads-up.sh"

# --- 2. kubeadm's kube-proxy ---------------------------------------------------------------
kube_version=$("$NODE_BIN/kubeadm" version -o short)
cat > "$OUT/kubeadm.yaml" << KUBEADM
apiVersion: kubeadm.k8s.io/v1beta4
kind: InitConfiguration
localAPIEndpoint: {advertiseAddress: $CP_IP, bindPort: $APISERVER_PORT}
---
apiVersion: kubeadm.k8s.io/v1beta4
kind: ClusterConfiguration
kubernetesVersion: $kube_version
controlPlaneEndpoint: $CP_IP:$APISERVER_PORT
networking: {podSubnet: $CLUSTER_CIDR, serviceSubnet: $SERVICE_CIDR}
---
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
conntrack: {maxPerCore: 0}
KUBEADM
t=$(now)
nsx "$cp_ns" "$NODE_BIN/kubeadm" init phase addon kube-proxy --config "$OUT/kubeadm.yaml" \
  --kubeconfig "$STATE_DIR/admin.kubeconfig" 2>&1 | tee -a "$OUT/kubeadm.log" >&2
k -n kube-system rollout status daemonset/kube-proxy --timeout=180s >&2
proxy_serving() { nsx "$1" curl -fsS http://127.0.0.1:10256/healthz && has_kube_chains "$1"; }
wait_for 60 kube-proxy proxy_serving "$(ns_node 1)" || die "kube-proxy not serving on node-1"
in_backend() { nsx "$1" "iptables-$BACKEND-save" -t nat | grep '^-A KUBE-SERVICES' > /dev/null; }
wait_for 30 kube-proxy-rules in_backend "$(ns_node 1)" ||
  die "kube-proxy did not write its rules with iptables-$BACKEND"
note "kubeadm's kube-proxy ($kube_version) running and healthy on node-1 in $(secs "$t" "$(now)") s, rules in iptables-$BACKEND: $(kube_proxy_pods | tr '\n' ' ')"

# --- 3. the service and its traffic --------------------------------------------------------
# echo_deployment NAME REPLICAS READY_PORT: a Deployment of kpx-echo pods, ready once they
# accept TCP on READY_PORT.
echo_deployment() {
  cat << YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: $1, namespace: default}
spec:
  replicas: $2
  selector: {matchLabels: {app: $1}}
  template:
    metadata: {labels: {app: $1}}
    spec:
      containers:
      - name: echo
        image: kpx.test/kpx-echo:e2e
        args: [-name, \$(POD_NAME)]
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        readinessProbe:
          tcpSocket: {port: $3}
          periodSeconds: 1
YAML
}
# kpx-udp serves the conntrack check alone: deleting one of its pods must not touch the
# traffic to kpx-echo.
{
  echo_deployment kpx-echo 3 8080
  cat << 'YAML'
---
apiVersion: v1
kind: Service
metadata: {name: kpx-echo, namespace: default}
spec:
  type: NodePort
  selector: {app: kpx-echo}
  ports:
  - {name: echo, port: 80, targetPort: 8080, nodePort: 30080}
---
YAML
  echo_deployment kpx-udp 2 5353
  cat << 'YAML'
---
apiVersion: v1
kind: Service
metadata: {name: kpx-udp, namespace: default}
spec:
  selector: {app: kpx-udp}
  ports:
  - {name: dns, port: 53, targetPort: 5353, protocol: UDP}
YAML
} | k apply -f - >&2
k rollout status deployment/kpx-echo --timeout=180s >&2
k rollout status deployment/kpx-udp --timeout=180s >&2
cluster_ip=$(k get service kpx-echo -o jsonpath='{.spec.clusterIP}')
serves() { nsx "$1" "$E2E_BIN/kpx-echo" -client "$2" -proto "${3:-tcp}" -count 3 -timeout 1s; } # NETNS ADDR [PROTO]
wait_for 60 cluster-ip serves "$(ns_node 1)" "$cluster_ip:80" || die "$cluster_ip:80 not served from node-1"
wait_for 60 node-port serves "$ext_ns" "$(node_ip 1):30080" || die "node-1's node port not served"
udp_ip=$(k get service kpx-udp -o jsonpath='{.spec.clusterIP}')
wait_for 60 udp-service serves "$(ns_node 1)" "$udp_ip:53" udp || die "$udp_ip:53 not served from node-1"
soak_pids=()
soak() { # NAME NETNS ADDR
  # ip netns exec execs kpx-echo in place: $! is the soak itself, which SIGTERM stops.
  ip netns exec "$2" "$E2E_BIN/kpx-echo" -soak "$3" -rate "$RATE" -conns "$CONNS" > "$OUT/soak-$1.json" 2> "$OUT/soak-$1.log" &
  soak_pids+=($!)
}
trap 'kill "${soak_pids[@]}" 2> /dev/null || true' EXIT
soak cluster-ip "$(ns_node 1)" "$cluster_ip:80"
soak node-port "$ext_ns" "$(node_ip 1):30080"
note "traffic: to $cluster_ip:80 from node-1 and to $(node_ip 1):30080 from the external client, each $RATE new connections/s and $CONNS long-lived connections"
sleep 5
for pid in "${soak_pids[@]}"; do
  kill -0 "$pid" 2> /dev/null || die "the traffic stopped early: $(cat "$OUT"/soak-*.log "$OUT"/soak-*.json)"
done

# --- 4. the swap ---------------------------------------------------------------------------
wait_for 30 kube-proxy-settled settled "$(ns_node 1)" || die "kube-proxy on node-1 has changes pending"
rules "$(ns_node 1)" node-1-kube-proxy
t=$(now)
op -n kube-system patch daemonset kube-proxy --patch-file deploy/replace-kube-proxy/daemonset-patch.yaml
op -n kube-system rollout status daemonset/kube-proxy --timeout=300s
note "swap to kproxy: rollout complete in $(secs "$t" "$(now)") s: $(kube_proxy_pods | tr '\n' ' ')"
kube_proxy_pods | grep "^$n1 ghcr.io/kproxy-dev/kproxy:.* true$" > /dev/null || die "node-1 does not run a ready kproxy after the swap"
op -n kube-system get pods -l k8s-app=kube-proxy -o wide
rules "$(ns_node 1)" node-1-kproxy
same_rules node-1-kube-proxy node-1-kproxy

# --- 4b. conntrack cleanup by the unprivileged kproxy ----------------------------------------
# One UDP socket on node-1 keeps asking the kpx-udp Service, so every request rides one
# conntrack entry. Once the pod it reached is deleted, kproxy must delete that entry (NET_ADMIN
# is all it has); otherwise the entry keeps sending the requests to the gone pod until it
# times out, and none would be answered again within the check.
ip netns exec "$(ns_node 1)" "$E2E_BIN/kpx-echo" -client "$udp_ip:53" -proto udp -reuse -every 250ms -count 80 -timeout 500ms \
  > "$OUT/conntrack-udp.txt" 2>&1 &
udp_pid=$!
first_answer() { grep -m1 -v '^error' "$OUT/conntrack-udp.txt" | awk '{print $1}'; }
wait_for 10 udp-answer first_answer || die "no UDP answer on the shared socket"
sleep 1
gone=$(first_answer)
t=$(now)
k delete pod "$gone" --wait=false >&2
wait "$udp_pid" || true
after=$(awk -v p="$gone" 'found {print} $1 == p {found = 1}' "$OUT/conntrack-udp.txt" | grep -v "^$gone " || true)
others=$(grep -cv '^error' <<< "$after" || true)
lost=$(grep -c '^error' <<< "$after" || true)
[ "$(tail -5 "$OUT/conntrack-udp.txt" | grep -c "^error\|^$gone ")" = 0 ] ||
  die "the shared UDP socket was not answered by another pod after $gone was deleted: conntrack entry not cleaned ($OUT/conntrack-udp.txt)"
note "conntrack cleanup (unprivileged kproxy, NET_ADMIN): after deleting $gone the shared UDP socket lost $lost requests, then $others answered by the other pod"
sleep 5

# --- 5. a node joins after the swap ---------------------------------------------------------
has_kube_chains "$(ns_node 2)" && die "node-2 has KUBE- chains before it joined"
t=$(now)
NODE_IPTABLES=$BACKEND EXTRA_IMAGES=$extra_images "$REPO_ROOT/hack/realnode/node-up.sh" 2
t_ready=$(now)
joined() { kube_proxy_pods | grep "^$n2 ghcr.io/kproxy-dev/kproxy:.* true$" > /dev/null; }
wait_for 180 kproxy-on-node-2 joined || die "no ready kproxy pod on node-2 180s after it joined"
t_kproxy=$(now)
wait_for 60 node-2-cluster-ip serves "$(ns_node 2)" "$cluster_ip:80" || die "$cluster_ip:80 not served from node-2"
wait_for 60 node-2-node-port serves "$ext_ns" "$(node_ip 2):30080" || die "node-2's node port not served"
note "node-2 joined with no rules: kubelet Ready in $(secs "$t" "$t_ready") s, kproxy pod Ready $(secs "$t_ready" "$t_kproxy") s later, cluster IP and node port served $(secs "$t_kproxy" "$(now)") s after that"
op -n kube-system get pods -l k8s-app=kube-proxy -o wide
rules "$(ns_node 2)" node-2-kproxy

# kproxy's own account of the takeover, before the rollback deletes its pods.
keep_proxy_logs kproxy kube-proxy-init kube-proxy

# --- 6. the rollback -----------------------------------------------------------------------
t=$(now) t_rollback=$(date +%s)
op -n kube-system rollout undo daemonset/kube-proxy
op -n kube-system rollout status daemonset/kube-proxy --timeout=300s
note "rollback to kube-proxy: rollout complete in $(secs "$t" "$(now)") s: $(kube_proxy_pods | tr '\n' ' ')"
[ "$(kube_proxy_pods | grep -c " registry.k8s.io/kube-proxy:$kube_version true$")" = 2 ] ||
  die "not both nodes run a ready kube-proxy after the rollback"
op -n kube-system get pods -l k8s-app=kube-proxy -o wide
wait_for 60 node-2-cluster-ip serves "$(ns_node 2)" "$cluster_ip:80" || die "$cluster_ip:80 not served from node-2 after the rollback"
wait_for 60 kube-proxy-synced settled "$(ns_node 2)" "$t_rollback" ||
  die "kube-proxy on node-2 has not synced since the rollback"
rules "$(ns_node 2)" node-2-kube-proxy
same_rules node-2-kproxy node-2-kube-proxy
sleep 3

# --- 7. the other way in: kube-proxy removed, deploy/ installed ------------------------------
# What docs/migration.md says for a separate kproxy DaemonSet: remove kube-proxy's first. The
# ConfigMap's kubeconfig.conf gets the control plane's endpoint, as an operator sets it.
keep_proxy_logs kube-proxy kube-proxy
t=$(now)
# Foreground: kubectl returns once the pods are gone, so that no kube-proxy still holds the
# health and metrics ports when kproxy starts.
op -n kube-system delete daemonset kube-proxy --cascade=foreground
echo "\$ kubectl kustomize deploy/ | sed 's#CONTROL-PLANE-ENDPOINT:6443#$CP_IP:$APISERVER_PORT#' | kubectl apply -f -" | tee -a "$transcript" >&2
k kustomize deploy/ | sed "s#CONTROL-PLANE-ENDPOINT:6443#$CP_IP:$APISERVER_PORT#" | k apply -f - 2>&1 | tee -a "$transcript" >&2
op -n kube-system rollout status daemonset/kproxy --timeout=300s
note "kube-proxy removed and deploy/ installed: rollout complete in $(secs "$t" "$(now)") s"
op -n kube-system get pods -l k8s-app=kproxy -o wide
[ "$(k -n kube-system get pods -l k8s-app=kproxy -o jsonpath='{range .items[*]}{.status.containerStatuses[0].ready}{"\n"}{end}' | grep -c true)" = 2 ] ||
  die "deploy/'s kproxy is not ready on both nodes"
wait_for 60 node-2-cluster-ip serves "$(ns_node 2)" "$cluster_ip:80" || die "$cluster_ip:80 not served from node-2 by deploy/'s kproxy"
sleep 5

# --- 8. the traffic's verdict ---------------------------------------------------------------
kill -TERM "${soak_pids[@]}"
failed=0
for pid in "${soak_pids[@]}"; do wait "$pid" || failed=1; done
trap - EXIT
for s in cluster-ip node-port; do
  note "traffic $s: $(python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("%d requests, %d failed; %d long-lived connections, %d pings, %d broken, %d resets; answered by %d pods; %.0f s" % (r["requests"], r["failedRequests"], r["conns"], r["pings"], r["brokenConns"], r["resets"], len(r["answered"]), r["seconds"]))' "$OUT/soak-$s.json")"
done
[ "$failed" = 0 ] || die "traffic failed during the swap: $(cat "$OUT"/soak-*.json)"
note "swap and rollback under traffic: 0 failed requests, 0 broken connections; whole run $(secs "$t0" "$(now)") s"
