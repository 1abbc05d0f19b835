#!/usr/bin/env bash
# Renders the shipped examples: the iptables-restore payload node-1 would get.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"
go run ./cmd/kproxy render -f examples/ --node-name node-1 --cluster-cidr 10.244.0.0/16 "$@"
