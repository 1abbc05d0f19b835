#!/usr/bin/env bash
# Installs, beyond hack/install-deps.sh, what the e2e cluster needs: openssl (the service
# account key pair, tokens) and curl (health checks inside the namespaces). Does nothing
# when they are present; needs root and apt.
set -euo pipefail
needed=()
command -v openssl > /dev/null 2>&1 || needed+=(openssl)
command -v curl > /dev/null 2>&1 || needed+=(curl)
if [ ${#needed[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null 2>&1; then
  echo "install-e2e-deps: missing ${needed[*]}; install them (e2e tests will skip)" >&2
  exit 0
fi
echo "install-e2e-deps: installing ${needed[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${needed[@]}" > /dev/null
