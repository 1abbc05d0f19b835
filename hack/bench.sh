#!/usr/bin/env bash
# Benchmarks (issue 4); timing goals live here, never in tests.
#  1. go test -bench of the pure parts (pkg/rules rendering), with allocations.
#  2. As root, hack/bench: kproxy's syncs against the real iptables binaries, legacy and
#     nft backends, each in fresh network namespaces: render, full sync vs. a bare
#     iptables-restore of the same payload, partial syncs, RSS. One markdown table on
#     stdout (progress on stderr); the host's own rules are never touched.
#
# Usage: hack/bench.sh [-smoke] [hack/bench flags]
#        hack/bench.sh -daemon [-smoke] [hack/bench/daemon flags]
#   -daemon                the daemon tier instead: the real kproxy and upstream kube-proxy
#                          on an e2e cluster node (hack/bench-daemon.sh; make bench-daemon)
#   -smoke                 CI smoke: 1,000 services x 5 endpoints, one run, both backends,
#                          short timeouts (about 10 s of measurement)
#   -sizes 1000x5,10kx5    cluster shapes (default 1000x5,5000x5,10000x5,100x1000)
#   -backends legacy,nft   -runs 3   -timeout 120s   -json FILE (every sample)
#   GOBENCH_COUNT          -count of go test -bench (default 5; 1 with -smoke)
# The full default run takes 30-60 minutes on 2 cores: the nft backend is slow at scale.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if [ "${1:-}" = -daemon ] || [ "${1:-}" = --daemon ]; then
  shift
  exec hack/bench-daemon.sh "$@"
fi

smoke=false
for arg in "$@"; do
  if [ "$arg" = -smoke ] || [ "$arg" = --smoke ]; then smoke=true; fi
done
gobench=(-count="${GOBENCH_COUNT:-5}")
if $smoke; then gobench=(-count="${GOBENCH_COUNT:-1}" -benchtime=1x); fi

echo "== go test -bench ./pkg/rules (rendering, with allocations)"
go test -run '^$' -bench . -benchmem "${gobench[@]}" ./pkg/rules/

if [ "$(id -u)" -ne 0 ]; then
  echo "bench: not root; skipping the sync benchmark, which needs network namespaces" >&2
  exit 0
fi
hack/install-deps.sh
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# -buildvcs=auto: the table names the commit it measured (the environment may disable it).
go build -buildvcs=auto -o "$tmp/kbench" ./hack/bench
echo
echo "== sync benchmark (hack/bench)"
"$tmp/kbench" "$@"
