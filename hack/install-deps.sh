#!/usr/bin/env bash
# Installs the system packages the tests need: iptables with both the legacy and nft backends,
# iproute2 and conntrack for the privileged tests, and promtool (Debian's prometheus package) for
# hack/check-monitoring.sh. Does nothing when they are present; needs root and apt.
set -euo pipefail

needed=()
for bin in iptables-legacy-restore iptables-nft-restore ip6tables-nft-restore ip; do
  command -v "$bin" >/dev/null 2>&1 || needed+=("$bin")
done
command -v conntrack >/dev/null 2>&1 || needed+=(conntrack)
network=${#needed[@]}
command -v promtool >/dev/null 2>&1 || needed+=(promtool)
if [ ${#needed[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: missing ${needed[*]}; install iptables, iproute2, conntrack and prometheus (privileged tests and the alert tests will skip)" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
if [ "$network" -gt 0 ]; then
  echo "install-deps: installing iptables iproute2 conntrack (missing: ${needed[*]})"
  apt-get install -y -qq iptables iproute2 conntrack >/dev/null
fi
if ! command -v promtool >/dev/null 2>&1; then
  # Only promtool is used. Without recommends the package leaves out node-exporter; on a host
  # run by systemd it also enables a Prometheus server, which nothing here needs.
  echo "install-deps: installing prometheus (for promtool)"
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
