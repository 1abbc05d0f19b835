#!/usr/bin/env bash
# Prints the -ldflags that stamp kproxy's version into k8s.io/component-base/version, where
# --version, the start-up log and kubernetes_build_info read it (the names upstream's
# release build sets). The version is the checkout's (git describe: a v* tag, or
# v0.0.0-<commit>, "-dirty" with uncommitted changes); without git it stays
# component-base's default.
# KPROXY_VERSION overrides it (the Dockerfile passes it as a build argument).
# With --version it prints only the version (hack/image.sh tags the image with it).
set -euo pipefail
cd "$(dirname "$0")/.."
pkg=k8s.io/component-base/version
version=${KPROXY_VERSION:-}
commit=
state=
if git rev-parse --git-dir > /dev/null 2>&1; then
  version=${version:-$(git describe --tags --always --dirty --match 'v*')}
  # Untagged: a semantic version all the same, as tools that parse it expect.
  case "$version" in v*) ;; *) version=v0.0.0-$version ;; esac
  commit=$(git rev-parse HEAD)
  state=clean
  [ -z "$(git status --porcelain)" ] || state=dirty
fi
if [ "${1:-}" = --version ]; then
  echo "${version:-v0.0.0-unknown}"
  exit 0
fi
flags="-X $pkg.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
[ -z "$version" ] || flags+=" -X $pkg.gitVersion=$version"
[ -z "$commit" ] || flags+=" -X $pkg.gitCommit=$commit -X $pkg.gitTreeState=$state"
echo "$flags"
