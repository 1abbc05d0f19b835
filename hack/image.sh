#!/usr/bin/env bash
# make image: builds the OCI image operators run, without a Docker engine or a registry:
#   - a Debian bookworm root file system from Debian's packages (mmdebstrap): iptables with
#     both backends, kmod (modprobe, for /lib/modules mounted from the host) and conntrack;
#     `iptables` and `ip6tables` start hack/image/iptables-wrapper, which points them at the
#     backend the node uses on first use;
#   - static kproxy (version stamped as hack/build.sh does) at /usr/local/bin/kproxy, with
#     /usr/local/bin/kube-proxy a link to it, so kube-proxy's DaemonSet command works as is;
# assembled with umoci into an OCI image layout, one manifest per architecture (tag
# VERSION-ARCH) and an image index (tag VERSION), then archived for import or publishing:
#   ctr -n k8s.io images import --index-name ghcr.io/kproxy-dev/kproxy:VERSION OUT.tar
#   skopeo copy --all oci-archive:OUT.tar docker://ghcr.io/kproxy-dev/kproxy:VERSION
# The Dockerfile is the same recipe for machines with a Docker engine.
#
# Environment: ARCHS (default: this machine's Go architecture; others need qemu-user-static
# registered with binfmt_misc for Debian's maintainer scripts, and arch-test for mmdebstrap:
# ARCHS=amd64,arm64 took 10 minutes here, 4 of them the arm64 Debian layer under qemu), OUT (default _output/image),
# FORCE_BASE=1 to rebuild the cached Debian layer. Needs root (mmdebstrap --mode=root).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
[ "$(id -u)" -eq 0 ] || { echo "image: needs root (mmdebstrap builds the root file system as root)" >&2; exit 1; }
hack/install-image-deps.sh

version=$(hack/version-ldflags.sh --version)
archs=${ARCHS:-$(go env GOARCH)}
out=${OUT:-$(pwd)/_output/image}
# Reproducible file times: the commit's.
SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2> /dev/null || date +%s)
export SOURCE_DATE_EPOCH
created=$(date -u -d "@$SOURCE_DATE_EPOCH" +%Y-%m-%dT%H:%M:%SZ)
mkdir -p "$out/cache"
oci=$out/kproxy.oci
rm -rf "$oci"
umoci init --layout "$oci"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# base_layer ARCH: the Debian root file system as a tar, cached under a key of everything
# that goes into it (Debian's packages change too: FORCE_BASE=1 refreshes it).
base_layer() {
  local arch=$1 key tar
  key=$(cat hack/image.sh hack/image/iptables-wrapper <(echo "$arch") | sha256sum | cut -c1-16)
  tar=$out/cache/debian-$arch-$key.tar
  if [ "${FORCE_BASE:-0}" = 1 ] || [ ! -s "$tar" ]; then
    if [ "$arch" != "$(go env GOHOSTARCH)" ] && { ! ls /proc/sys/fs/binfmt_misc/qemu-* > /dev/null 2>&1 || ! command -v arch-test > /dev/null; }; then
      echo "image: building for $arch needs qemu-user-static registered with binfmt_misc and arch-test (apt-get install qemu-user-static binfmt-support arch-test)" >&2
      exit 1
    fi
    echo "image: building the Debian layer for $arch (mmdebstrap, about a minute)" >&2
    local alternatives='for f in iptables ip6tables; do chroot "$1" update-alternatives --quiet --install /usr/sbin/$f $f /usr/sbin/iptables-wrapper 100 --slave /usr/sbin/$f-save $f-save /usr/sbin/iptables-wrapper --slave /usr/sbin/$f-restore $f-restore /usr/sbin/iptables-wrapper; done'
    mmdebstrap --quiet --mode=root --format=tar --variant=minbase --architectures="$arch" \
      --include=iptables,kmod,conntrack \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-exclude=/usr/share/info/*' \
      --customize-hook='copy-in hack/image/iptables-wrapper /usr/sbin' \
      --customize-hook="$alternatives" \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/* "$1"/var/log/*' \
      bookworm "$tar.tmp" >&2 \
      "deb http://deb.debian.org/debian bookworm main" \
      "deb http://deb.debian.org/debian bookworm-updates main" \
      "deb http://deb.debian.org/debian-security bookworm-security main"
    mv "$tar.tmp" "$tar"
  fi
  echo "$tar"
}

for arch in ${archs//,/ }; do
  base=$(base_layer "$arch")
  app=$work/app-$arch
  mkdir -p "$app/usr/local/bin"
  CGO_ENABLED=0 GOOS=linux GOARCH=$arch go build -trimpath -ldflags "$(hack/version-ldflags.sh)" -o "$app/usr/local/bin/kproxy" ./cmd/kproxy
  ln -s kproxy "$app/usr/local/bin/kube-proxy"
  tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner -C "$app" -cf "$work/app-$arch.tar" usr
  tag=$version-$arch
  umoci new --image "$oci:$tag"
  umoci raw add-layer --image "$oci:$tag" --history.created "$created" --history.created_by "mmdebstrap bookworm minbase + iptables kmod conntrack" "$base"
  umoci raw add-layer --image "$oci:$tag" --history.created "$created" --history.created_by "kproxy $version" "$work/app-$arch.tar"
  umoci config --image "$oci:$tag" --no-history --created "$created" --architecture "$arch" --os linux \
    --config.entrypoint /usr/local/bin/kproxy \
    --config.label "org.opencontainers.image.title=kproxy" \
    --config.label "org.opencontainers.image.version=$version" \
    --config.label "org.opencontainers.image.revision=$(git rev-parse HEAD 2> /dev/null || echo unknown)" \
    --config.label "org.opencontainers.image.source=https://github.com/kproxy-dev/kproxy"
  echo "image: $oci:$tag" >&2
done

# The image index: tag VERSION lists every architecture's manifest.
index=$(jq -c --arg v "$version" '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
  manifests: [.manifests[] | select(.annotations["org.opencontainers.image.ref.name"] | startswith($v + "-"))
    | {mediaType, digest, size, platform: {architecture: (.annotations["org.opencontainers.image.ref.name"] | ltrimstr($v + "-")), os: "linux"}}]}' "$oci/index.json")
digest=$(printf '%s' "$index" | sha256sum | cut -d' ' -f1)
printf '%s' "$index" > "$oci/blobs/sha256/$digest"
jq --arg v "$version" --arg d "sha256:$digest" --argjson s "$(printf '%s' "$index" | wc -c)" \
  '.manifests += [{mediaType: "application/vnd.oci.image.index.v1+json", digest: $d, size: $s,
    annotations: {"org.opencontainers.image.ref.name": $v}}]' "$oci/index.json" > "$work/index.json"
mv "$work/index.json" "$oci/index.json"
archive=$out/kproxy-$version.oci.tar
tar --sort=name --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --numeric-owner -C "$oci" -cf "$archive" .
echo "image: kproxy $version ($archs) in $archive; OCI layout $oci, tags $version and $version-ARCH"
