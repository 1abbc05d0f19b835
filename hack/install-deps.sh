#!/usr/bin/env bash
# Installs the system packages the privileged tests need (iptables with both the legacy and
# nft backends, iproute2, conntrack). Does nothing when they are present; needs root and apt.
set -euo pipefail

needed=()
for bin in iptables-legacy-restore iptables-nft-restore ip6tables-nft-restore ip; do
  command -v "$bin" >/dev/null 2>&1 || needed+=("$bin")
done
command -v conntrack >/dev/null 2>&1 || needed+=(conntrack)
if [ ${#needed[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: missing ${needed[*]}; install iptables, iproute2 and conntrack (privileged tests will skip)" >&2
  exit 0
fi
echo "install-deps: installing iptables iproute2 conntrack (missing: ${needed[*]})"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq iptables iproute2 conntrack >/dev/null
