#!/usr/bin/env bash
# Builds bin/kproxy (static, no cgo), as the container image does.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
CGO_ENABLED=0 go build -trimpath -o bin/kproxy ./cmd/kproxy
echo "built bin/kproxy"
