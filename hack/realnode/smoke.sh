#!/usr/bin/env bash
# Runs pods from kproxy's image on the real node NODE_INDEX (hack/realnode/node-up.sh runs
# it): a static pod (init container `kproxy --version`, then `sleep infinity`), then deploy/
# as shipped: its ConfigMap (server set to the control plane) and DaemonSet, with a second
# kube-controller-manager running only the daemonset controller (cluster-up leaves it out).
# Waits until the static pod runs and the DaemonSet's pod is Ready (kproxy synced).
set -euo pipefail
source "$(dirname "$0")/../cluster/lib.sh"
i=${1:-1}
node=$(node_name "$i") ns=$(ns_node "$i")
rn=$STATE_DIR/realnode-$node
api=https://$CP_IP:$APISERVER_PORT
cp_ns=$(ns_cp)
admin=(-H "Authorization: Bearer $(awk -F, '$2=="kpx-admin"{print $1}' "$STATE_DIR/pki/tokens.csv")")
kapi() { nsx "$cp_ns" curl -fsS -k "${admin[@]}" "$@"; }
kpost() { # PATH FILE: creates the object (one that exists already is fine)
  local out
  out=$(nsx "$cp_ns" curl -sS -k "${admin[@]}" -H 'Content-Type: application/yaml' --data-binary "@$2" "$api$1")
  if grep -q '"kind": *"Status"' <<< "$out" && ! grep -q '"reason": *"AlreadyExists"' <<< "$out"; then
    die "creating $2 failed: $out"
  fi
}
t0=$(date +%s.%N)
since() { printf '%.1f' "$(echo "$(date +%s.%N) - $t0" | bc)"; }
pod_json() { kapi "$api/api/v1/namespaces/$1/pods/$2" 2> /dev/null; }

# --- static pod ----------------------------------------------------------------------------
cat > "$rn/manifests/kpx-static.yaml" << POD
apiVersion: v1
kind: Pod
metadata: {name: kpx-static, namespace: kube-system}
spec:
  initContainers:
  - {name: kproxy-version, image: ghcr.io/kproxy-dev/kproxy:v0.1.0, command: [/usr/local/bin/kproxy, --version]}
  containers:
  - {name: sleep, image: ghcr.io/kproxy-dev/kproxy:v0.1.0, command: [sleep, infinity]}
POD
static_running() { pod_json kube-system "kpx-static-$node" | grep -q '"phase": *"Running"'; }
wait_for 120 static-pod static_running || die "static pod not Running after 120s; see $rn/kubelet.log"
log "static pod kube-system/kpx-static-$node Running after $(since)s; kproxy --version said: $(cat "$rn"/log/pods/kube-system_kpx-static-"$node"_*/kproxy-version/0.log | cut -d' ' -f4-)"

# --- deploy/: ConfigMap and DaemonSet ------------------------------------------------------
sed "s#CONTROL-PLANE-ENDPOINT#$CP_IP#" "$REPO_ROOT/deploy/configmap.yaml" > "$rn/configmap.yaml"
kpost /api/v1/namespaces/kube-system/configmaps "$rn/configmap.yaml"
kpost /apis/apps/v1/namespaces/kube-system/daemonsets "$REPO_ROOT/deploy/daemonset.yaml"
proc_define kcm-daemonset "$cp_ns" "$TOOLS_BIN/kube-controller-manager" \
  --kubeconfig="$STATE_DIR/kube-controller-manager.kubeconfig" --use-service-account-credentials=true \
  --controllers=daemonset-controller --leader-elect=false \
  --bind-address=127.0.0.1 --secure-port=10267 --profiling=false --v=1
proc_start kcm-daemonset
ds_pod() {
  kapi "$api/api/v1/namespaces/kube-system/pods?labelSelector=k8s-app%3Dkproxy" |
    python3 -c 'import json,sys; [print(p["metadata"]["name"], p["spec"].get("nodeName", "-")) for p in json.load(sys.stdin)["items"]]' | head -1
}
# The daemonset controller leaves binding to kube-scheduler (node affinity on
# metadata.name), which this cluster does not run: bind the pod to its node as it would.
ds_ready() {
  local p n; read -r p n <<< "$(ds_pod)"; [ -n "$p" ] || return 1
  if [ "$n" = - ]; then
    echo "{\"apiVersion\":\"v1\",\"kind\":\"Binding\",\"metadata\":{\"name\":\"$p\"},\"target\":{\"kind\":\"Node\",\"name\":\"$node\"}}" > "$rn/binding.json"
    nsx "$cp_ns" curl -fsS -k "${admin[@]}" -H 'Content-Type: application/json' --data-binary "@$rn/binding.json" \
      "$api/api/v1/namespaces/kube-system/pods/$p/binding" > /dev/null
    return 1
  fi
  pod_json kube-system "$p" | python3 -c 'import json,sys; c={x["type"]: x["status"] for x in json.load(sys.stdin)["status"].get("conditions", [])}; sys.exit(c.get("Ready") != "True")'
}
wait_for 180 daemonset-pod ds_ready || die "kproxy DaemonSet pod not Ready after 180s; see $rn/kubelet.log"
read -r p _ <<< "$(ds_pod)"
log "DaemonSet pod kube-system/$p Ready after $(since)s (kproxy synced: /readyz 200)"
nsx "$ns" curl -fsS http://127.0.0.1:10256/readyz; echo
