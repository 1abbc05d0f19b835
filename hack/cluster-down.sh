#!/usr/bin/env bash
# Tears down the e2e test cluster hack/cluster-up.sh started: stops every process it
# recorded (by PID, checked against the process's start time; nothing is killed by name),
# deletes every network namespace it created, and removes its state folder.
#
# Environment: CLUSTER_NAME (default kpx) or STATE_DIR; KEEP_LOGS=1 keeps
# $STATE_DIR/logs (and removes the rest); DOWN_GRACE (default 3) seconds between SIGTERM
# and SIGKILL.
set -euo pipefail
source "$(dirname "$0")/cluster/lib.sh"

[ "$(id -u)" -eq 0 ] || die "cluster-down needs root"
if [ ! -d "$STATE_DIR" ]; then
  echo "cluster-down: no cluster $CLUSTER_NAME ($STATE_DIR does not exist)"
  exit 0
fi

# Stop clients before servers: kproxy and the echo servers, then the controller manager,
# the API server and etcd last.
names=()
for f in "$STATE_DIR"/procs/*.pid; do
  [ -e "$f" ] || continue
  names+=("$(basename "$f" .pid)")
done
order() {
  case "$1" in
    kproxy-*) echo 1 ;; echo-*) echo 2 ;; kube-controller-manager) echo 3 ;;
    kube-apiserver) echo 4 ;; etcd) echo 5 ;; *) echo 0 ;;
  esac
}
# The processes of one rank stop together. The state is thrown away, so nothing needs a
# long graceful shutdown (kube-apiserver's takes about 10 s with watches open).
for rank in 0 1 2 3 4 5; do
  for n in "${names[@]}"; do
    if [ "$(order "$n")" = "$rank" ]; then
      proc_stop "$n" TERM "${DOWN_GRACE:-3}" &
    fi
  done
  wait
done

# Namespaces in reverse order of creation: pods before the nodes that hold their bridge.
if [ -f "$STATE_DIR/netns" ]; then
  tac "$STATE_DIR/netns" | while read -r ns; do
    [ -n "$ns" ] || continue
    if ip netns list | awk '{print $1}' | grep -qx -- "$ns"; then
      ip netns del "$ns" || log "could not delete network namespace $ns"
    fi
  done
fi

if [ "${KEEP_LOGS:-0}" = 1 ]; then
  find "$STATE_DIR" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
  echo "cluster-down: cluster $CLUSTER_NAME removed; logs kept in $STATE_DIR/logs"
else
  rm -rf "$STATE_DIR"
  echo "cluster-down: cluster $CLUSTER_NAME removed"
fi
