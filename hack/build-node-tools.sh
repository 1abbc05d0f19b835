#!/usr/bin/env bash
# Builds what a real node of the e2e cluster needs (hack/realnode, issue 9) from Go modules
# into _output/tools/node-bin: kubelet v1.37.2 (from hack/tools/go.mod, the version of the
# control plane) and containerd v2 with ctr (from hack/tools/node/go.mod). Debian bookworm's
# containerd 1.6 works too (kubelet 1.37 logs that it lacks the RuntimeConfig call and uses
# the configured cgroup driver; CONTAINERD_BIN=/usr/bin hack/realnode/node-up.sh runs it),
# but is a release line kubelet no longer tests with. runc and the CNI plugins come from Debian
# (hack/realnode/node-up.sh checks for them). Also the pod sandbox binary (hack/realnode/pause),
# which node-up.sh packages as the node's pause image. Test tooling only.
#
# Cached like hack/build-tools.sh under its own key (both go.mod/go.sum pairs, this script,
# the Go version). Every go build takes /tmp/kproxy-build.lock, so that builds on this
# machine never run two at a time.
#
# Environment: NODE_BIN (output folder), NICE (default 10), FORCE=1 to rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

root=$(pwd)
bin=${NODE_BIN:-$root/_output/tools/node-bin}
key=$(cat hack/tools/go.mod hack/tools/go.sum hack/tools/tools.go hack/tools/node/go.mod hack/tools/node/go.sum \
  hack/realnode/pause/go.mod hack/realnode/pause/main.go hack/build-node-tools.sh <(go env GOVERSION GOOS GOARCH) | sha256sum | cut -d' ' -f1)
if [ "${FORCE:-0}" != 1 ] && [ "$(cat "$bin/.key" 2>/dev/null)" = "$key" ] &&
  [ -x "$bin/kubelet" ] && [ -x "$bin/containerd" ] && [ -x "$bin/containerd-shim-runc-v2" ] && [ -x "$bin/ctr" ] && [ -x "$bin/pause" ]; then
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
build hack/tools kubelet k8s.io/kubernetes/cmd/kubelet \
  "-X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor -X $pkg.gitTreeState=clean"

ctrd_version=$(cd hack/tools/node && go list -m -f '{{.Version}}' github.com/containerd/containerd/v2)
ctrd_ldflags="-X github.com/containerd/containerd/v2/version.Version=$ctrd_version"
# Static: no btrfs, devmapper or zfs snapshotters (they need cgo); overlayfs and native stay.
ctrd_tags="no_btrfs no_devmapper no_zfs no_aufs no_cri_dockershim urfave_cli_no_docs"
build hack/tools/node containerd github.com/containerd/containerd/v2/cmd/containerd "$ctrd_ldflags" "$ctrd_tags"
build hack/tools/node containerd-shim-runc-v2 github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2 "$ctrd_ldflags" "$ctrd_tags"
build hack/tools/node ctr github.com/containerd/containerd/v2/cmd/ctr "$ctrd_ldflags" "$ctrd_tags"

build hack/realnode/pause pause .

mv -f "$tmp/kubelet" "$tmp/containerd" "$tmp/containerd-shim-runc-v2" "$tmp/ctr" "$tmp/pause" "$bin/"
echo "$key" > "$bin/.key"
echo "build-node-tools: built kubelet $kube_version, containerd $ctrd_version (with containerd-shim-runc-v2, ctr), pause in $bin in $(($(date +%s) - start))s"
