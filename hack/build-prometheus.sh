#!/usr/bin/env bash
# Builds upstream Prometheus into _output/tools/bin for the e2e test that scrapes every node's
# kproxy with deploy/monitoring/prometheus-scrape-config.yaml (test/e2e/monitoring_test.go).
# Debian's prometheus package cannot serve: it is built without Kubernetes service discovery
# and refuses kubernetes_sd_configs. Test tooling only, from the Go module proxy; only the
# Kubernetes discovery is compiled in. Cached like hack/build-tools.sh, under its own key, so
# that neither build invalidates the other (a cold build takes about 5 minutes on 2 cores).
#
# Environment: TOOLS_BIN (output folder), NICE (default 10), FORCE=1 to rebuild.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

# Prometheus 3.16.0; its Go module is versioned v0.316.0.
version=3.16.0
module_version=v0.316.0
bin=${TOOLS_BIN:-$(pwd)/_output/tools/bin}
key=$(cat hack/build-prometheus.sh <(go env GOVERSION GOOS GOARCH) | sha256sum | cut -d' ' -f1)
if [ "${FORCE:-0}" != 1 ] && [ -x "$bin/prometheus" ] && [ "$(cat "$bin/.prometheus-key" 2>/dev/null)" = "$key" ]; then
  echo "build-prometheus: up to date in $bin (key ${key:0:12})"
  exit 0
fi
mkdir -p "$bin"
tmp=$(mktemp -d "$bin/.build-prometheus.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
start=$(date +%s)
echo "build-prometheus: building Prometheus $version"
# go install pkg@version builds in module mode outside this repository's go.mod.
CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOBIN=$tmp nice -n "${NICE:-10}" go install -trimpath \
  -tags remove_all_sd,enable_kubernetes_sd \
  -ldflags="-s -X github.com/prometheus/common/version.Version=$version" \
  "github.com/prometheus/prometheus/cmd/prometheus@$module_version"
mv -f "$tmp/prometheus" "$bin/prometheus"
echo "$key" > "$bin/.prometheus-key"
echo "build-prometheus: built Prometheus $version in $bin in $(($(date +%s) - start))s"
