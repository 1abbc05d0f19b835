#!/usr/bin/env bash
# What every cluster test needs first (hack/e2e.sh, hack/diff.sh): root, the system
# packages, and the binaries: kproxy, the e2e helpers, and the control plane and upstream
# kube-proxy (hack/build-tools.sh: about 25 minutes the first time, cached after), and
# Prometheus for the monitoring test (hack/build-prometheus.sh, about 5 minutes, cached).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
[ "$(id -u)" -eq 0 ] || { echo "$1: needs root (the clusters live in network namespaces)" >&2; exit 1; }

hack/install-deps.sh
hack/install-e2e-deps.sh
hack/build.sh
hack/build-e2e.sh
hack/build-tools.sh
hack/build-prometheus.sh
