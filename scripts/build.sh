#!/usr/bin/env bash
# Builds the static sluice binary. The Dockerfile and .ci/run both call this,
# so a broken build step fails CI even where no Docker engine runs.
set -euo pipefail
out=${1:-bin/sluice}
CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o "$out" ./cmd/sluice
