#!/usr/bin/env bash
# Runs the mirror with embedded defaults (./data cache, in-process metadata, Docker Hub, port 5000).
# Extra arguments go to the mirror, e.g. `bash scripts/start.sh --config mirror.yaml`.
# It runs in the directory it is started from: relative paths (--config, --output, the default ./data) are the
# caller's. Node finds the checkout's node_modules from src/main.ts itself.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/ensure-node.sh"
[ -d "$root/node_modules" ] || (cd "$root" && npm ci --omit=dev --no-audit --no-fund >&2)
exec node "$root/src/main.ts" "$@"
