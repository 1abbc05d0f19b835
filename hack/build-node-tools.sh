#!/usr/bin/env bash
# Builds what the real-node cluster needs (hack/realnode, issue 9) from Go modules into
# _output/tools/node-bin, at the control plane's version (hack/tools/go.mod, v1.37.2):
#   kubelet, kube-scheduler;
#   kubeadm, which installs the stock kube-proxy addon as in a kubeadm cluster;
#   kubectl, what operators type (the swap, the README's output);
#   the pod sandbox binary (hack/realnode/pause; node-up.sh packages it as the pause image);
#   with CONTAINERD=source, containerd v2 with its shim and ctr (hack/tools/node/go.mod; about
#   8.5 minutes more on a cold machine).
# Without CONTAINERD=source the nodes run Debian's containerd 1.6 (CONTAINERD_BIN=/usr/bin):
# kubelet 1.37 logs that it lacks the RuntimeConfig call and uses the configured cgroup
# driver; everything else works. runc and the CNI plugins come from Debian
# (hack/realnode/node-up.sh checks for them). Test tooling only.
#
# Cached like hack/build-tools.sh under its own key (both go.mod/go.sum pairs, this script,
# the Go version). Every go build takes /tmp/kproxy-build.lock, so that builds on this
# machine never run two at a time.
#
# Environment: NODE_BIN (output folder), NICE (default 10), FORCE=1 to rebuild,
# CONTAINERD=source to build containerd too (default debian: build none).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

root=$(pwd)
bin=${NODE_BIN:-$root/_output/tools/node-bin}
containerd=${CONTAINERD:-debian}
case "$containerd" in
  source) ctrd_bins=(containerd containerd-shim-runc-v2 ctr) ;;
  debian) ctrd_bins=() ;;
  *) echo "build-node-tools: CONTAINERD must be source or debian" >&2; exit 1 ;;
esac
key=$(cat hack/tools/go.mod hack/tools/go.sum hack/tools/tools.go hack/tools/node/go.mod hack/tools/node/go.sum \
  hack/realnode/pause/go.mod hack/realnode/pause/main.go hack/build-node-tools.sh <(go env GOVERSION GOOS GOARCH) | sha256sum | cut -d' ' -f1)
up_to_date() {
  [ "$(cat "$bin/.key" 2>/dev/null)" = "$key" ] || return 1
  local b
  for b in kubelet kube-scheduler kubeadm kubectl pause "${ctrd_bins[@]}"; do [ -x "$bin/$b" ] || return 1; done
}
if [ "${FORCE:-0}" != 1 ] && up_to_date; then
  echo "build-node-tools: up to date in $bin (key ${key:0:12})"
  exit 0
fi
mkdir -p "$bin"
tmp=$(mktemp -d "$bin/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
build() { # DIR OUTPUT PACKAGE [LDFLAGS [TAGS]]
  local t0; t0=$(date +%s)
  echo "build-node-tools: building $2 ($3)"
  (cd "$1" && flock /tmp/kproxy-build.lock nice -n "${NICE:-10}" \
    go build -trimpath -tags "${5:-}" -ldflags="-s ${4:-}" -o "$tmp/$2" "$3")
  echo "build-node-tools: $2 in $(($(date +%s) - t0))s"
}

kube_version=$(cd hack/tools && go list -m -f '{{.Version}}' k8s.io/kubernetes)
kube_minor=${kube_version#v1.}
kube_minor=${kube_minor%%.*}
pkg=k8s.io/component-base/version
kube_ldflags="-X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor -X $pkg.gitTreeState=clean"
build hack/tools kubelet k8s.io/kubernetes/cmd/kubelet "$kube_ldflags"
build hack/tools kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler "$kube_ldflags"
build hack/tools kubeadm k8s.io/kubernetes/cmd/kubeadm "$kube_ldflags"
build hack/tools kubectl k8s.io/kubernetes/cmd/kubectl "$kube_ldflags"
build hack/realnode/pause pause .
built=(kubelet kube-scheduler kubeadm kubectl pause)

if [ "$containerd" = source ]; then
  ctrd_version=$(cd hack/tools/node && go list -m -f '{{.Version}}' github.com/containerd/containerd/v2)
  ctrd_ldflags="-X github.com/containerd/containerd/v2/version.Version=$ctrd_version"
  # Static: no btrfs, devmapper or zfs snapshotters (they need cgo); overlayfs and native stay.
  ctrd_tags="no_btrfs no_devmapper no_zfs no_aufs no_cri_dockershim urfave_cli_no_docs"
  build hack/tools/node containerd github.com/containerd/containerd/v2/cmd/containerd "$ctrd_ldflags" "$ctrd_tags"
  build hack/tools/node containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 "$ctrd_ldflags" "$ctrd_tags"
  build hack/tools/node ctr github.com/containerd/containerd/v2/cmd/ctr "$ctrd_ldflags" "$ctrd_tags"
  built+=("${ctrd_bins[@]}")
fi

for b in "${built[@]}"; do mv -f "$tmp/$b" "$bin/"; done
echo "$key" > "$bin/.key"
echo "build-node-tools: built ${built[*]} ($kube_version) in $bin in $(($(date +%s) - start))s"
