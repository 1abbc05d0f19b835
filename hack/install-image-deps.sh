#!/usr/bin/env bash
# Installs what hack/image.sh and hack/image-test.sh need: mmdebstrap (the Debian root file
# system), umoci (the OCI image), skopeo (reading it back as a runtime would) and jq. Does
# nothing when they are present; needs root and apt.
set -euo pipefail
needed=()
for cmd in mmdebstrap umoci skopeo jq; do
  command -v "$cmd" > /dev/null 2>&1 || needed+=("$cmd")
done
if [ ${#needed[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get > /dev/null 2>&1; then
  echo "install-image-deps: missing ${needed[*]}; install them" >&2
  exit 1
fi
echo "install-image-deps: installing ${needed[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${needed[@]}" > /dev/null
