#!/usr/bin/env bash
# `npm run bench [-- options]`: Node 24, the bench's Debian packages (docker-registry, nginx-light, wrk), then the
# benchmark itself. Prints a Markdown table; see bench/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-node.sh
source bench/ensure-bench-deps.sh
exec node bench/run.ts "$@"
