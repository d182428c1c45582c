/**
 * Starts the mirror in this test process on a free loopback port, from the same config schema and composition
 * root `npm start` uses. Several can run at once: nothing in the mirror is a module-level singleton.
 */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import { createMirror, type Mirror } from "../../src/app.ts";
import { parseConfig } from "../../src/config/load.ts";

export interface TestMirror {
  url: string;
  host: string;
  port: number;
  dataDir: string;
  mirror: Mirror;
  stop(): Promise<void>;
}

export interface TestMirrorOptions {
  /** Upstream configs as in the YAML file (validated by the real schema). */
  upstreams: Record<
    string,
    { url: string; default?: boolean; aliases?: string[]; tagTtl?: string | number } & Record<string, unknown>
  >;
  /** Reuse a cache directory (e.g. to restart a mirror over the same cache); a fresh temp dir otherwise. */
  dataDir?: string;
  /** Any further config keys (limits, fill, ...). */
  extra?: Record<string, unknown>;
}

export async function startTestMirror(opts: TestMirrorOptions): Promise<TestMirror> {
  const ownDir = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? (await mkdtemp(join(tmpdir(), "mirror-data-")));
  const { storage, ...extra } = (opts.extra ?? {}) as { storage?: Record<string, unknown> };
  const config = parseConfig({
    listen: "127.0.0.1:0",
    // Merged, so a test's storage settings (budget, pins) never replace the temp cache directory.
    storage: { ...storage, path: dataDir },
    upstreams: opts.upstreams,
    shutdownGrace: "2s",
    ...extra,
  });
  const mirror = await createMirror(config, { log: pino({ level: process.env.MIRROR_TEST_LOG ?? "silent" }) });
  const address = await mirror.listen();
  // Each test's upstream traffic starts after the start-up check's GET /v2/, so counts and request lists see it
  // only when they look for it.
  await mirror.upstreamsChecked;
  const host = `127.0.0.1:${address.port}`;
  return {
    url: `http://${host}`,
    host,
    port: address.port,
    dataDir,
    mirror,
    async stop() {
      await mirror.close();
      if (ownDir) await rm(dataDir, { recursive: true, force: true });
    },
  };
}
