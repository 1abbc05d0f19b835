#!/usr/bin/env bash
# Issue 9 end to end on real kubelets: a two-node e2e cluster without kproxy, then
# hack/realnode/swap.sh: node-1 becomes a real node (kubelet v1.37, containerd, runc, CNI
# bridge), kubeadm installs stock kube-proxy, echo pods serve a NodePort Service under steady
# traffic, kproxy replaces kube-proxy in place (deploy/replace-kube-proxy), node-2 joins with
# no rules and gets kproxy's, the rollback restores kube-proxy on both nodes, and finally
# kube-proxy is deleted and deploy/ installed. Any failed request or broken connection fails
# the run, and so does any difference between the rules kube-proxy and kproxy leave on a node. Everything is torn down at the end; the
# operator's transcript, the measured times and the logs stay in _output/realnode/BACKEND.
# Needs root.
#
# The node binaries are cached (hack/build-node-tools.sh: kubelet, kube-scheduler, kubeadm,
# kubectl; about 5 minutes cold on 2 cores). Nodes run Debian's containerd 1.6 unless
# CONTAINERD=source (containerd v2 from Go modules, about 8.5 minutes more cold).
#
# Environment: CLUSTER_NAME (default kpxnode); CONTAINERD (debian, the default, with
# CONTAINERD_BIN=/usr/bin unless set; or source); BACKENDS (default
# "nft legacy": one run each); swap.sh's RATE and CONNS.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if [ "$(id -u)" -ne 0 ]; then
  echo "realnode: not root; skipping (it starts a cluster, containerd and kubelets in namespaces)" >&2
  exit 0
fi
hack/install-deps.sh
hack/install-e2e-deps.sh
hack/install-image-deps.sh
export CONTAINERD=${CONTAINERD:-debian}
missing=()
for c in runc bc; do command -v "$c" > /dev/null || missing+=("$c"); done
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
if [ "$CONTAINERD" = debian ]; then
  command -v containerd > /dev/null || missing+=(containerd)
  export CONTAINERD_BIN=${CONTAINERD_BIN:-/usr/bin}
fi
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
hack/build.sh
hack/build-e2e.sh
hack/build-tools.sh
hack/build-node-tools.sh
hack/image.sh

export CLUSTER_NAME=${CLUSTER_NAME:-kpxnode}
# The nodes first: cluster-down would leave their containers' cgroups behind. The logs
# (control plane, kubelets, containerd, every pod's containers) stay in OUT/logs.
teardown() {
  hack/realnode/node-down.sh 2 || true
  hack/realnode/node-down.sh 1 || true
  local state=${TMPDIR:-/tmp}/kproxy-cluster/$CLUSTER_NAME logs=$OUT/logs
  rm -rf "$logs"
  mkdir -p "$logs"
  cp -r "$state"/logs "$state"/realnode-node-* "$logs"/ 2> /dev/null || true
  hack/cluster-down.sh || true
}
# Once per iptables backend, each on a fresh cluster: on nft (what a node with no rules
# gets) and on legacy (what a node whose kubelet or OS uses iptables-legacy gets).
for backend in ${BACKENDS:-nft legacy}; do
  export BACKEND=$backend OUT=$(pwd)/_output/realnode/$backend
  rm -rf "$OUT"
  trap teardown EXIT
  NODES=2 KPROXY=0 hack/cluster-up.sh
  hack/realnode/swap.sh
  trap - EXIT
  teardown
done
