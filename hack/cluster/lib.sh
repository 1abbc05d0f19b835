# Shared by hack/cluster-up.sh, hack/cluster-down.sh and hack/cluster/ctl.sh: the cluster's
# layout (names and addresses, all derived from CLUSTER_NAME, NODES and PODS_PER_NODE) and
# the bookkeeping of the processes the scripts start. Source it: it only sets variables and
# defines functions.
#
# Layout (every name below is a network namespace this cluster creates; nothing routes out):
#
#   $N-fabric   bridge fab0 192.168.10.1/24: the nodes' LAN, and their default gateway
#               (it does not forward, so it is a dead end, like integration tests' gw)
#   $N-cp       192.168.10.2: etcd (127.0.0.1:2379), kube-apiserver (:6443),
#               kube-controller-manager
#   $N-node-I   192.168.10.(10+I), forwards; pod bridge cbr0 10.244.I.1/24; routes to the
#               other nodes' pod CIDRs via their LAN address; runs kproxy
#   $N-nI-pJ    pod nI-pJ of node-I at 10.244.I.(1+J), default route via 10.244.I.1,
#               runs kpx-echo -name nI-pJ
#   $N-ext      192.168.10.100: the external client, outside the pod network, with routes
#               only to the LAN; runs kpx-echo -name external (a backend outside the cluster)

: "${CLUSTER_NAME:=kpx}"
: "${NODES:=2}"
: "${PODS_PER_NODE:=3}"
: "${STATE_DIR:=${TMPDIR:-/tmp}/kproxy-cluster/$CLUSTER_NAME}"

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TOOLS_BIN=${TOOLS_BIN:-$REPO_ROOT/_output/tools/bin}
E2E_BIN=${E2E_BIN:-$REPO_ROOT/_output/e2e/bin}
KPROXY_BIN=${KPROXY_BIN:-$REPO_ROOT/bin/kproxy}

SERVICE_CIDR=10.96.0.0/16
CLUSTER_CIDR=10.244.0.0/16
LAN_PREFIX=192.168.10
CP_IP=$LAN_PREFIX.2
EXT_IP=$LAN_PREFIX.100
APISERVER_PORT=6443
ZONES=(zone-a zone-b zone-c)

ns_fabric() { echo "$CLUSTER_NAME-fabric"; }
ns_cp() { echo "$CLUSTER_NAME-cp"; }
ns_ext() { echo "$CLUSTER_NAME-ext"; }
ns_node() { echo "$CLUSTER_NAME-node-$1"; }           # NODE_INDEX
ns_pod() { echo "$CLUSTER_NAME-n$1-p$2"; }            # NODE_INDEX POD_INDEX
node_name() { echo "node-$1"; }
node_ip() { echo "$LAN_PREFIX.$((10 + $1))"; }
node_zone() { echo "${ZONES[$((($1 - 1) % ${#ZONES[@]}))]}"; }
pod_name() { echo "n$1-p$2"; }
pod_ip() { echo "10.244.$1.$((1 + $2))"; }
pod_gw() { echo "10.244.$1.1"; }

log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
die() { echo "error: $*" >&2; exit 1; }

# nsx NETNS CMD... runs CMD inside NETNS.
nsx() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

# Process bookkeeping: $STATE_DIR/procs/NAME.cmd holds the command (re-run by
# "ctl.sh start NAME"), NAME.pid "PID STARTTIME" (the start time, from /proc/PID/stat,
# guards against killing a reused PID), and the output goes to $STATE_DIR/logs/NAME.log.

proc_starttime() { # PID -> the process's start time in clock ticks; nothing if it is gone
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
  # The command name (field 2) may hold spaces, so cut after its ')': then the state
  # (field 3) comes first and the start time (field 22) 20th. A zombie counts as gone.
  stat=${stat##*) }
  echo "$stat" | awk '$1 != "Z" {print $20}'
}

# proc_alive NAME: true when the process recorded for NAME still runs.
proc_alive() {
  local f="$STATE_DIR/procs/$1.pid" pid start
  [ -f "$f" ] || return 1
  read -r pid start < "$f"
  [ -n "$pid" ] && [ "$(proc_starttime "$pid")" = "$start" ]
}

# proc_define NAME NETNS CMD...: records how to start NAME (run in NETNS).
proc_define() {
  local name=$1 ns=$2; shift 2
  mkdir -p "$STATE_DIR/procs" "$STATE_DIR/logs"
  {
    printf 'exec ip netns exec %q' "$ns"
    printf ' %q' "$@"
    printf '\n'
  } > "$STATE_DIR/procs/$name.cmd"
}

# proc_start NAME: starts NAME's recorded command in its own session (so a Ctrl-C of the
# caller does not reach it), appending to its log, and records its PID.
proc_start() {
  local name=$1 cmdfile="$STATE_DIR/procs/$1.cmd" pid start
  [ -f "$cmdfile" ] || die "no command recorded for $name"
  if proc_alive "$name"; then
    log "$name already running"
    return 0
  fi
  echo "--- start $(date -u +%FT%TZ): $(cat "$cmdfile")" >> "$STATE_DIR/logs/$name.log"
  # setsid execs in place (a background job is not a process group leader), and so do the
  # command file's "exec" and ip netns exec: $! is the component's own PID.
  setsid bash "$cmdfile" >> "$STATE_DIR/logs/$name.log" 2>&1 < /dev/null &
  pid=$!
  start=$(proc_starttime "$pid")
  [ -n "$start" ] || die "$name exited at once; see $STATE_DIR/logs/$name.log"
  echo "$pid $start" > "$STATE_DIR/procs/$name.pid"
}

# proc_stop NAME [SIGNAL [GRACE]]: stops NAME if it runs: SIGNAL (default TERM), then
# SIGKILL if it still runs after GRACE seconds (default 10).
proc_stop() {
  local name=$1 sig=${2:-TERM} grace=${3:-10} f="$STATE_DIR/procs/$1.pid" pid start i
  [ -f "$f" ] || return 0
  read -r pid start < "$f"
  if [ -n "$pid" ] && [ "$(proc_starttime "$pid")" = "$start" ]; then
    kill -s "$sig" "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      [ "$(proc_starttime "$pid")" = "$start" ] || break
      sleep 0.1
    done
    if [ "$(proc_starttime "$pid")" = "$start" ]; then
      log "$name (pid $pid) still runs ${grace}s after SIG$sig; killing it"
      kill -s KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do
        [ "$(proc_starttime "$pid")" = "$start" ] || break
        sleep 0.1
      done
    fi
  fi
  rm -f "$f"
}

# wait_for SECONDS WHAT CMD...: runs CMD every half second until it succeeds.
wait_for() {
  local secs=$1 what=$2 i; shift 2
  for ((i = 0; i < secs * 2; i++)); do
    if "$@" > /dev/null 2>&1; then
      return 0
    fi
    sleep 0.5
  done
  return 1
}
