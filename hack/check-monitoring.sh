#!/usr/bin/env bash
# Checks deploy/monitoring with promtool: the PrometheusRule's spec, written out as a plain rule
# file, must pass `promtool check rules` and the alert unit tests in
# deploy/monitoring/tests/alerts-test.yaml, and every query of the Grafana dashboard must parse
# (that each metric they name is one kproxy exports is pkg/metrics' TestMonitoringMetricsExist).
# promtool comes with Debian's prometheus package (hack/install-deps.sh installs it). Without
# promtool this skips with a message, except in CI (CI set), where it fails: CI must not pass
# without having run the alert tests.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if ! command -v promtool >/dev/null 2>&1; then
  if [ -n "${CI:-}" ]; then
    echo "check-monitoring: promtool not found (Debian package prometheus; hack/install-deps.sh installs it as root)" >&2
    exit 1
  fi
  echo "check-monitoring: promtool not found; skipping the alert checks (apt-get install --no-install-recommends prometheus)" >&2
  exit 0
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
go build -o "$tmp/monitoring" ./hack/monitoring
# promtool resolves the tests' rule_files relative to the test file, so both go side by side.
"$tmp/monitoring" rules deploy/monitoring/prometheusrule.yaml "$tmp/kproxy-rules.yaml"
"$tmp/monitoring" dashboard deploy/monitoring/dashboard.json "$tmp/dashboard-rules.yaml"
cp deploy/monitoring/tests/alerts-test.yaml "$tmp/"
promtool check rules "$tmp/kproxy-rules.yaml" "$tmp/dashboard-rules.yaml"
promtool test rules "$tmp/alerts-test.yaml"
echo "check-monitoring: ok"
