#!/usr/bin/env bash
# The whole test suite on a fresh machine: Node 24, Debian packages, npm deps, then typecheck, lint and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ensure-node.sh
source scripts/ensure-test-deps.sh
npm ci --no-audit --no-fund
npm run typecheck
npm run lint
npm run format:check
mkdir -p .tmp
status=0
npm test -- --reporter=default --reporter=json --outputFile=.tmp/vitest-report.json || status=$?
# One plain closing line, whatever runner printed above it.
node -e '
  const r = JSON.parse(require("fs").readFileSync(".tmp/vitest-report.json", "utf8"));
  console.log(`${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + r.numTodoTests} skipped`);
' || true
exit "$status"
