#!/usr/bin/env bash
# The other images of the real-node swap (hack/realnode/swap.sh), built like kproxy's
# (hack/image.sh) and imported into the nodes, never pulled:
#   registry.k8s.io/kube-proxy:KUBE_VERSION   stock kube-proxy: upstream's binary (built from
#       Go modules by hack/build-tools.sh) at /usr/local/bin/kube-proxy on the same Debian
#       layer as kproxy's image (iptables with both backends behind iptables-wrapper, kmod,
#       conntrack), as upstream's image has them; the name kubeadm's DaemonSet uses
#   kpx.test/kpx-echo:e2e   the e2e echo server (test/e2e/cmd/kpx-echo), alone in its image
# Prints ARCHIVE=NAME pairs for node-up.sh's EXTRA_IMAGES. Needs root, umoci, and
# hack/image.sh run first (its cached Debian layer). Environment: IMAGES_OUT (the archives'
# folder, default _output/realnode-images).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin"
out=${IMAGES_OUT:-$(pwd)/_output/realnode-images}
arch=$(go env GOARCH)
kube_proxy=${TOOLS_BIN:-$(pwd)/_output/tools/bin}/kube-proxy
echo_bin=$(pwd)/_output/e2e/bin/kpx-echo
base=$(ls -t _output/image/cache/debian-"$arch"-*.tar 2> /dev/null | head -1 || true)
[ -x "$kube_proxy" ] || { echo "images: missing $kube_proxy: run hack/build-tools.sh" >&2; exit 1; }
[ -x "$echo_bin" ] || { echo "images: missing $echo_bin: run hack/build-e2e.sh" >&2; exit 1; }
[ -n "$base" ] || { echo "images: no Debian layer in _output/image/cache: run hack/image.sh" >&2; exit 1; }
kube_version=$("$kube_proxy" --version | awk '{print $2}')
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# image ARCHIVE TAG ENTRYPOINT LAYER...: an OCI archive of one image made of the layers.
image() {
  local archive=$1 tag=$2 entrypoint=$3 layout=$work/layout; shift 3
  rm -rf "$layout"
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  local l
  for l in "$@"; do umoci raw add-layer --image "$layout:$tag" "$l"; done
  umoci config --image "$layout:$tag" --architecture "$arch" --os linux --config.entrypoint "$entrypoint"
  umoci gc --layout "$layout"
  tar -C "$layout" -cf "$archive" .
}
# app_layer TAR FILE DEST: a layer holding FILE at DEST.
app_layer() {
  local d=$work/app
  rm -rf "$d"
  mkdir -p "$d/$(dirname "$3")"
  install -m 755 "$2" "$d/$3"
  tar --owner=0 --group=0 --numeric-owner -C "$d" -cf "$1" "${3#/}"
}

app_layer "$work/kube-proxy.tar" "$kube_proxy" /usr/local/bin/kube-proxy
image "$out/kube-proxy.oci.tar" "$kube_version" /usr/local/bin/kube-proxy "$base" "$work/kube-proxy.tar"
app_layer "$work/echo.tar" "$echo_bin" /kpx-echo
image "$out/kpx-echo.oci.tar" e2e /kpx-echo "$work/echo.tar"
echo "$out/kube-proxy.oci.tar=registry.k8s.io/kube-proxy:$kube_version $out/kpx-echo.oci.tar=kpx.test/kpx-echo:e2e"
