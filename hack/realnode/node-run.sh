#!/usr/bin/env bash
# The supervisor of one real node (started by hack/realnode/node-up.sh, never by hand):
# runs inside the node's network namespace and a mount namespace of its own
# (ip netns exec NS unshare -m --propagation slave node-run.sh RN_DIR), so that everything
# containerd and kubelet write to their default paths stays per node:
#   /run            a tmpfs (containerd's socket and state, the node's xtables lock, pod netns)
#   /var/lib, /etc, /opt   overlays on the host's, writes go to RN_DIR/overlay/*
#   /var/log        RN_DIR/log (pod logs)
#   /proc/sys/...   kubelet's kernel tunables it would otherwise set host-wide (vm, kernel)
#                   are bind-mounted files holding the values it wants, and kubelet runs with
#                   protectKernelDefaults: true, so it only reads them
# It joins the node's cgroup (every v1 hierarchy; kubelet's cgroupRoot is below it), starts
# containerd, imports the images node-up.sh prepared, starts kubelet, and on SIGTERM kills
# kubelet, containerd, the shims and every container (everything in the cgroup tree).
set -euo pipefail
rn=$1
# shellcheck source=/dev/null
source "$rn/node.env" # CG (cgroup name), NODE_BIN, IMAGES (archives), NODE_NAME, NODE_IPTABLES
export PATH="$NODE_BIN:$PATH"
log() { echo "[$(date +%H:%M:%S.%3N)] node-run: $*" >&2; }
trap 'log "failed at line $LINENO: $BASH_COMMAND"' ERR

# --- mounts --------------------------------------------------------------------------------
# ip netns exec mounted a fresh sysfs for the network namespace, without the cgroup
# hierarchies below /sys/fs/cgroup (kubelet: "failed to get mounted cgroup subsystems:
# failed to find cgroup mounts"); mount them again as the host has them (same options: the
# same hierarchies).
mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
while read -r src mnt type opts _; do
  case $type in cgroup | cgroup2) ;; *) continue ;; esac
  case $mnt in /sys/fs/cgroup/*) ;; *) continue ;; esac
  mkdir -p "$mnt"
  o=$(echo "$opts" | tr , '\n' | { grep -vx 'rw\|relatime' || true; } | paste -sd, -)
  case $o in name=*) o=none,$o ;; esac
  mount -t "$type" ${o:+-o "$o"} "$src" "$mnt"
done < /proc/1/mounts
# This process and so all its children join the node's cgroup in every v1 hierarchy.
for h in /sys/fs/cgroup/*/; do
  [ -d "$h$CG" ] && echo $$ > "$h$CG/cgroup.procs"
done
mount -t tmpfs -o mode=755 tmpfs /run
mkdir -p /run/netns /run/containerd
for d in var/lib etc opt; do
  u=$rn/overlay/${d//\//-}
  mkdir -p "$u/upper" "$u/work"
  mount -t overlay overlay -o "lowerdir=/$d,upperdir=$u/upper,workdir=$u/work" "/$d"
done
mkdir -p "$rn/log"
mount --bind "$rn/log" /var/log
for f in "$rn"/sysctl/*; do
  [ -e "$f" ] || continue
  p=/proc/sys/$(basename "$f" | tr . /)
  mount --bind "$f" "$p"
  log "kernel tunable $p reads $(cat "$p") in this node (host value left alone)"
done

# The node's OS flavour: which backend `iptables` is. kubelet makes its KUBE-IPTABLES-HINT
# chain with it, and the proxies' images pick their backend from that chain. The
# alternatives live in /etc and /var/lib, this node's overlays.
if [ -n "$NODE_IPTABLES" ]; then
  for f in iptables ip6tables; do update-alternatives --quiet --set "$f" "/usr/sbin/$f-$NODE_IPTABLES"; done
  log "iptables here is $(readlink -f "$(command -v iptables)") ($NODE_IPTABLES)"
fi

kubelet_pid= ctrd_pid=
stop_all() {
  trap - TERM INT
  log "stopping"
  [ -n "$kubelet_pid" ] && kill -TERM "$kubelet_pid" 2> /dev/null || true
  # Everything else in the node's cgroup tree but this process: containerd, shims, pods.
  local i pids
  for i in 1 2 3 4 5 6 7 8 9 10; do
    pids=$(cat $(find /sys/fs/cgroup/freezer/"$CG" -name cgroup.procs) 2> /dev/null | grep -vx $$ | sort -u || true)
    [ -n "$pids" ] || break
    # shellcheck disable=SC2086
    kill -KILL $pids 2> /dev/null || true
    sleep 0.2
  done
  log "stopped"
  exit 0
}
trap stop_all TERM INT

# --- containerd ----------------------------------------------------------------------------
log "starting containerd ($(containerd --version))"
containerd --config "$rn/containerd.toml" >> "$rn/containerd.log" 2>&1 &
ctrd_pid=$!
for _ in $(seq 100); do
  [ -S /run/containerd/containerd.sock ] && ctr version > /dev/null 2>&1 && break
  kill -0 "$ctrd_pid" 2> /dev/null || { log "containerd exited; see $rn/containerd.log"; exit 1; }
  sleep 0.1
done
log "containerd ready"
for spec in $IMAGES; do # ARCHIVE=NAME
  t0=$(date +%s.%N)
  # Without --base-name, ctr names the archive's bare tags (org.opencontainers.image.ref.name)
  # "import-DATE:TAG"; CRI normalises that to docker.io/library/import-DATE:TAG, which does
  # not exist, and every container of the image fails ("failed to get image from containerd
  # sha256:...: image docker.io/library/import-...: not found"), even after ctr images rm.
  # --index-name only when the archive has no such tag: both under one name leave none.
  name=${spec#*=} archive=${spec%%=*} index=(--index-name "$name")
  if tar -xOf "$archive" ./index.json | grep "\"org.opencontainers.image.ref.name\": *\"${name##*:}\"" > /dev/null; then
    index=()
  fi
  ctr -n k8s.io images import --base-name "${name%:*}" "${index[@]}" "$archive" >&2
  log "imported ${spec#*=} in $(echo "$(date +%s.%N) - $t0" | bc)s"
done
images=$(ctr -n k8s.io images ls -q)
echo "$images" >&2
for spec in $IMAGES; do
  grep -qx "${spec#*=}" <<< "$images" || { log "image ${spec#*=} missing after the import"; exit 1; }
done

# --- kubelet -------------------------------------------------------------------------------
log "starting kubelet ($(kubelet --version))"
# shellcheck disable=SC2046
kubelet $(cat "$rn/kubelet.args") >> "$rn/kubelet.log" 2>&1 &
kubelet_pid=$!
echo "$kubelet_pid" > "$rn/kubelet.pid"
wait -n "$kubelet_pid" "$ctrd_pid" || true
log "kubelet or containerd exited (see $rn/kubelet.log, $rn/containerd.log)"
stop_all
