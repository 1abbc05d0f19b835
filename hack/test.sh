#!/usr/bin/env bash
# Runs every test tier: static checks, unit tests (goldens, packet tracer, rule counts) and,
# as root:
#   - the privileged tests that apply rules with the real iptables-restore in throwaway
#     network namespaces and send real traffic, and the benchmark smoke;
#   - the e2e tests against a real kube-apiserver, then the swap from kubeadm's kube-proxy to
#     kproxy and back on real kubelets under traffic (hack/e2e.sh, hack/realnode.sh; the first
#     run builds the control plane, upstream kube-proxy and the node binaries, about 30
#     minutes on 2 cores, cached after);
#   - the daemon benchmark's smoke run (hack/bench-daemon.sh -smoke);
#   - the OCI image (hack/image.sh builds it from Debian's packages, hack/image-test.sh checks
#     it) and a bounded differential run against upstream kube-proxy (hack/diff.sh).
# Not root: privileged, e2e, differential and image tests skip with a message.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

hack/install-deps.sh
hack/verify.sh

if [ "$(id -u)" -ne 0 ]; then
  echo "test: not root; privileged tests (real iptables and traffic in network namespaces) will skip" >&2
fi
# -p 1: privileged packages create namespaces and run iptables binaries; on 2 cores running
# them one package at a time keeps the suite predictable.
go test -count=1 -p 1 "$@" ./...

if [ "$(id -u)" -eq 0 ]; then
  hack/e2e.sh
  # The daemon benchmark's smoke run (kproxy and upstream, 200 x 5, both backends, seconds
  # of churn), so that the tier cannot rot; make bench-daemon measures for real.
  hack/bench-daemon.sh -smoke -out _output/bench-daemon-smoke
  hack/plot-daemon.sh _output/bench-daemon-smoke/plot.png _output/bench-daemon-smoke/report.json
  # The image operators run, built without a Docker engine, and checked as a runtime sees it.
  hack/image.sh
  hack/image-test.sh
  # A bounded differential run against upstream kube-proxy; make diff runs 200 sequences.
  KPROXY_DIFF_SEQUENCES=${KPROXY_DIFF_SEQUENCES:-6} hack/diff.sh
else
  echo "test: not root; skipping the e2e and differential tests (hack/e2e.sh, hack/diff.sh)" >&2
fi
