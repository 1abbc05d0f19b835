#!/usr/bin/env bash
# Static checks: formatting, go vet, tidy modules, the house rule that product code never
# imports k8s.io/kubernetes, and deploy/monitoring's alerts and dashboard (promtool).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "verify: gofmt would change:" >&2
  echo "$unformatted" >&2
  exit 1
fi
if grep -rn --include='*.go' '"k8s.io/kubernetes/' --exclude-dir=hack . ; then
  echo "verify: product code must not import k8s.io/kubernetes" >&2
  exit 1
fi
go vet ./...
cp go.mod /tmp/kproxy-go.mod.bak; cp go.sum /tmp/kproxy-go.sum.bak
go mod tidy
if ! cmp -s go.mod /tmp/kproxy-go.mod.bak || ! cmp -s go.sum /tmp/kproxy-go.sum.bak; then
  cp /tmp/kproxy-go.mod.bak go.mod; cp /tmp/kproxy-go.sum.bak go.sum
  echo "verify: go.mod/go.sum are not tidy; run go mod tidy" >&2
  exit 1
fi
hack/check-monitoring.sh
echo "verify: ok"
