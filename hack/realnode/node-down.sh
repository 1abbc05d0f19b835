#!/usr/bin/env bash
# Undoes hack/realnode/node-up.sh NODE_INDEX (default 1); run it before hack/cluster-down.sh.
# Stops the node's supervisor (which kills kubelet, containerd, the shims and every
# container), kills whatever is left in the node's cgroups and removes them. The node's mounts lived only in its mount namespace and are gone
# with its last process. Keeps the logs in $STATE_DIR/realnode-NODE (logs, *.log).
set -euo pipefail
source "$(dirname "$0")/../cluster/lib.sh"
i=${1:-1}
node=$(node_name "$i")
rn=$STATE_DIR/realnode-$node
cg=kpx-realnode-$CLUSTER_NAME-$node
[ "$(id -u)" -eq 0 ] || die "node-down needs root"
if [ -d "$STATE_DIR/procs" ]; then
  proc_stop "realnode-$node" TERM 20
fi
left=0
for _ in $(seq 50); do
  pids=$(cat $(find /sys/fs/cgroup/*/"$cg" -name cgroup.procs 2> /dev/null) 2> /dev/null | sort -u || true)
  [ -n "$pids" ] || break
  left=1
  # shellcheck disable=SC2086 # a list of PIDs, all in this node's cgroups
  kill -KILL $pids 2> /dev/null || true
  sleep 0.2
done
[ "$left" = 0 ] || log "killed processes left in cgroup $cg"
for h in /sys/fs/cgroup/*/; do
  [ -d "$h$cg" ] && find "$h$cg" -depth -type d -exec rmdir {} \; 2> /dev/null
  [ -d "$h$cg" ] && log "could not remove $h$cg"
done
if [ -d "$rn" ]; then
  rm -rf "$rn/containerd" "$rn/overlay" "$rn/kubelet" "$rn/images" "$rn/cni"
fi
log "real node $node stopped; logs in $rn"
