#!/usr/bin/env bash
# make e2e: builds kproxy, the e2e helpers, the control plane and upstream kube-proxy
# (hack/prepare-e2e.sh; about 25 minutes the first time, cached after), then runs test/e2e
# against real kube-apiserver, etcd and kube-controller-manager in network namespaces, then
# the swap from kubeadm's kube-proxy to kproxy and back on real kubelets under traffic
# (hack/realnode.sh). Needs root.
# Arguments go to go test (e.g. hack/e2e.sh -run Smoke) and skip the real-node run, as does
# REALNODE=0.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
hack/prepare-e2e.sh e2e

# A go test killed by its timeout runs no cleanup: tear down what it may have left.
cleanup() {
  for name in kpxe2e kpxe2e-own; do
    if [ -d "${TMPDIR:-/tmp}/kproxy-cluster/$name" ]; then
      CLUSTER_NAME=$name hack/cluster-down.sh || true
    fi
  done
}
trap cleanup EXIT
export KPROXY_E2E=1 # the tests skip without it, so that go test ./... leaves them out
# -p 1: one package at a time; the tests of a package share one cluster.
go test -count=1 -p 1 -timeout 60m -v "$@" ./test/e2e/...
if [ $# -eq 0 ] && [ "${REALNODE:-1}" = 1 ]; then
  hack/realnode.sh
fi
