#!/usr/bin/env bash
# Checks the image hack/image.sh built, as a container runtime would see it: the OCI layout
# resolves (skopeo), and in its unpacked root file system, run in a network namespace of
# its own (the host's rules are never read or touched): kube-proxy's DaemonSet command
# (/usr/local/bin/kube-proxy) is kproxy with the stamped version, both iptables backends,
# modprobe and conntrack work, and `iptables` follows the node's backend as upstream's
# iptables-wrapper decides: kubelet's hint chain in nft, else in legacy, else the backend
# holding the rules (a legacy rule staged there, which `iptables-save` then shows). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$(pwd)/_output/image}
version=$(hack/version-ldflags.sh --version)
arch=$(go env GOARCH 2> /dev/null || echo amd64)
oci=$out/kproxy.oci
fail() { echo "image-test: $*" >&2; exit 1; }

[ "$(skopeo inspect --format '{{.Labels}}' "oci:$oci:$version" 2>&1)" = "$(skopeo inspect --format '{{.Labels}}' "oci:$oci:$version-$arch")" ] ||
  fail "tag $version (the index) does not resolve to $version-$arch"
label=$(skopeo inspect --format '{{index .Labels "org.opencontainers.image.version"}}' "oci:$oci:$version")
[ "$label" = "$version" ] || fail "version label $label, want $version"

work=$(mktemp -d)
ns=kpximg-$$
cleanup() {
  umount "$work/bundle/rootfs/proc" 2> /dev/null || true
  ip netns del "$ns" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
umoci unpack --image "$oci:$version-$arch" "$work/bundle" > /dev/null
root=$work/bundle/rootfs
ip netns add "$ns"
mount -t proc proc "$root/proc"
in_image() { ip netns exec "$ns" chroot "$root" "$@"; }

[ "$(readlink "$root/usr/local/bin/kube-proxy")" = kproxy ] || fail "/usr/local/bin/kube-proxy is not a link to kproxy"
got=$(in_image /usr/local/bin/kube-proxy --version)
case "$got" in *"$version"*) ;; *) fail "kube-proxy --version says '$got', want $version" ;; esac
for cmd in "iptables-legacy --version" "iptables-nft --version" "ip6tables-legacy --version" "ip6tables-nft --version" \
  "iptables-legacy-restore --version" "iptables-nft-restore --version" "modprobe --version" "conntrack --version"; do
  # shellcheck disable=SC2086 # each is a command and its arguments
  in_image $cmd > /dev/null 2>&1 || fail "$cmd fails in the image"
done
in_image /usr/local/bin/kube-proxy --help > /dev/null || fail "kube-proxy --help fails"

# The wrapper's choice on first use, in upstream's order; between the cases the
# alternatives go back to the wrapper (the highest priority) and the staged chains go.
reset() {
  in_image update-alternatives --quiet --auto iptables
  in_image update-alternatives --quiet --auto ip6tables
  ip netns exec "$ns" iptables-legacy -t mangle -F; ip netns exec "$ns" iptables-legacy -t mangle -X
  ip netns exec "$ns" iptables-legacy -t nat -F; ip netns exec "$ns" iptables-legacy -t nat -X
  ip netns exec "$ns" iptables-nft -t mangle -F 2> /dev/null || true
  ip netns exec "$ns" iptables-nft -t mangle -X 2> /dev/null || true
}
picks() { # BACKEND CASE: iptables-save in the image switched both families to BACKEND
  in_image iptables-save > /dev/null
  [ "$(in_image readlink /etc/alternatives/iptables)" = "/usr/sbin/iptables-$1" ] || fail "$2: iptables alternative not switched to $1"
  [ "$(in_image readlink /etc/alternatives/ip6tables)" = "/usr/sbin/ip6tables-$1" ] || fail "$2: ip6tables alternative not switched to $1"
}
# A legacy host's kubelet made its hint chain there; no rules yet (a fresh node).
ip netns exec "$ns" iptables-legacy -t mangle -N KUBE-IPTABLES-HINT
picks legacy "legacy hint chain, no rules"
# Hint chains in both: nft's wins, as upstream's wrapper decides.
reset
ip netns exec "$ns" iptables-legacy -t mangle -N KUBE-IPTABLES-HINT
ip netns exec "$ns" iptables-nft -t mangle -N KUBE-KUBELET-CANARY
picks nft "hint chains in both backends"
# No hint: the backend holding the rules, and iptables-save shows them.
reset
ip netns exec "$ns" iptables-legacy -t nat -N KUBE-SERVICES
ip netns exec "$ns" iptables-legacy -t nat -A KUBE-SERVICES -d 10.96.0.1/32 -p tcp --dport 443 -j RETURN
saved=$(in_image iptables-save -t nat)
grep -q -- '-A KUBE-SERVICES -d 10.96.0.1/32' <<< "$saved" || fail "iptables-save in the image does not show the legacy rules:\n$saved"
picks legacy "legacy rules, no hint"
# Nothing anywhere (a node before kubelet's first start): nft, as Debian's default.
reset
picks nft "no hint, no rules"
# Every other architecture in the index: its binaries run (under qemu-user, when binfmt_misc
# has it; iptables-nft needs netfilter netlink, which qemu-user does not emulate, and
# conntrack crashes under qemu-user 7.2).
for other in $(skopeo inspect --raw "oci:$oci:$version" | jq -r '.manifests[].platform.architecture'); do
  [ "$other" = "$arch" ] && continue
  qemu=$(case $other in arm64) echo aarch64 ;; *) echo "$other" ;; esac)
  if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$qemu" ]; then
    echo "image-test: $version-$other not run: no qemu-$qemu in binfmt_misc (apt-get install qemu-user-static binfmt-support)" >&2
    continue
  fi
  umoci unpack --image "$oci:$version-$other" "$work/$other" > /dev/null
  got=$(chroot "$work/$other/rootfs" /usr/local/bin/kube-proxy --version)
  case "$got" in *"$version"*) ;; *) fail "$other: kube-proxy --version says '$got', want $version" ;; esac
  for cmd in "iptables-legacy --version" "ip6tables-legacy --version" "modprobe --version"; do
    # shellcheck disable=SC2086 # each is a command and its arguments
    chroot "$work/$other/rootfs" $cmd > /dev/null 2>&1 || fail "$other: $cmd fails in the image"
  done
  echo "image-test: $version-$other runs under qemu-$qemu (kube-proxy -> kproxy, iptables-legacy, kmod)"
done
echo "image-test: ok ($version-$arch: kube-proxy -> kproxy, both backends, kmod, conntrack, iptables follows the node's backend)"
