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
rm -f .tmp/vitest-report*.json
status=0
# The integration and conformance suites run their services (Redis, the upstream registries, the S3 server) as
# containers (test/harness/services.ts): images built once per machine from Debian packages with debootstrap,
# cached by the hash of their recipe (REGISTRY_MIRROR_TEST_CACHE, default /var/cache/registry-mirror-test), on a
# private dockerd the run starts and stops. TEST_SERVICES=host runs them as host processes instead, in one run
# with the rest. Containers first: its global setup builds the images, which harness-selftest then only imports.
services="${TEST_SERVICES:-containers}"
if [ "$services" = containers ]; then
  TEST_SERVICES=containers npm test -- test/integration test/conformance \
    --reporter=default --reporter=json --outputFile=.tmp/vitest-report-containers.json || status=$?
  TEST_SERVICES=host npm test -- --exclude 'test/integration/**' --exclude 'test/conformance/**' \
    --reporter=default --reporter=json --outputFile=.tmp/vitest-report.json || status=$?
else
  TEST_SERVICES="$services" npm test -- --reporter=default --reporter=json --outputFile=.tmp/vitest-report.json ||
    status=$?
fi
# One plain closing line, whatever runner printed above it.
node -e '
  const fs = require("fs");
  let passed = 0, failed = 0, skipped = 0;
  for (const f of fs.readdirSync(".tmp").filter((f) => /^vitest-report.*\.json$/.test(f))) {
    const r = JSON.parse(fs.readFileSync(`.tmp/${f}`, "utf8"));
    passed += r.numPassedTests; failed += r.numFailedTests; skipped += r.numPendingTests + r.numTodoTests;
  }
  console.log(`${passed} passed, ${failed} failed, ${skipped} skipped`);
' || true
exit "$status"
