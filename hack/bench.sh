#!/usr/bin/env bash
# Benchmarks of the pure parts (rendering), with allocations. Timing goals live here,
# never in tests. Usage: hack/bench.sh [-count N]
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
go test -run '^$' -bench . -benchmem "${@:--count=5}" ./pkg/rules/
