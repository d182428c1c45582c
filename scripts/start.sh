#!/usr/bin/env bash
# Runs the mirror with embedded defaults (./data cache, in-process metadata, Docker Hub, port 5000).
# Extra arguments go to the mirror, e.g. `bash scripts/start.sh --config mirror.yaml`.
# It runs in the directory it is started from: relative paths (--config, --output, the default ./data) are the
# caller's. Node finds the checkout's node_modules from src/main.ts itself.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/ensure-node.sh"
[ -d "$root/node_modules" ] || (cd "$root" && npm ci --omit=dev --no-audit --no-fund >&2)
# Node and V8 flags: scripts/node-flags, the one place the image's entrypoint and the bench read them from too.
flags=()
while read -r line; do
  line="${line%%#*}"
  line="${line//[[:space:]]/}"
  if [ -n "$line" ]; then flags+=("$line"); fi
done <"$root/scripts/node-flags"
# Node's compile cache keeps the type-stripped sources (and V8's code cache) on disk, keyed by content: from the
# second start on, Node's TypeScript stripper (a WebAssembly module, ~25 MiB resident for as long as the process
# runs) is not loaded at all. A start after a source change strips the changed files again.
export NODE_COMPILE_CACHE="${NODE_COMPILE_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/registry-mirror/node-compile-cache}"
exec node "${flags[@]}" "$root/src/main.ts" "$@"
