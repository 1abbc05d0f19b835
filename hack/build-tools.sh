#!/usr/bin/env bash
# Builds the e2e cluster's real control plane from Go modules (hack/tools/go.mod):
# kube-apiserver, kube-controller-manager and etcd, plus upstream kube-proxy (the oracle of the
# differential tests, hack/diff.sh), into _output/tools/bin (git-ignored). Test tooling only:
# kproxy's own module never imports k8s.io/kubernetes.
#
# A cold build takes about 15 minutes on 2 cores, so the binaries are cached: the build is
# skipped when _output/tools/bin/.key matches the hash of hack/tools/go.mod, go.sum and the
# Go version. Only the Go module proxy is used; no binary is downloaded or committed.
#
# Environment: TOOLS_BIN (output folder), NICE (niceness of the build, default 10: the build
# is long and should not starve other work on the machine), FORCE=1 to rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

root=$(pwd)
bin=${TOOLS_BIN:-$root/_output/tools/bin}
key=$(cat hack/tools/go.mod hack/tools/go.sum hack/build-tools.sh <(go env GOVERSION GOOS GOARCH) | sha256sum | cut -d' ' -f1)

if [ "${FORCE:-0}" != 1 ] && [ -f "$bin/.key" ] && [ "$(cat "$bin/.key")" = "$key" ] &&
  [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] && [ -x "$bin/etcd" ] && [ -x "$bin/kube-proxy" ]; then
  echo "build-tools: up to date in $bin (key ${key:0:12})"
  exit 0
fi

mkdir -p "$bin"
tmp=$(mktemp -d "$bin/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
cd hack/tools
# Upstream builds its release binaries static, without cgo; so do we.
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false
build() { # OUTPUT PACKAGE [LDFLAGS]
  echo "build-tools: building $1 ($2)"
  nice -n "${NICE:-10}" go build -trimpath -ldflags="-s ${3:-}" -o "$tmp/$1" "$2"
}
# Stamp the version the way upstream's release build does, so /version and the components'
# logs say v1.37.x instead of v0.0.0-master.
kube_version=$(go list -m -f '{{.Version}}' k8s.io/kubernetes)
kube_minor=${kube_version#v1.}
kube_minor=${kube_minor%%.*}
pkg=k8s.io/component-base/version
kube_ldflags="-X $pkg.gitVersion=$kube_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$kube_minor -X $pkg.gitTreeState=clean"
build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$kube_ldflags"
build kube-proxy k8s.io/kubernetes/cmd/kube-proxy "$kube_ldflags"
mv -f "$tmp/etcd" "$tmp/kube-apiserver" "$tmp/kube-controller-manager" "$tmp/kube-proxy" "$bin/"
echo "$key" > "$bin/.key"
echo "build-tools: built etcd, kube-apiserver, kube-controller-manager, kube-proxy in $bin in $(($(date +%s) - start))s"
