#!/usr/bin/env bash
# Runs the mirror with embedded defaults (./data cache, in-process metadata, Docker Hub, port 5000).
# Extra arguments go to the mirror, e.g. `bash scripts/start.sh --config mirror.yaml`.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-node.sh
[ -d node_modules ] || npm ci --omit=dev --no-audit --no-fund
exec node src/main.ts "$@"
