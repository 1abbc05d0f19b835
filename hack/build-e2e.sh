#!/usr/bin/env bash
# Builds the e2e cluster's helpers into _output/e2e/bin: kpx-echo (the pods' echo server
# and a client for it) and kpx-cluster (the API side of hack/cluster-up.sh and the demo).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
mkdir -p _output/e2e/bin
CGO_ENABLED=0 go build -trimpath -o _output/e2e/bin/ ./test/e2e/cmd/kpx-echo ./test/e2e/cmd/kpx-cluster
echo "built _output/e2e/bin/kpx-echo and kpx-cluster"
