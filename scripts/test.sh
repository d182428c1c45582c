#!/usr/bin/env bash
# The whole test suite on a fresh machine: Node 24, Debian packages, npm deps, then typecheck, lint and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-node.sh
source scripts/ensure-test-deps.sh
npm ci --no-audit --no-fund
npm run typecheck
npm run lint
npm test
