#!/usr/bin/env bash
# Starts the e2e test cluster on this machine, inside network namespaces it creates (layout
# in hack/cluster/lib.sh): etcd, kube-apiserver and kube-controller-manager in a control-plane
# namespace, NODES node namespaces with PODS_PER_NODE pod namespaces each running kpx-echo,
# an external client, Node objects, deploy/rbac.yaml, and kproxy on every node with the
# flags and config file of deploy/. Needs root. Undo with hack/cluster-down.sh.
#
# It builds nothing: run hack/build.sh, hack/build-tools.sh and hack/build-e2e.sh first
# (hack/demo.sh and hack/e2e.sh do).
#
# Environment (defaults):
#   CLUSTER_NAME=kpx     prefix of every namespace; STATE_DIR=${TMPDIR:-/tmp}/kproxy-cluster/$CLUSTER_NAME
#   NODES=2 PODS_PER_NODE=3
#   KPROXY=1             0: do not start kproxy (start it later: hack/cluster/ctl.sh start kproxy-node-1)
#   KPROXY_BACKEND=nft   --iptables-backend of every kproxy (auto, legacy or nft)
#   KPROXY_IDENTITY=kube-proxy   the API user of kproxy: "kube-proxy" (user system:kube-proxy,
#                        a static token, upstream's system:node-proxier binding) or
#                        "serviceaccount" (ServiceAccount kube-system/kproxy, deploy/rbac.yaml)
#   KPROXY_EXTRA_ARGS    more kproxy arguments, space-separated
#
# On success it prints the layout; $STATE_DIR/cluster.json describes it for the Go harness
# (test/e2e/framework) and $STATE_DIR/cluster.env for scripts.
set -euo pipefail
source "$(dirname "$0")/cluster/lib.sh"

: "${KPROXY:=1}"
: "${KPROXY_BACKEND:=nft}"
: "${KPROXY_IDENTITY:=kube-proxy}"
: "${KPROXY_EXTRA_ARGS:=}"

# --- preflight ------------------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || die "cluster-up needs root (it creates network namespaces)"
for cmd in ip openssl curl setsid iptables-nft iptables-legacy; do
  command -v "$cmd" > /dev/null || die "missing command $cmd (hack/install-deps.sh installs iptables and iproute2; openssl, curl: apt-get install openssl curl)"
done
for b in "$TOOLS_BIN/etcd" "$TOOLS_BIN/kube-apiserver" "$TOOLS_BIN/kube-controller-manager"; do
  [ -x "$b" ] || die "missing $b: run hack/build-tools.sh (about 15 minutes the first time)"
done
for b in "$E2E_BIN/kpx-echo" "$E2E_BIN/kpx-cluster"; do
  [ -x "$b" ] || die "missing $b: run hack/build-e2e.sh"
done
[ "$KPROXY" = 0 ] || [ -x "$KPROXY_BIN" ] || die "missing $KPROXY_BIN: run hack/build.sh"
[ "$NODES" -ge 1 ] && [ "$NODES" -le 9 ] || die "NODES must be within 1..9"
[ "$PODS_PER_NODE" -ge 1 ] && [ "$PODS_PER_NODE" -le 9 ] || die "PODS_PER_NODE must be within 1..9"
if [ -e "$STATE_DIR" ]; then
  die "$STATE_DIR exists: cluster $CLUSTER_NAME is up or was not torn down; run CLUSTER_NAME=$CLUSTER_NAME hack/cluster-down.sh"
fi
existing=" $(ip netns list | awk '{print $1}' | tr '\n' ' ') "
for ns in "$(ns_fabric)" "$(ns_cp)" "$(ns_ext)" $(for ((i = 1; i <= NODES; i++)); do
  ns_node "$i"
  for ((j = 1; j <= PODS_PER_NODE; j++)); do ns_pod "$i" "$j"; done
done); do
  case "$existing" in *" $ns "*) die "network namespace $ns exists (a cluster $CLUSTER_NAME without state?); delete it with: ip netns del $ns" ;; esac
done

start_time=$(date +%s)
mkdir -p "$STATE_DIR"/{pki,logs,procs,etcd}
touch "$STATE_DIR/netns"
# If anything below fails, leave nothing behind.
trap 'rc=$?; if [ $rc -ne 0 ]; then log "cluster-up failed; logs in $STATE_DIR/logs; tearing down"; KEEP_LOGS=1 "$REPO_ROOT/hack/cluster-down.sh" || true; fi' EXIT

# --- network namespaces ----------------------------------------------------------------
# add_ns NAME FORWARD: creates a namespace, records it for cluster-down, sets it up.
add_ns() {
  ip netns add "$1"
  echo "$1" >> "$STATE_DIR/netns"
  nsx "$1" ip link set lo up
  # A node forwards; nothing else does, whatever a new namespace inherits. Nodes send no
  # ICMP redirects: a hairpinned packet leaves by the link it came in on.
  nsx "$1" sysctl -q -w "net.ipv4.ip_forward=$2" net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.default.send_redirects=0
}
# veth NS_A DEV_A NS_B DEV_B: a veth pair created in NS_A with its peer straight in NS_B, so
# the root namespace never sees either end.
veth() {
  nsx "$1" ip link add "$2" type veth peer name "$4" netns "$3"
  nsx "$1" ip link set "$2" up
  nsx "$3" ip link set "$4" up
}

log "creating network namespaces for $NODES nodes x $PODS_PER_NODE pods ($CLUSTER_NAME-*)"
fabric=$(ns_fabric)
add_ns "$fabric" 0
nsx "$fabric" ip link add fab0 type bridge
nsx "$fabric" ip addr add "$LAN_PREFIX.1/24" dev fab0
nsx "$fabric" ip link set fab0 up
# lan_attach NS IP: plugs NS into the LAN bridge as eth0 with IP.
lan_attach() {
  local port="p-${1#"$CLUSTER_NAME"-}"
  port=${port:0:15}
  veth "$fabric" "$port" "$1" eth0
  nsx "$fabric" ip link set "$port" master fab0
  nsx "$1" ip addr add "$2/24" dev eth0
}

cp_ns=$(ns_cp)
add_ns "$cp_ns" 0
lan_attach "$cp_ns" "$CP_IP"

ext_ns=$(ns_ext)
add_ns "$ext_ns" 0
lan_attach "$ext_ns" "$EXT_IP"

for ((i = 1; i <= NODES; i++)); do
  node_ns=$(ns_node "$i")
  add_ns "$node_ns" 1
  lan_attach "$node_ns" "$(node_ip "$i")"
  # A real node has a route to everywhere; packets to a cluster IP that kproxy leaves
  # alone must reach FORWARD/OUTPUT rather than fail the route lookup.
  nsx "$node_ns" ip route add default via "$LAN_PREFIX.1"
  for ((k = 1; k <= NODES; k++)); do
    [ "$k" -eq "$i" ] || nsx "$node_ns" ip route add "10.244.$k.0/24" via "$(node_ip "$k")"
  done
  nsx "$node_ns" ip link add cbr0 type bridge
  nsx "$node_ns" ip addr add "$(pod_gw "$i")/24" dev cbr0
  nsx "$node_ns" ip link set cbr0 up
  # Pod-to-service-to-pod on one bridge needs bridged traffic to see iptables, as
  # Kubernetes requires (per namespace; the default is already 1 on recent kernels).
  nsx "$node_ns" sysctl -q -w net.bridge.bridge-nf-call-iptables=1 || true
  for ((j = 1; j <= PODS_PER_NODE; j++)); do
    pod_ns=$(ns_pod "$i" "$j")
    add_ns "$pod_ns" 0
    dev="veth-$(pod_name "$i" "$j")"
    veth "$node_ns" "$dev" "$pod_ns" eth0
    nsx "$node_ns" ip link set "$dev" master cbr0
    # As kubelet's hairpin-veth mode: a pod may reach itself through a service.
    nsx "$node_ns" ip link set "$dev" type bridge_slave hairpin on
    nsx "$pod_ns" ip addr add "$(pod_ip "$i" "$j")/24" dev eth0
    nsx "$pod_ns" ip route add default via "$(pod_gw "$i")"
  done
done

# --- credentials -------------------------------------------------------------------------
log "creating credentials"
pki=$STATE_DIR/pki
openssl genrsa -out "$pki/sa.key" 2048 2> /dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2> /dev/null
admin_token=$(openssl rand -hex 16)
kproxy_token=$(openssl rand -hex 16)
kcm_token=$(openssl rand -hex 16)
scheduler_token=$(openssl rand -hex 16)
# token,user,uid,"group1,group2". Also a token for kube-scheduler and one per node (user
# system:node:NAME in group system:nodes), for the real kubelets and the workload controllers
# of hack/realnode: kube-apiserver reads the file only at start.
cat > "$pki/tokens.csv" << TOKENS
$admin_token,kpx-admin,kpx-admin,"system:masters"
$kproxy_token,system:kube-proxy,system:kube-proxy
$kcm_token,system:kube-controller-manager,system:kube-controller-manager
$scheduler_token,system:kube-scheduler,system:kube-scheduler
$(for ((i = 1; i <= NODES; i++)); do echo "$(openssl rand -hex 16),system:node:$(node_name "$i"),system:node:$(node_name "$i"),\"system:nodes\""; done)
TOKENS
chmod 600 "$pki"/*

# --- control plane ---------------------------------------------------------------------
log "starting etcd"
proc_define etcd "$cp_ns" "$TOOLS_BIN/etcd" --name=cp --data-dir="$STATE_DIR/etcd" \
  --listen-client-urls=http://127.0.0.1:2379 --advertise-client-urls=http://127.0.0.1:2379 \
  --listen-peer-urls=http://127.0.0.1:2380 --initial-advertise-peer-urls=http://127.0.0.1:2380 \
  --initial-cluster=cp=http://127.0.0.1:2380 --unsafe-no-fsync --log-level=warn
proc_start etcd
wait_for 30 etcd nsx "$cp_ns" curl -fsS http://127.0.0.1:2379/health ||
  die "etcd not healthy after 30s; see $STATE_DIR/logs/etcd.log"

# Audit: every request of kproxy's two possible identities, nothing else, so that the e2e
# tests can compare what kproxy does with what deploy/rbac.yaml grants.
cat > "$STATE_DIR/audit-policy.yaml" << POLICY
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["system:serviceaccount:kube-system:kproxy", "system:kube-proxy"]
- level: None
POLICY

log "starting kube-apiserver"
proc_define kube-apiserver "$cp_ns" "$TOOLS_BIN/kube-apiserver" \
  --etcd-servers=http://127.0.0.1:2379 \
  --bind-address=0.0.0.0 --secure-port="$APISERVER_PORT" --advertise-address="$CP_IP" \
  --cert-dir="$pki/apiserver" \
  --token-auth-file="$pki/tokens.csv" --anonymous-auth=false \
  --authorization-mode=Node,RBAC \
  --service-cluster-ip-range="$SERVICE_CIDR" --service-node-port-range=30000-32767 \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
  --allow-privileged=true --endpoint-reconciler-type=lease \
  --audit-policy-file="$STATE_DIR/audit-policy.yaml" --audit-log-path="$STATE_DIR/logs/audit.log" \
  --audit-log-format=json --audit-log-maxsize=100 \
  --profiling=false --v=1
proc_start kube-apiserver
apiserver_ready() {
  proc_alive kube-apiserver &&
    nsx "$cp_ns" curl -fsS -k -H "Authorization: Bearer $admin_token" "https://127.0.0.1:$APISERVER_PORT/readyz"
}
wait_for 120 kube-apiserver apiserver_ready ||
  die "kube-apiserver not ready after 120s; see $STATE_DIR/logs/kube-apiserver.log"

# Kubeconfigs trust the serving certificate kube-apiserver made in --cert-dir (its file
# holds the self-signed CA too).
ca_data=$(base64 -w0 < "$pki/apiserver/apiserver.crt")
kubeconfig() { # USER TOKEN
  cat << KC
apiVersion: v1
kind: Config
clusters:
- name: $CLUSTER_NAME
  cluster:
    server: https://$CP_IP:$APISERVER_PORT
    certificate-authority-data: $ca_data
users:
- name: $1
  user:
    token: $2
contexts:
- name: $1@$CLUSTER_NAME
  context: {cluster: $CLUSTER_NAME, user: $1}
current-context: $1@$CLUSTER_NAME
KC
}
kubeconfig admin "$admin_token" > "$STATE_DIR/admin.kubeconfig"
kubeconfig system:kube-proxy "$kproxy_token" > "$STATE_DIR/kube-proxy.kubeconfig"
kubeconfig system:kube-controller-manager "$kcm_token" > "$STATE_DIR/kube-controller-manager.kubeconfig"
kubeconfig system:kube-scheduler "$scheduler_token" > "$STATE_DIR/kube-scheduler.kubeconfig"
chmod 600 "$STATE_DIR"/*.kubeconfig

log "starting kube-controller-manager"
# Only the controllers a cluster without kubelets needs: endpoint slices (and their
# mirroring of hand-written Endpoints), service accounts, namespaces, garbage collection.
# Without node-lifecycle the harness's nodes, which send no heartbeats, keep their pods ready.
controllers=endpointslice-controller,endpointslice-mirroring-controller,endpoints-controller
controllers+=,serviceaccount-controller,serviceaccount-token-controller,namespace-controller
controllers+=,garbage-collector-controller,root-ca-certificate-publisher-controller
controllers+=,service-cidr-controller
proc_define kube-controller-manager "$cp_ns" "$TOOLS_BIN/kube-controller-manager" \
  --kubeconfig="$STATE_DIR/kube-controller-manager.kubeconfig" \
  --use-service-account-credentials=true \
  --controllers="$controllers" --leader-elect=false \
  --service-account-private-key-file="$pki/sa.key" --root-ca-file="$pki/apiserver/apiserver.crt" \
  --service-cluster-ip-range="$SERVICE_CIDR" --cluster-cidr="$CLUSTER_CIDR" \
  --bind-address=127.0.0.1 --secure-port=10257 --profiling=false --v=1
proc_start kube-controller-manager

# --- pods and the external client -------------------------------------------------------
log "starting echo servers"
for ((i = 1; i <= NODES; i++)); do
  for ((j = 1; j <= PODS_PER_NODE; j++)); do
    proc_define "echo-$(pod_name "$i" "$j")" "$(ns_pod "$i" "$j")" "$E2E_BIN/kpx-echo" -name "$(pod_name "$i" "$j")"
    proc_start "echo-$(pod_name "$i" "$j")"
  done
done
proc_define echo-external "$ext_ns" "$E2E_BIN/kpx-echo" -name external
proc_start echo-external

# --- layout for the Go harness and scripts ---------------------------------------------------
{
  echo "{"
  echo "  \"name\": \"$CLUSTER_NAME\","
  echo "  \"stateDir\": \"$STATE_DIR\","
  echo "  \"serviceCIDR\": \"$SERVICE_CIDR\","
  echo "  \"clusterCIDR\": \"$CLUSTER_CIDR\","
  echo "  \"apiServer\": \"https://$CP_IP:$APISERVER_PORT\","
  echo "  \"kproxyBackend\": \"$KPROXY_BACKEND\","
  echo "  \"kproxyIdentity\": \"$KPROXY_IDENTITY\","
  echo "  \"controlPlane\": {\"netns\": \"$cp_ns\", \"ip\": \"$CP_IP\"},"
  echo "  \"external\": {\"netns\": \"$ext_ns\", \"ip\": \"$EXT_IP\", \"name\": \"external\"},"
  echo "  \"nodes\": ["
  for ((i = 1; i <= NODES; i++)); do
    echo "    {\"name\": \"$(node_name "$i")\", \"netns\": \"$(ns_node "$i")\", \"ip\": \"$(node_ip "$i")\","
    echo "     \"zone\": \"$(node_zone "$i")\", \"podCIDR\": \"10.244.$i.0/24\", \"podGateway\": \"$(pod_gw "$i")\", \"pods\": ["
    for ((j = 1; j <= PODS_PER_NODE; j++)); do
      sep=,; [ "$j" -eq "$PODS_PER_NODE" ] && sep=
      echo "      {\"name\": \"$(pod_name "$i" "$j")\", \"netns\": \"$(ns_pod "$i" "$j")\", \"ip\": \"$(pod_ip "$i" "$j")\"}$sep"
    done
    sep=,; [ "$i" -eq "$NODES" ] && sep=
    echo "    ]}$sep"
  done
  echo "  ]"
  echo "}"
} > "$STATE_DIR/cluster.json"
cat > "$STATE_DIR/cluster.env" << ENV
CLUSTER_NAME=$CLUSTER_NAME
NODES=$NODES
PODS_PER_NODE=$PODS_PER_NODE
STATE_DIR=$STATE_DIR
KUBECONFIG=$STATE_DIR/admin.kubeconfig
ENV

# --- API objects: Nodes, kproxy's RBAC ------------------------------------------------------
log "creating Nodes and deploy/rbac.yaml"
nsx "$cp_ns" "$E2E_BIN/kpx-cluster" bootstrap -state "$STATE_DIR" -rbac "$REPO_ROOT/deploy/rbac.yaml" \
  -identity "$KPROXY_IDENTITY" >> "$STATE_DIR/logs/bootstrap.log" 2>&1 ||
  die "bootstrap failed: $(tail -5 "$STATE_DIR/logs/bootstrap.log")"

# --- kproxy on every node -------------------------------------------------------------------
# The DaemonSet's arguments and the ConfigMap's config.conf, unchanged but for the
# kubeconfig: the ConfigMap's reaches the API server with a pod's service account token,
# which processes started by hand have no file for.
config_conf=$(sed -n '/^  config.conf: |$/,/^  [a-z.]*: |$/p' "$REPO_ROOT/deploy/configmap.yaml" | sed '1d;$d' | sed -n '/^    /p' | sed 's/^    //')
grep -q '^  kubeconfig: /var/lib/kproxy/kubeconfig.conf$' <<< "$config_conf" || die "deploy/configmap.yaml: config.conf does not use /var/lib/kproxy/kubeconfig.conf"
case "$KPROXY_IDENTITY" in
  kube-proxy) kproxy_kubeconfig=$STATE_DIR/kube-proxy.kubeconfig ;;
  serviceaccount) kproxy_kubeconfig=$STATE_DIR/kproxy-sa.kubeconfig ;;
  *) die "KPROXY_IDENTITY must be kube-proxy or serviceaccount" ;;
esac
for ((i = 1; i <= NODES; i++)); do
  dir=$STATE_DIR/$(node_name "$i")
  mkdir -p "$dir"
  sed "s#^  kubeconfig: /var/lib/kproxy/kubeconfig.conf\$#  kubeconfig: $kproxy_kubeconfig#" <<< "$config_conf" > "$dir/config.conf"
  # Each node has its own xtables lock, as separate machines would; the host's
  # /run/xtables.lock is left alone.
  # shellcheck disable=SC2086 # KPROXY_EXTRA_ARGS is a list of words.
  proc_define "kproxy-$(node_name "$i")" "$(ns_node "$i")" env XTABLES_LOCKFILE="$dir/xtables.lock" \
    "$KPROXY_BIN" --config="$dir/config.conf" --hostname-override="$(node_name "$i")" \
    --iptables-backend="$KPROXY_BACKEND" -v=2 $KPROXY_EXTRA_ARGS
done
if [ "$KPROXY" != 0 ]; then
  log "starting kproxy on $NODES nodes"
  for ((i = 1; i <= NODES; i++)); do
    proc_start "kproxy-$(node_name "$i")"
  done
  # Ready means healthy and done with its first IPv4 sync, so the rules are in place.
  kproxy_ready() {
    nsx "$1" curl -fsS http://127.0.0.1:10256/healthz > /dev/null &&
      nsx "$1" curl -fsS http://127.0.0.1:10249/metrics |
      grep -q '^kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family="IPv4"} [1-9]'
  }
  for ((i = 1; i <= NODES; i++)); do
    wait_for 60 kproxy kproxy_ready "$(ns_node "$i")" ||
      die "kproxy on $(node_name "$i") not synced and healthy after 60s; see $STATE_DIR/logs/kproxy-$(node_name "$i").log"
  done
fi

trap - EXIT
log "cluster $CLUSTER_NAME up in $(($(date +%s) - start_time))s: $NODES nodes, state in $STATE_DIR"
cat << SUMMARY
  control plane   $cp_ns   https://$CP_IP:$APISERVER_PORT (kubeconfig $STATE_DIR/admin.kubeconfig)
  nodes           $(for ((i = 1; i <= NODES; i++)); do printf '%s=%s(%s) ' "$(node_name "$i")" "$(node_ip "$i")" "$(node_zone "$i")"; done)
  pods            $(for ((i = 1; i <= NODES; i++)); do for ((j = 1; j <= PODS_PER_NODE; j++)); do printf '%s=%s ' "$(pod_name "$i" "$j")" "$(pod_ip "$i" "$j")"; done; done)
  external client $ext_ns $EXT_IP
  logs            $STATE_DIR/logs
  control         hack/cluster/ctl.sh (CLUSTER_NAME=$CLUSTER_NAME), hack/cluster-down.sh
SUMMARY
