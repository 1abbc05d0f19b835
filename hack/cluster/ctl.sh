#!/usr/bin/env bash
# Controls the processes of a running e2e cluster (hack/cluster-up.sh), for fault tests
# and by hand:
#
#   hack/cluster/ctl.sh list                     every component and whether it runs
#   hack/cluster/ctl.sh stop NAME [SIGNAL [GRACE]]  stop it: SIGNAL (TERM), then KILL
#                                                after GRACE seconds (10)
#   hack/cluster/ctl.sh start NAME               start it again with its recorded command
#   hack/cluster/ctl.sh restart NAME
#   hack/cluster/ctl.sh pid NAME                 its PID, if it runs
#   hack/cluster/ctl.sh exec NETNS CMD...        run CMD in one of the cluster's namespaces
#
# NAME is etcd, kube-apiserver, kube-controller-manager, kproxy-node-I, echo-nI-pJ or
# echo-external. Environment: CLUSTER_NAME (default kpx) or STATE_DIR.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

[ -d "$STATE_DIR" ] || die "no cluster $CLUSTER_NAME ($STATE_DIR does not exist)"
cmd=${1:-}
[ -n "$cmd" ] || die "usage: ctl.sh list|start|stop|restart|pid NAME | exec NETNS CMD..."
shift
case "$cmd" in
  list)
    for f in "$STATE_DIR"/procs/*.cmd; do
      n=$(basename "$f" .cmd)
      if proc_alive "$n"; then echo "$n running $(cut -d' ' -f1 < "$STATE_DIR/procs/$n.pid")"; else echo "$n stopped"; fi
    done
    ;;
  start) proc_start "${1:?name}" ;;
  stop) proc_stop "${1:?name}" "${2:-TERM}" "${3:-10}" ;;
  restart) proc_stop "${1:?name}"; proc_start "$1" ;;
  pid)
    proc_alive "${1:?name}" || exit 1
    cut -d' ' -f1 < "$STATE_DIR/procs/$1.pid"
    ;;
  exec)
    ns=${1:?netns}; shift
    grep -qx -- "$ns" "$STATE_DIR/netns" || die "$ns is not a namespace of cluster $CLUSTER_NAME"
    exec ip netns exec "$ns" "$@"
    ;;
  *) die "unknown command $cmd" ;;
esac
