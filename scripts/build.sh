#!/usr/bin/env bash
# Builds the static sluice binary. The Dockerfile and .ci/run both call this,
# so a broken build step fails CI even where no Docker engine runs.
#
#   scripts/build.sh [output path, default bin/sluice]
#
# `sluice version` prints the version and commit stamped here: the version is
# $SLUICE_VERSION, else `git describe --tags --always --dirty`, else "dev";
# the commit is `git rev-parse HEAD` when git can read the checkout (the Go
# toolchain also stamps it when it can, and that wins).
set -euo pipefail
out=${1:-bin/sluice}
version=${SLUICE_VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo dev)}
commit=$(git rev-parse HEAD 2>/dev/null || true)
CGO_ENABLED=0 go build -trimpath \
  -ldflags="-s -w -X main.version=${version} -X main.commit=${commit}" \
  -o "$out" ./cmd/sluice
