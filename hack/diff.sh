#!/usr/bin/env bash
# make diff: the differential test (test/diff). kproxy and upstream kube-proxy v1.37.2
# (built from Go modules by hack/build-tools.sh) run side by side against one real
# kube-apiserver, on the same API objects, and their iptables rules must be equal after
# every step of seeded sequences of changes, with drift injected into kproxy's rules.
# Needs root.
#
# Environment (defaults are the full run; make test runs a small one):
#   KPROXY_DIFF_SEQUENCES=200  seeded sequences per backend (seeds SEED..SEED+N-1)
#   KPROXY_DIFF_STEPS=6        steps per sequence
#   KPROXY_DIFF_SEED=1         first seed; a failure prints the seed and step to rerun
#   KPROXY_DIFF_BACKENDS=legacy,nft
#   KPROXY_DIFF_CLUSTER=kpxdiff  the test cluster's name (two runs at once need two)
# Arguments go to go test.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
hack/prepare-e2e.sh diff

export KPROXY_DIFF_CLUSTER=${KPROXY_DIFF_CLUSTER:-kpxdiff}
cleanup() {
  if [ -d "${TMPDIR:-/tmp}/kproxy-cluster/$KPROXY_DIFF_CLUSTER" ]; then
    CLUSTER_NAME=$KPROXY_DIFF_CLUSTER hack/cluster-down.sh || true
  fi
}
trap cleanup EXIT
export KPROXY_E2E=1
export KPROXY_DIFF_SEQUENCES=${KPROXY_DIFF_SEQUENCES:-200}
export KPROXY_DIFF_STEPS=${KPROXY_DIFF_STEPS:-6}
export KPROXY_DIFF_SEED=${KPROXY_DIFF_SEED:-1}
export KPROXY_DIFF_BACKENDS=${KPROXY_DIFF_BACKENDS:-legacy,nft}
echo "diff: $KPROXY_DIFF_SEQUENCES sequences x $KPROXY_DIFF_STEPS steps from seed $KPROXY_DIFF_SEED on $KPROXY_DIFF_BACKENDS, and the corpus"
go test -count=1 -timeout 600m -v -run TestDifferential "$@" ./test/diff/
