#!/usr/bin/env bash
# The real-node prototype of issue 9, end to end: a one-node e2e cluster whose node runs a
# real kubelet v1.37 with containerd and runc (hack/realnode), kproxy's OCI image imported
# (never pulled), a static pod from that image, and deploy/'s DaemonSet until its pod is
# Ready (kproxy synced). Everything is torn down at the end. Needs root.
#
# Not in make test yet: a cold build of kubelet and containerd takes about 12 minutes on 2
# cores (cached afterwards, hack/build-node-tools.sh), and the swap under traffic it is the
# base for is still to come.
#
# Environment: CLUSTER_NAME (default kpxnode); hack/realnode/node-up.sh's CONTAINERD_BIN.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if [ "$(id -u)" -ne 0 ]; then
  echo "realnode: not root; skipping (it starts a cluster, containerd and a kubelet in namespaces)" >&2
  exit 0
fi
hack/install-deps.sh
hack/install-e2e-deps.sh
hack/install-image-deps.sh
missing=()
for c in runc bc; do command -v "$c" > /dev/null || missing+=("$c"); done
[ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
hack/build.sh
hack/build-e2e.sh
hack/build-tools.sh
hack/build-node-tools.sh
hack/image.sh

export CLUSTER_NAME=${CLUSTER_NAME:-kpxnode}
# The node first: cluster-down would leave its containers' cgroups behind.
trap 'hack/realnode/node-down.sh 1 || true; hack/cluster-down.sh || true' EXIT
NODES=1 KPROXY=0 hack/cluster-up.sh
hack/realnode/node-up.sh 1
