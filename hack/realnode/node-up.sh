#!/usr/bin/env bash
# Turns node NODE_INDEX (default 1) of a running e2e cluster (hack/cluster-up.sh with
# KPROXY=0) into a real node: containerd + runc + CNI bridge on cbr0 + kubelet v1.37, inside
# the node's network namespace and a mount namespace of their own (hack/realnode/node-run.sh
# says what is per node), registering as node-NODE_INDEX. Images are imported, never pulled:
# a pause image (hack/realnode/pause, packaged with umoci), kproxy's OCI archive
# (hack/image.sh) as ghcr.io/kproxy-dev/kproxy:v0.1.0 (the name deploy/ uses) and
# EXTRA_IMAGES. Returns once the kubelet reports the Node Ready; hack/realnode/swap.sh runs
# the pods.
#
# Undo with hack/realnode/node-down.sh BEFORE hack/cluster-down.sh.
# Needs: hack/build-node-tools.sh, runc (apt-get install runc), containernetworking-plugins,
# umoci, an image archive (make image).
#
# Environment: CLUSTER_NAME (default kpx), NODE_BIN (_output/tools/node-bin),
# CONTAINERD_BIN (folder with containerd, containerd-shim-runc-v2 and ctr; default NODE_BIN
# if hack/build-node-tools.sh built containerd there (CONTAINERD=source), else /usr/bin for
# Debian's containerd 1.6, which kubelet 1.37 accepts too), RUNC (runc binary),
# IMAGE_ARCHIVE (default: the newest _output/image/kproxy-*.oci.tar), EXTRA_IMAGES (more
# images to import: space-separated ARCHIVE=NAME), NODE_IPTABLES (the node's `iptables`,
# nft or legacy; default: the host's).
set -euo pipefail
source "$(dirname "$0")/../cluster/lib.sh"
i=${1:-1}
: "${NODE_BIN:=$REPO_ROOT/_output/tools/node-bin}"
: "${CONTAINERD_BIN:=$([ -x "$NODE_BIN/containerd" ] && echo "$NODE_BIN" || echo /usr/bin)}"
t_start=$(date +%s.%N)
elapsed() { printf '%.1f' "$(echo "$(date +%s.%N) - $t_start" | bc)"; }

[ "$(id -u)" -eq 0 ] || die "node-up needs root"
[ -f "$STATE_DIR/cluster.env" ] || die "no cluster $CLUSTER_NAME: run hack/cluster-up.sh"
node=$(node_name "$i") ns=$(ns_node "$i") nip=$(node_ip "$i")
grep -qx -- "$ns" "$STATE_DIR/netns" || die "$ns is not a node of cluster $CLUSTER_NAME"
for b in kubelet pause; do
  [ -x "$NODE_BIN/$b" ] || die "missing $NODE_BIN/$b: run hack/build-node-tools.sh"
done
for b in containerd containerd-shim-runc-v2 ctr; do
  [ -x "$CONTAINERD_BIN/$b" ] || die "missing $CONTAINERD_BIN/$b: apt-get install containerd, or CONTAINERD=source hack/build-node-tools.sh"
done
ctrd_major=$("$CONTAINERD_BIN/containerd" --version | sed -n 's/.* v\{0,1\}\([0-9]*\)\.[0-9]*\.[0-9].*/\1/p')
for c in runc umoci unshare nsenter bc /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/loopback /usr/lib/cni/portmap; do
  command -v "$c" > /dev/null || die "missing $c (apt-get install runc umoci containernetworking-plugins util-linux bc)"
done
IMAGE_ARCHIVE=${IMAGE_ARCHIVE:-$(ls -t "$REPO_ROOT"/_output/image/kproxy-*.oci.tar 2> /dev/null | head -1)}
[ -f "$IMAGE_ARCHIVE" ] || die "no kproxy image archive: run make image"
proc_alive "realnode-$node" && die "realnode-$node runs already"

rn=$STATE_DIR/realnode-$node
cg=kpx-realnode-$CLUSTER_NAME-$node
rm -rf "$rn"
mkdir -p "$rn"/{kubelet,log,cni/net.d,cni/ipam,manifests,sysctl,images,containerd}
admin=(-H "Authorization: Bearer $(awk -F, '$2=="kpx-admin"{print $1}' "$STATE_DIR/pki/tokens.csv")")
api=https://$CP_IP:$APISERVER_PORT
cp_ns=$(ns_cp)
kapi() { nsx "$cp_ns" curl -fsS -k "${admin[@]}" "$@"; }

# --- node identity: the token of user system:node:NODE (group system:nodes) cluster-up made --
grep -q ",system:node:$node," "$STATE_DIR/pki/tokens.csv" ||
  die "cluster $CLUSTER_NAME has no token for system:node:$node (made by an older hack/cluster-up.sh?)"
node_token=$(awk -F, -v u="system:node:$node" '$2==u{print $1}' "$STATE_DIR/pki/tokens.csv")
sed -e "s#^\(    token: \).*#\1$node_token#" -e "s#^- name: admin\$#- name: $node#" \
  -e "s#user: admin}#user: $node}#" -e "s#admin@#$node@#g" "$STATE_DIR/admin.kubeconfig" > "$rn/kubelet.kubeconfig"
chmod 600 "$rn/kubelet.kubeconfig"

# --- images --------------------------------------------------------------------------------
pause_ref=registry.k8s.io/pause:3.10
pl=$rn/images/pause.oci
umoci init --layout "$pl"
umoci new --image "$pl:3.10"
umoci unpack --image "$pl:3.10" "$rn/images/pause.bundle" > /dev/null
install -m 755 "$NODE_BIN/pause" "$rn/images/pause.bundle/rootfs/pause"
umoci repack --image "$pl:3.10" "$rn/images/pause.bundle"
umoci config --image "$pl:3.10" --config.entrypoint /pause --config.user 65535:65535
umoci gc --layout "$pl"
tar -C "$pl" -cf "$rn/images/pause.tar" .
rm -rf "$pl" "$rn/images/pause.bundle"
kproxy_ref=ghcr.io/kproxy-dev/kproxy:v0.1.0

# --- kernel tunables kubelet wants: fakes for those the host has otherwise -----------------
for kv in vm.overcommit_memory=1 vm.panic_on_oom=0 kernel.panic=10 kernel.panic_on_oops=1 \
  kernel.keys.root_maxkeys=1000000 kernel.keys.root_maxbytes=25000000; do
  k=${kv%=*} v=${kv#*=}
  [ "$(cat "/proc/sys/${k//.//}")" = "$v" ] || echo "$v" > "$rn/sysctl/$k"
done

# --- cgroups: one group per v1 hierarchy (kubelet's cgroupRoot) -----------------------------
for h in /sys/fs/cgroup/*/; do
  [ "$h" = /sys/fs/cgroup/unified/ ] && continue
  mkdir -p "$h$cg"
done
if [ -d /sys/fs/cgroup/cpuset/"$cg" ]; then
  cat /sys/fs/cgroup/cpuset/cpuset.cpus > /sys/fs/cgroup/cpuset/"$cg"/cpuset.cpus
  cat /sys/fs/cgroup/cpuset/cpuset.mems > /sys/fs/cgroup/cpuset/"$cg"/cpuset.mems
fi

# Without CAP_SYS_RESOURCE (bit 24 of CapEff), no process may lower its oom_score_adj.
RESTRICT_OOM=false
(( (0x$(awk '/^CapEff/{print $2}' /proc/self/status) >> 24) & 1 )) || RESTRICT_OOM=true
# --- configuration -------------------------------------------------------------------------
cat > "$rn/node.env" << ENV
CG=$cg
NODE_BIN=$CONTAINERD_BIN:$NODE_BIN
NODE_NAME=$node
IMAGES="$rn/images/pause.tar=$pause_ref $IMAGE_ARCHIVE=$kproxy_ref${EXTRA_IMAGES:+ $EXTRA_IMAGES}"
NODE_IPTABLES=${NODE_IPTABLES:-}
ENV
if [ "$ctrd_major" -ge 2 ]; then
  cat > "$rn/containerd.toml" << TOML
version = 3
root = "$rn/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.internal.v1.opt"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
[plugins.'io.containerd.cri.v1.images'.pinned_images]
  sandbox = "$pause_ref"
# Lowering a process's oom_score_adj needs CAP_SYS_RESOURCE, which this machine's root lacks
# (runc: "nsexec: failed to update /proc/self/oom_score_adj: Permission denied" for critical
# and Guaranteed pods): keep every container at containerd's score or above.
[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = $RESTRICT_OOM
[plugins.'io.containerd.cri.v1.runtime'.cni]
  bin_dirs = ["/usr/lib/cni"]
  conf_dir = "$rn/cni/net.d"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
  BinaryName = "${RUNC:-$(command -v runc)}"
  SystemdCgroup = false
TOML
else # containerd 1.x: the same in configuration version 2
  cat > "$rn/containerd.toml" << TOML
version = 2
root = "$rn/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.internal.v1.opt"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_ref"
  restrict_oom_score_adj = $RESTRICT_OOM
[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  BinaryName = "${RUNC:-$(command -v runc)}"
  SystemdCgroup = false
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "$rn/cni/net.d"
TOML
fi
# Real pods share cbr0 with cluster-up's pod slots (10.244.I.2-10) from .100 up, so the
# other nodes' routes reach them.
cat > "$rn/cni/net.d/10-kpx.conflist" << CNI
{"cniVersion": "1.0.0", "name": "kpx", "plugins": [
  {"type": "bridge", "bridge": "cbr0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$rn/cni/ipam",
            "ranges": [[{"subnet": "10.244.$i.0/24", "rangeStart": "10.244.$i.100",
                         "rangeEnd": "10.244.$i.250", "gateway": "$(pod_gw "$i")"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}
]}
CNI
cat > "$rn/kubelet.yaml" << KC
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$cg
failSwapOn: false
protectKernelDefaults: true
containerRuntimeEndpoint: unix:///run/containerd/containerd.sock
address: $nip
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
staticPodPath: $rn/manifests
volumePluginDir: $rn/kubelet/volume-plugins
clusterDNS: [10.96.0.10]
clusterDomain: cluster.local
maxPods: 30
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
KC
echo "--config=$rn/kubelet.yaml --kubeconfig=$rn/kubelet.kubeconfig --root-dir=$rn/kubelet --hostname-override=$node --node-ip=$nip --v=2" > "$rn/kubelet.args"

# --- start ---------------------------------------------------------------------------------
proc_define "realnode-$node" "$ns" unshare -m --propagation slave "$REPO_ROOT/hack/realnode/node-run.sh" "$rn"
proc_start "realnode-$node"
log "node $node: supervisor started (log $STATE_DIR/logs/realnode-$node.log, kubelet $rn/kubelet.log)"
# cluster-up's harness already reported the Node Ready ("kproxy e2e harness"); the kubelet's
# own status says "kubelet is posting ready status".
node_ready() {
  grep -q 'Successfully registered node\|Node was previously registered' "$rn/kubelet.log" &&
    kapi "$api/api/v1/nodes/$node" | grep '"message": *"kubelet is posting ready status' > /dev/null
}
wait_for 180 kubelet node_ready || die "node $node not Ready after 180s; see $rn/kubelet.log"
log "node $node Ready after $(elapsed)s"
