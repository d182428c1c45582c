import { defineConfig } from "vitest/config";

// Integration and end-to-end tests start real services (registries, dockerd) on loopback; on a 2-core
// machine running those files one at a time keeps them from starving each other.
export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // TEST_SERVICES=containers: the Docker engine and service images for the run (host mode: nothing).
    globalSetup: ["test/global-setup.ts"],
    fileParallelism: false,
    testTimeout: 60_000,
    hookTimeout: 180_000,
    reporters: ["default"],
  },
});
