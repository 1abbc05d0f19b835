#!/usr/bin/env bash
# Checks the image hack/image.sh built, as a container runtime would see it: the OCI layout
# resolves (skopeo), and in its unpacked root file system, run in a network namespace of
# its own (the host's rules are never read or touched): kube-proxy's DaemonSet command
# (/usr/local/bin/kube-proxy) is kproxy with the stamped version, both iptables backends,
# modprobe and conntrack work, and `iptables-save` shows the backend holding the rules
# (a legacy rule staged there) rather than Debian's default. Needs root.
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

# A legacy node: the wrapper must switch `iptables` to legacy on first use.
ip netns exec "$ns" iptables-legacy -t nat -N KUBE-SERVICES
ip netns exec "$ns" iptables-legacy -t nat -A KUBE-SERVICES -d 10.96.0.1/32 -p tcp --dport 443 -j RETURN
saved=$(in_image iptables-save -t nat)
grep -q -- '-A KUBE-SERVICES -d 10.96.0.1/32' <<< "$saved" || fail "iptables-save in the image does not show the legacy rules:\n$saved"
[ "$(in_image readlink /etc/alternatives/iptables)" = /usr/sbin/iptables-legacy ] || fail "iptables alternative not switched to legacy"
[ "$(in_image readlink /etc/alternatives/ip6tables)" = /usr/sbin/ip6tables-legacy ] || fail "ip6tables alternative not switched to legacy"
echo "image-test: ok ($version-$arch: kube-proxy -> kproxy, both backends, kmod, conntrack, iptables follows the node's backend)"
