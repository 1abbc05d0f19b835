#!/usr/bin/env bash
# Builds bin/kproxy (static, no cgo, version stamped by hack/version-ldflags.sh), as the
# container image does.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
CGO_ENABLED=0 go build -trimpath -ldflags "$(hack/version-ldflags.sh)" -o bin/kproxy ./cmd/kproxy
echo "built bin/kproxy"
