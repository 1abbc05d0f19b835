#!/usr/bin/env bash
# The daemon tier of the benchmarks (issue 11): the real kproxy binary and upstream
# kube-proxy v1.37.2, one after the other, on a node of an e2e cluster holding N services
# x E endpoints (hack/bench/daemon). Per backend: start to rules visible, full sync against
# the bare restore of the ruleset left, peak and steady RSS, CPU, partial syncs against
# the one-rule floor, and network programming latency under churn. One markdown table per
# backend on stdout and in OUT/report.md, every sample in OUT/report.json, the daemons'
# logs in OUT/<size>/ (OUT: -out, default _output/bench-daemon). Needs root.
# hack/plot-daemon.sh OUT.png OUT/report.json... plots the N x 5 sizes of one or more runs.
#
# Usage: hack/bench-daemon.sh [-smoke] [hack/bench/daemon flags; -h lists them]
#   -smoke                       CI smoke: 200x5, one partial sync of each kind, 5 s of
#                                churn at 10/s; about 2 minutes on 2 cores
#   -sizes 1000x5,10000x5        (default; 25000x5 and 100x1000 work too)
#   -churn-rate 20 -churn-duration 2m -timeout 5m -reps 3 -backends legacy,nft
#   KPROXY_BENCH_CLUSTER         the cluster's CLUSTER_NAME (default kpxbench)
# The default run (1k and 10k x 5, both backends) takes about 40 minutes on 2 cores. It
# starts and tears down its own cluster for each size; run one at a time (CI and people
# share the machine: wrap it in flock /tmp/kproxy-e2e.lock).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-daemon: not root; skipping the daemon benchmark, which starts a cluster in network namespaces" >&2
  exit 0
fi
# What the builds say goes to stderr: stdout is the report.
{
  hack/install-deps.sh
  hack/install-e2e-deps.sh
  hack/build.sh
  hack/build-e2e.sh
  hack/build-tools.sh
} >&2

cluster=${KPROXY_BENCH_CLUSTER:-kpxbench}
tmp=$(mktemp -d)
# A benchmark killed in the middle leaves its cluster: tear it down.
cleanup() {
  rm -rf "$tmp"
  if [ -d "${TMPDIR:-/tmp}/kproxy-cluster/$cluster" ]; then
    CLUSTER_NAME=$cluster hack/cluster-down.sh || true
  fi
}
trap cleanup EXIT
# -buildvcs=auto: the report names the commit it measured (the environment may disable it).
go build -buildvcs=auto -o "$tmp/kbench-daemon" ./hack/bench/daemon
echo "== daemon benchmark (hack/bench/daemon), cluster $cluster" >&2
"$tmp/kbench-daemon" -cluster "$cluster" "$@"
